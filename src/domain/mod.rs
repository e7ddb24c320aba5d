//! Plain types and rules with no I/O: what an agent, a card, a key and a policy are,
//! and what makes one valid. Nothing here knows about HTTP, SQL or the clock.

pub mod access;
pub mod agent;
pub mod approval;
pub mod authorization;
pub mod card;
pub mod catalog;
pub mod event;
pub mod ids;
pub mod key;
pub mod ledger;
pub mod money;
pub mod policy;
