//! Reference data the policy document is checked against: the ISO 18245 MCC list,
//! the named MCC groups, ISO 3166 countries and the policy templates.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::policy::{Policy, PolicyError};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MccGroup {
    pub reason: String,
    pub mcc: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyTemplate {
    pub name: String,
    pub description: String,
    pub policy: Policy,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    mcc: BTreeMap<String, String>,
    pub groups: BTreeMap<String, MccGroup>,
    countries: HashSet<&'static str>,
    pub templates: Vec<PolicyTemplate>,
}

impl Catalog {
    /// Builds the catalog from its sources and checks that they agree with each other:
    /// every group names known MCCs and every template is a valid policy.
    pub fn from_sources(mcc_csv: &str, groups_json: &str, templates_json: &str) -> Result<Self, String> {
        let mut mcc = BTreeMap::new();
        let mut reader = csv::Reader::from_reader(mcc_csv.as_bytes());
        for record in reader.records() {
            let record = record.map_err(|e| format!("MCC list: {e}"))?;
            let code = record.get(0).unwrap_or_default().trim();
            if code.len() != 4 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("MCC list: bad code {code:?}"));
            }
            mcc.insert(code.to_owned(), record.get(1).unwrap_or_default().to_owned());
        }
        let groups: BTreeMap<String, MccGroup> =
            serde_json::from_str(groups_json).map_err(|e| format!("MCC groups: {e}"))?;
        for (name, group) in &groups {
            if let Some(unknown) = group.mcc.iter().find(|code| !mcc.contains_key(*code)) {
                return Err(format!("MCC group {name} names unknown MCC {unknown}"));
            }
        }
        let countries = iso_country::data::all().into_iter().map(|c| c.alpha2).collect();
        let mut catalog = Catalog { mcc, groups, countries, templates: Vec::new() };
        let templates: Vec<PolicyTemplate> =
            serde_json::from_str(templates_json).map_err(|e| format!("policy templates: {e}"))?;
        let mut checked = Vec::with_capacity(templates.len());
        for mut template in templates {
            template
                .policy
                .normalize(&catalog, None)
                .map_err(|PolicyError(e)| format!("policy template {}: {e}", template.name))?;
            checked.push(template);
        }
        let names: BTreeSet<_> = checked.iter().map(|t| t.name.as_str()).collect();
        if names.len() != checked.len() {
            return Err("policy templates: duplicate name".into());
        }
        catalog.templates = checked;
        Ok(catalog)
    }

    pub fn is_known_mcc(&self, code: &str) -> bool {
        self.mcc.contains_key(code)
    }

    pub fn is_known_group(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    pub fn is_known_country(&self, alpha2: &str) -> bool {
        self.countries.contains(alpha2)
    }

    pub fn template(&self, name: &str) -> Option<&PolicyTemplate> {
        self.templates.iter().find(|t| t.name == name)
    }
}
