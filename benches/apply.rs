//! `calico-migrate apply` against the sandbox beside the floor: the same sandbox's
//! operator migrating the same nodes on its own (its node-by-node rollout, with the
//! converter's blockers removed by hand and no checks), as a ratio. Both run with the
//! controllers at the same time scale, in one run, one size after the other.
//!
//! Three sections (docs/benchmarks.md, "apply beside the operator's own takeover"):
//! - the fast timings at time scale 20 (APPLY_BENCH_NODES, default 10,50);
//! - the realistic timings (`ControllerOptions::realistic`) at each time scale of
//!   APPLY_BENCH_REALISTIC_SCALE (default 5,20) (APPLY_BENCH_REALISTIC_NODES, default 50,200);
//! - per moved node during the takeover step: the API requests the sandbox served and
//!   the probes the tool ran, fast timings at time scale APPLY_BENCH_FLAT_SCALE (default
//!   20) (APPLY_BENCH_FLAT_NODES, default 10,100,500), with each size's ratio to the
//!   first size's.
//!
//! An empty variable skips its section. Run: `cargo bench --bench apply`.
//! Prints figures; asserts only that the migrations finished and that enforcement never
//! diverged.
//!
//! The floor and the takeover are timed on the wall clock and on the sandbox's
//! simulated clock. On two shared cores the sandbox falls behind real time when the
//! tool's requests and probes load it; the `pace` columns say by how much (simulated
//! seconds per wall second over the time scale asked for: 1.00 kept up). The simulated
//! ratio is what the cluster itself spent; the tool's own waits count in it at the
//! time scale, so it overstates the tool's share.

use std::process::Command;
use std::time::{Duration, Instant};

use calico_migrate::sandbox::controllers::{ControllerOptions, Timings};
use calico_migrate::sandbox::scenario::{self, ScenarioConfig};
use calico_migrate::sandbox::{Gvr, ListOptions, PatchKind, Sandbox, SandboxOptions, WriteOptions};
use calico_migrate::testkit::{Rig, RigOptions};
use serde_json::{Value, json};

/// Simulated seconds per real second for the controllers and the operator (the fast
/// timings' table and the per-node counts).
const TIME_SCALE: f64 = 20.0;

/// The realistic timings' default time scales. 5 keeps the tool's own real-time work
/// (a probe pass, an API round trip) small beside a node's swap, as on a real cluster,
/// where the time scale is 1: the tool checks node N while the operator swaps node N+1,
/// and at time scale 20 a check of a quarter second is already five simulated seconds
/// of a fifteen-second swap. 20 is the fast table's scale, for comparison.
const REALISTIC_TIME_SCALES: [f64; 2] = [5.0, 20.0];

/// Records the request log keeps: far above what a 500-node takeover sends, so a count
/// is never refused for a truncated window, and bounded.
const REQUEST_LOG_CAPACITY: usize = 2_000_000;

/// How a section runs its sandboxes.
#[derive(Debug, Clone, Copy)]
struct Setup {
    time_scale: f64,
    timings: Timings,
}

const FAST: Setup = Setup {
    time_scale: TIME_SCALE,
    timings: Timings::Fast,
};

/// Both sides run operator v1.17.4 on Kubernetes 1.24, the newest minor its line runs
/// on: plan picks the same-version profile there, whose operator the manifest installs
/// (a manifest of another release than the profile's is a blocker).
fn kubernetes() -> anyhow::Result<calico_migrate::sandbox::KubernetesVersion> {
    Ok(calico_migrate::sandbox::KubernetesVersion::new(24)?)
}

/// The same cluster for the floor and for apply, as dense at every size: about three of
/// the cluster's own pods per node. A round samples one of them on each node that has
/// one (`checks::plan`), so a cluster that grew in nodes but not in pods would probe
/// less per node as it grew, and the per-node counts would compare different work.
fn scenario_config(nodes: usize) -> ScenarioConfig {
    ScenarioConfig {
        nodes,
        namespaces: (nodes / 2).max(4),
        pods_per_namespace: 6,
        ..ScenarioConfig::default()
    }
}

/// The floor's sandbox: seeded only, so that its install can be prepared before the
/// controllers start (the rig starts them at once).
fn sandbox(nodes: usize) -> anyhow::Result<Sandbox> {
    let sb = Sandbox::new(SandboxOptions {
        kubernetes_version: kubernetes()?,
        ..SandboxOptions::default()
    });
    sb.load(scenario::build(&scenario_config(nodes))?)?;
    Ok(sb)
}

fn controllers(
    sb: &Sandbox,
    setup: Setup,
) -> anyhow::Result<calico_migrate::sandbox::controllers::ControllersHandle> {
    sb.start_controllers(ControllerOptions {
        time_scale: setup.time_scale,
        ..ControllerOptions::with_timings(setup.timings)
    })
    .map_err(anyhow::Error::msg)
}

fn get(sb: &Sandbox, g: &Gvr, ns: &str, name: &str) -> Option<Value> {
    sb.store().get(g, ns, name).ok()
}

/// The operator's migration is over: kube-system install gone, TigeraStatus
/// Available, node labels removed.
fn operator_done(sb: &Sandbox) -> bool {
    let ds = Gvr::new("apps", "v1", "daemonsets");
    let ts = Gvr::new("operator.tigera.io", "v1", "tigerastatuses");
    let available = get(sb, &ts, "", "calico")
        .and_then(|t| t.pointer("/status/conditions").cloned())
        .and_then(|c| c.as_array().cloned())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True")
        });
    let labelled = sb
        .store()
        .list(&Gvr::new("", "v1", "nodes"), None, &ListOptions::default())
        .map(|l| {
            l.items.iter().any(|n| {
                n.pointer("/metadata/labels/projectcalico.org~1operator-node-migration")
                    .is_some()
            })
        })
        .unwrap_or(true);
    get(sb, &ds, "kube-system", "calico-node").is_none() && available && !labelled
}

/// How long something took on the wall clock and on the sandbox's simulated clock.
/// The two part when the sandbox falls behind real time (its ticks take longer than
/// their interval: the machine's two cores are shared with the tool's own requests
/// and probes); the simulated one is what a real cluster's kubelets and operator would
/// have spent, since on a real cluster they do not share the tool's CPU.
#[derive(Debug, Clone, Copy)]
struct Took {
    wall: Duration,
    simulated: f64,
}

impl Took {
    /// Simulated seconds per wall second, as a share of the time scale asked for: 1.0
    /// when the sandbox kept up with real time.
    fn pace(&self, time_scale: f64) -> f64 {
        self.simulated / (self.wall.as_secs_f64() * time_scale)
    }
}

/// The controllers' clock sampled beside the wall clock while apply runs, so that a
/// window of the journal's (wall) timestamps maps to simulated seconds.
#[derive(Default)]
struct ClockSamples(Vec<(jiff::Timestamp, f64)>);

impl ClockSamples {
    /// The simulated clock at `at`, from the last sample at or before it.
    fn at(&self, at: jiff::Timestamp) -> f64 {
        self.0
            .iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .map_or(0.0, |(_, s)| *s)
    }
}

/// The floor: the operator alone on a prepared install.
async fn floor(nodes: usize, setup: Setup) -> anyhow::Result<Took> {
    let sb = sandbox(nodes)?;
    sb.store().patch(
        &Gvr::new("apps", "v1", "daemonsets"),
        "kube-system",
        "calico-node",
        PatchKind::Merge,
        json!({"metadata": {"annotations": {"meta.helm.sh/release-name": null,
                                            "meta.helm.sh/release-namespace": null}},
               "spec": {"template": {"spec": {"affinity": null,
                   "nodeSelector": {"projectcalico.org/operator-node-migration": "pre-operator"}}}}})
        .to_string()
        .as_bytes(),
        &WriteOptions::default(),
    )?;
    // typha's Helm annotations too: the converter checks them (as detach-helm removes them).
    sb.store().patch(
        &Gvr::new("apps", "v1", "deployments"),
        "kube-system",
        "calico-typha",
        PatchKind::Merge,
        json!({"metadata": {"annotations": {"meta.helm.sh/release-name": null,
                                            "meta.helm.sh/release-namespace": null}}})
        .to_string()
        .as_bytes(),
        &WriteOptions::default(),
    )?;
    // Every node labelled pre-operator, as fargate-affinity leaves them (the operator's
    // own first patch of the DaemonSet and its labels are then no-ops, as in apply).
    let nodes_gvr = Gvr::new("", "v1", "nodes");
    for n in sb
        .store()
        .list(&nodes_gvr, None, &ListOptions::default())?
        .items
    {
        let name = n["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        sb.store().patch(
            &nodes_gvr,
            "",
            &name,
            PatchKind::Merge,
            json!({"metadata": {"labels": {"projectcalico.org/operator-node-migration": "pre-operator"}}})
                .to_string()
                .as_bytes(),
            &WriteOptions::default(),
        )?;
    }
    let c = controllers(&sb, setup)?;
    // Removing the affinity changed the pod template: the DaemonSet controller rolls
    // every kube-system agent. apply does that in fargate-affinity, before its
    // takeover; the floor's clock starts once it is done too.
    let waiting = Instant::now();
    while !kube_system_rolled_out(&sb) {
        anyhow::ensure!(
            waiting.elapsed() < Duration::from_secs(3600),
            "kube-system calico-node had not rolled out on {nodes} nodes after an hour"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let installed = Instant::now();
    sb.load(scenario::operator::operator_manifest(
        "quay.io/tigera/operator:v1.17.4",
    ))?;
    sb.load(vec![scenario::operator::installation_default()])?;
    // The clock starts when the operator relabels its first node `migrated`: its pod's
    // start, the conversion and the render of calico-system happened before the
    // takeover step in apply too (install-operator, create-installation).
    let mut started = None;
    while !operator_done(&sb) {
        anyhow::ensure!(
            installed.elapsed() < Duration::from_secs(3600),
            "the operator had not finished {nodes} nodes after an hour"
        );
        if started.is_none() && any_migrated(&sb) {
            started = Some((Instant::now(), c.now()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.map(|(wall, simulated)| Took {
        wall: wall.elapsed(),
        simulated: c.now() - simulated,
    });
    c.stop();
    took.ok_or_else(|| anyhow::anyhow!("the operator finished without relabelling a node"))
}

/// Some node carries the label `migrated`.
fn any_migrated(sb: &Sandbox) -> bool {
    sb.store()
        .list(&Gvr::new("", "v1", "nodes"), None, &ListOptions::default())
        .is_ok_and(|l| {
            l.items.iter().any(|n| {
                n.pointer("/metadata/labels/projectcalico.org~1operator-node-migration")
                    == Some(&json!("migrated"))
            })
        })
}

/// kube-system calico-node's template is on every node and every agent is Ready.
fn kube_system_rolled_out(sb: &Sandbox) -> bool {
    let Some(ds) = get(
        sb,
        &Gvr::new("apps", "v1", "daemonsets"),
        "kube-system",
        "calico-node",
    ) else {
        return false;
    };
    let n = |p: &str| ds.pointer(p).and_then(Value::as_i64).unwrap_or(-1);
    let desired = n("/status/desiredNumberScheduled");
    n("/status/observedGeneration") >= n("/metadata/generation")
        && desired > 0
        && n("/status/updatedNumberScheduled") == desired
        && n("/status/numberReady") == desired
}

/// What one apply run measured.
struct ApplyRun {
    plan: Duration,
    apply: Duration,
    takeover: Took,
    /// Nodes the takeover moved (its node swaps).
    moved: usize,
    /// API requests the sandbox served during the takeover step.
    requests: usize,
    /// Probes the takeover ran: its node watches' and its rounds'.
    probes: u64,
    /// Where the requests and probes went, to see which part grows or shrinks per node.
    detail: Detail,
}

/// The takeover's requests by verb and resource, and its probes by kind of check.
#[derive(Default)]
struct Detail {
    requests: std::collections::BTreeMap<String, usize>,
    watch_probes: u64,
    watch_passes: u64,
    /// How long each node was watched (ms), in order.
    watch_millis: Vec<u64>,
    /// Nodes whose watch began a pass before their new agent was Ready (the others'
    /// watches saw only the end of their swap).
    watched_before_ready: usize,
    round_probes: u64,
    rounds: u64,
}

impl Detail {
    /// One line per share, per moved node: `list pods 12.3`.
    fn print(&self, moved: usize) {
        let per = |n: f64| n / moved as f64;
        println!(
            "        probes/node: watches {:.1} in {:.1} passes, rounds {:.1} in {:.2} rounds",
            per(self.watch_probes as f64),
            per(self.watch_passes as f64),
            per(self.round_probes as f64),
            per(self.rounds as f64)
        );
        let mut ms = self.watch_millis.clone();
        ms.sort_unstable();
        let q = |f: f64| {
            ms.get(((ms.len() as f64 - 1.0) * f) as usize)
                .copied()
                .unwrap_or(0)
        };
        println!(
            "        watched per node (ms): mean {:.0}, min {}, median {}, p90 {}, max {}",
            ms.iter().sum::<u64>() as f64 / ms.len().max(1) as f64,
            q(0.0),
            q(0.5),
            q(0.9),
            q(1.0)
        );
        println!(
            "        watched from before the new agent was Ready: {} of {} node(s)",
            self.watched_before_ready,
            ms.len()
        );
        let mut by: Vec<(&String, &usize)> = self.requests.iter().collect();
        by.sort_by(|a, b| b.1.cmp(a.1));
        let line: Vec<String> = by
            .iter()
            .map(|(k, n)| format!("{k} {:.1}", per(**n as f64)))
            .collect();
        println!("        requests/node: {}", line.join(", "));
    }
}

/// calico-migrate plan + apply, through the binary, at the same time scale.
async fn apply(nodes: usize, setup: Setup) -> anyhow::Result<ApplyRun> {
    let rig = Rig::start_scenario(
        &scenario_config(nodes),
        &RigOptions {
            time_scale: setup.time_scale,
            kubernetes_version: kubernetes()?,
            timings: setup.timings,
            ..RigOptions::default()
        },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("kubeconfig");
    rig.write_kubeconfig(&kc)?;
    let manifest = dir.path().join("tigera-operator.yaml");
    std::fs::write(
        &manifest,
        scenario::operator::operator_manifest_yaml("quay.io/tigera/operator:v1.17.4"),
    )?;
    let state = dir.path().join("state");
    let m = manifest.to_string_lossy().to_string();
    rig.sb.requests().start(REQUEST_LOG_CAPACITY);
    let scale = setup.time_scale;
    let mut job =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Duration, Duration, Value)> {
            let run = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
                let o = Command::new(env!("CARGO_BIN_EXE_calico-migrate"))
                    .arg("--kubeconfig")
                    .arg(&kc)
                    .arg("--state-dir")
                    .arg(&state)
                    .args(["--no-progress", "-q", "-o", "json"])
                    .args(args)
                    .output()?;
                // Quiet and JSON: a failure's words may be in the report on stdout.
                anyhow::ensure!(
                    o.status.success(),
                    "{args:?} exited {}: {}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr),
                    String::from_utf8_lossy(&o.stdout)
                );
                Ok(o.stdout)
            };
            let started = Instant::now();
            run(&["plan", "--operator-manifest", &m])?;
            let plan = started.elapsed();
            let started = Instant::now();
            let scale = scale.to_string();
            let report = run(&[
                "apply",
                "--yes",
                "--sandbox-time-scale",
                &scale,
                "--pause-seconds",
                "0",
            ])?;
            let apply = started.elapsed();
            Ok((plan, apply, serde_json::from_slice(&report)?))
        });
    let mut clock = ClockSamples::default();
    let (plan, applied, report) = loop {
        clock
            .0
            .push((jiff::Timestamp::now(), rig.controllers.now()));
        tokio::select! {
            r = &mut job => break r??,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    anyhow::ensure!(
        operator_done(&rig.sb),
        "apply finished but the operator did not"
    );
    anyhow::ensure!(rig.dp.intervals().await.is_empty(), "enforcement diverged");
    let (start, end) = step_window(&dir.path().join("state"), "takeover")?;
    let requests = rig.sb.requests().count(start, end, |_| true)?;
    let mut detail = takeover_detail(&report);
    for r in rig.sb.requests().records() {
        if r.at >= start && r.at <= end {
            *detail
                .requests
                .entry(format!("{} {}", r.verb, r.resource))
                .or_default() += 1;
        }
    }
    rig.sb.requests().stop();
    let (moved, probes) = takeover_probes(&report);
    rig.shutdown().await;
    Ok(ApplyRun {
        plan,
        apply: applied,
        takeover: Took {
            wall: Duration::try_from(end.duration_since(start))?,
            simulated: clock.at(end) - clock.at(start),
        },
        moved,
        requests,
        probes,
        detail,
    })
}

/// The takeover's probes split into its node watches' and its rounds', from apply's
/// JSON report (as [`takeover_probes`] reads it).
fn takeover_detail(report: &Value) -> Detail {
    let mut d = Detail::default();
    for o in report["observations"].as_array().into_iter().flatten() {
        if o["step"] != "takeover" {
            continue;
        }
        let n = |v: &Value| v.as_u64().unwrap_or_default();
        match o["kind"].as_str() {
            Some("node_swap") => {
                d.watch_probes += n(&o["watch"]["probes"]);
                d.watch_passes += n(&o["watch"]["passes"]);
                d.watch_millis.push(n(&o["watch"]["millis"]));
                d.watched_before_ready += usize::from(n(&o["watch"]["passes_before_ready"]) > 0);
            }
            Some("round") => {
                d.round_probes += n(&o["probes"]);
                d.rounds += 1;
            }
            _ => {}
        }
    }
    d
}

/// Nodes the takeover moved and the probes it ran, from apply's JSON report: each
/// `node_swap` observation of step `takeover` is one moved node with its watch's
/// probes; each `round` of that step adds its probes.
fn takeover_probes(report: &Value) -> (usize, u64) {
    let mut moved = 0;
    let mut probes = 0;
    for o in report["observations"].as_array().into_iter().flatten() {
        if o["step"] != "takeover" {
            continue;
        }
        match o["kind"].as_str() {
            Some("node_swap") => {
                moved += 1;
                probes += o["watch"]["probes"].as_u64().unwrap_or_default();
            }
            Some("round") => probes += o["probes"].as_u64().unwrap_or_default(),
            _ => {}
        }
    }
    (moved, probes)
}

/// When a step ran, from its journal: first start to verified.
fn step_window(
    state: &std::path::Path,
    id: &str,
) -> anyhow::Result<(jiff::Timestamp, jiff::Timestamp)> {
    use calico_migrate::engine::{EventKind, Journal};
    let events = Journal::open_read_only(state)?.events()?;
    let at = |pick: &dyn Fn(&EventKind) -> bool| -> anyhow::Result<jiff::Timestamp> {
        let e = events
            .iter()
            .find(|e| pick(&e.kind))
            .ok_or_else(|| anyhow::anyhow!("no such event of {id} in the journal"))?;
        Ok(e.at.parse()?)
    };
    let start = at(&|k| matches!(k, EventKind::StepStarted { step, .. } if step == id))?;
    let end = at(&|k| matches!(k, EventKind::StepVerified { step } if step == id))?;
    Ok((start, end))
}

/// Sizes from an environment variable (`10,50`); unset gives the default, empty none.
fn sizes(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// The floor and apply side by side at each size.
fn compare(rt: &tokio::runtime::Runtime, sizes: &[usize], setup: Setup) -> anyhow::Result<()> {
    println!(
        "{:>6} {:>9} {:>11} {:>9} {:>8} {:>15} {:>13} {:>11} {:>11} {:>10} {:>10}",
        "nodes",
        "floor s",
        "takeover s",
        "apply s",
        "plan s",
        "takeover/floor",
        "apply/floor",
        "floor sim",
        "takeov sim",
        "sim ratio",
        "pace f/t"
    );
    for &n in sizes {
        let f = rt.block_on(floor(n, setup))?;
        let r = rt.block_on(apply(n, setup))?;
        let (fw, t, a) = (
            f.wall.as_secs_f64(),
            r.takeover.wall.as_secs_f64(),
            r.apply.as_secs_f64(),
        );
        println!(
            "{n:>6} {fw:>9.1} {t:>11.1} {a:>9.1} {:>8.2} {:>15.2} {:>13.2} {:>11.1} {:>11.1} {:>10.2} {:>4.2}/{:<4.2}",
            r.plan.as_secs_f64(),
            t / fw,
            a / fw,
            f.simulated,
            r.takeover.simulated,
            r.takeover.simulated / f.simulated,
            f.pace(setup.time_scale),
            r.takeover.pace(setup.time_scale),
        );
    }
    Ok(())
}

/// Requests and probes per moved node during the takeover, and their ratio to the
/// first size's.
fn per_node(rt: &tokio::runtime::Runtime, sizes: &[usize], setup: Setup) -> anyhow::Result<()> {
    println!(
        "{:>6} {:>6} {:>11} {:>9} {:>10} {:>8} {:>12} {:>10} {:>5}",
        "nodes",
        "moved",
        "takeover s",
        "requests",
        "req/node",
        "probes",
        "probes/node",
        "ratios",
        "pace"
    );
    let mut first: Option<(f64, f64)> = None;
    for &n in sizes {
        let r = rt.block_on(apply(n, setup))?;
        anyhow::ensure!(
            r.moved > 0,
            "the takeover of {n} nodes reported no node swap"
        );
        let req = r.requests as f64 / r.moved as f64;
        let probes = r.probes as f64 / r.moved as f64;
        let (req0, probes0) = *first.get_or_insert((req, probes));
        println!(
            "{n:>6} {:>6} {:>11.1} {:>9} {req:>10.1} {:>8} {probes:>12.1} {:>5.2}/{:<5.2} {:>5.2}",
            r.moved,
            r.takeover.wall.as_secs_f64(),
            r.requests,
            r.probes,
            req / req0,
            probes / probes0,
            r.takeover.pace(setup.time_scale)
        );
        r.detail.print(r.moved);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let fast = sizes("APPLY_BENCH_NODES", &[10, 50]);
    if !fast.is_empty() {
        println!(
            "fast timings, time scale {TIME_SCALE} (simulated s per real s); apply with --pause-seconds 0"
        );
        compare(&rt, &fast, FAST)?;
    }
    let realistic = sizes("APPLY_BENCH_REALISTIC_NODES", &[50, 200]);
    let scales: Vec<f64> = std::env::var("APPLY_BENCH_REALISTIC_SCALE")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| REALISTIC_TIME_SCALES.to_vec());
    for time_scale in scales.into_iter().filter(|_| !realistic.is_empty()) {
        let o = ControllerOptions::realistic();
        println!(
            "realistic timings (pod start {} s, calico-node Ready one readiness-probe period later, \
             operator start {} s before the lease), time scale {time_scale}",
            o.pod_start_delay, o.operator_start_delay
        );
        compare(
            &rt,
            &realistic,
            Setup {
                time_scale,
                timings: Timings::Realistic,
            },
        )?;
    }
    let flat = sizes("APPLY_BENCH_FLAT_NODES", &[10, 100, 500]);
    // The tool scales its waits by the time scale it is told; a sandbox that cannot keep
    // up with it at a size (pace well under 1) makes those waits run out early, so the
    // counts are comparable only at a scale every size keeps up with.
    let flat_scale = std::env::var("APPLY_BENCH_FLAT_SCALE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(TIME_SCALE);
    if !flat.is_empty() {
        println!(
            "per moved node during the takeover step, fast timings, time scale {flat_scale}; \
             ratios: requests/probes per node to the first size's; pace: the sandbox's"
        );
        per_node(
            &rt,
            &flat,
            Setup {
                time_scale: flat_scale,
                timings: Timings::Fast,
            },
        )?;
    }
    Ok(())
}
