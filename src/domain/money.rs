//! Money is an integer count of minor units in an ISO 4217 currency; `f64` never touches it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

/// Largest amount taken in, in minor units: far above any real payment or balance, far below i64
/// overflow however many are added up.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// An ISO 4217 currency that has a minor unit (so X-codes such as XAU are refused).
/// Parsed in any case, always written upper-case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ToSchema)]
#[schema(value_type = String, example = "USD")]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub const USD: Currency = Currency(iso_currency::Currency::USD);
    pub const EUR: Currency = Currency(iso_currency::Currency::EUR);

    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// Digits after the decimal point: JPY 0, USD 2, BHD 3.
    pub fn exponent(self) -> u32 {
        // Only currencies with an exponent can be constructed.
        u32::from(self.0.exponent().unwrap_or(0))
    }
}

impl FromStr for Currency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        match iso_currency::Currency::from_code(&upper) {
            Some(c) if c.exponent().is_some() => Ok(Currency(c)),
            Some(_) => Err(format!("{upper} has no minor unit and cannot hold money")),
            None => Err(format!("unknown currency {s:?} (expected an ISO 4217 code such as USD)")),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An amount in minor units with its currency, as the processors write it:
/// `{"amount": 1250, "currency": "EUR"}` is EUR 12.50.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Money {
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    /// The amount in major units, as exact decimal text: `12.50` (EUR), `1250` (JPY), `1.250` (BHD).
    pub fn decimal(&self) -> String {
        let exp = self.currency.exponent();
        let sign = if self.amount < 0 { "-" } else { "" };
        let abs = self.amount.unsigned_abs();
        if exp == 0 {
            return format!("{sign}{abs}");
        }
        let scale = 10u64.pow(exp);
        format!("{sign}{}.{:0width$}", abs / scale, abs % scale, width = exp as usize)
    }
}

impl fmt::Display for Money {
    /// Major units for people: `12.50 EUR`, `1250 JPY`, `1.250 BHD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.decimal(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_parse_in_any_case_and_print_upper() {
        let eur: Currency = "eur".parse().unwrap();
        assert_eq!(eur.code(), "EUR");
        assert_eq!(serde_json::to_string(&eur).unwrap(), "\"EUR\"");
        assert_eq!(serde_json::from_str::<Currency>("\"jPy\"").unwrap().code(), "JPY");
    }

    #[test]
    fn exponents_follow_iso_4217() {
        assert_eq!("JPY".parse::<Currency>().unwrap().exponent(), 0);
        assert_eq!("USD".parse::<Currency>().unwrap().exponent(), 2);
        assert_eq!("BHD".parse::<Currency>().unwrap().exponent(), 3);
    }

    #[test]
    fn unknown_and_unitless_currencies_are_refused() {
        assert!("ABC".parse::<Currency>().unwrap_err().contains("unknown currency"));
        assert!("XAU".parse::<Currency>().unwrap_err().contains("no minor unit"));
        assert!("".parse::<Currency>().is_err());
    }

    #[test]
    fn money_displays_in_major_units() {
        let m = |amount, c: &str| Money { amount, currency: c.parse().unwrap() };
        assert_eq!(m(1250, "EUR").to_string(), "12.50 EUR");
        assert_eq!(m(5, "USD").to_string(), "0.05 USD");
        assert_eq!(m(1250, "JPY").to_string(), "1250 JPY");
        assert_eq!(m(1250, "BHD").to_string(), "1.250 BHD");
        assert_eq!(m(-1, "USD").to_string(), "-0.01 USD");
    }
}
