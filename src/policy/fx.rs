//! Exchange rates: the ECB's euro reference rates, crossed through the euro. Amounts stay integer
//! minor units; `Decimal` carries only the arithmetic, and a conversion rounds up in the target
//! currency, so a cap is never undercounted.

use std::collections::HashMap;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::domain::money::Currency;

/// One day's reference rates: units of each currency per euro.
#[derive(Debug, Clone, PartialEq)]
pub struct RateTable {
    pub date: jiff::civil::Date,
    per_euro: HashMap<Currency, Decimal>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FxError {
    /// The table has no rate for one of the two currencies.
    Unknown,
    /// The amount does not fit in minor units after conversion.
    Overflow,
}

/// A converted amount and the rate that made it (`to = from × rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    pub amount: i64,
    pub rate: Decimal,
}

impl RateTable {
    pub fn new(date: jiff::civil::Date, rates: impl IntoIterator<Item = (Currency, Decimal)>) -> Self {
        let mut per_euro: HashMap<Currency, Decimal> = rates.into_iter().collect();
        per_euro.insert(Currency::EUR, Decimal::ONE);
        RateTable { date, per_euro }
    }

    /// Reads the ECB's daily file (`eurofxref-daily.xml`): the first `<Cube time=…>` and its
    /// `<Cube currency=… rate=…/>` children. Currencies spendgate does not know are skipped;
    /// a file without a date or without a single usable rate is refused.
    pub fn parse_ecb(xml: &str) -> Result<RateTable, String> {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut date = None;
        let mut rates = Vec::new();
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
                        let rate: Decimal =
                            rate.parse().map_err(|_| format!("rate {rate:?} of {code} is not a number"))?;
                        if rate <= Decimal::ZERO {
                            return Err(format!("rate of {code} must be positive"));
                        }
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

    /// Whether the table is older than `max_age` at `now` (its age counts from the start of its day, UTC).
    pub fn is_stale(&self, now: jiff::Timestamp, max_age: jiff::SignedDuration) -> bool {
        let published = self.date.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).unwrap_or(now);
        now.duration_since(published) > max_age
    }

    pub fn has(&self, currency: Currency) -> bool {
        self.per_euro.contains_key(&currency)
    }

    /// `amount` minor units of `from` in minor units of `to`, rounded up.
    pub fn convert(&self, amount: i64, from: Currency, to: Currency) -> Result<Converted, FxError> {
        if from == to {
            return Ok(Converted { amount, rate: Decimal::ONE });
        }
        let (Some(from_rate), Some(to_rate)) = (self.per_euro.get(&from), self.per_euro.get(&to)) else {
            return Err(FxError::Unknown);
        };
        // Multiply before dividing: the one inexact step comes last, and rounding up absorbs it.
        let target = Decimal::from_i128_with_scale(i128::from(amount), from.exponent())
            .checked_mul(*to_rate)
            .and_then(|v| v.checked_mul(Decimal::from(10i64.pow(to.exponent()))))
            .and_then(|v| v.checked_div(*from_rate))
            .ok_or(FxError::Overflow)?
            .round_dp_with_strategy(0, RoundingStrategy::ToPositiveInfinity);
        let amount = i64::try_from(target).map_err(|_| FxError::Overflow)?;
        let rate = to_rate.checked_div(*from_rate).ok_or(FxError::Overflow)?.round_dp(10).normalize();
        Ok(Converted { amount, rate })
    }
}

fn finish(date: Option<jiff::civil::Date>, rates: Vec<(Currency, Decimal)>) -> Result<RateTable, String> {
    let date = date.ok_or("not an ECB rates file: no <Cube time=…>")?;
    if rates.is_empty() {
        return Err("not an ECB rates file: no rates".into());
    }
    Ok(RateTable::new(date, rates))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RateTable {
        RateTable::parse_ecb(include_str!("../../fixtures/ecb_rates.xml")).expect("fixture parses")
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
    }

    #[test]
    fn staleness_counts_from_the_table_day() {
        let t = table();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let four_days = jiff::SignedDuration::from_hours(96);
        assert!(!t.is_stale(at("2026-09-27T23:59:00Z"), four_days));
        assert!(t.is_stale(at("2026-09-28T00:00:01Z"), four_days));
    }

    #[test]
    fn files_that_are_not_rate_tables_are_refused() {
        assert!(RateTable::parse_ecb("").is_err());
        assert!(RateTable::parse_ecb("<html><body>Maintenance</body></html>").is_err());
        assert!(
            RateTable::parse_ecb("<Cube><Cube time='2026-13-45'><Cube currency='USD' rate='1.1'/></Cube></Cube>")
                .is_err()
        );
        assert!(
            RateTable::parse_ecb("<Cube><Cube time='2026-09-24'><Cube currency='USD' rate='-1'/></Cube></Cube>")
                .is_err()
        );
        // History files list the newest day first; only that day is read.
        let two = "<Cube><Cube time='2026-09-24'><Cube currency='USD' rate='1.1'/></Cube>\
                   <Cube time='2026-09-23'><Cube currency='USD' rate='2'/><Cube currency='GBP' rate='0.9'/></Cube></Cube>";
        let t = RateTable::parse_ecb(two).unwrap();
        assert_eq!(t.date.to_string(), "2026-09-24");
        assert!(!t.has(c("GBP")));
    }
}
