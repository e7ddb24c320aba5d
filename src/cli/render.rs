//! What the CLI prints for people: tables that fit the terminal, records, decisions, ids.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};

use super::amount::money;

/// The ids in an answer, one per line: a record's, or each listed row's.
pub(super) fn ids(value: &Value) -> String {
    let rows = match value["data"].as_array() {
        Some(rows) => rows.iter().collect(),
        None => vec![value],
    };
    let key = |row: &Value| row["id"].as_str().or(row["authorization_id"].as_str()).map(|id| format!("{id}\n"));
    rows.into_iter().filter_map(key).collect()
}

/// An authorization's decision for people: the verdict, the reason and rule, the amounts.
pub fn describe_outcome(o: &Value) -> String {
    let mut out = match o["approved"].as_bool() {
        Some(true) => "approved".to_owned(),
        _ => format!("declined: {}", o["reason"].as_str().unwrap_or("?")),
    };
    if let Some(rule) = o["rule"].as_str() {
        out.push_str(&format!(" (rule {rule})"));
    }
    if o["dry_run"] == true {
        out.push_str("  [dry run: nothing recorded]");
    }
    out.push('\n');
    let mut line = |label: &str, text: Option<String>| {
        if let Some(text) = text {
            out.push_str(&format!("  {label:<14}{text}\n"));
        }
    };
    line("amount", money(&o["amount"]["merchant"]));
    if o["amount"]["cap"]["currency"] != o["amount"]["merchant"]["currency"] {
        line("counted as", money(&o["amount"]["cap"]));
    }
    line(
        "fx rate",
        o["fx"]["rate"].as_str().map(|rate| {
            let fx = &o["fx"];
            format!("{rate} of {} ({})", fx["date"].as_str().unwrap_or("?"), fx["source"].as_str().unwrap_or("?"))
        }),
    );
    line("available", money(&o["available"]));
    line("authorization", o["authorization_id"].as_str().map(str::to_owned));
    line("approval", o["approval_id"].as_str().map(str::to_owned));
    out
}

#[derive(Clone, Copy)]
pub(super) enum View {
    Agents,
    Cards,
    Keys,
    Ledger,
    Events,
    Approvals,
    Outcome,
    Balance,
    /// The server's answer, printed as is (a policy document, an upstream answer).
    Json,
    Record,
    /// A spend report: a row per group.
    Spend,
    /// An audit verification: what was walked, and each broken link.
    Verification,
    Checkpoints,
    /// A draft: what it changes in the live policy.
    Draft,
    /// A backtest (or a shadow's report): what the draft would have changed, in words.
    Backtest,
    /// A policy's versions.
    Versions,
    /// Wallets against the ledger.
    Reconciliation,
    /// The command wrote its output itself.
    Nothing,
}

/// The longest a cell in a list gets before it is cut (`show` and `--json` have it whole).
const MAX_CELL: usize = 40;

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn cut(text: String) -> String {
    match text.char_indices().nth(MAX_CELL) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// A document inside a record, cut to a line (`--json` prints it whole).
fn cut_record(text: String) -> String {
    match text.char_indices().nth(4 * MAX_CELL) {
        Some((at, _)) => format!("{}… (--json for all)", &text[..at]),
        None => text,
    }
}

fn table() -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    if let Some((terminal_size::Width(width), _)) = terminal_size::terminal_size() {
        table.set_width(width);
    }
    table
}

/// What a list view shows of each row: a column name and how to read it.
type Column = (&'static str, fn(&Value) -> String);

pub(super) fn render(value: &Value, view: View) -> String {
    let columns: &[Column] = match view {
        View::Agents => &[
            ("id", |r| cell(&r["id"])),
            ("name", |r| cell(&r["name"])),
            ("department", |r| cell(&r["department"])),
            ("status", |r| cell(&r["status"])),
            ("currency", |r| cell(&r["currency"])),
        ],
        View::Cards => &[
            ("id", |r| cell(&r["id"])),
            ("label", |r| cell(&r["label"])),
            ("last4", |r| cell(&r["last4"])),
            ("currency", |r| cell(&r["currency"])),
            ("status", |r| cell(&r["status"])),
            ("processor", |r| cell(&r["processor"])),
        ],
        View::Keys => &[
            ("id", |r| cell(&r["id"])),
            ("role", |r| cell(&r["role"])),
            ("name", |r| cell(&r["name"])),
            ("agent_id", |r| cell(&r["agent_id"])),
            ("prefix", |r| cell(&r["prefix"])),
            ("revoked_at", |r| cell(&r["revoked_at"])),
        ],
        View::Ledger => &[
            ("at", |r| if r["type"] == "authorization" { cell(&r["authorized_at"]) } else { cell(&r["created_at"]) }),
            ("type", |r| cell(&r["type"])),
            ("merchant / kind", |r| {
                if r["type"] == "authorization" { cell(&r["merchant"]["name"]) } else { cell(&r["kind"]) }
            }),
            ("status", |r| match r["reason"].as_str() {
                Some(reason) => format!("declined: {reason}"),
                None => cell(&r["status"]),
            }),
            ("amount", |r| money(&r["amount"]).unwrap_or_else(|| cell(&r["amount"]))),
            ("card", |r| cell(&r["card_id"])),
        ],
        View::Events => &[
            ("at", |r| cell(&r["created_at"])),
            ("kind", |r| cell(&r["kind"])),
            ("card", |r| cell(&r["card_id"])),
            ("reason", |r| cell(&r["reason"])),
        ],
        View::Approvals => &[
            ("id", |r| cell(&r["id"])),
            ("status", |r| cell(&r["status"])),
            ("agent", |r| cell(&r["agent_id"])),
            ("rule", |r| cell(&r["rule"])),
            ("amount", |r| money(&r["amount"]).unwrap_or_else(|| cell(&r["amount"]))),
            ("merchant", |r| cell(&r["merchant"]["name"])),
        ],
        View::Checkpoints => &[
            ("id", |r| cell(&r["id"])),
            ("created_at", |r| cell(&r["created_at"])),
            ("agents", |r| r["heads"].as_array().map_or(0, Vec::len).to_string()),
            ("digest", |r| cell(&r["digest"])),
            ("signer", |r| cell(&r["signer"])),
        ],
        View::Versions => &[
            ("id", |r| cell(&r["id"])),
            ("number", |r| cell(&r["number"])),
            ("state", |r| if r["shadow"] == true { "draft (shadow)".to_owned() } else { cell(&r["state"]) }),
            ("created_at", |r| cell(&r["created_at"])),
            ("by", |r| cell(&r["created_by"])),
            ("reason", |r| cell(&r["reason"])),
        ],
        View::Reconciliation => &[
            ("agent", |r| cell(&r["agent_id"])),
            ("wallet", |r| cell(&r["address"])),
            ("network", |r| cell(&r["network"])),
            ("on chain", |r| usdc(&r["onchain"])),
            ("ledger", |r| usdc(&r["ledger"])),
            ("uncredited", |r| usdc(&r["uncredited"])),
            ("in flight", |r| usdc(&r["in_flight"])),
            ("status", |r| match r["error"].as_str() {
                Some(error) => format!("{}: {error}", cell(&r["status"])),
                None => cell(&r["status"]),
            }),
        ],
        View::Draft => return draft(value),
        View::Backtest => return backtest(value),
        View::Outcome => return describe_outcome(value),
        View::Spend => return spend(value),
        View::Verification => return verification(value),
        View::Nothing => return String::new(),
        View::Balance => {
            let mut out = String::new();
            for field in ["funded", "refunded", "held", "spent", "available"] {
                let amount = json!({"amount": value[field], "currency": value["currency"]});
                out.push_str(&format!("{field:<10}{}\n", money(&amount).unwrap_or_else(|| cell(&value[field]))));
            }
            return out;
        }
        View::Json => return format!("{}\n", serde_json::to_string_pretty(value).unwrap_or_default()),
        View::Record => {
            let mut table = table();
            if let Value::Object(map) = value {
                for (k, v) in map {
                    let shown = match v {
                        Value::Object(_) if money(v).is_some() => money(v).unwrap_or_default(),
                        Value::Object(_) | Value::Array(_) => cut_record(v.to_string()),
                        other => cell(other),
                    };
                    table.add_row(vec![k.clone(), shown]);
                }
            }
            return format!("{table}\n");
        }
    };
    let mut table = table();
    table.set_header(columns.iter().map(|(name, _)| *name).collect::<Vec<_>>());
    let rows = value["data"].as_array().or(value.as_array()).cloned().unwrap_or_default();
    for row in &rows {
        table.add_row(columns.iter().map(|(_, read)| cut(read(row))).collect::<Vec<_>>());
    }
    let more = match value["next_cursor"].as_str() {
        Some(cursor) => format!(" (more: --cursor {cursor})"),
        None => String::new(),
    };
    format!("{table}\n{} row(s){more}\n", rows.len())
}

/// A token amount in atomic units (6 decimals) as dollars, e.g. "1250000" as 1.250000.
fn usdc(v: &Value) -> String {
    let Some(atomic) = v.as_str().and_then(|s| s.parse::<i128>().ok()) else { return cell(v) };
    let sign = if atomic < 0 { "-" } else { "" };
    let atomic = atomic.unsigned_abs();
    format!("{sign}{}.{:06}", atomic / 1_000_000, atomic % 1_000_000)
}

/// What a verification walked, held to which checkpoint, and each broken chain's first broken link.
fn verification(v: &Value) -> String {
    let held = v["checkpoint"].as_str().map(|id| format!(", held to checkpoint {id}")).unwrap_or_default();
    let walked = format!("{} chains, {} links, {} records{held}", v["agents"], v["links"], v["records"]);
    let broken = v["broken"].as_array().cloned().unwrap_or_default();
    if broken.is_empty() {
        return format!("verified: {walked}\n");
    }
    let mut table = table();
    table.set_header(["agent", "link", "problem", "record", "detail"]);
    for b in &broken {
        let record = format!("{} {}", b["record_kind"].as_str().unwrap_or(""), b["record_id"].as_str().unwrap_or(""));
        table.add_row(vec![
            cell(&b["agent_id"]),
            cell(&b["n"]),
            cell(&b["problem"]),
            record.trim().to_owned(),
            cell(&b["detail"]),
        ]);
    }
    format!("BROKEN: {} chain(s) of {walked}\n{table}\n", broken.len())
}

/// A spend report as a table: the group's values, then its amounts in the report's currency.
fn spend(report: &Value) -> String {
    let amount = |v: &Value| money(&json!({"amount": v, "currency": report["currency"]})).unwrap_or_else(|| cell(v));
    let dims: Vec<&str> = report["group_by"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut table = table();
    let mut header: Vec<&str> = dims.clone();
    header.extend(["spend", "posted", "held", "refunded", "approved", "declined", "declined amount"]);
    table.set_header(header);
    let groups = report["groups"].as_array().cloned().unwrap_or_default();
    let totals = |t: &Value| {
        vec![
            amount(&t["spend"]),
            amount(&t["posted"]),
            amount(&t["held"]),
            amount(&t["refunded"]),
            cell(&t["approved"]),
            cell(&t["declined"]),
            amount(&t["declined_amount"]),
        ]
    };
    for g in &groups {
        let mut row: Vec<String> = dims
            .iter()
            .map(|d| match &g["group"][d] {
                Value::Null if g["other"] == true => "(other)".to_owned(),
                v => cut(cell(v)),
            })
            .collect();
        row.extend(totals(&g["totals"]));
        table.add_row(row);
    }
    let mut total: Vec<String> =
        dims.iter().enumerate().map(|(i, _)| if i == 0 { "total" } else { "" }.to_owned()).collect();
    total.extend(totals(&report["total"]));
    table.add_row(total);
    let rates: Vec<String> = report["conversions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} → {} at {} ({})", cell(&c["from"]), cell(&c["to"]), cell(&c["rate"]), cell(&c["date"])))
        .collect();
    let rates = if rates.is_empty() { String::new() } else { format!("converted: {}\n", rates.join(", ")) };
    format!("{table}\n{} group(s), amounts in {}\n{rates}", groups.len(), cell(&report["currency"]))
}

/// A draft's changes, one line each: `limits.hourly.count: 10 -> 5`.
fn draft(value: &Value) -> String {
    let shown = |v: &Value| if v.is_null() { "(none)".to_owned() } else { v.to_string() };
    let mut out = format!(
        "draft {} of live version {}{}\n",
        cell(&value["draft"]["id"]),
        cell(&value["live"]["number"]),
        if value["draft"]["shadow"] == true { ", in shadow" } else { "" }
    );
    let diff = value["diff"].as_array().cloned().unwrap_or_default();
    if diff.is_empty() {
        out.push_str("  no change\n");
    }
    for d in diff {
        out.push_str(&format!("  {}: {} -> {}\n", cell(&d["path"]), shown(&d["live"]), shown(&d["draft"])));
    }
    out
}

/// Money per currency, as a sum in words: `$1,240.00` or `$12.00 and €3.00`.
fn tally(amounts: &Value) -> String {
    let parts: Vec<String> = amounts
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(currency, amount)| money(&json!({"amount": amount, "currency": currency})))
        .collect();
    if parts.is_empty() { "nothing".to_owned() } else { parts.join(" and ") }
}

/// A backtest for people: what the draft would have declined, how much, where; then the rest.
fn backtest(value: &Value) -> String {
    let r = &value["report"];
    let mut out = String::new();
    if let Some(id) = value["id"].as_str() {
        let spec = &value["spec"];
        out.push_str(&format!(
            "backtest {id} ({}): {} to {}\n",
            cell(&value["status"]),
            cell(&spec["from"]),
            cell(&spec["to"])
        ));
        if value["status"] != "done" {
            out.push_str(&format!(
                "  replayed {} of {} decisions {}\n",
                value["replayed"],
                value["total"],
                cell(&value["error"])
            ));
            return out;
        }
    }
    let declined = &r["newly_declined"];
    let count = declined["count"].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "{} decisions compared of {}; this draft would have declined {count} that were approved, {} in all",
        r["compared"],
        r["decisions"],
        tally(&declined["amount"])
    ));
    let top = |list: &Value| list.as_array().and_then(|l| l.first()).cloned();
    if let (Some(trace), true) = (top(&r["by_trace"]), count > 0) {
        out.push_str(&format!(", {} of them on trace {}", trace["count"], cell(&trace["key"])));
        if let Some(service) = top(&r["by_service"]) {
            out.push_str(&format!(" (most at {})", cell(&service["key"])));
        }
    }
    out.push_str(".\n");
    let approved = &r["newly_approved"];
    if approved["count"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "It would have approved {} that were declined, {}.\n",
            approved["count"],
            tally(&approved["amount"])
        ));
    }
    if r["otherwise_declined"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!("{} declines would name another reason.\n", r["otherwise_declined"]));
    }
    for (title, key) in [("by reason", "by_reason"), ("by trace", "by_trace"), ("by service", "by_service")] {
        let rows = r[key].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            continue;
        }
        out.push_str(&format!("declined {title}:\n"));
        for g in rows.iter().take(5) {
            out.push_str(&format!("  {:>6}  {:<16}  {}\n", g["count"], tally(&g["amount"]), cell(&g["key"])));
        }
    }
    let peaks = r["peaks"].as_array().cloned().unwrap_or_default();
    if !peaks.is_empty() {
        out.push_str("fullest limits:\n");
        for p in peaks.iter().take(5) {
            out.push_str(&format!("  {:>4}%  {}\n", p["percent"], cell(&p["rule"])));
        }
    }
    if let Some(not) = r["not_replayed"].as_object().filter(|m| !m.is_empty()) {
        let why: Vec<String> = not.iter().map(|(k, v)| format!("{v} {k}")).collect();
        out.push_str(&format!("not replayed (history cannot say): {}\n", why.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_cells_are_cut_and_short_ones_kept() {
        assert_eq!(cut("short".into()), "short");
        let long = "x".repeat(100);
        assert_eq!(cut(long).chars().count(), MAX_CELL + 1);
    }

    #[test]
    fn a_spend_report_reads_as_a_table_with_its_total_and_rates() {
        let report = json!({"currency": "USD", "group_by": ["trace", "service"],
            "groups": [
                {"group": {"trace": "PR-4823", "service": "openai"}, "other": false,
                 "totals": {"spend": 1000, "posted": 1250, "held": 0, "refunded": 250, "approved": 1, "declined": 0, "declined_amount": 0}},
                {"group": {"trace": null, "service": null}, "other": true,
                 "totals": {"spend": 300, "posted": 300, "held": 0, "refunded": 0, "approved": 1, "declined": 1, "declined_amount": 20000}}],
            "total": {"spend": 1300, "posted": 1550, "held": 0, "refunded": 250, "approved": 2, "declined": 1, "declined_amount": 20000},
            "conversions": [{"from": "EUR", "to": "USD", "rate": "1.08", "date": "2026-12-04"}]});
        let text = render(&report, View::Spend);
        for expected in
            ["PR-4823", "openai", "10.00 USD", "(other)", "200.00 USD", "total", "13.00 USD", "EUR → USD at 1.08"]
        {
            assert!(text.contains(expected), "{expected} in\n{text}");
        }
    }
}
