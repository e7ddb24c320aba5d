use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::access::Role;
use super::ids::{AgentId, KeyId};

/// An API key as listed: never the secret, only a prefix to recognise it by.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: KeyId,
    pub name: Option<String>,
    pub role: Role,
    pub agent_id: Option<AgentId>,
    /// The first characters of the secret, enough to tell keys apart.
    pub prefix: String,
    pub created_by: Option<KeyId>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<jiff::Timestamp>,
}

/// Secrets look like `sgk_` + 64 hex digits (256 random bits).
pub const SECRET_PREFIX: &str = "sgk_";

/// A fresh random secret.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

/// What is stored instead of the secret. A plain SHA-256 suffices: the secrets carry 256 random
/// bits, so there is nothing to brute-force that a slow hash would protect.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed_with_sha256() {
        let a = generate_secret();
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == 68);
        assert_ne!(a, generate_secret());
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
