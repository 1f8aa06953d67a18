//! `calico-migrate check`: one round of connectivity and policy probes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::GlobalOpts;
use super::output::OutputFormat;
use crate::checks::{self, RoundOptions, RoundReport, outcome::compare_with_baseline, render};
use crate::engine::state_dir::write_atomic;

/// Run one round of connectivity and policy probes on every node.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Store this round as the baseline later rounds are compared with.
    #[arg(long)]
    pub baseline: bool,

    /// Probe image (needs `/agnhost connect` and `netexec`).
    #[arg(long, default_value = checks::workload::DEFAULT_IMAGE, value_name = "IMAGE")]
    pub image: String,

    /// Probes in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Milliseconds a connection may take before it counts as blocked.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub connect_timeout_ms: u64,

    /// Extra attempts for a probe that ends "check failed" (no other class is retried).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,

    /// Seconds to wait for the probe pods to run (and for leftovers to be removed).
    #[arg(long, default_value_t = 180, value_name = "SECONDS")]
    pub ready_timeout: u64,

    /// A namespace the GlobalNetworkPolicies exempt; one client per node there probes IMDS.
    #[arg(long, default_value = "kube-system", value_name = "NAMESPACE")]
    pub exempt_namespace: String,

    /// Skip the exempt-namespace IMDS probes.
    #[arg(long)]
    pub no_exempt_probe: bool,

    /// `host:port` each node's client connects to by name, proving DNS resolution.
    #[arg(long, value_name = "HOST:PORT")]
    pub dns: Option<String>,

    /// Probe only this node (repeatable; default every EC2 node).
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,

    /// Include every probe (not only failures) in JSON output.
    #[arg(long)]
    pub all_probes: bool,
}

fn baseline_path(state_dir: &Path) -> PathBuf {
    state_dir.join("check-baseline.json")
}

/// A kube client from --kubeconfig / --context (or $KUBECONFIG, ~/.kube/config).
async fn client(global: &GlobalOpts) -> anyhow::Result<kube::Client> {
    let opts = kube::config::KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    let config = match &global.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).with_context(|| {
                format!(
                    "cannot read kubeconfig {}; pass a readable file with --kubeconfig",
                    path.display()
                )
            })?;
            kube::Config::from_custom_kubeconfig(kc, &opts).await
        }
        None => kube::Config::from_kubeconfig(&opts).await,
    }
    .context(
        "cannot build a cluster client from the kubeconfig; check --kubeconfig and --context",
    )?;
    kube::Client::try_from(config).context("cannot create the cluster client")
}

fn validate_dns(dns: &Option<String>) -> anyhow::Result<()> {
    if let Some(d) = dns {
        let ok = d
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        anyhow::ensure!(
            ok,
            "--dns {d:?} is not HOST:PORT; give e.g. --dns kubernetes.default.svc.cluster.local:443"
        );
    }
    Ok(())
}

pub async fn run(args: &CheckArgs, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    validate_dns(&args.dns)?;
    let opts = RoundOptions {
        image: args.image.clone(),
        concurrency: usize::from(args.concurrency),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        retries: args.retries,
        ready_timeout: Duration::from_secs(args.ready_timeout),
        exempt_namespace: (!args.no_exempt_probe).then(|| args.exempt_namespace.clone()),
        dns_target: args.dns.clone(),
        nodes: (!args.nodes.is_empty()).then(|| args.nodes.clone()),
    };
    let client = client(global).await?;
    let mut report = checks::run_round(&client, &opts).await?;
    let path = baseline_path(&global.state_dir);
    if args.baseline {
        let text = serde_json::to_string_pretty(&report)?;
        write_atomic(&path, text.as_bytes())?;
    } else if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let base: RoundReport = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a check baseline; remove it or store a new one with --baseline",
                path.display()
            )
        })?;
        compare_with_baseline(&mut report, &base);
    }
    match global.output {
        OutputFormat::Json => super::output::print_json(&render::json(&report, args.all_probes))?,
        OutputFormat::Junit => print!("{}", render::junit(&report)),
        OutputFormat::Text | OutputFormat::Markdown => print!("{}", render::text(&report)),
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
