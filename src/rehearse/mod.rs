//! A whole rehearsal against an embedded sandbox: plan, apply with checks (faults
//! injected once the baseline is taken, cleared when the run stops, then resumed),
//! a verification round, a rollback back to the baseline, and a second apply.
//! Everything the report says is measured here; nothing is assumed.

pub mod from_cluster;
pub mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cluster::objects::Objects;
use crate::cluster::{access, inventory};
use crate::engine::state_dir::{create_private_dir, write_atomic};
use crate::engine::{Journal, Mode, Outcome, RetryPolicy, RunObserver, run_observed};
use crate::migration::permissions;
use crate::migration::plan::{self, Pins, SavedPlan};
use crate::migration::profile::Profile;
use crate::migration::session::{self, identity, planned_steps};
use crate::migration::world::{ApplyOptions, Observation, World};
use crate::sandbox::controllers::{self, ControllerFaults};
use crate::sandbox::dataplane::{self, DataPlaneFaults};
use crate::sandbox::faults::FaultKnobs;
use crate::sandbox::scenario::{self, ScenarioConfig};
use crate::sandbox::{FaultConfig, snapshot};
use crate::testkit::{Rig, RigOptions};

pub use report::{FaultReport, PhaseReport, Report, StepTiming};

/// What to rehearse.
#[derive(Debug, Clone)]
pub struct RehearseOptions {
    pub nodes: usize,
    /// Fargate nodes beside the EC2 ones (`ScenarioConfig::fargate_nodes`).
    pub fargate_nodes: usize,
    pub namespaces: usize,
    pub seed: u64,
    /// Fault specs (`lapse:NODE`, `agent-not-ready:NODE`, `operator-stall:NODE`,
    /// `typha-stuck`, `node-join:N`, `api-errors:0.05`, ...), injected after the baseline.
    pub faults: Vec<String>,
    /// Simulated seconds per real second.
    pub time_scale: f64,
    /// Seconds (simulated) to pause after each node, in place of the profile's
    /// `pacing.pause_seconds`; 0 runs the pipelined takeover.
    pub pause_seconds: Option<u64>,
    /// The Kubernetes minor the sandbox serves (plan picks the path from it).
    pub kubernetes_version: crate::sandbox::KubernetesVersion,
    /// A live cluster's nodes, namespaces and policies in place of the generated
    /// ones (`--from-cluster`); `nodes` and `namespaces` are then ignored.
    pub cluster: Option<from_cluster::ClusterCopy>,
}

impl Default for RehearseOptions {
    fn default() -> Self {
        RehearseOptions {
            nodes: 6,
            fargate_nodes: 0,
            namespaces: 8,
            seed: 1,
            faults: Vec::new(),
            time_scale: 50.0,
            pause_seconds: None,
            kubernetes_version: crate::sandbox::KubernetesVersion::default(),
            cluster: None,
        }
    }
}

/// Faults split by what injects them, parsed before anything starts.
#[derive(Debug, Clone, Default)]
struct Faults {
    dataplane: DataPlaneFaults,
    controllers: ControllerFaults,
    api: FaultConfig,
    specs: Vec<String>,
}

fn parse_faults(specs: &[String]) -> anyhow::Result<Faults> {
    let (dp, rest): (Vec<String>, Vec<String>) = specs
        .iter()
        .cloned()
        .partition(|s| dataplane::faults::is_dataplane_spec(s));
    let (ctl, api): (Vec<String>, Vec<String>) = rest
        .into_iter()
        .partition(|s| controllers::faults::is_controller_fault(s));
    Ok(Faults {
        dataplane: DataPlaneFaults::parse_specs(&dp)
            .map_err(|e| anyhow::anyhow!("--fault: {e}"))?,
        controllers: ControllerFaults::parse_specs(&ctl)
            .map_err(|e| anyhow::anyhow!("--fault: {e}"))?,
        api: FaultConfig::parse_specs(&api).map_err(|e| anyhow::anyhow!("--fault: {e}"))?,
        specs: specs.to_vec(),
    })
}

/// The seed objects of the rehearsal's sandbox.
fn scenario_objects(opts: &RehearseOptions) -> anyhow::Result<Vec<Value>> {
    let (nodes, namespaces) = match &opts.cluster {
        Some(c) => (c.nodes.len(), 0),
        None => (opts.nodes, opts.namespaces),
    };
    let objects = scenario::build(&ScenarioConfig {
        nodes,
        fargate_nodes: opts.fargate_nodes,
        namespaces,
        pods_per_namespace: 1,
        seed: opts.seed,
        ..ScenarioConfig::default()
    })
    .context("building the sandbox scenario")?;
    match &opts.cluster {
        Some(c) => from_cluster::adopt(objects, c),
        None => Ok(objects),
    }
}

/// Names of the nodes that run Calico (not Fargate) in name order (what `@N` in a
/// fault spec counts).
fn node_names(objects: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .filter(|o| o["kind"] == "Node")
        .filter(|o| {
            o.pointer("/metadata/labels/eks.amazonaws.com~1compute-type")
                != Some(&Value::from("fargate"))
        })
        .filter_map(|o| o.pointer("/metadata/name")?.as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// `KNOB:@N` names the N-th node (1-based, in name order): node names of a sandbox
/// are not known before it is built.
fn resolve_node_refs(specs: &[String], nodes: &[String]) -> anyhow::Result<Vec<String>> {
    specs
        .iter()
        .map(|spec| {
            let Some((knob, value)) = spec.split_once(':') else {
                return Ok(spec.clone());
            };
            let Some(n) = value.strip_prefix('@') else {
                return Ok(spec.clone());
            };
            let i: usize = n.parse().map_err(|_| {
                anyhow::anyhow!(
                    "--fault {spec}: `@{n}` must be a node number, 1 to {}",
                    nodes.len()
                )
            })?;
            let node = i.checked_sub(1).and_then(|i| nodes.get(i)).ok_or_else(|| {
                anyhow::anyhow!(
                    "--fault {spec}: the sandbox has {} node(s); use @1 to @{}",
                    nodes.len(),
                    nodes.len()
                )
            })?;
            Ok(format!("{knob}:{node}"))
        })
        .collect()
}

/// The rehearsal's sandbox, at its seed and time scale.
async fn stage(opts: &RehearseOptions, objects: Vec<Value>) -> anyhow::Result<Rig> {
    Rig::start(
        objects,
        &RigOptions {
            seed: opts.seed,
            time_scale: opts.time_scale,
            kubernetes_version: opts.kubernetes_version,
            ..RigOptions::default()
        },
    )
    .await
}

/// Options scaled to the sandbox's clock.
fn options(profile: &Profile, opts: &RehearseOptions) -> ApplyOptions {
    let mut o = ApplyOptions::from_profile(profile);
    if let Some(p) = opts.pause_seconds {
        o.pause = std::time::Duration::from_secs(p);
    }
    let mut o = o.for_time_scale(opts.time_scale);
    o.round.concurrency = 16;
    o
}

/// Read the sandbox like `plan` does, pin the sandbox's operator manifest (written
/// into the state dir under its sha256, as `plan --operator-manifest` does), save.
pub async fn make_plan(client: &kube::Client, state: &Path) -> anyhow::Result<SavedPlan> {
    let retry = RetryPolicy::default();
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    // As `plan` without --profile: the built-in profile for the sandbox's Kubernetes and
    // its release's chart.
    let inv = inventory::read(client, version.clone(), &retry).await?;
    let source = crate::migration::facts::source(&inv, crate::migration::profile::SOURCE_CHART)?;
    let profile = Profile::pick(&version, source.chart_version.as_deref())?.profile;
    let acc = access::review(client, &permissions::needed(), 4, &retry).await?;
    let yaml = scenario::operator::operator_manifest_yaml(&format!(
        "quay.io/tigera/operator:{}",
        profile.target.operator_version
    ));
    let sha = pin_copy(state, "operator-manifest", &yaml)?;
    // The current path aligns from the target Calico's manifest: the sandbox's stand-in
    // of it, pinned as `plan --calico-manifest` pins the real one.
    let calico = match &profile.calico_manifest {
        Some(_) if profile.target.align_versions => {
            anyhow::ensure!(
                profile.target.calico_version == scenario::policy_only::RELEASE,
                "the sandbox stands in only for the Calico {} manifest, profile {} aligns to {}",
                scenario::policy_only::RELEASE,
                profile.name,
                profile.target.calico_version
            );
            Some(pin_copy(
                state,
                session::CALICO_MANIFEST_PREFIX,
                &scenario::policy_only::yaml(),
            )?)
        }
        _ => None,
    };
    let built = plan::build(
        &inv,
        &profile,
        &acc,
        Pins {
            operator: Some(&sha),
            calico: calico.as_deref(),
            adopt_into: None,
        },
    )?;
    if !built.ready() {
        let codes: Vec<String> = built
            .unresolved()
            .map(|f| format!("{}: {}", f.code, f.message))
            .collect();
        bail!("the sandbox's plan has blockers: {}", codes.join("; "));
    }
    let saved = SavedPlan::of(&built, &inv, &profile);
    plan::save(state, &saved)?;
    Ok(saved)
}

/// Write `text` into the state dir as `<prefix>-<sha256>.yaml`, as plan pins a
/// reviewed manifest; returns the sha256.
fn pin_copy(state: &Path, prefix: &str, text: &str) -> anyhow::Result<String> {
    let sha = hex::encode(Sha256::digest(text.as_bytes()));
    create_private_dir(state)?;
    write_atomic(&state.join(format!("{prefix}-{sha}.yaml")), text.as_bytes())?;
    Ok(sha)
}

/// Holds the first run after the baseline step so faults go in once the baseline
/// is taken; reports progress.
struct Hold {
    before: Option<String>,
}

impl RunObserver for Hold {
    fn action(&self, step_id: &str, action: &crate::engine::Action) {
        // The report's table has every step of every phase: on a terminal the rehearsal
        // shows its phases and nodes, the steps are in the log (and on screen with -v).
        if let crate::engine::Action::StartAttempt { attempt, .. } = action {
            tracing::info!("step {step_id} (attempt {attempt})");
        }
    }
    fn hold_before(&self, step_id: &str) -> bool {
        self.before.as_deref() == Some(step_id)
    }
}

/// Step durations from the journal: first start to the last verified or rolled back.
fn timings(journal: &Journal, since_seq: u64) -> anyhow::Result<Vec<StepTiming>> {
    let mut first: BTreeMap<String, jiff::Timestamp> = BTreeMap::new();
    let mut last: BTreeMap<String, (jiff::Timestamp, &'static str)> = BTreeMap::new();
    for e in journal.events()? {
        if e.seq <= since_seq {
            continue;
        }
        let Some(step) = e.kind.step() else { continue };
        let at: jiff::Timestamp = e.at.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        first.entry(step.to_string()).or_insert(at);
        last.insert(step.to_string(), (at, e.kind.label()));
    }
    Ok(journal
        .state()
        .steps
        .iter()
        .filter_map(|s| {
            let a = first.get(&s.id)?;
            let (b, how) = last.get(&s.id)?;
            Some(StepTiming {
                step: s.id.clone(),
                millis: b.duration_since(*a).as_millis().max(0) as u64,
                ended: how.to_string(),
            })
        })
        .collect())
}

fn last_seq(journal: &Journal) -> u64 {
    journal
        .events()
        .ok()
        .and_then(|e| e.last().map(|e| e.seq))
        .unwrap_or(0)
}

async fn run_phase(
    name: &str,
    journal: &mut Journal,
    loaded: &session::Loaded,
    world: &World,
    mode: Mode,
    hold: &Hold,
) -> anyhow::Result<(Outcome, PhaseReport)> {
    let since = last_seq(journal);
    let started = Instant::now();
    let outcome = run_observed(journal, &loaded.steps, world, mode, hold).await?;
    let report = PhaseReport {
        phase: name.to_string(),
        outcome: outcome.clone(),
        millis: started.elapsed().as_millis() as u64,
        steps: timings(journal, since)?,
    };
    Ok((outcome, report))
}

fn world(
    stage: &Rig,
    loaded: &session::Loaded,
    state: &Path,
    opts: &RehearseOptions,
) -> anyhow::Result<World> {
    let manifest = session::manifests(state, &loaded.saved.plan, &loaded.profile)?;
    Ok(World::new(
        Objects::new(stage.client.clone(), RetryPolicy::default()),
        loaded.profile.clone(),
        loaded.saved.plan.clone(),
        state,
        manifest,
        options(&loaded.profile, opts),
    ))
}

async fn inject(stage: &Rig, f: &Faults) -> anyhow::Result<()> {
    stage
        .dp
        .set_faults(&f.dataplane)
        .await
        .map_err(|e| anyhow::anyhow!("setting data plane faults: {e}"))?;
    f.controllers
        .write(stage.sb.store())
        .map_err(|e| anyhow::anyhow!("setting controller faults: {e}"))?;
    stage
        .sb
        .set_faults(&f.api)
        .map_err(|e| anyhow::anyhow!("setting API faults: {e}"))?;
    Ok(())
}

async fn clear(stage: &Rig) -> anyhow::Result<()> {
    inject(stage, &Faults::default()).await
}

/// Run the rehearsal. `progress` hears one line per phase and step.
pub async fn rehearse(
    opts: &RehearseOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Report> {
    if opts.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if opts.cluster.is_some() && opts.fargate_nodes > 0 {
        bail!(
            "--fargate-nodes cannot be combined with --from-cluster: the copy takes the \
             cluster's EC2 nodes only; drop --fargate-nodes"
        );
    }
    let objects = scenario_objects(opts)?;
    let node_names = node_names(&objects);
    let faults = parse_faults(&resolve_node_refs(&opts.faults, &node_names)?)?;
    let nodes = node_names.len();
    let started = Instant::now();
    let tmp = tempfile::tempdir().context("creating a state dir for the rehearsal")?;
    let state = tmp.path().join("state");
    progress(&format!("starting a {nodes}-node sandbox"));
    let stage = stage(opts, objects).await?;
    let baseline = snapshot::snapshot(&stage.sb)?;
    let mut report = Report::new(nodes, opts.seed, faults.specs.clone());
    report.copied_from_cluster = opts.cluster.as_ref().map(|c| {
        format!(
            "{} node(s), {} namespace(s), {} policy object(s)",
            c.nodes.len(),
            c.namespaces.len(),
            c.policies.len()
        )
    });

    progress("plan");
    let saved = make_plan(&stage.client, &state).await?;
    report.planned_steps = saved.plan["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let loaded = session::load_plan(&state)?;
    let w = world(&stage, &loaded, &state, opts)?;
    let mut journal = Journal::create(
        &state,
        identity(&loaded.saved),
        planned_steps(&loaded.saved),
    )?;

    // Apply: hold after the baseline, inject the faults, go on; a stop clears them
    // (the operator fixing the cause) and the run resumes.
    let after_baseline = report.planned_steps.get(1).cloned();
    let hold = Hold {
        before: if faults.specs.is_empty() {
            None
        } else {
            after_baseline
        },
    };
    progress("apply");
    let (mut outcome, phase) =
        run_phase("apply", &mut journal, &loaded, &w, Mode::Apply, &hold).await?;
    report.phases.push(phase);
    let free = Hold { before: None };
    if matches!(outcome, Outcome::Paused { .. }) {
        progress(&format!("injecting faults: {}", faults.specs.join(", ")));
        inject(&stage, &faults).await?;
        let (o, phase) = run_phase(
            "apply (faults injected)",
            &mut journal,
            &loaded,
            &w,
            Mode::Apply,
            &free,
        )
        .await?;
        report.phases.push(phase);
        outcome = o;
    }
    let mut resumes = 0;
    while let Outcome::Stopped { step, reason } = &outcome {
        report.faults.push(FaultReport {
            stopped_at: step.clone(),
            message: reason.clone(),
            resolution: "faults cleared, apply resumed".into(),
        });
        resumes += 1;
        if resumes > 2 {
            bail!("apply stopped again at `{step}` after the faults were cleared: {reason}");
        }
        progress(&format!("stopped at {step}; clearing faults and resuming"));
        clear(&stage).await?;
        let (o, phase) = run_phase(
            "apply --resume",
            &mut journal,
            &loaded,
            &w,
            Mode::Apply,
            &free,
        )
        .await?;
        report.phases.push(phase);
        outcome = o;
    }
    if !faults.specs.is_empty() && report.faults.is_empty() {
        // Faults that did not stop the run are still cleared before verifying.
        clear(&stage).await?;
    }
    if outcome != Outcome::Completed {
        bail!("apply did not complete: {outcome}");
    }

    progress("verification round");
    let verify = w.check_round("rehearse", "verification").await;
    report.verification_passed = verify.is_ok();
    if let Err(e) = &verify {
        report.problems.push(format!("verification: {e:#}"));
    }
    w.remove_probes().await?;

    progress("rollback");
    let (outcome, phase) = run_phase(
        "rollback",
        &mut journal,
        &loaded,
        &w,
        Mode::Rollback { down_to: 0 },
        &free,
    )
    .await?;
    report.phases.push(phase);
    if outcome != Outcome::Completed {
        report
            .problems
            .push(format!("rollback did not complete: {outcome}"));
    }
    let after = snapshot::snapshot(&stage.sb)?;
    // A node that joined meanwhile (node-join) is not the migration's to remove.
    report.rollback_differences = snapshot::differences(&baseline, &after)
        .into_iter()
        .filter(|k| !k.starts_with("nodes. /") || baseline.contains_key(k))
        .collect();
    for d in &report.rollback_differences {
        report
            .problems
            .push(format!("after rollback, {d} differs from the baseline"));
    }

    progress("second apply");
    drop(journal);
    let state2 = tmp.path().join("state2");
    make_plan(&stage.client, &state2).await?;
    let loaded2 = session::load_plan(&state2)?;
    let w2 = world(&stage, &loaded2, &state2, opts)?;
    let mut journal2 = Journal::create(
        &state2,
        identity(&loaded2.saved),
        planned_steps(&loaded2.saved),
    )?;
    let (outcome, phase) = run_phase(
        "second apply",
        &mut journal2,
        &loaded2,
        &w2,
        Mode::Apply,
        &free,
    )
    .await?;
    report.phases.push(phase);
    if outcome != Outcome::Completed {
        report
            .problems
            .push(format!("the second apply did not complete: {outcome}"));
    }

    let observations: Vec<Observation> = w
        .observations()
        .into_iter()
        .chain(w2.observations())
        .collect();
    report.add_observations(&observations);
    let injected: Vec<String> = faults.dataplane.lapse.iter().cloned().collect();
    let agentless: Vec<String> = faults
        .dataplane
        .agent_not_ready
        .iter()
        .chain(faults.controllers.agent_not_ready.iter())
        .cloned()
        .collect();
    report.add_intervals(&stage.dp.intervals().await, &injected, &agentless);
    report.millis = started.elapsed().as_millis() as u64;
    stage.shutdown().await;
    Ok(report)
}
