//! `serve --demo`: demo agents, cards and policies from `fixtures/demo.json`, and a fresh owner key.

use serde::Deserialize;

use crate::admin::Admin;
use crate::admin::PageQuery;
use crate::admin::agents::NewAgent;
use crate::admin::cards::NewCard;
use crate::admin::ledger::FundRequest;
use crate::rails::usdc::Usdc;

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
    /// An owner key made for this run (the previous run's demo key is revoked).
    pub key: String,
    /// Whether the demo data was loaded now (it is loaded only into a database with no agents).
    pub loaded: bool,
}

pub async fn setup(admin: &Admin, usdc: &Usdc) -> anyhow::Result<DemoSetup> {
    let (owner, key) = admin.replace_named_owner_key("demo").await?;
    let existing = admin.list_agents(&owner, PageQuery { limit: Some(100), cursor: None }).await?;
    if !existing.data.is_empty() {
        // Agents made before the USDC rail was on get their wallets now.
        if usdc.enabled() {
            for agent in &existing.data {
                usdc.create_wallet(&agent.id).await?;
            }
        }
        return Ok(DemoSetup { key, loaded: false });
    }
    let demo: Demo = serde_json::from_str(crate::fixtures::DEMO)?;
    for entry in demo.agents {
        let input = NewAgent { name: entry.name, department: entry.department, policy: entry.policy };
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
            };
            admin.fund(&owner, agent.id.as_str(), fund).await?;
        }
    }
    Ok(DemoSetup { key, loaded: true })
}
