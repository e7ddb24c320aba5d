//! The treasuries: what people record as backing each currency's (deposits, withdrawals), what
//! each has, and its journal. Agents are funded from here and drained back (`admin::ledger`).

use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::ledger::{actor, check_amount};
use super::{Admin, Page, PageQuery, required_text};
use crate::domain::access::{Permission, Principal};
use crate::domain::ledger::TreasuryKind;
use crate::domain::money::{Currency, Money};
use crate::error::{Error, Result};
use crate::ledger::{TreasuryTransferView, TreasuryView};
use crate::store;

/// `POST /v1/treasury/deposits` and `/v1/treasury/withdrawals`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TreasuryMovement {
    /// Idempotency key of this movement, unique per currency.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub id: String,
    /// Minor units of `currency`.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// ISO 4217.
    #[schema(pattern = "^[A-Za-z]{3}$", example = "USD")]
    pub currency: String,
    /// What backs it or where it went: a wire, money placed at the card program, a transaction hash.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reference: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TreasuryTransfersQuery {
    /// Only this currency's treasury.
    #[param(pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<String>,
    /// 1 to 500, default 100.
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl Admin {
    /// Records money entering (a deposit) or leaving (a withdrawal) a treasury. Idempotent by `id`.
    pub async fn record_treasury(
        &self,
        who: &Principal,
        kind: TreasuryKind,
        input: TreasuryMovement,
    ) -> Result<(TreasuryTransferView, bool)> {
        who.check(Permission::Treasury, None)?;
        let id = required_text("id", &input.id, 200)?;
        check_amount("amount", input.amount)?;
        let currency = currency(&input.currency)?;
        let reference = input.reference.as_deref().map(|r| required_text("reference", r, 500)).transpose()?;
        let actor = actor(who, input.reason.as_deref())?;
        let amount = Money { amount: input.amount, currency };
        let (movement, replayed) = self.ledger.record_treasury(kind, &id, amount, reference, &actor).await?;
        if !replayed {
            tracing::info!(%kind, %currency, amount = input.amount, actor = %who.key_id, "treasury movement recorded");
        }
        Ok((movement, replayed))
    }

    /// Every currency's treasury.
    pub async fn treasuries(&self, who: &Principal) -> Result<Vec<TreasuryView>> {
        who.check(Permission::Read, None)?;
        let all = self.db.read(store::treasury::all).await?;
        Ok(all.iter().map(TreasuryView::new).collect())
    }

    /// A treasury's movements, oldest first.
    pub async fn treasury_transfers(
        &self,
        who: &Principal,
        q: TreasuryTransfersQuery,
    ) -> Result<Page<TreasuryTransferView>> {
        who.check(Permission::Read, None)?;
        let currency = q.currency.as_deref().map(currency).transpose()?;
        let query = PageQuery { limit: q.limit, cursor: q.cursor };
        let page = self
            .page(
                query,
                |t: &store::treasury::TreasuryTransferRow| t.id.clone(),
                move |conn, cursor, n| store::treasury::transfers(conn, currency.as_ref().map(|c| c.code()), cursor, n),
            )
            .await?;
        let data = page.data.iter().map(TreasuryTransferView::from_row).collect::<Result<_>>()?;
        Ok(Page { data, next_cursor: page.next_cursor })
    }
}

fn currency(code: &str) -> Result<Currency> {
    code.parse().map_err(|e: String| Error::validation(format!("currency: {e}")))
}
