//! Exchange rates: the ECB's euro reference rates, crossed through the euro, with fixed pegs for
//! currencies the ECB does not publish and, optionally, a second source for the rest. Amounts stay
//! integer minor units; `Decimal` carries only the arithmetic, and a conversion rounds up in the
//! target currency, so a cap is never undercounted.

use std::collections::HashMap;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;

pub use crate::domain::authorization::RateSource;
use crate::domain::money::Currency;

/// One currency's rate: units per euro, the day it was published, and by whom (a pegged currency
/// carries its anchor's day and source).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Quote {
    per_euro: Decimal,
    date: jiff::civil::Date,
    source: RateSource,
}

/// The rates in force: each currency's units per euro.
#[derive(Debug, Clone, PartialEq)]
pub struct RateTable {
    /// The day and source of the main (ECB) table.
    pub date: jiff::civil::Date,
    pub source: RateSource,
    quotes: HashMap<Currency, Quote>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FxError {
    /// The table has no rate for one of the two currencies.
    Unknown,
    /// The amount does not fit in minor units after conversion.
    Overflow,
}

/// A converted amount, the rate that made it (`to = from × rate`), and the older of the two
/// rates' days with its source: what a conversion is as fresh as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    pub amount: i64,
    pub rate: Decimal,
    pub date: jiff::civil::Date,
    pub source: RateSource,
}

/// A currency fixed to another by its central bank: `units` of `currency` per one `anchor`.
#[derive(Debug, Clone, Deserialize)]
pub struct Peg {
    pub currency: String,
    pub anchor: String,
    pub units: Decimal,
    /// Who fixes it, and since when.
    pub source: String,
}

/// The pegs spendgate knows (`fixtures/currency_pegs.json`).
pub fn pegs() -> Vec<Peg> {
    serde_json::from_str(include_str!("../../fixtures/currency_pegs.json")).expect("the peg fixture parses (tested)")
}

impl RateTable {
    pub fn new(
        date: jiff::civil::Date,
        source: RateSource,
        rates: impl IntoIterator<Item = (Currency, Decimal)>,
    ) -> Self {
        let mut quotes: HashMap<Currency, Quote> =
            rates.into_iter().map(|(c, per_euro)| (c, Quote { per_euro, date, source })).collect();
        quotes.insert(Currency::EUR, Quote { per_euro: Decimal::ONE, date, source });
        RateTable { date, source, quotes }
    }

    /// Adds each pegged currency the table lacks, from its anchor's rate.
    pub fn with_pegs(mut self, pegs: &[Peg]) -> Self {
        for peg in pegs {
            let (Ok(currency), Ok(anchor)) = (peg.currency.parse::<Currency>(), peg.anchor.parse::<Currency>()) else {
                continue;
            };
            if self.quotes.contains_key(&currency) {
                continue;
            }
            if let Some(a) = self.quotes.get(&anchor).copied()
                && let Some(per_euro) = a.per_euro.checked_mul(peg.units)
            {
                self.quotes.insert(currency, Quote { per_euro, ..a });
            }
        }
        self
    }

    /// Adds the currencies only `extra` has, crossed through the euro by `extra`'s own rates.
    pub fn merged(mut self, extra: &RateTable) -> Self {
        for (currency, quote) in &extra.quotes {
            self.quotes.entry(*currency).or_insert(*quote);
        }
        self
    }

    /// The currencies the table converts.
    pub fn currencies(&self) -> impl Iterator<Item = Currency> + '_ {
        self.quotes.keys().copied()
    }

    /// Reads the ECB's daily file (`eurofxref-daily.xml`): the first `<Cube time=…>` and its
    /// `<Cube currency=… rate=…/>` children. Currencies spendgate does not know are skipped;
    /// a file without a date or without a single usable rate is refused.
    pub fn parse_ecb(xml: &str, source: RateSource) -> Result<RateTable, String> {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut date = None;
        let mut rates = Vec::new();
        let finish = |date: Option<jiff::civil::Date>, rates: Vec<(Currency, Decimal)>| {
            let date = date.ok_or("not an ECB rates file: no <Cube time=…>")?;
            if rates.is_empty() {
                return Err("not an ECB rates file: no rates".to_owned());
            }
            Ok(RateTable::new(date, source, rates))
        };
        loop {
            match reader.read_event().map_err(|e| format!("not an ECB rates file: {e}"))? {
                Event::Eof => break,
                Event::Start(tag) | Event::Empty(tag) if tag.local_name().as_ref() == b"Cube" => {
                    let mut currency = None;
                    let mut rate = None;
                    for attr in tag.attributes() {
                        let attr = attr.map_err(|e| format!("not an ECB rates file: {e}"))?;
                        let value = String::from_utf8_lossy(&attr.value).into_owned();
                        match attr.key.local_name().as_ref() {
                            b"time" if date.is_some() => return finish(date, rates),
                            b"time" => {
                                date = Some(
                                    value.parse::<jiff::civil::Date>().map_err(|e| format!("date {value:?}: {e}"))?,
                                )
                            }
                            b"currency" => currency = Some(value),
                            b"rate" => rate = Some(value),
                            _ => {}
                        }
                    }
                    if let (Some(code), Some(rate)) = (currency, rate) {
                        let rate = positive(&code, &rate)?;
                        if let Ok(currency) = code.parse::<Currency>() {
                            rates.push((currency, rate));
                        }
                    }
                }
                _ => {}
            }
        }
        finish(date, rates)
    }

    /// Reads the JSON most rate services answer with: `{"base": "USD", "date": "2026-12-05" |
    /// "timestamp": 1796428800, "rates": {"AED": 3.6725, …}}` (units per one `base`). The base must
    /// be EUR or have a rate in `rates` (EUR) so that every rate can be put per euro.
    pub fn parse_json(text: &str) -> Result<RateTable, String> {
        #[derive(Deserialize)]
        struct Body {
            base: String,
            date: Option<String>,
            timestamp: Option<i64>,
            rates: HashMap<String, serde_json::Value>,
        }
        let body: Body = serde_json::from_str(text).map_err(|e| format!("not a rates document: {e}"))?;
        let date = match (&body.date, body.timestamp) {
            (Some(d), _) => d.parse::<jiff::civil::Date>().map_err(|e| format!("date {d:?}: {e}"))?,
            (None, Some(t)) => jiff::Timestamp::from_second(t)
                .map_err(|e| format!("timestamp {t}: {e}"))?
                .to_zoned(jiff::tz::TimeZone::UTC)
                .date(),
            (None, None) => return Err("not a rates document: no date or timestamp".into()),
        };
        let mut per_base = HashMap::new();
        for (code, value) in &body.rates {
            let text = match value {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s.clone(),
                _ => return Err(format!("rate of {code} is not a number")),
            };
            if let Ok(currency) = code.parse::<Currency>() {
                // Scientific notation (1e-5) is how some services write tiny rates.
                let rate = Decimal::from_scientific(&text).or_else(|_| text.parse()).ok();
                let rate = rate.map(|r| r.to_string()).unwrap_or(text);
                per_base.insert(currency, positive(code, &rate)?);
            }
        }
        let base: Currency = body.base.parse().map_err(|e| format!("base: {e}"))?;
        per_base.insert(base, Decimal::ONE);
        let euro_per_base = *per_base.get(&Currency::EUR).ok_or("the document has no EUR rate to cross with")?;
        let rates = per_base
            .into_iter()
            .map(|(c, r)| r.checked_div(euro_per_base).map(|per_euro| (c, per_euro)).ok_or("rate overflow".to_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RateTable::new(date, RateSource::Extra, rates))
    }

    /// Whether a rate of `date` is older than `max_age` at `now` (its age counts from the start of
    /// its day, UTC).
    pub fn is_stale(date: jiff::civil::Date, now: jiff::Timestamp, max_age: jiff::SignedDuration) -> bool {
        let published = date.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).unwrap_or(now);
        now.duration_since(published) > max_age
    }

    pub fn has(&self, currency: Currency) -> bool {
        self.quotes.contains_key(&currency)
    }

    /// `amount` minor units of `from` in minor units of `to`, rounded up.
    pub fn convert(&self, amount: i64, from: Currency, to: Currency) -> Result<Converted, FxError> {
        if from == to {
            // No rate is needed: the table need not even know the currency.
            return Ok(Converted { amount, rate: Decimal::ONE, date: self.date, source: self.source });
        }
        let (Some(f), Some(t)) = (self.quotes.get(&from), self.quotes.get(&to)) else {
            return Err(FxError::Unknown);
        };
        // The older rate says how fresh the conversion is; a bundled or second-source rate says so.
        let (date, source) = if f.date <= t.date { (f.date, f.source) } else { (t.date, t.source) };
        let source = [f.source, t.source].into_iter().find(|s| *s != RateSource::Ecb).unwrap_or(source);
        // Multiply before dividing: the one inexact step comes last, and rounding up absorbs it.
        let target = Decimal::from_i128_with_scale(i128::from(amount), from.exponent())
            .checked_mul(t.per_euro)
            .and_then(|v| v.checked_mul(Decimal::from(10i64.pow(to.exponent()))))
            .and_then(|v| v.checked_div(f.per_euro))
            .ok_or(FxError::Overflow)?
            .round_dp_with_strategy(0, RoundingStrategy::ToPositiveInfinity);
        let amount = i64::try_from(target).map_err(|_| FxError::Overflow)?;
        let rate = t.per_euro.checked_div(f.per_euro).ok_or(FxError::Overflow)?.round_dp(10).normalize();
        Ok(Converted { amount, rate, date, source })
    }
}

fn positive(code: &str, rate: &str) -> Result<Decimal, String> {
    let rate: Decimal = rate.parse().map_err(|_| format!("rate {rate:?} of {code} is not a number"))?;
    if rate <= Decimal::ZERO {
        return Err(format!("rate of {code} must be positive"));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RateTable {
        RateTable::parse_ecb(include_str!("../../fixtures/ecb_rates.xml"), RateSource::Bundled).expect("fixture parses")
    }

    fn c(code: &str) -> Currency {
        code.parse().unwrap()
    }

    #[test]
    fn the_fixture_is_the_ecb_file_of_its_day() {
        let t = table();
        assert_eq!(t.date.to_string(), "2026-09-24");
        assert!(t.has(c("USD")) && t.has(c("JPY")) && t.has(c("EUR")));
        assert!(!t.has(c("BHD")));
    }

    #[test]
    fn conversion_crosses_through_the_euro_and_rounds_up() {
        let t = table();
        // 100.00 EUR is 113.67 USD exactly.
        assert_eq!(t.convert(10_000, c("EUR"), c("USD")).unwrap().amount, 11_367);
        // 10.00 USD = 8.79740... EUR, rounded up to 8.80.
        let eur = t.convert(1_000, c("USD"), c("EUR")).unwrap();
        assert_eq!(eur.amount, 880);
        assert_eq!(eur.rate.to_string(), "0.8797395971");
        // JPY has no minor unit: 1000 JPY = 6.29506... USD -> 6.30 (630 cents).
        assert_eq!(t.convert(1_000, c("JPY"), c("USD")).unwrap().amount, 630);
        // 1.00 USD = 158.8545... JPY -> 159 JPY.
        assert_eq!(t.convert(100, c("USD"), c("JPY")).unwrap().amount, 159);
        // One cent is never converted to nothing.
        assert_eq!(t.convert(1, c("JPY"), c("USD")).unwrap().amount, 1);
        assert_eq!(t.convert(0, c("JPY"), c("USD")).unwrap().amount, 0);
    }

    #[test]
    fn three_decimal_currencies_convert_in_their_own_minor_units() {
        let t = RateTable::new(
            "2026-09-24".parse().unwrap(),
            RateSource::Ecb,
            [(c("USD"), "1.1367".parse().unwrap()), (c("BHD"), "0.4286".parse().unwrap())],
        );
        // 1.00 USD = 0.377056... BHD -> 0.378 BHD (378 fils).
        assert_eq!(t.convert(100, c("USD"), c("BHD")).unwrap().amount, 378);
        // 1.000 BHD = 2.65212... USD -> 2.66 USD.
        assert_eq!(t.convert(1_000, c("BHD"), c("USD")).unwrap().amount, 266);
    }

    #[test]
    fn unknown_currencies_and_overflow_are_errors_not_panics() {
        let t = table();
        assert_eq!(t.convert(100, c("BHD"), c("USD")), Err(FxError::Unknown));
        assert_eq!(t.convert(i64::MAX, c("USD"), c("JPY")), Err(FxError::Overflow));
        // The same currency converts as is, known to the table or not.
        assert_eq!(t.convert(1_234, c("KES"), c("KES")).map(|c| c.amount), Ok(1_234));
    }

    #[test]
    fn staleness_counts_from_the_table_day() {
        let t = table();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let four_days = jiff::SignedDuration::from_hours(96);
        assert!(!RateTable::is_stale(t.date, at("2026-09-27T23:59:00Z"), four_days));
        assert!(RateTable::is_stale(t.date, at("2026-09-28T00:00:01Z"), four_days));
    }

    #[test]
    fn files_that_are_not_rate_tables_are_refused() {
        assert!(RateTable::parse_ecb("", RateSource::Ecb).is_err());
        assert!(RateTable::parse_ecb("<html><body>Maintenance</body></html>", RateSource::Ecb).is_err());
        assert!(
            RateTable::parse_ecb(
                "<Cube><Cube time='2026-13-45'><Cube currency='USD' rate='1.1'/></Cube></Cube>",
                RateSource::Ecb
            )
            .is_err()
        );
        assert!(
            RateTable::parse_ecb(
                "<Cube><Cube time='2026-09-24'><Cube currency='USD' rate='-1'/></Cube></Cube>",
                RateSource::Ecb
            )
            .is_err()
        );
        // History files list the newest day first; only that day is read.
        let two = "<Cube><Cube time='2026-09-24'><Cube currency='USD' rate='1.1'/></Cube>\
                   <Cube time='2026-09-23'><Cube currency='USD' rate='2'/><Cube currency='GBP' rate='0.9'/></Cube></Cube>";
        let t = RateTable::parse_ecb(two, RateSource::Ecb).unwrap();
        assert_eq!(t.date.to_string(), "2026-09-24");
        assert!(!t.has(c("GBP")));
    }

    #[test]
    fn pegs_fill_in_what_the_ecb_does_not_publish() {
        let t = table().with_pegs(&pegs());
        // 1.000 BHD = 1/0.376 USD = 2.6595… USD -> 2.66 USD, whatever the euro does.
        let bhd = t.convert(1_000, c("BHD"), c("USD")).unwrap();
        assert_eq!((bhd.amount, bhd.source, bhd.date.to_string()), (266, RateSource::Bundled, "2026-09-24".into()));
        assert_eq!(t.convert(36_725, c("AED"), c("USD")).unwrap().amount, 10_000);
        assert_eq!(t.convert(655_957, c("XOF"), c("EUR")).unwrap().amount, 100_000);
        for peg in pegs() {
            assert!(peg.currency.parse::<Currency>().is_ok(), "{} is an ISO 4217 currency", peg.currency);
            assert!(t.has(c(&peg.anchor)), "{} is anchored to a currency the ECB publishes", peg.currency);
            assert!(!peg.source.is_empty());
        }
        // A currency the ECB publishes keeps the ECB's rate, even if it is also listed as a peg.
        let ecb_only = table();
        assert_eq!(t.convert(1_000, c("DKK"), c("EUR")), ecb_only.convert(1_000, c("DKK"), c("EUR")));
    }

    #[test]
    fn a_second_source_adds_currencies_with_its_own_date() {
        let extra = RateTable::parse_json(
            r#"{"base": "USD", "timestamp": 1796342400, "rates": {"EUR": 0.8, "KES": "129.5", "USD": 1, "XYZ": 3}}"#,
        )
        .unwrap();
        assert_eq!(extra.date.to_string(), "2026-12-04");
        let t = table().merged(&extra);
        // 129.50 KES = 1.00 USD at the second source's rates; its date and source go with it.
        let kes = t.convert(12_950, c("KES"), c("USD")).unwrap();
        assert_eq!(kes.source, RateSource::Extra);
        assert_eq!(kes.date.to_string(), "2026-09-24", "the older of the two rates");
        // ECB currencies keep the ECB's rates.
        assert_eq!(t.convert(10_000, c("EUR"), c("USD")).unwrap().amount, 11_367);
        assert!(RateTable::parse_json(r#"{"base": "USD", "date": "2026-12-04", "rates": {"KES": 129.5}}"#).is_err());
        assert!(RateTable::parse_json(r#"{"base": "EUR", "rates": {"KES": 1}}"#).is_err(), "no date");
        assert!(RateTable::parse_json(r#"{"base": "EUR", "date": "2026-12-04", "rates": {"KES": -1}}"#).is_err());
        let eur = RateTable::parse_json(r#"{"base": "EUR", "date": "2026-12-04", "rates": {"KES": 1.5e2}}"#).unwrap();
        assert_eq!(eur.convert(100, c("EUR"), c("KES")).unwrap().amount, 15_000);
    }
}
