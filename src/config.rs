//! Settings: defaults, then an optional TOML file, then `SPENDGATE_*` environment variables.
//! Every setting has a safe default, so `spendgate serve` runs with none.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::crypto::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address the server listens on.
    pub listen: String,
    /// `sqlite://PATH` (the file and its directory are created) or `postgres://…`.
    pub database_url: String,
    /// Reader connections (SQLite) or pool size (PostgreSQL).
    pub database_pool_size: u32,
    /// The longest an API request waits for the database before answering 503 `storage_unavailable`.
    pub database_timeout_ms: u64,
    /// The same for a spend report or a page of an export, which may read a whole range of the ledger.
    pub report_timeout_ms: u64,
    /// HTTP worker threads; 0 means one per core less one (at least one), for the ledger writer.
    pub workers: usize,
    /// Becomes the first owner key when no key exists yet (for automation). At least 32 characters.
    pub bootstrap_admin_key: Option<Secret>,
    /// The BIN (6 to 8 digits) the simulator issues card numbers in.
    pub simulator_bin: String,
    /// Log filter, e.g. `info` or `spendgate=debug` (`RUST_LOG` wins when set).
    pub log: String,
    /// Signs the native authorization webhook (`Spendgate-Signature`); unset, it answers 404.
    pub webhook_secret: Option<Secret>,
    /// Also accepted while a new `webhook_secret` is rolled out.
    pub webhook_secret_previous: Option<Secret>,
    /// Stripe Issuing's webhook signing secret (`whsec_…`): enables `/webhooks/stripe/authorizations`
    /// and `/webhooks/stripe`.
    pub stripe_webhook_secret: Option<Secret>,
    pub stripe_webhook_secret_previous: Option<Secret>,
    /// Lithic's Standard Webhooks secret (`whsec_` + base64): enables `/webhooks/lithic/asa` and `/webhooks/lithic`.
    pub lithic_webhook_secret: Option<Secret>,
    pub lithic_webhook_secret_previous: Option<Secret>,
    /// How long Lithic waits for an ASA answer; the decision budget keeps a margin below it.
    pub lithic_deadline_ms: u64,
    /// The Basic credentials set on Marqeta's gateway funding source: enable `/webhooks/marqeta/jit`.
    pub marqeta_username: Option<Secret>,
    pub marqeta_password: Option<Secret>,
    pub marqeta_password_previous: Option<Secret>,
    /// Stripe's secret API key (`sk_…` or a restricted `rk_…` with Issuing write): cards issued with
    /// `processor: "stripe"` and no `processor_card_id` are then created at Stripe.
    pub stripe_api_key: Option<Secret>,
    pub stripe_api_url: String,
    /// The Stripe cardholder (`ich_…`) new cards are issued to; required with `stripe_api_key`.
    pub stripe_cardholder: Option<String>,
    /// Lithic's API key: cards issued with `processor: "lithic"` and no `processor_card_id` are then
    /// created at Lithic.
    pub lithic_api_key: Option<Secret>,
    /// `https://api.lithic.com`, or `https://sandbox.lithic.com` for the sandbox.
    pub lithic_api_url: String,
    /// Time allowed for each request to a processor's API.
    pub processor_timeout_ms: u64,
    /// 32 bytes, base64: seals agents' wallet keys (AES-256-GCM). Unset, the USDC rail is off.
    pub master_key: Option<Secret>,
    /// More x402 assets to pay with, beside USDC on Base and Base Sepolia: `<network>=<token address>,…`
    /// (USD-pegged, 6 decimals).
    pub x402_assets: String,
    /// Time allowed for each request to an x402 server.
    pub x402_timeout_ms: u64,
    /// Longest validity of a signed payment, whatever the server's `maxTimeoutSeconds`.
    pub x402_max_valid_seconds: u64,
    /// Private addresses the x402 fetch may contact on an agent's behalf, which it otherwise refuses
    /// (loopback, RFC 1918, link-local, …): comma-separated CIDRs and/or `host:port`, e.g.
    /// `10.20.0.0/16,billing.internal:8443`. Empty: only globally routable addresses.
    pub x402_private_destinations: String,
    /// Largest upstream answer an x402 fetch passes back; a larger one is a 502 `upstream_too_large`.
    pub x402_max_response_bytes: usize,
    /// x402 fetches in flight at once, in all and per agent; beyond them, 429 `too_many_fetches`.
    pub x402_max_fetches: usize,
    pub x402_max_fetches_per_agent: usize,
    /// The JSON-RPC endpoint of each network whose wallets are read: `<network>=<url>,…`, e.g.
    /// `base=https://base-mainnet.example/v2/KEY`. Deposits into agents' wallets are then credited,
    /// and a payment needs the wallet to hold it on the chain. Unset: no network is read.
    pub chain_rpc: Option<Secret>,
    /// A deposit is credited once this many blocks are on top of its own (re-orgs shallower than
    /// this cannot undo a credit).
    pub chain_confirmations: u64,
    pub chain_poll_ms: u64,
    /// On a network's first scan, how far below the confirmed head it starts.
    pub chain_first_scan_blocks: u64,
    /// The widest block range of one log query (providers cap it).
    pub chain_blocks_per_query: u64,
    /// How often every wallet is reconciled with the chain, and an alert raised where they disagree.
    pub chain_reconcile_seconds: u64,
    /// Time allowed for each JSON-RPC request.
    pub chain_timeout_ms: u64,
    /// Time a decision may take before it is answered as a `timeout` decline.
    pub decision_budget_ms: u64,
    /// Holds still pending after this many hours are voided.
    pub hold_expiry_hours: u64,
    /// The ECB's daily reference rates, fetched at start and every `fx_refresh_minutes`. Empty:
    /// only the table built into the release (which soon counts as stale).
    pub fx_url: String,
    /// A second rates source for the currencies the ECB does not publish (and no peg fixes): a JSON
    /// document `{"base", "date" | "timestamp", "rates": {…}}` with a EUR rate. Empty: none.
    pub fx_extra_url: String,
    pub fx_refresh_minutes: u64,
    /// Rates older than this make a cross-currency authorization decline with `stale_fx`.
    pub fx_max_age_hours: u64,
    /// false: keep deciding with the last good table however old it is.
    pub fx_stale_declines: bool,
    /// Take the table built into the release however old it is, labelled `bundled` in every
    /// decision that used it. `serve --demo` sets it; a server that moves real money should not.
    pub fx_accept_bundled: bool,
    /// Cards kept in the decision path's snapshot cache.
    pub cache_capacity: u64,
    /// Most ledger commands committed in one transaction.
    pub ledger_batch: usize,
    /// Where people reach this server: the base of the approval links, e.g. `https://spendgate.example.com`.
    pub public_url: String,
    /// Signs approval links (HMAC-SHA256). Unset, approvals are decided only through the API.
    pub approval_secret: Option<Secret>,
    /// How long an approval request (and its links) stays open.
    pub approval_ttl_hours: u64,
    /// A Slack incoming webhook URL: approval requests are posted there. Unset, none are posted.
    pub slack_webhook_url: Option<Secret>,
    /// The Slack app's signing secret: enables `/slack/interactions` (Approve/Deny buttons).
    pub slack_signing_secret: Option<Secret>,
    /// Time allowed for each request to Slack.
    pub slack_timeout_ms: u64,
    /// The pause before the second attempt to post a message; doubled for each after it (5 in all).
    pub slack_retry_ms: u64,
    /// How often every audit chain's head is recorded as a checkpoint (when any has grown); 0: never.
    pub audit_checkpoint_minutes: u64,
    /// A secp256k1 private key (0x-hex) that signs each checkpoint (EIP-191); unset: unsigned.
    pub audit_signing_key: Option<Secret>,
    /// Private addresses webhook endpoints may be at (CIDRs and host:port, as x402_private_destinations).
    pub webhook_private_destinations: String,
    /// The pause after a delivery's first failed attempt; doubled after each, up to an hour.
    pub webhook_retry_ms: u64,
    /// The longest one delivery attempt waits for the endpoint.
    pub webhook_timeout_ms: u64,
    /// How often the agents whose policy has `alerts.spend_rate` are checked for an anomaly.
    pub spend_rate_check_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://data/spendgate.db".into(),
            database_pool_size: 8,
            database_timeout_ms: 5_000,
            report_timeout_ms: 60_000,
            workers: 0,
            bootstrap_admin_key: None,
            // Visa's test range, as used by processors' sandboxes: never a real card.
            simulator_bin: "400000".into(),
            log: "info".into(),
            webhook_secret: None,
            webhook_secret_previous: None,
            stripe_webhook_secret: None,
            stripe_webhook_secret_previous: None,
            lithic_webhook_secret: None,
            lithic_webhook_secret_previous: None,
            lithic_deadline_ms: 3_000,
            marqeta_username: None,
            marqeta_password: None,
            marqeta_password_previous: None,
            stripe_api_key: None,
            stripe_api_url: "https://api.stripe.com".into(),
            stripe_cardholder: None,
            lithic_api_key: None,
            lithic_api_url: "https://api.lithic.com".into(),
            processor_timeout_ms: 10_000,
            master_key: None,
            x402_assets: String::new(),
            x402_timeout_ms: 30_000,
            x402_max_valid_seconds: 300,
            x402_private_destinations: String::new(),
            x402_max_response_bytes: 10 << 20,
            x402_max_fetches: 256,
            x402_max_fetches_per_agent: 8,
            chain_rpc: None,
            chain_confirmations: 10,
            chain_poll_ms: 15_000,
            chain_first_scan_blocks: 10_000,
            chain_blocks_per_query: 2_000,
            chain_reconcile_seconds: 600,
            chain_timeout_ms: 10_000,
            decision_budget_ms: 1_500,
            hold_expiry_hours: 7 * 24,
            fx_url: "https://www.ecb.europa.eu/stats/eurofxref/eurofxref-daily.xml".into(),
            fx_extra_url: String::new(),
            fx_refresh_minutes: 60,
            fx_max_age_hours: 4 * 24,
            fx_stale_declines: true,
            fx_accept_bundled: false,
            cache_capacity: 1_000_000,
            ledger_batch: 256,
            public_url: "http://127.0.0.1:8080".into(),
            approval_secret: None,
            approval_ttl_hours: 24,
            slack_webhook_url: None,
            slack_signing_secret: None,
            slack_timeout_ms: 5_000,
            slack_retry_ms: 1_000,
            audit_checkpoint_minutes: 60,
            audit_signing_key: None,
            webhook_private_destinations: String::new(),
            webhook_retry_ms: 5_000,
            webhook_timeout_ms: 10_000,
            spend_rate_check_seconds: 60,
        }
    }
}

impl Config {
    /// Reads `path` if given (it must then exist) and the environment.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            figment = figment.merge(Toml::file_exact(path));
        }
        let known = Config::keys();
        // Only the names this struct knows: the CLI's own SPENDGATE_URL and SPENDGATE_API_KEY are not settings.
        let config: Config = figment
            .merge(Env::prefixed("SPENDGATE_").filter(move |key| known.iter().any(|k| k.as_str() == key)))
            .extract()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        config.check()?;
        Ok(config)
    }

    /// The setting names, taken from the struct itself so a new field is never missed.
    fn keys() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
            _ => unreachable!("Config serializes to a JSON object"),
        }
    }

    pub fn check(&self) -> anyhow::Result<()> {
        let bin = &self.simulator_bin;
        anyhow::ensure!(
            (6..=8).contains(&bin.len()) && bin.bytes().all(|b| b.is_ascii_digit()),
            "simulator_bin must be 6 to 8 digits, got {bin:?}"
        );
        if let Some(key) = &self.bootstrap_admin_key {
            let k = key.expose();
            anyhow::ensure!(
                k.len() >= 32 && k.bytes().all(|b| b.is_ascii_graphic()),
                "SPENDGATE_BOOTSTRAP_ADMIN_KEY must be at least 32 printable characters without spaces"
            );
        }
        for (name, secret) in [
            ("webhook_secret", &self.webhook_secret),
            ("webhook_secret_previous", &self.webhook_secret_previous),
            ("stripe_webhook_secret", &self.stripe_webhook_secret),
            ("stripe_webhook_secret_previous", &self.stripe_webhook_secret_previous),
            ("marqeta_password", &self.marqeta_password),
            ("marqeta_password_previous", &self.marqeta_password_previous),
            ("approval_secret", &self.approval_secret),
        ] {
            if let Some(s) = secret {
                anyhow::ensure!(
                    s.expose().len() >= 16,
                    "SPENDGATE_{} must be at least 16 characters",
                    name.to_uppercase()
                );
            }
        }
        anyhow::ensure!((1..=60_000).contains(&self.decision_budget_ms), "decision_budget_ms must be 1 to 60000");
        anyhow::ensure!(
            (100..=600_000).contains(&self.database_timeout_ms),
            "database_timeout_ms must be 100 to 600000"
        );
        anyhow::ensure!(
            (1_000..=3_600_000).contains(&self.report_timeout_ms),
            "report_timeout_ms must be 1000 to 3600000"
        );
        anyhow::ensure!((500..=30_000).contains(&self.lithic_deadline_ms), "lithic_deadline_ms must be 500 to 30000");
        anyhow::ensure!(
            self.marqeta_username.is_some() == self.marqeta_password.is_some(),
            "SPENDGATE_MARQETA_USERNAME and SPENDGATE_MARQETA_PASSWORD are set together"
        );
        anyhow::ensure!(
            self.stripe_api_key.is_none() || self.stripe_cardholder.as_deref().is_some_and(|c| c.starts_with("ich_")),
            "SPENDGATE_STRIPE_API_KEY needs SPENDGATE_STRIPE_CARDHOLDER, the cardholder (ich_…) cards are issued to"
        );
        for (name, url) in [("stripe_api_url", &self.stripe_api_url), ("lithic_api_url", &self.lithic_api_url)] {
            anyhow::ensure!(url.starts_with("http://") || url.starts_with("https://"), "{name} must be an http(s) URL");
        }
        anyhow::ensure!(
            (100..=120_000).contains(&self.processor_timeout_ms),
            "processor_timeout_ms must be 100 to 120000"
        );
        anyhow::ensure!(self.hold_expiry_hours >= 1, "hold_expiry_hours must be at least 1");
        anyhow::ensure!((100..=300_000).contains(&self.x402_timeout_ms), "x402_timeout_ms must be 100 to 300000");
        anyhow::ensure!(
            (10..=3_600).contains(&self.x402_max_valid_seconds),
            "x402_max_valid_seconds must be 10 to 3600"
        );
        anyhow::ensure!(
            (1_024..=1 << 30).contains(&self.x402_max_response_bytes),
            "x402_max_response_bytes must be 1024 to 1073741824"
        );
        anyhow::ensure!(
            self.x402_max_fetches >= 1 && (1..=self.x402_max_fetches).contains(&self.x402_max_fetches_per_agent),
            "x402_max_fetches must be at least 1, and x402_max_fetches_per_agent 1 to x402_max_fetches"
        );
        anyhow::ensure!((1..=10_000).contains(&self.chain_confirmations), "chain_confirmations must be 1 to 10000");
        anyhow::ensure!((100..=3_600_000).contains(&self.chain_poll_ms), "chain_poll_ms must be 100 to 3600000");
        anyhow::ensure!(
            (1..=100_000).contains(&self.chain_blocks_per_query),
            "chain_blocks_per_query must be 1 to 100000"
        );
        anyhow::ensure!(self.chain_reconcile_seconds >= 1, "chain_reconcile_seconds must be at least 1");
        anyhow::ensure!((100..=300_000).contains(&self.chain_timeout_ms), "chain_timeout_ms must be 100 to 300000");
        anyhow::ensure!(self.fx_refresh_minutes >= 1, "fx_refresh_minutes must be at least 1");
        anyhow::ensure!(
            self.public_url.starts_with("http://") || self.public_url.starts_with("https://"),
            "public_url must be an http(s) URL"
        );
        anyhow::ensure!((1..=24 * 30).contains(&self.approval_ttl_hours), "approval_ttl_hours must be 1 to 720");
        if let Some(url) = &self.slack_webhook_url {
            let url = url.expose();
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "SPENDGATE_SLACK_WEBHOOK_URL must be an http(s) URL"
            );
            anyhow::ensure!(
                self.approval_secret.is_some(),
                "SPENDGATE_SLACK_WEBHOOK_URL needs SPENDGATE_APPROVAL_SECRET to sign its links"
            );
        }
        anyhow::ensure!((100..=60_000).contains(&self.slack_timeout_ms), "slack_timeout_ms must be 100 to 60000");
        anyhow::ensure!((10..=60_000).contains(&self.slack_retry_ms), "slack_retry_ms must be 10 to 60000");
        anyhow::ensure!((1..=10_000).contains(&self.ledger_batch), "ledger_batch must be 1 to 10000");
        for (name, url) in [("fx_url", &self.fx_url), ("fx_extra_url", &self.fx_extra_url)] {
            anyhow::ensure!(
                url.is_empty() || url.starts_with("http://") || url.starts_with("https://"),
                "{name} must be an http(s) URL, or empty for none"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/configuration.md has a row for every setting, with its environment variable and its
    /// default as `Config::default()` has it, so the page cannot drift from the code.
    #[test]
    fn the_configuration_page_lists_every_setting_with_its_default() {
        let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md")).unwrap();
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for key in Config::keys() {
            let shown = match &defaults[&key] {
                serde_json::Value::Null => "unset".to_owned(),
                serde_json::Value::String(s) if s.is_empty() => "empty".to_owned(),
                serde_json::Value::String(s) => format!("`{s}`"),
                other => format!("`{other}`"),
            };
            let row = format!("| `{key}` | `SPENDGATE_{}` | {shown}", key.to_uppercase());
            assert!(page.lines().any(|l| l.starts_with(&row)), "docs/configuration.md lacks {row}");
        }
        let rows = page.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, Config::keys().len(), "a row for each setting, no more");
    }

    #[test]
    fn secrets_do_not_print() {
        let config = Config { bootstrap_admin_key: Some(Secret::new("x".repeat(40))), ..Config::default() };
        let shown = format!("{config:?}");
        assert!(!shown.contains("xxxx"), "{shown}");
        assert!(shown.contains("Secret(***)"));
    }

    #[test]
    fn bad_settings_are_refused() {
        let short = Config { bootstrap_admin_key: Some(Secret::new("short")), ..Config::default() };
        assert!(short.check().is_err());
        let bin = Config { simulator_bin: "4x0000".into(), ..Config::default() };
        assert!(bin.check().is_err());
        assert!(Config::default().check().is_ok());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's own test harness signature
    fn file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("spendgate.toml", "listen = \"127.0.0.1:9000\"\nworkers = 3\n")?;
            jail.set_env("SPENDGATE_WORKERS", "5");
            jail.set_env("SPENDGATE_URL", "http://ignored");
            let config = Config::load(Some(Path::new("spendgate.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.listen, "127.0.0.1:9000");
            assert_eq!(config.workers, 5);
            assert_eq!(config.database_url, "sqlite://data/spendgate.db");
            assert!(Config::keys().iter().any(|k| k == "bootstrap_admin_key"), "{:?}", Config::keys());
            Ok(())
        });
    }
}
