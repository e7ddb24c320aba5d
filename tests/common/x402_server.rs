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
    /// Set: a `paid` payment is settled by this (given the payment header) on a chain, and fails
    /// as the chain refuses it; its transaction hash is the one reported.
    pub settle_on_chain: Option<SettleOnChain>,
}

pub type SettleOnChain =
    Arc<dyn Fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>>>> + Send + Sync>;

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
        "/mpp/evm" | "/both" => {
            let price = query.get("price").cloned().unwrap_or_else(|| "250000".into());
            // `/both` offers x402 too (`?x402=unpayable`: in a scheme no client pays).
            let x402 = (path == "/both").then(|| {
                let mut r = requirement(2, token, &price, &url);
                if query.get("x402").is_some_and(|v| v == "unpayable") {
                    r["scheme"] = json!("upto");
                }
                r
            });
            if let Some(requirement) = &x402
                && let Some(header) = req.headers().get("PAYMENT-SIGNATURE").and_then(|v| v.to_str().ok())
            {
                seen.lock().unwrap().payment_headers.push(header.to_owned());
                return match verify(2, header, requirement, token) {
                    Ok((payer, value, nonce)) => settle(&seen, payer, value, nonce, 2, &path),
                    Err(why) => payment_required(2, requirement, &url, &why),
                };
            }
            return mpp_evm(&req, token, &seen, &price, x402.as_ref(), &url, &path);
        }
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
    let on_chain = {
        let s = seen.lock().unwrap();
        s.settle_on_chain.clone().filter(|_| mode == "paid" && !s.settled.contains_key(&nonce))
    };
    let mut settled_on_chain = None;
    if let Some(settle) = on_chain {
        match settle(header.clone()).await {
            Ok(transaction) => settled_on_chain = Some(transaction),
            Err(why) => {
                seen.lock().unwrap().refused.push(why);
                let doc = json!({"success": false, "errorReason": "insufficient_funds", "transaction": "",
                    "network": network, "payer": payer.to_checksum(None)});
                return HttpResponse::PaymentRequired().insert_header(settlement_header(version, &doc)).json(json!({}));
            }
        }
    }
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
            let transaction =
                settled_on_chain.clone().unwrap_or_else(|| format!("0x{}", hex::encode(keccak256(nonce.as_bytes()))));
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
    let signature = payload["payload"]["signature"].as_str().unwrap_or_default();
    let authorized = TransferWithAuthorization {
        from,
        to,
        value,
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    signed_by(&authorized, signature, token)
        .map(|()| (from, value, nonce.to_string()))
        .map_err(|()| "invalid_exact_evm_payload_signature".to_owned())
}

/// The EIP-712 signature of `authorized` (0x-hex) recovers to its `from`, in the test token's domain.
fn signed_by(authorized: &TransferWithAuthorization, signature: &str, token: Address) -> Result<(), ()> {
    let domain = eip712_domain! {
        name: TOKEN_NAME,
        version: TOKEN_VERSION,
        chain_id: 84532,
        verifying_contract: token,
    };
    let signature: Signature = signature.parse().map_err(|_| ())?;
    match signature.recover_address_from_prehash(&authorized.eip712_signing_hash(&domain)) {
        Ok(signer) if signer == authorized.from => Ok(()),
        _ => Err(()),
    }
}

/// Settles a verified payment once per nonce (a nonce used before is refused, as on chain).
fn settle(
    seen: &Arc<Mutex<Seen>>,
    payer: Address,
    value: U256,
    nonce: String,
    version: u8,
    path: &str,
) -> HttpResponse {
    let mut s = seen.lock().unwrap();
    if s.settled.contains_key(&nonce) {
        s.refused.push("nonce already used".into());
        return HttpResponse::Conflict().body("nonce already used");
    }
    let transaction = format!("0x{}", hex::encode(keccak256(nonce.as_bytes())));
    s.settled.insert(nonce, Settled { payer, value, transaction: transaction.clone(), deliveries: 1 });
    let doc = json!({"success": true, "transaction": transaction, "network": "eip155:84532", "payer": payer.to_checksum(None)});
    HttpResponse::Ok()
        .insert_header(settlement_header(version, &doc))
        .json(json!({"data": "paid content", "path": path}))
}

// MPP (draft-ryan-httpauth-payment, evm charge by EIP-3009 authorization), as a server would
// run it: a stateless challenge whose id is the HMAC of its parameters, verified on the way back.

const MPP_REALM: &str = "api.test";
const MPP_SECRET: &[u8] = b"the local MPP server's binding secret";

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The challenge id: HMAC-SHA256 over the seven positional slots, base64url.
fn mpp_id(realm: &str, method: &str, intent: &str, request: &str, expires: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(MPP_SECRET).unwrap();
    mac.update([realm, method, intent, request, expires, "", ""].join("|").as_bytes());
    b64url(&mac.finalize().into_bytes())
}

fn mpp_challenge(token: Address, price: &str, problem: Option<&str>, x402: Option<&Value>, url: &str) -> HttpResponse {
    // serde_json's maps sort their keys: compact output is the JCS form of this document.
    let request = json!({"amount": price, "currency": token.to_checksum(None), "recipient": PAY_TO,
        "methodDetails": {"chainId": 84532, "credentialTypes": ["permit2", "authorization"]}});
    let request = b64url(request.to_string().as_bytes());
    let expires = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(300)).to_string();
    let id = mpp_id(MPP_REALM, "evm", "charge", &request, &expires);
    let header = format!(
        r#"Payment id="{id}", realm="{MPP_REALM}", method="evm", intent="charge", expires="{expires}", request="{request}""#
    );
    let mut response = HttpResponse::PaymentRequired();
    response.insert_header(("WWW-Authenticate", header)).insert_header(("Cache-Control", "no-store"));
    if let Some(requirement) = x402 {
        let doc =
            json!({"x402Version": 2, "error": "payment required", "resource": {"url": url}, "accepts": [requirement]});
        response.insert_header(("PAYMENT-REQUIRED", BASE64.encode(doc.to_string())));
    }
    match problem {
        Some(detail) => response
            .content_type("application/problem+json")
            .json(json!({"type": "https://paymentauth.org/problems/verification-failed", "title": "Payment verification failed", "detail": detail})),
        None => response.finish(),
    }
}

fn mpp_evm(
    req: &HttpRequest,
    token: Address,
    seen: &Arc<Mutex<Seen>>,
    price: &str,
    x402: Option<&Value>,
    url: &str,
    path: &str,
) -> HttpResponse {
    let credential = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Payment "))
        .map(str::to_owned);
    let Some(credential) = credential else {
        seen.lock().unwrap().unpaid += 1;
        return mpp_challenge(token, price, None, x402, url);
    };
    seen.lock().unwrap().payment_headers.push(credential.clone());
    match verify_mpp(&credential, token, price) {
        Ok((payer, value, nonce, id)) => {
            let mut s = seen.lock().unwrap();
            if s.settled.contains_key(&nonce) {
                s.refused.push("nonce already used".into());
                drop(s);
                return mpp_challenge(token, price, Some("this authorization was used already"), x402, url);
            }
            let transaction = format!("0x{}", hex::encode(keccak256(nonce.as_bytes())));
            s.settled.insert(nonce, Settled { payer, value, transaction: transaction.clone(), deliveries: 1 });
            let receipt = json!({"method": "evm", "challengeId": id, "reference": transaction, "status": "success",
                "timestamp": jiff::Timestamp::now().to_string(), "chainId": 84532});
            HttpResponse::Ok()
                .insert_header(("Payment-Receipt", b64url(receipt.to_string().as_bytes())))
                .json(json!({"data": "paid content", "path": path}))
        }
        Err(why) => {
            seen.lock().unwrap().refused.push(why.clone());
            mpp_challenge(token, price, Some(&why), x402, url)
        }
    }
}

/// Checks an MPP credential as the evm charge draft says a server must; returns (payer, value, nonce, challenge id).
fn verify_mpp(credential: &str, token: Address, price: &str) -> Result<(Address, U256, String, String), String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(credential).map_err(|_| "not base64url")?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| "not JSON")?;
    let c = &doc["challenge"];
    let field = |v: &Value, key: &str| v[key].as_str().map(str::to_owned).ok_or_else(|| format!("{key} missing"));
    let (id, realm, request, expires) =
        (field(c, "id")?, field(c, "realm")?, field(c, "request")?, field(c, "expires")?);
    if id != mpp_id(&realm, &field(c, "method")?, &field(c, "intent")?, &request, &expires) {
        return Err("the challenge id does not bind its parameters".into());
    }
    if expires.parse::<jiff::Timestamp>().map_err(|_| "expires")? <= jiff::Timestamp::now() {
        return Err("the challenge has expired".into());
    }
    let asked: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&request).map_err(|_| "request")?,
    )
    .map_err(|_| "request")?;
    if asked["amount"] != price || asked["currency"] != token.to_checksum(None) {
        return Err("a credential for another request".into());
    }
    let p = &doc["payload"];
    if p["type"] != "authorization" {
        return Err("payload.type must be authorization".into());
    }
    let from: Address = field(p, "from")?.parse().map_err(|_| "from")?;
    let to: Address = field(p, "to")?.parse().map_err(|_| "to")?;
    let value: U256 = field(p, "value")?.parse().map_err(|_| "value")?;
    let valid_after: u64 = field(p, "validAfter")?.parse().map_err(|_| "validAfter")?;
    let valid_before: u64 = field(p, "validBefore")?.parse().map_err(|_| "validBefore")?;
    let nonce: B256 = field(p, "nonce")?.parse().map_err(|_| "nonce")?;
    if to != PAY_TO.parse::<Address>().unwrap() || value != price.parse::<U256>().unwrap() {
        return Err("to or value differ from the challenge".into());
    }
    if nonce != keccak256([id.as_bytes(), realm.as_bytes()].concat()) {
        return Err("the nonce is not the challenge hash".into());
    }
    if valid_before <= jiff::Timestamp::now().as_second() as u64 {
        return Err("validBefore has passed".into());
    }
    let authorized = TransferWithAuthorization {
        from,
        to,
        value,
        validAfter: U256::from(valid_after),
        validBefore: U256::from(valid_before),
        nonce,
    };
    signed_by(&authorized, &field(p, "signature")?, token)
        .map(|()| (from, value, nonce.to_string(), id))
        .map_err(|()| "the signature does not recover to from".to_owned())
}
