//! Who may do what: the one permission guard. Roles are fixed; every operation names the permission
//! it needs and calls `Principal::check`, whose refusal is a 403 (`Denied` becomes `forbidden`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ids::{AgentId, KeyId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including API keys.
    Owner,
    /// Agents, cards, policies, freeze and unfreeze, funding, approvals.
    Manager,
    /// Read everything and freeze; cannot unfreeze or change anything else.
    Operator,
    /// Scoped to one agent: reads that agent's own records, pays through it, tags its cards with
    /// the trace it works on, and asks what a payment would be answered.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Manager => "manager",
            Role::Operator => "operator",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Role::Owner),
            "manager" => Ok(Role::Manager),
            "operator" => Ok(Role::Operator),
            "agent" => Ok(Role::Agent),
            other => Err(format!("unknown role {other:?} (owner, manager, operator, agent)")),
        }
    }
}

/// What a request wants to do, from least to most powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Freeze,
    Manage,
    /// Pay from the agent's wallet (x402).
    Pay,
    ManageKeys,
    /// Read an agent's wallet key out.
    ExportWallet,
    /// Decide a dry run. It takes the ledger writer's time, as a payment does: an agent key may ask
    /// for its own agent only.
    DryRun,
    /// Set the trace a card's authorizations are tagged with.
    Tag,
    /// Verify the audit chains and make checkpoints: reads every record of every agent.
    Audit,
    /// Record what backs a treasury: deposits and withdrawals, money entering or leaving spendgate.
    Treasury,
    /// Use the MCP tools: they act for the key's own agent, so only an agent key has any.
    Tools,
    /// Ask people for a mandate (spend past the rules, which a person must approve).
    Ask,
}

impl Permission {
    /// What an agent key may do, for its own agent only.
    fn agent_may(self) -> bool {
        matches!(
            self,
            Permission::Read
                | Permission::Pay
                | Permission::DryRun
                | Permission::Tag
                | Permission::Tools
                | Permission::Ask
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Freeze => "freeze",
            Permission::Manage => "change agents, cards and policies or unfreeze",
            Permission::Pay => "pay from an agent's wallet",
            Permission::ManageKeys => "manage API keys",
            Permission::ExportWallet => "export wallet keys",
            Permission::DryRun => "decide dry runs",
            Permission::Tag => "set a card's trace",
            Permission::Tools => "use the MCP tools, which act for an agent key's own agent",
            Permission::Ask => "ask for a mandate",
            Permission::Audit => "verify the audit trail",
            Permission::Treasury => "record a treasury's deposits and withdrawals",
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: KeyId,
    pub role: Role,
    /// Set only for the `agent` role.
    pub agent_id: Option<AgentId>,
}

impl Principal {
    /// `agent` is the agent the request touches, if any: agent keys may only read their own.
    pub fn check(&self, permission: Permission, agent: Option<&AgentId>) -> Result<(), Denied> {
        let allowed = match self.role {
            _ if permission == Permission::Tools => self.role == Role::Agent && agent == self.agent_id.as_ref(),
            Role::Owner => true,
            Role::Manager => !matches!(
                permission,
                Permission::ManageKeys | Permission::ExportWallet | Permission::Audit | Permission::Treasury
            ),
            Role::Operator => matches!(permission, Permission::Read | Permission::Freeze | Permission::DryRun),
            Role::Agent => permission.agent_may() && agent.is_some() && agent == self.agent_id.as_ref(),
        };
        if allowed {
            Ok(())
        } else if self.role == Role::Agent && permission.agent_may() {
            Err(Denied("an agent key may act for its own agent only".into()))
        } else {
            Err(Denied(format!("the {} role may not {}", self.role, permission.describe())))
        }
    }
}

/// A refused permission, and why (for the caller: it names the role, not the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, agent: Option<&AgentId>) -> Principal {
        Principal { key_id: KeyId::generate(), role, agent_id: agent.cloned() }
    }

    #[test]
    fn roles_hold() {
        use Permission::*;
        let a = AgentId::generate();
        let owner = principal(Role::Owner, None);
        let manager = principal(Role::Manager, None);
        let operator = principal(Role::Operator, None);
        for p in [Read, Freeze, Manage, Pay, ManageKeys, ExportWallet, DryRun, Tag] {
            assert!(owner.check(p, Some(&a)).is_ok());
        }
        assert!(manager.check(Manage, Some(&a)).is_ok());
        assert!(manager.check(Pay, Some(&a)).is_ok());
        assert!(manager.check(ManageKeys, None).is_err());
        assert!(manager.check(ExportWallet, Some(&a)).is_err());
        assert!(operator.check(Pay, Some(&a)).is_err());
        assert!(operator.check(Read, None).is_ok());
        assert!(operator.check(Freeze, Some(&a)).is_ok());
        assert!(operator.check(Manage, Some(&a)).is_err());
        assert!(operator.check(Tag, Some(&a)).is_err() && manager.check(Tag, Some(&a)).is_ok());
        assert!(operator.check(DryRun, Some(&a)).is_ok() && manager.check(DryRun, Some(&a)).is_ok());
    }

    fn owner_tools_refused() -> bool {
        let a = AgentId::generate();
        [Role::Owner, Role::Manager, Role::Operator]
            .into_iter()
            .all(|role| principal(role, None).check(Permission::Tools, Some(&a)).is_err())
    }

    #[test]
    fn agent_keys_act_only_for_their_own_agent() {
        let mine = AgentId::generate();
        let other = AgentId::generate();
        let agent = principal(Role::Agent, Some(&mine));
        assert!(agent.check(Permission::Read, Some(&mine)).is_ok());
        assert!(agent.check(Permission::Read, Some(&other)).is_err());
        assert!(agent.check(Permission::Read, None).is_err());
        assert!(agent.check(Permission::Freeze, Some(&mine)).is_err());
        assert!(agent.check(Permission::Pay, Some(&mine)).is_ok());
        assert!(agent.check(Permission::Pay, Some(&other)).is_err());
        assert!(agent.check(Permission::ExportWallet, Some(&mine)).is_err());
        assert!(owner_tools_refused(), "the MCP tools are an agent key's only");
        for p in [Permission::DryRun, Permission::Tag, Permission::Tools, Permission::Ask] {
            assert!(agent.check(p, Some(&mine)).is_ok());
            assert!(agent.check(p, Some(&other)).is_err());
        }
        for p in [Permission::Manage, Permission::ManageKeys, Permission::Audit] {
            assert!(agent.check(p, Some(&mine)).is_err(), "{p:?}");
        }
    }
}
