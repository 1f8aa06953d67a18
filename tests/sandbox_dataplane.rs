//! The sandbox's data plane: probes through pods/exec (kube-rs and kubectl),
//! per-node enforcement (agents, frozen rules, fail-closed pods), the lapse and
//! agent-not-ready faults, and the enforcement monitor.

use crate::kubectl_client;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use calico_migrate::sandbox::dataplane::{
    DataPlane, DataPlaneFaults, DataPlaneOptions, DivergenceReason, agent_blocked,
};
use calico_migrate::sandbox::scenario::{self, ScenarioConfig};
use calico_migrate::sandbox::{DeleteOptions, Gvr, ListOptions, Sandbox, SandboxOptions};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

const PODS: (&str, &str, &str) = ("", "v1", "pods");

fn gvr(t: (&str, &str, &str)) -> Gvr {
    Gvr::new(t.0, t.1, t.2)
}

/// A seeded cluster (3 nodes, kube-system calico-node Ready on each) with probe pods:
/// team-0001/a on node 0, team-0001/b on node 1, team-0002/c on node 2, all listening
/// on TCP 8080. The scenario's NetworkPolicy `default` admits same-namespace traffic
/// only; GlobalNetworkPolicy deny-aws-imds blocks 169.254.169.254:80.
struct Cluster {
    sb: Sandbox,
    dp: DataPlane,
    nodes: Vec<String>,
}

fn probe_pod(ns: &str, name: &str, node: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "probe"}},
        "spec": {"nodeName": node, "containers": [{"name": "agnhost",
            "image": "registry.k8s.io/e2e-test-images/agnhost:2.53",
            "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn agent_pod(ns: &str, name: &str, node: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"k8s-app": "calico-node"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "calico-node",
                "uid": "ds-uid", "controller": true}]},
        "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "calico-node", "image": "calico/node"}]},
        "status": {"phase": "Running", "podIP": "10.0.255.1",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

impl Cluster {
    async fn new(faults: DataPlaneFaults) -> Result<Cluster> {
        let sb = Sandbox::new(SandboxOptions::default());
        sb.load(scenario::build(&ScenarioConfig {
            nodes: 3,
            namespaces: 2,
            pods_per_namespace: 1,
            ..ScenarioConfig::default()
        })?)?;
        let mut nodes: Vec<String> = sb
            .store()
            .list(&gvr(("", "v1", "nodes")), None, &ListOptions::default())?
            .items
            .iter()
            .filter_map(|n| n.pointer("/metadata/name")?.as_str().map(str::to_string))
            .collect();
        nodes.sort();
        sb.load(vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "calico-system"}}),
            probe_pod("team-0001", "a", &nodes[0], "10.0.200.1"),
            probe_pod("team-0001", "b", &nodes[1], "10.0.200.2"),
            probe_pod("team-0002", "c", &nodes[2], "10.0.200.3"),
        ])?;
        let dp = DataPlane::start(
            &sb,
            DataPlaneOptions {
                timeout_scale: 0.0,
                faults,
                ..DataPlaneOptions::default()
            },
        )?;
        Ok(Cluster { sb, dp, nodes })
    }

    /// `/agnhost connect` from `ns/pod`: (exit code, stderr).
    async fn connect(&self, ns: &str, pod: &str, dest: &str) -> Result<(i32, String)> {
        let cmd: Vec<String> = [
            "/agnhost",
            "connect",
            dest,
            "--timeout=1s",
            "--protocol=tcp",
        ]
        .map(str::to_string)
        .to_vec();
        let o = self.dp.exec(ns, pod, &cmd).await?;
        Ok((o.exit_code, o.stderr))
    }

    /// The kube-system calico-node pod on a node.
    fn agent_on(&self, node: &str) -> Result<String> {
        let pods =
            self.sb
                .store()
                .list(&gvr(PODS), Some("kube-system"), &ListOptions::default())?;
        pods.items
            .iter()
            .find(|p| {
                p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                    && p.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.starts_with("calico-node"))
            })
            .and_then(|p| p.pointer("/metadata/name")?.as_str().map(str::to_string))
            .context("no kube-system calico-node on the node")
    }

    fn delete(&self, t: (&str, &str, &str), ns: &str, name: &str) -> Result<()> {
        self.sb
            .store()
            .delete(&gvr(t), ns, name, &DeleteOptions::default())?;
        Ok(())
    }

    async fn enforcer(&self, node: &str) -> Result<String> {
        let nodes = self.dp.nodes().await;
        Ok(nodes
            .iter()
            .find(|n| n.node == node)
            .context("node not reported")?
            .enforcer
            .clone())
    }
}

fn allow_from_team_0001() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-team-0001", "namespace": "team-0002"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector":
            {"matchLabels": {"kubernetes.io/metadata.name": "team-0001"}}}]}]},
    })
}

#[tokio::test]
async fn in_process_probes_follow_the_policies() -> Result<()> {
    let c = Cluster::new(DataPlaneFaults::default()).await?;
    assert_eq!(
        c.connect("team-0001", "a", "10.0.200.2:8080").await?,
        (0, String::new())
    );
    assert_eq!(
        c.connect("team-0001", "a", "10.0.200.3:8080").await?,
        (1, "TIMEOUT\n".into())
    );
    assert_eq!(
        c.connect("team-0001", "a", "10.0.200.2:9999").await?,
        (1, "REFUSED\n".into())
    );
    assert_eq!(
        c.connect("team-0001", "a", "169.254.169.254:80").await?,
        (1, "TIMEOUT\n".into())
    );
    // deny-aws-imds leaves other ports alone; IMDS only listens on 80.
    assert_eq!(
        c.connect("team-0001", "a", "169.254.169.254:81").await?,
        (1, "REFUSED\n".into())
    );
    let (code, err) = c.connect("team-0001", "a", "web.team-0001:8080").await?;
    assert!(code == 1 && err.starts_with("DNS: "), "{code} {err}");
    let (code, err) = c.connect("team-0001", "a", "10.0.200.2").await?;
    assert!(code == 1 && err.starts_with("UNKNOWN: "), "{code} {err}");
    let out =
        c.dp.exec("team-0001", "a", &["curl".into(), "x".into()])
            .await?;
    assert_eq!(out.exit_code, 127, "{out:?}");
    // Every node has a Ready kube-system agent and nothing diverges.
    for n in &c.nodes {
        assert_eq!(c.enforcer(n).await?, "kube-system");
    }
    assert!(c.dp.intervals().await.is_empty());
    // Services: names resolve in the pod's search path, kube-proxy picks a Ready endpoint.
    let svc = |name: &str, app: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "team-0002"},
            "spec": {"selector": {"app": app}, "clusterIP": ip,
                "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
    };
    c.sb.load(vec![
        svc("c-svc", "probe", "172.20.5.5"),
        svc("empty", "none", "172.20.5.6"),
    ])?;
    for dest in [
        "c-svc.team-0002:80",
        "c-svc.team-0002.svc.cluster.local:80",
        "172.20.5.5:80",
    ] {
        assert_eq!(
            c.connect("team-0001", "a", dest).await?,
            (1, "TIMEOUT\n".into()),
            "{dest}"
        );
    }
    assert!(
        c.connect("team-0001", "a", "c-svc:80")
            .await?
            .1
            .starts_with("DNS: ")
    );
    assert_eq!(
        c.connect("team-0001", "a", "empty.team-0002:80").await?,
        (1, "REFUSED\n".into())
    );
    assert_eq!(
        c.connect("team-0002", "c", "c-svc:80").await?.0,
        0,
        "loopback through the Service"
    );
    // A policy change applies at once on nodes with an agent.
    c.sb.load(vec![allow_from_team_0001()])?;
    assert_eq!(c.connect("team-0001", "a", "10.0.200.3:8080").await?.0, 0);
    assert_eq!(
        c.connect("team-0001", "a", "c-svc.team-0002:80").await?.0,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_node_reaches_its_own_pods_without_policy_and_others_through_it() -> Result<()> {
    let c = Cluster::new(DataPlaneFaults::default()).await?;
    // A hostNetwork pod speaks with its node's address. team-0002/c runs on the third
    // node and only admits its own namespace; team-0001/a (first node) likewise.
    let mut host = probe_pod("kube-system", "host-probe", &c.nodes[2], "10.0.250.3");
    host["spec"]["hostNetwork"] = json!(true);
    c.sb.load(vec![host])?;
    assert_eq!(
        c.connect("kube-system", "host-probe", "10.0.200.3:8080")
            .await?,
        (0, String::new()),
        "Felix does not police a node's traffic to its local pods"
    );
    assert_eq!(
        c.connect("kube-system", "host-probe", "10.0.200.1:8080")
            .await?,
        (1, "TIMEOUT\n".into()),
        "another node's pod judges the node's address by its ingress policy"
    );
    Ok(())
}

async fn kube_exec(
    client: kube::Client,
    ns: &str,
    pod: &str,
    dest: &str,
) -> Result<(String, Option<i32>, String)> {
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let mut p = pods
        .exec(
            pod,
            [
                "/agnhost",
                "connect",
                dest,
                "--timeout=1s",
                "--protocol=tcp",
            ],
            &AttachParams::default().stdout(true).stderr(true),
        )
        .await?;
    let mut stderr = String::new();
    if let Some(mut e) = p.stderr() {
        e.read_to_string(&mut stderr).await?;
    }
    let status = p
        .take_status()
        .context("status channel")?
        .await
        .context("no status")?;
    let code = match status.status.as_deref() {
        Some("Success") => Some(0),
        _ => status
            .details
            .and_then(|d| d.causes)
            .and_then(|c| {
                c.into_iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
            })
            .and_then(|c| c.message?.parse().ok()),
    };
    Ok((status.reason.unwrap_or_default(), code, stderr))
}

#[tokio::test]
async fn kube_rs_exec_answers_and_a_lapse_opens_then_closes_an_interval() -> Result<()> {
    let c = Cluster::new(DataPlaneFaults::default()).await?;
    let server = c.sb.serve("127.0.0.1:0").await?;
    let client = server.client()?;
    assert_eq!(
        kube_exec(client.clone(), "team-0001", "a", "10.0.200.2:8080").await?,
        (String::new(), Some(0), String::new())
    );
    let blocked = kube_exec(client.clone(), "team-0001", "a", "10.0.200.3:8080").await?;
    assert_eq!(
        blocked,
        ("NonZeroExitCode".into(), Some(1), "TIMEOUT\n".into())
    );

    // Lapse the destination's node: its ingress enforcement is gone.
    let mut f = DataPlaneFaults::default();
    f.lapse.insert(c.nodes[2].clone());
    c.dp.set_faults(&f).await?;
    assert_eq!(
        kube_exec(client.clone(), "team-0001", "a", "10.0.200.3:8080")
            .await?
            .1,
        Some(0)
    );
    c.dp.set_faults(&DataPlaneFaults::default()).await?;
    assert_eq!(
        kube_exec(client.clone(), "team-0001", "a", "10.0.200.3:8080")
            .await?
            .1,
        Some(1)
    );
    let iv = c.dp.intervals().await;
    assert_eq!(iv.len(), 1, "{iv:?}");
    assert_eq!(
        (iv[0].node.as_str(), iv[0].reason),
        (c.nodes[2].as_str(), DivergenceReason::Lapse)
    );
    assert!(iv[0].end.is_some_and(|e| e >= iv[0].start));

    // The same record over HTTP.
    let text = client
        .request_text(http::Request::get("/sandbox/v1/enforcement").body(Vec::new())?)
        .await?;
    let body: Value = serde_json::from_str(&text)?;
    assert_eq!(body["intervals"][0]["reason"], "lapse");
    assert_eq!(body["nodes"].as_array().map(Vec::len), Some(3));

    // Errors a client can act on: unknown pod (404 before the upgrade), a pod not running.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team-0001");
    assert!(
        pods.exec("nope", ["/agnhost"], &AttachParams::default())
            .await
            .is_err()
    );
    let mut pending = probe_pod("team-0001", "pending", &c.nodes[0], "10.0.200.9");
    pending["status"]["phase"] = json!("Pending");
    c.sb.load(vec![pending])?;
    let mut p = pods
        .exec(
            "pending",
            ["/agnhost", "connect", "10.0.200.2:8080"],
            &AttachParams::default(),
        )
        .await?;
    let st = p
        .take_status()
        .context("status")?
        .await
        .context("no status")?;
    assert_eq!(st.reason.as_deref(), Some("InternalError"));
    assert!(st.message.unwrap_or_default().contains("not Running"));
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn kubectl_exec_answers_and_a_lapse_allows() -> Result<()> {
    if let Err(why) = kubectl_client::usable() {
        eprintln!("SKIPPED kubectl_exec_answers_and_a_lapse_allows: {why}");
        return Ok(());
    }
    let c = Cluster::new(DataPlaneFaults::default()).await?;
    let server = c.sb.serve("127.0.0.1:0").await?;
    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("kc");
    server.write_kubeconfig(&kc)?;
    let run = |dest: &'static str| {
        let kc = kc.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("kubectl")
                .env("KUBECONFIG", &kc)
                .args([
                    "exec",
                    "-n",
                    "team-0001",
                    "a",
                    "--",
                    "/agnhost",
                    "connect",
                    dest,
                    "--timeout=1s",
                    "--protocol=tcp",
                ])
                .output()
        })
    };
    let ok = run("10.0.200.2:8080").await??;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let blocked = run("10.0.200.3:8080").await??;
    let err = String::from_utf8_lossy(&blocked.stderr).to_string();
    assert_eq!(blocked.status.code(), Some(1), "{err}");
    assert!(err.starts_with("TIMEOUT\n"), "{err}");

    let mut f = DataPlaneFaults::default();
    f.lapse.insert(c.nodes[2].clone());
    c.dp.set_faults(&f).await?;
    let lapsed = run("10.0.200.3:8080").await??;
    assert_eq!(
        lapsed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&lapsed.stderr)
    );
    let iv = c.dp.intervals().await;
    assert!(
        iv.iter().any(|i| i.reason == DivergenceReason::Lapse
            && i.node == c.nodes[2]
            && i.end.is_none()),
        "{iv:?}"
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn new_pods_fail_closed_while_no_agent_runs() -> Result<()> {
    let c = Cluster::new(DataPlaneFaults::default()).await?;
    let node = c.nodes[1].clone();
    c.delete(PODS, "kube-system", &c.agent_on(&node)?)?;
    assert_eq!(c.enforcer(&node).await?, "frozen");
    // b was programmed before the agent left: frozen rules still admit a -> b.
    assert_eq!(c.connect("team-0001", "a", "10.0.200.2:8080").await?.0, 0);
    assert!(
        c.dp.intervals().await.is_empty(),
        "frozen rules equal to the policies are no divergence"
    );
    // A pod created now has no programmed endpoint: dropped both ways.
    c.sb.load(vec![probe_pod("team-0001", "late", &node, "10.0.200.4")])?;
    assert_eq!(
        c.connect("team-0001", "a", "10.0.200.4:8080").await?,
        (1, "TIMEOUT\n".into())
    );
    assert_eq!(
        c.connect("team-0001", "late", "10.0.200.1:8080").await?.0,
        1
    );
    let iv = c.dp.intervals().await;
    assert!(
        iv.iter()
            .any(|i| i.reason == DivergenceReason::FailClosed && i.node == node && i.end.is_none()),
        "{iv:?}"
    );

    // A new node whose agent has not started: its pods fail closed too.
    c.sb.load(vec![
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ip-10-0-9-9.new"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.9.9"}]}}),
    ])?;
    c.sb.load(vec![probe_pod(
        "team-0001",
        "fresh",
        "ip-10-0-9-9.new",
        "10.0.200.5",
    )])?;
    assert_eq!(c.enforcer("ip-10-0-9-9.new").await?, "none");
    assert_eq!(c.connect("team-0001", "a", "10.0.200.5:8080").await?.0, 1);
    // The operator's agent, not Ready yet, changes nothing; Ready, it programs every pod.
    c.sb.load(vec![agent_pod(
        "calico-system",
        "calico-node-new",
        "ip-10-0-9-9.new",
        false,
    )])?;
    assert_eq!(c.connect("team-0001", "a", "10.0.200.5:8080").await?.0, 1);
    c.sb.load(vec![agent_pod(
        "calico-system",
        "calico-node-new",
        "ip-10-0-9-9.new",
        true,
    )])?;
    assert_eq!(c.enforcer("ip-10-0-9-9.new").await?, "calico-system");
    assert_eq!(c.connect("team-0001", "a", "10.0.200.5:8080").await?.0, 0);
    c.sb.load(vec![agent_pod(
        "calico-system",
        "calico-node-x",
        &node,
        true,
    )])?;
    assert_eq!(c.connect("team-0001", "a", "10.0.200.4:8080").await?.0, 0);
    let iv = c.dp.intervals().await;
    let no_agent = iv
        .iter()
        .find(|i| i.reason == DivergenceReason::NoAgent)
        .context("no-agent interval")?;
    assert!(no_agent.end.is_some(), "{iv:?}");
    assert!(
        iv.iter().all(|i| i.end.is_some()),
        "all closed once agents run: {iv:?}"
    );
    Ok(())
}

#[tokio::test]
async fn frozen_rules_keep_old_verdicts_after_a_policy_change() -> Result<()> {
    let c = Cluster::new(DataPlaneFaults::default()).await?;
    let node = c.nodes[2].clone();
    c.delete(PODS, "kube-system", &c.agent_on(&node)?)?;
    c.sb.load(vec![allow_from_team_0001()])?;
    // c's node still runs the rules of before the change: a -> c stays blocked.
    assert_eq!(c.connect("team-0001", "a", "10.0.200.3:8080").await?.0, 1);
    let iv = c.dp.intervals().await;
    assert!(
        iv.iter()
            .any(|i| i.reason == DivergenceReason::StaleRules && i.node == node),
        "{iv:?}"
    );
    // Removing the change makes the frozen rules current again: the interval closes.
    c.delete(
        ("networking.k8s.io", "v1", "networkpolicies"),
        "team-0002",
        "allow-team-0001",
    )?;
    assert!(c.dp.intervals().await.iter().all(|i| i.end.is_some()));
    c.sb.load(vec![allow_from_team_0001()])?;
    c.sb.load(vec![agent_pod(
        "calico-system",
        "calico-node-op",
        &node,
        true,
    )])?;
    assert_eq!(c.connect("team-0001", "a", "10.0.200.3:8080").await?.0, 0);
    let iv = c.dp.intervals().await;
    assert_eq!(
        iv.iter()
            .filter(|i| i.reason == DivergenceReason::StaleRules)
            .count(),
        2
    );
    assert!(iv.iter().all(|i| i.end.is_some()), "{iv:?}");
    Ok(())
}

#[tokio::test]
async fn agent_not_ready_keeps_a_new_agent_from_enforcing() -> Result<()> {
    let node;
    let c = {
        let sb_nodes = Cluster::new(DataPlaneFaults::default()).await?.nodes;
        node = sb_nodes[0].clone();
        let mut f = DataPlaneFaults::default();
        f.agent_not_ready.insert(node.clone());
        Cluster::new(f).await?
    };
    assert!(agent_blocked(c.sb.store(), &node));
    assert!(!agent_blocked(c.sb.store(), &c.nodes[1]));
    // The enforcing agent stays; a replacement, even if it reports Ready, never takes over.
    assert_eq!(c.enforcer(&node).await?, "kube-system");
    c.delete(PODS, "kube-system", &c.agent_on(&node)?)?;
    c.sb.load(vec![agent_pod(
        "calico-system",
        "calico-node-op",
        &node,
        true,
    )])?;
    assert_eq!(c.enforcer(&node).await?, "frozen");
    let report = c.dp.nodes().await;
    assert!(report.iter().any(|n| n.node == node && n.agent_blocked));
    // Clearing the fault lets the Ready agent enforce.
    c.dp.set_faults(&DataPlaneFaults::default()).await?;
    assert_eq!(c.enforcer(&node).await?, "calico-system");
    // The controllers' knob (ConfigMap controller-faults) is honoured as well.
    let other = c.nodes[1].clone();
    c.sb.load(vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "controller-faults", "namespace": "sandbox-system"},
        "data": {"agent-not-ready": other}})])?;
    assert!(agent_blocked(c.sb.store(), &other));
    c.delete(PODS, "kube-system", &c.agent_on(&other)?)?;
    c.sb.load(vec![agent_pod(
        "calico-system",
        "calico-node-op2",
        &other,
        true,
    )])?;
    assert_eq!(c.enforcer(&other).await?, "frozen");
    Ok(())
}

#[tokio::test]
async fn faults_are_readable_and_settable_through_the_configmap() -> Result<()> {
    let c = Cluster::new(DataPlaneFaults::parse_specs(&[format!(
        "lapse:{}",
        Cluster::new(DataPlaneFaults::default()).await?.nodes[0]
    )])?)
    .await?;
    let client = c.sb.client();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, "sandbox-system");
    let cm = cms.get("dataplane-faults").await?;
    let lapse = cm
        .data
        .unwrap_or_default()
        .get("lapse")
        .cloned()
        .unwrap_or_default();
    if lapse != c.nodes[0] {
        bail!("lapse key {lapse:?}, want {}", c.nodes[0]);
    }
    // a -> c is blocked at c's ingress; a's node lapsing does not change that.
    assert_eq!(c.connect("team-0001", "a", "10.0.200.3:8080").await?.0, 1);
    // ... but it lifts a's egress block to IMDS.
    assert_eq!(
        c.connect("team-0001", "a", "169.254.169.254:80").await?.0,
        0
    );
    cms.patch(
        "dataplane-faults",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"lapse": ""}})),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        c.connect("team-0001", "a", "169.254.169.254:80").await?.0,
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_node_by_node_swap_without_policy_changes_never_diverges() -> Result<()> {
    let c = Cluster::new(DataPlaneFaults::default()).await?;
    let from = jiff::Timestamp::now();
    for (i, node) in c.nodes.iter().enumerate() {
        // What the operator does per node: the kube-system pod goes, the operator's comes up.
        c.delete(PODS, "kube-system", &c.agent_on(node)?)?;
        assert_eq!(c.enforcer(node).await?, "frozen");
        let name = format!("calico-node-op{i}");
        c.sb.load(vec![agent_pod("calico-system", &name, node, false)])?;
        assert_eq!(c.connect("team-0001", "a", "10.0.200.3:8080").await?.0, 1);
        c.sb.load(vec![agent_pod("calico-system", &name, node, true)])?;
        assert_eq!(c.enforcer(node).await?, "calico-system");
        assert_eq!(c.connect("team-0001", "a", "10.0.200.2:8080").await?.0, 0);
    }
    let to = jiff::Timestamp::now();
    let iv = c.dp.intervals().await;
    assert!(
        !iv.iter().any(|i| i.overlaps(from, to)),
        "no divergence during the swap: {iv:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_sandbox_command_takes_lapse_faults() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_calico-migrate");
    let bad = Command::new(BIN)
        .args(["sandbox", "--fault", "lapse:"])
        .output()?;
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lapse:NODE"));

    let dir = tempfile::tempdir()?;
    let kc = dir.path().join("kc");
    let node = "ip-10-0-0-10.eu-west-1.compute.internal";
    let mut child = Command::new(BIN)
        .args(["sandbox", "--nodes", "2", "--namespaces", "1", "--fault"])
        .arg(format!("lapse:{node}"))
        .arg("--kubeconfig-out")
        .arg(&kc)
        .arg("--state-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let result = async {
        tokio::time::timeout(Duration::from_secs(30), ready).await???;
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kc)?,
            &Default::default(),
        )
        .await?;
        let client = kube::Client::try_from(config)?;
        let text = client
            .request_text(http::Request::get("/sandbox/v1/enforcement").body(Vec::new())?)
            .await?;
        let body: Value = serde_json::from_str(&text)?;
        let lapsed: Vec<&Value> = body["intervals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["reason"] == "lapse")
            .collect();
        if lapsed.len() != 1 || lapsed[0]["node"] != node {
            bail!("want one lapse interval on {node}: {body}");
        }
        anyhow::Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The simulated operator's migration of a prepared aws-calico install (controllers
/// driven tick by tick), watched by the data plane: the monitor's record of it.
/// With `change_policy`, a NetworkPolicy is created while the first node runs frozen rules.
/// Returns the intervals overlapping the migration.
async fn operator_migration(
    change_policy: bool,
) -> Result<Vec<calico_migrate::sandbox::dataplane::Interval>> {
    use calico_migrate::sandbox::controllers::{ControllerOptions, Controllers};
    use calico_migrate::sandbox::{PatchKind, WriteOptions};
    // Kubernetes 1.24: the operator here is the 0.3.11 chart's v1.20.1, which cannot
    // render on 1.25 or later (it goes Degraded, docs/sandbox-behaviour.md).
    let sb = Sandbox::new(SandboxOptions {
        kubernetes_version: calico_migrate::sandbox::KubernetesVersion::new(24)?,
        ..SandboxOptions::default()
    });
    sb.load(scenario::build(&ScenarioConfig {
        nodes: 4,
        namespaces: 2,
        pods_per_namespace: 2,
        ..ScenarioConfig::default()
    })?)?;
    let mut extra = scenario::operator::operator_crds();
    extra.push(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tigera-operator"}}),
    );
    sb.load(extra)?;
    // What calico-migrate does first: drop Helm's annotations and the Fargate affinity.
    let prepare = json!({
        "metadata": {"annotations": {"meta.helm.sh/release-name": null, "meta.helm.sh/release-namespace": null}},
        "spec": {"template": {"spec": {"affinity": null}}}});
    sb.store().patch(
        &Gvr::new("apps", "v1", "daemonsets"),
        "kube-system",
        "calico-node",
        PatchKind::Merge,
        prepare.to_string().as_bytes(),
        &WriteOptions::default(),
    )?;
    // typha's too: the converter checks its annotations as well.
    sb.store().patch(
        &Gvr::new("apps", "v1", "deployments"),
        "kube-system",
        "calico-typha",
        PatchKind::Merge,
        json!({"metadata": {"annotations": {"meta.helm.sh/release-name": null, "meta.helm.sh/release-namespace": null}}})
            .to_string()
            .as_bytes(),
        &WriteOptions::default(),
    )?;
    let dp = DataPlane::start(&sb, DataPlaneOptions::default())?;
    let mut c = Controllers::new(
        &sb,
        ControllerOptions {
            pod_start_delay: 2.0,
            ..ControllerOptions::default()
        },
    )?;
    let chart = scenario::chart::ChartValues::seed_organisation("tigera-operator");
    let op = scenario::operator::rendered_objects(&chart)
        .into_iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == "Deployment")
        .context("operator Deployment")?;
    sb.store().create(
        &Gvr::new("apps", "v1", "deployments"),
        "tigera-operator",
        op,
        &WriteOptions::default(),
    )?;
    sb.store().create(
        &Gvr::new("operator.tigera.io", "v1", "installations"),
        "",
        scenario::operator::installation_default(),
        &WriteOptions::default(),
    )?;
    let from = jiff::Timestamp::now();
    let gone = |sb: &Sandbox| {
        sb.store()
            .get(
                &Gvr::new("apps", "v1", "daemonsets"),
                "kube-system",
                "calico-node",
            )
            .is_err()
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3000 {
        if gone(&sb) {
            break;
        }
        c.tick();
        let nodes = dp.nodes().await;
        if change_policy && !seen.contains("frozen") && nodes.iter().any(|n| n.enforcer == "frozen")
        {
            sb.load(vec![allow_from_team_0001()])?;
        }
        seen.extend(nodes.into_iter().map(|n| n.enforcer));
    }
    // Every node went through the swap: frozen kube-system rules, then the operator's agent.
    assert!(
        seen.contains("frozen") && seen.contains("calico-system"),
        "{seen:?}"
    );
    // Let the last calico-system pods become Ready.
    for _ in 0..200 {
        c.tick();
    }
    if !gone(&sb) {
        bail!("the simulated operator did not finish the migration");
    }
    let to = jiff::Timestamp::now();
    for n in dp.nodes().await {
        assert_eq!(n.enforcer, "calico-system", "{n:?}");
    }
    Ok(dp
        .intervals()
        .await
        .into_iter()
        .filter(|i| i.overlaps(from, to))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_migration_without_policy_changes_never_diverges() -> Result<()> {
    let iv = operator_migration(false).await?;
    assert!(iv.is_empty(), "{iv:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_mid_migration_is_recorded_as_stale_rules() -> Result<()> {
    let iv = operator_migration(true).await?;
    assert!(!iv.is_empty());
    assert!(
        iv.iter().all(|i| i.reason == DivergenceReason::StaleRules),
        "{iv:?}"
    );
    assert!(
        iv.iter().all(|i| i.end.is_some()),
        "closed once the new agent runs: {iv:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_lagging_follower_rereads_the_store() -> Result<()> {
    // A feed of 16 events: the writes below overrun it before the follower runs.
    let sb = Sandbox::new(SandboxOptions {
        history: 16,
        ..SandboxOptions::default()
    });
    sb.load(scenario::build(&ScenarioConfig {
        nodes: 2,
        namespaces: 1,
        pods_per_namespace: 1,
        ..ScenarioConfig::default()
    })?)?;
    let node = sb
        .store()
        .list(&gvr(("", "v1", "nodes")), None, &ListOptions::default())?
        .items
        .first()
        .and_then(|n| n.pointer("/metadata/name")?.as_str().map(str::to_string))
        .context("a node")?;
    let dp = DataPlane::start(
        &sb,
        DataPlaneOptions {
            timeout_scale: 0.0,
            ..DataPlaneOptions::default()
        },
    )?;
    let pods: Vec<Value> = (1..=60)
        .map(|i| {
            probe_pod(
                "team-0001",
                &format!("p{i}"),
                &node,
                &format!("10.0.201.{i}"),
            )
        })
        .collect();
    sb.load(pods)?;
    let cmd: Vec<String> = ["/agnhost", "connect", "10.0.201.60:8080", "--timeout=1s"]
        .map(str::to_string)
        .to_vec();
    assert_eq!(dp.exec("team-0001", "p1", &cmd).await?.exit_code, 0);
    let nodes = dp.nodes().await;
    assert!(
        nodes.iter().all(|n| n.enforcer == "kube-system"),
        "{nodes:?}"
    );
    Ok(())
}

/// Figures for docs/benchmarks.md (not a pass/fail timing):
/// `cargo test --release --test sandbox_dataplane -- --ignored --nocapture bench_`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn bench_data_plane_figures() -> Result<()> {
    use std::time::Instant;
    for (nodes, namespaces, pods) in [(50, 200, 5), (738, 1450, 10)] {
        let sb = Sandbox::new(SandboxOptions::default());
        sb.load(scenario::build(&ScenarioConfig {
            nodes,
            namespaces,
            pods_per_namespace: pods,
            ..ScenarioConfig::default()
        })?)?;
        let all = sb
            .store()
            .list(&gvr(PODS), None, &ListOptions::default())?
            .items;
        let web: Vec<(String, String, String)> = all
            .iter()
            .filter(|p| {
                p.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.starts_with("web-"))
            })
            .filter_map(|p| {
                Some((
                    p.pointer("/metadata/namespace")?.as_str()?.to_string(),
                    p.pointer("/metadata/name")?.as_str()?.to_string(),
                    p.pointer("/status/podIP")?.as_str()?.to_string(),
                ))
            })
            .collect();
        let t = Instant::now();
        let dp = DataPlane::start(
            &sb,
            DataPlaneOptions {
                timeout_scale: 0.0,
                ..DataPlaneOptions::default()
            },
        )?;
        let start = t.elapsed();
        let cmd = |ip: &str| -> Vec<String> {
            ["/agnhost", "connect", &format!("{ip}:8080"), "--timeout=1s"]
                .map(str::to_string)
                .to_vec()
        };
        let t = Instant::now();
        dp.exec(&web[0].0, &web[0].1, &cmd(&web[1].2)).await?;
        let first = t.elapsed();
        let n = 500;
        let t = Instant::now();
        for i in 0..n {
            let (s, d) = (&web[i * 7 % web.len()], &web[i * 13 % web.len()]);
            dp.exec(&s.0, &s.1, &cmd(&d.2)).await?;
        }
        let warm = t.elapsed() / n as u32;
        // A policy change: the next probe rebuilds the index once.
        sb.load(vec![json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "bench", "namespace": web[0].0},
            "spec": {"podSelector": {}, "ingress": [{}]},
        })])?;
        let t = Instant::now();
        dp.exec(&web[0].0, &web[0].1, &cmd(&web[1].2)).await?;
        let after_change = t.elapsed();
        // A burst of pod writes applied by the follower.
        let t = Instant::now();
        let burst: Vec<Value> = web
            .iter()
            .take(1000)
            .map(|(ns, name, _)| {
                let mut p = sb
                    .store()
                    .get(&gvr(PODS), ns, name)
                    .unwrap_or_else(|_| json!({}));
                p["metadata"]["labels"]["bench"] = json!("1");
                p
            })
            .collect();
        let written = burst.len();
        sb.load(burst)?;
        dp.sync().await;
        let burst_time = t.elapsed();
        let server = sb.serve("127.0.0.1:0").await?;
        let client = server.client()?;
        let m = 100;
        let t = Instant::now();
        for i in 0..m {
            let (s, d) = (&web[i * 7 % web.len()], &web[i * 13 % web.len()]);
            kube_exec(client.clone(), &s.0, &s.1, &format!("{}:8080", d.2)).await?;
        }
        let ws = t.elapsed() / m as u32;
        println!(
            "{nodes} nodes, {} pods: start {start:?}; first probe (index build) {first:?}; \
             probe in-process {warm:?}; probe after a policy change {after_change:?}; \
             {written} pod updates applied in {burst_time:?}; probe over kube-rs websocket {ws:?}",
            all.len()
        );
        server.shutdown().await;
        dp.stop();
    }
    Ok(())
}
