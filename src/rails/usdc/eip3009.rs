//! EIP-3009 `TransferWithAuthorization`, signed with EIP-712: what an x402 `exact` payment on an
//! EVM network carries. The domain's name and version come from the payment requirement (USDC is
//! "USD Coin" on Base mainnet but "USDC" on Base Sepolia: a wrong name is a signature no one accepts).

use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct, eip712_domain, sol};
use serde::Serialize;

use super::wallet::{Wallet, WalletError};

sol! {
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// The token contract's EIP-712 domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    pub name: String,
    pub version: String,
    pub chain_id: u64,
    pub verifying_contract: Address,
}

impl Domain {
    fn eip712(&self) -> Eip712Domain {
        eip712_domain! {
            name: self.name.clone(),
            version: self.version.clone(),
            chain_id: self.chain_id,
            verifying_contract: self.verifying_contract,
        }
    }
}

/// The authorization as x402 puts it on the wire: numbers as decimal strings, nonce as 0x-hex.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub from: String,
    pub to: String,
    pub value: String,
    pub valid_after: String,
    pub valid_before: String,
    pub nonce: String,
}

/// What to authorize; `nonce` is 32 random bytes for each payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub valid_after: u64,
    pub valid_before: u64,
    pub nonce: B256,
}

impl Transfer {
    pub fn digest(&self, domain: &Domain) -> B256 {
        let message = TransferWithAuthorization {
            from: self.from,
            to: self.to,
            value: self.value,
            validAfter: U256::from(self.valid_after),
            validBefore: U256::from(self.valid_before),
            nonce: self.nonce,
        };
        message.eip712_signing_hash(&domain.eip712())
    }

    /// The signature (0x-hex of r ‖ s ‖ v, v = 27 or 28) and the authorization it signs.
    pub fn sign(&self, wallet: &Wallet, domain: &Domain) -> Result<(String, Authorization), WalletError> {
        if wallet.address() != self.from {
            return Err(WalletError::Signing("the transfer is not from this wallet".into()));
        }
        let signature = wallet.sign_hash(&self.digest(domain))?;
        let authorization = Authorization {
            from: self.from.to_checksum(None),
            to: self.to.to_checksum(None),
            value: self.value.to_string(),
            valid_after: self.valid_after.to_string(),
            valid_before: self.valid_before.to_string(),
            nonce: self.nonce.to_string(),
        };
        Ok((format!("0x{}", hex::encode(signature.as_bytes())), authorization))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Made by viem's `hashTypedData` and `signTypedData`, for Base mainnet's and Base Sepolia's USDC.
    const VECTORS: &str = include_str!("../../../tests/vectors/eip3009_transfer_with_authorization.json");

    fn text<'a>(v: &'a Value, key: &str) -> &'a str {
        v[key].as_str().unwrap_or_else(|| panic!("{key} missing"))
    }

    #[test]
    fn digests_and_signatures_equal_viems() {
        let vectors: Value = serde_json::from_str(VECTORS).unwrap();
        let cases = vectors["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        for case in cases {
            let d = &case["domain"];
            let domain = Domain {
                name: text(d, "name").into(),
                version: text(d, "version").into(),
                chain_id: d["chainId"].as_u64().unwrap(),
                verifying_contract: text(d, "verifyingContract").parse().unwrap(),
            };
            let m = &case["message"];
            let transfer = Transfer {
                from: text(m, "from").parse().unwrap(),
                to: text(m, "to").parse().unwrap(),
                value: text(m, "value").parse().unwrap(),
                valid_after: text(m, "validAfter").parse().unwrap(),
                valid_before: text(m, "validBefore").parse().unwrap(),
                nonce: text(m, "nonce").parse().unwrap(),
            };
            assert_eq!(transfer.digest(&domain).to_string(), text(case, "eip712_digest"), "{}", text(case, "network"));
            let secret = hex::decode(text(case, "private_key").trim_start_matches("0x")).unwrap();
            let wallet = Wallet::from_secret(&secret).unwrap();
            assert_eq!(wallet.address().to_checksum(None), text(case, "from"));
            let (signature, authorization) = transfer.sign(&wallet, &domain).unwrap();
            assert_eq!(signature, text(case, "signature"));
            assert_eq!(serde_json::to_value(&authorization).unwrap(), *m, "the wire form equals the signed message");
        }
    }

    #[test]
    fn the_domain_name_changes_the_digest() {
        let vectors: Value = serde_json::from_str(VECTORS).unwrap();
        let case = &vectors["cases"][0];
        let m = &case["message"];
        let transfer = Transfer {
            from: text(m, "from").parse().unwrap(),
            to: text(m, "to").parse().unwrap(),
            value: U256::from(10_000),
            valid_after: 1_767_225_000,
            valid_before: 1_767_225_660,
            nonce: text(m, "nonce").parse().unwrap(),
        };
        let domain = |name: &str| Domain {
            name: name.into(),
            version: "2".into(),
            chain_id: 8453,
            verifying_contract: text(&case["domain"], "verifyingContract").parse().unwrap(),
        };
        assert_eq!(transfer.digest(&domain("USD Coin")).to_string(), text(case, "eip712_digest"));
        assert_ne!(transfer.digest(&domain("USDC")), transfer.digest(&domain("USD Coin")));
        let other = Wallet::generate();
        assert!(transfer.sign(&other, &domain("USD Coin")).is_err(), "only the `from` wallet signs");
    }
}
