//! MPP: the HTTP `Payment` authentication scheme (draft-ryan-httpauth-payment), paid where it fits
//! spendgate's wallets: method `evm`, intent `charge`, with an EIP-3009 authorization
//! (draft-evm-charge, credential type `authorization`) in a token whose EIP-712 domain is known.
//! Reading the challenges, choosing one, the credential, the receipt. Pure: no I/O, no rule.

use alloy_primitives::{Address, B256, U256, keccak256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use serde_json::{Value, json};

use super::eip3009::{Authorization, Domain};
use super::x402::{Asset, MAX_ATOMIC, NETWORKS, Offer, Settlement};

/// One `Payment` challenge from a `WWW-Authenticate` header, its parameters as received.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Challenge {
    pub id: String,
    pub realm: String,
    pub method: String,
    pub intent: String,
    /// base64url (no padding) of the JCS JSON request, kept exactly as sent: the credential echoes it.
    pub request: String,
    pub expires: Option<String>,
    pub digest: Option<String>,
    pub description: Option<String>,
    pub opaque: Option<String>,
}

/// A challenge spendgate can pay, and the payment it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub challenge: Challenge,
    pub offer: Offer,
}

/// Every well-formed `Payment` challenge in the headers (a header may hold several challenges,
/// and several headers may be sent). A challenge without its required parameters is left out.
pub fn challenges(www_authenticate: &[&str]) -> Vec<Challenge> {
    let mut found = Vec::new();
    for header in www_authenticate {
        for (scheme, params) in parse_challenges(header) {
            if !scheme.eq_ignore_ascii_case("payment") {
                continue;
            }
            let get = |name: &str| {
                params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
                    .filter(|v| !v.is_empty())
            };
            let (Some(id), Some(realm), Some(method), Some(intent), Some(request)) =
                (get("id"), get("realm"), get("method"), get("intent"), get("request"))
            else {
                continue;
            };
            found.push(Challenge {
                id,
                realm,
                method,
                intent,
                request,
                expires: get("expires"),
                digest: get("digest"),
                description: get("description"),
                opaque: get("opaque"),
            });
        }
    }
    found
}

/// RFC 9110 challenges: `scheme param=value, param="quoted", …, scheme2 …`.
fn parse_challenges(header: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let s = header.as_bytes();
    let mut i = 0;
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let skip = |i: &mut usize, set: &[u8]| {
        while *i < s.len() && set.contains(&s[*i]) {
            *i += 1;
        }
    };
    while i < s.len() {
        skip(&mut i, b" \t\r\n,");
        let start = i;
        while i < s.len() && is_token(s[i]) {
            i += 1;
        }
        if start == i {
            // Not a token where one must be: the rest cannot be read safely.
            break;
        }
        let token = &header[start..i];
        let mut j = i;
        skip(&mut j, b" \t\r\n");
        if j < s.len() && s[j] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            j += 1;
            skip(&mut j, b" \t\r\n");
            let value = if j < s.len() && s[j] == b'"' {
                j += 1;
                let mut v = String::new();
                while j < s.len() && s[j] != b'"' {
                    if s[j] == b'\\' && j + 1 < s.len() {
                        j += 1;
                    }
                    let ch = header[j..].chars().next().unwrap_or('\u{fffd}');
                    v.push(ch);
                    j += ch.len_utf8();
                }
                j += 1;
                v
            } else {
                let vstart = j;
                while j < s.len() && (is_token(s[j]) || s[j] == b'/' || s[j] == b'=') {
                    j += 1;
                }
                header[vstart..j].to_owned()
            };
            if let Some((_, params)) = out.last_mut() {
                params.push((token.to_owned(), value));
            }
            i = j;
        } else {
            out.push((token.to_owned(), Vec::new()));
        }
    }
    out
}

/// The cheapest challenge spendgate can pay, or why none can be. `now` in Unix seconds.
pub fn choose(challenges: &[Challenge], assets: &[Asset], now: i64) -> Result<Charge, String> {
    let mut why = Vec::new();
    let mut best: Option<Charge> = None;
    for (i, c) in challenges.iter().enumerate() {
        match charge(c, assets, now) {
            Ok(ch) if best.as_ref().is_none_or(|b| ch.offer.amount < b.offer.amount) => best = Some(ch),
            Ok(_) => {}
            Err(e) => why.push(format!("challenge {i} ({} {}): {e}", c.method, c.intent)),
        }
    }
    best.ok_or_else(|| why.join("; "))
}

/// The longest a signed MPP authorization stays valid when the challenge sets no expiry.
const DEFAULT_VALIDITY_SECONDS: u64 = 300;

fn charge(c: &Challenge, assets: &[Asset], now: i64) -> Result<Charge, String> {
    if c.method != "evm" || c.intent != "charge" {
        return Err("spendgate pays the evm method's charge intent only".into());
    }
    let validity = match &c.expires {
        None => DEFAULT_VALIDITY_SECONDS,
        Some(expires) => {
            let at: jiff::Timestamp = expires.parse().map_err(|_| format!("expires {expires:?} is not RFC 3339"))?;
            let left = at.as_second() - now;
            if left < 5 {
                return Err("the challenge has expired".into());
            }
            left as u64
        }
    };
    let request: Value = BASE64URL
        .decode(c.request.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("request is not base64url JSON")?;
    let field = |key: &str| request.get(key).and_then(Value::as_str).ok_or_else(|| format!("request.{key} missing"));
    let details = request.get("methodDetails").cloned().unwrap_or(Value::Null);
    let types = details.get("credentialTypes").and_then(Value::as_array);
    if !types.is_some_and(|t| t.iter().any(|t| t == "authorization")) {
        return Err("the server does not take an EIP-3009 authorization (credentialTypes)".into());
    }
    if details.get("splits").is_some_and(|s| !s.is_null()) {
        return Err("split payments need Permit2, which spendgate does not sign".into());
    }
    let chain_id = details.get("chainId").and_then(Value::as_u64).ok_or("methodDetails.chainId missing")?;
    let network =
        NETWORKS.into_iter().find(|n| n.chain_id == chain_id).ok_or(format!("chain {chain_id} is not configured"))?;
    let asset: Address = field("currency")?.parse().map_err(|_| "currency is not a token address".to_owned())?;
    let known = assets
        .iter()
        .find(|a| a.network == network.caip2 && a.address == asset)
        .ok_or_else(|| format!("token {asset} on {} is not configured", network.caip2))?;
    let (name, version) = known.domain.clone().ok_or_else(|| {
        format!("token {asset}'s EIP-712 name and version are not configured (SPENDGATE_X402_ASSETS), so it cannot be signed for")
    })?;
    let pay_to: Address = field("recipient")?.parse().map_err(|_| "recipient is not an address".to_owned())?;
    let amount: U256 = field("amount")?
        .parse()
        .ok()
        .filter(|a: &U256| *a > U256::ZERO && *a <= U256::from(MAX_ATOMIC))
        .ok_or_else(|| format!("amount is not an amount from 1 to {MAX_ATOMIC}"))?;
    let offer = Offer {
        raw: request,
        network,
        network_name: network.caip2.to_owned(),
        asset,
        pay_to,
        amount,
        max_timeout_seconds: validity,
        domain: Domain { name, version, chain_id, verifying_contract: asset },
    };
    Ok(Charge { challenge: c.clone(), offer })
}

/// The EIP-3009 nonce that binds the authorization to its challenge:
/// `keccak256(abi.encodePacked(id, realm))`. The token spends a nonce once, so one challenge can
/// never be paid twice.
pub fn nonce(c: &Challenge) -> B256 {
    keccak256([c.id.as_bytes(), c.realm.as_bytes()].concat())
}

/// `Authorization: Payment <credential>`: the challenge echoed, the signed authorization, the payer.
pub fn credential(
    c: &Challenge,
    offer: &Offer,
    signature: String,
    authorization: &Authorization,
) -> (&'static str, String) {
    let mut echoed =
        json!({"id": c.id, "realm": c.realm, "method": c.method, "intent": c.intent, "request": c.request});
    for (key, value) in
        [("expires", &c.expires), ("digest", &c.digest), ("description", &c.description), ("opaque", &c.opaque)]
    {
        if let Some(v) = value {
            echoed[key] = json!(v);
        }
    }
    let document = json!({
        "challenge": echoed,
        "payload": {
            "type": "authorization",
            "from": authorization.from,
            "to": authorization.to,
            "value": authorization.value,
            "validAfter": authorization.valid_after,
            "validBefore": authorization.valid_before,
            "nonce": authorization.nonce,
            "signature": signature,
        },
        "source": format!("did:pkh:eip155:{}:{}", offer.network.chain_id, authorization.from),
    });
    ("Authorization", format!("Payment {}", BASE64URL.encode(document.to_string())))
}

/// Reads `Payment-Receipt`; None when absent or unreadable. Receipts come only with success.
pub fn receipt(header: Option<&str>) -> Option<Settlement> {
    let bytes = BASE64URL.decode(header?.trim().trim_end_matches('=')).ok()?;
    let doc: Value = serde_json::from_slice(&bytes).ok()?;
    (doc.get("status")? == "success").then(|| Settlement::Settled {
        transaction: doc.get("reference").and_then(Value::as_str).unwrap_or_default().to_owned(),
        payer: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

    fn request(doc: Value) -> String {
        BASE64URL.encode(doc.to_string())
    }

    fn usdc_request(amount: &str, types: Value) -> String {
        request(json!({"amount": amount, "currency": TOKEN, "recipient": "0x742d35Cc6634C0532925a3b844Bc9e7595f8fE00",
            "methodDetails": {"chainId": 84532, "credentialTypes": types}}))
    }

    #[test]
    fn challenges_are_read_from_the_drafts_syntax() {
        let header = format!(
            "Payment id=\"x7Tg2pLqR9mKvNwY3hBcZa\",\n    realm=\"api.example.com\", method=evm, intent=\"charge\", \
             expires=\"2026-04-01T12:05:00Z\", description=\"a \\\"quoted\\\" word\", request=\"{}\", Bearer realm=\"x\", \
             Payment id=second, realm=r, method=tempo, intent=charge, request=e30",
            usdc_request("1000", json!(["authorization"]))
        );
        let found = challenges(&[&header]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!((found[0].id.as_str(), found[0].method.as_str()), ("x7Tg2pLqR9mKvNwY3hBcZa", "evm"));
        assert_eq!(found[0].description.as_deref(), Some("a \"quoted\" word"));
        assert_eq!(found[0].expires.as_deref(), Some("2026-04-01T12:05:00Z"));
        assert_eq!((found[1].id.as_str(), found[1].request.as_str()), ("second", "e30"));
        // Missing required parameters: not a challenge; garbage: nothing, and no panic.
        assert!(challenges(&["Payment id=\"\", realm=r, method=evm, intent=charge, request=e30"]).is_empty());
        assert!(challenges(&["Payment realm=r"]).is_empty());
        for junk in ["", "=", "Payment =x", "Payment id=\"unterminated", "\u{e9}\u{e9} x=1", "Payment id=a,,,"] {
            let _ = challenges(&[junk]);
        }
    }

    #[test]
    fn only_an_evm_charge_by_authorization_in_a_known_token_is_paid() {
        let assets = super::super::x402::built_in_assets();
        let at = |request: String, expires: Option<&str>| Challenge {
            id: "c1".into(),
            realm: "api.example.com".into(),
            method: "evm".into(),
            intent: "charge".into(),
            request,
            expires: expires.map(Into::into),
            ..Challenge::default()
        };
        let now = jiff::Timestamp::from_second(1_775_000_000).unwrap().as_second();
        let ok =
            choose(&[at(usdc_request("250000", json!(["permit2", "authorization"])), None)], &assets, now).unwrap();
        assert_eq!((ok.offer.amount, ok.offer.domain.name.as_str()), (U256::from(250_000), "USDC"));
        let refused = |c: Challenge| choose(&[c], &assets, now).unwrap_err();
        assert!(refused(at(usdc_request("1", json!(["permit2"])), None)).contains("credentialTypes"));
        assert!(refused(at(usdc_request("1", Value::Null), None)).contains("credentialTypes"));
        assert!(refused(at(usdc_request("0", json!(["authorization"])), None)).contains("amount"));
        assert!(
            refused(Challenge { method: "tempo".into(), ..at(usdc_request("1", json!(["authorization"])), None) })
                .contains("evm")
        );
        assert!(
            refused(at(usdc_request("1", json!(["authorization"])), Some("2026-03-31T00:00:00Z"))).contains("expired")
        );
        let split = request(json!({"amount": "10", "currency": TOKEN, "recipient": TOKEN,
            "methodDetails": {"chainId": 84532, "credentialTypes": ["authorization"], "splits": [{"recipient": TOKEN, "amount": "1"}]}}));
        assert!(refused(at(split, None)).contains("Permit2"));
        let other_chain = request(json!({"amount": "10", "currency": TOKEN, "recipient": TOKEN,
            "methodDetails": {"chainId": 1, "credentialTypes": ["authorization"]}}));
        assert!(refused(at(other_chain, None)).contains("chain 1"));
        // The cheapest of several wins.
        let two = [
            at(usdc_request("900", json!(["authorization"])), None),
            at(usdc_request("800", json!(["authorization"])), None),
        ];
        assert_eq!(choose(&two, &assets, now).unwrap().offer.amount, U256::from(800));
    }

    #[test]
    fn the_nonce_binds_the_challenge_and_the_receipt_is_read() {
        let c = Challenge { id: "aB3c".into(), realm: "api.example.com".into(), ..Challenge::default() };
        assert_eq!(nonce(&c), keccak256(b"aB3capi.example.com"));
        let receipt_doc =
            json!({"method": "evm", "reference": "0xabc", "status": "success", "timestamp": "2026-04-01T12:04:58Z"});
        assert_eq!(
            receipt(Some(&BASE64URL.encode(receipt_doc.to_string()))),
            Some(Settlement::Settled { transaction: "0xabc".into(), payer: None })
        );
        assert_eq!(receipt(Some("not base64 at all!")), None);
        assert_eq!(receipt(None), None);
    }
}
