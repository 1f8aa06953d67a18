//! `calico-migrate sandbox`: run the embedded Kubernetes API server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::GlobalOpts;
use crate::sandbox::apiserver::store::persist::Transition;
use crate::sandbox::controllers::{self, ControllerFaults, ControllerOptions, Timings};
use crate::sandbox::datadir::{DataDir, Saver};
use crate::sandbox::dataplane::{self, DataPlane, DataPlaneFaults, DataPlaneOptions};
use crate::sandbox::faults::FaultKnobs;
use crate::sandbox::scenario::{self, ChartGeneration, ScenarioConfig};
use crate::sandbox::{FaultConfig, KubernetesVersion, Sandbox, SandboxOptions};

/// Run an in-process Kubernetes API server seeded like an EKS cluster with aws-calico
/// (or without Calico: --no-calico).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    calico-migrate sandbox --kubeconfig-out /tmp/sandbox.kubeconfig\n  \
    KUBECONFIG=/tmp/sandbox.kubeconfig kubectl get nodes\n  \
    calico-migrate sandbox --fault latency:20 --fault api-errors:0.05\n  \
    calico-migrate sandbox --no-calico --kubernetes-version 1.21 --kubeconfig-out /tmp/sb.kubeconfig\n  \
    helm --kubeconfig /tmp/sb.kubeconfig install aws-calico aws-calico-0.3.10.tgz -n kube-system\n  \
    calico-migrate sandbox --no-calico --kubernetes-version 1.21 --data-dir /tmp/eks   # kept in /tmp/eks\n  \
    calico-migrate sandbox --data-dir /tmp/eks --kubernetes-version 1.22              # upgraded to 1.22\n\n\
    Faults can be changed while running:\n  \
    kubectl -n sandbox-system patch configmap faults --type merge -p '{\"data\":{\"api-errors\":\"0\"}}'")]
pub struct SandboxArgs {
    /// Number of EKS nodes in the seeded cluster.
    #[arg(long, default_value_t = 6)]
    pub nodes: usize,
    /// Fargate nodes beside them, as EKS registers them (`fargate-ip-...`, label and
    /// taint `eks.amazonaws.com/compute-type=fargate`), each running one pod of the
    /// Fargate profile namespace `fargate-apps`; no DaemonSet pod runs there.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub fargate_nodes: usize,
    /// Number of user namespaces (each with its NetworkPolicies and pods).
    #[arg(long, default_value_t = 8)]
    pub namespaces: usize,
    /// Pods in each user namespace.
    #[arg(long, default_value_t = 2)]
    pub pods_per_namespace: usize,
    /// aws-calico chart generation of the seeded cluster: 0.3.10 (Calico manifests in
    /// kube-system; the default) or 0.3.11 (tigera-operator with Helm-managed CRDs).
    #[arg(long, value_parser = ["0.3.10", "0.3.11"], value_name = "VERSION")]
    pub chart: Option<String>,
    /// Seed the EKS cluster without Calico, for installing the real aws-calico chart
    /// with real Helm (`helm install aws-calico aws-calico-0.3.10.tgz -n kube-system`),
    /// e.g. to compare what Helm makes with the built-in seed or to run `helm
    /// uninstall`: the same nodes, add-ons, namespaces, workloads and NetworkPolicies, but
    /// no aws-calico release, no calico-node or typha, no Calico CRDs, RBAC or policies.
    /// Not with --chart (there is no seeded release to pick) or --empty.
    #[arg(long, conflicts_with = "empty")]
    pub no_calico: bool,
    /// Helm release name of the chart (`aws-calico` in the chart README).
    #[arg(long, default_value = "aws-calico", value_name = "NAME")]
    pub release_name: String,
    /// Seed of the scenario, uids and fault draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Start empty (only the built-in namespaces) instead of seeding the EKS scenario.
    #[arg(long)]
    pub empty: bool,
    /// Loopback address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: String,
    /// Where to write the kubeconfig (default: <state-dir>/sandbox.kubeconfig).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Fault to inject (repeatable): latency:MS, api-errors:RATE, drop-watch:RATE, conflicts:RATE;
    /// controllers: operator-stall:NODE, typha-stuck, node-join:N, agent-not-ready:NODE.
    /// Data plane: lapse:NODE (policy enforcement on NODE lapses to allow-all).
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<String>,
    /// Simulated seconds per real second for the controllers and the operator.
    #[arg(long, default_value_t = 10.0, value_name = "FACTOR")]
    pub time_scale: f64,
    /// The controllers' timings: `fast` (a pod starts in 3 s, calico-node is Ready when
    /// it starts, the operator tries the leader lock at once) or `realistic` (a pod starts
    /// in 5 s, calico-node is Ready one readiness-probe period later, the operator tries
    /// the lock 4.5 s after its start; sources in docs/sandbox-behaviour.md). In
    /// simulated seconds, like the flags below, which override the preset's figure.
    #[arg(long, value_parser = ["fast", "realistic"], default_value = "fast", value_name = "PRESET")]
    pub timings: String,
    /// Simulated seconds from a pod's creation to Ready (default: the preset's).
    #[arg(long, value_name = "SECONDS")]
    pub pod_start_delay: Option<f64>,
    /// Simulated seconds between two actions of the simulated Tigera operator (default 1).
    #[arg(long, value_name = "SECONDS")]
    pub operator_step: Option<f64>,
    /// Serve the API only: no workload controllers, no operator.
    #[arg(long)]
    pub no_controllers: bool,
    /// Kubernetes minor to serve, 1.21 to 1.34 (also written v1.21; default 1.34, or the
    /// minor the --data-dir cluster runs). It sets what `/version` and `kubectl version`
    /// report and which API versions exist: up to 1.21 apiextensions.k8s.io/v1beta1 CRDs
    /// and rbac.authorization.k8s.io/v1beta1 are served, up to 1.24 policy/v1beta1
    /// PodDisruptionBudgets and PodSecurityPolicies (from 1.25 `kubectl get psp` finds no
    /// such resource). With a --data-dir that holds a cluster: its minor restarts it, the
    /// next minor upgrades it; anything else is refused.
    #[arg(long, value_name = "1.MINOR", value_parser = parse_kubernetes_version)]
    pub kubernetes_version: Option<KubernetesVersion>,
    /// Keep the cluster in DIR (created when missing): a new or empty DIR is seeded as
    /// without it; a DIR holding a cluster is that cluster (the seed flags are ignored),
    /// restarted at its minor or upgraded to the next with --kubernetes-version. Saved
    /// about a second after each write and on stop; one sandbox per DIR at a time.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// clap's parser for `--kubernetes-version`: the sentence of `VersionError`.
pub fn parse_kubernetes_version(s: &str) -> Result<KubernetesVersion, String> {
    KubernetesVersion::parse(s).map_err(|e| e.to_string())
}

pub async fn run(args: &SandboxArgs, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    if let (true, Some(chart)) = (args.no_calico, &args.chart) {
        anyhow::bail!(
            "--no-calico seeds no aws-calico release, so --chart {chart} has no release to pick: \
             drop --chart and install the chart with helm, or drop --no-calico to seed its release"
        );
    }
    // `lapse:NODE` goes to the data plane; everything else on as before.
    let (dataplane_specs, other_specs): (Vec<String>, Vec<String>) = args
        .faults
        .iter()
        .cloned()
        .partition(|s| dataplane::faults::is_dataplane_spec(s));
    let dataplane_faults = DataPlaneFaults::parse_specs(&dataplane_specs)?;
    let (behaviour, api): (Vec<String>, Vec<String>) = other_specs
        .iter()
        .cloned()
        .partition(|s| controllers::faults::is_controller_fault(s));
    let faults = FaultConfig::parse_specs(&api)?;
    let preset = ControllerOptions::with_timings(if args.timings == "realistic" {
        Timings::Realistic
    } else {
        Timings::Fast
    });
    let controller_opts = ControllerOptions {
        time_scale: args.time_scale,
        pod_start_delay: args.pod_start_delay.unwrap_or(preset.pod_start_delay),
        operator_step: args.operator_step.unwrap_or(preset.operator_step),
        faults: ControllerFaults::parse_specs(&behaviour)?,
        ..preset
    };
    controller_opts.validate()?;
    let opts = SandboxOptions {
        seed: args.seed,
        faults,
        kubernetes_version: args.kubernetes_version.unwrap_or_default(),
        ..Default::default()
    };
    let (data_dir, stored) = match &args.data_dir {
        Some(path) => {
            let (dir, image) = DataDir::open(path)?;
            (Some(Arc::new(dir)), image)
        }
        None => (None, None),
    };
    let (sb, restored) = match (&data_dir, stored) {
        (Some(dir), Some(image)) => {
            let r = dir.restore(image, args.kubernetes_version, opts.history, opts.seed)?;
            match r.transition {
                Transition::Restart(kv) => eprintln!(
                    "sandbox restarting the Kubernetes {kv} cluster of {}",
                    dir.path().display()
                ),
                Transition::Upgrade { from, to } => eprintln!(
                    "sandbox upgrading the cluster of {} from Kubernetes {from} to {to}",
                    dir.path().display()
                ),
            }
            (Sandbox::with_store(opts, r.store), true)
        }
        _ => (Sandbox::new(opts), false),
    };
    let kubernetes = sb.store().kubernetes_version();
    // A restored store is the cluster: nothing is seeded into it.
    let seeded = if restored || args.empty {
        0
    } else {
        // Scenario knobs without a flag keep their defaults.
        let cfg = ScenarioConfig {
            nodes: args.nodes,
            fargate_nodes: args.fargate_nodes,
            namespaces: args.namespaces,
            pods_per_namespace: args.pods_per_namespace,
            seed: args.seed,
            calico: !args.no_calico,
            chart: if args.chart.as_deref() == Some("0.3.11") {
                ChartGeneration::V0_3_11
            } else {
                ChartGeneration::V0_3_10
            },
            release_name: args.release_name.clone(),
            ..ScenarioConfig::default()
        };
        let objects = scenario::build(&cfg).context("cannot build the seed scenario")?;
        sb.load(objects)
            .context("cannot load the seed scenario into the sandbox")?
    };
    // The upgrade (or the seed) is the cluster's state from now on.
    let saver = match &data_dir {
        Some(dir) => {
            dir.save(sb.store())?;
            Some(Saver::start(sb.store().clone(), dir.clone()))
        }
        None => None,
    };
    let controllers = if args.no_controllers {
        None
    } else {
        Some(sb.start_controllers(controller_opts)?)
    };
    // A restored cluster runs with this command line's data-plane faults, as it runs with
    // its API and controller faults, not with those of the stored run.
    if restored {
        dataplane_faults
            .write(sb.store())
            .context("cannot set the data plane's faults")?;
    }
    let data_plane = DataPlane::start(
        &sb,
        DataPlaneOptions {
            faults: dataplane_faults,
            ..DataPlaneOptions::default()
        },
    )
    .context("cannot start the simulated data plane")?;
    let signals = StopSignals::listen()?;
    let handle = sb
        .serve(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let path = args
        .kubeconfig_out
        .clone()
        .unwrap_or_else(|| global.state_dir.join("sandbox.kubeconfig"));
    handle
        .write_kubeconfig(&path)
        .with_context(|| format!("cannot write the kubeconfig to {}", path.display()))?;
    eprintln!(
        "sandbox serving Kubernetes {kubernetes} at {} with {seeded} seeded objects; stop with Ctrl-C\n  export KUBECONFIG={}",
        handle.url(),
        path.display()
    );
    println!("{}", path.display());
    signals.wait().await?;
    eprintln!("sandbox stopping");
    if let Some(c) = controllers {
        c.stop();
    }
    data_plane.stop();
    handle.shutdown().await;
    if let Some(saver) = saver {
        saver.stop().await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, listened for from its creation: made before the kubeconfig's
/// path is printed, so a client that stops the sandbox as soon as it is ready gets a
/// clean stop (and the data dir its last save), not the default action of the signal.
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn wait(mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        Ok(())
    }
}
