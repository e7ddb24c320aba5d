//! The domain's worded enums as TEXT columns in both databases: read back through `parse` (an
//! unknown word is a corrupt row, not a default), written as `as_str`. No data migration: the
//! words are the ones the columns always held.

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, Queryable};
use diesel::expression::AsExpression;
use diesel::sql_types::Text;

use crate::domain::audit::RecordKind;
use crate::domain::authorization::{NamedBy, Rail};
use crate::domain::backtest::{BacktestStatus, PolicyState};
use crate::domain::ledger::{HoldStatus, PaymentProtocol, PaymentStatus, Source, TransferKind, TreasuryKind};
use crate::domain::webhook::{DeliveryStatus, EndpointFormat, EventType};

macro_rules! stored_as_text {
    ($($t:ty),+) => {$(
        impl<DB: Backend> FromSql<Text, DB> for $t
        where
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                let text = String::from_sql(bytes)?;
                <$t>::parse(&text).ok_or_else(|| format!("not a {}: {text:?}", stringify!($t)).into())
            }
        }

        impl<DB: Backend> Queryable<Text, DB> for $t
        where
            $t: FromSql<Text, DB>,
        {
            type Row = Self;

            fn build(row: Self) -> deserialize::Result<Self> {
                Ok(row)
            }
        }

        // For a nullable column (`Option<$t>`), which diesel binds by value.
        impl<DB: Backend> diesel::serialize::ToSql<Text, DB> for $t
        where
            str: diesel::serialize::ToSql<Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut diesel::serialize::Output<'b, '_, DB>) -> diesel::serialize::Result {
                self.as_str().to_sql(out)
            }
        }

        impl AsExpression<Text> for $t {
            type Expression = <&'static str as AsExpression<Text>>::Expression;

            fn as_expression(self) -> Self::Expression {
                AsExpression::<Text>::as_expression(self.as_str())
            }
        }

        impl AsExpression<Text> for &$t {
            type Expression = <&'static str as AsExpression<Text>>::Expression;

            fn as_expression(self) -> Self::Expression {
                AsExpression::<Text>::as_expression(self.as_str())
            }
        }
    )+};
}

stored_as_text!(
    PaymentProtocol,
    HoldStatus,
    TransferKind,
    TreasuryKind,
    Source,
    PaymentStatus,
    Rail,
    NamedBy,
    PolicyState,
    BacktestStatus,
    RecordKind,
    EventType,
    DeliveryStatus,
    EndpointFormat
);
