//! The FX rate table the decision path reads. At start, the ECB table built into the release with
//! the pegs; then the ECB's daily file fetched at once and on a schedule (`fx_url`), and a second
//! source in JSON for the currencies the ECB does not publish (`fx_extra_url`). A failed or
//! unreadable fetch keeps the last good table of that source.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::ledger::Rates;
use crate::policy::fx::{Peg, RateSource, RateTable, pegs};

const BUILT_IN: &str = include_str!("../fixtures/ecb_rates.xml");

/// The ECB file built into the release, as it is.
fn bundled_ecb() -> RateTable {
    RateTable::parse_ecb(BUILT_IN, RateSource::Bundled).expect("the built-in ECB rates parse (checked by tests)")
}

/// The table built into the release, with the pegs.
pub fn bundled() -> RateTable {
    bundled_ecb().with_pegs(&pegs())
}

pub fn built_in() -> Rates {
    Arc::new(RwLock::new(Arc::new(bundled())))
}

/// Where the rates come from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The ECB's daily file; None: the bundled table only.
    pub ecb_url: Option<String>,
    /// A JSON rates document (`RateTable::parse_json`) for the currencies the ECB does not publish.
    pub extra_url: Option<String>,
    pub every: Duration,
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = client.get(url).send().await.map_err(|e| format!("fetch failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("fetch answered {}", response.status()));
    }
    response.text().await.map_err(|e| format!("fetch failed: {e}"))
}

/// The last good table of each source, and the one made of them.
struct Latest {
    ecb: RateTable,
    extra: Option<RateTable>,
    pegs: Vec<Peg>,
}

impl Latest {
    fn table(&self) -> RateTable {
        let main = self.ecb.clone().with_pegs(&self.pegs);
        match &self.extra {
            Some(extra) => main.merged(extra),
            None => main,
        }
    }
}

/// Fetches each source once and installs what came; a source that failed keeps its last table,
/// and an older file (a stale mirror, a cache) never replaces a newer one.
async fn refresh(client: &reqwest::Client, sources: &Sources, latest: &mut Latest, rates: &Rates) {
    if let Some(url) = &sources.ecb_url {
        match fetch(client, url).await.and_then(|body| RateTable::parse_ecb(&body, RateSource::Ecb)) {
            Ok(table) if table.date >= latest.ecb.date => {
                tracing::info!(date = %table.date, "FX: the ECB's reference rates are in use");
                latest.ecb = table;
            }
            Ok(table) => tracing::warn!(date = %table.date, "FX: the ECB file is older than the table in use; kept"),
            Err(e) => tracing::warn!(error = %e, date = %latest.ecb.date, source = latest.ecb.source.as_str(),
                "FX: the ECB fetch failed; keeping the last good rates"),
        }
    }
    if let Some(url) = &sources.extra_url {
        match fetch(client, url).await.and_then(|body| RateTable::parse_json(&body)) {
            Ok(table) if latest.extra.as_ref().is_none_or(|t| table.date >= t.date) => {
                tracing::info!(date = %table.date, "FX: the second source's rates are in use");
                latest.extra = Some(table);
            }
            Ok(_) => tracing::warn!("FX: the second source's document is older than the one in use; kept"),
            Err(e) => tracing::warn!(error = %e, "FX: the second source's fetch failed; keeping its last good rates"),
        }
    }
    *rates.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(latest.table());
}

/// Refreshes now and then every `every`, until the process ends.
pub async fn refresh_forever(sources: Sources, rates: Rates) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(20)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the FX client; rates will not refresh");
            return;
        }
    };
    let mut latest = Latest { ecb: bundled_ecb(), extra: None, pegs: pegs() };
    loop {
        refresh(&client, &sources, &mut latest, &rates).await;
        tokio::time::sleep(sources.every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(mut list: Vec<&'static str>) -> String {
        list.sort_unstable();
        list.dedup();
        list.join(", ")
    }

    /// docs/fx.md lists exactly what converts: the ECB's currencies, the pegs, and the rest.
    #[test]
    fn the_fx_page_lists_the_currencies_that_convert() {
        let ecb = RateTable::parse_ecb(BUILT_IN, RateSource::Ecb).unwrap();
        let all = bundled();
        let mut every = Vec::new();
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                for c in b'A'..=b'Z' {
                    if let Ok(currency) =
                        std::str::from_utf8(&[a, b, c]).unwrap().parse::<crate::domain::money::Currency>()
                    {
                        every.push(currency);
                    }
                }
            }
        }
        let published = codes(ecb.currencies().map(|c| c.code()).collect());
        let pegged = codes(all.currencies().filter(|c| !ecb.has(*c)).map(|c| c.code()).collect());
        let others = codes(every.iter().filter(|c| !all.has(**c)).map(|c| c.code()).collect());
        let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/fx.md")).unwrap();
        for (what, list) in [("ECB", &published), ("pegged", &pegged), ("other", &others)] {
            assert!(page.lines().any(|l| l == list), "docs/fx.md lacks the {what} currencies, one line:\n{list}");
        }
    }

    #[test]
    fn the_bundled_table_parses_and_converts_the_pegs() {
        let table = bundled();
        assert_eq!(table.source, RateSource::Bundled);
        for code in ["USD", "JPY", "GBP", "BHD", "AED", "SAR", "XOF"] {
            assert!(table.has(code.parse().unwrap()), "{code}");
        }
    }
}
