//! `calico-migrate policy`: expected reachability, policy-set diff, explain.

use std::process::ExitCode;

use clap::Args;

use super::GlobalOpts;

/// Compute what the policies allow (matrix), compare two policy sets (diff),
/// or explain one verdict.
#[derive(Debug, Args)]
pub struct PolicyArgs {}

pub fn run(_args: &PolicyArgs, _global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`calico-migrate policy` is not built yet")
}
