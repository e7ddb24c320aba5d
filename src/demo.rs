//! `serve --demo`: demo agents, cards and policies from `fixtures/demo.json`; the secrets that turn on
//! everything that runs locally (native webhook, approval links, USDC rail) and one owner key, each
//! made once into the data directory (mode 0600) and read again at every start, so a key a user
//! exported keeps working. The CLI reads the same files to sign what it sends.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::admin::Admin;
use crate::admin::PageQuery;
use crate::admin::agents::NewAgent;
use crate::admin::cards::NewCard;
use crate::admin::ledger::FundRequest;
use crate::admin::treasury::TreasuryMovement;
use crate::config::Config;
use crate::crypto::Secret;
use crate::domain::access::Principal;
use crate::domain::ledger::TreasuryKind;
use crate::rails::usdc::Usdc;
use crate::rails::usdc::wallet::MasterKey;

/// The files beside the database, one secret each.
pub const OWNER_KEY_FILE: &str = "owner.key";
const SECRET_FILES: [(&str, SecretKind); 3] = [
    ("master.key", SecretKind::MasterKey),
    ("webhook.secret", SecretKind::Webhook),
    ("approval.secret", SecretKind::Approval),
];

#[derive(Clone, Copy)]
enum SecretKind {
    MasterKey,
    Webhook,
    Approval,
}

impl SecretKind {
    fn setting(self, config: &mut Config) -> &mut Option<Secret> {
        match self {
            SecretKind::MasterKey => &mut config.master_key,
            SecretKind::Webhook => &mut config.webhook_secret,
            SecretKind::Approval => &mut config.approval_secret,
        }
    }

    fn generate(self) -> String {
        match self {
            SecretKind::MasterKey => MasterKey::generate_base64().to_string(),
            SecretKind::Webhook | SecretKind::Approval => hex::encode(rand::random::<[u8; 32]>()),
        }
    }
}

/// Where the demo keeps its files: beside the SQLite database, else `data/`.
pub fn data_dir(config: &Config) -> PathBuf {
    config
        .database_url
        .strip_prefix("sqlite://")
        .and_then(|path| Path::new(path).parent())
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("data"))
        .to_path_buf()
}

/// Fills each unset demo secret from its file, making the file first when `create` (the server);
/// the CLI only reads. Returns the files made now.
pub fn fill_secrets(config: &mut Config, create: bool) -> anyhow::Result<Vec<PathBuf>> {
    let dir = data_dir(config);
    let mut made = Vec::new();
    for (name, kind) in SECRET_FILES {
        let setting = kind.setting(config);
        if setting.is_some() {
            continue;
        }
        let path = dir.join(name);
        let value = match read_secret(&path)? {
            Some(value) => value,
            None if create => {
                let value = kind.generate();
                write_secret(&path, &value)?;
                made.push(path);
                value
            }
            None => continue,
        };
        *setting = Some(Secret::new(value));
    }
    Ok(made)
}

/// The demo owner key from its file, if there is one.
pub fn saved_owner_key(config: &Config) -> anyhow::Result<Option<String>> {
    read_secret(&data_dir(config).join(OWNER_KEY_FILE))
}

pub fn save_owner_key(config: &Config, key: &str) -> anyhow::Result<()> {
    let path = data_dir(config).join(OWNER_KEY_FILE);
    // A key replaced (the old one was revoked) is written over.
    if path.exists() {
        std::fs::remove_file(&path).map_err(|e| anyhow::anyhow!("replacing {}: {e}", path.display()))?;
    }
    write_secret(&path, key)
}

fn read_secret(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// Owner-only from its first byte: the file is made with mode 0600, never chmod-ed after.
fn write_secret(path: &Path, value: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    writeln!(file, "{value}").map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Demo {
    agents: Vec<DemoAgent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoAgent {
    name: String,
    department: Option<String>,
    policy: Option<serde_json::Value>,
    /// Prepaid balance to fund, in minor units of the agent's currency.
    #[serde(default)]
    balance: i64,
    #[serde(default)]
    cards: Vec<NewCard>,
}

pub struct DemoSetup {
    /// The demo owner key: the saved one while it still works, else a new one (to be saved).
    pub key: String,
    /// Whether the demo data was loaded now (it is loaded only into a database with no agents).
    pub loaded: bool,
    owner: Principal,
}

/// The saved owner key's principal while it is a live owner key; else a new demo owner key.
async fn owner(admin: &Admin, saved: Option<&str>) -> anyhow::Result<(Principal, String)> {
    if let Some(key) = saved
        && let Some(principal) = admin.authenticate(key).await?
        && principal.role == crate::domain::access::Role::Owner
    {
        return Ok((principal, key.to_owned()));
    }
    Ok(admin.replace_named_owner_key("demo").await?)
}

pub async fn setup(admin: &Admin, usdc: &Usdc, saved_key: Option<&str>) -> anyhow::Result<DemoSetup> {
    let (owner, key) = owner(admin, saved_key).await?;
    let existing = admin.list_agents(&owner, PageQuery { limit: Some(100), cursor: None }).await?;
    if !existing.data.is_empty() {
        // Agents made before the USDC rail was on get their wallets now.
        if usdc.enabled() {
            for agent in &existing.data {
                usdc.create_wallet(&agent.id).await?;
            }
        }
        return Ok(DemoSetup { key, loaded: false, owner });
    }
    let demo: Demo = serde_json::from_str(crate::fixtures::DEMO)?;
    // The treasury the demo agents are funded from, with as much again to fund more.
    let mut backing: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for entry in &demo.agents {
        let currency = entry.policy.as_ref().and_then(|p| p["currency"].as_str()).unwrap_or("USD");
        *backing.entry(currency.to_ascii_uppercase()).or_default() += entry.balance * 2;
    }
    for (currency, amount) in backing.into_iter().filter(|(_, amount)| *amount > 0) {
        let deposit = TreasuryMovement {
            id: format!("demo-{currency}"),
            amount,
            currency,
            reference: Some("demo data".into()),
            reason: Some("backing for the demo agents".into()),
        };
        admin.record_treasury(&owner, TreasuryKind::Deposit, deposit).await?;
    }
    for entry in demo.agents {
        let input = NewAgent { name: entry.name, department: entry.department, policy: entry.policy, parent_id: None };
        let agent = admin.create_agent(&owner, input).await?;
        if usdc.enabled() {
            usdc.create_wallet(&agent.id).await?;
        }
        for card in entry.cards {
            admin.issue_card(&owner, agent.id.as_str(), card).await?;
        }
        if entry.balance > 0 {
            let fund = FundRequest {
                id: format!("demo-{}", agent.id),
                amount: entry.balance,
                currency: agent.currency.code().to_owned(),
                reason: Some("demo data".into()),
            };
            admin.fund(&owner, agent.id.as_str(), fund).await?;
        }
    }
    Ok(DemoSetup { key, loaded: true, owner })
}

/// What `serve --demo` prints before it listens: the owner key and three commands that work as
/// printed (list the agents, authorize on a demo card, freeze it and see the next one decline).
/// `saved_now`: the key was written to its file at this start.
pub async fn banner(
    admin: &Admin,
    setup: &DemoSetup,
    saved_now: bool,
    base: &str,
    config: &Config,
) -> anyhow::Result<String> {
    let page = || PageQuery { limit: Some(100), cursor: None };
    let agents = admin.list_agents(&setup.owner, page()).await?.data;
    let mut card = None;
    for agent in &agents {
        let cards = admin.list_cards(&setup.owner, agent.id.as_str(), page()).await?.data;
        let usable = cards.iter().filter(|c| c.status == crate::domain::card::CardStatus::Active);
        if let Some(found) = usable.clone().find(|c| c.label == "openai").or_else(|| usable.clone().next()) {
            card = Some(found.clone());
            break;
        }
    }
    let key_file = data_dir(config).join(OWNER_KEY_FILE);
    let mut out = String::new();
    if setup.loaded {
        out.push_str("\nDemo data loaded: 2 agents with cards, policies and prepaid balances.\n");
    }
    let kept = if saved_now { "saved" } else { "the same as at the last start" };
    out.push_str(&format!("\nOwner API key ({kept}, in {}):\n\n    {}\n", key_file.display(), setup.key));
    let exe = command_name();
    out.push_str(&format!("\nTry it from another terminal in this directory:\n\n    export SPENDGATE_URL={base} SPENDGATE_API_KEY={}\n    {exe} agents list\n", setup.key));
    if let Some(card) = card {
        let buy = format!("{exe} authorize --card {} --amount 12.50 --merchant 'OPENAI *API' --mcc 5734", card.id);
        out.push_str(&format!("    {buy}\n    {exe} cards freeze {} --reason 'trying the demo' && {buy}\n", card.id));
    }
    Ok(out)
}

/// How to run this binary from the current directory, as a user would type it.
fn command_name() -> String {
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    match (exe, cwd) {
        (Some(exe), Some(cwd)) => match exe.strip_prefix(&cwd) {
            Ok(relative) => format!("./{}", relative.display()),
            Err(_) => exe.display().to_string(),
        },
        _ => "spendgate".into(),
    }
}
