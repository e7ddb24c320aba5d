//! `spendgate mcp`: the MCP server over stdio, for desktop and coding agents that start their tools
//! as programs. It holds no tool of its own: it relays each call to a spendgate server's `/mcp`
//! endpoint with the agent key it was given, so what the agent may do is decided there, once.

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt};

/// The stdio side's server: every request goes on to the HTTP endpoint.
struct Relay {
    upstream: RunningService<RoleClient, ()>,
}

fn upstream_failed(e: rmcp::service::ServiceError) -> ErrorData {
    ErrorData::internal_error(format!("the spendgate server did not answer: {e}"), None)
}

impl ServerHandler for Relay {
    fn get_info(&self) -> ServerConfig {
        // What the server said of itself when the relay connected.
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        if let Some(peer) = self.upstream.peer_info() {
            if let Some(server) = peer.server_info.clone() {
                info = info.with_server_info(server);
            }
            if let Some(instructions) = peer.instructions.clone() {
                info = info.with_instructions(instructions);
            }
        }
        info
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        self.upstream.list_tools(request).await.map_err(upstream_failed)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.upstream.call_tool_once(request).await.map_err(upstream_failed)
    }
}

/// Serves MCP on stdin and stdout until the client closes them, relaying to `server` (the base
/// URL of a spendgate server) as the agent key `key`.
pub async fn serve(server: &str, key: &str) -> anyhow::Result<()> {
    let url = format!("{}/mcp", server.trim_end_matches('/'));
    let config = StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header(key);
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let upstream = ().serve(transport).await.map_err(|e| anyhow::anyhow!("connecting to the MCP endpoint {url}: {e}"))?;
    let relay = Relay { upstream }.serve(rmcp::transport::stdio()).await?;
    relay.waiting().await?;
    Ok(())
}
