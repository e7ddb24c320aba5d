//! The words of changing a policy safely: where a version of a policy stands, and how a backtest
//! of one ended.

worded! {
    /// Where a version of a card's or agent's policy stands.
    pub enum PolicyState {
        /// The one decisions use now.
        Live = "live",
        /// Was live; a later version replaced it.
        Superseded = "superseded",
        /// Saved beside the live one; decides nothing (unless in shadow, where it is only compared).
        Draft = "draft",
        /// A draft put away without being promoted.
        Discarded = "discarded",
    }
}

worded! {
    /// How far a backtest has got.
    pub enum BacktestStatus {
        Running = "running",
        Done = "done",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}
