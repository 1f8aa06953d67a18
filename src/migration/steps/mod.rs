//! The migration's steps, one file each: its plan descriptor (`describe`, what it
//! will change, its checks and its rollback) and its `engine::Step` (apply and
//! rollback). Steps are leaves: they import the shared parts of `migration` (refs,
//! capture, nodes, operator, wait, rollout, swap, pre_operator, way_back, policies)
//! and the world, never each other. This module only lists them in order.

pub mod adopt_release;
pub mod align_versions;
pub mod baseline;
pub mod cleanup_leftovers;
pub mod create_installation;
pub mod detach_helm;
pub mod fargate_affinity;
pub mod install_operator;
pub mod keep_release;
pub mod remove_probes;
pub mod takeover;
pub mod upgrade_operator;
pub mod verify_completion;

use super::descriptor::{StepContext, StepPlan};
use super::facts::Generation;
use super::profile::SourceInstall;
use super::world::World;

/// The ordered steps for this cluster (empty when there is nothing to migrate).
pub fn ordered(ctx: &StepContext) -> Vec<StepPlan> {
    if ctx.source.generation == Generation::OperatorChart
        && ctx.profile.source.install == SourceInstall::Operator
    {
        // The operator-based chart: keep, detach, then upgrade the operator it installed.
        let mut steps = vec![baseline::describe(ctx)];
        steps.extend(keep_release::describe(ctx));
        steps.extend(detach_helm::describe(ctx));
        steps.push(upgrade_operator::describe(ctx));
        steps.push(verify_completion::describe(ctx));
        steps.extend(adopt_release::describe(ctx));
        steps.push(remove_probes::describe(ctx));
        return steps;
    }
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
    steps.extend(adopt_release::describe(ctx));
    steps.push(remove_probes::describe(ctx));
    steps
}

/// A step as apply and rollback run it.
pub type RunStep = Box<dyn crate::engine::Step<World>>;

/// The runnable step for a planned id; None for an id this build cannot run
/// (apply then refuses before changing anything).
pub fn runnable(id: &str) -> Option<RunStep> {
    match id {
        adopt_release::ID => Some(Box::new(adopt_release::AdoptIntoRelease)),
        baseline::ID => Some(Box::new(baseline::Baseline)),
        align_versions::ID => Some(Box::new(align_versions::AlignVersions)),
        detach_helm::ID => Some(Box::new(detach_helm::DetachHelm)),
        fargate_affinity::ID => Some(Box::new(fargate_affinity::FargateAffinity)),
        install_operator::ID => Some(Box::new(install_operator::InstallOperator)),
        keep_release::ID => Some(Box::new(keep_release::KeepRelease)),
        upgrade_operator::ID => Some(Box::new(upgrade_operator::UpgradeOperator)),
        create_installation::ID => Some(Box::new(create_installation::CreateInstallation)),
        takeover::ID => Some(Box::new(takeover::Takeover)),
        verify_completion::ID => Some(Box::new(verify_completion::VerifyCompletion)),
        cleanup_leftovers::ID => Some(Box::new(cleanup_leftovers::CleanupLeftovers)),
        remove_probes::ID => Some(Box::new(remove_probes::RemoveProbes)),
        _ => None,
    }
}
