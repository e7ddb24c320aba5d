//! How card processors sign what they send, checked on the raw body bytes before anything is parsed.
//! Every check takes the clock as an argument, so known-answer vectors with fixed timestamps verify.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::crypto::{Secret, mac, within};

/// How far a signature's timestamp may be from now, either way (Stripe's and Standard Webhooks' 5 minutes;
/// Stripe's own check is one-sided, but a timestamp from the future is as suspect as one from the past).
pub const TOLERANCE_SECONDS: i64 = 300;

/// Why a request was refused: for the security log only, never for the caller.
pub type Refusal = &'static str;

/// Whether any of `signatures` is the MAC, under any of `keys` (current, previous), of what
/// `message` writes.
fn signed_by_any(keys: &[Vec<u8>], signatures: &[Vec<u8>], message: impl Fn(&mut Hmac<Sha256>)) -> Result<(), Refusal> {
    for key in keys {
        let mut mac = mac(key);
        message(&mut mac);
        // verify_slice compares in constant time, and only slices of the full length.
        if signatures.iter().any(|sig| mac.clone().verify_slice(sig).is_ok()) {
            return Ok(());
        }
    }
    Err("signature does not match")
}

fn fresh(timestamp: i64, now: i64) -> Result<(), Refusal> {
    if !within(timestamp, now, TOLERANCE_SECONDS) {
        return Err("signature timestamp outside the tolerance");
    }
    Ok(())
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">[,v1=…]`, keyed with the whole secret
/// string as bytes (a `whsec_` prefix is part of the key, not decoded): Stripe's `Stripe-Signature`
/// and spendgate's own `Spendgate-Signature`. Holds the current secret and, during a rotation, the previous.
///
/// spendgate's own header also has `v2=`: the HMAC of `"<t>.<METHOD>.<path>.<raw body>"`, which binds
/// the signature to the route it was made for. `v1` covers the body alone, so a signed capture could
/// be replayed against another authorization's path as a reverse or a refund; routes whose path names
/// the object or the action accept `v2` only.
#[derive(Clone)]
pub struct HexSignature(Vec<Vec<u8>>);

/// The route a `v2` signature is made for: the method and the path exactly as sent, without the query.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// Which signatures a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// `v1` or `v2`: the body alone says what the request is for.
    BodyOrRoute,
    /// `v2` only: the path names the object or the action.
    Route,
}

/// A signature header read: its timestamp and the signatures of each version.
struct Parsed {
    t: i64,
    v1: Vec<Vec<u8>>,
    v2: Vec<Vec<u8>>,
}

fn parse_hex_header(header: Option<&str>, now: i64) -> Result<Parsed, Refusal> {
    let header = header.ok_or("missing signature")?;
    let (mut t, mut v1, mut v2) = (None, Vec::new(), Vec::new());
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", sig)) => v1.extend(hex::decode(sig).ok()),
            Some(("v2", sig)) => v2.extend(hex::decode(sig).ok()),
            _ => {}
        }
    }
    let t = t.ok_or("signature has no valid t=")?;
    fresh(t, now)?;
    Ok(Parsed { t, v1, v2 })
}

impl HexSignature {
    pub fn new(current: Option<&Secret>, previous: Option<&Secret>) -> Option<Self> {
        let mut keys = vec![current?.expose().as_bytes().to_vec()];
        keys.extend(previous.map(|p| p.expose().as_bytes().to_vec()));
        Some(HexSignature(keys))
    }

    /// A `v1` signature of the body (Stripe's scheme).
    pub fn verify(&self, header: Option<&str>, body: &[u8], now: i64) -> Result<(), Refusal> {
        let parsed = parse_hex_header(header, now)?;
        if parsed.v1.is_empty() {
            return Err("signature has no v1=");
        }
        signed_by_any(&self.0, &parsed.v1, |mac| v1_message(mac, parsed.t, body))
    }

    /// spendgate's own header: a `v2` signature of this route and body, or, where `accept` allows,
    /// a `v1` signature of the body.
    pub fn verify_route(
        &self,
        header: Option<&str>,
        route: Route<'_>,
        body: &[u8],
        now: i64,
        accept: Accept,
    ) -> Result<(), Refusal> {
        let parsed = parse_hex_header(header, now)?;
        if !parsed.v2.is_empty() {
            return signed_by_any(&self.0, &parsed.v2, |mac| v2_message(mac, parsed.t, route, body));
        }
        match accept {
            Accept::BodyOrRoute if !parsed.v1.is_empty() => {
                signed_by_any(&self.0, &parsed.v1, |mac| v1_message(mac, parsed.t, body))
            }
            Accept::BodyOrRoute => Err("signature has no v1= or v2="),
            Accept::Route => Err("this route needs a v2= signature (method and path signed)"),
        }
    }

    /// The `v1` header value for `body` at `t` with the current secret (Stripe's scheme).
    pub fn sign(&self, body: &[u8], t: i64) -> String {
        let mut mac = mac(&self.0[0]);
        v1_message(&mut mac, t, body);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// The `v2` header value for `body` sent to `route` at `t` with the current secret.
    pub fn sign_route(&self, route: Route<'_>, body: &[u8], t: i64) -> String {
        let mut mac = mac(&self.0[0]);
        v2_message(&mut mac, t, route, body);
        format!("t={t},v2={}", hex::encode(mac.finalize().into_bytes()))
    }
}

fn v1_message(mac: &mut Hmac<Sha256>, t: i64, body: &[u8]) {
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
}

fn v2_message(mac: &mut Hmac<Sha256>, t: i64, route: Route<'_>, body: &[u8]) {
    mac.update(format!("{t}.{}.{}.", route.method, route.path).as_bytes());
    mac.update(body);
}

/// Standard Webhooks (Lithic): `webhook-id`, `webhook-timestamp` and `webhook-signature` = space-separated
/// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<raw body>">`, keyed with the base64 decoding of the part
/// of the secret after `whsec_`.
///
/// Written here rather than taken from the `standardwebhooks` crate (1.0.1): its comparison zips the
/// received signature with the expected one, so an empty or truncated signature (`v1,`) verifies any
/// body; and it reads the clock itself, so fixed-timestamp vectors cannot be checked.
#[derive(Clone)]
pub struct StandardWebhooks(Vec<Vec<u8>>);

/// The three headers as received.
pub struct WebhookHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

impl StandardWebhooks {
    /// Err when a secret is not `whsec_` + base64.
    pub fn new(current: Option<&Secret>, previous: Option<&Secret>) -> Result<Option<Self>, String> {
        let Some(current) = current else { return Ok(None) };
        let mut keys = vec![Self::key(current)?];
        if let Some(previous) = previous {
            keys.push(Self::key(previous)?);
        }
        Ok(Some(StandardWebhooks(keys)))
    }

    fn key(secret: &Secret) -> Result<Vec<u8>, String> {
        let s = secret.expose();
        let encoded = s.strip_prefix("whsec_").unwrap_or(s);
        match BASE64.decode(encoded) {
            Ok(key) if key.len() >= 16 => Ok(key),
            Ok(_) => Err("must decode to at least 16 bytes".into()),
            Err(_) => Err("must be whsec_ followed by base64".into()),
        }
    }

    pub fn verify(&self, headers: &WebhookHeaders<'_>, body: &[u8], now: i64) -> Result<(), Refusal> {
        let id = headers.id.filter(|id| !id.is_empty()).ok_or("missing webhook-id")?;
        let timestamp = headers.timestamp.ok_or("missing webhook-timestamp")?;
        let t: i64 = timestamp.trim().parse().map_err(|_| "webhook-timestamp is not a number")?;
        fresh(t, now)?;
        let header = headers.signature.ok_or("missing webhook-signature")?;
        let signatures: Vec<Vec<u8>> = header
            .split(' ')
            .filter_map(|part| part.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| BASE64.decode(sig).ok())
            .collect();
        if signatures.is_empty() {
            return Err("webhook-signature has no v1 signature");
        }
        signed_by_any(&self.0, &signatures, |mac| {
            mac.update(format!("{id}.{t}.").as_bytes());
            mac.update(body);
        })
    }

    /// `webhook-signature` for `body` (for the simulator and tests).
    pub fn sign(&self, id: &str, t: i64, body: &[u8]) -> String {
        let mut mac = mac(&self.0[0]);
        mac.update(format!("{id}.{t}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// HTTP Basic credentials (Marqeta's JIT gateway), current and previous, compared in constant time.
#[derive(Clone)]
pub struct BasicAuth(Vec<[u8; 32]>);

impl BasicAuth {
    pub fn new(username: Option<&Secret>, password: Option<&Secret>, previous: Option<&Secret>) -> Option<Self> {
        let (user, pass) = (username?, password?);
        let mut accepted = vec![Self::digest(user.expose(), pass.expose())];
        accepted.extend(previous.map(|p| Self::digest(user.expose(), p.expose())));
        Some(BasicAuth(accepted))
    }

    /// Comparing fixed-length digests keeps the comparison's time independent of the lengths too.
    fn digest(user: &str, pass: &str) -> [u8; 32] {
        let mut mac = mac(b"spendgate basic auth");
        mac.update(format!("{user}:{pass}").as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn verify(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let header = authorization.ok_or("missing Authorization")?;
        let (scheme, encoded) = header.trim().split_once(' ').ok_or("Authorization is not Basic")?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err("Authorization is not Basic");
        }
        let decoded = BASE64.decode(encoded.trim()).map_err(|_| "Authorization is not base64")?;
        let text = String::from_utf8(decoded).map_err(|_| "Authorization is not UTF-8")?;
        let (user, pass) = text.split_once(':').ok_or("Authorization has no user:password")?;
        let mut given = mac(b"spendgate basic auth");
        given.update(format!("{user}:{pass}").as_bytes());
        if self.0.iter().any(|expected| given.clone().verify_slice(expected).is_ok()) {
            return Ok(());
        }
        Err("credentials do not match")
    }

    /// The header value for these credentials (for the simulator and tests).
    pub fn header(user: &str, pass: &str) -> String {
        format!("Basic {}", BASE64.encode(format!("{user}:{pass}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(name: &str) -> serde_json::Value {
        let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).expect("vector file")).expect("vector JSON")
    }

    fn hex_keys() -> HexSignature {
        HexSignature::new(
            Some(&Secret::new("whsec_current_0123456789")),
            Some(&Secret::new("whsec_previous_0123456789")),
        )
        .unwrap()
    }

    #[test]
    fn stripe_signature_vector_from_the_official_library() {
        let v = vector("stripe_signature.json");
        let keys = HexSignature::new(Some(&Secret::new(v["secret"].as_str().unwrap())), None).unwrap();
        let (header, body, t) =
            (v["header"].as_str().unwrap(), v["payload"].as_str().unwrap(), v["timestamp"].as_i64().unwrap());
        assert!(keys.verify(Some(header), body.as_bytes(), t).is_ok());
        assert_eq!(keys.sign(body.as_bytes(), t), header);
        // The same vector with the real clock is stale.
        let now = jiff::Timestamp::now().as_second();
        assert_eq!(keys.verify(Some(header), body.as_bytes(), now), Err("signature timestamp outside the tolerance"));
        // One byte changed in the body.
        let tampered = body.replacen("2000", "2001", 1);
        assert_eq!(keys.verify(Some(header), tampered.as_bytes(), t), Err("signature does not match"));
    }

    #[test]
    fn standard_webhooks_vector_from_the_official_library() {
        let v = vector("lithic_standard_webhooks.json");
        let keys = StandardWebhooks::new(Some(&Secret::new(v["secret"].as_str().unwrap())), None).unwrap().unwrap();
        let body = v["payload"].as_str().unwrap().as_bytes();
        let headers = WebhookHeaders {
            id: v["webhook-id"].as_str(),
            timestamp: v["webhook-timestamp"].as_str(),
            signature: v["webhook-signature"].as_str(),
        };
        let t: i64 = v["webhook-timestamp"].as_str().unwrap().parse().unwrap();
        assert!(keys.verify(&headers, body, t).is_ok());
        assert_eq!(keys.sign(headers.id.unwrap(), t, body), headers.signature.unwrap());
        let now = jiff::Timestamp::now().as_second();
        assert_eq!(keys.verify(&headers, body, now), Err("signature timestamp outside the tolerance"));
        let other_id = WebhookHeaders { id: Some("another-id"), ..headers };
        assert_eq!(keys.verify(&other_id, body, t), Err("signature does not match"));
    }

    #[test]
    fn standard_webhooks_refuses_empty_and_truncated_signatures() {
        let keys =
            StandardWebhooks::new(Some(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")), None).unwrap().unwrap();
        let good = keys.sign("msg_1", 100, b"{}");
        let truncated = &good[..good.len() - 8];
        for signature in ["v1,", "v1,AAAA", truncated, "v2,abc", ""] {
            let h = WebhookHeaders { id: Some("msg_1"), timestamp: Some("100"), signature: Some(signature) };
            assert!(keys.verify(&h, b"{}", 100).is_err(), "{signature:?} must not verify");
        }
        let two = format!("v1,AAAA {good}");
        let h = WebhookHeaders { id: Some("msg_1"), timestamp: Some("100"), signature: Some(&two) };
        assert!(keys.verify(&h, b"{}", 100).is_ok(), "any listed signature may match");
        assert!(StandardWebhooks::new(Some(&Secret::new("whsec_not base64!")), None).is_err());
    }

    #[test]
    fn hex_signatures_verify_on_the_raw_bytes_within_the_tolerance() {
        let k = hex_keys();
        let body = br#"{"id":"a"}"#;
        let header = k.sign(body, 1_000);
        assert!(k.verify(Some(&header), body, 1_000).is_ok());
        assert_eq!(k.verify(Some(&header), br#"{"id": "a"}"#, 1_000), Err("signature does not match"));
        assert_eq!(k.verify(None, body, 1_000), Err("missing signature"));
        assert_eq!(k.verify(Some(&header), body, 1_301), Err("signature timestamp outside the tolerance"));
        assert_eq!(k.verify(Some(&header), body, 699), Err("signature timestamp outside the tolerance"));
        assert_eq!(k.verify(Some("t=1000"), body, 1_000), Err("signature has no v1="));
        assert_eq!(k.verify(Some("v1=00"), body, 1_000), Err("signature has no valid t="));
        let truncated = &header[..header.len() - 2];
        assert_eq!(k.verify(Some(truncated), body, 1_000), Err("signature does not match"));
    }

    #[test]
    fn the_previous_secret_verifies_during_rotation_and_any_v1_may_match() {
        let old = HexSignature::new(Some(&Secret::new("whsec_previous_0123456789")), None).unwrap();
        let body = b"{}";
        let header = old.sign(body, 50);
        assert!(hex_keys().verify(Some(&header), body, 50).is_ok());
        let two = format!("t=50,v1={},{}", "00".repeat(32), header.split_once(',').unwrap().1);
        assert!(hex_keys().verify(Some(&two), body, 50).is_ok());
        let stranger = HexSignature::new(Some(&Secret::new("whsec_someone_else_000")), None).unwrap();
        assert!(stranger.verify(Some(&header), body, 50).is_err());
    }

    #[test]
    fn a_hex_known_answer() {
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac 'whsec_current_0123456789'
        let k = HexSignature::new(Some(&Secret::new("whsec_current_0123456789")), None).unwrap();
        let expected = "t=1700000000,v1=48cf457751d0a03858899cd13b8d96ff35f596ed8982e703b108be9e32769b69";
        assert_eq!(k.sign(b"{}", 1_700_000_000), expected);
        assert!(k.verify(Some(expected), b"{}", 1_700_000_000).is_ok());
    }

    #[test]
    fn a_v2_signature_binds_method_and_path() {
        // printf '1700000000.POST./v1/authorizations/auth_1/capture.{}' | openssl dgst -sha256 -hmac 'whsec_current_0123456789'
        let k = HexSignature::new(Some(&Secret::new("whsec_current_0123456789")), None).unwrap();
        let capture = Route { method: "POST", path: "/v1/authorizations/auth_1/capture" };
        let expected = "t=1700000000,v2=2f5a3eb2d929622ae3f015527ad5d8e56631a8162d5d2e0e6d372701d9b46e61";
        assert_eq!(k.sign_route(capture, b"{}", 1_700_000_000), expected);
        let t = 1_700_000_000;
        assert!(k.verify_route(Some(expected), capture, b"{}", t, Accept::Route).is_ok());
        // The same signature on another object, another action or another method.
        for other in [
            Route { method: "POST", path: "/v1/authorizations/auth_2/capture" },
            Route { method: "POST", path: "/v1/authorizations/auth_1/refund" },
            Route { method: "PUT", path: "/v1/authorizations/auth_1/capture" },
        ] {
            assert_eq!(k.verify_route(Some(expected), other, b"{}", t, Accept::Route), Err("signature does not match"));
        }
        // v1 covers the body only: refused where the path decides, accepted where the body does.
        let v1 = k.sign(b"{}", t);
        assert!(k.verify_route(Some(&v1), capture, b"{}", t, Accept::Route).is_err());
        assert!(k.verify_route(Some(&v1), capture, b"{}", t, Accept::BodyOrRoute).is_ok());
        // A v2 present is what is checked: a good v1 beside a bad v2 does not pass.
        let mixed = format!("{v1},v2={}", "00".repeat(32));
        assert!(k.verify_route(Some(&mixed), capture, b"{}", t, Accept::BodyOrRoute).is_err());
        assert_eq!(
            k.verify_route(Some("t=1700000000"), capture, b"{}", t, Accept::BodyOrRoute),
            Err("signature has no v1= or v2=")
        );
    }

    #[test]
    fn basic_auth_accepts_the_configured_credentials_only() {
        let user = Secret::new("marqeta");
        let auth = BasicAuth::new(
            Some(&user),
            Some(&Secret::new("Current-Pass-0123456789!")),
            Some(&Secret::new("Old-Pass-0123456789!x")),
        )
        .unwrap();
        assert!(auth.verify(Some(&BasicAuth::header("marqeta", "Current-Pass-0123456789!"))).is_ok());
        assert!(auth.verify(Some(&BasicAuth::header("marqeta", "Old-Pass-0123456789!x"))).is_ok());
        assert!(auth.verify(Some(&BasicAuth::header("marqeta", "Current-Pass-0123456789"))).is_err());
        assert!(auth.verify(Some(&BasicAuth::header("someone", "Current-Pass-0123456789!"))).is_err());
        assert!(auth.verify(Some("Bearer abc")).is_err());
        assert!(auth.verify(Some("Basic !!!")).is_err());
        assert!(auth.verify(None).is_err());
    }
}
