//! The x402 wire formats, v1 and v2: reading a 402's payment requirements, choosing one spendgate
//! can pay, encoding the signed payment, and reading the settlement answer; the networks and tokens
//! both 402 protocols pay with. Pure: no I/O, no rule.

use alloy_primitives::{Address, U256};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::eip3009::{Authorization, Domain};

/// A network spendgate can pay on: its CAIP-2 id (x402 v2) and its v1 name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub caip2: &'static str,
    pub v1: &'static str,
    pub chain_id: u64,
}

pub const NETWORKS: [Network; 2] = [
    Network { caip2: "eip155:8453", v1: "base", chain_id: 8453 },
    Network { caip2: "eip155:84532", v1: "base-sepolia", chain_id: 84532 },
];

impl Network {
    /// By CAIP-2 id or v1 name.
    pub fn find(name: &str) -> Option<Network> {
        NETWORKS.into_iter().find(|n| n.caip2 == name || n.v1 == name)
    }
}

/// A USD-pegged token with 6 decimals that spendgate pays with on one network. `domain` pins the
/// EIP-712 name and version where they are known (Circle's USDC): a requirement that names another
/// domain for the same contract is refused, since its signature could never verify.
#[derive(Debug, Clone, PartialEq)]
pub struct Asset {
    pub network: &'static str,
    pub address: Address,
    /// The token's EIP-712 (name, version), where known.
    pub domain: Option<(String, String)>,
}

/// Circle's USDC on Base and Base Sepolia.
pub fn built_in_assets() -> Vec<Asset> {
    vec![
        Asset {
            network: "eip155:8453",
            address: alloy_primitives::address!("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
            domain: Some(("USD Coin".into(), "2".into())),
        },
        Asset {
            network: "eip155:84532",
            address: alloy_primitives::address!("0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
            domain: Some(("USDC".into(), "2".into())),
        },
    ]
}

/// `SPENDGATE_X402_ASSETS`: `<network>=<token address>[|<EIP-712 name>|<version>],…`, added to the
/// built-in USDC. The domain, when given, is pinned as for USDC; MPP pays only tokens whose domain
/// is known (its challenges do not name one).
pub fn parse_assets(spec: &str) -> Result<Vec<Asset>, String> {
    let mut assets = built_in_assets();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (network, token) =
            entry.split_once('=').ok_or_else(|| format!("{entry:?} is not <network>=<token address>"))?;
        let network = Network::find(network.trim())
            .ok_or_else(|| format!("unknown network {network:?} (eip155:8453, eip155:84532, base, base-sepolia)"))?;
        let mut parts = token.split('|');
        let address = parts.next().unwrap_or_default();
        let address: Address = address.trim().parse().map_err(|_| format!("{address:?} is not an address"))?;
        let domain = match (parts.next(), parts.next(), parts.next()) {
            (None, _, _) => None,
            (Some(name), Some(version), None) if !name.trim().is_empty() && !version.trim().is_empty() => {
                Some((name.trim().to_owned(), version.trim().to_owned()))
            }
            _ => return Err(format!("{entry:?}: a token's domain is written <address>|<name>|<version>")),
        };
        if !assets.iter().any(|a| a.network == network.caip2 && a.address == address) {
            assets.push(Asset { network: network.caip2, address, domain });
        }
    }
    Ok(assets)
}

/// What a 402 asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Challenge {
    /// x402: the requirements on offer, as received.
    X402 { version: u8, accepts: Vec<Value>, resource: Option<Value> },
    /// MPP (`WWW-Authenticate: Payment …`): its challenges are read by `mpp`.
    Mpp,
}

/// Reads a 402: the `PAYMENT-REQUIRED` header (v2), else an MPP challenge, else a v1 JSON body.
/// None when it is none of these.
pub fn challenge(payment_required: Option<&str>, www_authenticate: &[&str], body: &[u8]) -> Option<Challenge> {
    if let Some(header) = payment_required {
        return decode_json(header).and_then(|v| required(&v));
    }
    if www_authenticate.iter().any(|h| h.split_whitespace().next().is_some_and(|s| s.eq_ignore_ascii_case("payment"))) {
        return Some(Challenge::Mpp);
    }
    serde_json::from_slice::<Value>(body).ok().and_then(|v| required(&v))
}

/// A PaymentRequired document (v1 body or decoded v2 header) as an x402 challenge.
pub fn required(doc: &Value) -> Option<Challenge> {
    let version = match doc.get("x402Version").and_then(Value::as_u64) {
        Some(1) => 1,
        Some(2) => 2,
        _ => return None,
    };
    let accepts = doc.get("accepts")?.as_array()?.clone();
    Some(Challenge::X402 { version, accepts, resource: doc.get("resource").cloned() })
}

/// One requirement spendgate can pay.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// As received: v2 echoes it verbatim as `accepted`.
    pub raw: Value,
    pub network: Network,
    /// The network as the server named it (v1 echoes it).
    pub network_name: String,
    pub asset: Address,
    pub pay_to: Address,
    /// Atomic units (6 decimals).
    pub amount: U256,
    pub max_timeout_seconds: u64,
    pub domain: Domain,
}

/// The cheapest requirement spendgate can pay, or why none can be paid.
pub fn choose(version: u8, accepts: &[Value], assets: &[Asset]) -> Result<Offer, String> {
    let mut why = Vec::new();
    let mut best: Option<Offer> = None;
    for (i, raw) in accepts.iter().enumerate() {
        match offer(version, raw, assets) {
            Ok(o) if best.as_ref().is_none_or(|b| o.amount < b.amount) => best = Some(o),
            Ok(_) => {}
            Err(e) => why.push(format!("accepts[{i}]: {e}")),
        }
    }
    best.ok_or_else(|| if why.is_empty() { "no payment requirements offered".into() } else { why.join("; ") })
}

fn offer(version: u8, raw: &Value, assets: &[Asset]) -> Result<Offer, String> {
    let field = |key: &str| raw.get(key).and_then(Value::as_str).ok_or_else(|| format!("{key} missing"));
    let scheme = field("scheme")?;
    if scheme != "exact" {
        return Err(format!("scheme {scheme:?} is not supported (exact)"));
    }
    let network_name = field("network")?;
    let network = Network::find(network_name).ok_or_else(|| format!("network {network_name:?} is not configured"))?;
    let asset: Address = field("asset")?.parse().map_err(|_| "asset is not an address".to_owned())?;
    let known = assets
        .iter()
        .find(|a| a.network == network.caip2 && a.address == asset)
        .ok_or_else(|| format!("asset {asset} on {} is not configured", network.caip2))?;
    let pay_to: Address = field("payTo")?.parse().map_err(|_| "payTo is not an address".to_owned())?;
    let amount_field = if version == 1 { "maxAmountRequired" } else { "amount" };
    let amount: U256 = field(amount_field)?
        .parse()
        .ok()
        .filter(|a: &U256| *a > U256::ZERO && *a <= U256::from(MAX_ATOMIC))
        .ok_or_else(|| format!("{amount_field} is not an amount from 1 to {MAX_ATOMIC}"))?;
    let max_timeout_seconds =
        raw.get("maxTimeoutSeconds").and_then(Value::as_u64).ok_or_else(|| "maxTimeoutSeconds missing".to_owned())?;
    let extra = raw.get("extra");
    if let Some(method) = extra.and_then(|e| e.get("assetTransferMethod")).and_then(Value::as_str)
        && method != "eip3009"
    {
        return Err(format!("assetTransferMethod {method:?} is not supported (eip3009)"));
    }
    let text = |key: &str| extra.and_then(|e| e.get(key)).and_then(Value::as_str).filter(|s| !s.is_empty());
    let (Some(name), Some(domain_version)) = (text("name"), text("version")) else {
        return Err("extra.name and extra.version (the token's EIP-712 domain) are missing".into());
    };
    if let Some((pinned_name, pinned_version)) = &known.domain
        && (name != pinned_name || domain_version != pinned_version)
    {
        return Err(format!(
            "extra names the domain {name:?} version {domain_version:?}, but {asset} signs as {pinned_name:?} version {pinned_version:?}"
        ));
    }
    Ok(Offer {
        raw: raw.clone(),
        network,
        network_name: network_name.to_owned(),
        asset,
        pay_to,
        amount,
        max_timeout_seconds,
        domain: Domain {
            name: name.to_owned(),
            version: domain_version.to_owned(),
            chain_id: network.chain_id,
            verifying_contract: asset,
        },
    })
}

/// The largest payment read: 10^12 atomic units, a million dollars.
pub const MAX_ATOMIC: u64 = 1_000_000_000_000;

/// USDC atomic units (6 decimals) as US cents, rounded up: spend is never under-counted.
pub fn atomic_to_cents(amount: U256) -> i64 {
    let atomic = u64::try_from(amount).unwrap_or(MAX_ATOMIC).min(MAX_ATOMIC);
    atomic.div_ceil(10_000) as i64
}

/// The header that carries a payment, and its value: base64 of the PaymentPayload.
pub fn payment_header(
    version: u8,
    offer: &Offer,
    resource: Option<&Value>,
    signature: String,
    authorization: &Authorization,
) -> (&'static str, String) {
    let payload = json!({"signature": signature, "authorization": authorization});
    let document = if version == 1 {
        json!({"x402Version": 1, "scheme": "exact", "network": offer.network_name, "payload": payload})
    } else {
        let mut doc = json!({"x402Version": 2, "accepted": offer.raw, "payload": payload});
        if let Some(resource) = resource {
            doc["resource"] = resource.clone();
        }
        doc
    };
    let name = if version == 1 { "X-PAYMENT" } else { "PAYMENT-SIGNATURE" };
    (name, BASE64.encode(document.to_string()))
}

/// How the server says the payment went.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    Settled { transaction: String, payer: Option<String> },
    Failed { reason: String },
}

/// Reads `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`; None when absent or unreadable.
pub fn settlement(header: Option<&str>) -> Option<Settlement> {
    let doc = decode_json(header?)?;
    let text = |key: &str| doc.get(key).and_then(Value::as_str).map(str::to_owned);
    match doc.get("success").and_then(Value::as_bool)? {
        true => {
            Some(Settlement::Settled { transaction: text("transaction").unwrap_or_default(), payer: text("payer") })
        }
        false => Some(Settlement::Failed { reason: text("errorReason").unwrap_or_else(|| "settlement_failed".into()) }),
    }
}

fn decode_json(encoded: &str) -> Option<Value> {
    let bytes = BASE64.decode(encoded.trim()).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEPOLIA_USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
    const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

    fn v2_requirement(amount: &str, name: &str) -> Value {
        json!({"scheme": "exact", "network": "eip155:84532", "amount": amount, "asset": SEPOLIA_USDC,
               "payTo": PAY_TO, "maxTimeoutSeconds": 60, "extra": {"name": name, "version": "2"}})
    }

    #[test]
    fn reads_v2_header_mpp_and_v1_body() {
        let doc = json!({"x402Version": 2, "accepts": [v2_requirement("10000", "USDC")],
                         "resource": {"url": "https://api.example.com/x"}});
        let header = BASE64.encode(doc.to_string());
        let Some(Challenge::X402 { version: 2, accepts, resource }) = challenge(Some(&header), &[], b"{}") else {
            panic!("v2 not read")
        };
        assert_eq!(accepts.len(), 1);
        assert_eq!(resource.unwrap()["url"], "https://api.example.com/x");
        let mpp = r#"Payment id="abc", realm="api.example.com", method="tempo", intent="charge", request="e30""#;
        assert_eq!(challenge(None, &[mpp], b""), Some(Challenge::Mpp));
        assert_eq!(challenge(None, &["Bearer realm=\"x\""], b"not json"), None);
        let v1 = json!({"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": []});
        assert!(matches!(challenge(None, &[], v1.to_string().as_bytes()), Some(Challenge::X402 { version: 1, .. })));
        assert_eq!(challenge(None, &[], br#"{"error": "payment_required", "amount": 5}"#), None);
        assert_eq!(challenge(Some("%%%"), &[], b""), None, "an unreadable header is not a challenge");
    }

    #[test]
    fn chooses_the_cheapest_payable_requirement_and_says_why_others_are_not() {
        let assets = built_in_assets();
        let accepts = vec![
            json!({"scheme": "upto", "network": "eip155:84532"}),
            v2_requirement("20000", "USDC"),
            v2_requirement("15000", "USDC"),
            json!({"scheme": "exact", "network": "solana", "amount": "1", "asset": "x", "payTo": "y",
                   "maxTimeoutSeconds": 60}),
        ];
        let offer = choose(2, &accepts, &assets).unwrap();
        assert_eq!(offer.amount, U256::from(15_000));
        assert_eq!(offer.domain.chain_id, 84532);
        assert_eq!(offer.raw, accepts[2]);
        let err = choose(2, &[accepts[0].clone(), accepts[3].clone()], &assets).unwrap_err();
        assert!(err.contains("accepts[0]: scheme \"upto\"") && err.contains("accepts[1]: network \"solana\""), "{err}");
    }

    #[test]
    fn refuses_a_missing_or_wrong_domain_and_unknown_assets() {
        let assets = built_in_assets();
        let mut no_extra = v2_requirement("1", "USDC");
        no_extra.as_object_mut().unwrap().remove("extra");
        assert!(choose(2, &[no_extra], &assets).unwrap_err().contains("extra.name"));
        // Base Sepolia's USDC signs as "USDC": "USD Coin" would never verify.
        assert!(choose(2, &[v2_requirement("1", "USD Coin")], &assets).unwrap_err().contains("signs as \"USDC\""));
        let mut other = v2_requirement("1", "Test");
        other["asset"] = json!("0x5FbDB2315678afecb367f032d93F642f64180aa3");
        assert!(choose(2, std::slice::from_ref(&other), &assets).unwrap_err().contains("not configured"));
        let configured = parse_assets("eip155:84532=0x5FbDB2315678afecb367f032d93F642f64180aa3").unwrap();
        assert_eq!(choose(2, &[other], &configured).unwrap().domain.name, "Test");
        let pinned = parse_assets("eip155:84532=0x5FbDB2315678afecb367f032d93F642f64180aa3|Test|1").unwrap();
        assert_eq!(pinned.last().unwrap().domain, Some(("Test".to_owned(), "1".to_owned())));
        let mut other_name = v2_requirement("1", "Other");
        other_name["asset"] = json!("0x5FbDB2315678afecb367f032d93F642f64180aa3");
        assert!(choose(2, &[other_name], &pinned).unwrap_err().contains("signs as \"Test\""));
        assert!(parse_assets("eip155:84532=0x5FbDB2315678afecb367f032d93F642f64180aa3|Test").is_err());
        assert!(parse_assets("base=nope").is_err());
        assert!(parse_assets("mainnet=0x5FbDB2315678afecb367f032d93F642f64180aa3").is_err());
    }

    #[test]
    fn v1_reads_max_amount_required_and_the_v1_network_name() {
        let raw = json!({"scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "10000",
            "asset": SEPOLIA_USDC, "payTo": PAY_TO, "resource": "https://api.example.com/x", "description": "",
            "maxTimeoutSeconds": 60, "extra": {"name": "USDC", "version": "2"}});
        let offer = choose(1, &[raw], &built_in_assets()).unwrap();
        assert_eq!((offer.amount, offer.network_name.as_str()), (U256::from(10_000), "base-sepolia"));
        assert!(choose(1, &[v2_requirement("1", "USDC")], &built_in_assets()).is_err(), "v1 has no `amount`");
    }

    #[test]
    fn amounts_round_up_to_cents() {
        assert_eq!(atomic_to_cents(U256::from(1)), 1);
        assert_eq!(atomic_to_cents(U256::from(10_000)), 1);
        assert_eq!(atomic_to_cents(U256::from(10_001)), 2);
        assert_eq!(atomic_to_cents(U256::from(1_000_000)), 100);
    }

    #[test]
    fn settlement_answers() {
        let enc = |v: Value| BASE64.encode(v.to_string());
        let ok = enc(json!({"success": true, "transaction": "0xabc", "network": "eip155:84532", "payer": "0x1"}));
        assert_eq!(
            settlement(Some(&ok)),
            Some(Settlement::Settled { transaction: "0xabc".into(), payer: Some("0x1".into()) })
        );
        let failed = enc(json!({"success": false, "errorReason": "insufficient_funds", "transaction": ""}));
        assert_eq!(settlement(Some(&failed)), Some(Settlement::Failed { reason: "insufficient_funds".into() }));
        assert_eq!(settlement(Some("garbage")), None);
        assert_eq!(settlement(Some(&enc(json!({"transaction": "0x1"})))), None, "no `success`: unreadable");
        assert_eq!(settlement(None), None);
    }
}
