//! The command-line client: talks to a running server over the admin API, printing tables for
//! people and JSON (`--json`) for scripts. Every route a person uses day to day has a command.

mod amount;
mod render;
pub mod simulate;

pub use amount::Amount;
pub use render::describe_outcome;
use render::{View, ids, render};

use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::config::Config;
use crate::domain::money::Currency;
use simulate::{Sale, SaleArgs};

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(long, global = true, env = "SPENDGATE_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API key (`sgk_…`).
    #[arg(long, global = true, env = "SPENDGATE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Print only ids (of what was made or shown, or of each row), for scripts:
    /// `CARD=$(spendgate cards issue … --quiet)`.
    #[arg(long, short, global = true)]
    quiet: bool,
}

/// `spendgate mcp`: stdout carries the protocol, so nothing else may be printed there.
pub fn mcp(client: ClientArgs) -> anyhow::Result<()> {
    let key =
        client.api_key.ok_or_else(|| anyhow::anyhow!("give the agent's key with --api-key or SPENDGATE_API_KEY"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(crate::mcp::stdio::serve(&client.url, &key))
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; the secret is printed once.
    Create {
        /// owner, manager, operator or agent.
        #[arg(long)]
        role: String,
        /// The agent an `agent` key is scoped to.
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    List,
    /// Revoke a key; it fails at once.
    Revoke {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentsCommand {
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        department: Option<String>,
        /// A policy document as JSON, or @FILE to read it from a file.
        #[arg(long)]
        policy: Option<String>,
        /// Make it a sub-agent of this agent: its spend counts against the parent's limits too.
        #[arg(long)]
        parent: Option<String>,
    },
    List,
    Show {
        id: String,
    },
    /// Freeze the agent: all its cards and rails decline.
    Freeze {
        id: String,
        #[arg(long)]
        reason: String,
    },
    Unfreeze {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Deactivate the agent: freeze it and its cards, revoke its keys, stop its top-ups, and
    /// drain its available money to the treasury, now and as its holds settle.
    Deactivate {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Make a deactivated agent active again (its keys stay revoked).
    Reactivate {
        id: String,
        #[arg(long)]
        reason: String,
        /// Unfreeze its frozen cards too.
        #[arg(long)]
        unfreeze_cards: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CardsCommand {
    /// Issue a card to an agent; the full number is printed once.
    Issue {
        #[arg(long)]
        agent: String,
        /// The service the card pays, e.g. openai.
        #[arg(long)]
        label: String,
        /// The cap currency (default: the policy's, else USD).
        #[arg(long)]
        currency: Option<String>,
        /// A policy template, e.g. coding-agent.
        #[arg(long)]
        template: Option<String>,
        /// A policy document as JSON, or @FILE to read it from a file.
        #[arg(long)]
        policy: Option<String>,
        #[arg(long)]
        single_use: bool,
        /// simulator (default), stripe, lithic or marqeta.
        #[arg(long)]
        processor: Option<String>,
        /// Register a card that exists at the processor under this id (else one is made there).
        #[arg(long)]
        processor_card_id: Option<String>,
        /// The last four digits of a registered card.
        #[arg(long)]
        last4: Option<String>,
    },
    List {
        #[arg(long)]
        agent: String,
    },
    Show {
        card: String,
    },
    Freeze {
        card: String,
        #[arg(long)]
        reason: String,
    },
    Unfreeze {
        card: String,
        #[arg(long)]
        reason: String,
    },
    /// Close the card for good.
    Close {
        card: String,
        #[arg(long)]
        reason: String,
    },
}

/// Whose policy, events or other record: an agent's or a card's.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct Owner {
    #[arg(long)]
    agent: Option<String>,
    #[arg(long)]
    card: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the policy document.
    Get {
        #[command(flatten)]
        of: Owner,
    },
    /// Replace the policy with a document (JSON, or @FILE).
    Set {
        #[command(flatten)]
        of: Owner,
        policy: String,
    },
    /// Save a draft beside the live policy (JSON, or @FILE); it decides nothing until promoted.
    Draft {
        #[command(flatten)]
        of: Owner,
        policy: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// What the draft changes in the live policy.
    Diff {
        #[command(flatten)]
        of: Owner,
    },
    /// Replay the draft (or another policy) over recorded decisions and say what it would have
    /// changed; waits for the report unless --no-wait.
    Backtest {
        #[command(flatten)]
        of: Owner,
        /// More cards (or agents) to apply the same draft to, e.g. every card of a template.
        #[arg(long = "also")]
        also: Vec<String>,
        /// A policy document (JSON, or @FILE) instead of the saved draft.
        #[arg(long, conflicts_with_all = ["template", "recorded"])]
        policy: Option<String>,
        /// A policy template's name instead of the saved draft.
        #[arg(long, conflicts_with = "recorded")]
        template: Option<String>,
        /// The rules as they were: reproduces history (a check that the replay is faithful).
        #[arg(long)]
        recorded: bool,
        /// The span until now replayed: `7d`, `24h`, `2w` (default 7d).
        #[arg(long, conflicts_with = "from", default_value = "7d")]
        since: String,
        /// From this time (RFC 3339), inclusive.
        #[arg(long)]
        from: Option<String>,
        /// Until this time (RFC 3339), exclusive; default now.
        #[arg(long)]
        to: Option<String>,
        /// Print the backtest's id and return; `policy backtests --id` shows it later.
        #[arg(long)]
        no_wait: bool,
    },
    /// A backtest's progress or report, by id.
    Backtests {
        #[arg(long)]
        id: String,
    },
    /// Put the draft in shadow (`on`), take it out (`off`), or show what it disagreed with (`report`).
    Shadow {
        #[command(flatten)]
        of: Owner,
        #[arg(value_parser = ["on", "off", "report"])]
        action: String,
    },
    /// Make the draft the live policy.
    Promote {
        #[command(flatten)]
        of: Owner,
        #[arg(long)]
        reason: String,
    },
    /// Put the draft away.
    Discard {
        #[command(flatten)]
        of: Owner,
        #[arg(long)]
        reason: String,
    },
    /// The policy's versions, newest first.
    Versions {
        #[command(flatten)]
        of: Owner,
    },
}

#[derive(Subcommand, Debug)]
pub enum TraceCommand {
    /// Tag the card's authorizations with this trace when the processor sends none.
    Set {
        card: String,
        trace: String,
    },
    Clear {
        card: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    List {
        /// pending, approved, denied or expired.
        #[arg(long)]
        status: Option<String>,
    },
    Show {
        id: String,
    },
    Approve {
        id: String,
    },
    Deny {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum WalletCommand {
    /// The agent's USDC address.
    Show { agent: String },
    /// Make the agent's wallet (agents made while the USDC rail was off have none).
    Create { agent: String },
    /// Print the wallet's private key (owner only; recorded in the agent's audit trail).
    Export { agent: String },
    /// Each wallet (or the agent's) against the ledger, on every network spendgate reads.
    Reconcile { agent: Option<String> },
}

#[derive(Subcommand, Debug)]
pub enum X402Command {
    /// Call a URL for the agent, paying an x402 402 if its policy allows.
    Fetch {
        agent: String,
        /// The URL to call (named apart from the global --url, the server's).
        #[arg(value_name = "URL")]
        target: String,
        #[arg(long, default_value = "GET")]
        method: String,
        /// `Name: value`, repeatable.
        #[arg(long = "header")]
        headers: Vec<String>,
        #[arg(long)]
        body: Option<String>,
        #[arg(long)]
        trace: Option<String>,
        /// The most this call may cost, e.g. `0.05`.
        #[arg(long, allow_hyphen_values = true)]
        max_amount: Option<String>,
        /// One payment per key (default: a new one, so a repeated command pays again).
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct AuthorizeArgs {
    /// spendgate's card id (`card_…`).
    #[arg(long)]
    card: String,
    #[command(flatten)]
    sale: SaleArgs,
    /// Decide against the current state and record nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug)]
pub struct LedgerList {
    #[arg(required = true)]
    agent: Option<String>,
    #[arg(long)]
    card: Option<String>,
    #[arg(long)]
    trace: Option<String>,
    /// From this time (RFC 3339), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Until this time (RFC 3339), exclusive.
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: i64,
    #[arg(long)]
    cursor: Option<String>,
}

/// The filters of an export or a report.
#[derive(Args, Debug, Default)]
pub struct ReportFilter {
    /// Only the last span of time: `7d`, `24h`, `2w`.
    #[arg(long, conflicts_with = "from")]
    since: Option<String>,
    /// From this time (RFC 3339), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Until this time (RFC 3339), exclusive.
    #[arg(long)]
    to: Option<String>,
    /// Only this agent's.
    #[arg(long)]
    agent: Option<String>,
    /// Only this agent's and every sub-agent's under it.
    #[arg(long)]
    tree: Option<String>,
    /// Only this card's.
    #[arg(long)]
    card: Option<String>,
    /// Only cards with this label.
    #[arg(long)]
    service: Option<String>,
    /// Only agents of this department.
    #[arg(long)]
    department: Option<String>,
    /// Only this trace's.
    #[arg(long, visible_alias = "by-trace")]
    trace: Option<String>,
    /// card or usdc.
    #[arg(long)]
    rail: Option<String>,
    /// A merchant id or name.
    #[arg(long)]
    merchant: Option<String>,
    /// pending, posted, voided, expired or declined.
    #[arg(long)]
    status: Option<String>,
}

impl ReportFilter {
    /// The query parameters, `--since` made a `from` time.
    fn query(self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let from = match self.since {
            Some(since) => Some(since_time(&since, jiff::Zoned::now())?.to_string()),
            None => self.from,
        };
        Ok(given([
            ("from", from),
            ("to", self.to),
            ("agent", self.agent),
            ("tree", self.tree),
            ("card", self.card),
            ("service", self.service),
            ("department", self.department),
            ("trace", self.trace),
            ("rail", self.rail),
            ("merchant", self.merchant),
            ("status", self.status),
        ])
        .collect())
    }
}

/// The query parameters that were given, of those named.
fn given<const N: usize>(params: [(&'static str, Option<String>); N]) -> impl Iterator<Item = (&'static str, String)> {
    params.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)))
}

/// `now` less a span such as `7d`, `24h`, `2w` or `30m` (days counted in the local time zone).
fn since_time(since: &str, now: jiff::Zoned) -> anyhow::Result<jiff::Timestamp> {
    let span: jiff::Span =
        since.parse().map_err(|_| anyhow::anyhow!("--since {since:?}: give a span such as 7d, 24h or 2w"))?;
    if span.is_negative() || span.is_zero() {
        anyhow::bail!("--since {since:?}: give a span such as 7d, 24h or 2w");
    }
    Ok(now.checked_sub(span)?.timestamp())
}

#[derive(Subcommand, Debug)]
pub enum TreasuryCommand {
    /// Record money placed behind a treasury (a wire to the card program, USDC in a treasury wallet).
    Deposit(TreasuryMovement),
    /// Record money taken out of a treasury (only what no agent was given).
    Withdraw(TreasuryMovement),
    /// A treasury's journal, oldest first.
    Transfers {
        #[arg(long)]
        currency: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct TreasuryMovement {
    /// `1000`, `1000.00 USD`.
    #[arg(long, allow_hyphen_values = true)]
    amount: String,
    /// The currency, unless the amount names it (default USD).
    #[arg(long)]
    currency: Option<String>,
    /// What backs it or where it went: a wire, a transaction hash.
    #[arg(long)]
    reference: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    /// The movement's idempotency key (default: a new one).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// Every authorization and transfer in the filter, oldest first, written as it arrives:
    /// `spendgate ledger export --since 7d --by-trace PR-4823 --format csv > out.csv`.
    Export {
        #[command(flatten)]
        filter: Box<ReportFilter>,
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// Write here instead of to standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// Spend per group, top groups first: `spendgate report spend --by trace,service --since 30d`.
    Spend {
        /// One to three of agent, root, department, card, service, trace, rail, merchant, mcc, country,
        /// and at most one of day, week, month.
        #[arg(long)]
        by: String,
        #[command(flatten)]
        filter: Box<ReportFilter>,
        /// The report's currency (default: the agents').
        #[arg(long)]
        currency: Option<String>,
        /// An IANA time zone for day, week and month (default UTC).
        #[arg(long)]
        time_zone: Option<String>,
        /// How many of the first dimension to show; the rest is one "other" row.
        #[arg(long)]
        top: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk every agent's audit chain against the records and name each broken chain's first
    /// broken link; exits 1 if any is broken.
    Verify {
        /// A checkpoint kept elsewhere (as `audit checkpoint` printed it) to hold the chains to;
        /// without it, the latest the server made.
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
    },
    /// Record every chain's head now and print the checkpoint as JSON, to keep outside the database.
    Checkpoint,
    /// The checkpoints the server made, newest first.
    Checkpoints {
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage agents.
    Agents {
        #[command(subcommand)]
        command: AgentsCommand,
    },
    /// Issue and manage cards.
    Cards {
        #[command(subcommand)]
        command: CardsCommand,
    },
    /// Send a signed authorization for a card as its processor would (spendgate's format for
    /// simulator cards) and print the decision, its reason and the rule that fired.
    Authorize(AuthorizeArgs),
    /// Move money from the treasury of the agent's currency into its balance.
    Fund {
        agent: String,
        /// `100`, `12.50`, or `12.50 USD`.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        #[arg(long)]
        currency: Option<String>,
        /// The funding's idempotency key (default: a new one).
        #[arg(long)]
        id: Option<String>,
        /// Why, kept in the ledger and the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Move available money from a sub-agent's parent into its balance.
    Allocate {
        agent: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// The allocation's idempotency key (default: a new one).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Move an agent's available money (all of it, or --amount) back to its treasury, or to its
    /// parent for a sub-agent; held money stays held.
    Drain {
        agent: String,
        #[arg(long, allow_hyphen_values = true)]
        amount: Option<String>,
        /// The drain's idempotency key (default: a new one).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The treasuries agents are funded from: what each has, its journal, and (owners) recording
    /// what backs it.
    #[command(args_conflicts_with_subcommands = true)]
    Treasury {
        #[command(subcommand)]
        command: Option<TreasuryCommand>,
    },
    /// An agent's balance: funded, held, spent, available.
    Balance { agent: String },
    /// An agent's authorizations and transfers, oldest first; `ledger export` writes every
    /// agent's (or a filter's) as CSV or JSON Lines.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Ledger {
        #[command(subcommand)]
        command: Option<LedgerCommand>,
        #[command(flatten)]
        list: LedgerList,
    },
    /// Where the money went: spend per trace, service, agent, department, day…
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Read or replace an agent's or a card's policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// A card's current trace.
    Trace {
        #[command(subcommand)]
        command: TraceCommand,
    },
    /// An agent's or a card's audit trail, oldest first.
    Events {
        #[command(flatten)]
        of: Owner,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// The tamper-evident audit trail: verify it, and checkpoints of its heads.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Requests for a person's approval.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// An agent's USDC wallet.
    Wallet {
        #[command(subcommand)]
        command: WalletCommand,
    },
    /// Paid HTTP calls (x402) for an agent.
    X402 {
        #[command(subcommand)]
        command: X402Command,
    },
}

struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    /// The same client for a call that may run for minutes (an export, a verification): no
    /// overall timeout, only the connection's.
    fn patient(&self) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).build()?;
        Ok(Client { base: self.base.clone(), key: self.key.clone(), http })
    }
}

/// The error for a server that cannot be reached, with the likely cause.
pub(crate) fn unreachable(base: &str, e: &reqwest::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach spendgate at {base}: {e}. Is the server running (spendgate serve), and is SPENDGATE_URL right?"
    )
}

/// The error for a refusal, from the server's JSON error.
pub(crate) fn refused(status: u16, value: &Value) -> anyhow::Error {
    let code = value["error"]["code"].as_str().unwrap_or("error");
    let message = value["error"]["message"].as_str().unwrap_or("the server gave no reason");
    anyhow::anyhow!("the server refused ({status} {code}): {message}")
}

/// An API key as the user gave it, or what is wrong with it.
fn checked_key(key: Option<String>) -> anyhow::Result<String> {
    let key = key.ok_or_else(|| anyhow::anyhow!("no API key: set SPENDGATE_API_KEY or pass --api-key"))?;
    if key.contains(['\n', '\r']) {
        anyhow::bail!("the API key contains a line break: set it to the key alone (sgk_…), without the newline");
    }
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        anyhow::bail!("the API key contains spaces or control characters: set it to the key alone (sgk_…)");
    }
    Ok(key)
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| unreachable(&self.base, &e))?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        Err(refused(status.as_u16(), &value))
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    /// The card-scoped routes name the agent too; look it up from the card.
    async fn card_path(&self, card: &str) -> anyhow::Result<String> {
        let found = self.get(&format!("/v1/cards/{}", segment(card))).await?;
        let agent = found["agent_id"].as_str().unwrap_or_default();
        Ok(format!("/v1/agents/{agent}/cards/{}", segment(card)))
    }

    async fn owner_path(&self, of: &Owner) -> anyhow::Result<String> {
        match (&of.agent, &of.card) {
            (Some(agent), _) => Ok(format!("/v1/agents/{}", segment(agent))),
            (None, Some(card)) => self.card_path(card).await,
            (None, None) => anyhow::bail!("name --agent or --card"),
        }
    }
}

/// A path segment as typed, escaped so that it stays one segment.
fn segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>().replace('+', "%20")
}

pub fn run(args: ClientArgs, command: Command, config: Option<&Path>) -> anyhow::Result<()> {
    let client = Client {
        base: args.url.trim_end_matches('/').to_owned(),
        key: checked_key(args.api_key.clone())?,
        http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (value, view) = runtime.block_on(execute(&client, command, config))?;
    if matches!(view, View::Nothing) {
        // The command wrote its own output.
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if args.quiet {
        print!("{}", ids(&value));
    } else {
        print!("{}", render(&value, view));
    }
    if matches!(view, View::Verification) && value["verified"] != true {
        anyhow::bail!("the audit trail is broken");
    }
    Ok(())
}

/// An agent's or card's currency, as the server gave it.
/// Records a deposit into or a withdrawal from a treasury.
async fn treasury_movement(client: &Client, kind: &str, m: TreasuryMovement) -> anyhow::Result<Value> {
    let amount = Amount::parse("--amount", &m.amount, m.currency.as_deref(), Currency::USD)?;
    let body = json!({"id": m.id.unwrap_or_else(|| new_id(kind)), "amount": amount.minor,
                      "currency": amount.currency.code(), "reference": m.reference, "reason": m.reason});
    client.post(&format!("/v1/treasury/{kind}"), body).await
}

fn currency_of(record: &Value) -> anyhow::Result<Currency> {
    record["currency"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e: String| anyhow::anyhow!("the server's answer: {e}"))
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

async fn execute(client: &Client, command: Command, config: Option<&Path>) -> anyhow::Result<(Value, View)> {
    use reqwest::Method;
    Ok(match command {
        Command::Keys { command } => match command {
            KeysCommand::Create { role, agent, name } => {
                (client.post("/v1/keys", json!({ "role": role, "agent_id": agent, "name": name })).await?, View::Record)
            }
            KeysCommand::List => (client.get("/v1/keys").await?, View::Keys),
            KeysCommand::Revoke { id } => {
                (client.call(Method::DELETE, &format!("/v1/keys/{}", segment(&id)), None).await?, View::Record)
            }
        },
        Command::Agents { command } => match command {
            AgentsCommand::Create { name, department, policy, parent } => {
                let policy = policy.map(|p| read_policy(&p)).transpose()?;
                let body = json!({ "name": name, "department": department, "policy": policy, "parent_id": parent });
                (client.post("/v1/agents", body).await?, View::Record)
            }
            AgentsCommand::List => (client.get("/v1/agents?limit=500").await?, View::Agents),
            AgentsCommand::Show { id } => (client.get(&format!("/v1/agents/{}", segment(&id))).await?, View::Record),
            AgentsCommand::Freeze { id, reason } => {
                let path = format!("/v1/agents/{}/freeze", segment(&id));
                (client.post(&path, json!({ "reason": reason })).await?, View::Record)
            }
            AgentsCommand::Unfreeze { id, reason } => {
                let path = format!("/v1/agents/{}/unfreeze", segment(&id));
                (client.post(&path, json!({ "reason": reason })).await?, View::Record)
            }
            AgentsCommand::Deactivate { id, reason } => {
                let path = format!("/v1/agents/{}/deactivate", segment(&id));
                (client.post(&path, json!({ "reason": reason })).await?, View::Json)
            }
            AgentsCommand::Reactivate { id, reason, unfreeze_cards } => {
                let path = format!("/v1/agents/{}/reactivate", segment(&id));
                (client.post(&path, json!({ "reason": reason, "unfreeze_cards": unfreeze_cards })).await?, View::Record)
            }
        },
        Command::Cards { command } => cards(client, command).await?,
        Command::Authorize(args) => (authorize(client, args, config).await?, View::Outcome),
        Command::Fund { agent, amount, currency, id, reason } => {
            let path = format!("/v1/agents/{}", segment(&agent));
            let agent_currency = currency_of(&client.get(&path).await?)?;
            let amount = Amount::parse("--amount", &amount, currency.as_deref(), agent_currency)?;
            let body = json!({"id": id.unwrap_or_else(|| new_id("fund")), "amount": amount.minor,
                              "currency": amount.currency.code(), "reason": reason});
            (client.post(&format!("{path}/fund"), body).await?, View::Record)
        }
        Command::Allocate { agent, amount, id, reason } => {
            let path = format!("/v1/agents/{}", segment(&agent));
            let agent_currency = currency_of(&client.get(&path).await?)?;
            let amount = Amount::parse("--amount", &amount, None, agent_currency)?;
            let body =
                json!({"id": id.unwrap_or_else(|| new_id("allocate")), "amount": amount.minor, "reason": reason});
            (client.post(&format!("{path}/allocate"), body).await?, View::Record)
        }
        Command::Drain { agent, amount, id, reason } => {
            let path = format!("/v1/agents/{}", segment(&agent));
            let agent_currency = currency_of(&client.get(&path).await?)?;
            let amount =
                amount.map(|a| Amount::parse("--amount", &a, None, agent_currency)).transpose()?.map(|a| a.minor);
            let body = json!({"id": id.unwrap_or_else(|| new_id("drain")), "amount": amount, "reason": reason});
            (client.post(&format!("{path}/drain"), body).await?, View::Record)
        }
        Command::Treasury { command } => match command {
            None => (client.get("/v1/treasury").await?, View::Json),
            Some(TreasuryCommand::Transfers { currency }) => {
                let query = currency.map(|c| format!("?currency={}", segment(&c))).unwrap_or_default();
                (client.get(&format!("/v1/treasury/transfers{query}")).await?, View::Json)
            }
            Some(TreasuryCommand::Deposit(m)) => (treasury_movement(client, "deposits", m).await?, View::Record),
            Some(TreasuryCommand::Withdraw(m)) => (treasury_movement(client, "withdrawals", m).await?, View::Record),
        },
        Command::Balance { agent } => {
            (client.get(&format!("/v1/agents/{}/balance", segment(&agent))).await?, View::Balance)
        }
        Command::Ledger { command: Some(LedgerCommand::Export { filter, format, output }), .. } => {
            export(client, *filter, format, output).await?;
            (Value::Null, View::Nothing)
        }
        Command::Ledger { command: None, list } => {
            let LedgerList { agent, card, trace, from, to, limit, cursor } = list;
            let agent = agent.unwrap_or_default();
            let query = given([("card", card), ("trace", trace), ("from", from), ("to", to), ("cursor", cursor)])
                .chain([("limit", limit.to_string())]);
            let query = serde_urlencoded::to_string(query.collect::<Vec<_>>())?;
            (client.get(&format!("/v1/agents/{}/ledger?{query}", segment(&agent))).await?, View::Ledger)
        }
        Command::Report { command: ReportCommand::Spend { by, filter, currency, time_zone, top } } => {
            let mut query = filter.query()?;
            query.push(("group_by", by));
            let extra = [("currency", currency), ("time_zone", time_zone), ("top", top.map(|n| n.to_string()))];
            query.extend(given(extra));
            let query = serde_urlencoded::to_string(query)?;
            (client.get(&format!("/v1/reports/spend?{query}")).await?, View::Spend)
        }
        Command::Policy { command } => match command {
            PolicyCommand::Get { of } => {
                (client.get(&format!("{}/policy", client.owner_path(&of).await?)).await?, View::Json)
            }
            PolicyCommand::Set { of, policy } => {
                let document = read_policy(&policy)?;
                (client.put(&format!("{}/policy", client.owner_path(&of).await?), document).await?, View::Json)
            }
            command => policy_change(client, command).await?,
        },
        Command::Trace { command } => {
            let (card, trace) = match command {
                TraceCommand::Set { card, trace } => (card, Some(trace)),
                TraceCommand::Clear { card } => (card, None),
            };
            let path = format!("{}/trace", client.card_path(&card).await?);
            (client.put(&path, json!({ "trace_id": trace })).await?, View::Record)
        }
        Command::Events { of, limit, cursor } => {
            let mut query = format!("limit={limit}");
            if let Some(c) = cursor {
                query.push_str(&format!("&cursor={}", segment(&c)));
            }
            (client.get(&format!("{}/events?{query}", client.owner_path(&of).await?)).await?, View::Events)
        }
        Command::Audit { command } => match command {
            AuditCommand::Verify { checkpoint } => {
                let checkpoint: Option<Value> = checkpoint
                    .map(|path| {
                        let text = std::fs::read_to_string(&path)
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                        serde_json::from_str(&text)
                            .map_err(|e| anyhow::anyhow!("{} is not a checkpoint's JSON: {e}", path.display()))
                    })
                    .transpose()?;
                // A verification reads every record.
                (
                    client.patient()?.post("/v1/audit/verify", json!({ "checkpoint": checkpoint })).await?,
                    View::Verification,
                )
            }
            AuditCommand::Checkpoint => (client.call(Method::POST, "/v1/audit/checkpoints", None).await?, View::Json),
            AuditCommand::Checkpoints { limit } => {
                (client.get(&format!("/v1/audit/checkpoints?limit={limit}")).await?, View::Checkpoints)
            }
        },
        Command::Approvals { command } => match command {
            ApprovalsCommand::List { status } => {
                let query = status.map(|s| format!("&status={}", segment(&s))).unwrap_or_default();
                (client.get(&format!("/v1/approvals?limit=500{query}")).await?, View::Approvals)
            }
            ApprovalsCommand::Show { id } => {
                (client.get(&format!("/v1/approvals/{}", segment(&id))).await?, View::Record)
            }
            ApprovalsCommand::Approve { id } => {
                (client.post(&format!("/v1/approvals/{}/approve", segment(&id)), json!({})).await?, View::Record)
            }
            ApprovalsCommand::Deny { id } => {
                (client.post(&format!("/v1/approvals/{}/deny", segment(&id)), json!({})).await?, View::Record)
            }
        },
        Command::Wallet { command: WalletCommand::Reconcile { agent } } => {
            let query = agent.map(|a| format!("?agent_id={}", segment(&a))).unwrap_or_default();
            (client.get(&format!("/v1/wallets/reconciliation{query}")).await?, View::Reconciliation)
        }
        Command::Wallet { command: WalletCommand::Show { agent } } => {
            (client.get(&format!("/v1/agents/{}/wallet", segment(&agent))).await?, View::Record)
        }
        Command::Wallet { command: WalletCommand::Create { agent } } => {
            (client.call(Method::POST, &format!("/v1/agents/{}/wallet", segment(&agent)), None).await?, View::Record)
        }
        Command::Wallet { command: WalletCommand::Export { agent } } => {
            let path = format!("/v1/agents/{}/wallet/export", segment(&agent));
            (client.call(Method::POST, &path, None).await?, View::Record)
        }
        Command::X402 {
            command: X402Command::Fetch { agent, target, method, headers, body, trace, max_amount, idempotency_key },
        } => {
            let path = format!("/v1/agents/{}", segment(&agent));
            let agent_currency = currency_of(&client.get(&path).await?)?;
            let max_amount = max_amount
                .map(|m| Amount::parse("--max-amount", &m, None, agent_currency).map(|a| a.minor))
                .transpose()?;
            let mut header_map = serde_json::Map::new();
            for h in headers {
                let (name, value) =
                    h.split_once(':').ok_or_else(|| anyhow::anyhow!("--header {h:?}: write it as 'Name: value'"))?;
                header_map.insert(name.trim().to_owned(), json!(value.trim()));
            }
            let request = json!({"url": target, "method": method, "headers": header_map, "body": body,
                                  "trace_id": trace, "max_amount": max_amount});
            let key = idempotency_key.unwrap_or_else(|| new_id("cli"));
            (fetch(client, &format!("{path}/x402/fetch"), &key, request).await?, View::Json)
        }
    })
}

/// Drafts, their diff, backtests, shadow and promotion.
async fn policy_change(client: &Client, command: PolicyCommand) -> anyhow::Result<(Value, View)> {
    use reqwest::Method;
    let policies = |of: &Owner| -> anyhow::Result<String> {
        match (&of.agent, &of.card) {
            (Some(id), None) | (None, Some(id)) => Ok(format!("/v1/policies/{}", segment(id))),
            _ => anyhow::bail!("name one of --agent or --card"),
        }
    };
    Ok(match command {
        PolicyCommand::Get { .. } | PolicyCommand::Set { .. } => unreachable!("answered by `execute`"),
        PolicyCommand::Draft { of, policy, reason } => {
            let body = json!({"policy": read_policy(&policy)?, "reason": reason});
            (client.put(&format!("{}/draft", policies(&of)?), body).await?, View::Draft)
        }
        PolicyCommand::Diff { of } => (client.get(&format!("{}/draft", policies(&of)?)).await?, View::Draft),
        PolicyCommand::Backtest { of, also, policy, template, recorded, since, from, to, no_wait } => {
            let mut targets = vec![policies(&of)?.trim_start_matches("/v1/policies/").to_owned()];
            targets.extend(also);
            let from = match from {
                Some(from) => from,
                None => since_time(&since, jiff::Zoned::now())?.to_string(),
            };
            let mut body = json!({"targets": targets, "from": from});
            match (policy, template, recorded) {
                (Some(p), _, _) => body["policy"] = read_policy(&p)?,
                (_, Some(name), _) => body["template"] = json!(name),
                (_, _, true) => body["policy"] = json!("recorded"),
                _ => {}
            }
            if let Some(to) = to {
                body["to"] = json!(to);
            }
            let started = client.post("/v1/backtests", body).await?;
            if no_wait {
                return Ok((started, View::Record));
            }
            let path = format!("/v1/backtests/{}", segment(started["id"].as_str().unwrap_or_default()));
            loop {
                let now = client.get(&path).await?;
                if now["status"] != "running" {
                    eprintln!();
                    break (now, View::Backtest);
                }
                eprint!("\rreplayed {} of {} decisions", now["replayed"], now["total"]);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        PolicyCommand::Backtests { id } => {
            (client.get(&format!("/v1/backtests/{}", segment(&id))).await?, View::Backtest)
        }
        PolicyCommand::Shadow { of, action } => {
            let path = format!("{}/draft/shadow", policies(&of)?);
            match action.as_str() {
                "report" => (json!({"report": client.get(&path).await?}), View::Backtest),
                on => (client.put(&path, json!({"shadow": on == "on"})).await?, View::Record),
            }
        }
        PolicyCommand::Promote { of, reason } => {
            let path = format!("{}/draft/promote", policies(&of)?);
            (client.post(&path, json!({"reason": reason})).await?, View::Record)
        }
        PolicyCommand::Discard { of, reason } => {
            let path = format!("{}/draft", policies(&of)?);
            (client.call(Method::DELETE, &path, Some(json!({"reason": reason}))).await?, View::Record)
        }
        PolicyCommand::Versions { of } => {
            (client.get(&format!("{}/versions?limit=500", policies(&of)?)).await?, View::Versions)
        }
    })
}

async fn cards(client: &Client, command: CardsCommand) -> anyhow::Result<(Value, View)> {
    Ok(match command {
        CardsCommand::Issue {
            agent,
            label,
            currency,
            template,
            policy,
            single_use,
            processor,
            processor_card_id,
            last4,
        } => {
            let policy = policy.map(|p| read_policy(&p)).transpose()?;
            let mut body = json!({ "label": label, "currency": currency, "template": template, "policy": policy,
                                   "single_use": single_use });
            for (field, value) in [("processor", processor), ("processor_card_id", processor_card_id), ("last4", last4)]
            {
                if let Some(value) = value {
                    body[field] = json!(value);
                }
            }
            (client.post(&format!("/v1/agents/{}/cards", segment(&agent)), body).await?, View::Record)
        }
        CardsCommand::List { agent } => {
            (client.get(&format!("/v1/agents/{}/cards?limit=500", segment(&agent))).await?, View::Cards)
        }
        CardsCommand::Show { card } => (client.get(&format!("/v1/cards/{}", segment(&card))).await?, View::Record),
        CardsCommand::Freeze { card, reason } => {
            let path = client.card_path(&card).await?;
            (client.post(&format!("{path}/freeze"), json!({ "reason": reason })).await?, View::Record)
        }
        CardsCommand::Unfreeze { card, reason } => {
            let path = client.card_path(&card).await?;
            (client.post(&format!("{path}/unfreeze"), json!({ "reason": reason })).await?, View::Record)
        }
        CardsCommand::Close { card, reason } => {
            let path = client.card_path(&card).await?;
            (client.post(&format!("{path}/close"), json!({ "reason": reason })).await?, View::Record)
        }
    })
}

/// `authorize`: the card's own format, signed as its processor signs; a dry run asks the admin API.
async fn authorize(client: &Client, args: AuthorizeArgs, config: Option<&Path>) -> anyhow::Result<Value> {
    let card = client.get(&format!("/v1/cards/{}", segment(&args.card))).await?;
    let currency = currency_of(&card)?;
    let sale = Sale::new(&args.sale, currency)?;
    if args.dry_run {
        let body = json!({"amount": sale.amount.minor, "currency": sale.amount.currency.code(),
            "merchant": {"id": sale.merchant_id, "name": sale.merchant, "mcc": sale.mcc, "country": sale.country},
            "trace_id": sale.trace});
        return client.post(&format!("/v1/cards/{}/dry-run", segment(&args.card)), body).await;
    }
    let mut settings = Config::load(config)?;
    crate::demo::fill_secrets(&mut settings, false)?;
    // A processor's card in its own format; a simulator card in spendgate's.
    let processor = card["processor"].as_str().and_then(|p| simulate::Processor::from_str(p, true).ok());
    let request = match processor {
        Some(p) => simulate::processor(&settings, p, card["processor_card_id"].as_str().unwrap_or_default(), &sale)?,
        None => simulate::native(&settings, &args.card, &sale)?,
    };
    let sent_at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    let (_, answer) = simulate::send(&client.base, request, false).await?;
    if processor.is_none() {
        return Ok(answer);
    }
    // A processor's answer carries its own codes: the ledger has the decision in full.
    let agent = card["agent_id"].as_str().unwrap_or_default();
    let query = serde_urlencoded::to_string([("card", args.card.as_str()), ("from", &sent_at.to_string())])?;
    let path = format!("/v1/agents/{agent}/ledger?{query}&limit=500");
    let entries = client.get(&path).await?;
    let last = entries["data"].as_array().and_then(|rows| rows.iter().rev().find(|e| e["type"] == "authorization"));
    Ok(last.map(outcome_of).unwrap_or(answer))
}

/// `ledger export`: the server's lines, written as they arrive. A response cut short (the server
/// met an error after it began) is an error here, so that a partial file is never taken for whole.
async fn export(
    client: &Client,
    filter: ReportFilter,
    format: ExportFormat,
    output: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut query = filter.query()?;
    query.push(("format", format!("{format:?}").to_lowercase()));
    let url = format!("{}/v1/ledger/export?{}", client.base, serde_urlencoded::to_string(query)?);
    // An export may run for minutes.
    let mut response = client
        .patient()?
        .http
        .get(&url)
        .bearer_auth(&client.key)
        .send()
        .await
        .map_err(|e| unreachable(&client.base, &e))?;
    if !response.status().is_success() {
        let status = response.status().as_u16();
        let text = response.text().await?;
        return Err(refused(status, &serde_json::from_str(&text).unwrap_or(Value::String(text))));
    }
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    while let Some(chunk) =
        response.chunk().await.map_err(|e| anyhow::anyhow!("the export was cut off, the output is incomplete: {e}"))?
    {
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(())
}

/// A ledger authorization in the shape of a decision.
fn outcome_of(a: &Value) -> Value {
    json!({"approved": a["approved"], "authorization_id": a["id"], "reason": a["reason"], "rule": a["rule"],
           "amount": {"merchant": a["amount"], "cap": a["cap"]}, "fx": a["fx"], "approval_id": a["approval_id"]})
}

/// The x402 fetch: the upstream's answer with spendgate's headers.
async fn fetch(client: &Client, path: &str, key: &str, body: Value) -> anyhow::Result<Value> {
    let response = client
        .http
        .post(format!("{}{path}", client.base))
        .bearer_auth(&client.key)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .map_err(|e| unreachable(&client.base, &e))?;
    let status = response.status().as_u16();
    let headers: serde_json::Map<String, Value> = response
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("spendgate-"))
        .map(|(name, value)| (name.to_string(), json!(value.to_str().unwrap_or_default())))
        .collect();
    let text = response.text().await?;
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if value["error"]["code"].is_string() && headers.is_empty() {
        return Err(refused(status, &value));
    }
    Ok(json!({"status": status, "spendgate": headers, "body": value}))
}

fn read_policy(arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?,
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("the policy is not valid JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_line_breaks_are_named_as_such() {
        let error = checked_key(Some("sgk_abc\n".into())).unwrap_err().to_string();
        assert!(error.contains("line break"), "{error}");
        assert!(checked_key(Some("sgk_abc def".into())).is_err());
        assert!(checked_key(None).unwrap_err().to_string().contains("SPENDGATE_API_KEY"));
        assert_eq!(checked_key(Some("sgk_abc".into())).unwrap(), "sgk_abc");
    }

    #[test]
    fn since_counts_back_from_now_in_days_hours_and_weeks() {
        let now: jiff::Zoned = "2026-12-06T10:00:00+00:00[UTC]".parse().unwrap();
        let at = |since: &str| since_time(since, now.clone()).map(|t| t.to_string());
        assert_eq!(at("7d").unwrap(), "2026-11-29T10:00:00Z");
        assert_eq!(at("24h").unwrap(), "2026-12-05T10:00:00Z");
        assert_eq!(at("2w").unwrap(), "2026-11-22T10:00:00Z");
        for bad in ["", "seven days", "-7d", "0d"] {
            assert!(at(bad).is_err(), "{bad:?}");
        }
    }
}
