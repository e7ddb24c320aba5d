//! Opaque, type-prefixed ids (`agt_…`, `card_…`). The body is a ULID, so ids sort by creation
//! time, which makes them stable pagination cursors.

use std::sync::Mutex;

/// Monotonic within this process, so two ids made in the same millisecond still sort in order.
static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

fn next_ulid() -> ulid::Ulid {
    let mut guard = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let generator = guard.get_or_insert_with(ulid::Generator::new);
    // Overflow needs 2^80 ids in one millisecond; fall back to a fresh random one.
    generator.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, example = json!(concat!($prefix, "_01jd8r6w3kq2v5x7y9z0abcdef")))]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, next_ulid().to_string().to_ascii_lowercase()))
            }

            /// Accepts only strings that carry this type's prefix; whether the id exists is the store's question.
            pub fn parse(s: &str) -> Option<Self> {
                let body = s.strip_prefix(concat!($prefix, "_"))?;
                let ok = !body.is_empty() && body.len() <= 64 && body.bytes().all(|b| b.is_ascii_alphanumeric());
                ok.then(|| Self(s.to_owned()))
            }

            /// For values read back from our own storage.
            pub fn from_stored(s: String) -> Self {
                Self(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// An agent: one automated spender.
    AgentId, "agt"
);
prefixed_id!(
    /// A virtual card belonging to one agent.
    CardId, "card"
);
prefixed_id!(
    /// An admin or agent API key.
    KeyId, "key"
);
prefixed_id!(
    /// An entry in an audit trail.
    EventId, "evt"
);
prefixed_id!(
    /// An authorization request: the hold it placed, or the recorded decline.
    AuthorizationId, "auth"
);
prefixed_id!(
    /// A ledger movement of an agent: fund, top-up, drain, post, excess, void, expire or refund.
    TransferId, "trf"
);
prefixed_id!(
    /// A movement of a treasury: deposit, withdrawal, or to or from an agent.
    TreasuryTransferId, "trt"
);
prefixed_id!(
    /// An x402 payment: what was signed for one request, and how it ended.
    PaymentId, "pay"
);
prefixed_id!(
    /// A request for a human's approval, and what the human decided.
    ApprovalId, "apr"
);
prefixed_id!(
    /// A checkpoint of every audit chain's head.
    CheckpointId, "ckp"
);
prefixed_id!(
    /// An endpoint that receives events.
    EndpointId, "whe"
);
prefixed_id!(
    /// One event on its way to one endpoint.
    DeliveryId, "dlv"
);
prefixed_id!(
    /// One version of a card's or agent's policy: live, past, or a draft.
    PolicyVersionId, "pol"
);
prefixed_id!(
    /// A draft replayed over recorded history.
    BacktestId, "bkt"
);
prefixed_id!(
    /// A live decision a draft in shadow would have made otherwise.
    DisagreementId, "shd"
);

/// The ULID part of any of these ids. Every id's ULID comes from the one monotonic generator, so
/// this part orders records of different kinds (authorizations and transfers) in time together.
pub fn ulid_part(id: &str) -> &str {
    id.rsplit('_').next().unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_sort_by_creation() {
        let a = CardId::generate();
        let b = CardId::generate();
        assert!(a.as_str().starts_with("card_"));
        assert!(a < b, "{a} should sort before {b}");
    }

    #[test]
    fn parse_checks_the_prefix() {
        let agent = AgentId::generate();
        assert_eq!(AgentId::parse(agent.as_str()), Some(agent.clone()));
        assert_eq!(CardId::parse(agent.as_str()), None);
        assert_eq!(AgentId::parse("agt_"), None);
        assert_eq!(AgentId::parse("agt_../etc"), None);
    }
}
