//! Settings: defaults, then an optional TOML file, then `SPENDGATE_*` environment variables.
//! Every setting has a safe default, so `spendgate serve` runs with none.

use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A value that must never be printed: its `Debug` shows only whether it is set.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address the server listens on.
    pub listen: String,
    /// `sqlite://PATH` (the file and its directory are created) or `postgres://…`.
    pub database_url: String,
    /// Reader connections (SQLite) or pool size (PostgreSQL).
    pub database_pool_size: u32,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Becomes the first owner key when no key exists yet (for automation). At least 32 characters.
    pub bootstrap_admin_key: Option<Secret>,
    /// The BIN (6 to 8 digits) the simulator issues card numbers in.
    pub simulator_bin: String,
    /// Log filter, e.g. `info` or `spendgate=debug` (`RUST_LOG` wins when set).
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://data/spendgate.db".into(),
            database_pool_size: 8,
            workers: 0,
            bootstrap_admin_key: None,
            // Visa's test range, as used by processors' sandboxes: never a real card.
            simulator_bin: "400000".into(),
            log: "info".into(),
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
