//! `calico-migrate check`: one round of connectivity and policy probes.

use std::process::ExitCode;

use clap::Args;

use super::GlobalOpts;

/// Run one round of connectivity and policy probes on every node.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Store this round as the baseline later rounds are compared with.
    #[arg(long)]
    pub baseline: bool,
}

pub async fn run(_args: &CheckArgs, _global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    super::not_built("check", 7)
}
