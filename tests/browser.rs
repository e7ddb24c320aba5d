//! The approval page in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! at a phone's width, with JavaScript off: what a person sees, and what pressing the button does.
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); reported as ignored
//! without them, unless CI is set.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::slack::SlackReceiver;
use common::{Backend, spawn_with};
use serde_json::{Value, json};
use spendgate::crypto::Secret;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    base: String,
    session: String,
    http: reqwest::Client,
    process: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let profile = tempfile::tempdir().unwrap();
        for _ in 0..100 {
            if http.get(format!("{base}/status")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            // No background traffic: on a machine without a network its refused connections slow
            // the first page down; a fresh profile each time.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", format!("--user-data-dir={}", profile.path().display()),
                     "--window-size=390,844", "--blink-settings=scriptEnabled=false"]}}}});
        let mut driver = Driver { base, session: String::new(), http, process, _profile: profile };
        let created = driver.call(reqwest::Method::POST, "/session", capabilities).await;
        driver.session = created["sessionId"].as_str().expect("a WebDriver session").to_owned();
        driver
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.expect("chromedriver answers").json().await.unwrap();
        assert!(answer["value"]["error"].is_null(), "WebDriver {path}: {answer}");
        answer["value"].clone()
    }

    async fn session(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body).await
    }

    async fn open(&self, url: &str) {
        self.session(reqwest::Method::POST, "/url", json!({"url": url})).await;
    }

    /// The element, waited for up to 10 s: on a busy machine the page may still be coming.
    async fn find(&self, css: &str) -> String {
        let wanted = json!({"using": "css selector", "value": css});
        let path = format!("{}/session/{}/element", self.base, self.session);
        for _ in 0..200 {
            let answer: Value = self.http.post(&path).json(&wanted).send().await.unwrap().json().await.unwrap();
            if let Some(id) = answer["value"][ELEMENT].as_str() {
                return id.to_owned();
            }
            assert_eq!(answer["value"]["error"], "no such element", "WebDriver {path}: {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no element {css} after 10 s");
    }

    /// The element's text. After a click the old page may go away between finding an element
    /// and reading it: a stale reference means the new page is coming, so find it again.
    async fn text(&self, css: &str) -> String {
        for _ in 0..200 {
            let element = self.find(css).await;
            let path = format!("{}/session/{}/element/{element}/text", self.base, self.session);
            let answer: Value = self.http.get(&path).send().await.unwrap().json().await.unwrap();
            if let Some(text) = answer["value"].as_str() {
                return text.to_owned();
            }
            assert_eq!(answer["value"]["error"], "stale element reference", "WebDriver {path}: {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the text of {css} kept going stale for 10 s");
    }

    async fn count(&self, css: &str) -> usize {
        let found =
            self.session(reqwest::Method::POST, "/elements", json!({"using": "css selector", "value": css})).await;
        found.as_array().unwrap().len()
    }
}

#[actix_web::test]
#[cfg_attr(not(browser_tests), ignore = "needs Debian's chromium and chromium-driver")]
async fn a_person_approves_from_the_page_on_a_phone() {
    assert!(std::path::Path::new(CHROMEDRIVER).exists(), "{CHROMEDRIVER} is not installed");
    let slack = SlackReceiver::start(0).await;
    let webhook = slack.webhook_url();
    let app = spawn_with(Backend::Sqlite, move |c| {
        c.public_url = "https://spendgate.example.com".into();
        c.approval_secret = Some(Secret::new("approval-link-secret-for-tests-0123"));
        c.slack_webhook_url = Some(Secret::new(webhook));
    })
    .await;
    let agent = app.create_agent("research-bot").await;
    app.fund(&agent, 100_000).await;
    let policy = json!({"limits": [{"id": "daily", "scope": "card", "window": {"calendar": "day", "timezone": "UTC"},
        "amount": 1_000, "on_exceed": "ask"}]});
    let card = app.issue_card(&agent, json!({"label": "openai", "policy": policy})).await;
    let card = card["id"].as_str().unwrap();
    assert_eq!(app.authorize("b1", card, 1_250).await["reason"], "approval_required");
    let message = &slack.wait_for(1).await[0].1;
    let actions = message["blocks"].as_array().unwrap().iter().find(|b| b["type"] == "actions").unwrap();
    let approve = actions["elements"][0]["url"].as_str().unwrap().replace("https://spendgate.example.com", &app.base);

    let browser = Driver::start().await;
    browser.open(&approve).await;
    let heading = browser.text("h1").await;
    assert_eq!(heading, "Approve 12.50 USD at OPENAI *API?");
    let details = browser.text("dl").await;
    for seen in ["research-bot", "openai", "card.limit.daily", "0.00 USD of 10.00 USD"] {
        assert!(details.contains(seen), "the page shows {seen:?}: {details}");
    }
    assert_eq!(browser.text("button").await, "Approve 12.50 USD");
    // On a narrow window the page fits without scrolling sideways, and the button spans it.
    let window = browser.session(reqwest::Method::GET, "/window/rect", Value::Null).await["width"].as_f64().unwrap();
    let width_of = |css: &'static str| {
        let browser = &browser;
        async move {
            let element = browser.find(css).await;
            let rect = browser.session(reqwest::Method::GET, &format!("/element/{element}/rect"), Value::Null).await;
            rect["width"].as_f64().unwrap()
        }
    };
    let (page, button_width) = (width_of("main").await, width_of("button").await);
    assert!(window <= 600.0 && page <= window, "page {page} in a window of {window}");
    assert!(button_width >= 0.85 * page, "button {button_width} of {page}");
    let button = browser.find("button").await;
    assert_eq!(app.authorize("b2", card, 1_250).await["reason"], "approval_required", "looking changed nothing");

    browser.session(reqwest::Method::POST, &format!("/element/{button}/click"), json!({})).await;
    let mut heading = String::new();
    for _ in 0..50 {
        heading = browser.text("h1").await;
        if heading.starts_with("Approved") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(heading, "Approved: 12.50 USD at OPENAI *API");
    assert!(browser.text(".note").await.contains("retry will go through"));
    assert_eq!(browser.count("form").await, 0);
    assert_eq!(app.authorize("b3", card, 1_250).await["approved"], true, "the agent's retry goes through");

    // The same link afterwards shows the outcome and no button.
    browser.open(&approve).await;
    assert!(browser.text(".note").await.contains("approved by link"));
    assert_eq!(browser.count("button").await, 0);
    browser.session(reqwest::Method::DELETE, "", Value::Null).await;
}
