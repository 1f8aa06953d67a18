//! What the migration steps act on: the cluster (objects of any kind), the saved
//! plan and profile, the state dir, the operator manifest, and the checks (one
//! probe workload for the whole run, a baseline round, rounds compared with it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::converter::ConverterLine;
use super::profile::Profile;
use super::round_sample::round_sample;
use crate::checks::conn::ConnReport;
use crate::checks::outcome::compare_with_baseline;
use crate::checks::{self, NodeWatch, Prober, RoundOptions, RoundReport};
use crate::cluster::objects::Objects;

/// File in the state dir holding the baseline round apply compares later rounds with.
pub const BASELINE_ROUND_FILE: &str = "apply-baseline-round.json";

/// How apply paces and checks, beyond the profile.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Pause after each node's swap (the profile's `pacing.pause_seconds` unless overridden).
    pub pause: Duration,
    /// Longest wait for one node's new agent (profile `pacing.node_ready_timeout_seconds`).
    pub node_ready_timeout: Duration,
    /// Longest a node may go without verified enforcement during its swap.
    pub max_swap: Duration,
    /// How often long waits poll the cluster.
    pub poll: Duration,
    /// Swapped nodes between two bounded rounds (each node's own swap is always probed).
    pub full_round_every: usize,
    /// Nodes a bounded round between swaps probes (profile `checks.round_sample_nodes`).
    pub round_sample_nodes: usize,
    /// Hold established connections across the takeover's swaps (profile
    /// `checks.hold_connections`).
    pub hold_connections: bool,
    /// Pause between two requests on a held connection.
    pub hold_interval: Duration,
    /// The probe rounds.
    pub round: RoundOptions,
}

impl ApplyOptions {
    /// For a sandbox whose clock runs `factor` times faster than real time: pauses,
    /// waits and the poll divided by it (with floors that leave room for the real time
    /// API calls and probes take), so the tool watches at the sandbox's pace: as often
    /// per simulated second as it would per second on a real cluster, never more
    /// often than every 50 ms.
    pub fn for_time_scale(mut self, factor: f64) -> Self {
        if factor <= 1.0 {
            return self;
        }
        let scale = |d: Duration| Duration::from_secs_f64(d.as_secs_f64() / factor);
        self.pause = scale(self.pause);
        self.node_ready_timeout = scale(self.node_ready_timeout).max(Duration::from_secs(20));
        self.max_swap = scale(self.max_swap).max(Duration::from_secs(10));
        self.poll = scale(self.poll).max(Duration::from_millis(50));
        self.hold_interval = scale(self.hold_interval).max(Duration::from_millis(20));
        self.round.ready_timeout = Duration::from_secs(30);
        self.round.connect_timeout = Duration::from_millis(500);
        self
    }

    pub fn from_profile(profile: &Profile) -> Self {
        let round = RoundOptions {
            connect_timeout: Duration::from_secs(profile.checks.probe_timeout_seconds.max(1)),
            ..RoundOptions::default()
        };
        ApplyOptions {
            pause: Duration::from_secs(profile.pacing.pause_seconds),
            node_ready_timeout: Duration::from_secs(profile.pacing.node_ready_timeout_seconds),
            max_swap: Duration::from_secs(profile.checks.max_swap_seconds),
            poll: Duration::from_secs(1),
            full_round_every: profile.checks.full_round_every_nodes.max(1) as usize,
            round_sample_nodes: profile.checks.round_sample_nodes.max(1) as usize,
            hold_connections: profile.checks.hold_connections,
            hold_interval: Duration::from_secs(1),
            round,
        }
    }
}

/// Something a step observed that the final report shows (swap windows, rounds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observation {
    Round {
        step: String,
        label: String,
        passed: bool,
        probes: usize,
        nodes: usize,
        millis: u64,
    },
    NodeSwap {
        step: String,
        watch: NodeWatch,
    },
    /// Established connections held across swaps, after one node's (or, at the end,
    /// across all of them).
    HeldConnections {
        step: String,
        report: ConnReport,
    },
    Note {
        step: String,
        text: String,
    },
}

/// The reviewed manifests a plan pinned, read back (session::manifests).
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    /// The operator manifest (install-operator).
    pub operator: Vec<Value>,
    /// The target Calico's manifest install (align-versions).
    pub calico: Vec<Value>,
}

/// The world of the migration steps.
pub struct World {
    pub objects: Objects,
    pub profile: Profile,
    /// The saved plan's `plan` (the JSON of `migration::plan::Plan`).
    pub plan: Value,
    pub state_dir: PathBuf,
    /// Objects of the reviewed operator manifest (empty when the profile installs
    /// the operator externally).
    pub operator_manifest: Vec<Value>,
    /// Objects of the target Calico's manifest install, which align-versions reads
    /// (empty when the plan does not align).
    pub calico_manifest: Vec<Value>,
    pub options: ApplyOptions,
    prober: tokio::sync::Mutex<Option<Arc<Prober>>>,
    observations: Mutex<Vec<Observation>>,
}

impl World {
    /// The cluster's Kubernetes version as its API server reports it (`/version`
    /// gitVersion, e.g. `v1.29.3-eks-…`).
    pub async fn server_version(&self) -> anyhow::Result<String> {
        Ok(self
            .objects
            .client()
            .apiserver_version()
            .await
            .context("reading the cluster's Kubernetes version")?
            .git_version)
    }

    pub fn new(
        objects: Objects,
        profile: Profile,
        plan: Value,
        state_dir: &Path,
        manifests: Manifests,
        options: ApplyOptions,
    ) -> Self {
        World {
            objects,
            profile,
            plan,
            state_dir: state_dir.to_path_buf(),
            operator_manifest: manifests.operator,
            calico_manifest: manifests.calico,
            options,
            prober: tokio::sync::Mutex::new(None),
            observations: Mutex::new(Vec::new()),
        }
    }

    pub fn client(&self) -> &kube::Client {
        self.objects.client()
    }

    /// The planned step's descriptor (changes, checks, rollback) from the saved plan.
    pub fn planned_step(&self, id: &str) -> Option<&Value> {
        self.plan
            .get("steps")
            .and_then(Value::as_array)?
            .iter()
            .find(|s| s.get("id").and_then(Value::as_str) == Some(id))
    }

    /// What the target operator's converter accepts (from the profile's operator version).
    pub fn converter_line(&self) -> ConverterLine {
        ConverterLine::of(&self.profile.target.operator_version)
    }

    /// The Helm release the plan found: (name, namespace, revision).
    pub fn release(&self) -> Option<(String, String, u32)> {
        let src = self.plan.get("source")?;
        let name = src.get("release")?.as_str()?.to_string();
        let ns = src
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("kube-system")
            .to_string();
        let rev = src
            .get("release_revision")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        Some((name, ns, rev))
    }

    pub fn observe(&self, o: Observation) {
        if let Ok(mut v) = self.observations.lock() {
            v.push(o);
        }
    }

    pub fn observations(&self) -> Vec<Observation> {
        self.observations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// The probe workload, set up on first use (after a crash, set up again: its pods
    /// anew, its namespaces and NetworkPolicy kept, so no policy object changes while
    /// the operator may be replacing agents).
    pub async fn prober(&self) -> anyhow::Result<Arc<Prober>> {
        let mut slot = self.prober.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        self.wait_for_agents().await?;
        let p = Arc::new(
            Prober::setup_keeping_policies(self.client(), &self.options.round)
                .await
                .context("setting up the probe workload")?,
        );
        *slot = Some(p.clone());
        Ok(p)
    }

    /// The probe workload, covering `node` too: a node that joined after the workload
    /// was set up gets its probe pods (once every node, it included, has a Ready agent).
    pub async fn prober_covering(&self, node: &str) -> anyhow::Result<Arc<Prober>> {
        let p = self.prober().await?;
        if p.nodes().iter().any(|n| n == node) {
            return Ok(p);
        }
        let mut slot = self.prober.lock().await;
        self.wait_for_agents().await?;
        tracing::info!("node {node} joined: adding its probe pods");
        let p = Arc::new(
            Prober::extend(self.client(), &self.options.round)
                .await
                .context("adding probe pods for a node that joined")?,
        );
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Wait (at most `node_ready_timeout`) until the agents are settled: every node has
    /// a Ready calico-node that nothing is about to replace (`settled`). A probe pod
    /// created on a node mid-swap would fail closed there, and new pod addresses are
    /// what rules frozen on a swapping node do not know; a node relabelled just before
    /// the operator was frozen, or a rolling update between two nodes, has a Ready
    /// agent now and a swap a moment later.
    async fn wait_for_agents(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + self.options.node_ready_timeout;
        let mut tick = crate::checks::every(self.options.poll);
        loop {
            let unsettled = super::nodes::unsettled_agents(&self.objects).await?;
            if unsettled.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "the calico-node agents have not settled for {} s ({}), so no probe pod is created (one created mid-swap would fail closed); find why (`kubectl -n kube-system get pods -o wide`, `kubectl -n calico-system get pods -o wide`, `kubectl get ds -A`), then `calico-migrate apply --resume` or `calico-migrate rollback`",
                    self.options.node_ready_timeout.as_secs(),
                    unsettled.join("; ")
                );
            }
            tick.tick().await;
        }
    }

    /// Remove the probe workload (idempotent; also removes leftovers of a crashed run).
    pub async fn remove_probes(&self) -> anyhow::Result<()> {
        self.prober.lock().await.take();
        checks::cleanup(self.client(), self.options.round.ready_timeout)
            .await
            .context("removing the probe workload")
    }

    fn baseline_path(&self) -> PathBuf {
        self.state_dir.join(BASELINE_ROUND_FILE)
    }

    /// The stored baseline round, if the baseline step has run.
    pub fn baseline_round(&self) -> anyhow::Result<Option<RoundReport>> {
        Ok(crate::engine::state_dir::read_json(
            &self.baseline_path(),
            "it is the baseline check round later checks compare with; restore it from a copy of the state dir, or roll back and start again",
        )?)
    }

    /// Store `report` as the baseline.
    pub fn save_baseline_round(&self, report: &RoundReport) -> anyhow::Result<()> {
        Ok(crate::engine::state_dir::write_atomic(
            &self.baseline_path(),
            &serde_json::to_vec(report)?,
        )?)
    }

    /// Run a round, compare it with the policies and the baseline, record it, and
    /// fail naming the nodes and pairs when it did not pass.
    pub async fn check_round(&self, step: &str, label: &str) -> anyhow::Result<RoundReport> {
        self.check_round_of(step, label, None).await
    }

    /// [`World::check_round`] over a sample of `options.round_sample_nodes` of the probed
    /// nodes not in `skipped` (those swapping now, which their own watch covers), seeded
    /// by `seed` ([`round_sample`]).
    pub async fn check_sampled_round(
        &self,
        step: &str,
        label: &str,
        seed: u64,
        skipped: &BTreeSet<String>,
    ) -> anyhow::Result<RoundReport> {
        let prober = self.prober().await?;
        let sample = round_sample(
            prober.nodes(),
            skipped,
            self.options.round_sample_nodes,
            seed,
        );
        let label = format!("{label} ({} sampled nodes)", sample.len());
        self.check_round_of(step, &label, Some((&sample, skipped)))
            .await
    }

    /// [`World::check_round`] over the probes touching `nodes` and none touching
    /// `skipped`, or over every node with `None`.
    pub async fn check_round_of(
        &self,
        step: &str,
        label: &str,
        scope: Option<(&BTreeSet<String>, &BTreeSet<String>)>,
    ) -> anyhow::Result<RoundReport> {
        let prober = self.prober().await?;
        let round = match scope {
            None => prober.round().await,
            Some((nodes, skipped)) => prober.round_touching(nodes, skipped).await,
        };
        let mut report = round.with_context(|| format!("running the {label} check round"))?;
        if let Some(base) = self.baseline_round()? {
            compare_with_baseline(&mut report, &base);
        }
        self.observe(Observation::Round {
            step: step.to_string(),
            label: label.to_string(),
            passed: report.passed,
            probes: report.probes,
            nodes: report.nodes,
            millis: report.millis,
        });
        if !report.passed {
            anyhow::bail!("{}", failed_round_message(label, &report));
        }
        Ok(report)
    }
}

/// A failed round in a sentence or two: which nodes, which pairs.
pub fn failed_round_message(label: &str, report: &RoundReport) -> String {
    let pairs: Vec<String> = report
        .failures
        .iter()
        .take(5)
        .map(|f| {
            format!(
                "{} -> {}:{} expected {:?}, observed {:?} ({:?})",
                f.from, f.to, f.port, f.expected, f.observed, f.class
            )
        })
        .collect();
    let more = report.failures.len().saturating_sub(pairs.len());
    let changes = report.baseline_changes.len();
    format!(
        "{label} check failed on node(s) {}: {}{}{}",
        if report.failed_nodes.is_empty() {
            "(none named)".to_string()
        } else {
            report.failed_nodes.join(", ")
        },
        pairs.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        },
        if changes > 0 {
            format!("; {changes} probe(s) differ from the baseline round")
        } else {
            String::new()
        }
    )
}
