//! The ledger's words: where an authorization is in its life, what a transfer does, which rail
//! asked, how a USDC payment ended, and an agent's balance. Each is stored as the same lowercase
//! text in both databases (the `store` maps them), and shown by the API as that text.

worded! {
    /// Where an authorization is in its life.
    pub enum HoldStatus {
        /// Approved, with money still held.
        Pending = "pending",
        /// Captured: nothing held any more, something posted.
        Posted = "posted",
        /// Released in full before anything was captured.
        Voided = "voided",
        /// Released by the expiry sweep before anything was captured.
        Expired = "expired",
        /// Never held anything.
        Declined = "declined",
    }
}

worded! {
    /// What a transfer did to a hold or a balance.
    pub enum TransferKind {
        /// Money from the treasury into the agent's balance, by a person.
        Fund = "fund",
        /// Money from the treasury into the agent's balance, by its top-up rule.
        TopUp = "top_up",
        /// Available money from the agent's balance back to the treasury.
        Drain = "drain",
        /// Money from the agent's parent into its balance (or back from its child, to a parent).
        AllocationIn = "allocation_in",
        /// Available money from the agent's balance to its child (or back to its parent).
        AllocationOut = "allocation_out",
        /// Captured out of the hold.
        Post = "post",
        /// Captured beyond the hold: the processor's fact, recorded as spent.
        Excess = "excess",
        /// The processor raised the hold.
        Increase = "increase",
        /// Released back to the balance.
        Void = "void",
        /// Released by the expiry sweep.
        Expire = "expire",
        /// Credited back after a capture; limits are not restored.
        Refund = "refund",
    }
}

worded! {
    /// Who asked for an authorization: with its external id, the idempotency key.
    pub enum Source {
        Native = "native",
        Stripe = "stripe",
        Lithic = "lithic",
        Marqeta = "marqeta",
        X402 = "x402",
    }
}

worded! {
    /// Which HTTP 402 protocol a USDC payment answered.
    pub enum PaymentProtocol {
        /// x402 (`PAYMENT-REQUIRED`, or a v1 body): the payment goes in `PAYMENT-SIGNATURE` / `X-PAYMENT`.
        X402 = "x402",
        /// MPP (`WWW-Authenticate: Payment`): the credential goes in `Authorization: Payment`.
        Mpp = "mpp",
    }
}

worded! {
    /// How a signed USDC payment ended.
    pub enum PaymentStatus {
        /// Signed and stored, not yet known to be settled.
        Signed = "signed",
        Settled = "settled",
        Failed = "failed",
        /// The server's answer did not say; the hold stays until a person or the sweep decides.
        Unknown = "unknown",
    }
}

impl PaymentStatus {
    /// Settled and failed payments are final: nothing moves them again.
    pub fn is_final(self) -> bool {
        matches!(self, PaymentStatus::Settled | PaymentStatus::Failed)
    }
}

worded! {
    /// What a movement did to the treasury of a currency.
    pub enum TreasuryKind {
        /// Money that backs the treasury, recorded by a person (placed at the card program, USDC
        /// in a treasury wallet).
        Deposit = "deposit",
        /// Money taken out of the treasury, recorded by a person.
        Withdrawal = "withdrawal",
        /// To an agent, by a person.
        Fund = "fund",
        /// To an agent, by its top-up rule.
        TopUp = "top_up",
        /// Back from an agent.
        Drain = "drain",
    }
}

/// The audit chain a currency's treasury journal is linked in (beside each agent's).
pub fn treasury_chain(currency: &str) -> String {
    format!("treasury:{currency}")
}

/// A currency's treasury in minor units: what people recorded as backing it, and what went to
/// agents and came back. Every agent's balance comes from here, so the agents' money (available,
/// held and spent net of refunds) adds up to `granted − returned`, never more than was deposited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Treasury {
    pub deposited: i64,
    pub withdrawn: i64,
    /// Funded and topped up to agents.
    pub granted: i64,
    /// Drained back from agents.
    pub returned: i64,
}

impl Treasury {
    pub fn available(&self) -> i64 {
        self.deposited - self.withdrawn - self.granted + self.returned
    }
}

/// An agent's money in minor units of its currency. Available = funded + refunded − held − spent,
/// where funded is what came from the treasury (or its parent) net of what went back (or to its
/// children).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balance {
    pub funded: i64,
    pub refunded: i64,
    pub held: i64,
    pub spent: i64,
}

impl Balance {
    pub fn available(&self) -> i64 {
        self.funded + self.refunded - self.held - self.spent
    }
}

impl TransferKind {
    /// What a transfer adds to the agent's `funded` (money between it and the treasury, its parent
    /// or its child); 0 for a transfer of a hold.
    pub fn funding(self, amount: i64) -> i64 {
        match self {
            TransferKind::Fund | TransferKind::TopUp | TransferKind::AllocationIn => amount,
            TransferKind::Drain | TransferKind::AllocationOut => -amount,
            _ => 0,
        }
    }

    pub fn is_funding(self) -> bool {
        self.funding(1) != 0
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::domain::policy::Rail;

    #[test]
    fn every_word_parses_back_to_its_variant_and_serializes_as_itself() {
        fn round_trip<T: Copy + PartialEq + std::fmt::Debug + Serialize>(
            all: &[T],
            as_str: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            for &v in all {
                assert_eq!(parse(as_str(v)), Some(v));
                assert_eq!(serde_json::to_value(v).unwrap(), as_str(v));
            }
            assert_eq!(parse("PENDING"), None, "words are exact");
        }
        round_trip(HoldStatus::ALL, HoldStatus::as_str, HoldStatus::parse);
        round_trip(TransferKind::ALL, TransferKind::as_str, TransferKind::parse);
        round_trip(TreasuryKind::ALL, TreasuryKind::as_str, TreasuryKind::parse);
        round_trip(Source::ALL, Source::as_str, Source::parse);
        round_trip(PaymentStatus::ALL, PaymentStatus::as_str, PaymentStatus::parse);
        round_trip(Rail::ALL, Rail::as_str, Rail::parse);
    }
}
