//! The outbound call an agent asks for: checked (method, headers, URL), sent only to a
//! destination the rules allow, its answer read up to the limit; and the bound on calls in flight.

use std::collections::HashMap;
use std::sync::Mutex;

use reqwest::Url;

use super::Usdc;
use super::destination::{self};
use super::mpp;
use super::views::{FetchRequest, Fetched, Paid, PaymentView};
use super::x402::{self, Settlement};
use crate::domain::ids::AgentId;
use crate::domain::ledger::PaymentStatus;
use crate::error::{Error, ErrorCode, Result};

/// Headers that describe one hop, not the message: never forwarded either way.
pub(super) const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"];

/// Upstream headers that would act on spendgate's own origin (cookies, HSTS, site data): never passed back.
pub(super) const ORIGIN_BOUND: [&str; 5] =
    ["set-cookie", "set-cookie2", "strict-transport-security", "alt-svc", "clear-site-data"];

/// A call to make upstream, checked.
pub(super) struct Call {
    pub(super) method: reqwest::Method,
    pub(super) url: Url,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Option<String>,
}

/// What came back from upstream.
#[derive(Debug)]
pub(super) struct Upstream {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Upstream {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub(super) fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// How the server says the payment went: x402's settlement header, or MPP's receipt.
    pub(super) fn settlement(&self) -> Option<Settlement> {
        x402::settlement(self.header("payment-response").or_else(|| self.header("x-payment-response")))
            .or_else(|| mpp::receipt(self.header("payment-receipt")))
    }

    /// A 402 that asks for payment again: the payment just sent was refused.
    pub(super) fn asks_again(&self) -> bool {
        self.status == 402
            && (self.header("payment-required").is_some()
                || !mpp::challenges(&self.headers_named("www-authenticate")).is_empty())
    }
}

impl Upstream {
    pub(super) fn into_fetched(self, paid: Option<Paid>) -> Fetched {
        Fetched { status: self.status, headers: self.headers, body: self.body, paid }
    }
}

impl Usdc {
    /// One request upstream, to a destination the rules allow, its answer read up to the limit.
    pub(super) async fn send(
        &self,
        call: &Call,
        payment: Option<(&str, &str)>,
    ) -> std::result::Result<Upstream, SendError> {
        self.inner.settings.destinations.check_url(&call.url).map_err(SendError::Refused)?;
        let mut request = self.inner.http.request(call.method.clone(), call.url.clone());
        for (name, value) in &call.headers {
            // The payment's header is spendgate's alone (MPP's is `Authorization`).
            if payment.is_none_or(|(paying, _)| !paying.eq_ignore_ascii_case(name)) {
                request = request.header(name, value);
            }
        }
        if let Some((name, value)) = payment {
            request = request.header(name, value);
        }
        if let Some(body) = &call.body {
            request = request.body(body.clone());
        }
        let mut response = request.send().await.map_err(SendError::from_client)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()) && !ORIGIN_BOUND.contains(&name.as_str()))
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        let limit = self.inner.settings.max_response_bytes;
        let too_large = |headers| SendError::TooLarge { headers: Upstream { status, headers, body: Vec::new() } };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large(headers));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(SendError::from_client)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large(headers));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Upstream { status, headers, body })
    }
}

/// Why a request upstream got no usable answer.
#[derive(Debug)]
pub(super) enum SendError {
    /// The destination is not one spendgate contacts (nothing was sent).
    Refused(destination::Refused),
    /// The answer is larger than allowed; its status and headers were read.
    TooLarge {
        headers: Upstream,
    },
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Refused(r) => r.fmt(f),
            SendError::TooLarge { .. } => f.write_str("the answer is larger than allowed"),
            SendError::Failed(e) => f.write_str(e),
        }
    }
}

impl SendError {
    pub(super) fn from_client(e: reqwest::Error) -> SendError {
        match destination::refusal_in(&e) {
            Some(refusal) => SendError::Refused(refusal.clone()),
            None => SendError::Failed(e.without_url().to_string()),
        }
    }

    /// The error the agent gets; `paid`: the payment the request carried, if any.
    pub(super) fn into_error(self, url: &Url, paid: Option<&PaymentView>) -> Error {
        let payment = match paid {
            Some(p) => format!(
                "; payment {} is {}{}",
                p.id,
                p.status,
                if p.status == PaymentStatus::Unknown {
                    " and its hold stays; retry with the same Idempotency-Key to send the same payment again"
                } else {
                    ", and a retry with the same Idempotency-Key pays nothing again"
                }
            ),
            None => String::new(),
        };
        match self {
            SendError::Refused(r) => destination_refused(r),
            SendError::TooLarge { .. } => Error::UpstreamTooLarge(format!(
                "the answer from {url} is larger than spendgate passes on (x402_max_response_bytes){payment}"
            )),
            SendError::Failed(e) => Error::Upstream(format!("calling {url}: {e}{payment}")),
        }
    }
}

/// Fetches in flight, in all and per agent: a flood from one agent cannot take every connection.
pub(super) struct FetchSlots {
    pub(super) total: usize,
    pub(super) per_agent: usize,
    pub(super) in_use: Mutex<(usize, HashMap<AgentId, usize>)>,
}

/// A fetch's place, given back when dropped.
pub(super) struct FetchSlot<'a> {
    pub(super) slots: &'a FetchSlots,
    pub(super) agent: AgentId,
}

impl FetchSlots {
    pub(super) fn new(total: usize, per_agent: usize) -> Self {
        FetchSlots { total, per_agent, in_use: Mutex::new((0, HashMap::new())) }
    }

    pub(super) fn take(&self, agent: &AgentId) -> Result<FetchSlot<'_>> {
        let mut guard = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_agent) = &mut *guard;
        let mine = per_agent.get(agent).copied().unwrap_or(0);
        if *total >= self.total || mine >= self.per_agent {
            let which = if mine >= self.per_agent { "this agent's" } else { "spendgate's" };
            return Err(Error::coded(
                ErrorCode::TooManyFetches,
                format!("{which} fetches in flight are at their limit; retry shortly"),
            ));
        }
        *total += 1;
        per_agent.insert(agent.clone(), mine + 1);
        Ok(FetchSlot { slots: self, agent: agent.clone() })
    }
}

impl Drop for FetchSlot<'_> {
    fn drop(&mut self) {
        let mut guard = self.slots.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_agent) = &mut *guard;
        *total -= 1;
        if let Some(n) = per_agent.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                per_agent.remove(&self.agent);
            }
        }
    }
}

pub(super) fn destination_refused(refusal: destination::Refused) -> Error {
    crate::refusals::refused("x402 destination forbidden", &refusal.host, "", &refusal.reason);
    Error::coded(
        ErrorCode::DestinationForbidden,
        format!(
            "{refusal}; it was not contacted (an operator allows private destinations with x402_private_destinations)"
        ),
    )
}

/// The host as policies name it: lowercase, with the port when the URL gives one.
pub(super) fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

pub(super) fn check_url(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| Error::validation(format!("url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::validation("url must be an http or https URL with a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::validation("url must not carry credentials"));
    }
    Ok(parsed)
}

pub(super) fn check_call(input: &FetchRequest) -> Result<Call> {
    let url = check_url(&input.url)?;
    let method = match input.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("GET") => reqwest::Method::GET,
        Some("POST") => reqwest::Method::POST,
        Some("PUT") => reqwest::Method::PUT,
        Some("PATCH") => reqwest::Method::PATCH,
        Some("DELETE") => reqwest::Method::DELETE,
        Some("HEAD") => reqwest::Method::HEAD,
        Some(other) => {
            return Err(Error::validation(format!(
                "method {other:?} is not one of GET, POST, PUT, PATCH, DELETE, HEAD"
            )));
        }
    };
    let mut headers = Vec::with_capacity(input.headers.len());
    for (name, value) in &input.headers {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) || lower == "host" {
            return Err(Error::validation(format!("headers.{name}: set by spendgate, not by the caller")));
        }
        if matches!(lower.as_str(), "payment-signature" | "x-payment") {
            return Err(Error::validation(format!("headers.{name}: spendgate adds the payment itself")));
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            return Err(Error::validation(format!("headers.{name}: not a valid HTTP header")));
        }
        headers.push((name.clone(), value.clone()));
    }
    Ok(Call { method, url, headers, body: input.body.clone() })
}
