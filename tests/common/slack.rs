//! A local stand-in for Slack's incoming webhook and `response_url`: records every JSON message
//! posted to it, and can answer the first few with 500 (an outage) or all of them.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::Value;

#[derive(Default)]
struct State {
    /// (path, message) in arrival order.
    received: Vec<(String, Value)>,
    /// Answer this many more requests with 500.
    failures_left: usize,
}

#[derive(Clone)]
pub struct SlackReceiver {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl SlackReceiver {
    /// Starts the receiver; the first `failures` requests get 500.
    pub async fn start(failures: usize) -> SlackReceiver {
        let state = Arc::new(Mutex::new(State { failures_left: failures, ..State::default() }));
        let shared = state.clone();
        let server = HttpServer::new(move || {
            let state = shared.clone();
            App::new().default_service(web::to(move |req: actix_web::HttpRequest, body: web::Bytes| {
                let state = state.clone();
                async move {
                    let mut s = state.lock().unwrap();
                    if s.failures_left > 0 {
                        s.failures_left -= 1;
                        return HttpResponse::InternalServerError().body("internal_error");
                    }
                    match serde_json::from_slice::<Value>(&body) {
                        Ok(message) => {
                            s.received.push((req.path().to_owned(), message));
                            HttpResponse::Ok().body("ok")
                        }
                        // As Slack does: a body that is not a message is refused.
                        Err(_) => HttpResponse::BadRequest().body("invalid_payload"),
                    }
                }
            }))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let base = format!("http://{}", server.addrs()[0]);
        actix_web::rt::spawn(server.run());
        SlackReceiver { base, state }
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/services/T000/B000/XXXX", self.base)
    }

    pub fn received(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits (up to 10 s) until `n` messages have arrived, and returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<(String, Value)> {
        for _ in 0..200 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("expected {n} Slack messages, got {:?}", self.received());
    }
}
