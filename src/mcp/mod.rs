//! The MCP server: what an agent does with spendgate, as tools a model calls (`tools`), answered in
//! words it acts on (`words`). It is served over Streamable HTTP at `/mcp`, where the agent key is
//! the bearer token (`http::mcp`), and over stdio by `spendgate mcp`, which relays every call to
//! that endpoint with the key it was given (`stdio`): one set of tools, one permission check.

pub mod stdio;
mod tools;
mod words;

use std::sync::Arc;

use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use crate::admin::Admin;
use crate::approvals::Approvals;
use crate::rails::usdc::Usdc;
pub use tools::AgentTools;

/// The Streamable HTTP endpoint's service.
pub type Endpoint = StreamableHttpService<AgentTools, NeverSessionManager>;

/// Stateless: each POST is answered on its own (with JSON, not a stream), so any node behind a
/// load balancer serves any call and nothing is kept between them.
pub fn endpoint(admin: Admin, usdc: Usdc, approvals: Approvals) -> Endpoint {
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // The bearer key authenticates each call; the Host check guards servers that trust any
        // local caller, which spendgate does not.
        .disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(AgentTools::new(admin.clone(), usdc.clone(), approvals.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}
