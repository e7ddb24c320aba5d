//! The ledger export: every authorization (approved or declined) and every transfer in a filter,
//! oldest first, as CSV or JSON Lines, read a page at a time so memory stays flat however long
//! the range. Its columns are a published format (docs/reports.md): add at the end, never rename.

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::ids::{AuthorizationId, TransferId, ulid_part};
use crate::domain::money::Money;
use crate::error::{Error, Result};
use crate::store::reports::{self, LedgerLine, ReportFilter};
use crate::store::{DbConnection, from_millis};

/// Lines read per page: large enough that a page's two queries cost little per line, small
/// enough that a page in flight is a few hundred KiB.
pub const PAGE: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    pub fn parse(text: Option<&str>) -> Result<Format> {
        match text {
            None | Some("csv") => Ok(Format::Csv),
            Some("jsonl") => Ok(Format::JsonLines),
            Some(_) => Err(Error::validation("format must be csv or jsonl")),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::JsonLines => "application/x-ndjson",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::JsonLines => "jsonl",
        }
    }
}

/// One line of the export, its columns in order.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ExportRow {
    /// RFC 3339, UTC, milliseconds: when the authorization was decided or the transfer made.
    pub time: String,
    /// The authorization's or the transfer's id.
    pub id: String,
    pub agent_id: String,
    pub agent_name: String,
    pub department: Option<String>,
    pub card_id: Option<String>,
    /// The card's label.
    pub service: Option<String>,
    /// `card` or `usdc`; empty for funding.
    pub rail: Option<String>,
    /// `authorization`, or the transfer's kind: `fund`, `post`, `excess`, `increase`, `void`,
    /// `expire`, `refund`.
    pub kind: String,
    /// The authorization's status now (for a transfer, its authorization's): `pending`, `posted`,
    /// `voided`, `expired` or `declined`; empty for funding.
    pub status: Option<String>,
    /// As requested, in the merchant's currency (a transfer: in the agent's).
    pub amount_minor: i64,
    /// `amount_minor` in major units, exact: `12.50`. Empty for a currency spendgate does not know.
    pub amount: Option<String>,
    pub currency: String,
    /// In the agent's (cap) currency, converted at decision time.
    pub cap_amount_minor: i64,
    pub cap_amount: Option<String>,
    pub cap_currency: String,
    /// Units of `cap_currency` per unit of `currency`, and the day of that rate.
    pub fx_rate: Option<String>,
    pub fx_date: Option<String>,
    pub merchant_id: Option<String>,
    pub merchant_name: Option<String>,
    pub mcc: Option<String>,
    pub merchant_country: Option<String>,
    pub trace_id: Option<String>,
    pub authorization_id: Option<String>,
    /// Who asked: `stripe`, `lithic`, `marqeta`, `native` or `x402`.
    pub processor: Option<String>,
    /// The processor's id of the authorization, or of the event that made the transfer.
    pub processor_id: String,
    /// The USDC payment's on-chain transaction.
    pub transaction_hash: Option<String>,
    pub decline_reason: Option<String>,
    pub decline_rule: Option<String>,
}

fn decimal(amount: i64, currency: &str) -> Option<String> {
    currency.parse().ok().map(|currency| Money { amount, currency }.decimal())
}

impl ExportRow {
    fn from_line(l: LedgerLine) -> Result<ExportRow> {
        Ok(ExportRow {
            time: from_millis(l.at_ms)?.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            amount: decimal(l.amount, &l.currency),
            cap_amount: decimal(l.cap_amount, &l.cap_currency),
            id: l.id,
            agent_id: l.agent_id,
            agent_name: l.agent_name,
            department: l.department,
            card_id: l.card_id,
            service: l.service,
            rail: l.rail.map(|r| r.as_str().to_owned()),
            kind: l.transfer.map_or("authorization", |k| k.as_str()).to_owned(),
            status: l.status.map(|s| s.as_str().to_owned()),
            amount_minor: l.amount,
            currency: l.currency,
            cap_amount_minor: l.cap_amount,
            cap_currency: l.cap_currency,
            fx_rate: l.fx_rate,
            fx_date: l.fx_date,
            merchant_id: l.merchant_id,
            merchant_name: l.merchant_name,
            mcc: l.mcc,
            merchant_country: l.country,
            trace_id: l.trace_id,
            authorization_id: l.authorization_id,
            processor: l.source.map(|s| s.as_str().to_owned()),
            processor_id: l.external_id,
            transaction_hash: l.transaction_hash,
            decline_reason: l.reason,
            decline_rule: l.rule,
        })
    }

    /// The text columns a spreadsheet would read as a formula if they began with `=`, `+`, `-`,
    /// `@`, a tab or a carriage return (merchant names and traces come from outside): each such
    /// value gets a leading `'`, which spreadsheets show as text. Numbers are not touched.
    fn defused(mut self) -> ExportRow {
        fn defuse(value: &mut String) {
            if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                value.insert(0, '\'');
            }
        }
        for text in [&mut self.id, &mut self.agent_id, &mut self.agent_name, &mut self.processor_id] {
            defuse(text);
        }
        for text in [
            &mut self.department,
            &mut self.card_id,
            &mut self.service,
            &mut self.merchant_id,
            &mut self.merchant_name,
            &mut self.mcc,
            &mut self.merchant_country,
            &mut self.trace_id,
            &mut self.decline_rule,
        ]
        .into_iter()
        .flatten()
        {
            defuse(text);
        }
        self
    }
}

/// The next lines after `cursor` (a ULID; empty at the start), merged in time order, and the
/// cursor after them (None when nothing is left).
pub fn page(conn: &mut DbConnection, f: &ReportFilter, cursor: &str) -> Result<(Vec<ExportRow>, Option<String>)> {
    let after = |prefix: &str| format!("{prefix}_{cursor}");
    let authorizations = reports::authorization_lines(conn, f, &after(AuthorizationId::PREFIX), PAGE)?;
    let transfers = reports::transfer_lines(conn, f, &after(TransferId::PREFIX), PAGE)?;
    // A full page from one table may stop short of rows the other returned: lines are safe to
    // give only up to the smaller last id of the full pages.
    let bound: Option<String> = [&authorizations, &transfers]
        .into_iter()
        .filter(|lines| lines.len() as i64 == PAGE)
        .filter_map(|lines| lines.last().map(|l| ulid_part(&l.id).to_owned()))
        .min();
    let mut lines: Vec<LedgerLine> = authorizations
        .into_iter()
        .chain(transfers)
        .filter(|l| bound.as_deref().is_none_or(|b| ulid_part(&l.id) <= b))
        .collect();
    lines.sort_by(|a, b| ulid_part(&a.id).cmp(ulid_part(&b.id)));
    let rows = lines.into_iter().map(ExportRow::from_line).collect::<Result<_>>()?;
    Ok((rows, bound))
}

/// A page of rows in the format; CSV's header comes before the first page only.
pub fn encode(format: Format, rows: Vec<ExportRow>, header: bool) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(rows.len() * 320);
    match format {
        Format::Csv => {
            let mut writer = csv::WriterBuilder::new().has_headers(header).from_writer(&mut out);
            if header && rows.is_empty() {
                writer.write_record(HEADER).map_err(failed)?;
            }
            for row in rows {
                writer.serialize(row.defused()).map_err(failed)?;
            }
            writer.flush().map_err(failed)?;
        }
        Format::JsonLines => {
            for row in rows {
                serde_json::to_writer(&mut out, &row).map_err(failed)?;
                out.push(b'\n');
            }
        }
    }
    Ok(out)
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("export: {e}"))
}

/// The columns, in order (the CSV header).
pub const HEADER: [&str; 29] = [
    "time",
    "id",
    "agent_id",
    "agent_name",
    "department",
    "card_id",
    "service",
    "rail",
    "kind",
    "status",
    "amount_minor",
    "amount",
    "currency",
    "cap_amount_minor",
    "cap_amount",
    "cap_currency",
    "fx_rate",
    "fx_date",
    "merchant_id",
    "merchant_name",
    "mcc",
    "merchant_country",
    "trace_id",
    "authorization_id",
    "processor",
    "processor_id",
    "transaction_hash",
    "decline_reason",
    "decline_rule",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ExportRow {
        ExportRow {
            time: "2026-12-06T10:00:00.000Z".into(),
            id: "auth_01".into(),
            agent_id: "agt_01".into(),
            agent_name: "ci-bot".into(),
            department: Some("eng".into()),
            card_id: Some("card_01".into()),
            service: Some("openai".into()),
            rail: Some("card".into()),
            kind: "authorization".into(),
            status: Some("posted".into()),
            amount_minor: -1250,
            amount: Some("-12.50".into()),
            currency: "EUR".into(),
            cap_amount_minor: 1350,
            cap_amount: Some("13.50".into()),
            cap_currency: "USD".into(),
            fx_rate: Some("1.08".into()),
            fx_date: Some("2026-12-04".into()),
            merchant_id: None,
            merchant_name: Some("=HYPERLINK(\"http://x\")".into()),
            mcc: Some("5734".into()),
            merchant_country: Some("US".into()),
            trace_id: Some("@SUM(A1)".into()),
            authorization_id: Some("auth_01".into()),
            processor: Some("stripe".into()),
            processor_id: "iauth_1".into(),
            transaction_hash: None,
            decline_reason: None,
            decline_rule: None,
        }
    }

    #[test]
    fn the_header_names_the_rows_fields_in_order() {
        let value = serde_json::to_value(row()).unwrap();
        let fields: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sorted_header = HEADER.to_vec();
        sorted_header.sort_unstable();
        let mut sorted_fields = fields.clone();
        sorted_fields.sort_unstable();
        assert_eq!(sorted_fields, sorted_header);
        let csv = String::from_utf8(encode(Format::Csv, vec![row()], true).unwrap()).unwrap();
        assert_eq!(csv.lines().next().unwrap(), HEADER.join(","));
        let empty = String::from_utf8(encode(Format::Csv, vec![], true).unwrap()).unwrap();
        assert_eq!(empty.trim_end(), HEADER.join(","), "an empty export still has its header");
    }

    #[test]
    fn csv_text_that_a_spreadsheet_would_run_is_defused_and_numbers_are_not() {
        let csv = String::from_utf8(encode(Format::Csv, vec![row()], false).unwrap()).unwrap();
        let record: Vec<String> = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(csv.as_bytes())
            .records()
            .next()
            .unwrap()
            .unwrap()
            .iter()
            .map(str::to_owned)
            .collect();
        let column = |name: &str| record[HEADER.iter().position(|h| *h == name).unwrap()].clone();
        assert_eq!(column("merchant_name"), "'=HYPERLINK(\"http://x\")");
        assert_eq!(column("trace_id"), "'@SUM(A1)");
        assert_eq!(column("amount_minor"), "-1250");
        assert_eq!(column("amount"), "-12.50");
        let jsonl = String::from_utf8(encode(Format::JsonLines, vec![row()], false).unwrap()).unwrap();
        let value: serde_json::Value = serde_json::from_str(jsonl.trim_end()).unwrap();
        assert_eq!(value["merchant_name"], "=HYPERLINK(\"http://x\")", "JSON keeps the value as it is");
    }
}
