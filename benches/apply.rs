//! `calico-migrate apply` against the sandbox beside the floor: the same sandbox's
//! operator migrating the same nodes on its own (its node-by-node rollout, with the
//! converter's blockers removed by hand and no checks), as a ratio. Both run with the
//! controllers at the same time scale, in one run, one size after the other.
//! Run: `cargo bench --bench apply` (APPLY_BENCH_NODES=10,50 to choose sizes).
//! Prints figures; asserts only that both migrations finished.

use std::process::Command;
use std::time::{Duration, Instant};

use calico_migrate::sandbox::controllers::ControllerOptions;
use calico_migrate::sandbox::scenario::{self, ScenarioConfig};
use calico_migrate::sandbox::{Gvr, ListOptions, PatchKind, Sandbox, SandboxOptions, WriteOptions};
use calico_migrate::testkit::{Rig, RigOptions};
use serde_json::{Value, json};

/// Simulated seconds per real second for the controllers and the operator.
const TIME_SCALE: f64 = 20.0;

/// Both sides run operator v1.17.4 on Kubernetes 1.24, the newest minor its line runs
/// on: plan picks the same-version profile there, whose operator the manifest installs
/// (a manifest of another release than the profile's is a blocker).
fn kubernetes() -> anyhow::Result<calico_migrate::sandbox::KubernetesVersion> {
    Ok(calico_migrate::sandbox::KubernetesVersion::new(24)?)
}

/// The same cluster for the floor and for apply.
fn scenario_config(nodes: usize) -> ScenarioConfig {
    ScenarioConfig {
        nodes,
        namespaces: 4,
        pods_per_namespace: 1,
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
) -> anyhow::Result<calico_migrate::sandbox::controllers::ControllersHandle> {
    sb.start_controllers(ControllerOptions {
        time_scale: TIME_SCALE,
        ..ControllerOptions::default()
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

/// The floor: the operator alone on a prepared install.
async fn floor(nodes: usize) -> anyhow::Result<Duration> {
    let sb = sandbox(nodes)?;
    sb.store().patch(
        &Gvr::new("apps", "v1", "daemonsets"),
        "kube-system",
        "calico-node",
        PatchKind::Merge,
        json!({"metadata": {"annotations": {"meta.helm.sh/release-name": null,
                                            "meta.helm.sh/release-namespace": null}},
               "spec": {"template": {"spec": {"affinity": null}}}})
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
    let c = controllers(&sb)?;
    let started = Instant::now();
    sb.load(scenario::operator::operator_manifest(
        "quay.io/tigera/operator:v1.17.4",
    ))?;
    sb.load(vec![scenario::operator::installation_default()])?;
    while !operator_done(&sb) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(900),
            "the operator never finished"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    c.stop();
    Ok(took)
}

/// calico-migrate plan + apply, through the binary, at the same time scale.
async fn apply(nodes: usize) -> anyhow::Result<(Duration, Duration, Duration)> {
    let rig = Rig::start_scenario(
        &scenario_config(nodes),
        &RigOptions {
            time_scale: TIME_SCALE,
            kubernetes_version: kubernetes()?,
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
    let times = tokio::task::spawn_blocking(move || -> anyhow::Result<(Duration, Duration)> {
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let o = Command::new(env!("CARGO_BIN_EXE_calico-migrate"))
                .arg("--kubeconfig")
                .arg(&kc)
                .arg("--state-dir")
                .arg(&state)
                .args(["--no-progress", "-q"])
                .args(args)
                .output()?;
            anyhow::ensure!(
                o.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            Ok(())
        };
        let started = Instant::now();
        run(&["plan", "--operator-manifest", &m])?;
        let plan = started.elapsed();
        let started = Instant::now();
        let scale = TIME_SCALE.to_string();
        run(&[
            "apply",
            "--yes",
            "--sandbox-time-scale",
            &scale,
            "--pause-seconds",
            "0",
        ])?;
        Ok((plan, started.elapsed()))
    })
    .await??;
    anyhow::ensure!(
        operator_done(&rig.sb),
        "apply finished but the operator did not"
    );
    anyhow::ensure!(rig.dp.intervals().await.is_empty(), "enforcement diverged");
    let takeover = step_time(&dir.path().join("state"), "takeover")?;
    rig.shutdown().await;
    Ok((times.0, times.1, takeover))
}

/// How long a step took, from its journal: first start to verified.
fn step_time(state: &std::path::Path, id: &str) -> anyhow::Result<Duration> {
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
    Ok(Duration::try_from(end.duration_since(start))?)
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("APPLY_BENCH_NODES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 50]);
    let rt = tokio::runtime::Runtime::new()?;
    println!("time scale {TIME_SCALE} (simulated s per real s); apply with --pause-seconds 0");
    println!(
        "{:>6} {:>9} {:>11} {:>9} {:>8} {:>15} {:>13}",
        "nodes", "floor s", "takeover s", "apply s", "plan s", "takeover/floor", "apply/floor"
    );
    for n in sizes {
        let f = rt.block_on(floor(n))?;
        let (plan, a, t) = rt.block_on(apply(n))?;
        println!(
            "{n:>6} {:>9.1} {:>11.1} {:>9.1} {:>8.2} {:>15.2} {:>13.2}",
            f.as_secs_f64(),
            t.as_secs_f64(),
            a.as_secs_f64(),
            plan.as_secs_f64(),
            t.as_secs_f64() / f.as_secs_f64(),
            a.as_secs_f64() / f.as_secs_f64()
        );
    }
    Ok(())
}
