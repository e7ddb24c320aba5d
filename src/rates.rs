//! The FX rate table the decision path reads: the built-in ECB file at start, then refreshed on
//! a schedule from `SPENDGATE_FX_URL`. A failed or unreadable refresh keeps the last good table.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::ledger::Rates;
use crate::policy::fx::RateTable;

const BUILT_IN: &str = include_str!("../fixtures/ecb_rates.xml");

pub fn built_in() -> Rates {
    let table = RateTable::parse_ecb(BUILT_IN).expect("the built-in ECB rates parse (checked by tests)");
    Arc::new(RwLock::new(Arc::new(table)))
}

/// Fetches and installs the table at `url` once; on failure the current table stays.
pub async fn refresh(client: &reqwest::Client, url: &str, rates: &Rates) -> Result<jiff::civil::Date, String> {
    let response = client.get(url).send().await.map_err(|e| format!("fetch failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("fetch answered {}", response.status()));
    }
    let body = response.text().await.map_err(|e| format!("fetch failed: {e}"))?;
    let table = RateTable::parse_ecb(&body)?;
    let date = table.date;
    let mut current = rates.write().unwrap_or_else(|e| e.into_inner());
    // An older file (a stale mirror, a cache) never replaces a newer table.
    if table.date >= current.date {
        *current = Arc::new(table);
    }
    Ok(date)
}

/// Refreshes now and then every `every`, logging each outcome, until the process ends.
pub async fn refresh_forever(url: String, every: Duration, rates: Rates) {
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(20)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the FX client; rates will not refresh");
            return;
        }
    };
    loop {
        match refresh(&client, &url, &rates).await {
            Ok(date) => tracing::info!(%date, "FX rates refreshed"),
            Err(e) => tracing::warn!(error = %e, "FX refresh failed; keeping the last good rates"),
        }
        tokio::time::sleep(every).await;
    }
}
