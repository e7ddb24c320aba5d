//! A local stand-in for the card-issuing parts of Stripe's and Lithic's REST APIs, speaking their
//! documented requests and answers: Stripe `POST /v1/issuing/cards` and `POST /v1/issuing/cards/{id}`
//! (form-encoded, `Authorization: Bearer <key>`), Lithic `POST /v1/cards` and `PATCH /v1/cards/{token}`
//! (JSON, `Authorization: <key>`). It records every request, and can be told to fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

pub const STRIPE_KEY: &str = "sk_test_issuing_0123456789";
pub const STRIPE_CARDHOLDER: &str = "ich_1TestCardholder";
pub const LITHIC_KEY: &str = "lithic-test-key-0123456789";

/// One request as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    /// Stripe's form fields, or Lithic's JSON body.
    pub form: Vec<(String, String)>,
    pub json: Value,
}

impl Seen {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// How the next requests are answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    /// 400 with the processor's error body (a refused parameter).
    Refuse,
    /// 500.
    Down,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    mode: Option<Mode>,
    issued: usize,
}

#[derive(Clone)]
pub struct ProcessorApi {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl ProcessorApi {
    pub async fn start() -> ProcessorApi {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = web::Data::new(state.clone());
        let server = HttpServer::new(move || App::new().app_data(shared.clone()).default_service(web::to(handle)))
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
        let base = format!("http://{}", server.addrs()[0]);
        actix_web::rt::spawn(server.run());
        ProcessorApi { base, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = Some(mode);
    }
}

async fn handle(req: HttpRequest, body: web::Bytes, state: web::Data<Arc<Mutex<State>>>) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned())))
        .collect::<HashMap<_, _>>();
    let path = req.path().to_owned();
    let stripe = path.starts_with("/v1/issuing/");
    let form: Vec<(String, String)> =
        if stripe { serde_urlencoded::from_bytes(&body).unwrap_or_default() } else { vec![] };
    let json_body: Value = if stripe { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    let seen =
        Seen { method: req.method().to_string(), path: path.clone(), headers: headers.clone(), form, json: json_body };
    let mut s = state.lock().unwrap();
    s.seen.push(seen.clone());
    let auth = headers.get("authorization").map(String::as_str).unwrap_or("");

    if stripe {
        if auth != format!("Bearer {STRIPE_KEY}") {
            return HttpResponse::Unauthorized()
                .json(json!({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_****"}}));
        }
        match s.mode.unwrap_or(Mode::Normal) {
            Mode::Down => {
                return HttpResponse::InternalServerError()
                    .json(json!({"error": {"type": "api_error", "message": "An unknown error occurred"}}));
            }
            Mode::Refuse => {
                return HttpResponse::BadRequest().json(json!({"error": {"type": "invalid_request_error",
                    "message": "Cardholder ich_1TestCardholder is not eligible to be issued cards.", "param": "cardholder"}}));
            }
            Mode::Normal => {}
        }
        if seen.headers.get("content-type").map(String::as_str) != Some("application/x-www-form-urlencoded") {
            return HttpResponse::BadRequest().json(
                json!({"error": {"type": "invalid_request_error", "message": "Invalid request: not form-encoded"}}),
            );
        }
        if path == "/v1/issuing/cards" && req.method() == actix_web::http::Method::POST {
            for param in ["cardholder", "currency", "type"] {
                if seen.field(param).is_none() {
                    return HttpResponse::BadRequest().json(json!({"error": {"type": "invalid_request_error",
                        "message": format!("Missing required param: {param}."), "param": param}}));
                }
            }
            s.issued += 1;
            let id = format!("ic_1Test{:08}", s.issued);
            return HttpResponse::Ok().json(json!({"id": id, "object": "issuing.card", "brand": "Visa",
                "cardholder": {"id": seen.field("cardholder"), "object": "issuing.cardholder"},
                "currency": seen.field("currency"), "exp_month": 8, "exp_year": 2029, "last4": "0005",
                "livemode": false, "status": seen.field("status").unwrap_or("inactive"), "type": "virtual",
                "spending_controls": {}, "metadata": {}}));
        }
        if let Some(id) = path.strip_prefix("/v1/issuing/cards/") {
            return HttpResponse::Ok().json(json!({"id": id, "object": "issuing.card", "last4": "0005",
                "exp_month": 8, "exp_year": 2029, "status": seen.field("status")}));
        }
        return HttpResponse::NotFound()
            .json(json!({"error": {"type": "invalid_request_error", "message": "Unrecognized request URL"}}));
    }

    if auth != LITHIC_KEY {
        return HttpResponse::Unauthorized()
            .json(json!({"message": "Please provide API key in Authorization header", "debugging_request_id": "d-1"}));
    }
    match s.mode.unwrap_or(Mode::Normal) {
        Mode::Down => {
            return HttpResponse::InternalServerError()
                .json(json!({"message": "Internal server error", "debugging_request_id": "d-2"}));
        }
        Mode::Refuse => {
            return HttpResponse::BadRequest()
                .json(json!({"message": "spend_limit_duration is not valid", "debugging_request_id": "d-3"}));
        }
        Mode::Normal => {}
    }
    if path == "/v1/cards" && req.method() == actix_web::http::Method::POST {
        if seen.json["type"].as_str().is_none() {
            return HttpResponse::BadRequest()
                .json(json!({"message": "type is required", "debugging_request_id": "d-4"}));
        }
        s.issued += 1;
        let token = format!("7f687fe6-8e5b-4c8b-a3c5-{:012}", s.issued);
        let mut card = json!({"token": token, "last_four": "4142", "exp_month": "06", "exp_year": "2030",
            "state": seen.json["state"], "type": seen.json["type"], "memo": seen.json["memo"], "funding": {},
            "created": "2026-12-01T07:00:00Z", "spend_limit": 0, "spend_limit_duration": "TRANSACTION"});
        for k in ["spend_limit", "spend_limit_duration"] {
            if !seen.json[k].is_null() {
                card[k] = seen.json[k].clone();
            }
        }
        return HttpResponse::Ok().json(card);
    }
    if let Some(token) = path.strip_prefix("/v1/cards/") {
        return HttpResponse::Ok().json(json!({"token": token, "last_four": "4142", "state": seen.json["state"]}));
    }
    HttpResponse::NotFound().json(json!({"message": "Not found", "debugging_request_id": "d-5"}))
}
