//! Amounts as people type them: `12.50`, `12.50 USD`, `1000 JPY`, in the currency's own decimals.

use rust_decimal::Decimal;
use serde_json::Value;

use crate::domain::money::Currency;

/// An amount typed by a person, in the currency's own decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    pub minor: i64,
    pub currency: Currency,
}

impl Amount {
    /// `text` is `12.50` or `12.50 USD`; the currency is the one in `text`, else `flag`, else `default`.
    pub fn parse(name: &str, text: &str, flag: Option<&str>, default: Currency) -> anyhow::Result<Amount> {
        let mut words = text.split_whitespace();
        let (number, code) = (words.next().unwrap_or_default(), words.next());
        anyhow::ensure!(
            words.next().is_none(),
            "{name} {text:?}: expected an amount and at most a currency, e.g. 12.50 USD"
        );
        let parse_currency = |c: &str| c.parse::<Currency>().map_err(|e| anyhow::anyhow!("{name}: {e}"));
        let currency = match (code, flag) {
            (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b) => {
                anyhow::bail!("{name} says {a} but --currency says {b}")
            }
            (Some(c), _) | (None, Some(c)) => parse_currency(c)?,
            (None, None) => default,
        };
        let value: Decimal = number.parse().map_err(|_| {
            anyhow::anyhow!(
                "{name} {number:?} is not an amount: write it in {currency}'s units, e.g. {}",
                example(currency)
            )
        })?;
        anyhow::ensure!(
            !value.is_sign_negative(),
            "{name} must not be negative (got {number}); amounts are written without a sign"
        );
        let exponent = currency.exponent();
        anyhow::ensure!(
            value.normalize().scale() <= exponent,
            "{name} {number} has more decimals than {currency} has ({exponent}), e.g. {}",
            example(currency)
        );
        let minor = value
            .checked_mul(Decimal::from(10i64.pow(exponent)))
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| anyhow::anyhow!("{name} {number} is too large"))?;
        Ok(Amount { minor, currency })
    }

    /// In major units with the currency's decimals, e.g. `12.50`.
    pub fn major(self) -> String {
        major(self.minor, self.currency)
    }
}

fn example(currency: Currency) -> String {
    major(1250 * 10i64.pow(currency.exponent()) / 100, currency)
}

pub(super) fn major(minor: i64, currency: Currency) -> String {
    Decimal::new(minor, currency.exponent()).to_string()
}

/// `{"amount": 1250, "currency": "USD"}` as `12.50 USD`.
pub(super) fn money(value: &Value) -> Option<String> {
    let currency: Currency = value["currency"].as_str()?.parse().ok()?;
    Some(format!("{} {currency}", major(value["amount"].as_i64()?, currency)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(text: &str) -> anyhow::Result<Amount> {
        Amount::parse("--amount", text, None, Currency::USD)
    }

    #[test]
    fn amounts_are_read_in_the_currencys_own_decimals() {
        assert_eq!(usd("12.50").unwrap().minor, 1250);
        assert_eq!(usd("12.5").unwrap().minor, 1250);
        assert_eq!(usd("12").unwrap().minor, 1200);
        let jpy = usd("1000 JPY").unwrap();
        assert_eq!((jpy.minor, jpy.currency.code()), (1000, "JPY"));
        let bhd = Amount::parse("--amount", "1.234", Some("bhd"), Currency::USD).unwrap();
        assert_eq!((bhd.minor, bhd.major()), (1234, "1.234".to_owned()));
        assert!(usd("12.505").unwrap_err().to_string().contains("more decimals than USD has (2)"));
        assert!(usd("10.5 JPY").unwrap_err().to_string().contains("more decimals than JPY has (0)"));
        assert!(usd("-5").unwrap_err().to_string().contains("must not be negative"));
        assert!(usd("twelve").unwrap_err().to_string().contains("e.g. 12.50"));
        assert!(usd("1e30").is_err() && usd("99999999999999999999").unwrap_err().to_string().contains("too large"));
        assert!(Amount::parse("--amount", "5 EUR", Some("USD"), Currency::USD).is_err());
    }
}
