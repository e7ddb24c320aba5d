//! A local x402 server to try the USDC rail on (docs/x402.md): `GET /v2/paid` answers 402 with an x402
//! v2 `PAYMENT-REQUIRED` for $0.25 in a test token on Base Sepolia, and with the resource once a
//! payment is attached whose EIP-712 signature, recipient, amount and validity check out (a local
//! facilitator; nothing goes on chain). `/v1/paid` speaks x402 v1; `?price=<atomic units>` sets the price.
//!
//! `cargo run --example x402_server [ADDRESS]` (default 127.0.0.1:4021).

#[path = "../tests/common/x402_server.rs"]
mod x402_server;

/// The token it asks to be paid in; spendgate pays it once `SPENDGATE_X402_ASSETS` names it.
const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

#[actix_web::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4021".into());
    let server = x402_server::X402Server::start_at(&addr, TOKEN).await;
    println!("x402 test server on {}: try {}/v2/paid (token {TOKEN} on eip155:84532)", server.base, server.base);
    std::future::pending::<()>().await;
}
