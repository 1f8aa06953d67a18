//! `calico-migrate check` against the sandbox: a served API server with the workload
//! controllers (probe pods become Running with addresses) and the data plane (pods/exec
//! answers `/agnhost connect` with what each node's enforcement allows).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use calico_migrate::checks::{
    self, Expected, FailureClass, ProbeKind, Prober, ResultClass, RoundOptions, RoundReport,
};
use calico_migrate::sandbox::controllers::ControllerOptions;
use calico_migrate::sandbox::dataplane::{DataPlane, DataPlaneFaults, DataPlaneOptions};
use calico_migrate::sandbox::scenario::{self, ScenarioConfig};
use calico_migrate::sandbox::{Gvr, ListOptions, Sandbox, SandboxOptions, ServeHandle};
use serde_json::json;

struct Env {
    sb: Sandbox,
    dp: DataPlane,
    server: ServeHandle,
    client: kube::Client,
    nodes: Vec<String>,
}

async fn env(nodes: usize) -> Result<Env> {
    let sb = Sandbox::new(SandboxOptions::default());
    sb.load(scenario::build(&ScenarioConfig {
        nodes,
        namespaces: 3,
        pods_per_namespace: 2,
        ..ScenarioConfig::default()
    })?)?;
    sb.start_controllers(ControllerOptions {
        time_scale: 100.0,
        ..ControllerOptions::default()
    })
    .map_err(anyhow::Error::msg)?;
    let dp = DataPlane::start(
        &sb,
        DataPlaneOptions {
            timeout_scale: 0.05,
            ..DataPlaneOptions::default()
        },
    )?;
    let server = sb.serve("127.0.0.1:0").await?;
    let client = server.client()?;
    let mut names: Vec<String> = sb
        .store()
        .list(&Gvr::new("", "v1", "nodes"), None, &ListOptions::default())?
        .items
        .iter()
        .filter_map(|n| n.pointer("/metadata/name")?.as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(Env {
        sb,
        dp,
        server,
        client,
        nodes: names,
    })
}

fn opts() -> RoundOptions {
    RoundOptions {
        concurrency: 8,
        ready_timeout: Duration::from_secs(20),
        ..RoundOptions::default()
    }
}

/// Probe namespaces and pods left in the cluster.
fn leftovers(sb: &Sandbox) -> Result<usize> {
    let mut n = 0;
    for r in ["namespaces", "pods"] {
        n += sb
            .store()
            .list(&Gvr::new("", "v1", r), None, &ListOptions::default())?
            .items
            .iter()
            .filter(|o| {
                o.pointer("/metadata/labels/calico-migrate.io~1probe")
                    .is_some()
            })
            .count();
    }
    Ok(n)
}

fn kinds_seen(r: &RoundReport, kind: ProbeKind) -> Vec<ResultClass> {
    r.records
        .iter()
        .filter(|x| x.probe.kind == kind)
        .map(|x| x.observed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_scenario_passes_on_every_node_and_leaves_nothing() -> Result<()> {
    let e = env(4).await?;
    let r = checks::run_round(&e.client, &opts()).await?;
    assert!(r.passed, "failures: {:#?}", r.failures);
    assert_eq!(r.nodes, 4);
    for n in &e.nodes {
        assert!(
            r.records.iter().any(|x| &x.probe.src_node == n),
            "{n} never a source"
        );
        assert!(
            r.records
                .iter()
                .any(|x| x.probe.dst_node.as_ref() == Some(n)),
            "{n} never a destination"
        );
    }
    // Cross-namespace and IMDS from a covered namespace: blocked; exempt namespace: reached.
    let cross = kinds_seen(&r, ProbeKind::CrossNamespace);
    assert!(!cross.is_empty() && cross.iter().all(|c| *c == ResultClass::Blocked));
    let imds = kinds_seen(&r, ProbeKind::Imds);
    assert_eq!(imds.len(), 8);
    assert!(imds.iter().all(|c| *c == ResultClass::Blocked));
    let exempt = kinds_seen(&r, ProbeKind::ImdsExempt);
    assert_eq!(exempt, vec![ResultClass::Allowed; 4]);
    assert!(
        kinds_seen(&r, ProbeKind::SameNamespace)
            .iter()
            .all(|c| *c == ResultClass::Allowed)
    );
    assert!(!kinds_seen(&r, ProbeKind::ClusterSample).is_empty());
    // Expectations are the engine's: blocked ones exist and passed.
    assert!(
        r.records
            .iter()
            .any(|x| x.probe.expected == Expected::Blocked)
    );
    assert_eq!(leftovers(&e.sb)?, 0);
    e.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapse_on_one_node_fails_naming_that_node_and_the_pairs() -> Result<()> {
    let e = env(4).await?;
    let bad = e.nodes[2].clone();
    let mut f = DataPlaneFaults::default();
    f.lapse.insert(bad.clone());
    e.dp.set_faults(&f).await?;
    let r = checks::run_round(&e.client, &opts()).await?;
    assert!(!r.passed);
    assert_eq!(r.failed_nodes, vec![bad.clone()]);
    assert!(
        r.failures
            .iter()
            .all(|f| f.class == FailureClass::NotEnforced && f.node == bad)
    );
    // The IMDS block from the lapsed node and the cross-namespace block into it.
    assert!(
        r.failures
            .iter()
            .any(|f| f.to == "169.254.169.254" && f.observed == ResultClass::Allowed)
    );
    assert!(
        r.failures
            .iter()
            .any(|f| f.from.starts_with("calico-migrate-probe-a/")
                && f.to.starts_with("calico-migrate-probe-b/"))
    );
    assert_eq!(leftovers(&e.sb)?, 0);
    e.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_probe_pod_is_check_failed_never_blocked() -> Result<()> {
    let e = env(3).await?;
    let prober = Prober::setup(&e.client, &opts()).await?;
    // Break one client after it ran: its container is gone.
    let pods = e.sb.store().list(
        &Gvr::new("", "v1", "pods"),
        Some("calico-migrate-probe-b"),
        &ListOptions::default(),
    )?;
    let victim = pods
        .items
        .iter()
        .filter_map(|p| p.pointer("/metadata/name")?.as_str())
        .find(|n| n.starts_with("client-"))
        .context("no client pod")?
        .to_string();
    let mut pod = e.sb.store().get(
        &Gvr::new("", "v1", "pods"),
        "calico-migrate-probe-b",
        &victim,
    )?;
    pod["status"]["phase"] = json!("Failed");
    e.sb.load(vec![pod])?;
    let r = prober.round().await?;
    let from_victim: Vec<_> = r
        .records
        .iter()
        .filter(|x| x.probe.from == format!("calico-migrate-probe-b/{victim}"))
        .collect();
    assert!(!from_victim.is_empty());
    for x in &from_victim {
        assert_eq!(x.observed, ResultClass::CheckFailed, "{x:?}");
        assert_eq!(x.attempts, 3, "check failures are retried");
    }
    assert!(
        r.failures
            .iter()
            .all(|f| f.class == FailureClass::CheckFailed)
    );
    // Other probes are not retried.
    assert!(
        r.records
            .iter()
            .filter(|x| x.observed != ResultClass::CheckFailed)
            .all(|x| x.attempts == 1)
    );
    prober.teardown().await?;
    assert_eq!(leftovers(&e.sb)?, 0);
    e.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_workload_is_removed_after_a_crash_and_resume() -> Result<()> {
    let e = env(3).await?;
    // A crash: the workload is set up and never torn down.
    let prober = Prober::setup(&e.client, &opts()).await?;
    drop(prober);
    assert!(leftovers(&e.sb)? > 0);
    // The next round removes leftovers first and its own workload at the end.
    let r = checks::run_round(&e.client, &opts()).await?;
    assert!(r.passed, "{:#?}", r.failures);
    assert_eq!(leftovers(&e.sb)?, 0);
    // Cleanup alone is idempotent.
    checks::cleanup(&e.client, Duration::from_secs(5)).await?;
    checks::cleanup(&e.client, Duration::from_secs(5)).await?;
    e.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_probing_records_the_window_of_a_lapse() -> Result<()> {
    let e = env(3).await?;
    let node = e.nodes[1].clone();
    let prober = Prober::setup(&e.client, &opts()).await?;
    let mut f = DataPlaneFaults::default();
    f.lapse.insert(node.clone());
    e.dp.set_faults(&f).await?;
    let dp = e.dp.clone();
    let heal = async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let _ = dp.set_faults(&DataPlaneFaults::default()).await;
    };
    let w = checks::watch_node(
        &prober,
        &node,
        heal,
        Duration::from_millis(50),
        Duration::from_secs(30),
    )
    .await?;
    assert!(w.verified_at_end);
    assert!(w.failed_passes >= 1);
    assert!(w.longest_unverified_ms >= 800, "{w:?}");
    assert!(w.last_failures.iter().all(|f| f.node == node));
    // The seeded chart's agent is Ready on every node: `agent_ready` resolves at once,
    // and a pass with enforcement in place ends the watch.
    let ready = checks::agent_ready(&e.client, "kube-system", &node, Duration::from_millis(50));
    let w = checks::watch_node(
        &prober,
        &node,
        ready,
        Duration::from_millis(50),
        Duration::from_secs(30),
    )
    .await?;
    assert!(
        w.verified_at_end && w.failed_passes == 0 && w.passes <= 2,
        "{w:?}"
    );
    let never = tokio::time::timeout(
        Duration::from_millis(300),
        checks::agent_ready(&e.client, "calico-system", &node, Duration::from_millis(50)),
    );
    assert!(never.await.is_err(), "no operator agent exists yet");
    prober.teardown().await?;
    e.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_json_contract_exit_codes_and_baseline() -> Result<()> {
    let e = env(3).await?;
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("kubeconfig");
    e.server.write_kubeconfig(&kc)?;
    let state = dir.path().join("state");
    let run = |extra: Vec<String>| {
        let kc = kc.clone();
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            assert_cmd::Command::cargo_bin("calico-migrate").map(|mut c| {
                c.arg("check")
                    .arg("--kubeconfig")
                    .arg(&kc)
                    .arg("--state-dir")
                    .arg(&state)
                    .args(["-o", "json", "--ready-timeout", "20"])
                    .args(extra)
                    .timeout(Duration::from_secs(120))
                    .output()
            })
        })
    };
    let out = run(vec!["--baseline".into()]).await??.context("run")?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["passed"], true);
    assert_eq!(v["nodes"], 3);
    assert!(v["probes"].as_u64().unwrap_or(0) >= 3 * 8);
    assert_eq!(v["failures"], json!([]));
    assert!(state.join("check-baseline.json").exists());

    let mut f = DataPlaneFaults::default();
    f.lapse.insert(e.nodes[0].clone());
    e.dp.set_faults(&f).await?;
    let out = run(vec![]).await??.context("run")?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["passed"], false);
    let fails = v["failures"].as_array().context("failures")?;
    let nodes: BTreeSet<_> = fails.iter().filter_map(|f| f["node"].as_str()).collect();
    assert_eq!(nodes, BTreeSet::from([e.nodes[0].as_str()]));
    for k in [
        "from", "to", "port", "protocol", "expected", "observed", "class", "node",
    ] {
        assert!(fails[0].get(k).is_some(), "{k}");
    }
    assert!(
        !v["baseline_changes"]
            .as_array()
            .context("changes")?
            .is_empty()
    );

    let out = run(vec!["--dns".into(), "no-port".into()])
        .await??
        .context("run")?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"));
    assert_eq!(leftovers(&e.sb)?, 0);
    e.server.shutdown().await;
    Ok(())
}
