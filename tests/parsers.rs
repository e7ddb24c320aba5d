//! No input reaches a panic: every parser of what a processor, an x402 server or a signature header
//! sends is fed documents that start from a real one and have hostile values put in (numbers near
//! and past every limit, fractions finer than any currency, wrong types, missing fields), and must
//! answer with a value or an error, never a panic. Bounded: a few thousand cases per parser.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use spendgate::rails::card::signature::{Accept, BasicAuth, HexSignature, Route, StandardWebhooks, WebhookHeaders};
use spendgate::rails::card::{lithic, marqeta, stripe};
use spendgate::rails::usdc::x402;

/// Raw JSON number texts a serde `Value` cannot hold, spliced in after serialization.
const RAW_NUMBERS: [&str; 11] = [
    "1e400",
    "-1e400",
    "7.9e26",
    "7.93e26",
    "79228162514264337593543950336",
    "-79228162514264337593543950336",
    "1.0000000000000000000000000000001",
    "0.000000000000000000000000000001",
    "18446744073709551616",
    "-0",
    "9223372036854775808",
];

/// Values at and past every limit: each is put at every place of every document in turn (so the
/// limits are reached every run, not by chance), and drawn at random beside other values. A string
/// `\u{1}RAW<i>\u{1}` becomes `RAW_NUMBERS[i]` once serialized.
fn limits() -> Vec<Value> {
    let mut values: Vec<Value> =
        [i64::MAX, i64::MIN, i64::MIN + 1, 0, -1, 1_000_000_000_000_000_001].into_iter().map(Value::from).collect();
    values.push(Value::from(u64::MAX));
    values.extend((0..RAW_NUMBERS.len()).map(|i| Value::String(format!("\u{1}RAW{i}\u{1}"))));
    values.extend(
        [
            "7.9e26",
            "793000000000000000000000000.00",
            "-5.00",
            "1.005",
            "NaN",
            "",
            "0x10",
            "eip155:99999999999999999999",
            "2026-13-45",
        ]
        .map(|s| Value::String(s.to_owned())),
    );
    values.extend([Value::Null, Value::Bool(true), json!([]), json!({})]);
    values
}

/// A hostile leaf: one of `limits`, or any number or short text.
fn hostile() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(limits()),
        ".{0,40}".prop_map(Value::String),
    ]
}

/// Every path to a leaf (and to every object and array, so whole parts can be swapped).
fn paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            prefix.push(k.clone());
            paths(v, prefix, out);
            prefix.pop();
        }),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| {
            prefix.push(i.to_string());
            paths(v, prefix, out);
            prefix.pop();
        }),
        _ => {}
    }
}

/// The part of `doc` at `path`, if an earlier change left it there.
fn at_path<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let pointer: String = path.iter().map(|key| format!("/{}", key.replace('~', "~0").replace('/', "~1"))).collect();
    doc.pointer_mut(&pointer)
}

/// The document as bytes, with each raw-number marker replaced by its number.
fn render(doc: &Value) -> Vec<u8> {
    let mut text = doc.to_string();
    for (i, raw) in RAW_NUMBERS.iter().enumerate() {
        text = text.replace(&format!("\"\\u0001RAW{i}\\u0001\""), raw);
    }
    text.into_bytes()
}

/// `template` with up to four of its parts (`all`) replaced by hostile values (or removed), as bytes.
fn mutated(template: Value, all: Vec<Vec<String>>) -> impl Strategy<Value = Vec<u8>> {
    let n = all.len();
    proptest::collection::vec((0..n, hostile(), any::<bool>()), 0..=4).prop_map(move |changes| {
        let mut doc = template.clone();
        for (i, value, remove) in changes {
            let path = &all[i];
            match (remove, path.split_last()) {
                (true, Some((last, parent))) => {
                    if let Some(Value::Object(map)) = at_path(&mut doc, parent) {
                        map.remove(last);
                    }
                }
                _ => {
                    if let Some(at) = at_path(&mut doc, path) {
                        *at = value;
                    }
                }
            }
        }
        render(&doc)
    })
}

/// Runs `check` on `template` with each of `limits` at each of its places, then on `cases` random
/// mutations of it; a panic inside fails the test with the input.
fn never_panics(template: Value, cases: u32, check: impl Fn(&[u8])) {
    let mut all = Vec::new();
    paths(&template, &mut Vec::new(), &mut all);
    for path in &all {
        for value in limits() {
            let mut doc = template.clone();
            if let Some(at) = at_path(&mut doc, path) {
                *at = value;
            }
            let bytes = render(&doc);
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&bytes)));
            assert!(checked.is_ok(), "panicked on {}", String::from_utf8_lossy(&bytes));
        }
    }
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&mutated(template, all), |bytes| {
            check(&bytes);
            Ok(())
        })
        .unwrap();
}

fn stripe_authorization() -> Value {
    json!({"id": "iauth_1", "object": "issuing.authorization", "amount": 0, "currency": "usd", "approved": false,
        "status": "pending", "card": {"id": "ic_1", "object": "issuing.card", "last4": "4242"},
        "merchant_amount": 0, "merchant_currency": "usd",
        "merchant_data": {"category_code": "5734", "name": "OPENAI *API", "network_id": "OPENAI0001", "country": "US"},
        "pending_request": {"amount": 1250, "currency": "usd", "merchant_amount": 1250, "merchant_currency": "usd"},
        "request_history": [{"amount": 1250, "currency": "usd", "approved": true, "reason": "webhook_approved"}],
        "transactions": [], "metadata": {}})
}

fn stripe_event(kind: &str, object: Value) -> Value {
    json!({"id": "evt_1", "object": "event", "api_version": "2025-03-31.basil", "created": 1_765_000_000,
        "type": kind, "livemode": false, "data": {"object": object}})
}

#[test]
fn stripe_events_never_panic() {
    let check = |bytes: &[u8]| {
        if let Ok(event) = serde_json::from_slice::<stripe::Event>(bytes) {
            let _ = stripe::decide(&event);
            let _ = stripe::steps(&event);
            let _ = stripe::version(&event);
        }
    };
    never_panics(stripe_event("issuing_authorization.request", stripe_authorization()), 2_000, check);
    let mut decided = stripe_authorization();
    decided["pending_request"] = Value::Null;
    decided["approved"] = json!(true);
    decided["amount"] = json!(1250);
    never_panics(stripe_event("issuing_authorization.updated", decided), 1_000, check);
    let transaction = json!({"id": "ipi_1", "object": "issuing.transaction", "amount": -1500, "currency": "usd",
        "type": "capture", "authorization": "iauth_1", "card": "ic_1", "merchant_amount": -1500,
        "merchant_currency": "usd", "merchant_data": {"category_code": "5734", "name": "OPENAI *API"}});
    never_panics(stripe_event("issuing_transaction.created", transaction), 1_000, check);
}

#[test]
fn lithic_requests_never_panic() {
    let asa = json!({"event_type": "card_authorization.approval_request", "token": "tx-1", "status": "AUTHORIZATION",
        "card": {"token": "card-1", "last_four": "4242", "state": "OPEN", "type": "VIRTUAL"},
        "amounts": {"cardholder": {"amount": 1250, "conversion_rate": "1.000000", "currency": "USD"},
            "merchant": {"amount": 1100, "currency": "EUR"}, "hold": {"amount": 1250, "currency": "USD"}},
        "amount": 1250, "merchant_amount": 1100, "merchant_currency": "EUR",
        "merchant": {"acceptor_id": "174030075991", "descriptor": "OPENAI *API", "mcc": "5734", "country": "USA"}});
    never_panics(asa, 2_000, |bytes| {
        if let Ok(request) = serde_json::from_slice::<lithic::ApprovalRequest>(bytes) {
            let _ = lithic::asa(&request);
        }
    });
    let transaction = json!({"event_type": "card_transaction.updated", "token": "tx-1", "card_token": "card-1",
        "status": "SETTLED", "merchant": {"acceptor_id": "1", "descriptor": "OPENAI *API", "mcc": "5734", "country": "USA"},
        "events": [
            {"token": "e1", "type": "AUTHORIZATION", "result": "APPROVED", "amount": 1250,
             "amounts": {"cardholder": {"amount": 1250, "conversion_rate": "1.0", "currency": "USD"}}},
            {"token": "e2", "type": "CLEARING", "result": "APPROVED", "amount": 1250,
             "amounts": {"cardholder": {"amount": 1250, "conversion_rate": "1.0", "currency": "USD"}}},
            {"token": "e3", "type": "RETURN", "result": "APPROVED", "amount": 500}]});
    never_panics(transaction, 2_000, |bytes| {
        if let Ok(t) = serde_json::from_slice::<lithic::Transaction>(bytes) {
            let _ = lithic::steps(&t);
        }
    });
}

#[test]
fn marqeta_messages_never_panic() {
    let funding = json!({"token": "jf-1", "method": "pgfs.authorization", "user_token": "u", "amount": "20.00",
        "original_jit_funding_token": "jf-0"});
    let message = json!({"type": "authorization", "state": "PENDING", "token": "txn-1", "user_token": "u",
        "card_token": "mq-1", "currency_code": "USD", "amount": "20.00",
        "gpa_order": {"token": "gpa-1", "amount": "20.00", "currency_code": "USD", "jit_funding": funding},
        "card_acceptor": {"mid": "000000091234", "mcc": "5734", "name": "OPENAI *API", "country_code": "USA"}});
    let check = |bytes: &[u8]| {
        if let Ok(m) = serde_json::from_slice::<marqeta::Message>(bytes) {
            let _ = marqeta::jit_funding(&m);
            let _ = marqeta::read(&m);
        }
    };
    never_panics(message.clone(), 3_000, check);
    for method in ["pgfs.authorization.clearing", "pgfs.refund", "pgfs.authorization.reversal"] {
        let mut m = message.clone();
        m["gpa_order"]["jit_funding"]["method"] = json!(method);
        never_panics(m, 500, check);
    }
    // The amount that once overflowed the scaling to minor units.
    let mut huge = message;
    huge["gpa_order"]["jit_funding"]["amount"] = json!(7.93e26);
    let m: marqeta::Message = serde_json::from_value(huge).unwrap();
    assert!(marqeta::read(&m).is_err());
}

#[test]
fn x402_documents_never_panic() {
    let assets = x402::built_in_assets();
    let requirement = json!({"scheme": "exact", "network": "eip155:84532", "amount": "250000",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}});
    let v2 = json!({"x402Version": 2, "resource": {"url": "https://api.example.com/x"}, "accepts": [requirement]});
    let check = |bytes: &[u8]| {
        if let Ok(doc) = serde_json::from_slice::<Value>(bytes) {
            if let Some(x402::Challenge::X402 { version, accepts, .. }) = x402::required(&doc) {
                let _ = x402::choose(version, &accepts, &assets);
            }
            use base64::Engine;
            let header = base64::engine::general_purpose::STANDARD.encode(bytes);
            let _ = x402::challenge(Some(&header), &[], bytes);
            let _ = x402::challenge(None, &[], bytes);
            let _ = x402::settlement(Some(&header));
        }
    };
    never_panics(v2, 2_000, check);
    let v1 = json!({"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": [{"scheme": "exact",
        "network": "base-sepolia", "maxAmountRequired": "10000", "resource": "https://api.example.com/x",
        "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}}]});
    never_panics(v1, 1_000, check);
    let settled = json!({"success": true, "transaction": "0xabc", "network": "eip155:84532", "payer": "0x1"});
    never_panics(settled, 500, check);
}

/// Any timestamp, its extremes included (uniform draws almost never reach them).
fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), Just(i64::MIN + 1), Just(0)]
}

proptest! {
    #![proptest_config(Config { cases: 2_000, failure_persistence: None, ..Config::default() })]

    /// Signature headers are read before anything else: any text at all is refused or accepted, never a panic.
    #[test]
    fn signature_headers_never_panic(
        header in prop_oneof![
            ".{0,200}".boxed(),
            (timestamp(), "[0-9a-f]{0,64}").prop_map(|(t, sig)| format!("t={t},v1={sig},v2={sig}")).boxed(),
        ],
        id in ".{0,40}",
        t in prop_oneof![".{0,24}".boxed(), timestamp().prop_map(|t| t.to_string()).boxed()],
        body in any::<Vec<u8>>(),
    ) {
        let secret = spendgate::crypto::Secret::new("whsec_c3BlbmRnYXRlLWxpdGhpYy10ZXN0LXNlY3JldC0zMiE=");
        let hex = HexSignature::new(Some(&secret), None).unwrap();
        let now = 1_765_000_000;
        prop_assert!(hex.verify(Some(&header), &body, now).is_err());
        let route = Route { method: "POST", path: "/v1/authorizations/x/capture" };
        prop_assert!(hex.verify_route(Some(&header), route, &body, now, Accept::BodyOrRoute).is_err());
        let sw = StandardWebhooks::new(Some(&secret), None).unwrap().unwrap();
        let headers = WebhookHeaders { id: Some(&id), timestamp: Some(&t), signature: Some(&header) };
        prop_assert!(sw.verify(&headers, &body, now).is_err());
        let basic = BasicAuth::new(Some(&secret), Some(&secret), None).unwrap();
        let _ = basic.verify(Some(&header));
    }
}
