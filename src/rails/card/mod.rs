//! Card processors' authorization webhooks and lifecycle events: one module per processor (and
//! `native`, spendgate's own format), each
//! verifying, parsing into the canonical `AuthRequest` or ledger `Step`s, and rendering its answer;
//! and `issuing`, which creates cards at Stripe and Lithic. The ledger decides and records;
//! nothing here holds a rule.

pub mod codes;
pub mod issuing;
pub mod lithic;
pub mod marqeta;
pub mod native;
pub mod signature;
pub mod stripe;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use crate::domain::authorization::{AuthRequest, Merchant, Rail};
use crate::domain::ledger::Source;
use crate::error::{Error, Result};
use crate::ledger::{Ledger, Movement, Payer, Target, Verdict};

pub use crate::domain::money::MAX_AMOUNT;

/// A processor's deadline less the margin its answer needs to get back: the decision budget.
pub fn budget(deadline: Duration) -> Duration {
    deadline * 3 / 4
}

/// One thing a processor's event tells the ledger.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// An authorization as the processor decided it: recorded if spendgate has not seen it (its own
    /// controls, a stand-in, a force post), reconciled if spendgate's answer differed.
    Record { card: String, external_id: String, request: AuthRequest, verdict: Verdict },
    /// A movement on the authorization the processor knows as `authorization`; `id` makes it idempotent.
    Move { authorization: String, id: String, movement: Movement },
}

/// What became of an event's steps.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub applied: usize,
    /// Steps that did not apply (unknown card or authorization, nothing left to reverse…), and why.
    pub skipped: Vec<String>,
}

/// Applies the steps in order. A step that cannot apply is skipped and reported (the event is still
/// acknowledged: sending it again would not change that); a storage failure is an error, so the
/// processor delivers the event again.
pub async fn apply(ledger: &Ledger, source: Source, steps: Vec<Step>) -> Result<Applied> {
    let mut done = Applied::default();
    for step in steps {
        let result = match step {
            Step::Record { card, external_id, request, verdict } => {
                let Some(card_id) = ledger.card_for_processor(source.as_str(), &card).await? else {
                    done.skipped.push(format!("unknown card {card}"));
                    continue;
                };
                let auth = crate::ledger::Authorize {
                    source,
                    external_id,
                    payer: Payer::Card(card_id),
                    request,
                    deferred: None,
                    payment: None,
                    onchain_short: false,
                };
                ledger.record(auth, verdict).await.map(|_| ())
            }
            Step::Move { authorization, id, movement } => {
                let target = Target::External { source, external_id: authorization };
                ledger.movement(target, &id, movement).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => done.applied += 1,
            Err(e @ (Error::StorageUnavailable(_) | Error::Internal(_))) => return Err(e),
            Err(e) => done.skipped.push(e.to_string()),
        }
    }
    Ok(done)
}

/// ISO 3166 alpha-3 (as Lithic sends it) to alpha-2, with Lithic's two extra codes.
pub fn alpha2(alpha3: &str) -> Option<&'static str> {
    static TABLE: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t: HashMap<_, _> = iso_country::data::all().into_iter().map(|c| (c.alpha3, c.alpha2)).collect();
        t.insert("QZZ", "XK");
        t.insert("ANT", "AN");
        t
    });
    table.get(alpha3.to_ascii_uppercase().as_str()).copied()
}

/// A processor's free text, cut to what spendgate stores and stripped of control characters.
pub fn clean(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect::<String>().trim().to_owned()
}

/// An identifier a processor sent: present, printable, bounded.
pub fn id(field: &str, value: &str) -> Result<String> {
    if value.is_empty() || value.len() > 255 || value.chars().any(char::is_control) {
        return Err(Error::validation(format!("{field} must be 1 to 255 printable characters")));
    }
    Ok(value.to_owned())
}

pub fn amount(field: &str, value: i64) -> Result<i64> {
    if !(0..=MAX_AMOUNT).contains(&value) {
        return Err(Error::validation(format!("{field} must be 0 to {MAX_AMOUNT} minor units")));
    }
    Ok(value)
}

/// A card authorization of `amount_minor` of `currency` at `merchant`, as every processor's adapter builds it.
pub fn request(amount_minor: i64, currency: &str, merchant: Merchant) -> Result<AuthRequest> {
    Ok(AuthRequest {
        rail: Rail::Card,
        amount: amount("amount", amount_minor)?,
        currency: clean(currency, 8).to_ascii_uppercase(),
        merchant,
        trace_id: None,
        max_amount: None,
        recipient: None,
    })
}

/// A four-digit MCC, or none.
pub fn mcc(value: Option<&str>) -> Option<String> {
    value.filter(|m| m.len() == 4 && m.bytes().all(|b| b.is_ascii_digit())).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha3_countries_become_alpha2() {
        assert_eq!(alpha2("USA"), Some("US"));
        assert_eq!(alpha2("deu"), Some("DE"));
        assert_eq!(alpha2("QZZ"), Some("XK"));
        assert_eq!(alpha2("XXX"), None);
    }

    #[test]
    fn budgets_leave_a_margin() {
        assert_eq!(budget(Duration::from_secs(2)), Duration::from_millis(1_500));
        assert_eq!(budget(Duration::from_secs(3)), Duration::from_millis(2_250));
    }
}
