//! Wallet keys: one secp256k1 key per agent, sealed at rest with AES-256-GCM under the master key.
//! The plaintext key lives only inside a `Wallet`, which zeroizes it when dropped and never prints it.

use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use alloy_primitives::{Address, B256, Signature};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k256::ecdsa::SigningKey;
use rand::RngCore;
use zeroize::Zeroizing;

use crate::domain::ids::AgentId;

/// Sealed keys start with the scheme they were sealed with, so a later scheme can sit beside it.
const SEALED_PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

/// `SPENDGATE_MASTER_KEY`: 32 bytes, base64.
pub struct MasterKey(Aes256Gcm);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WalletError {
    #[error("the master key must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    BadMasterKey,
    #[error("the wallet key of agent {0} does not open with this master key")]
    Sealed(String),
    #[error("could not sign: {0}")]
    Signing(String),
}

impl MasterKey {
    pub fn from_base64(encoded: &str) -> Result<MasterKey, WalletError> {
        let bytes = Zeroizing::new(BASE64.decode(encoded.trim()).map_err(|_| WalletError::BadMasterKey)?);
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| WalletError::BadMasterKey)?;
        Ok(MasterKey(cipher))
    }

    /// A new random master key, base64-encoded.
    pub fn generate_base64() -> Zeroizing<String> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        Zeroizing::new(BASE64.encode(bytes.as_ref()))
    }

    /// Seals the wallet's key, bound to its agent: a sealed key copied to another agent does not open.
    pub fn seal(&self, agent: &AgentId, wallet: &Wallet) -> String {
        let secret = Zeroizing::new(wallet.key.to_bytes());
        self.seal_bytes(agent.as_str().as_bytes(), secret.as_slice())
    }

    pub fn open(&self, agent: &AgentId, sealed: &str) -> Result<Wallet, WalletError> {
        let fail = || WalletError::Sealed(agent.to_string());
        let secret = self.open_bytes(agent.as_str().as_bytes(), sealed).ok_or_else(fail)?;
        Wallet::from_secret(&secret).ok_or_else(fail)
    }

    /// Seals any secret, bound to `context`: it opens only with the same master key and context.
    pub fn seal_bytes(&self, context: &[u8], secret: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let payload = Payload { msg: secret, aad: context };
        let sealed = self.0.encrypt(Nonce::from_slice(&nonce), payload).expect("AES-GCM seals any length we store");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", BASE64.encode(out))
    }

    /// None: not sealed by this master key for this context, or altered.
    pub fn open_bytes(&self, context: &[u8], sealed: &str) -> Option<Zeroizing<Vec<u8>>> {
        let bytes = sealed.strip_prefix(SEALED_PREFIX).and_then(|b| BASE64.decode(b).ok())?;
        if bytes.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let payload = Payload { msg: ciphertext, aad: context };
        self.0.decrypt(Nonce::from_slice(nonce), payload).ok().map(Zeroizing::new)
    }
}

/// An agent's key, in memory only while it signs or is exported.
pub struct Wallet {
    key: SigningKey,
    address: Address,
}

impl fmt::Debug for Wallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wallet({})", self.address)
    }
}

impl Wallet {
    pub fn generate() -> Wallet {
        loop {
            let mut secret = Zeroizing::new([0u8; 32]);
            rand::rng().fill_bytes(secret.as_mut());
            // Fails only for zero or a value above the curve order: about 2^-128 of draws.
            if let Some(wallet) = Wallet::from_secret(secret.as_ref()) {
                return wallet;
            }
        }
    }

    pub fn from_secret(secret: &[u8]) -> Option<Wallet> {
        let key = SigningKey::from_slice(secret).ok()?;
        let address = Address::from_public_key(key.verifying_key());
        Some(Wallet { key, address })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// The private key as 0x-hex, for an owner's export.
    pub fn export_hex(&self) -> Zeroizing<String> {
        let secret = Zeroizing::new(self.key.to_bytes());
        Zeroizing::new(format!("0x{}", hex::encode(secret.as_slice())))
    }

    /// Signs a 32-byte digest (RFC 6979, low s). The recovery id comes from the signing itself,
    /// so the signature recovers to this wallet (the EIP-3009 vectors check it); recovering it
    /// again on every payment would double the cost of signing.
    pub fn sign_hash(&self, digest: &B256) -> Result<Signature, WalletError> {
        let (sig, recid) =
            self.key.sign_prehash_recoverable(digest.as_slice()).map_err(|e| WalletError::Signing(e.to_string()))?;
        Ok(Signature::from((sig, recid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
    }

    #[test]
    fn sealed_keys_open_only_with_their_master_key_and_agent() {
        let (master, other) = (master(), master());
        let (agent, stranger) = (AgentId::generate(), AgentId::generate());
        let wallet = Wallet::generate();
        let sealed = master.seal(&agent, &wallet);
        assert!(!sealed.contains(&wallet.export_hex()[2..]), "the key is not stored in plaintext");
        assert_eq!(master.open(&agent, &sealed).unwrap().address(), wallet.address());
        assert_eq!(other.open(&agent, &sealed).unwrap_err(), WalletError::Sealed(agent.to_string()));
        assert!(master.open(&stranger, &sealed).is_err(), "bound to the agent");
        let mut tampered = sealed.clone();
        tampered.replace_range(10..11, if &sealed[10..11] == "A" { "B" } else { "A" });
        assert!(master.open(&agent, &tampered).is_err());
        assert!(master.open(&agent, "v1:").is_err());
        assert!(master.open(&agent, "garbage").is_err());
    }

    #[test]
    fn master_keys_must_be_32_bytes() {
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
        assert_eq!(format!("{:?}", master()), "MasterKey(***)");
    }

    #[test]
    fn wallets_print_only_their_address() {
        let wallet = Wallet::generate();
        let printed = format!("{wallet:?}");
        assert_eq!(printed, format!("Wallet({})", wallet.address()));
        assert!(!printed.contains(&wallet.export_hex()[2..]));
    }
}
