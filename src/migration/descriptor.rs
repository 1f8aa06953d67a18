//! A step as the plan shows it: what it will change (objects and fields), its
//! checks before and after, and its rollback; and what a step's descriptor may read.

use serde::Serialize;

use super::facts::{Source, Summary};
use super::profile::Profile;
use crate::cluster::inventory::Inventory;

/// One object a step changes, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `Kind namespace/name` or `Kind name`.
    pub object: String,
    /// create | patch | delete | scale | label | backup
    pub action: &'static str,
    /// The fields touched, or what is stored.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checks {
    pub before: Vec<String>,
    pub after: Vec<String>,
}

/// A step as the plan shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepPlan {
    pub id: &'static str,
    pub title: String,
    pub changes: Vec<Change>,
    pub checks: Checks,
    pub rollback: Vec<String>,
    /// Set when the step waits for a human (`apply --resume` continues).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
}

/// What a descriptor may read.
pub struct StepContext<'a> {
    pub inv: &'a Inventory,
    pub source: &'a Source,
    pub summary: &'a Summary,
    pub profile: &'a Profile,
    pub manifest_sha256: Option<&'a str>,
    /// sha256 of the target Calico's manifest align-versions reads, if pinned.
    pub calico_manifest_sha256: Option<&'a str>,
    /// `NAMESPACE/NAME` of the Helm release the operator is handed to, if asked.
    pub adopt_into: Option<&'a str>,
}

pub(crate) fn change(object: impl Into<String>, action: &'static str, fields: &[&str]) -> Change {
    Change {
        object: object.into(),
        action,
        fields: fields.iter().map(|s| s.to_string()).collect(),
    }
}

pub(crate) fn lines(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}
