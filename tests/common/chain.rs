//! A local chain: a hardhat node from npm (chain id 84532, as Base Sepolia's) with the test token
//! of `tests/chain/TestUSD.sol` (compiled by solc-js from npm), driven over JSON-RPC the way a
//! sender, a facilitator or a block producer would: minting, transfers, mining, and snapshots
//! reverted (a re-org).

use alloy_primitives::{Address, B256, Signature, U256};
use alloy_sol_types::{SolCall, sol};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::node;

sol! {
    function mint(address to, uint256 value);
    function transfer(address to, uint256 value) returns (bool);
    function balanceOf(address owner) returns (uint256);
    function transferWithAuthorization(
        address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce,
        uint8 v, bytes32 r, bytes32 s
    );
}

/// The running node, stopped when dropped; its JSON-RPC client is `self.rpc` (and `Deref`).
pub struct LocalChain {
    pub rpc: ChainRpc,
    _node: node::Running,
}

/// A JSON-RPC client of the local chain, as many as a test needs.
#[derive(Clone)]
pub struct ChainRpc {
    pub url: String,
    pub token: Address,
    /// An account of the node's own, unlocked, with ether: it deploys, mints and settles.
    pub minter: String,
    http: reqwest::Client,
}

impl std::ops::Deref for LocalChain {
    type Target = ChainRpc;
    fn deref(&self) -> &ChainRpc {
        &self.rpc
    }
}

impl LocalChain {
    pub fn start() -> LocalChain {
        let home = node::node_with(&["hardhat@2.29.1", "solc@0.8.37"]);
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/chain/TestUSD.sol");
        let running = node::start_script(&home, "tests/chain/chain.mjs", &[("SOURCE", source)]);
        let text = |key: &str| running.first[key].as_str().expect("chain.mjs names it").to_owned();
        let token: Address = text("token").parse().unwrap();
        // The node's first deployment: the address the tests' configuration and x402 server name.
        assert_eq!(token, super::TEST_TOKEN.parse::<Address>().unwrap(), "the token is the test token");
        let rpc = ChainRpc { url: text("rpc"), token, minter: text("minter"), http: super::http_client() };
        LocalChain { rpc, _node: running }
    }
}

impl ChainRpc {
    /// `SPENDGATE_CHAIN_RPC` for this chain.
    pub fn setting(&self) -> String {
        format!("eip155:84532={}", self.url)
    }

    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let answer: Value =
            self.http.post(&self.url).json(&body).send().await.unwrap().json().await.expect("a JSON-RPC answer");
        match answer.get("error") {
            Some(error) => Err(error.to_string()),
            None => Ok(answer["result"].clone()),
        }
    }

    async fn send(&self, from: &str, data: Vec<u8>) -> Result<String, String> {
        let tx = json!({"from": from, "to": self.token, "data": format!("0x{}", hex::encode(data))});
        let hash = self.call("eth_sendTransaction", json!([tx])).await?;
        let receipt = self.call("eth_getTransactionReceipt", json!([hash])).await?;
        if receipt["status"] != "0x1" {
            return Err(format!("reverted: {receipt}"));
        }
        Ok(hash.as_str().unwrap().to_owned())
    }

    /// New tokens into `to`, in a block of their own: the transaction's hash.
    pub async fn mint(&self, to: &str, value: u64) -> String {
        let call = mintCall { to: to.parse().unwrap(), value: U256::from(value) };
        self.send(&self.minter, call.abi_encode()).await.expect("mint")
    }

    /// A transfer out of `from`'s own account, sent as that account (the node impersonates it):
    /// money leaving a wallet without spendgate.
    pub async fn transfer_as(&self, from: &str, to: &str, value: u64) {
        self.call("hardhat_impersonateAccount", json!([from])).await.unwrap();
        self.call("hardhat_setBalance", json!([from, "0x56BC75E2D63100000"])).await.unwrap();
        let call = transferCall { to: to.parse().unwrap(), value: U256::from(value) };
        self.send(from, call.abi_encode()).await.expect("transfer");
    }

    pub async fn balance(&self, owner: &str) -> U256 {
        let data = balanceOfCall { owner: owner.parse().unwrap() }.abi_encode();
        let tx = json!({"to": self.token, "data": format!("0x{}", hex::encode(data))});
        let answer = self.call("eth_call", json!([tx, "latest"])).await.unwrap();
        answer.as_str().unwrap().parse::<U256>().unwrap()
    }

    pub async fn mine(&self, blocks: u64) {
        self.call("hardhat_mine", json!([format!("0x{blocks:x}")])).await.unwrap();
    }

    pub async fn head(&self) -> u64 {
        let n = self.call("eth_blockNumber", json!([])).await.unwrap();
        u64::from_str_radix(n.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    /// The chain as it is now, to return to with `revert`.
    pub async fn snapshot(&self) -> Value {
        self.call("evm_snapshot", json!([])).await.unwrap()
    }

    /// Drops every block since the snapshot: the blocks mined next take their heights (a re-org).
    pub async fn revert(&self, snapshot: Value) {
        assert_eq!(self.call("evm_revert", json!([snapshot])).await.unwrap(), true);
    }

    /// Settles an x402 v2 payment header (`exact`, EIP-3009) on the chain, as a facilitator
    /// would: the transaction's hash, or why the token refused it.
    pub async fn settle(&self, header: &str) -> Result<String, String> {
        let payload: Value = serde_json::from_slice(&BASE64.decode(header).unwrap()).unwrap();
        let auth = &payload["payload"]["authorization"];
        let text = |key: &str| auth[key].as_str().unwrap().to_owned();
        let signature: Signature = payload["payload"]["signature"].as_str().unwrap().parse().unwrap();
        let call = transferWithAuthorizationCall {
            from: text("from").parse().unwrap(),
            to: text("to").parse().unwrap(),
            value: text("value").parse().unwrap(),
            validAfter: text("validAfter").parse().unwrap(),
            validBefore: text("validBefore").parse().unwrap(),
            nonce: text("nonce").parse::<B256>().unwrap(),
            v: 27 + u8::from(signature.v()),
            r: signature.r().into(),
            s: signature.s().into(),
        };
        self.send(&self.minter, call.abi_encode()).await
    }
}
