//! `calico-migrate sandbox`: run the embedded Kubernetes API server.

use std::process::ExitCode;

use clap::Args;

use super::GlobalOpts;

/// Run an in-process Kubernetes API server seeded like an EKS cluster with aws-calico.
#[derive(Debug, Args)]
pub struct SandboxArgs {}

pub async fn run(_args: &SandboxArgs, _global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`calico-migrate sandbox` is not built yet")
}
