//! The one table from spendgate's decline reasons to each processor's codes. Stripe's answer is a bare
//! `approved: false` (the reason travels in its `metadata`); Lithic's ASA `result` and Marqeta's
//! `jit_funding.decline_reason` are below. The table in docs/processors.md is checked against this one.

use crate::domain::authorization::DeclineReason;

/// (reason, Lithic ASA `result`, Marqeta `decline_reason`).
pub const TABLE: [(DeclineReason, &str, &str); 24] = {
    use DeclineReason::*;
    [
        (UnknownCard, "CARD_PAUSED", "INVALID_CARD"),
        (CardClosed, "CARD_PAUSED", "CARD_NOT_ACTIVE"),
        (CardExpired, "CARD_PAUSED", "EXPIRED_CARD"),
        (CardUsed, "CARD_PAUSED", "CARD_NOT_ACTIVE"),
        (CardFrozen, "CARD_PAUSED", "CARD_NOT_ACTIVE"),
        (AgentFrozen, "CARD_PAUSED", "CARDHOLDER_NOT_ACTIVE"),
        (UnsupportedCurrency, "UNAUTHORIZED_MERCHANT", "TRANSACTION_NOT_PERMITTED"),
        (StaleFx, "CARD_PAUSED", "TRANSACTION_NOT_PERMITTED"),
        (MccNotAllowed, "UNAUTHORIZED_MERCHANT", "INVALID_MERCHANT"),
        (MerchantNotAllowed, "UNAUTHORIZED_MERCHANT", "INVALID_MERCHANT"),
        (CountryNotAllowed, "UNAUTHORIZED_MERCHANT", "TRANSACTION_NOT_PERMITTED"),
        (OutsideActiveHours, "UNAUTHORIZED_MERCHANT", "TRANSACTION_NOT_PERMITTED"),
        (HostNotAllowed, "UNAUTHORIZED_MERCHANT", "INVALID_MERCHANT"),
        (RecipientNotAllowed, "UNAUTHORIZED_MERCHANT", "INVALID_MERCHANT"),
        (PerTransactionExceeded, "VELOCITY_EXCEEDED", "AMOUNT_LIMIT_EXCEEDED"),
        (PerCallExceeded, "VELOCITY_EXCEEDED", "AMOUNT_LIMIT_EXCEEDED"),
        (LimitExceeded, "VELOCITY_EXCEEDED", "AMOUNT_LIMIT_EXCEEDED"),
        (VelocityExceeded, "VELOCITY_EXCEEDED", "TRANSACTION_COUNT_LIMIT_EXCEEDED"),
        (ApprovalRequired, "VELOCITY_EXCEEDED", "AMOUNT_LIMIT_EXCEEDED"),
        (InsufficientFunds, "INSUFFICIENT_FUNDS", "INSUFFICIENT_FUNDS"),
        (InsufficientOnchainFunds, "INSUFFICIENT_FUNDS", "INSUFFICIENT_FUNDS"),
        (Timeout, "CARD_PAUSED", "TRANSACTION_NOT_PERMITTED"),
        (InternalError, "CARD_PAUSED", "TRANSACTION_NOT_PERMITTED"),
        (ProcessorDeclined, "CARD_PAUSED", "TRANSACTION_NOT_PERMITTED"),
    ]
};

fn row(reason: DeclineReason) -> (DeclineReason, &'static str, &'static str) {
    TABLE.into_iter().find(|(r, _, _)| *r == reason).expect("every reason is in the table (tested)")
}

pub fn lithic(reason: DeclineReason) -> &'static str {
    row(reason).1
}

pub fn marqeta(reason: DeclineReason) -> &'static str {
    row(reason).2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_one_row_and_readme_shows_the_table() {
        for reason in DeclineReason::ALL {
            assert_eq!(TABLE.iter().filter(|(r, _, _)| *r == reason).count(), 1, "{reason}");
        }
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/processors.md")).unwrap();
        for (reason, lithic, marqeta) in TABLE {
            let line = format!("| `{reason}` | `false` | `{lithic}` | 402 `{marqeta}` |");
            assert!(readme.contains(&line), "docs/processors.md lacks the row {line}");
        }
    }

    #[test]
    fn codes_are_ones_the_processors_define() {
        // Lithic's ASA `result` enum and the Marqeta decline reasons documented for JIT funding.
        let lithic = [
            "APPROVED",
            "AVS_INVALID",
            "CARD_PAUSED",
            "INSUFFICIENT_FUNDS",
            "UNAUTHORIZED_MERCHANT",
            "VELOCITY_EXCEEDED",
            "DRIVER_NUMBER_INVALID",
            "VEHICLE_NUMBER_INVALID",
            "SUSPECTED_FRAUD",
            "CHALLENGE",
        ];
        let marqeta = [
            "AMOUNT_LIMIT_EXCEEDED",
            "CARD_NOT_ACTIVE",
            "CARDHOLDER_NOT_ACTIVE",
            "CLOSED_ACCOUNT",
            "DUPLICATE_TRANSACTION",
            "EXPIRED_CARD",
            "INSUFFICIENT_FUNDS",
            "INVALID_AMOUNT",
            "INVALID_CARD",
            "INVALID_MERCHANT",
            "SUSPECTED_FRAUD",
            "TRANSACTION_COUNT_LIMIT_EXCEEDED",
            "TRANSACTION_NOT_PERMITTED",
        ];
        for (reason, l, m) in TABLE {
            assert!(lithic.contains(&l) && l != "APPROVED", "{reason}: {l}");
            assert!(marqeta.contains(&m), "{reason}: {m}");
        }
    }
}
