//! `calico-migrate plan`: read the cluster, predict blockers, write the steps.

use std::process::ExitCode;

use clap::Args;

use super::GlobalOpts;

/// Read the cluster, predict what would block the migration, and write the ordered steps.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Migration profile (a file in plans/ or a path).
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
}

pub async fn run(_args: &PlanArgs, _global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    super::not_built("plan", 6)
}
