//! The rails money moves on. Each adapter translates between a counterpart's wire format and the
//! canonical `AuthRequest` / ledger movements; none holds a rule.

pub mod card;
pub mod usdc;
