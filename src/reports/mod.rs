//! Where the money went, across agents: the ledger export and spend reports. Each checks the
//! caller's permission (an agent key sees only its own agent), reads its filter, and reads the
//! ledger's tables a page or one grouped query at a time.

pub mod export;
pub mod spend;

use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use crate::domain::access::{Permission, Principal};
use crate::domain::authorization::Rail;
use crate::domain::ids::{AgentId, CardId};
use crate::domain::ledger::HoldStatus;
use crate::domain::money::Currency;
use crate::domain::report::GroupBy;
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::Ledger;
use crate::store::reports::{self as records, ReportFilter};
use crate::store::{Db, query_time};
use export::Format;
use spend::{Shape, ShapeError, SpendReport};

/// A query struct with the filters every report takes, and its own fields.
macro_rules! report_query {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, Deserialize, IntoParams)]
        #[serde(deny_unknown_fields)]
        #[into_params(parameter_in = Query)]
        pub struct $name {
            /// Only this agent's records (for an agent key, its own: the default).
            pub agent: Option<String>,
            /// Only this agent's and every sub-agent's under it.
            pub tree: Option<String>,
            /// Only this card's.
            pub card: Option<String>,
            /// Only cards with this label (the service they pay).
            pub service: Option<String>,
            /// Only agents of this department.
            pub department: Option<String>,
            /// Only this trace's.
            pub trace: Option<String>,
            /// `card` or `usdc`.
            pub rail: Option<String>,
            /// A merchant id or name, exactly.
            pub merchant: Option<String>,
            /// The authorization's status: `pending`, `posted`, `voided`, `expired`, `declined`.
            pub status: Option<String>,
            /// From this time (RFC 3339), inclusive.
            pub from: Option<String>,
            /// Until this time (RFC 3339), exclusive.
            pub to: Option<String>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            fn filter_text(&self) -> FilterText<'_> {
                FilterText {
                    agent: self.agent.as_deref(),
                    tree: self.tree.as_deref(),
                    card: self.card.as_deref(),
                    service: self.service.as_deref(),
                    department: self.department.as_deref(),
                    trace: self.trace.as_deref(),
                    rail: self.rail.as_deref(),
                    merchant: self.merchant.as_deref(),
                    status: self.status.as_deref(),
                    from: self.from.as_deref(),
                    to: self.to.as_deref(),
                }
            }
        }
    };
}

report_query! {
    /// `GET /v1/ledger/export`.
    pub struct ExportQuery {
        /// `csv` (the default) or `jsonl`.
        pub format: Option<String>,
    }
}

report_query! {
    /// `GET /v1/reports/spend`.
    pub struct SpendQuery {
        /// One to three of agent, root (each agent's top ancestor: a parent's total holds its
        /// sub-agents'), department, card, service, trace, rail, merchant, mcc, country,
        /// and at most one of day, week, month; comma-separated, in order.
        #[param(pattern = "^[a-z]+(,[a-z]+){0,2}$", example = "trace,service")]
        pub group_by: String,
        /// The currency of the report; default: the agents' currency (of several, the first in
        /// alphabetical order, the others converted).
        pub currency: Option<String>,
        /// An IANA time zone for day, week and month (default UTC).
        pub time_zone: Option<String>,
        /// How many values of the first dimension that is not time to show (1 to 1000, default 10).
        #[param(minimum = 1, maximum = 1000)]
        pub top: Option<usize>,
    }
}

/// The filters as the request wrote them.
struct FilterText<'a> {
    agent: Option<&'a str>,
    tree: Option<&'a str>,
    card: Option<&'a str>,
    service: Option<&'a str>,
    department: Option<&'a str>,
    trace: Option<&'a str>,
    rail: Option<&'a str>,
    merchant: Option<&'a str>,
    status: Option<&'a str>,
    from: Option<&'a str>,
    to: Option<&'a str>,
}

fn text(field: &str, value: Option<&str>) -> Result<Option<String>> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > 200 || v.chars().any(char::is_control) => {
            Err(Error::validation(format!("{field} must be 1 to 200 printable characters")))
        }
        v => Ok(v.map(str::to_owned)),
    }
}

impl FilterText<'_> {
    /// The filter, checked, with the caller's permission to read it: an agent key reads only its
    /// own agent, which is then the filter's whether or not the request named it.
    fn checked(&self, who: &Principal) -> Result<ReportFilter> {
        let agent = match self.agent {
            Some(id) => Some(AgentId::parse(id).ok_or_else(|| Error::validation("agent must be an agent id (agt_…)"))?),
            None => who.agent_id.clone(),
        };
        who.check(Permission::Read, agent.as_ref())?;
        let tree = self
            .tree
            .map(|id| AgentId::parse(id).ok_or_else(|| Error::validation("tree must be an agent id (agt_…)")))
            .transpose()?;
        // An agent key's records are its agent's alone (the agent filter above): a tree narrows them.
        who.check(Permission::Read, tree.as_ref().or(agent.as_ref()))?;
        let card = self
            .card
            .map(|id| CardId::parse(id).ok_or_else(|| Error::validation("card must be a card id (card_…)")))
            .transpose()?;
        let word = |field: &str, value: Option<&str>, words: &[&str]| -> Result<Option<String>> {
            match value {
                Some(v) if !words.contains(&v) => {
                    Err(Error::validation(format!("{field} must be one of {}", words.join(", "))))
                }
                v => Ok(v.map(str::to_owned)),
            }
        };
        let rails: Vec<&str> = Rail::ALL.iter().map(|r| r.as_str()).collect();
        let statuses: Vec<&str> = HoldStatus::ALL.iter().map(|s| s.as_str()).collect();
        let filter = ReportFilter {
            agent,
            tree,
            card,
            service: text("service", self.service)?,
            department: text("department", self.department)?,
            trace: text("trace", self.trace)?,
            rail: word("rail", self.rail, &rails)?.as_deref().and_then(Rail::parse),
            merchant: text("merchant", self.merchant)?,
            status: word("status", self.status, &statuses)?.as_deref().and_then(HoldStatus::parse),
            from_ms: query_time("from", self.from)?,
            to_ms: query_time("to", self.to)?,
        };
        if let (Some(from), Some(to)) = (filter.from_ms, filter.to_ms)
            && from >= to
        {
            return Err(Error::validation("from must be before to"));
        }
        Ok(filter)
    }
}

/// How many pages of an export may wait for a slow reader: the memory an export holds.
const PAGES_IN_FLIGHT: usize = 2;

/// An export under way: its format, and its bytes as they are read.
pub struct Export {
    pub format: Format,
    pub chunks: mpsc::Receiver<Result<Vec<u8>>>,
}

#[derive(Clone)]
pub struct Reports {
    db: Db,
    ledger: Ledger,
}

impl Reports {
    pub fn new(db: Db, ledger: Ledger) -> Self {
        Reports { db, ledger }
    }

    /// Starts an export. Its first page is read before this answers, so a bad filter or an
    /// unavailable database is an error response, not a cut-off file; the rest follows as the
    /// reader takes it, a page at a time.
    pub async fn export(&self, who: &Principal, q: ExportQuery) -> Result<Export> {
        let format = Format::parse(q.format.as_deref())?;
        let filter = q.filter_text().checked(who)?;
        let first_filter = filter.clone();
        let (rows, mut cursor) = self.db.read(move |conn| export::page(conn, &first_filter, "")).await?;
        let (tx, chunks) = mpsc::channel(PAGES_IN_FLIGHT);
        tx.send(export::encode(format, rows, true)).await.ok();
        let db = self.db.clone();
        tokio::spawn(async move {
            while let Some(after) = cursor.take() {
                let filter = filter.clone();
                let page = db
                    .read(move |conn| export::page(conn, &filter, &after))
                    .await
                    .and_then(|(rows, next)| Ok((export::encode(format, rows, false)?, next)));
                let chunk = match page {
                    Ok((chunk, next)) => {
                        cursor = next;
                        Ok(chunk)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "ledger export stopped");
                        Err(e)
                    }
                };
                // The reader went away, or the export failed: stop reading.
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Export { format, chunks })
    }

    pub async fn spend(&self, who: &Principal, q: SpendQuery) -> Result<SpendReport> {
        let filter = q.filter_text().checked(who)?;
        let group_by = group_by(&q.group_by)?;
        let top = match q.top {
            None => 10,
            Some(n) if (1..=1000).contains(&n) => n,
            Some(_) => return Err(Error::validation("top must be between 1 and 1000")),
        };
        let time_zone = match q.time_zone.as_deref() {
            None => jiff::tz::TimeZone::UTC,
            Some(name) => jiff::tz::TimeZone::get(name)
                .map_err(|_| Error::validation("time_zone must be an IANA time zone such as Europe/Paris"))?,
        };
        let currency: Option<Currency> = q
            .currency
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| Error::validation(format!("currency: {e}")))?;
        let dims = group_by.clone();
        let cells = self.db.read(move |conn| records::spend(conn, &filter, &dims)).await?;
        let currency = match currency {
            Some(c) => c,
            // The agents' currency; of several, the first by code (the report names the rates).
            None => {
                cells.iter().map(|c| c.currency.as_str()).min().and_then(|c| c.parse().ok()).unwrap_or(Currency::USD)
            }
        };
        let shape = Shape { group_by, currency, time_zone, top };
        spend::shape(cells, &shape, &self.ledger.rates()).map_err(|e| match e {
            ShapeError::NoRate { from, to } => Error::coded(
                ErrorCode::UnsupportedCurrency,
                format!("no exchange rate from {from} to {to}: ask for the report in {from}"),
            ),
            ShapeError::Corrupt(what) => Error::Internal(format!("spend report: unreadable {what}")),
        })
    }
}

/// `group_by`: one to three dimensions, no repeats, at most one of time.
fn group_by(text: &str) -> Result<Vec<GroupBy>> {
    let names: Vec<&str> = GroupBy::ALL.iter().map(|g| g.as_str()).collect();
    let dims = text
        .split(',')
        .map(|part| {
            GroupBy::parse(part.trim())
                .ok_or_else(|| Error::validation(format!("group_by: {part:?} is not one of {}", names.join(", "))))
        })
        .collect::<Result<Vec<_>>>()?;
    if dims.is_empty() || dims.len() > 3 {
        return Err(Error::validation("group_by names one to three dimensions"));
    }
    if dims.iter().enumerate().any(|(i, d)| dims[..i].contains(d)) {
        return Err(Error::validation("group_by names a dimension twice"));
    }
    if dims.iter().filter(|d| d.is_time()).count() > 1 {
        return Err(Error::validation("group_by names at most one of day, week, month"));
    }
    Ok(dims)
}
