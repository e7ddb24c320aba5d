//! Open-loop load generator. Requests leave at a fixed rate whether or not earlier ones have
//! answered, and each latency is measured from the instant the request was *scheduled*, so a
//! stalled server shows up in the tail instead of silently slowing the generator (no coordinated
//! omission). Each round runs the baseline path (`/healthz`) and then the target at the same rate,
//! so the ratio of the two factors out the noise of a shared machine.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::Method;

#[derive(Parser, Debug)]
#[command(about = "Fixed-rate load against one spendgate endpoint, interleaved with a baseline")]
struct Args {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// Bearer API key for the target.
    #[arg(long, env = "SPENDGATE_API_KEY")]
    key: Option<String>,
    /// Target path, e.g. /v1/agents/agt_…/cards.
    #[arg(long)]
    path: String,
    #[arg(long, default_value = "POST")]
    method: String,
    /// JSON body; `{n}` is replaced by the request's sequence number.
    #[arg(long)]
    body: Option<String>,
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
}

#[derive(Debug, Default, Clone)]
struct Run {
    latencies_us: Vec<u64>,
    errors: u64,
    dropped: u64,
    first_error: Option<String>,
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

async fn run_once(client: &reqwest::Client, args: &Args, method: Method, path: &str, body: Option<&str>) -> Run {
    let total = u64::from(args.rate) * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let result = Arc::new(Mutex::new(Run::default()));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for n in 0..total {
        let scheduled = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= args.max_in_flight {
            result.lock().unwrap().dropped += 1;
            continue;
        }
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = client.request(method.clone(), format!("{}{path}", args.base));
        if let Some(key) = &args.key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.replace("{n}", &n.to_string()));
        }
        let result = result.clone();
        let in_flight = in_flight.clone();
        handles.push(tokio::task::spawn_local(async move {
            let outcome = match request.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.map(|_| ()).map_err(|e| e.to_string()),
                Ok(r) => Err(format!("HTTP {}: {}", r.status(), r.text().await.unwrap_or_default())),
                Err(e) => Err(e.to_string()),
            };
            let micros = scheduled.elapsed().as_micros() as u64;
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let mut run = result.lock().unwrap();
            match outcome {
                Ok(()) => run.latencies_us.push(micros),
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
    let mut run = result.lock().unwrap().clone();
    run.latencies_us.sort_unstable();
    run
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn describe(label: &str, run: &Run) {
    println!(
        "  {label:<9} ok {:>6}  errors {:>4}  dropped {:>4}  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  max {:>7.2} ms",
        run.latencies_us.len(),
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

fn main() {
    let args = Args::parse();
    let method: Method = args.method.parse().expect("an HTTP method");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.max_in_flight)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        println!(
            "{} {} at {} req/s for {} s, {} round(s), each beside {} at the same rate",
            args.method, args.path, args.rate, args.seconds, args.rounds, args.baseline
        );
        let (mut target_p50, mut target_p99, mut base_p50, mut base_p99, mut ratios) =
            (vec![], vec![], vec![], vec![], vec![]);
        for round in 1..=args.rounds {
            println!("round {round}");
            let base = run_once(&client, &args, Method::GET, &args.baseline, None).await;
            describe("baseline", &base);
            let target = run_once(&client, &args, method.clone(), &args.path, args.body.as_deref()).await;
            describe("target", &target);
            base_p50.push(base.percentile(50.0));
            base_p99.push(base.percentile(99.0));
            target_p50.push(target.percentile(50.0));
            target_p99.push(target.percentile(99.0));
            ratios.push(target.percentile(99.0) / base.percentile(99.0));
        }
        println!(
            "median of {} rounds: target p50 {:.2} ms, p99 {:.2} ms; baseline p50 {:.2} ms, p99 {:.2} ms; p99 ratio target/baseline {:.2}",
            args.rounds,
            median(target_p50),
            median(target_p99),
            median(base_p50),
            median(base_p99),
            median(ratios)
        );
    });
}
