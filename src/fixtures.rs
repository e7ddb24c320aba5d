//! Reference and demo data from `fixtures/`, compiled into the binary.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::domain::catalog::Catalog;

const MCC_CODES: &str = include_str!("../fixtures/mcc_codes.csv");
const MCC_GROUPS: &str = include_str!("../fixtures/mcc_groups.json");
const POLICY_TEMPLATES: &str = include_str!("../fixtures/policy_templates.json");
pub const DEMO: &str = include_str!("../fixtures/demo.json");
const STRIPE_CATEGORIES: &str = include_str!("../fixtures/stripe_categories.csv");

/// The built-in catalog. The fixtures are checked by this crate's tests, so a failure here is a
/// build defect, reported at start before anything listens.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        Catalog::from_sources(MCC_CODES, MCC_GROUPS, POLICY_TEMPLATES)
            .unwrap_or_else(|e| panic!("built-in fixtures are invalid: {e}"))
    })
}

/// MCC → Stripe Issuing category slug (`spending_controls` name merchants by these).
pub fn stripe_categories() -> &'static HashMap<String, String> {
    static CATEGORIES: OnceLock<HashMap<String, String>> = OnceLock::new();
    CATEGORIES.get_or_init(|| {
        let mut reader = csv::Reader::from_reader(STRIPE_CATEGORIES.as_bytes());
        reader
            .records()
            .map(|r| r.unwrap_or_else(|e| panic!("built-in Stripe categories are invalid: {e}")))
            .map(|r| (r.get(0).unwrap_or_default().to_owned(), r.get(2).unwrap_or_default().to_owned()))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_consistent() {
        let catalog = catalog();
        assert!(catalog.is_known_mcc("5734"));
        assert!(!catalog.is_known_mcc("0000"));
        for group in ["ai_apis", "cloud", "saas", "dev_tools", "gambling", "crypto", "cash"] {
            assert!(catalog.is_known_group(group), "{group}");
        }
        assert!(catalog.is_known_country("DE"));
        let stripe = stripe_categories();
        assert_eq!(stripe.get("5734").map(String::as_str), Some("computer_software_stores"));
        assert_eq!(stripe.len(), 287, "one Stripe category per MCC in Stripe's table");
        assert!(!catalog.is_known_country("XX"));
    }

    #[test]
    fn coding_agent_template_carries_the_documented_defaults() {
        use crate::domain::policy::{Scope, Window};
        let policy = &catalog().template("coding-agent").expect("template").policy;
        let limit = |id: &str| policy.limits.iter().find(|l| l.id == id).unwrap_or_else(|| panic!("{id}"));
        let day = limit("agent_24h");
        assert_eq!((day.scope, day.amount), (Scope::Agent, Some(50_000)));
        assert!(matches!(&day.window, Window::Rolling { seconds: 86_400, .. }));
        assert_eq!(limit("agent_month").amount, Some(1_000_000));
        assert_eq!((limit("per_trace").scope, limit("per_trace").amount), (Scope::Trace, Some(2_000)));
        assert_eq!(limit("openai_month").amount, Some(200_000));
        assert_eq!(limit("anthropic_month").amount, Some(200_000));
        assert_eq!(limit("aws_month").amount, Some(500_000));
        assert_eq!(policy.x402.as_ref().and_then(|x| x.per_call), Some(500));
    }
}
