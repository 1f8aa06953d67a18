//! The migration's steps as data for the plan: what each will change (objects and
//! fields), its checks before and after, and its rollback. One file per step; the
//! apply/rollback code of each step joins its descriptor in the same file.

pub mod align_versions;
pub mod baseline;
pub mod cleanup_leftovers;
pub mod create_installation;
pub mod detach_helm;
pub mod fargate_affinity;
pub mod install_operator;
pub mod remove_probes;
pub mod takeover;
pub mod verify_completion;

use serde::Serialize;

use super::facts::{Generation, Source, Summary};
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

/// The ordered steps for this cluster (empty when there is nothing to migrate).
pub fn ordered(ctx: &StepContext) -> Vec<StepPlan> {
    if !matches!(
        ctx.source.generation,
        Generation::ManifestChart | Generation::ManifestUnmanaged
    ) {
        return Vec::new();
    }
    let mut steps = vec![baseline::describe(ctx)];
    steps.extend(align_versions::describe(ctx));
    steps.extend(detach_helm::describe(ctx));
    steps.extend(fargate_affinity::describe(ctx));
    steps.push(install_operator::describe(ctx));
    steps.push(create_installation::describe(ctx));
    steps.push(takeover::describe(ctx));
    steps.push(verify_completion::describe(ctx));
    steps.push(cleanup_leftovers::describe(ctx));
    steps.push(remove_probes::describe(ctx));
    steps
}

/// A step as apply and rollback run it.
pub type RunStep = Box<dyn crate::engine::Step<super::world::Cluster>>;

/// The runnable step for a planned id; None for an id this build cannot run
/// (apply then refuses before changing anything).
pub fn runnable(id: &str) -> Option<RunStep> {
    match id {
        baseline::ID => Some(Box::new(baseline::Baseline)),
        align_versions::ID => Some(Box::new(align_versions::AlignVersions)),
        detach_helm::ID => Some(Box::new(detach_helm::DetachHelm)),
        fargate_affinity::ID => Some(Box::new(fargate_affinity::FargateAffinity)),
        install_operator::ID => Some(Box::new(install_operator::InstallOperator)),
        create_installation::ID => Some(Box::new(create_installation::CreateInstallation)),
        takeover::ID => Some(Box::new(takeover::Takeover)),
        verify_completion::ID => Some(Box::new(verify_completion::VerifyCompletion)),
        cleanup_leftovers::ID => Some(Box::new(cleanup_leftovers::CleanupLeftovers)),
        remove_probes::ID => Some(Box::new(remove_probes::RemoveProbes)),
        _ => None,
    }
}
