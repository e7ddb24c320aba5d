//! What a spend report groups by and adds up.

worded! {
    /// A dimension of a spend report. The first three name what an authorization was for; the
    /// last three cut time into a series, in the report's time zone.
    pub enum GroupBy {
        Agent = "agent",
        /// The agent at the top of the agent's tree: a parent's total includes its sub-agents'.
        Root = "root",
        Department = "department",
        Card = "card",
        /// The card's label: the service the card pays.
        Service = "service",
        Trace = "trace",
        Rail = "rail",
        /// The merchant's name.
        Merchant = "merchant",
        Mcc = "mcc",
        Country = "country",
        Day = "day",
        Week = "week",
        Month = "month",
    }
}

impl GroupBy {
    pub fn is_time(self) -> bool {
        matches!(self, GroupBy::Day | GroupBy::Week | GroupBy::Month)
    }
}

/// Sums over authorizations, in minor units of one currency (the agents' cap currency until a
/// report converts them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SpendTotals {
    /// Captured, refunds not deducted.
    pub posted: i64,
    /// Authorized and still held.
    pub held: i64,
    pub refunded: i64,
    /// posted + held − refunded.
    pub spend: i64,
    /// Approved authorizations.
    pub approved: u64,
    /// Declined attempts, and what they asked for (0 for a decline made before conversion).
    pub declined: u64,
    pub declined_amount: i64,
}

impl SpendTotals {
    pub fn new(posted: i64, held: i64, refunded: i64, approved: u64, declined: u64, declined_amount: i64) -> Self {
        SpendTotals { posted, held, refunded, spend: posted + held - refunded, approved, declined, declined_amount }
    }

    pub fn add(&mut self, other: &SpendTotals) {
        self.posted += other.posted;
        self.held += other.held;
        self.refunded += other.refunded;
        self.spend += other.spend;
        self.approved += other.approved;
        self.declined += other.declined;
        self.declined_amount += other.declined_amount;
    }

    /// Each amount through `convert` (counts stay).
    pub fn map_amounts<E>(&self, mut convert: impl FnMut(i64) -> Result<i64, E>) -> Result<SpendTotals, E> {
        Ok(SpendTotals::new(
            convert(self.posted)?,
            convert(self.held)?,
            convert(self.refunded)?,
            self.approved,
            self.declined,
            convert(self.declined_amount)?,
        ))
    }
}

/// One group of the database's answer: up to three dimensions' values (a time dimension as the
/// quarter hour, UTC, counted from the epoch, so any time zone's days can be made of them) and the
/// totals of one cap currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendCell {
    pub keys: [Option<String>; 3],
    pub currency: String,
    pub totals: SpendTotals,
}

/// The width of a time dimension's cell: every time zone's offset is a whole number of them.
pub const QUARTER_HOUR_MS: i64 = 15 * 60 * 1000;
