//! `calico-migrate check` against the sandbox: a served API server with the workload
//! controllers (probe pods become Running with addresses) and the data plane (pods/exec
//! answers `/agnhost connect` with what each node's enforcement allows).

use crate::api_sentence::{assert_networkpolicies_list_forbidden, assert_one_api_sentence};

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use calico_migrate::checks::{
    self, Expected, FailureClass, ProbeKind, Prober, ResultClass, RoundOptions, RoundReport,
};
use calico_migrate::sandbox::controllers::ControllersHandle;
use calico_migrate::sandbox::dataplane::{DataPlane, DataPlaneFaults};
use calico_migrate::sandbox::scenario::ScenarioConfig;
use calico_migrate::sandbox::{Gvr, ListOptions, Sandbox, ServeHandle};
use calico_migrate::testkit::{Rig, RigOptions};
use serde_json::json;

struct Env {
    sb: Sandbox,
    /// Dropped with the environment, which stops the controllers.
    _controllers: ControllersHandle,
    dp: DataPlane,
    server: ServeHandle,
    client: kube::Client,
    nodes: Vec<String>,
}

async fn env(nodes: usize) -> Result<Env> {
    let rig = Rig::start_scenario(
        &ScenarioConfig {
            nodes,
            namespaces: 3,
            pods_per_namespace: 2,
            ..ScenarioConfig::default()
        },
        &RigOptions::default(),
    )
    .await?;
    let nodes = rig.node_names()?;
    let Rig {
        sb,
        controllers,
        dp,
        server,
        client,
    } = rig;
    Ok(Env {
        sb,
        _controllers: controllers,
        dp,
        server,
        client,
        nodes,
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
async fn dns_probes_expect_what_the_policies_say_of_the_lookup() -> Result<()> {
    let e = env(3).await?;
    let o = RoundOptions {
        dns_target: Some("kube-dns.kube-system:53".into()),
        ..opts()
    };
    let dns = |r: &RoundReport| -> Vec<(Expected, ResultClass)> {
        r.records
            .iter()
            .filter(|x| x.probe.kind == ProbeKind::Dns)
            .map(|x| (x.probe.expected, x.observed))
            .collect()
    };
    let r = checks::run_round(&e.client, &o).await?;
    assert!(r.passed, "failures: {:#?}", r.failures);
    assert_eq!(dns(&r), vec![(Expected::Allowed, ResultClass::Allowed); 3]);
    // A policy denying DNS to probe namespace a: the engine expects the lookup to be
    // blocked, and the nodes time it out.
    e.sb.load(vec![json!({"apiVersion": "crd.projectcalico.org/v1",
        "kind": "GlobalNetworkPolicy", "metadata": {"name": "no-dns-for-a"},
        "spec": {"order": 10, "selector": "projectcalico.org/namespace == 'calico-migrate-probe-a'",
            "types": ["Egress"], "egress": [
                {"action": "Deny", "protocol": "UDP", "destination": {"ports": [53]}},
                {"action": "Allow"}]}})])?;
    let r = checks::run_round(&e.client, &o).await?;
    assert!(r.passed, "failures: {:#?}", r.failures);
    assert_eq!(
        dns(&r),
        vec![(Expected::Blocked, ResultClass::DnsFailure); 3]
    );
    // Where enforcement lapses, the lookup gets through: named as not enforced there.
    let bad = e.nodes[1].clone();
    let mut f = DataPlaneFaults::default();
    f.lapse.insert(bad.clone());
    e.dp.set_faults(&f).await?;
    let r = checks::run_round(&e.client, &o).await?;
    assert!(
        r.failures.iter().any(|f| f.to == "kube-dns.kube-system:53"
            && f.class == FailureClass::NotEnforced
            && f.node == bad),
        "{:#?}",
        r.failures
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
async fn continuous_probing_stops_at_a_lapse_and_records_a_stale_rules_window() -> Result<()> {
    use calico_migrate::sandbox::{PatchKind, WriteOptions};
    let e = env(3).await?;
    let node = e.nodes[1].clone();
    let prober = Prober::setup(&e.client, &opts()).await?;

    // A lapse (a pair the policies block gets through): the watch ends at once,
    // unverified, blaming the lapsed node, without waiting for `done` or `max`.
    let mut f = DataPlaneFaults::default();
    f.lapse.insert(node.clone());
    e.dp.set_faults(&f).await?;
    let started = std::time::Instant::now();
    let w = checks::watch_node(
        &prober,
        &node,
        &checks::InFlight::default(),
        std::future::pending::<()>(),
        Duration::from_millis(50),
        Duration::from_secs(30),
    )
    .await?;
    assert!(!w.verified_at_end, "{w:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{w:?}");
    assert!(!w.last_failures.is_empty());
    assert!(
        w.last_failures.iter().all(|f| f.node == node
            && f.expected == Expected::Blocked
            && matches!(f.observed, ResultClass::Allowed | ResultClass::Refused)),
        "{:#?}",
        w.last_failures
    );
    e.dp.set_faults(&DataPlaneFaults::default()).await?;

    // Stale rules: the node's agent goes (its rules stay, frozen), a policy then
    // opens probe-b -> probe-a; the frozen node still drops that traffic (not a
    // lapse: connectivity) until its agent is back. The window covers that time.
    let ds = Gvr::new("apps", "v1", "daemonsets");
    let away = json!({"spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
            "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": [node]}]}]}}}}}}});
    e.sb.store().patch(
        &ds,
        "kube-system",
        "calico-node",
        PatchKind::Merge,
        away.to_string().as_bytes(),
        &WriteOptions::default(),
    )?;
    let frozen = async {
        for _ in 0..200 {
            if e.dp
                .nodes()
                .await
                .iter()
                .any(|n| n.node == node && n.enforcer == "frozen")
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    assert!(frozen.await, "the node's agent went away");
    e.sb.load(vec![
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "from-probe-b", "namespace": "calico-migrate-probe-a"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels":
            {"kubernetes.io/metadata.name": "calico-migrate-probe-b"}}}]}]}}),
    ])?;
    let (sb, client, back_node) = (e.sb.clone(), e.client.clone(), node.clone());
    let heal = async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let back = json!({"spec": {"template": {"spec": {"affinity": null}}}});
        let _ = sb.store().patch(
            &ds,
            "kube-system",
            "calico-node",
            PatchKind::Merge,
            back.to_string().as_bytes(),
            &WriteOptions::default(),
        );
        checks::agent_ready(
            &client,
            "kube-system",
            &back_node,
            Duration::from_millis(50),
        )
        .await;
    };
    let w = checks::watch_node(
        &prober,
        &node,
        &checks::InFlight::default(),
        heal,
        Duration::from_millis(50),
        Duration::from_secs(30),
    )
    .await?;
    assert!(w.verified_at_end, "{w:?}");
    assert!(w.failed_passes >= 1, "{w:?}");
    assert!(w.longest_unverified_ms >= 800, "{w:?}");
    // Begun while the agent was away: passes ran before it was back, and the last (the
    // one that verified) after.
    assert!(
        w.passes_before_ready >= 1 && w.passes_before_ready < w.passes,
        "{w:?}"
    );
    assert!(
        w.last_failures.iter().all(|f| f.node == node
            && f.expected == Expected::Allowed
            && f.observed == ResultClass::Blocked),
        "{w:?}"
    );
    // The seeded chart's agent is Ready on every node: `agent_ready` resolves at once,
    // and a pass with enforcement in place ends the watch.
    let ready = checks::agent_ready(&e.client, "kube-system", &node, Duration::from_millis(50));
    let w = checks::watch_node(
        &prober,
        &node,
        &checks::InFlight::default(),
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

// ---- Long-lived connections across a node's agent swap (checks::conn) ----

use calico_migrate::checks::conn::{self, ConnReport, ConnState, HoldOptions};

fn hold_opts() -> HoldOptions {
    HoldOptions {
        interval: Duration::from_millis(100),
        read_timeout: Duration::from_secs(1),
        establish_timeout: Duration::from_secs(20),
        max: Duration::from_secs(40),
    }
}

fn set_phase(sb: &Sandbox, key: &str, phase: &str) -> Result<()> {
    let (ns, name) = key.split_once('/').context("pod key")?;
    let mut pod = sb.store().get(&Gvr::new("", "v1", "pods"), ns, name)?;
    pod["status"]["phase"] = json!(phase);
    sb.load(vec![pod])?;
    Ok(())
}

fn states(r: &ConnReport) -> Vec<(String, String, ConnState)> {
    r.connections
        .iter()
        .map(|c| (c.from.clone(), c.to.clone(), c.state))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_survive_an_agent_swap() -> Result<()> {
    assert_eq!(
        conn::HOLD_SCRIPT,
        calico_migrate::sandbox::dataplane::flows::HOLD_SCRIPT,
        "the sandbox must understand the script the check sends"
    );
    let e = env(3).await?;
    let node = e.nodes[1].clone();
    let prober = Prober::setup(&e.client, &opts()).await?;
    let (sb, client, dp) = (e.sb.clone(), e.client.clone(), e.dp.clone());
    let swap_node = node.clone();
    let saw_frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let frozen = saw_frozen.clone();
    // The operator's per-node swap: the chart's DaemonSet stops selecting the node (its
    // pod there goes), the operator's calico-node comes up on it.
    let swap = async move {
        let run = async {
            use calico_migrate::sandbox::{PatchKind, WriteOptions};
            let nodes_gvr = Gvr::new("", "v1", "nodes");
            for n in sb
                .store()
                .list(&nodes_gvr, None, &ListOptions::default())?
                .items
            {
                let name = n
                    .pointer("/metadata/name")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                let value = if name == swap_node {
                    "migrated"
                } else {
                    "pre-operator"
                };
                let patch = json!({"metadata": {"labels": {"projectcalico.org/operator-node-migration": value}}});
                sb.store().patch(
                    &nodes_gvr,
                    "",
                    name,
                    PatchKind::Merge,
                    patch.to_string().as_bytes(),
                    &WriteOptions::default(),
                )?;
            }
            let selector = json!({"spec": {"template": {"spec": {"nodeSelector":
                {"projectcalico.org/operator-node-migration": "pre-operator"}}}}});
            sb.store().patch(
                &Gvr::new("apps", "v1", "daemonsets"),
                "kube-system",
                "calico-node",
                PatchKind::Merge,
                selector.to_string().as_bytes(),
                &WriteOptions::default(),
            )?;
            sb.load(vec![json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "calico-system"}})])?;
            for _ in 0..200 {
                let seen = dp.nodes().await;
                if seen
                    .iter()
                    .any(|n| n.node == swap_node && n.enforcer == "frozen")
                {
                    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            sb.load(vec![json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "calico-node-op", "namespace": "calico-system",
                    "labels": {"k8s-app": "calico-node"}},
                "spec": {"nodeName": swap_node, "hostNetwork": true,
                    "containers": [{"name": "calico-node", "image": "calico/node"}]}})])?;
            checks::agent_ready(
                &client,
                "calico-system",
                &swap_node,
                Duration::from_millis(50),
            )
            .await;
            anyhow::Ok(())
        };
        if let Err(err) = run.await {
            panic!("swap failed: {err:#}");
        }
    };
    let r = conn::hold_connections_with(&e.client, &prober, &node, swap, &hold_opts()).await?;
    assert!(
        saw_frozen.load(std::sync::atomic::Ordering::SeqCst),
        "the node ran frozen rules mid-swap"
    );
    let enforcer = e.dp.nodes().await;
    assert!(
        enforcer
            .iter()
            .any(|n| n.node == node && n.enforcer == "calico-system"),
        "{enforcer:?}"
    );
    assert!(r.passed(), "{r:#?}");
    // Own client to own server, own clients to the next node, the previous node's in.
    assert_eq!(r.connections.len(), 5, "{:?}", states(&r));
    assert_eq!((r.survived, r.broken, r.check_failed), (5, 0, 0));
    for c in &r.connections {
        assert!(c.src_node == node || c.dst_node.as_deref() == Some(node.as_str()));
        assert!(c.round_trips >= 2, "{c:?}");
    }
    assert!(r.swap_finished && r.swap_ms.unwrap_or(0) >= 300);
    prober.teardown().await?;
    assert_eq!(leftovers(&e.sb)?, 0);
    e.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denying_policy_keeps_established_flows_until_conntrack_forgets_them() -> Result<()> {
    let e = env(3).await?;
    let node = e.nodes[1].clone();
    let prober = Prober::setup(&e.client, &opts()).await?;
    let (sb, client, flush_node) = (e.sb.clone(), e.client.clone(), node.clone());
    let flushed_at = std::sync::Arc::new(std::sync::Mutex::new(None));
    let at = flushed_at.clone();
    let change = async move {
        // Deny every ingress to namespace a, ahead of its `default` allow.
        let deny = json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "deny-probe-a-ingress"},
            "spec": {"order": 1, "selector": "projectcalico.org/namespace == 'calico-migrate-probe-a'",
                "types": ["Ingress"], "ingress": [{"action": "Deny"}]}});
        if let Err(err) = sb.load(vec![deny]) {
            panic!("policy: {err}");
        }
        // Calico judges the first packet only: the flows carry on under the new policy.
        tokio::time::sleep(Duration::from_millis(600)).await;
        if let Ok(mut t) = at.lock() {
            *t = Some(jiff::Timestamp::now());
        }
        // `conntrack -F` on the node, through the sandbox's HTTP knob.
        let flush = http::Request::post(format!("/sandbox/v1/conntrack/flush?node={flush_node}"))
            .body(Vec::new());
        match flush {
            Ok(req) => {
                if let Err(err) = client.request_text(req).await {
                    panic!("flush: {err}");
                }
            }
            Err(err) => panic!("flush request: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let r = conn::hold_connections_with(&e.client, &prober, &node, change, &hold_opts()).await?;
    let flushed = flushed_at
        .lock()
        .ok()
        .and_then(|t| *t)
        .context("flush time")?;
    assert!(!r.passed());
    // Broken: the namespace-a flows whose ingress is on the flushed node (its own
    // client to its own server, and the previous node's client in). The flow out to the
    // next node keeps that node's conntrack entry; namespace b is not denied.
    let broken: Vec<_> = r
        .connections
        .iter()
        .filter(|c| c.state == ConnState::Broken)
        .collect();
    assert_eq!(broken.len(), 2, "{:#?}", r.connections);
    assert_eq!(r.broken, 2);
    assert_eq!(r.survived, 3);
    for c in &broken {
        assert!(c.to.starts_with("calico-migrate-probe-a/"), "{c:?}");
        assert_eq!(c.dst_node.as_deref(), Some(node.as_str()));
        assert_eq!(c.detail, "timeout");
        assert!(
            c.broken_at.is_some_and(|t| t >= flushed),
            "{c:?} before {flushed}"
        );
        assert!(
            c.last_ok_after_ms.unwrap_or(0) < c.broken_after_ms.unwrap_or(0),
            "{c:?}"
        );
        assert!(c.round_trips >= 4, "answered under the new policy: {c:?}");
    }
    // New connections are denied at once: the probes see the policy.
    let plan = prober.plan().await?;
    assert!(
        conn::held_pairs(&plan.probes, &node)
            .iter()
            .all(|p| !p.to.starts_with("calico-migrate-probe-a/server")
                || p.dst_node.as_deref() != Some(node.as_str()))
    );
    let unknown =
        http::Request::post("/sandbox/v1/conntrack/flush?node=no-such-node").body(Vec::new())?;
    let err = e
        .client
        .request_text(unknown)
        .await
        .err()
        .context("404 expected")?;
    assert!(err.to_string().contains("no-such-node"), "{err}");
    let json = serde_json::to_value(&r)?;
    assert_eq!(json["broken"], 2);
    assert!(json["connections"][0]["state"].is_string());
    prober.teardown().await?;
    e.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_probe_pod_is_check_failed_and_a_dead_server_is_broken() -> Result<()> {
    let e = env(3).await?;
    let node = e.nodes[1].clone();
    let prober = Prober::setup(&e.client, &opts()).await?;
    let pairs = conn::held_pairs(&prober.plan().await?.probes, &node);
    // A client on the node in namespace b, and the next node's server in namespace a.
    let client = pairs
        .iter()
        .find(|p| p.from.starts_with("calico-migrate-probe-b/") && p.src_node == node)
        .context("b client on the node")?
        .from
        .clone();
    let server = pairs
        .iter()
        .find(|p| {
            p.to.starts_with("calico-migrate-probe-a/")
                && p.dst_node.as_deref() != Some(node.as_str())
        })
        .context("a server on the next node")?
        .to
        .clone();
    let sb = e.sb.clone();
    let (c2, s2) = (client.clone(), server.clone());
    let breakage = async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Err(err) = set_phase(&sb, &c2, "Failed").and_then(|()| set_phase(&sb, &s2, "Failed"))
        {
            panic!("{err:#}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let r = conn::hold_connections_with(&e.client, &prober, &node, breakage, &hold_opts()).await?;
    assert!(!r.passed());
    for c in &r.connections {
        let want = if c.from == client {
            ConnState::CheckFailed
        } else if c.to == server {
            ConnState::Broken
        } else {
            ConnState::Established
        };
        assert_eq!(c.state, want, "{c:?}");
    }
    let failed = r
        .connections
        .iter()
        .find(|c| c.from == client)
        .context("client's connection")?;
    assert!(
        failed.broken_at.is_none() && !failed.detail.is_empty(),
        "{failed:?}"
    );
    assert!(
        r.connections
            .iter()
            .any(|c| c.to == server && c.detail == "closed")
    );
    assert_eq!(r.check_failed, 1);
    // A node outside the probe workload is refused with a clear error.
    let err = conn::hold_connections(
        &e.client,
        &prober,
        "no-such-node",
        async {},
        Duration::from_secs(1),
    )
    .await
    .err()
    .context("an unknown node must be refused")?;
    assert!(err.to_string().contains("no-such-node"), "{err}");
    prober.teardown().await?;
    e.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_the_api_server_refuses_reads_as_one_sentence() -> Result<()> {
    let e = env(2).await?;
    // `alice` may set up the probes (NetworkPolicies included) but not list
    // NetworkPolicies: the round stops when it reads the policies in force.
    e.sb.load(vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "probe-but-not-list-networkpolicies"},
        "rules": [{"apiGroups": ["", "crd.projectcalico.org"], "resources": ["*"], "verbs": ["*"]},
                  {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
                   "verbs": ["get", "create", "delete"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "probe-but-not-list-networkpolicies"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "probe-but-not-list-networkpolicies"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
    ])?;
    let mut cfg = kube::Config::new(e.server.url().parse()?);
    cfg.auth_info.impersonate = Some("alice".into());
    let alice = kube::Client::try_from(cfg)?;
    let err = match checks::run_round(&alice, &opts()).await {
        Err(err) => err,
        Ok(r) => panic!("a round without reading NetworkPolicies: {r:?}"),
    };
    assert_networkpolicies_list_forbidden(err);
    assert_eq!(
        leftovers(&e.sb)?,
        0,
        "the probe workload is removed after the error"
    );

    // Through the binary: `error: ` and every source, on one line.
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("kubeconfig");
    let config = e
        .server
        .kubeconfig()
        .replace("  user: {}", "  user:\n    as: alice");
    assert!(config.contains("as: alice"), "{config}");
    std::fs::write(&kc, config)?;
    let state = dir.path().join("state");
    let out = tokio::task::spawn_blocking(move || {
        assert_cmd::Command::cargo_bin("calico-migrate").map(|mut c| {
            c.arg("check")
                .arg("--kubeconfig")
                .arg(&kc)
                .arg("--state-dir")
                .arg(&state)
                .args(["--ready-timeout", "20"])
                .timeout(Duration::from_secs(120))
                .output()
        })
    })
    .await??
    .context("run")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.starts_with(
            "error: listing NetworkPolicies (networking.k8s.io/v1) in all namespaces: the API \
             server answered 403 Forbidden ("
        ),
        "{stderr}"
    );
    println!("{line}");
    assert_one_api_sentence(line);
    assert_eq!(stderr.matches("403").count(), 1, "{stderr}");
    Ok(())
}
