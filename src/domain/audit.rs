//! The audit chain's words: what a link names, and how a chain can be broken (`audit::chain`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

worded! {
    /// What a link's record is.
    pub enum RecordKind {
        Authorization = "authorization",
        Transfer = "transfer",
        Event = "event",
        /// A movement of a treasury, in its own chain.
        TreasuryTransfer = "treasury_transfer",
    }
}

worded! {
    /// How a chain is broken.
    pub enum Problem {
        /// A link's position is not the one after the link before it: a link was deleted or moved.
        LinkMissing = "link_missing",
        /// A link's hash is not the hash of the link before it and its content hash: a link was
        /// changed, or links were reordered.
        LinkAltered = "link_altered",
        /// The record a link names is gone.
        RecordMissing = "record_missing",
        /// The record differs from what its last write hashed.
        RecordAltered = "record_altered",
        /// The record is at an earlier write than a later link of it says.
        RecordRolledBack = "record_rolled_back",
        /// A record no link names: written behind spendgate's back, or its link was removed.
        RecordUnlinked = "record_unlinked",
        /// The agent's row does not end its chain where the links end: links were cut off or added.
        HeadMismatch = "head_mismatch",
        /// The agent's balance on its row is not what its records add up to.
        BalanceMismatch = "balance_mismatch",
        /// The chain does not pass through a checkpoint's head: rewritten or cut off since.
        CheckpointMismatch = "checkpoint_mismatch",
    }
}

/// The first broken link of an agent's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Break {
    pub agent_id: String,
    /// The link's position (1 is the first); for an unlinked record, the position its row claims.
    pub n: i64,
    pub problem: Problem,
    pub record_kind: Option<RecordKind>,
    pub record_id: Option<String>,
    pub detail: String,
}
