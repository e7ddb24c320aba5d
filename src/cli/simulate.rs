//! `spendgate simulate stripe|lithic|marqeta`: sends one authorization in the processor's own format,
//! signed with the secret the server is configured with, and prints the decision. How an operator
//! tries a policy before a processor points at spendgate.

use std::time::Duration;

use clap::{Args, ValueEnum};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::config::Config;
use crate::domain::money::Currency;
use crate::rails::card::signature::{BasicAuth, HexSignature, StandardWebhooks};

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum Processor {
    Stripe,
    Lithic,
    Marqeta,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    pub processor: Processor,
    /// The processor's card id (`processor_card_id` of a registered card).
    #[arg(long)]
    pub card: String,
    /// In major units, e.g. 12.50.
    #[arg(long)]
    pub amount: Decimal,
    #[arg(long, default_value = "USD")]
    pub currency: String,
    #[arg(long, default_value = "5734")]
    pub mcc: String,
    /// The merchant's descriptor.
    #[arg(long, default_value = "SPENDGATE SIMULATOR")]
    pub merchant: String,
    #[arg(long)]
    pub merchant_id: Option<String>,
    /// ISO 3166 alpha-2.
    #[arg(long, default_value = "US")]
    pub country: String,
    /// The server's base URL.
    #[arg(long, env = "SPENDGATE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
}

fn missing(setting: &str) -> anyhow::Error {
    anyhow::anyhow!("{setting} is not set: simulate signs with the same settings as the server")
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A processor's request: path, headers and body.
type Signed = (&'static str, Vec<(&'static str, String)>, Vec<u8>);

/// The request as the processor would send it.
fn request(config: &Config, a: &SimulateArgs, minor: i64) -> anyhow::Result<Signed> {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let merchant_id = a.merchant_id.clone().unwrap_or_else(|| "SIMULATED0001".into());
    let country = a.country.to_ascii_uppercase();
    Ok(match a.processor {
        Processor::Stripe => {
            let currency = a.currency.to_ascii_lowercase();
            let body = serde_json::to_vec(&json!({"id": format!("evt_sim_{id}"), "object": "event",
                "api_version": crate::rails::card::stripe::DEFAULT_VERSION, "created": now(),
                "type": "issuing_authorization.request", "livemode": false,
                "data": {"object": {"id": format!("iauth_sim_{id}"), "object": "issuing.authorization", "amount": 0,
                    "currency": currency, "approved": false, "status": "pending",
                    "card": {"id": a.card, "object": "issuing.card"}, "merchant_amount": 0, "merchant_currency": currency,
                    "merchant_data": {"category_code": a.mcc, "name": a.merchant, "network_id": merchant_id, "country": country},
                    "pending_request": {"amount": minor, "currency": currency, "merchant_amount": minor,
                        "merchant_currency": currency, "is_amount_controllable": false},
                    "request_history": []}}}))?;
            let keys = HexSignature::new(config.stripe_webhook_secret.as_ref(), None)
                .ok_or_else(|| missing("SPENDGATE_STRIPE_WEBHOOK_SECRET"))?;
            ("/webhooks/stripe/authorizations", vec![("Stripe-Signature", keys.sign(&body, now()))], body)
        }
        Processor::Lithic => {
            let alpha3 = iso_country::data::all().into_iter().find(|c| c.alpha2 == country).map(|c| c.alpha3);
            let body = serde_json::to_vec(&json!({"event_type": "card_authorization.approval_request", "token": id,
                "status": "AUTHORIZATION", "card": {"token": a.card},
                "amounts": {"cardholder": {"amount": minor, "conversion_rate": "1.000000", "currency": a.currency},
                    "merchant": {"amount": minor, "currency": a.currency}},
                "merchant": {"acceptor_id": merchant_id, "descriptor": a.merchant, "mcc": a.mcc, "country": alpha3}}))?;
            let keys = StandardWebhooks::new(config.lithic_webhook_secret.as_ref(), None)
                .map_err(|e| anyhow::anyhow!("SPENDGATE_LITHIC_WEBHOOK_SECRET {e}"))?
                .ok_or_else(|| missing("SPENDGATE_LITHIC_WEBHOOK_SECRET"))?;
            let t = now();
            let signature = keys.sign(&id, t, &body);
            (
                "/webhooks/lithic/asa",
                vec![("webhook-id", id), ("webhook-timestamp", t.to_string()), ("webhook-signature", signature)],
                body,
            )
        }
        Processor::Marqeta => {
            let body = serde_json::to_vec(
                &json!({"type": "authorization", "card_token": a.card, "currency_code": a.currency,
                "gpa_order": {"jit_funding": {"token": id, "method": "pgfs.authorization", "user_token": "simulator",
                    "amount": a.amount.to_string()}},
                "card_acceptor": {"mid": merchant_id, "mcc": a.mcc, "name": a.merchant, "country_code": country}}),
            )?;
            let (user, pass) = (config.marqeta_username.as_ref(), config.marqeta_password.as_ref());
            let (user, pass) = user.zip(pass).ok_or_else(|| missing("SPENDGATE_MARQETA_USERNAME / PASSWORD"))?;
            ("/webhooks/marqeta/jit", vec![("Authorization", BasicAuth::header(user.expose(), pass.expose()))], body)
        }
    })
}

/// The decision in one line, from the processor's answer.
fn verdict(processor: Processor, status: u16, answer: &Value) -> String {
    match processor {
        Processor::Stripe if answer["approved"] == true => "approved".into(),
        Processor::Stripe => format!("declined: {}", answer["metadata"]["spendgate_reason"].as_str().unwrap_or("?")),
        Processor::Lithic if answer["result"] == "APPROVED" => "approved".into(),
        Processor::Lithic => format!("declined: {}", answer["result"].as_str().unwrap_or("?")),
        Processor::Marqeta if status == 200 => "approved".into(),
        Processor::Marqeta => format!("declined: {}", answer["jit_funding"]["decline_reason"].as_str().unwrap_or("?")),
    }
}

pub fn run(config: &Config, a: SimulateArgs) -> anyhow::Result<()> {
    let currency: Currency = a.currency.parse().map_err(|e| anyhow::anyhow!("--currency: {e}"))?;
    let scaled = a.amount * Decimal::from(10i64.pow(currency.exponent()));
    anyhow::ensure!(
        scaled.fract().is_zero() && !scaled.is_sign_negative(),
        "--amount {} is not a whole number of {currency} minor units",
        a.amount
    );
    let minor = i64::try_from(scaled).map_err(|_| anyhow::anyhow!("--amount is too large"))?;
    let (path, headers, body) = request(config, &a, minor)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, answer) = runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let mut req =
            client.post(format!("{}{path}", a.url.trim_end_matches('/'))).header("Content-Type", "application/json");
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let response =
            req.body(body).send().await.map_err(|e| anyhow::anyhow!("cannot reach spendgate at {}: {e}", a.url))?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        anyhow::Ok((status, serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text))))
    })?;
    if !(status == 200 || status == 402) {
        anyhow::bail!("the server answered {status}: {answer}");
    }
    println!("{}", verdict(a.processor, status, &answer));
    println!("HTTP {status} {}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
