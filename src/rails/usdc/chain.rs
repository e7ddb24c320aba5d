//! The chain, read: a token's balance at an address, the head, and the token's transfers into
//! agents' wallets, through the JSON-RPC endpoint the settings name for each network. Nothing here
//! signs or sends a transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use alloy_provider::{Provider, ProviderBuilder, RootProvider};
use alloy_rpc_types_eth::{BlockId, BlockNumberOrTag, Filter, TransactionRequest};
use alloy_sol_types::{SolCall, SolEvent, sol};

use crate::error::{Error, ErrorCode, Result};

sol! {
    event Transfer(address indexed from, address indexed to, uint256 value);
    function balanceOf(address owner) external view returns (uint256);
}

/// At most this many addresses in one log query's topic: providers cap a filter's size.
const ADDRESSES_PER_QUERY: usize = 200;

/// `SPENDGATE_CHAIN_RPC` and its companions: how the wallets' networks are read.
#[derive(Debug, Clone)]
pub struct ChainSettings {
    /// Network (CAIP-2) → its JSON-RPC endpoint. A network without one is not read.
    pub rpc: Vec<(&'static str, reqwest::Url)>,
    /// A deposit is credited once its block has this many blocks on top of it.
    pub confirmations: u64,
    /// How often the networks are read for deposits.
    pub poll: Duration,
    /// With no cursor yet, the first scan starts this many blocks below the confirmed head.
    pub first_scan_blocks: u64,
    /// The widest block range asked for in one log query.
    pub blocks_per_query: u64,
    /// How often every wallet is reconciled (and an alert raised where it disagrees).
    pub reconcile_every: Duration,
    pub timeout: Duration,
}

/// `<network>=<url>,…` (network as `eip155:8453` or `base`), the URLs http or https.
pub fn parse_rpc(spec: &str) -> std::result::Result<Vec<(&'static str, reqwest::Url)>, String> {
    let mut rpc: Vec<(&'static str, reqwest::Url)> = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (network, url) =
            entry.split_once('=').ok_or_else(|| format!("{:?} is not <network>=<url>", redact(entry)))?;
        let network = super::x402::Network::find(network.trim())
            .ok_or_else(|| format!("unknown network {network:?} (eip155:8453, eip155:84532, base, base-sepolia)"))?;
        let url: reqwest::Url =
            url.trim().parse().map_err(|_| format!("the URL for {} does not parse", network.caip2))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("the URL for {} must be http or https", network.caip2));
        }
        if rpc.iter().any(|(n, _)| *n == network.caip2) {
            return Err(format!("{} is named twice", network.caip2));
        }
        rpc.push((network.caip2, url));
    }
    Ok(rpc)
}

/// An RPC URL often carries an API key in its path or query: only its scheme and host are shown.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url.trim()) {
        Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or("?")),
        Err(_) => "<unparsable>".to_owned(),
    }
}

/// One token transfer into a watched address, as a log of a mined block.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenTransfer {
    pub token: Address,
    pub from: Address,
    pub to: Address,
    pub value: U256,
    pub block: u64,
    pub block_hash: B256,
    pub tx_hash: B256,
    pub log_index: u64,
}

/// The networks spendgate reads, by CAIP-2 id.
#[derive(Clone, Default)]
pub struct Chains {
    nodes: HashMap<&'static str, Chain>,
}

impl Chains {
    pub fn new(settings: &ChainSettings) -> anyhow::Result<Chains> {
        // The operator names these URLs (often a private node): no destination rules apply.
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .build()
            .map_err(|e| anyhow::anyhow!("JSON-RPC HTTP client: {e}"))?;
        let nodes = settings
            .rpc
            .iter()
            .map(|(network, url)| {
                let provider = ProviderBuilder::default().connect_reqwest(http.clone(), url.clone());
                let chain_id = super::x402::Network::find(network).map_or(0, |n| n.chain_id);
                (*network, Chain { network, chain_id, provider, checked: Arc::default() })
            })
            .collect();
        Ok(Chains { nodes })
    }

    pub fn get(&self, network: &str) -> Option<&Chain> {
        self.nodes.get(network)
    }

    pub fn all(&self) -> impl Iterator<Item = &Chain> {
        self.nodes.values()
    }
}

#[derive(Clone)]
pub struct Chain {
    pub network: &'static str,
    chain_id: u64,
    provider: RootProvider,
    /// Set once the endpoint was seen to serve `chain_id`.
    checked: Arc<tokio::sync::OnceCell<()>>,
}

impl Chain {
    /// Fails unless the endpoint serves the network it is named for (asked until it once does): a
    /// URL of another chain would credit deposits, and clear payments, that never happened here.
    pub async fn check_chain_id(&self) -> Result<()> {
        let ask = || async {
            let served = self.provider.get_chain_id().await.map_err(|e| self.unavailable(e))?;
            if served != self.chain_id {
                return Err(Error::coded(
                    ErrorCode::ChainUnavailable,
                    format!("the JSON-RPC endpoint for {} serves chain {served}", self.network),
                ));
            }
            Ok(())
        };
        self.checked.get_or_try_init(ask).await.map(drop)
    }

    pub async fn head(&self) -> Result<u64> {
        self.provider.get_block_number().await.map_err(|e| self.unavailable(e))
    }

    /// The hash of the canonical block at `number`, if there is one yet.
    pub async fn block_hash(&self, number: u64) -> Result<Option<B256>> {
        let block = self.provider.get_block_by_number(BlockNumberOrTag::Number(number)).await;
        Ok(block.map_err(|e| self.unavailable(e))?.map(|b| b.header.hash))
    }

    pub async fn has_code(&self, address: Address) -> Result<bool> {
        let code = self.provider.get_code_at(address).await.map_err(|e| self.unavailable(e))?;
        Ok(!code.is_empty())
    }

    /// The token balance of `owner` at `block` (None: the latest).
    pub async fn balance(&self, token: Address, owner: Address, block: Option<u64>) -> Result<U256> {
        let call = balanceOfCall { owner }.abi_encode();
        let request = TransactionRequest::default().to(token).input(alloy_primitives::Bytes::from(call).into());
        let at = block.map_or(BlockId::latest(), BlockId::number);
        let answer = self.provider.call(request).block(at).await.map_err(|e| self.unavailable(e))?;
        balanceOfCall::abi_decode_returns(&answer).map_err(|_| {
            Error::coded(
                ErrorCode::ChainUnavailable,
                format!("{token} on {} did not answer balanceOf (is it the token's address?)", self.network),
            )
        })
    }

    /// Transfers of `tokens` into any of `to` in blocks `from..=until`, in chain order.
    pub async fn transfers_into(
        &self,
        tokens: &[Address],
        to: &[Address],
        from: u64,
        until: u64,
    ) -> Result<Vec<TokenTransfer>> {
        let mut found = Vec::new();
        for addresses in to.chunks(ADDRESSES_PER_QUERY) {
            let topics: Vec<B256> = addresses.iter().map(|a| a.into_word()).collect();
            let filter = Filter::new()
                .address(tokens.to_vec())
                .event_signature(Transfer::SIGNATURE_HASH)
                .topic2(topics)
                .from_block(from)
                .to_block(until);
            for log in self.provider.get_logs(&filter).await.map_err(|e| self.unavailable(e))? {
                // A log the node marks removed, or without its place in the chain, is no deposit.
                if log.removed {
                    continue;
                }
                let (Some(block), Some(block_hash), Some(tx_hash), Some(log_index)) =
                    (log.block_number, log.block_hash, log.transaction_hash, log.log_index)
                else {
                    continue;
                };
                let Ok(event) = Transfer::decode_log_data(log.data()) else { continue };
                found.push(TokenTransfer {
                    token: log.address(),
                    from: event.from,
                    to: event.to,
                    value: event.value,
                    block,
                    block_hash,
                    tx_hash,
                    log_index,
                });
            }
        }
        found.sort_by_key(|t| (t.block, t.log_index));
        Ok(found)
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> Error {
        // The error may quote the URL, which may carry a key: the network names the endpoint.
        let e = e.to_string();
        let why = if e.contains("://") { "the request failed" } else { e.as_str() };
        Error::coded(
            ErrorCode::ChainUnavailable,
            format!("the JSON-RPC endpoint for {} could not be read: {why}", self.network),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use actix_web::{App, HttpResponse, HttpServer, web};

    use super::*;

    /// A JSON-RPC endpoint that answers `eth_chainId` with whatever `served` holds.
    fn endpoint(served: Arc<AtomicU64>) -> reqwest::Url {
        let server = HttpServer::new(move || {
            let served = served.clone();
            App::new().default_service(web::to(move |body: web::Json<serde_json::Value>| {
                let id = served.load(Ordering::SeqCst);
                async move {
                    HttpResponse::Ok()
                        .json(serde_json::json!({"jsonrpc": "2.0", "id": body["id"], "result": format!("0x{id:x}")}))
                }
            }))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let url = format!("http://{}/", server.addrs()[0]).parse().unwrap();
        actix_web::rt::spawn(server.run());
        url
    }

    #[actix_web::test]
    async fn an_endpoint_of_another_chain_is_refused_until_it_serves_the_one_named() {
        crate::install_tls();
        let served = Arc::new(AtomicU64::new(1));
        let settings = ChainSettings {
            rpc: vec![("eip155:84532", endpoint(served.clone()))],
            confirmations: 1,
            poll: Duration::from_secs(1),
            first_scan_blocks: 0,
            blocks_per_query: 1,
            reconcile_every: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        };
        let chains = Chains::new(&settings).unwrap();
        let chain = chains.get("eip155:84532").unwrap();
        let refused = chain.check_chain_id().await.unwrap_err().to_string();
        assert!(refused.contains("serves chain 1"), "{refused}");
        served.store(84532, Ordering::SeqCst);
        chain.check_chain_id().await.unwrap();
        // Once seen to serve the chain, the endpoint is not asked again before every read.
        served.store(1, Ordering::SeqCst);
        chain.check_chain_id().await.unwrap();
    }

    #[test]
    fn rpc_settings_name_known_networks_once_and_hide_their_keys() {
        let rpc = parse_rpc("base=https://base.example/v2/KEY, eip155:84532=http://127.0.0.1:8545").unwrap();
        assert_eq!(rpc.len(), 2);
        assert_eq!(rpc[0].0, "eip155:8453");
        assert_eq!(rpc[1].1.as_str(), "http://127.0.0.1:8545/");
        assert!(parse_rpc("").unwrap().is_empty());
        assert!(parse_rpc("mainnet=https://x").unwrap_err().contains("unknown network"));
        assert!(parse_rpc("base=ftp://x").unwrap_err().contains("http or https"));
        assert!(parse_rpc("base=https://a,eip155:8453=https://b").unwrap_err().contains("twice"));
        let error = parse_rpc("https://base.example/v2/KEY").unwrap_err();
        assert!(!error.contains("KEY"), "{error}");
        assert_eq!(redact("https://base.example/v2/KEY?k=1"), "https://base.example/…");
    }
}
