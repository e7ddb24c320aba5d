//! Authorization requests as the card networks' processors send them: spendgate's native format and
//! Stripe's, Lithic's and Marqeta's, each signed with the secret the server is configured with.
//! `spendgate authorize` picks the format from the card; `spendgate simulate stripe|lithic|marqeta`
//! names it, for a card known only by the processor's id. Either is a dry run unless told otherwise.

use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::Amount;
use crate::config::Config;
use crate::domain::money::Currency;
use crate::http::webhooks::DRY_RUN_HEADER;
use crate::rails::card::native::SIGNATURE_HEADER;
use crate::rails::card::signature::{BasicAuth, HexSignature, Route, StandardWebhooks};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processor {
    Stripe,
    Lithic,
    Marqeta,
}

/// The purchase, as flags.
#[derive(Args, Debug, Clone)]
pub struct SaleArgs {
    /// The amount in the currency's own decimals: `12.50`, `1000` (JPY), or `12.50 USD`.
    #[arg(long, allow_hyphen_values = true)]
    pub amount: String,
    /// ISO 4217 code; default: the card's currency (USD for `simulate`).
    #[arg(long)]
    pub currency: Option<String>,
    /// The merchant's descriptor.
    #[arg(long, default_value = "SPENDGATE SIMULATOR")]
    pub merchant: String,
    #[arg(long)]
    pub merchant_id: Option<String>,
    #[arg(long, default_value = "5734")]
    pub mcc: String,
    /// ISO 3166 alpha-2.
    #[arg(long, default_value = "US")]
    pub country: String,
    /// The agent's task (trace) the purchase belongs to.
    #[arg(long)]
    pub trace: Option<String>,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    pub processor: Processor,
    /// The processor's card id (`processor_card_id` of a registered card).
    #[arg(long)]
    pub card: String,
    #[command(flatten)]
    pub sale: SaleArgs,
    /// Record the decision (a real hold or decline); without it, a dry run that records nothing.
    #[arg(long)]
    pub live: bool,
    /// The server's base URL.
    #[arg(long, env = "SPENDGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Print the server's JSON.
    #[arg(long)]
    pub json: bool,
}

/// A purchase ready to be put in a format.
pub struct Sale {
    pub amount: Amount,
    pub mcc: String,
    pub merchant: String,
    pub merchant_id: String,
    pub country: String,
    pub trace: Option<String>,
}

impl Sale {
    pub fn new(args: &SaleArgs, default_currency: Currency) -> anyhow::Result<Sale> {
        let amount = Amount::parse("--amount", &args.amount, args.currency.as_deref(), default_currency)?;
        anyhow::ensure!(
            args.mcc.len() == 4 && args.mcc.bytes().all(|b| b.is_ascii_digit()),
            "--mcc must be four digits, e.g. 5734"
        );
        let country = args.country.to_ascii_uppercase();
        anyhow::ensure!(
            iso_country::data::all().iter().any(|c| c.alpha2 == country),
            "--country must be an ISO 3166 alpha-2 code, e.g. US"
        );
        Ok(Sale {
            amount,
            mcc: args.mcc.clone(),
            merchant: args.merchant.clone(),
            merchant_id: args.merchant_id.clone().unwrap_or_else(|| "SIMULATED0001".into()),
            country,
            trace: args.trace.clone(),
        })
    }
}

fn missing(setting: &str) -> anyhow::Error {
    anyhow::anyhow!("{setting} is not set: requests are signed with the same settings as the server")
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A request as its sender makes it: path, headers and body.
pub struct Signed {
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn new_id() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

/// spendgate's own format, for a simulator card, signed with `webhook_secret`.
pub fn native(config: &Config, card_id: &str, sale: &Sale) -> anyhow::Result<Signed> {
    let merchant = json!({"id": sale.merchant_id, "name": sale.merchant, "mcc": sale.mcc, "country": sale.country});
    let body = serde_json::to_vec(&json!({"id": format!("cli_{}", new_id()), "card_id": card_id,
        "amount": sale.amount.minor, "currency": sale.amount.currency.code(), "merchant": merchant,
        "trace_id": sale.trace}))?;
    let keys =
        HexSignature::new(config.webhook_secret.as_ref(), None).ok_or_else(|| missing("SPENDGATE_WEBHOOK_SECRET"))?;
    let path = "/v1/authorizations";
    let signature = keys.sign_route(Route { method: "POST", path }, &body, now());
    Ok(Signed { path, headers: vec![(SIGNATURE_HEADER, signature)], body })
}

/// The processor's own format, for a card it issued (`card` is its id there).
pub fn processor(config: &Config, processor: Processor, card: &str, sale: &Sale) -> anyhow::Result<Signed> {
    let id = new_id();
    let (minor, code) = (sale.amount.minor, sale.amount.currency.code());
    let country = &sale.country;
    Ok(match processor {
        Processor::Stripe => {
            let currency = code.to_ascii_lowercase();
            let body = serde_json::to_vec(&json!({"id": format!("evt_sim_{id}"), "object": "event",
                "api_version": crate::rails::card::stripe::DEFAULT_VERSION, "created": now(),
                "type": "issuing_authorization.request", "livemode": false,
                "data": {"object": {"id": format!("iauth_sim_{id}"), "object": "issuing.authorization", "amount": 0,
                    "currency": currency, "approved": false, "status": "pending",
                    "card": {"id": card, "object": "issuing.card"}, "merchant_amount": 0, "merchant_currency": currency,
                    "merchant_data": {"category_code": sale.mcc, "name": sale.merchant, "network_id": sale.merchant_id,
                        "country": country},
                    "pending_request": {"amount": minor, "currency": currency, "merchant_amount": minor,
                        "merchant_currency": currency, "is_amount_controllable": false},
                    "request_history": []}}}))?;
            let keys = HexSignature::new(config.stripe_webhook_secret.as_ref(), None)
                .ok_or_else(|| missing("SPENDGATE_STRIPE_WEBHOOK_SECRET"))?;
            let headers = vec![("Stripe-Signature", keys.sign(&body, now()))];
            Signed { path: "/webhooks/stripe/authorizations", headers, body }
        }
        Processor::Lithic => {
            let alpha3 = iso_country::data::all().into_iter().find(|c| c.alpha2 == country).map(|c| c.alpha3);
            let body = serde_json::to_vec(&json!({"event_type": "card_authorization.approval_request", "token": id,
                "status": "AUTHORIZATION", "card": {"token": card},
                "amounts": {"cardholder": {"amount": minor, "conversion_rate": "1.000000", "currency": code},
                    "merchant": {"amount": minor, "currency": code}},
                "merchant": {"acceptor_id": sale.merchant_id, "descriptor": sale.merchant, "mcc": sale.mcc,
                    "country": alpha3}}))?;
            let keys = StandardWebhooks::new(config.lithic_webhook_secret.as_ref(), None)
                .map_err(|e| anyhow::anyhow!("SPENDGATE_LITHIC_WEBHOOK_SECRET {e}"))?
                .ok_or_else(|| missing("SPENDGATE_LITHIC_WEBHOOK_SECRET"))?;
            let t = now();
            let signature = keys.sign(&id, t, &body);
            let headers =
                vec![("webhook-id", id), ("webhook-timestamp", t.to_string()), ("webhook-signature", signature)];
            Signed { path: "/webhooks/lithic/asa", headers, body }
        }
        Processor::Marqeta => {
            let body = serde_json::to_vec(&json!({"type": "authorization", "card_token": card, "currency_code": code,
                "gpa_order": {"jit_funding": {"token": id, "method": "pgfs.authorization", "user_token": "simulator",
                    "amount": sale.amount.major()}},
                "card_acceptor": {"mid": sale.merchant_id, "mcc": sale.mcc, "name": sale.merchant,
                    "country_code": country}}))?;
            let (user, pass) = (config.marqeta_username.as_ref(), config.marqeta_password.as_ref());
            let (user, pass) = user.zip(pass).ok_or_else(|| missing("SPENDGATE_MARQETA_USERNAME / PASSWORD"))?;
            let headers = vec![("Authorization", BasicAuth::header(user.expose(), pass.expose()))];
            Signed { path: "/webhooks/marqeta/jit", headers, body }
        }
    })
}

/// Sends the request; a dry run asks the server to record nothing. Returns the status and answer.
pub async fn send(url: &str, request: Signed, dry_run: bool) -> anyhow::Result<(u16, Value)> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let base = url.trim_end_matches('/');
    let mut req = client.post(format!("{base}{}", request.path)).header("Content-Type", "application/json");
    for (name, value) in request.headers {
        req = req.header(name, value);
    }
    if dry_run {
        req = req.header(DRY_RUN_HEADER, "true");
    }
    let response = req.body(request.body).send().await.map_err(|e| super::unreachable(base, &e))?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let answer = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
    if !(status == 200 || status == 402) {
        return Err(super::refused(status, &answer));
    }
    Ok((status, answer))
}

/// The decision in one line, from a processor's own answer (a live request to its endpoint).
fn verdict(processor: Processor, status: u16, answer: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    match processor {
        Processor::Stripe if answer["approved"] == true => "approved".into(),
        Processor::Stripe => match answer["metadata"]["spendgate_rule"].as_str() {
            Some(rule) => format!("declined: {} (rule {rule})", text(&answer["metadata"]["spendgate_reason"])),
            None => format!("declined: {}", text(&answer["metadata"]["spendgate_reason"])),
        },
        Processor::Lithic if answer["result"] == "APPROVED" => "approved".into(),
        Processor::Lithic => format!("declined: {}", text(&answer["result"])),
        Processor::Marqeta if status == 200 => "approved".into(),
        Processor::Marqeta => format!("declined: {}", text(&answer["jit_funding"]["decline_reason"])),
    }
}

pub fn run(config: &Config, a: SimulateArgs) -> anyhow::Result<()> {
    let sale = Sale::new(&a.sale, Currency::USD)?;
    let request = processor(config, a.processor, &a.card, &sale)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, answer) = runtime.block_on(send(&a.url, request, !a.live))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if a.live {
        println!("{}", verdict(a.processor, status, &answer));
        println!("HTTP {status} {}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", super::describe_outcome(&answer));
    }
    Ok(())
}
