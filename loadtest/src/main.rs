//! Open-loop load generator. Requests leave at a fixed rate whether or not earlier ones have
//! answered, and each latency is measured from the instant the request was *scheduled*, so a
//! stalled server shows up in the tail instead of silently slowing the generator (no coordinated
//! omission). Each round runs the baseline path (`/healthz`) and then the target at the same rate,
//! so the ratio of the two factors out the noise of a shared machine.
//!
//! Without `--path` it drives signed native authorizations (`POST /v1/authorizations`): it sets up
//! `--agents` funded agents with a rolling-24h limit and `--cards` cards over them through the admin
//! API, sends unique authorization ids spread over the cards, and afterwards checks through the
//! admin API that no agent went past its limit and that every approval is a hold. `--format stripe |
//! lithic | marqeta` sends the same authorizations in that processor's format and signature scheme
//! instead (cards registered under processor card ids), to measure what the adapters cost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::Method;
use rustix::fd::OwnedFd;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create, timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

#[derive(Parser, Debug)]
#[command(about = "Fixed-rate load against one spendgate endpoint, interleaved with a baseline")]
struct Args {
    /// Server base URL: setup and the post-run check go here.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// More servers sharing the database (repeatable): requests go round-robin over all of them.
    #[arg(long = "also")]
    also: Vec<String>,
    /// Bearer API key for the target.
    #[arg(long, env = "SPENDGATE_API_KEY")]
    key: Option<String>,
    /// Target path, e.g. /v1/agents/agt_…/cards; without it, signed native authorizations.
    #[arg(long)]
    path: Option<String>,
    /// The format's secret: the server's SPENDGATE_WEBHOOK_SECRET (native), STRIPE_WEBHOOK_SECRET,
    /// LITHIC_WEBHOOK_SECRET, or `user:password` of MARQETA_USERNAME/PASSWORD.
    #[arg(long, env = "SPENDGATE_WEBHOOK_SECRET")]
    secret: Option<String>,
    /// The authorization format: native, stripe, lithic or marqeta.
    #[arg(long, default_value = "native")]
    format: Format,
    /// Agents to set up for authorizations.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Cards to set up, spread over the agents.
    #[arg(long, default_value_t = 1000)]
    cards: usize,
    /// Each agent's rolling-24h limit, in cents.
    #[arg(long, default_value_t = 1_000_000)]
    limit: i64,
    /// Each authorization's amount, in cents.
    #[arg(long, default_value_t = 100)]
    amount: i64,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "POST")]
    method: String,
    /// JSON body; `{n}` is replaced by the request's sequence number, `{run}` by a value unique to the run.
    #[arg(long)]
    body: Option<String>,
    /// An extra request header, `Name: value` (repeatable), with the same `{n}` and `{run}`, e.g.
    /// `--header 'Idempotency-Key: {run}-{n}'`.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Requests per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Interleaved rounds of (baseline, target).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The baseline path run at the same rate before each target run.
    #[arg(long, default_value = "/healthz")]
    baseline: String,
    /// Most requests in flight; past it a request is counted as dropped.
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
    /// The server's process id: its CPU time per request (from /proc/PID/stat, all threads) is
    /// reported for the target and for the baseline beside it.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Only be a webhook endpoint at this address (e.g. 127.0.0.1:8099): answer every POST with 204,
    /// for measuring the outbox (loadtest/ab.sh with HOOKS).
    #[arg(long)]
    sink: Option<String>,
}

/// An HTTP/1.1 endpoint that reads each request (headers, then `content-length` bytes of body) and
/// answers 204, keeping the connection; as cheap as a receiver can be, so it takes little of the
/// machine from the server measured.
async fn sink(addr: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.expect("the sink's address is free");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        tokio::task::spawn_local(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(8192);
            let mut chunk = [0u8; 8192];
            loop {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < end + 4 + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..end + 4 + length);
                if stream.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                    return;
                }
            }
        });
    }
}

/// CPU time a process has used, user and system, all threads, in microseconds.
fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces, in parentheses): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1_000_000 / rustix::param::clock_ticks_per_second())
}

/// Runs `target` and measures the server's CPU time per answered request, when its pid is known.
async fn measured(client: &reqwest::Client, args: &Args, target: &Target) -> (Run, Option<f64>) {
    let before = args.server_pid.and_then(cpu_us);
    let run = run_once(client, args, target).await;
    let after = args.server_pid.and_then(cpu_us);
    let per_request = before.zip(after).map(|(b, a)| (a - b) as f64 / run.latencies_us.len().max(1) as f64);
    (run, per_request)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Native,
    Stripe,
    Lithic,
    Marqeta,
}

impl Format {
    fn processor(self) -> Option<&'static str> {
        match self {
            Format::Native => None,
            Format::Stripe => Some("stripe"),
            Format::Lithic => Some("lithic"),
            Format::Marqeta => Some("marqeta"),
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Run {
    latencies_us: Vec<u64>,
    errors: u64,
    dropped: u64,
    approved: u64,
    declined: u64,
    first_error: Option<String>,
    seconds: f64,
}

/// What each request of a run is.
enum Target {
    Plain {
        method: Method,
        path: String,
        body: Option<String>,
        headers: Vec<(String, String)>,
        run: String,
    },
    /// Signed authorizations with ids `<run>-<n>`, round-robin over the cards (spendgate's card ids
    /// for the native format, the processor's for the others).
    Authorize {
        run: String,
        cards: Vec<String>,
        secret: String,
        amount: i64,
        format: Format,
    },
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    parts.iter().for_each(|p| mac.update(p));
    mac.finalize().into_bytes().to_vec()
}

/// `t=…,v1=…`: spendgate's own scheme and Stripe's.
fn signature(secret: &str, body: &[u8]) -> String {
    let t = unix_now();
    format!("t={t},v1={}", hex::encode(hmac(secret.as_bytes(), &[format!("{t}.").as_bytes(), body])))
}

/// Processors' authorization ids are random, so each lands on its own leaf of the idempotency
/// index; a counter would insert next to the last one. A bijection of `n`: still unique.
fn scatter(n: u64) -> u64 {
    // The splitmix64 finalizer.
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One authorization in `format`: the path, its headers and body.
fn authorization(
    format: Format,
    secret: &str,
    id: &str,
    card: &str,
    amount: i64,
) -> (&'static str, Vec<(&'static str, String)>, Vec<u8>) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    match format {
        Format::Native => {
            let body = json(serde_json::json!({"id": id, "card_id": card, "amount": amount, "currency": "USD",
                "merchant": {"id": "m_openai", "name": "OPENAI *API", "mcc": "5734", "country": "US"}}));
            ("/v1/authorizations", vec![("Spendgate-Signature", signature(secret, &body))], body)
        }
        Format::Stripe => {
            let body = json(
                serde_json::json!({"id": format!("evt_{id}"), "object": "event", "api_version": "2025-03-31.basil",
                "type": "issuing_authorization.request", "data": {"object": {"id": format!("iauth_{id}"),
                "object": "issuing.authorization", "amount": 0, "currency": "usd", "approved": false, "status": "pending",
                "card": {"id": card, "object": "issuing.card"}, "merchant_amount": 0, "merchant_currency": "usd",
                "merchant_data": {"category_code": "5734", "name": "OPENAI *API", "network_id": "m_openai", "country": "US"},
                "pending_request": {"amount": amount, "currency": "usd", "merchant_amount": amount, "merchant_currency": "usd",
                    "is_amount_controllable": false}, "request_history": []}}}),
            );
            ("/webhooks/stripe/authorizations", vec![("Stripe-Signature", signature(secret, &body))], body)
        }
        Format::Lithic => {
            let body = json(serde_json::json!({"event_type": "card_authorization.approval_request", "token": id,
                "status": "AUTHORIZATION", "card": {"token": card},
                "amounts": {"cardholder": {"amount": amount, "conversion_rate": "1.0", "currency": "USD"},
                    "merchant": {"amount": amount, "currency": "USD"}},
                "merchant": {"acceptor_id": "m_openai", "descriptor": "OPENAI *API", "mcc": "5734", "country": "USA"}}));
            let key = b64.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).expect("a whsec_ base64 secret");
            let t = unix_now().to_string();
            let sig = b64.encode(hmac(&key, &[id.as_bytes(), b".", t.as_bytes(), b".", &body]));
            let headers = vec![
                ("webhook-id", id.to_owned()),
                ("webhook-timestamp", t),
                ("webhook-signature", format!("v1,{sig}")),
            ];
            ("/webhooks/lithic/asa", headers, body)
        }
        Format::Marqeta => {
            let major = format!("{}.{:02}", amount / 100, amount % 100);
            let body = json(serde_json::json!({"type": "authorization", "card_token": card, "currency_code": "USD",
                "gpa_order": {"jit_funding": {"token": id, "method": "pgfs.authorization", "user_token": "load", "amount": major}},
                "card_acceptor": {"mid": "m_openai", "mcc": "5734", "name": "OPENAI *API", "country_code": "USA"}}));
            ("/webhooks/marqeta/jit", vec![("Authorization", format!("Basic {}", b64.encode(secret)))], body)
        }
    }
}

/// Whether an answer approved: each format says it its own way.
fn approved(format: Format, status: u16, body: &[u8]) -> Option<bool> {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    match format {
        Format::Native | Format::Stripe => {
            if body.starts_with(b"{\"approved\":true") {
                Some(true)
            } else if body.starts_with(b"{\"approved\":false") {
                Some(false)
            } else {
                None
            }
        }
        Format::Lithic => Some(has(b"\"result\":\"APPROVED\"")),
        Format::Marqeta => Some(status == 200),
    }
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        self.latencies_us[rank.clamp(1, self.latencies_us.len()) - 1] as f64 / 1000.0
    }
}

async fn run_once(client: &reqwest::Client, args: &Args, target: &Target) -> Run {
    let total = u64::from(args.rate) * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let result = Arc::new(Mutex::new(Run::default()));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    let mut pacer = Pacer::new(start, interval, total).expect("a timerfd to pace requests");
    while let Some(n) = pacer.tick().await.expect("the pacing timer") {
        let scheduled = send_time(start, interval, n);
        if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= args.max_in_flight {
            result.lock().unwrap().dropped += 1;
            continue;
        }
        if n > 0 && n % u64::from(args.rate) == 0 && !args.json {
            let r = result.lock().unwrap();
            eprintln!(
                "    {:>3} s: sent {n}, answered {}, errors {}, in flight {}",
                n / u64::from(args.rate),
                r.latencies_us.len(),
                r.errors,
                in_flight.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = match n as usize % (1 + args.also.len()) {
            0 => &args.base,
            i => &args.also[i - 1],
        };
        let request = match target {
            Target::Plain { method, path, body, headers, run } => {
                let fill = |text: &str| text.replace("{n}", &n.to_string()).replace("{run}", run);
                let mut request = client.request(method.clone(), format!("{base}{path}"));
                if let Some(key) = &args.key {
                    request = request.bearer_auth(key);
                }
                for (name, value) in headers {
                    request = request.header(name, fill(value));
                }
                if let Some(body) = body {
                    request = request.header("Content-Type", "application/json").body(fill(body));
                }
                request
            }
            Target::Authorize { run, cards, secret, amount, format } => {
                let id = format!("{run}-{:016x}", scatter(n));
                let (path, headers, body) =
                    authorization(*format, secret, &id, &cards[n as usize % cards.len()], *amount);
                let mut request = client.post(format!("{base}{path}")).header("Content-Type", "application/json");
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                request.body(body)
            }
        };
        let format = match target {
            Target::Authorize { format, .. } => Some(*format),
            Target::Plain { .. } => None,
        };
        let result = result.clone();
        let in_flight = in_flight.clone();
        handles.push(tokio::task::spawn_local(async move {
            let outcome = match request.send().await {
                // Marqeta's decline is a 402 with its answer.
                Ok(r) if r.status().is_success() || (format == Some(Format::Marqeta) && r.status().as_u16() == 402) => {
                    let status = r.status().as_u16();
                    r.bytes().await.map(|b| (status, b)).map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!("HTTP {}: {}", r.status(), r.text().await.unwrap_or_default())),
                Err(e) => Err(e.to_string()),
            };
            let micros = scheduled.elapsed().as_micros() as u64;
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let mut run = result.lock().unwrap();
            match outcome {
                Ok((status, body)) => {
                    run.latencies_us.push(micros);
                    match format.and_then(|f| approved(f, status, &body)) {
                        Some(true) => run.approved += 1,
                        Some(false) => run.declined += 1,
                        None => {}
                    }
                }
                Err(e) => {
                    run.errors += 1;
                    run.first_error.get_or_insert(e);
                }
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut run = result.lock().unwrap().clone();
    run.seconds = seconds;
    run.latencies_us.sort_unstable();
    run
}

fn send_time(start: Instant, interval: Duration, n: u64) -> Instant {
    start + interval.mul_f64(n as f64)
}

/// Yields request numbers at their send times. tokio's timer rounds each deadline up to the next
/// millisecond, so requests would leave in bursts up to 1 ms late and that lateness would count as
/// the server's. A timerfd armed for each send time wakes the runtime's own thread within tens of
/// microseconds (the kernel's high-resolution timer, on its own CPU), with no thread of the
/// generator's to wake it: on the machine the server shares, every wake-up is CPU taken from it.
struct Pacer {
    timer: AsyncFd<OwnedFd>,
    start: Instant,
    interval: Duration,
    next: u64,
    total: u64,
}

impl Pacer {
    fn new(start: Instant, interval: Duration, total: u64) -> std::io::Result<Self> {
        let timer = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        // SAFETY: the OwnedFd is a valid descriptor, owned by the AsyncFd and closed only with it.
        let timer = unsafe { AsyncFd::register_with_interest(timer, Interest::READABLE) }?;
        Ok(Self { timer, start, interval, next: 0, total })
    }

    /// The next request's number, at or after its send time; `None` once all have been yielded.
    async fn tick(&mut self) -> std::io::Result<Option<u64>> {
        if self.next == self.total {
            return Ok(None);
        }
        let n = self.next;
        self.next += 1;
        let wait = send_time(self.start, self.interval, n).saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(Some(n));
        }
        let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
        let value = Timespec { tv_sec: wait.as_secs() as _, tv_nsec: wait.subsec_nanos().into() };
        timerfd_settime(&self.timer, TimerfdTimerFlags::empty(), &Itimerspec { it_interval: zero, it_value: value })?;
        loop {
            let mut ready = self.timer.readable().await?;
            match ready.try_io(|timer| Ok(rustix::io::read(timer.get_ref(), &mut [0u8; 8])?)) {
                Ok(expired) => {
                    expired?;
                    // The timer fired once and is armed again only after this: no later expiry is lost.
                    ready.clear_ready();
                    return Ok(Some(n));
                }
                Err(_would_block) => continue,
            }
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn describe(label: &str, run: &Run) {
    let rate = run.latencies_us.len() as f64 / run.seconds;
    println!(
        "  {label:<9} ok {:>6} ({rate:.0}/s)  approved {:>6}  declined {:>5}  errors {:>4}  dropped {:>4}  \
         p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  max {:>7.2} ms",
        run.latencies_us.len(),
        run.approved,
        run.declined,
        run.errors,
        run.dropped,
        run.percentile(50.0),
        run.percentile(90.0),
        run.percentile(99.0),
        run.percentile(99.9),
        run.percentile(100.0),
    );
    if let Some(e) = &run.first_error {
        println!("            first error: {e}");
    }
}

async fn admin(client: &reqwest::Client, args: &Args, path: &str, body: serde_json::Value) -> serde_json::Value {
    let key = args.key.as_deref().expect("--key (an admin API key) is needed to set up agents and cards");
    let r = client.post(format!("{}{path}", args.base)).bearer_auth(key).json(&body).send().await.expect("admin API");
    let status = r.status();
    let value: serde_json::Value = r.json().await.expect("admin API JSON");
    assert!(status.is_success(), "{path}: {status} {value}");
    value
}

/// Funded agents with a rolling-24h limit, and cards spread over them. Returns (agents, the ids
/// requests name the cards by).
async fn set_up(client: &reqwest::Client, args: &Args) -> (Vec<String>, Vec<String>) {
    let policy = serde_json::json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": args.limit}]});
    // Agents are funded from the treasury, so it is backed first (a server from before the
    // treasury answers 404, and funds from nowhere).
    let key = args.key.as_deref().expect("--key (an admin API key) is needed to set up agents and cards");
    let backing = serde_json::json!({"id": format!("load-backing-{}", std::process::id()),
        "amount": args.limit * 10 * args.agents as i64, "currency": "USD"});
    let r = client.post(format!("{}/v1/treasury/deposits", args.base)).bearer_auth(key).json(&backing).send().await;
    let status = r.expect("admin API").status();
    assert!(status.is_success() || status == reqwest::StatusCode::NOT_FOUND, "/v1/treasury/deposits: {status}");
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let agent =
            admin(client, args, "/v1/agents", serde_json::json!({"name": format!("load-{i}"), "policy": policy})).await;
        let id = agent["id"].as_str().unwrap().to_owned();
        let fund = serde_json::json!({"id": format!("load-fund-{id}"), "amount": args.limit * 10, "currency": "USD"});
        admin(client, args, &format!("/v1/agents/{id}/fund"), fund).await;
        agents.push(id);
    }
    let mut cards = Vec::new();
    let stamp = std::process::id();
    for i in 0..args.cards {
        let agent = &agents[i % agents.len()];
        let body = match args.format.processor() {
            None => serde_json::json!({"label": format!("c{i}")}),
            Some(processor) => serde_json::json!({"label": format!("c{i}"), "processor": processor,
                "processor_card_id": format!("load-{stamp}-{i}"), "last4": "0000"}),
        };
        let card = admin(client, args, &format!("/v1/agents/{agent}/cards"), body).await;
        let id = if args.format == Format::Native { &card["id"] } else { &card["processor_card_id"] };
        cards.push(id.as_str().unwrap().to_owned());
    }
    (agents, cards)
}

/// After the load: no agent past its limit, and the holds add up to the approvals the client saw.
async fn check(client: &reqwest::Client, args: &Args, agents: &[String], approved: u64) -> (bool, String) {
    let key = args.key.as_deref().unwrap_or_default();
    let (mut over, mut held, mut most) = (0, 0i64, 0i64);
    for agent in agents {
        let b: serde_json::Value = client
            .get(format!("{}/v1/agents/{agent}/balance", args.base))
            .bearer_auth(key)
            .send()
            .await
            .expect("balance")
            .json()
            .await
            .expect("balance JSON");
        let counted = b["held"].as_i64().unwrap_or(0) + b["spent"].as_i64().unwrap_or(0);
        most = most.max(counted);
        held += b["held"].as_i64().unwrap_or(0);
        if counted > args.limit {
            over += 1;
        }
    }
    let expected = approved as i64 * args.amount;
    let ok = over == 0 && held == expected;
    let text = format!(
        "{} agents over their limit (largest spend {most} of {}); holds {held} = approvals × amount {expected}: {}",
        over,
        args.limit,
        if held == expected { "yes" } else { "NO" }
    );
    (ok, text)
}

fn main() {
    let args = Args::parse();
    // Already installed is fine: all this needs is some provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    if let Some(addr) = &args.sink {
        local.block_on(&runtime, sink(addr));
        return;
    }
    local.block_on(&runtime, async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.max_in_flight)
            // Below the server's keep-alive (actix: 5 s), so the client never picks up an idle
            // connection in the instant the server closes it (seen as "error sending request").
            .pool_idle_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let mut agents = Vec::new();
        let (label, mut make): (String, Box<dyn FnMut(usize) -> Target>) = match &args.path {
            Some(path) => {
                let method: Method = args.method.parse().expect("an HTTP method");
                let (p, b) = (path.clone(), args.body.clone());
                let headers: Vec<(String, String)> = args
                    .headers
                    .iter()
                    .map(|h| {
                        let (name, value) = h.split_once(':').expect("--header is `Name: value`");
                        (name.trim().to_owned(), value.trim().to_owned())
                    })
                    .collect();
                let stamp = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis());
                (
                    format!("{} {path}", args.method),
                    Box::new(move |round| Target::Plain {
                        method: method.clone(),
                        path: p.clone(),
                        body: b.clone(),
                        headers: headers.clone(),
                        run: format!("{stamp}-{round}"),
                    }),
                )
            }
            None => {
                let secret = args.secret.clone().expect("--secret (the format's webhook secret) is needed");
                let format = args.format;
                let (a, cards) = set_up(&client, &args).await;
                agents = a;
                let (amount, stamp) = (args.amount, std::process::id());
                (
                    format!("{format:?} authorizations over {} cards of {} agents", cards.len(), agents.len()),
                    Box::new(move |round| Target::Authorize {
                        run: format!("load-{stamp}-{round}"),
                        cards: cards.clone(),
                        secret: secret.clone(),
                        amount,
                        format,
                    }),
                )
            }
        };
        if !args.json {
            println!("{label} at {} req/s for {} s, {} round(s), each beside {} at the same rate", args.rate, args.seconds, args.rounds, args.baseline);
        }
        let baseline = Target::Plain {
            method: Method::GET,
            path: args.baseline.clone(),
            body: None,
            headers: Vec::new(),
            run: String::new(),
        };
        let mut rounds = Vec::new();
        let mut cpu = Vec::new();
        for round in 1..=args.rounds {
            if !args.json {
                println!("round {round}");
            }
            let (base, base_cpu) = measured(&client, &args, &baseline).await;
            let (target, target_cpu) = measured(&client, &args, &make(round)).await;
            if !args.json {
                describe("healthz", &base);
                describe("target", &target);
            }
            rounds.push((base, target));
            cpu.extend(base_cpu.zip(target_cpu));
        }
        let med = |f: &dyn Fn(&(Run, Run)) -> f64| median(rounds.iter().map(f).collect());
        let summary = serde_json::json!({
            "target": label, "rate": args.rate, "seconds": args.seconds, "rounds": args.rounds,
            "p50_ms": med(&|r| r.1.percentile(50.0)), "p90_ms": med(&|r| r.1.percentile(90.0)),
            "p99_ms": med(&|r| r.1.percentile(99.0)), "p99_9_ms": med(&|r| r.1.percentile(99.9)),
            "max_ms": med(&|r| r.1.percentile(100.0)),
            "achieved_rate": med(&|r| r.1.latencies_us.len() as f64 / r.1.seconds),
            "healthz_p50_ms": med(&|r| r.0.percentile(50.0)), "healthz_p99_ms": med(&|r| r.0.percentile(99.0)),
            "p50_ratio": med(&|r| r.1.percentile(50.0) / r.0.percentile(50.0)),
            "p99_ratio": med(&|r| r.1.percentile(99.0) / r.0.percentile(99.0)),
            "errors": rounds.iter().map(|r| r.1.errors + r.1.dropped).sum::<u64>(),
            "approved": rounds.iter().map(|r| r.1.approved).sum::<u64>(),
            "declined": rounds.iter().map(|r| r.1.declined).sum::<u64>(),
        });
        let mut summary = summary;
        if !cpu.is_empty() {
            summary["cpu_us"] = serde_json::json!(median(cpu.iter().map(|c| c.1).collect()));
            summary["healthz_cpu_us"] = serde_json::json!(median(cpu.iter().map(|c| c.0).collect()));
            summary["cpu_ratio"] = serde_json::json!(median(cpu.iter().map(|c| c.1 / c.0).collect()));
        }
        let mut ok = summary["errors"] == 0;
        let mut check_text = None;
        if !agents.is_empty() {
            let approved = summary["approved"].as_u64().unwrap_or(0);
            let (fine, text) = check(&client, &args, &agents, approved).await;
            ok &= fine;
            check_text = Some(text);
        }
        if args.json {
            let mut out = summary.clone();
            out["check"] = serde_json::json!(check_text);
            out["ok"] = serde_json::json!(ok);
            println!("{out}");
        } else {
            println!(
                "median of {} rounds: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms at {:.0}/s; \
                 healthz p50 {:.2} ms, p99 {:.2} ms; decision p50 / healthz p50 = {:.2}, p99 ratio {:.2}",
                args.rounds, summary["p50_ms"].as_f64().unwrap_or(f64::NAN), summary["p90_ms"].as_f64().unwrap_or(f64::NAN),
                summary["p99_ms"].as_f64().unwrap_or(f64::NAN), summary["p99_9_ms"].as_f64().unwrap_or(f64::NAN),
                summary["max_ms"].as_f64().unwrap_or(f64::NAN), summary["achieved_rate"].as_f64().unwrap_or(f64::NAN),
                summary["healthz_p50_ms"].as_f64().unwrap_or(f64::NAN), summary["healthz_p99_ms"].as_f64().unwrap_or(f64::NAN),
                summary["p50_ratio"].as_f64().unwrap_or(f64::NAN), summary["p99_ratio"].as_f64().unwrap_or(f64::NAN),
            );
            if let Some(ratio) = summary["cpu_ratio"].as_f64() {
                println!(
                    "server CPU per request (medians): target {:.1} µs, healthz {:.1} µs; target / healthz = {ratio:.2}",
                    summary["cpu_us"].as_f64().unwrap_or(f64::NAN),
                    summary["healthz_cpu_us"].as_f64().unwrap_or(f64::NAN)
                );
            }
            println!("errors {}, approved {}, declined {}", summary["errors"], summary["approved"], summary["declined"]);
            if let Some(t) = check_text {
                println!("check: {t}");
            }
        }
        if !ok {
            std::process::exit(1);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Pacer, cpu_us, scatter, send_time};

    #[test]
    fn a_process_cpu_time_is_read_and_grows() {
        let before = cpu_us(std::process::id()).expect("/proc/self/stat reads");
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let after = cpu_us(std::process::id()).unwrap();
        assert!(after >= before + 20_000, "50 ms busy shows as CPU time: {before} -> {after} ({x})");
        assert_eq!(cpu_us(u32::MAX), None);
    }

    #[test]
    fn the_pacer_yields_every_request_in_order_and_none_early() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        let (start, interval, total) = (Instant::now(), Duration::from_micros(200), 2_000);
        let mut seen = 0;
        let mut late = Vec::with_capacity(total as usize);
        runtime.block_on(async {
            let mut pacer = Pacer::new(start, interval, total).unwrap();
            while let Some(n) = pacer.tick().await.unwrap() {
                assert_eq!(n, seen);
                let early = send_time(start, interval, n).saturating_duration_since(Instant::now());
                assert_eq!(early, Duration::ZERO, "request {n} yielded {early:?} before its time");
                late.push(send_time(start, interval, n).elapsed());
                seen += 1;
            }
        });
        assert_eq!(seen, total);
        // tokio's millisecond timer would be about 500 µs late at the median.
        late.sort_unstable();
        let median = late[late.len() / 2];
        assert!(median < Duration::from_micros(300), "the median request left {median:?} late");
    }

    #[test]
    fn scattered_ids_are_unique_and_out_of_order() {
        let ids: Vec<u64> = (0..100_000).map(scatter).collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let rising = ids.windows(2).filter(|w| w[0] < w[1]).count();
        assert!((40_000..60_000).contains(&rising), "{rising} of 99,999 neighbours rise: not scattered");
    }
}
