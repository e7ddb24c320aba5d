//! A spend report made of the database's sums: time cut into a time zone's days, weeks or months,
//! amounts in one currency, the top groups by spend and the rest as "other". Pure: the sums, the
//! rates and the time zone come in.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::money::Currency;
use crate::domain::report::{GroupBy, QUARTER_HOUR_MS, SpendCell, SpendTotals};
use crate::policy::fx::{FxError, RateTable};

/// What to make of the sums.
#[derive(Debug, Clone)]
pub struct Shape {
    pub group_by: Vec<GroupBy>,
    pub currency: Currency,
    pub time_zone: jiff::tz::TimeZone,
    /// How many values of the first dimension that is not time to show; the rest are one "other"
    /// group (per time bucket, if time is a dimension).
    pub top: usize,
}

/// One group: its dimensions' values (null where the records had none, or in "other").
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SpendGroup {
    pub group: BTreeMap<GroupBy, Option<String>>,
    /// True for the group that sums everything outside the top ones.
    pub other: bool,
    pub totals: SpendTotals,
}

/// A cap currency converted into the report's, at the rate the server holds now.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Conversion {
    pub from: String,
    pub to: String,
    /// Units of `to` per unit of `from`.
    pub rate: String,
    pub date: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SpendReport {
    /// The currency of every amount below.
    pub currency: Currency,
    pub group_by: Vec<GroupBy>,
    pub time_zone: String,
    /// Top groups first, by spend; with a time dimension, in time order, each bucket's top groups first.
    pub groups: Vec<SpendGroup>,
    pub total: SpendTotals,
    /// Empty when every authorization's cap currency is the report's.
    pub conversions: Vec<Conversion>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// No rate between a cap currency and the report's.
    NoRate { from: String, to: Currency },
    /// A stored value that cannot be read (a corrupt row).
    Corrupt(String),
}

type Key = Vec<Option<String>>;

/// The time bucket a quarter hour (counted from the epoch, UTC) falls in, in the zone.
fn bucket(by: GroupBy, quarter: &str, zone: &jiff::tz::TimeZone) -> Result<String, ShapeError> {
    let corrupt = || ShapeError::Corrupt(format!("time cell {quarter:?}"));
    let quarter: i64 = quarter.parse().map_err(|_| corrupt())?;
    let at = jiff::Timestamp::from_millisecond(quarter.checked_mul(QUARTER_HOUR_MS).ok_or_else(corrupt)?)
        .map_err(|_| corrupt())?;
    let date = at.to_zoned(zone.clone()).date();
    Ok(match by {
        GroupBy::Week => {
            let monday = date
                .checked_sub(jiff::Span::new().days(date.weekday().to_monday_zero_offset()))
                .map_err(|_| corrupt())?;
            monday.to_string()
        }
        GroupBy::Month => date.strftime("%Y-%m").to_string(),
        _ => date.to_string(),
    })
}

/// Builds the report from the database's cells (one per group and cap currency).
pub fn shape(cells: Vec<SpendCell>, shape: &Shape, rates: &RateTable) -> Result<SpendReport, ShapeError> {
    let dims = &shape.group_by;
    let mut conversions: BTreeMap<String, Conversion> = BTreeMap::new();
    let mut sums: HashMap<Key, SpendTotals> = HashMap::new();
    for cell in cells {
        let mut key = Vec::with_capacity(dims.len());
        for (i, by) in dims.iter().enumerate() {
            key.push(match (&cell.keys[i], by.is_time()) {
                (Some(quarter), true) => Some(bucket(*by, quarter, &shape.time_zone)?),
                (value, _) => value.clone(),
            });
        }
        let totals = convert(&cell, shape.currency, rates, &mut conversions)?;
        sums.entry(key).or_default().add(&totals);
    }
    let mut total = SpendTotals::default();
    sums.values().for_each(|t| total.add(t));

    // The first dimension that is not time is ranked by its spend over the whole report.
    let ranked = dims.iter().position(|d| !d.is_time());
    let time = dims.iter().position(|d| d.is_time());
    let mut rank: HashMap<Option<String>, usize> = HashMap::new();
    if let Some(r) = ranked {
        let mut by_value: HashMap<Option<String>, i64> = HashMap::new();
        for (key, totals) in &sums {
            *by_value.entry(key[r].clone()).or_default() += totals.spend;
        }
        let mut values: Vec<(Option<String>, i64)> = by_value.into_iter().collect();
        values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        rank = values.into_iter().take(shape.top).enumerate().map(|(i, (v, _))| (v, i)).collect();
    }

    // Everything outside the top keeps only its time bucket, and is summed there as "other".
    let mut groups: HashMap<(Key, bool), SpendTotals> = HashMap::new();
    for (key, totals) in sums {
        let outside = ranked.is_some_and(|r| !rank.contains_key(&key[r]));
        let key = if outside {
            key.into_iter().enumerate().map(|(i, v)| if Some(i) == time { v } else { None }).collect()
        } else {
            key
        };
        groups.entry((key, outside)).or_default().add(&totals);
    }
    let mut groups: Vec<((Key, bool), SpendTotals)> = groups.into_iter().collect();
    groups.sort_by(|((ka, oa), ta), ((kb, ob), tb)| {
        let when = |k: &Key| time.and_then(|t| k[t].clone());
        let place = |k: &Key, other: bool| if other { usize::MAX } else { ranked.map_or(0, |r| rank[&k[r]]) };
        when(ka)
            .cmp(&when(kb))
            .then(place(ka, *oa).cmp(&place(kb, *ob)))
            .then(tb.spend.cmp(&ta.spend))
            .then_with(|| ka.cmp(kb))
    });
    Ok(SpendReport {
        currency: shape.currency,
        group_by: dims.clone(),
        time_zone: shape.time_zone.iana_name().unwrap_or("UTC").to_owned(),
        groups: groups
            .into_iter()
            .map(|((key, other), totals)| SpendGroup { group: dims.iter().copied().zip(key).collect(), other, totals })
            .collect(),
        total,
        conversions: conversions.into_values().collect(),
    })
}

/// A cell's totals in the report's currency.
fn convert(
    cell: &SpendCell,
    to: Currency,
    rates: &RateTable,
    conversions: &mut BTreeMap<String, Conversion>,
) -> Result<SpendTotals, ShapeError> {
    let from: Currency =
        cell.currency.parse().map_err(|_| ShapeError::Corrupt(format!("currency {:?}", cell.currency)))?;
    if from == to {
        return Ok(cell.totals);
    }
    let no_rate = |_| ShapeError::NoRate { from: from.code().to_owned(), to };
    let totals =
        cell.totals.map_amounts(|amount| rates.convert(amount, from, to).map(|c| c.amount).map_err(no_rate))?;
    if !conversions.contains_key(from.code()) {
        let unit = rates.convert(1, from, to).map_err(|e: FxError| no_rate(e))?;
        conversions.insert(
            from.code().to_owned(),
            Conversion {
                from: from.code().into(),
                to: to.code().into(),
                rate: unit.rate.to_string(),
                date: unit.date.to_string(),
            },
        );
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fx::RateSource;

    fn rates() -> RateTable {
        RateTable::parse_ecb(include_str!("../../fixtures/ecb_rates.xml"), RateSource::Bundled).unwrap()
    }

    fn cell(keys: [Option<&str>; 3], currency: &str, posted: i64, declined: u64) -> SpendCell {
        SpendCell {
            keys: keys.map(|k| k.map(str::to_owned)),
            currency: currency.into(),
            totals: SpendTotals::new(posted, 0, 0, 1, declined, declined as i64 * 100),
        }
    }

    fn shape_of(group_by: &[GroupBy], top: usize, zone: &str) -> Shape {
        Shape {
            group_by: group_by.to_vec(),
            currency: Currency::USD,
            time_zone: jiff::tz::TimeZone::get(zone).unwrap(),
            top,
        }
    }

    #[test]
    fn the_top_traces_come_first_with_their_services_and_the_rest_is_other() {
        let cells = vec![
            cell([Some("PR-1"), Some("openai"), None], "USD", 500, 0),
            cell([Some("PR-1"), Some("github"), None], "USD", 700, 0),
            cell([Some("PR-2"), Some("openai"), None], "USD", 5000, 3),
            cell([Some("PR-3"), Some("openai"), None], "USD", 10, 0),
            cell([Some("PR-4"), Some("github"), None], "USD", 20, 1),
        ];
        let report = shape(cells, &shape_of(&[GroupBy::Trace, GroupBy::Service], 2, "UTC"), &rates()).unwrap();
        let rows: Vec<(Option<&str>, Option<&str>, bool, i64)> = report
            .groups
            .iter()
            .map(|g| {
                (g.group[&GroupBy::Trace].as_deref(), g.group[&GroupBy::Service].as_deref(), g.other, g.totals.spend)
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (Some("PR-2"), Some("openai"), false, 5000),
                (Some("PR-1"), Some("github"), false, 700),
                (Some("PR-1"), Some("openai"), false, 500),
                (None, None, true, 30),
            ]
        );
        assert_eq!(report.total.spend, 6230);
        assert_eq!((report.total.declined, report.total.declined_amount), (4, 400));
        assert!(report.conversions.is_empty());
    }

    #[test]
    fn quarter_hours_become_days_of_the_time_zone() {
        // 2026-12-06T23:30Z is the 6th in UTC and the 7th in Tokyo; 2026-12-07T00:15Z the 7th in both.
        let q = |rfc: &str| (rfc.parse::<jiff::Timestamp>().unwrap().as_millisecond() / QUARTER_HOUR_MS).to_string();
        let cells = || {
            vec![
                cell([Some(&q("2026-12-06T23:30:00Z")), None, None], "USD", 100, 0),
                cell([Some(&q("2026-12-07T00:15:00Z")), None, None], "USD", 200, 0),
            ]
        };
        let days = |zone: &str, by: GroupBy| -> Vec<(String, i64)> {
            shape(cells(), &shape_of(&[by], 10, zone), &rates())
                .unwrap()
                .groups
                .into_iter()
                .map(|g| (g.group[&by].clone().unwrap(), g.totals.spend))
                .collect()
        };
        assert_eq!(days("UTC", GroupBy::Day), vec![("2026-12-06".into(), 100), ("2026-12-07".into(), 200)]);
        assert_eq!(days("Asia/Tokyo", GroupBy::Day), vec![("2026-12-07".into(), 300)]);
        // Kathmandu is UTC+5:45: 23:30Z is 05:15 on the 7th.
        assert_eq!(days("Asia/Kathmandu", GroupBy::Day), vec![("2026-12-07".into(), 300)]);
        // The week of Monday the 7th, and Sunday the 6th in the week before, in UTC.
        assert_eq!(days("UTC", GroupBy::Week), vec![("2026-11-30".into(), 100), ("2026-12-07".into(), 200)]);
        assert_eq!(days("UTC", GroupBy::Month), vec![("2026-12".into(), 300)]);
    }

    #[test]
    fn other_currencies_are_converted_and_the_rate_is_named() {
        let cells = vec![cell([Some("a"), None, None], "USD", 1000, 0), cell([Some("a"), None, None], "EUR", 1000, 0)];
        let report = shape(cells, &shape_of(&[GroupBy::Agent], 10, "UTC"), &rates()).unwrap();
        let eur_in_usd = rates().convert(1000, "EUR".parse().unwrap(), Currency::USD).unwrap().amount;
        assert!(eur_in_usd > 1000, "the fixture's euro is worth more than a dollar");
        assert_eq!(report.groups[0].totals.posted, 1000 + eur_in_usd);
        assert_eq!(report.conversions.len(), 1);
        assert_eq!((report.conversions[0].from.as_str(), report.conversions[0].to.as_str()), ("EUR", "USD"));
        let unknown = vec![cell([None, None, None], "XXX", 1, 0)];
        assert!(matches!(
            shape(unknown, &shape_of(&[GroupBy::Agent], 10, "UTC"), &rates()),
            Err(ShapeError::Corrupt(_))
        ));
    }

    #[test]
    fn a_series_keeps_every_bucket_and_folds_the_tail_in_each() {
        let day1 = (("2026-12-06T12:00:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond()) / QUARTER_HOUR_MS)
            .to_string();
        let day2 = (("2026-12-07T12:00:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond()) / QUARTER_HOUR_MS)
            .to_string();
        let cells = vec![
            cell([Some(&day1), Some("openai"), None], "USD", 900, 0),
            cell([Some(&day1), Some("github"), None], "USD", 5, 0),
            cell([Some(&day2), Some("github"), None], "USD", 7, 0),
            cell([Some(&day2), Some("anthropic"), None], "USD", 3, 0),
        ];
        let report = shape(cells, &shape_of(&[GroupBy::Day, GroupBy::Service], 1, "UTC"), &rates()).unwrap();
        let rows: Vec<(String, Option<String>, bool, i64)> = report
            .groups
            .into_iter()
            .map(|g| {
                (g.group[&GroupBy::Day].clone().unwrap(), g.group[&GroupBy::Service].clone(), g.other, g.totals.spend)
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("2026-12-06".into(), Some("openai".into()), false, 900),
                ("2026-12-06".into(), None, true, 5),
                ("2026-12-07".into(), None, true, 10),
            ]
        );
    }
}
