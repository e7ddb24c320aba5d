//! The command-line client: talks to a running server over the admin API, printing tables for
//! people and JSON (`--json`) for scripts.

pub mod simulate;

use std::time::Duration;

use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};

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
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; the secret is printed once.
    Create {
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
        /// The cap currency (default USD).
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

pub enum Command {
    Keys(KeysCommand),
    Agents(AgentsCommand),
    Cards(CardsCommand),
}

struct Client {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!("cannot reach spendgate at {}: {e}. Is the server running (spendgate serve)?", self.base)
        })?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        let code = value["error"]["code"].as_str().unwrap_or("error");
        let message = value["error"]["message"].as_str().unwrap_or("the server gave no reason");
        anyhow::bail!("the server refused ({} {code}): {message}", status.as_u16())
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// The card-scoped routes name the agent too; look it up from the card.
    async fn card_path(&self, card: &str) -> anyhow::Result<String> {
        let found = self.get(&format!("/v1/cards/{card}")).await?;
        let agent = found["agent_id"].as_str().unwrap_or_default();
        Ok(format!("/v1/agents/{agent}/cards/{card}"))
    }
}

pub fn run(args: ClientArgs, command: Command) -> anyhow::Result<()> {
    let key =
        args.api_key.clone().ok_or_else(|| anyhow::anyhow!("no API key: set SPENDGATE_API_KEY or pass --api-key"))?;
    let client = Client {
        base: args.url.trim_end_matches('/').to_owned(),
        key,
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (value, view) = runtime.block_on(execute(&client, command))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render(&value, view));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum View {
    Agents,
    Cards,
    Keys,
    Record,
}

async fn execute(client: &Client, command: Command) -> anyhow::Result<(Value, View)> {
    use reqwest::Method;
    Ok(match command {
        Command::Keys(KeysCommand::Create { role, agent, name }) => {
            (client.post("/v1/keys", json!({ "role": role, "agent_id": agent, "name": name })).await?, View::Record)
        }
        Command::Keys(KeysCommand::List) => (client.get("/v1/keys").await?, View::Keys),
        Command::Keys(KeysCommand::Revoke { id }) => {
            (client.call(Method::DELETE, &format!("/v1/keys/{id}"), None).await?, View::Record)
        }
        Command::Agents(AgentsCommand::Create { name, department }) => {
            (client.post("/v1/agents", json!({ "name": name, "department": department })).await?, View::Record)
        }
        Command::Agents(AgentsCommand::List) => (client.get("/v1/agents?limit=500").await?, View::Agents),
        Command::Agents(AgentsCommand::Show { id }) => (client.get(&format!("/v1/agents/{id}")).await?, View::Record),
        Command::Agents(AgentsCommand::Freeze { id, reason }) => {
            (client.post(&format!("/v1/agents/{id}/freeze"), json!({ "reason": reason })).await?, View::Record)
        }
        Command::Agents(AgentsCommand::Unfreeze { id, reason }) => {
            (client.post(&format!("/v1/agents/{id}/unfreeze"), json!({ "reason": reason })).await?, View::Record)
        }
        Command::Cards(CardsCommand::Issue { agent, label, currency, template, policy, single_use }) => {
            let policy = policy.map(|p| read_policy(&p)).transpose()?;
            let body = json!({ "label": label, "currency": currency, "template": template, "policy": policy,
                               "single_use": single_use });
            (client.post(&format!("/v1/agents/{agent}/cards"), body).await?, View::Record)
        }
        Command::Cards(CardsCommand::List { agent }) => {
            (client.get(&format!("/v1/agents/{agent}/cards?limit=500")).await?, View::Cards)
        }
        Command::Cards(CardsCommand::Show { card }) => (client.get(&format!("/v1/cards/{card}")).await?, View::Record),
        Command::Cards(CardsCommand::Freeze { card, reason }) => {
            let path = client.card_path(&card).await?;
            (client.post(&format!("{path}/freeze"), json!({ "reason": reason })).await?, View::Record)
        }
        Command::Cards(CardsCommand::Unfreeze { card, reason }) => {
            let path = client.card_path(&card).await?;
            (client.post(&format!("{path}/unfreeze"), json!({ "reason": reason })).await?, View::Record)
        }
        Command::Cards(CardsCommand::Close { card, reason }) => {
            let path = client.card_path(&card).await?;
            (client.post(&format!("{path}/close"), json!({ "reason": reason })).await?, View::Record)
        }
    })
}

fn read_policy(arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?,
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("--policy is not valid JSON: {e}"))
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render(value: &Value, view: View) -> String {
    let columns: &[&str] = match view {
        View::Agents => &["id", "name", "department", "status", "created_at"],
        View::Cards => &["id", "label", "last4", "currency", "status", "processor", "created_at"],
        View::Keys => &["id", "role", "name", "agent_id", "prefix", "revoked_at"],
        View::Record => {
            let mut table = Table::new();
            table.load_preset(UTF8_FULL_CONDENSED);
            if let Value::Object(map) = value {
                for (k, v) in map {
                    let shown = if k == "policy" { v.to_string() } else { cell(v) };
                    table.add_row(vec![k.clone(), shown]);
                }
            }
            return format!("{table}\n");
        }
    };
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(columns.to_vec());
    let rows = value["data"].as_array().cloned().unwrap_or_default();
    for row in &rows {
        table.add_row(columns.iter().map(|c| cell(&row[*c])).collect::<Vec<_>>());
    }
    let more = if value["next_cursor"].is_string() { " (more: use --json and the cursor)" } else { "" };
    format!("{table}\n{} row(s){more}\n", rows.len())
}
