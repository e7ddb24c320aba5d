//! The crypto every part shares: secrets that never print, and the one HMAC every signature
//! spendgate checks or makes is built on (processors' webhooks, approval links, Slack).

use std::fmt;

use hmac::{Hmac, KeyInit};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// A value that must never be printed: its `Debug` shows only whether it is set.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// HMAC-SHA256 under `key`.
pub fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Whether a signed timestamp is within `tolerance` seconds of now, either way. `abs_diff`: a
/// timestamp near i64's limits must not overflow the subtraction.
pub fn within(timestamp: i64, now: i64, tolerance: i64) -> bool {
    now.abs_diff(timestamp) <= tolerance.unsigned_abs()
}

#[cfg(test)]
mod tests {
    use hmac::Mac;

    use super::*;

    #[test]
    fn a_secret_never_prints_and_the_mac_is_rfc_4231s() {
        assert_eq!(format!("{:?}", Secret::new("whsec_very_secret")), "Secret(***)");
        // RFC 4231, test case 2.
        let mut m = mac(b"Jefe");
        m.update(b"what do ya want for nothing?");
        let tag = hex::encode(m.finalize().into_bytes());
        assert_eq!(tag, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(!within(i64::MIN, i64::MAX, 300) && within(1_000, 1_300, 300));
    }
}
