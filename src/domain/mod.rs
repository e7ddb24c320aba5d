//! Plain types and rules with no I/O: what an agent, a card, a key and a policy are,
//! and what makes one valid. Nothing here knows about HTTP, SQL or the clock.

/// An enum whose variants are stored and shown as fixed words: `as_str`, `parse` and `ALL`.
macro_rules! worded {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod access;
pub mod agent;
pub mod approval;
pub mod audit;
pub mod authorization;
pub mod backtest;
pub mod card;
pub mod catalog;
pub mod event;
pub mod ids;
pub mod key;
pub mod ledger;
pub mod money;
pub mod policy;
pub mod report;
pub mod webhook;
