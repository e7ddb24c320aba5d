//! A local x402 server speaking the v1 and v2 wire formats, with a facilitator that verifies each
//! payment the way the reference ones do for an EOA: the `accepted` requirement echoed exactly
//! (v2), recipient, amount, validity window, an unused nonce, and the signer recovered from the
//! EIP-712 digest, computed here from the type string on its own, not with spendgate's code.
//!
//! Paths: `/v1/<mode>` and `/v2/<mode>` (`?price=<atomic>` sets the price, default 250000 = $0.25),
//! with mode `paid` (settles), `silent` (settles, but the first answer carries no settlement
//! header), `slow` (the first paid answer comes after the client gave up), `reject` (settlement
//! fails); a `paid` payload delivered again is refused (its nonce is used), as on chain; `/mpp` (an MPP challenge), `/odd402` (a 402 in no known format), `/free`.
//! `?pad=<bytes>` pads a paid answer's body; `/free?wait_ms=<ms>` answers after a pause. Every answer
//! sets a cookie, which spendgate must not pass back.
// Each test binary that includes this uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use alloy_primitives::{Address, B256, Signature, U256, keccak256};
use alloy_sol_types::{SolStruct, eip712_domain, sol};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

pub const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
pub const TOKEN_NAME: &str = "Test USD";
pub const TOKEN_VERSION: &str = "1";

sol! {
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// One payment the facilitator accepted.
#[derive(Debug, Clone)]
pub struct Settled {
    pub payer: Address,
    pub value: U256,
    pub transaction: String,
    /// How many times this payload arrived.
    pub deliveries: usize,
}

#[derive(Default)]
pub struct Seen {
    /// Every request that reached the server.
    pub requests: usize,
    /// Requests without a payment.
    pub unpaid: usize,
    /// Every payment header received, in order.
    pub payment_headers: Vec<String>,
    /// Settled payments by nonce.
    pub settled: HashMap<String, Settled>,
    /// Payments the facilitator refused, with why.
    pub refused: Vec<String>,
}

#[derive(Clone)]
pub struct X402Server {
    pub base: String,
    pub token: Address,
    pub seen: Arc<Mutex<Seen>>,
}

impl X402Server {
    pub async fn start(token: &str) -> X402Server {
        X402Server::start_at("127.0.0.1:0", token).await
    }

    /// Listens on `addr` (`examples/x402_server.rs` runs it on a fixed port).
    pub async fn start_at(addr: &str, token: &str) -> X402Server {
        let token: Address = token.parse().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = web::Data::new((token, seen.clone()));
        let server = HttpServer::new(move || App::new().app_data(state.clone()).default_service(web::to(handle)))
            .workers(1)
            .bind(addr)
            .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
        let base = format!("http://{}", server.addrs()[0]);
        actix_web::rt::spawn(server.run());
        X402Server { base, token, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn settled(&self) -> Vec<Settled> {
        self.seen.lock().unwrap().settled.values().cloned().collect()
    }

    pub fn payment_headers(&self) -> Vec<String> {
        self.seen.lock().unwrap().payment_headers.clone()
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().requests
    }

    pub fn unpaid(&self) -> usize {
        self.seen.lock().unwrap().unpaid
    }
}

fn requirement(version: u8, token: Address, price: &str, url: &str) -> Value {
    let mut r = json!({"scheme": "exact", "payTo": PAY_TO, "asset": token.to_checksum(None), "maxTimeoutSeconds": 60,
        "extra": {"name": TOKEN_NAME, "version": TOKEN_VERSION}});
    if version == 1 {
        r["network"] = json!("base-sepolia");
        r["maxAmountRequired"] = json!(price);
        r["resource"] = json!(url);
        r["description"] = json!("a paid test resource");
        r["mimeType"] = json!("application/json");
    } else {
        r["network"] = json!("eip155:84532");
        r["amount"] = json!(price);
    }
    r
}

fn payment_required(version: u8, requirement: &Value, url: &str, error: &str) -> HttpResponse {
    if version == 1 {
        return HttpResponse::PaymentRequired()
            .json(json!({"x402Version": 1, "error": error, "accepts": [requirement]}));
    }
    let doc = json!({"x402Version": 2, "error": error, "resource": {"url": url, "description": "a paid test resource"},
        "accepts": [requirement]});
    HttpResponse::PaymentRequired()
        .insert_header(("PAYMENT-REQUIRED", BASE64.encode(doc.to_string())))
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({}))
}

fn settlement_header(version: u8, doc: &Value) -> (&'static str, String) {
    let name = if version == 1 { "X-PAYMENT-RESPONSE" } else { "PAYMENT-RESPONSE" };
    (name, BASE64.encode(doc.to_string()))
}

async fn handle(req: HttpRequest, state: web::Data<(Address, Arc<Mutex<Seen>>)>) -> HttpResponse {
    let (token, seen) = (state.0, state.1.clone());
    seen.lock().unwrap().requests += 1;
    let path = req.path().to_owned();
    let url = format!("http://{}{}", req.connection_info().host(), req.uri());
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default();
    let number = |name: &str| query.get(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    match path.as_str() {
        "/free" => {
            tokio::time::sleep(Duration::from_millis(number("wait_ms"))).await;
            return HttpResponse::Ok()
                .insert_header(("X-Upstream", "yes"))
                .insert_header(("Set-Cookie", "upstream_session=1; Path=/"))
                .body("free content");
        }
        "/mpp" => {
            return HttpResponse::PaymentRequired()
                .insert_header((
                    "WWW-Authenticate",
                    r#"Payment id="ch_1", realm="api.test", method="tempo", intent="charge", request="e30""#,
                ))
                .finish();
        }
        "/odd402" => return HttpResponse::PaymentRequired().body("pay me somehow"),
        _ => {}
    }
    let mut parts = path.trim_start_matches('/').split('/');
    let version: u8 = match parts.next() {
        Some("v1") => 1,
        Some("v2") => 2,
        _ => return HttpResponse::NotFound().finish(),
    };
    let mode = parts.next().unwrap_or("paid").to_owned();
    let price = query.get("price").cloned().unwrap_or_else(|| "250000".into());
    let requirement = requirement(version, token, &price, &url);
    let header_name = if version == 1 { "X-PAYMENT" } else { "PAYMENT-SIGNATURE" };
    let Some(header) = req.headers().get(header_name).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        seen.lock().unwrap().unpaid += 1;
        return payment_required(version, &requirement, &url, &format!("{header_name} header is required"));
    };
    seen.lock().unwrap().payment_headers.push(header.clone());

    let verified = verify(version, &header, &requirement, token);
    let (payer, value, nonce) = match verified {
        Ok(v) => v,
        Err(why) => {
            seen.lock().unwrap().refused.push(why.clone());
            return payment_required(version, &requirement, &url, &why);
        }
    };
    let network = if version == 1 { "base-sepolia" } else { "eip155:84532" };
    let deliveries = {
        let mut s = seen.lock().unwrap();
        if let Some(done) = s.settled.get_mut(&nonce) {
            if mode == "paid" {
                // The nonce is used on chain: a plain replay is refused.
                s.refused.push("nonce already used".into());
                return payment_required(version, &requirement, &url, "invalid_transaction_state");
            }
            // The slow and silent modes settled it already: the facilitator reports that settlement.
            done.deliveries += 1;
            done.deliveries
        } else if mode == "reject" {
            0
        } else {
            let transaction = format!("0x{}", hex::encode(keccak256(nonce.as_bytes())));
            let record = Settled { payer, value, transaction, deliveries: 1 };
            s.settled.insert(nonce.clone(), record);
            1
        }
    };
    if mode == "reject" {
        let doc = json!({"success": false, "errorReason": "insufficient_funds", "transaction": "", "network": network,
            "payer": payer.to_checksum(None)});
        return HttpResponse::PaymentRequired().insert_header(settlement_header(version, &doc)).json(json!({}));
    }
    let transaction = seen.lock().unwrap().settled[&nonce].transaction.clone();
    let first = deliveries == 1;
    if mode == "slow" && first {
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let pad = "x".repeat(number("pad") as usize);
    let body = json!({"data": "paid content", "path": path, "deliveries": deliveries, "pad": pad});
    if mode == "silent" && first {
        return HttpResponse::Ok().json(body);
    }
    let doc =
        json!({"success": true, "transaction": transaction, "network": network, "payer": payer.to_checksum(None)});
    HttpResponse::Ok()
        .insert_header(settlement_header(version, &doc))
        .insert_header(("X-Upstream", "yes"))
        .insert_header(("Set-Cookie", "upstream_session=1; Path=/"))
        .json(body)
}

/// Checks a payment as a facilitator would for an EOA payer; returns (payer, value, nonce).
fn verify(version: u8, header: &str, requirement: &Value, token: Address) -> Result<(Address, U256, String), String> {
    let bytes = BASE64.decode(header).map_err(|_| "invalid_payload: not base64".to_owned())?;
    let payload: Value = serde_json::from_slice(&bytes).map_err(|_| "invalid_payload: not JSON".to_owned())?;
    if payload["x402Version"] != json!(version) {
        return Err("invalid_x402_version".into());
    }
    if version == 2 && payload["accepted"] != *requirement {
        return Err("no matching payment requirements (accepted differs)".into());
    }
    if version == 1 && (payload["scheme"] != "exact" || payload["network"] != requirement["network"]) {
        return Err("invalid_scheme or invalid_network".into());
    }
    let auth = &payload["payload"]["authorization"];
    let text = |key: &str| auth[key].as_str().ok_or_else(|| format!("invalid_payload: {key}"));
    let from: Address = text("from")?.parse().map_err(|_| "invalid_payload: from")?;
    let to: Address = text("to")?.parse().map_err(|_| "invalid_payload: to")?;
    let value: U256 = text("value")?.parse().map_err(|_| "invalid_payload: value")?;
    let valid_after: u64 = text("validAfter")?.parse().map_err(|_| "invalid_payload: validAfter")?;
    let valid_before: u64 = text("validBefore")?.parse().map_err(|_| "invalid_payload: validBefore")?;
    let nonce: B256 = text("nonce")?.parse().map_err(|_| "invalid_payload: nonce")?;
    let price = requirement[if version == 1 { "maxAmountRequired" } else { "amount" }].as_str().unwrap();
    let expected_to: Address = PAY_TO.parse().unwrap();
    if to != expected_to {
        return Err("invalid_exact_evm_payload_recipient_mismatch".into());
    }
    if value != price.parse::<U256>().unwrap() {
        return Err("invalid_exact_evm_payload_authorization_value_mismatch".into());
    }
    let now = jiff::Timestamp::now().as_second() as u64;
    if valid_after > now {
        return Err("invalid_exact_evm_payload_authorization_valid_after".into());
    }
    if valid_before < now + 6 {
        return Err("invalid_exact_evm_payload_authorization_valid_before".into());
    }
    let message = TransferWithAuthorization {
        from,
        to,
        value,
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    let domain = eip712_domain! {
        name: TOKEN_NAME,
        version: TOKEN_VERSION,
        chain_id: 84532,
        verifying_contract: token,
    };
    let digest = message.eip712_signing_hash(&domain);
    let signature: Signature = payload["payload"]["signature"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "invalid_exact_evm_payload_signature".to_owned())?;
    match signature.recover_address_from_prehash(&digest) {
        Ok(signer) if signer == from => Ok((from, value, nonce.to_string())),
        _ => Err("invalid_exact_evm_payload_signature".into()),
    }
}
