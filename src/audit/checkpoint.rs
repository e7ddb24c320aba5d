//! Checkpoints: every agent's chain head at a moment, digested and optionally signed, so that an
//! operator can keep them outside the database. A chain rewritten or cut short after a checkpoint
//! no longer passes through its head.
//!
//! `digest = SHA-256(JSON {"created_at", "heads": [{"agent_id", "length", "hash"}, …]})`, compact, in
//! that order, heads by agent id; the signature is EIP-191 (`personal_sign`) over the digest's 64
//! hex digits, so any Ethereum tool can check it against `signer`.

use alloy_primitives::{Address, Signature, eip191_hash_message};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::chain::sha256;

/// One chain's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainHead {
    pub agent_id: String,
    /// How many links the chain had.
    pub length: i64,
    /// The last link's hash (hex), or the genesis hash of an empty chain.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub id: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub heads: Vec<ChainHead>,
    /// SHA-256 (hex) of `created_at` and `heads`, as the module documentation says.
    pub digest: String,
    /// The address whose key signed the digest, when the server has one.
    pub signer: Option<String>,
    /// EIP-191 signature (0x-hex, 65 bytes) of the digest's hex text.
    pub signature: Option<String>,
}

#[derive(Serialize)]
struct Digested<'a> {
    created_at: &'a str,
    heads: &'a [ChainHead],
}

/// What is wrong with a checkpoint someone hands back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    #[error("the checkpoint's digest is not the digest of its time and heads")]
    Digest,
    #[error("the checkpoint's signature is not {0}'s")]
    Signature(String),
    #[error("the checkpoint has a signature without a signer, or a signer without a signature")]
    Unpaired,
}

pub fn digest(created_at: &str, heads: &[ChainHead]) -> String {
    let json = serde_json::to_vec(&Digested { created_at, heads }).expect("strings and integers serialize");
    hex::encode(sha256(&json))
}

impl Checkpoint {
    pub fn new(id: String, created_at: String, heads: Vec<ChainHead>, signer: Option<&CheckpointSigner>) -> Self {
        let digest = digest(&created_at, &heads);
        let (signer, signature) = match signer {
            Some(s) => (Some(s.address.to_checksum(None)), Some(s.sign(&digest))),
            None => (None, None),
        };
        Checkpoint { id, created_at, heads, digest, signer, signature }
    }

    /// The digest is the digest of what the checkpoint says, and a signature recovers to its signer.
    pub fn check(&self) -> Result<(), Invalid> {
        if digest(&self.created_at, &self.heads) != self.digest {
            return Err(Invalid::Digest);
        }
        match (&self.signer, &self.signature) {
            (None, None) => Ok(()),
            (Some(signer), Some(signature)) => {
                let wrong = || Invalid::Signature(signer.clone());
                let expected: Address = signer.parse().map_err(|_| wrong())?;
                let bytes = hex::decode(signature.trim_start_matches("0x")).map_err(|_| wrong())?;
                let signature = Signature::from_raw(&bytes).map_err(|_| wrong())?;
                let recovered = signature.recover_address_from_msg(self.digest.as_bytes()).map_err(|_| wrong())?;
                if recovered == expected { Ok(()) } else { Err(wrong()) }
            }
            _ => Err(Invalid::Unpaired),
        }
    }
}

/// The server's checkpoint key.
pub struct CheckpointSigner {
    key: SigningKey,
    pub address: Address,
}

impl CheckpointSigner {
    /// A secp256k1 private key as 64 hex digits, 0x or not.
    pub fn from_hex(text: &str) -> Option<CheckpointSigner> {
        let bytes = hex::decode(text.trim().trim_start_matches("0x")).ok()?;
        let key = SigningKey::from_slice(&bytes).ok()?;
        let address = Address::from_private_key(&key);
        Some(CheckpointSigner { key, address })
    }

    fn sign(&self, digest: &str) -> String {
        let hash = eip191_hash_message(digest.as_bytes());
        let (sig, recid) = self.key.sign_prehash_recoverable(hash.as_slice()).expect("a 32-byte prehash signs");
        format!("0x{}", hex::encode(Signature::from((sig, recid)).as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads() -> Vec<ChainHead> {
        vec![ChainHead { agent_id: "agt_1".into(), length: 3, hash: "ab".repeat(32) }]
    }

    #[test]
    fn a_signed_checkpoint_checks_and_any_change_is_caught() {
        // Hardhat's first account: a key known everywhere, so the address is known too.
        let key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        let signer = CheckpointSigner::from_hex(key).unwrap();
        assert_eq!(signer.address.to_checksum(None), "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
        let cp = Checkpoint::new("ckp_1".into(), "2026-12-06T12:00:00Z".into(), heads(), Some(&signer));
        cp.check().unwrap();

        let mut later = cp.clone();
        later.heads[0].length = 2;
        assert_eq!(later.check(), Err(Invalid::Digest));
        let mut other = cp.clone();
        other.signer = Some("0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into());
        assert!(matches!(other.check(), Err(Invalid::Signature(_))));
        let mut bare = cp.clone();
        bare.signature = None;
        assert_eq!(bare.check(), Err(Invalid::Unpaired));
    }

    #[test]
    fn the_digest_is_of_the_documented_json() {
        let cp = Checkpoint::new("ckp_1".into(), "2026-12-06T12:00:00Z".into(), heads(), None);
        let json = format!(
            r#"{{"created_at":"2026-12-06T12:00:00Z","heads":[{{"agent_id":"agt_1","length":3,"hash":"{}"}}]}}"#,
            "ab".repeat(32)
        );
        assert_eq!(cp.digest, hex::encode(sha256(json.as_bytes())));
        assert_eq!((cp.signer, cp.signature), (None, None));
    }
}
