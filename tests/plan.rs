//! `plan` against the sandbox: in-process scenarios (chart 0.3.10, 0.3.11, operator
//! present, Helm 2, v1beta1-era CRDs, unready nodes, no Calico, missing RBAC) and the
//! real binary through a kubeconfig (JSON contract, saved plan, unreachable server).

use crate::api_sentence::{assert_networkpolicies_list_forbidden, assert_one_api_sentence};

use std::time::{Duration, Instant};

use assert_cmd::Command;
use calico_migrate::cluster::{access, inventory};
use calico_migrate::engine::RetryPolicy;
use calico_migrate::migration::permissions;
use calico_migrate::migration::plan::{self, Plan};
use calico_migrate::migration::profile::{OPERATOR_CHART_PROFILE, Profile, SAME_VERSION_PROFILE};
use calico_migrate::sandbox::scenario::{self, ChartGeneration, ScenarioConfig};
use calico_migrate::sandbox::{KubernetesVersion, Sandbox, SandboxOptions};
use serde_json::{Value, json};

fn objects(chart: ChartGeneration) -> Vec<Value> {
    scenario::build(&ScenarioConfig {
        nodes: 4,
        namespaces: 6,
        pods_per_namespace: 1,
        chart,
        ..ScenarioConfig::default()
    })
    .unwrap_or_else(|e| panic!("scenario: {e}"))
}

/// A sandbox seeded with `objs`, serving Kubernetes 1.24: the newest minor the
/// same-version profile runs on, which `plan_of` and `plan_with` read the plan with.
/// The current path's plans are read on today's minors (`Served`, tests/apply.rs).
fn sandbox(objs: Vec<Value>) -> Sandbox {
    sandbox_at(
        objs,
        KubernetesVersion::new(24).unwrap_or_else(|e| panic!("{e}")),
    )
}

/// A sandbox serving Kubernetes `kv`, seeded with `objs`.
fn sandbox_at(objs: Vec<Value>, kv: KubernetesVersion) -> Sandbox {
    let sb = Sandbox::new(SandboxOptions {
        kubernetes_version: kv,
        ..SandboxOptions::default()
    });
    sb.load(objs).unwrap_or_else(|e| panic!("load: {e:?}"));
    sb
}

/// Kubernetes 1.33, which the tests of the v3.19.1 manifest name.
fn k8s_1_33() -> KubernetesVersion {
    KubernetesVersion::new(33).unwrap_or_else(|e| panic!("{e}"))
}

async fn plan_of(sb: &Sandbox) -> Plan {
    plan_as(&sb.client()).await
}

/// The plan as `client`'s identity sees the cluster.
async fn plan_as(client: &kube::Client) -> Plan {
    plan_under(client, SAME_VERSION_PROFILE).await
}

/// The plan under built-in profile `name`.
async fn plan_under(client: &kube::Client, name: &str) -> Plan {
    let client = client.clone();
    let retry = RetryPolicy::default();
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|e| panic!("version: {e}"));
    let inv = inventory::read(&client, version, &retry)
        .await
        .unwrap_or_else(|e| panic!("inventory: {e}"));
    let acc = access::review(&client, &permissions::needed(), 4, &retry)
        .await
        .unwrap_or_else(|e| panic!("access: {e}"));
    let profile = Profile::load(name).unwrap_or_else(|e| panic!("profile: {e}"));
    plan::build(
        &inv,
        &profile,
        &acc,
        plan::Pins {
            operator: Some(&"ab".repeat(32)),
            calico: None,
            adopt_into: None,
        },
    )
    .unwrap_or_else(|e| panic!("build: {e}"))
}

fn codes(p: &Plan) -> (Vec<&str>, Vec<&str>) {
    (
        p.blockers.iter().map(|f| f.code).collect(),
        p.warnings.iter().map(|f| f.code).collect(),
    )
}

fn mutate(objs: &mut [Value], kind: &str, name: &str, f: impl Fn(&mut Value)) {
    let mut hit = false;
    for o in objs.iter_mut() {
        if o["kind"] == kind && o["metadata"]["name"] == name {
            f(o);
            hit = true;
        }
    }
    assert!(hit, "{kind} {name} not in the scenario");
}

#[tokio::test]
async fn default_scenario_names_chart_version_counts_and_converter_blockers() {
    let objs = objects(ChartGeneration::V0_3_10);
    let nps = objs
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy" && o["apiVersion"] == "networking.k8s.io/v1")
        .count();
    let p = plan_of(&sandbox(objs)).await;
    assert_eq!(p.source.chart.as_deref(), Some("aws-calico"));
    assert_eq!(p.source.chart_version.as_deref(), Some("0.3.10"));
    assert_eq!(p.source.calico_version.as_deref(), Some("v3.19.1"));
    assert_eq!(p.source.release.as_deref(), Some("aws-calico"));
    assert_eq!(p.inventory.nodes, 4);
    assert_eq!(p.inventory.network_policies, nps);
    assert_eq!(p.inventory.global_network_policies, 1);
    assert_eq!(p.inventory.crds, 12);
    let (blockers, warnings) = codes(&p);
    assert!(
        blockers.contains(&"CONVERTER_HELM_ANNOTATIONS"),
        "{blockers:?}"
    );
    assert!(
        blockers.contains(&"CONVERTER_FARGATE_AFFINITY"),
        "{blockers:?}"
    );
    // Every blocker here is one a step of the plan fixes.
    for f in &p.blockers {
        assert!(f.fixed_by.is_some(), "{f:?}");
        assert!(f.fix.contains(f.fixed_by.unwrap_or("?")), "{f:?}");
    }
    assert!(p.ready(), "every blocker has a fixing step");
    let planned = p.planned_steps();
    assert_eq!(planned.len(), p.steps.len());
    assert_eq!(planned[0].id, "baseline");
    assert_eq!(p.journal_identity().plan_fingerprint, p.fingerprint);
    assert!(!p.journal_identity().cluster_uid.is_empty());
    // The sandbox's authorizer answers the access review: the admin lacks nothing.
    assert!(!warnings.contains(&"RBAC_UNVERIFIED"), "{warnings:?}");
    assert!(!blockers.contains(&"RBAC_MISSING"), "{blockers:?}");
    assert!(warnings.contains(&"CHART_CRDS_V1BETA1"), "{warnings:?}");
    let ids: Vec<&str> = p.steps.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [
            "baseline",
            "detach-helm",
            "fargate-affinity",
            "install-operator",
            "create-installation",
            "takeover",
            "verify-completion",
            "cleanup-leftovers",
            "remove-probes"
        ]
    );
    // The tool never deletes a policy object (docs/upstream.md, "The seeded cluster's policies").
    let policy_kinds = [
        "NetworkPolicy",
        "GlobalNetworkPolicy",
        "GlobalNetworkSet",
        "NetworkSet",
        "HostEndpoint",
        "CustomResourceDefinition",
    ];
    for s in &p.steps {
        for c in s.changes.iter().filter(|c| c.action == "delete") {
            let kind = c.object.split_whitespace().next().unwrap_or("");
            assert!(
                !policy_kinds.contains(&kind),
                "step {} deletes {}",
                s.id,
                c.object
            );
        }
    }
    // The JSON contract later tests rely on.
    let j = serde_json::to_value(&p).unwrap_or_else(|e| panic!("{e}"));
    for k in [
        "chart",
        "chart_version",
        "release",
        "namespace",
        "calico_version",
    ] {
        assert!(j["source"].get(k).is_some(), "source.{k}");
    }
    for k in [
        "nodes",
        "namespaces",
        "network_policies",
        "calico_network_policies",
        "global_network_policies",
        "crds",
    ] {
        assert!(j["inventory"][k].is_u64(), "inventory.{k}");
    }
    for k in ["code", "message", "fix"] {
        assert!(j["blockers"][0][k].is_string(), "blockers[].{k}");
    }
    for k in ["id", "title", "changes", "checks", "rollback"] {
        assert!(j["steps"][0].get(k).is_some(), "steps[].{k}");
    }
}

/// Under its own profile the operator-based chart is planned: kept, detached, its
/// operator upgraded; at 1.29 plan says the release's operator cannot render there.
#[tokio::test]
async fn chart_0_3_11_is_planned_under_its_own_profile() {
    for (minor, cannot_render) in [(24, false), (29, true)] {
        let kv = KubernetesVersion::new(minor).unwrap_or_else(|e| panic!("{e}"));
        let sb = sandbox_at(objects(ChartGeneration::V0_3_11), kv);
        let p = plan_under(&sb.client(), OPERATOR_CHART_PROFILE).await;
        let (blockers, warnings) = codes(&p);
        assert!(blockers.is_empty(), "1.{minor}: {blockers:?}");
        assert!(warnings.contains(&"RELEASE_OWNS_CRDS"), "{warnings:?}");
        assert_eq!(
            warnings.contains(&"SOURCE_OPERATOR_CANNOT_RENDER"),
            cannot_render,
            "1.{minor}: {warnings:?}"
        );
        let ids: Vec<&str> = p.steps.iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            [
                "baseline",
                "keep-release",
                "detach-helm",
                "upgrade-operator",
                "verify-completion",
                "remove-probes"
            ]
        );
    }
    // A manifest install under the 0.3.11 profile is refused, with the way out.
    let p = plan_under(
        &sandbox(objects(ChartGeneration::V0_3_10)).client(),
        OPERATOR_CHART_PROFILE,
    )
    .await;
    let (blockers, _) = codes(&p);
    assert!(
        blockers.contains(&"PROFILE_FOR_OPERATOR_CHART"),
        "{blockers:?}"
    );
}

#[tokio::test]
async fn chart_0_3_11_is_recognised_as_operator_based() {
    let p = plan_of(&sandbox(objects(ChartGeneration::V0_3_11))).await;
    assert_eq!(p.source.chart_version.as_deref(), Some("0.3.11"));
    let (blockers, _) = codes(&p);
    assert!(blockers.contains(&"CHART_OPERATOR_BASED"), "{blockers:?}");
    assert!(!blockers.contains(&"CONVERTER_HELM_ANNOTATIONS"));
    assert!(
        p.steps.is_empty(),
        "no 0.3.10 steps for an operator-based chart"
    );
    assert!(
        p.blockers
            .iter()
            .any(|f| f.message.contains("helm uninstall"))
    );
}

#[tokio::test]
async fn operator_already_present_is_a_blocker() {
    let mut objs = objects(ChartGeneration::V0_3_10);
    objs.push(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tigera-operator"}}),
    );
    objs.push(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "tigera-operator", "namespace": "tigera-operator"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"name": "tigera-operator"}},
                 "template": {"metadata": {"labels": {"name": "tigera-operator"}},
                              "spec": {"containers": [{"name": "tigera-operator", "image": "quay.io/tigera/operator:v1.17.4"}]}}}}));
    let p = plan_of(&sandbox(objs)).await;
    assert!(p.inventory.operator_present);
    assert!(codes(&p).0.contains(&"OPERATOR_PRESENT"));
}

#[tokio::test]
async fn helm2_records_are_refused_with_a_message() {
    let mut objs = objects(ChartGeneration::V0_3_10);
    objs.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "calico.v1", "namespace": "kube-system",
                     "labels": {"OWNER": "TILLER", "NAME": "calico", "VERSION": "1", "STATUS": "DEPLOYED"}},
        "data": {"release": "H4sI"}}));
    let p = plan_of(&sandbox(objs)).await;
    let f = p
        .blockers
        .iter()
        .find(|f| f.code == "HELM2_RELEASE")
        .unwrap_or_else(|| panic!("{:?}", p.blockers));
    assert!(f.message.contains("kube-system/calico.v1"), "{}", f.message);
    assert!(f.fix.contains("2to3"));
}

#[tokio::test]
async fn crds_not_serving_v1_are_blockers() {
    let mut objs = objects(ChartGeneration::V0_3_10);
    mutate(
        &mut objs,
        "CustomResourceDefinition",
        "ippools.crd.projectcalico.org",
        |o| {
            o["spec"]["versions"][0]["name"] = json!("v1beta1");
        },
    );
    mutate(
        &mut objs,
        "CustomResourceDefinition",
        "bgppeers.crd.projectcalico.org",
        |o| {
            o["status"]["conditions"] =
                json!([{"type": "NonStructuralSchema", "status": "True", "reason": "Violations"}]);
        },
    );
    let p = plan_of(&sandbox(objs)).await;
    let b = p
        .blockers
        .iter()
        .find(|f| f.code == "CALICO_CRD_NOT_V1")
        .unwrap_or_else(|| panic!("{:?}", p.blockers));
    assert!(b.message.contains("ippools.crd.projectcalico.org"));
    assert!(
        p.warnings
            .iter()
            .any(|f| f.code == "CALICO_CRD_LEGACY_SCHEMA" && f.message.contains("bgppeers")),
        "{:?}",
        p.warnings
    );
}

#[tokio::test]
async fn unready_nodes_are_named() {
    let mut objs = objects(ChartGeneration::V0_3_10);
    let name = objs
        .iter()
        .find(|o| o["kind"] == "Node")
        .and_then(|n| n["metadata"]["name"].as_str())
        .unwrap_or_else(|| panic!("no node"))
        .to_string();
    mutate(&mut objs, "Node", &name, |n| {
        if let Some(cs) = n["status"]["conditions"].as_array_mut() {
            for c in cs.iter_mut().filter(|c| c["type"] == "Ready") {
                c["status"] = json!("False");
            }
        }
    });
    let p = plan_of(&sandbox(objs)).await;
    let f = p
        .blockers
        .iter()
        .find(|f| f.code == "NODES_NOT_READY")
        .unwrap_or_else(|| panic!("{:?}", p.blockers));
    assert!(f.message.contains(&name));
    assert_eq!(p.inventory.nodes_not_ready, vec![name]);
}

#[tokio::test]
async fn a_cluster_without_calico_has_nothing_to_migrate() {
    let objs: Vec<Value> = objects(ChartGeneration::V0_3_10)
        .into_iter()
        .filter(|o| {
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            let api = o["apiVersion"].as_str().unwrap_or("");
            !name.contains("calico")
                && !api.contains("projectcalico")
                && o["type"] != "helm.sh/release.v1"
        })
        .collect();
    let p = plan_of(&sandbox(objs)).await;
    assert!(codes(&p).0.contains(&"NO_CALICO"), "{:?}", p.blockers);
    assert!(p.steps.is_empty());
    assert_eq!(p.source.chart, None);
}

#[tokio::test]
async fn missing_rbac_lists_the_verbs() {
    let mut objs = objects(ChartGeneration::V0_3_10);
    // A user RBAC lets read and create everything, but never delete or patch.
    objs.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "no-delete-no-patch"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"],
                   "verbs": ["get", "list", "watch", "create", "update"]}]}),
    );
    objs.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "no-delete-no-patch"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "no-delete-no-patch"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
    );
    let sb = sandbox(objs);
    let server = sb
        .serve("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("serve: {e}"));
    let mut cfg = kube::Config::new(server.url().parse().unwrap_or_else(|e| panic!("url: {e}")));
    cfg.auth_info.impersonate = Some("alice".into());
    let alice = kube::Client::try_from(cfg).unwrap_or_else(|e| panic!("client: {e}"));
    let p = plan_as(&alice).await;
    let f = p
        .blockers
        .iter()
        .find(|f| f.code == "RBAC_MISSING")
        .unwrap_or_else(|| panic!("{:?}", p.blockers));
    assert!(
        f.message.contains("delete daemonsets.apps in kube-system"),
        "{}",
        f.message
    );
    assert!(
        f.message.contains("patch nodes (cluster-wide)"),
        "{}",
        f.message
    );
    assert!(!f.message.contains("get daemonsets"), "{}", f.message);
    assert!(!p.warnings.iter().any(|f| f.code == "RBAC_UNVERIFIED"));
}

fn bin() -> Command {
    Command::cargo_bin("calico-migrate").unwrap_or_else(|e| panic!("{e}"))
}

/// `calico-migrate --kubeconfig KC --state-dir STATE plan`, bounded by `timeout`.
fn plan_through(
    kc: &std::path::Path,
    state: &std::path::Path,
    timeout: Duration,
) -> std::process::Output {
    bin()
        .env_remove("KUBECONFIG")
        .args([
            "--kubeconfig",
            &kc.to_string_lossy(),
            "--state-dir",
            &state.to_string_lossy(),
            "plan",
        ])
        .timeout(timeout)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_plans_through_a_kubeconfig_and_saves_the_plan() {
    let sb = sandbox(objects(ChartGeneration::V0_3_10));
    let handle = sb
        .serve("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kc = dir.path().join("kubeconfig");
    handle
        .write_kubeconfig(&kc)
        .unwrap_or_else(|e| panic!("{e}"));
    let manifest = dir.path().join("operator.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tigera-operator\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("state");
    let run = |fmt: &'static str| {
        let (kc, state, manifest) = (kc.clone(), state.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || {
            bin()
                .env_remove("KUBECONFIG")
                .args([
                    "--kubeconfig",
                    &kc.to_string_lossy(),
                    "--state-dir",
                    &state.to_string_lossy(),
                    "-o",
                    fmt,
                    "plan",
                    "--operator-manifest",
                    &manifest.to_string_lossy(),
                ])
                .timeout(Duration::from_secs(60))
                .output()
                .unwrap_or_else(|e| panic!("{e}"))
        })
    };
    let out = run("json").await.unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "blockers that steps fix exit 0; stderr: {stderr}"
    );
    let j: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(j["source"]["chart_version"], "0.3.10");
    assert_eq!(j["source"]["calico_version"], "v3.19.1");
    assert!(j["blockers"].as_array().is_some_and(|b| {
        b.iter()
            .any(|f| f["code"] == "CONVERTER_HELM_ANNOTATIONS" && f["fixed_by"] == "detach-helm")
    }));
    assert!(
        !j["blockers"]
            .as_array()
            .is_some_and(|b| b.iter().any(|f| f["code"] == "OPERATOR_MANIFEST_UNPINNED"))
    );
    let saved = plan::load(&state).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(saved.fingerprint, j["fingerprint"].as_str().unwrap_or(""));
    assert!(
        saved
            .facts
            .contains_key("daemonset/kube-system/calico-node")
    );
    assert!(
        std::fs::read_dir(&state)
            .map(|d| d.flatten().any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with("operator-manifest-")))
            .unwrap_or(false)
    );
    // Same cluster, same inputs: same fingerprint; markdown and text render.
    let md = run("markdown").await.unwrap_or_else(|e| panic!("{e}"));
    let md = String::from_utf8_lossy(&md.stdout).to_string();
    assert!(
        md.contains("# Calico migration plan") && md.contains("`CONVERTER_FARGATE_AFFINITY`"),
        "{md}"
    );
    let again = plan::load(&state).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.fingerprint, saved.fingerprint);
    let txt = run("text").await.unwrap_or_else(|e| panic!("{e}"));
    let txt = String::from_utf8_lossy(&txt.stdout).to_string();
    assert!(
        txt.contains("[detach-helm]") && txt.contains("chart aws-calico 0.3.10"),
        "{txt}"
    );
    // Without a pinned operator manifest the plan has a blocker no step fixes: exit 3.
    let (kc2, state2) = (kc.clone(), state.clone());
    let out =
        tokio::task::spawn_blocking(move || plan_through(&kc2, &state2, Duration::from_secs(60)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("[OPERATOR_MANIFEST_UNPINNED]") && stdout.contains("NOT ready to apply"),
        "{stdout}"
    );
    handle.shutdown().await;
}

#[test]
fn unreachable_api_server_fails_clearly_and_quickly() {
    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        calico_migrate::sandbox::serve::kubeconfig_for(&format!("http://127.0.0.1:{port}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let out = plan_through(&kc, &dir.path().join("s"), Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}"))
            && stderr.contains("the connection was refused"),
        "{stderr}"
    );
    assert_one_error_line(&stderr);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    // A wrong context names the file and the contexts it holds.
    let out = bin()
        .env_remove("KUBECONFIG")
        .args([
            "--kubeconfig",
            &kc.to_string_lossy(),
            "--context",
            "prod",
            "plan",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"prod\"")
            && stderr.contains("sandbox")
            && stderr.contains(&kc.display().to_string()),
        "{stderr}"
    );
}

async fn inventory_of(sb: &Sandbox) -> inventory::Inventory {
    let client = sb.client();
    inventory::read(&client, "v1.29.15-eks".into(), &RetryPolicy::default())
        .await
        .unwrap_or_else(|e| panic!("inventory: {e}"))
}

#[tokio::test]
async fn drift_names_what_changed_and_ignores_policy_edits() {
    let sb = sandbox(objects(ChartGeneration::V0_3_10));
    let profile = Profile::load(SAME_VERSION_PROFILE).unwrap_or_else(|e| panic!("{e}"));
    let inv = inventory_of(&sb).await;
    let saved = plan::SavedPlan {
        fingerprint: plan::fingerprint(&plan::fingerprint_facts(
            &inv,
            &profile,
            plan::Pins::default(),
        )),
        facts: plan::fingerprint_facts(&inv, &profile, plan::Pins::default()),
        cluster_uid: inv.cluster_uid.clone(),
        created_at: String::new(),
        plan: json!({}),
        profile: None,
    };
    assert!(!inv.cluster_uid.is_empty());
    assert_eq!(plan::check_drift(&saved, &inv, &profile), Ok(()));
    // A new NetworkPolicy is not drift (baseline snapshots policies at apply time).
    let ns = inv
        .reduced("network_policies")
        .first()
        .map_or("default", |p| &*p.namespace)
        .to_string();
    sb.load(vec![
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "late", "namespace": ns}, "spec": {"podSelector": {}}}),
    ])
    .unwrap_or_else(|e| panic!("{e:?}"));
    let later = inventory_of(&sb).await;
    assert_eq!(
        later.count("network_policies"),
        inv.count("network_policies") + 1
    );
    assert_eq!(plan::check_drift(&saved, &later, &profile), Ok(()));
    // Someone edits calico-node: apply must refuse and say what changed.
    let mut ds = later
        .find("daemonsets", "kube-system", "calico-node")
        .cloned()
        .unwrap_or_else(|| panic!("no ds"));
    ds["metadata"]["annotations"]["team"] = json!("edited");
    sb.load(vec![ds]).unwrap_or_else(|e| panic!("{e:?}"));
    let edited = inventory_of(&sb).await;
    match plan::check_drift(&saved, &edited, &profile) {
        Err(plan::DriftError::Changed { changed }) => {
            assert_eq!(
                changed,
                vec!["daemonset/kube-system/calico-node".to_string()]
            )
        }
        other => panic!("expected drift, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_inventory_is_complete_through_api_errors() {
    // 260 user namespaces give more NetworkPolicies (and namespaces) than one 500-item page.
    let objs = scenario::build(&ScenarioConfig {
        nodes: 3,
        namespaces: 260,
        pods_per_namespace: 1,
        ..ScenarioConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let nps = objs
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy" && o["apiVersion"] == "networking.k8s.io/v1")
        .count();
    let namespaces = objs.iter().filter(|o| o["kind"] == "Namespace").count();
    assert!(nps > 500, "{nps}");
    let sb = sandbox(objs);
    let set = |spec: &str| {
        let f = calico_migrate::sandbox::apiserver::faults::FaultConfig::parse_specs(&[
            spec.to_string()
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        sb.set_faults(&f).unwrap_or_else(|e| panic!("{e:?}"));
    };
    // The fault settings live in a sandbox namespace: create it before the clean read.
    set("api-errors:0");
    let clean = plan_of(&sb).await;
    assert_eq!(clean.inventory.network_policies, nps);
    assert!(clean.inventory.namespaces >= namespaces);
    set("api-errors:0.1");
    let p = plan_of(&sb).await;
    assert_eq!(p.inventory.network_policies, nps);
    assert_eq!(p.inventory.namespaces, clean.inventory.namespaces);
    assert_eq!(p.fingerprint, clean.fingerprint);
    assert_eq!(p.source.chart_version.as_deref(), Some("0.3.10"));
}

#[tokio::test]
async fn nodes_left_labelled_by_an_earlier_attempt_are_a_blocker() {
    let mut objs = objects(ChartGeneration::V0_3_10);
    let name = objs
        .iter()
        .find(|o| o["kind"] == "Node")
        .and_then(|n| n["metadata"]["name"].as_str())
        .unwrap_or_else(|| panic!("no node"))
        .to_string();
    mutate(&mut objs, "Node", &name, |n| {
        n["metadata"]["labels"]["projectcalico.org/operator-node-migration"] =
            json!("pre-operator");
    });
    let p = plan_of(&sandbox(objs)).await;
    let f = p
        .blockers
        .iter()
        .find(|f| f.code == "OPERATOR_PRESENT")
        .unwrap_or_else(|| panic!("{:?}", p.blockers));
    assert!(f.message.contains(&name), "{}", f.message);
}

#[test]
fn a_server_that_never_answers_fails_within_the_bound() {
    // Accepts TCP connections (kernel backlog) but never answers HTTP.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        calico_migrate::sandbox::serve::kubeconfig_for(&format!("http://127.0.0.1:{port}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let out = plan_through(&kc, &dir.path().join("s"), Duration::from_secs(40));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no answer within 10 s"), "{stderr}");
    assert_one_error_line(&stderr);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    drop(listener);
}

/// A connection failure reads as one sentence on one line: no second copy, no
/// client library's own error log, no Debug dump.
fn assert_one_error_line(stderr: &str) {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with("error: cannot reach the API server"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Connect)") && !stderr.contains("{ "),
        "{stderr}"
    );
}

async fn plan_with(sb: &Sandbox, profile: &Profile) -> Plan {
    let client = sb.client();
    let retry = RetryPolicy::default();
    let inv = inventory::read(&client, "v1.24.17-eks".into(), &retry)
        .await
        .unwrap_or_else(|e| panic!("inventory: {e}"));
    let acc = access::AccessReport::Checked { missing: vec![] };
    plan::build(
        &inv,
        profile,
        &acc,
        plan::Pins {
            operator: Some(&"ab".repeat(32)),
            // A stand-in pin for profiles that align (the rules only look for one).
            calico: profile
                .calico_manifest
                .as_ref()
                .map(|_| "cd".repeat(32))
                .as_deref(),
            adopt_into: None,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn calico_version_mismatch_blocks_unless_the_profile_aligns() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/aws-calico-0.3.10-v3.19.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let to_3_20 = text.replace(
        "  calico_version: v3.19.1\n  operator_version: v1.17.4",
        "  calico_version: v3.20.0\n  operator_version: v1.20.0",
    );
    assert_ne!(to_3_20, text, "profile layout changed");
    let strict = Profile::parse(&to_3_20, "t").unwrap_or_else(|e| panic!("{e}"));
    let aligning = Profile::parse(
        &with_calico_manifest(&to_3_20.replace("align_versions: false", "align_versions: true")),
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sb = sandbox(objects(ChartGeneration::V0_3_10));
    let p = plan_with(&sb, &strict).await;
    assert!(
        codes(&p).0.contains(&"CALICO_VERSION_MISMATCH"),
        "{:?}",
        p.blockers
    );
    assert!(!p.steps.iter().any(|s| s.id == "align-versions"));
    let p = plan_with(&sb, &aligning).await;
    assert!(!codes(&p).0.contains(&"CALICO_VERSION_MISMATCH"));
    let w = p
        .warnings
        .iter()
        .find(|f| f.code == "CALICO_VERSION_ALIGN")
        .unwrap_or_else(|| panic!("{:?}", p.warnings));
    assert_eq!(w.fixed_by, Some("align-versions"));
    let ids: Vec<&str> = p.steps.iter().map(|s| s.id).collect();
    assert_eq!(&ids[..3], ["baseline", "align-versions", "detach-helm"]);
    assert!(p.ready(), "{:?}", p.blockers);
    // The shipped profile keeps the running v3.19 line: no version finding at all.
    let p = plan_with(
        &sb,
        &Profile::load(SAME_VERSION_PROFILE).unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    assert!(
        !p.blockers
            .iter()
            .chain(&p.warnings)
            .any(|f| f.code.starts_with("CALICO_VERSION"))
    );
}

/// The shipped profile with its target operator replaced by `operator` (calico line
/// aligned, so no version finding gets in the way).
fn profile_for_operator(operator: &str, calico: &str) -> Profile {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plans/aws-calico-0.3.10-v3.19.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let edited = text
        .replace(
            "  calico_version: v3.19.1\n  operator_version: v1.17.4",
            &format!("  calico_version: {calico}\n  operator_version: {operator}"),
        )
        .replace("align_versions: false", "align_versions: true");
    assert_ne!(edited, text, "profile layout changed");
    Profile::parse(&with_calico_manifest(&edited), "t").unwrap_or_else(|e| panic!("{e}"))
}

/// A profile text with a `calico_manifest` (which `align_versions: true` requires).
fn with_calico_manifest(profile: &str) -> String {
    profile.replace(
        "\noperator:\n",
        "\ncalico_manifest:\n  manifest_url: https://example.invalid/calico.yaml\noperator:\n",
    )
}

/// No tigera/operator release accepts the chart's Fargate exclusion on the migration path:
/// core.go's EKS exception (v1.25.0 on) needs the Installation's provider, and `Convert`
/// checks an empty Installation (v1.38.6 convert.go:58). So every line plans the
/// fargate-affinity step (which keeps kube-system calico-node off Fargate by its taint).
/// Fargate nodes block only operators before v1.25.0, whose calico-system calico-node
/// has no Fargate exclusion and would wait on the Fargate nodes they label.
#[tokio::test]
async fn the_fargate_exclusion_is_refused_on_every_line_and_fargate_nodes_block_old_ones() {
    let sb = sandbox(objects(ChartGeneration::V0_3_10));
    let old_profile = Profile::load(SAME_VERSION_PROFILE).unwrap_or_else(|e| panic!("{e}"));
    let current_profile = profile_for_operator("v1.38.6", "v3.30.3");
    for profile in [&current_profile, &old_profile] {
        let p = plan_with(&sb, profile).await;
        let (blockers, _) = codes(&p);
        let f = p
            .blockers
            .iter()
            .find(|f| f.code == "CONVERTER_FARGATE_AFFINITY")
            .unwrap_or_else(|| panic!("{blockers:?}"));
        assert_eq!(f.fixed_by, Some("fargate-affinity"), "{f:?}");
        assert!(
            f.message.contains(&format!(
                "tigera/operator {} pkg/controller/migration/convert/core.go:",
                profile.target.operator_version
            )),
            "{f:?}"
        );
        assert!(
            p.steps.iter().any(|s| s.id == "fargate-affinity"),
            "{:?}",
            p.steps.iter().map(|s| s.id).collect::<Vec<_>>()
        );
        assert!(
            !blockers.contains(&"FARGATE_NODES_UNSUPPORTED"),
            "{blockers:?}"
        );
    }

    // One Fargate node, as EKS registers it.
    let mut objs = objects(ChartGeneration::V0_3_10);
    objs.push(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "fargate-ip-10-0-9-9.ec2.internal",
                     "labels": {"eks.amazonaws.com/compute-type": "fargate"}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    let sb = sandbox(objs);
    let current = plan_with(&sb, &current_profile).await;
    let (blockers, warnings) = codes(&current);
    assert!(
        !blockers.contains(&"FARGATE_NODES_UNSUPPORTED"),
        "{blockers:?}"
    );
    assert!(warnings.contains(&"FARGATE_NODES"), "{warnings:?}");
    let takeover_prep = current
        .steps
        .iter()
        .find(|s| s.id == "fargate-affinity")
        .map(|s| format!("{:?}", s.changes))
        .unwrap_or_default();
    assert!(takeover_prep.contains("tolerations"), "{takeover_prep}");
    for profile in [&old_profile] {
        let p = plan_with(&sb, profile).await;
        let blocker = p
            .blockers
            .iter()
            .find(|f| f.code == "FARGATE_NODES_UNSUPPORTED")
            .unwrap_or_else(|| panic!("{:?}", p.blockers));
        assert!(
            blocker.message.contains("fargate-ip-10-0-9-9.ec2.internal")
                && blocker.message.contains("namespace_migration.go"),
            "{blocker:?}"
        );
        assert!(blocker.fix.contains("v1.25.0"), "{blocker:?}");
        assert!(!p.ready());
        assert!(!codes(&p).1.contains(&"FARGATE_NODES"));
    }
}

/// The converter's refusals beyond the chart's known two, each a blocker citing the
/// upstream lines at the target's tag, with advice; the chart's own env passes.
#[tokio::test]
async fn every_converter_refusal_found_is_a_blocker_citing_upstream() {
    let mut objs = objects(ChartGeneration::V0_3_10);
    mutate(&mut objs, "DaemonSet", "calico-node", |ds| {
        let env = &mut ds["spec"]["template"]["spec"]["containers"][0]["env"];
        match env.as_array_mut() {
            Some(env) => {
                env.retain(|e| {
                    !["NODENAME", "IP", "NO_DEFAULT_POOLS"]
                        .contains(&e["name"].as_str().unwrap_or(""))
                });
                env.extend([
                    json!({"name": "NODENAME", "value": "ip-10-0-0-1"}),
                    json!({"name": "IP", "value": "autodetect"}),
                    json!({"name": "IP_AUTODETECTION_METHOD", "value": "interface=eth0"}),
                    json!({"name": "FELIX_IPTABLESREFRESHINTERVAL", "value": "90"}),
                    json!({"name": "FELIX_VXLANMTU", "value": "jumbo"}),
                    // Read (not only consumed by name): its source is checked.
                    json!({"name": "NO_DEFAULT_POOLS", "valueFrom":
                        {"configMapKeyRef": {"name": "calico-config", "key": "pools"}}}),
                ]);
            }
            None => panic!("calico-node has env"),
        }
    });
    let p = plan_of(&sandbox(objs)).await;
    let (blockers, _) = codes(&p);
    for code in [
        "CONVERTER_NODENAME",
        "CONVERTER_ENV_VALUE",
        "CONVERTER_UNEXPECTED_ENV",
        "CONVERTER_FELIX_ENV",
        "CONVERTER_MTU",
        "CONVERTER_ENV_CONFIGMAP",
    ] {
        let f = p
            .blockers
            .iter()
            .find(|f| f.code == code)
            .unwrap_or_else(|| panic!("{code} in {blockers:?}"));
        assert!(
            f.message
                .contains("tigera/operator v1.17.4 pkg/controller/migration/convert/"),
            "{f:?}"
        );
        assert!(f.fixed_by.is_none() && !f.fix.is_empty(), "{f:?}");
    }
    let unexpected = p
        .blockers
        .iter()
        .find(|f| f.code == "CONVERTER_UNEXPECTED_ENV")
        .map(|f| f.message.as_str())
        .unwrap_or_default();
    assert!(
        unexpected.contains("calico-node/IP_AUTODETECTION_METHOD")
            && unexpected.contains("convert.go:56-63"),
        "{unexpected}"
    );
    let felix = p
        .blockers
        .iter()
        .find(|f| f.code == "CONVERTER_FELIX_ENV")
        .map(|f| f.message.as_str())
        .unwrap_or_default();
    assert!(
        felix.contains("time: missing unit in duration \"90\""),
        "{felix}"
    );
    assert!(!p.ready());
}

/// Operators before v1.35.0 end the takeover by restarting every calico-node at once
/// (tigera/operator PR 3157): plan warns for them, with the reference, and the takeover
/// step says it follows that restart; v1.38.6 does not do it.
#[tokio::test]
async fn the_all_at_once_restart_of_old_operator_lines_is_predicted() {
    let sb = sandbox(objects(ChartGeneration::V0_3_10));
    for (profile, restarts) in [
        (
            Profile::load(SAME_VERSION_PROFILE).unwrap_or_else(|e| panic!("{e}")),
            true,
        ),
        (profile_for_operator("v1.20.4", "v3.20.2"), true),
        (profile_for_operator("v1.38.6", "v3.30.3"), false),
    ] {
        let p = plan_with(&sb, &profile).await;
        let v = &profile.target.operator_version;
        let warning = p
            .warnings
            .iter()
            .find(|f| f.code == "END_OF_MIGRATION_RESTART");
        let takeover = p
            .steps
            .iter()
            .find(|s| s.id == "takeover")
            .map(|s| s.checks.after.join("\n"))
            .unwrap_or_default();
        if restarts {
            let w = warning.unwrap_or_else(|| panic!("{v}: {:?}", codes(&p)));
            assert!(
                w.message.contains(v.as_str()) && w.message.contains("PR 3157"),
                "{w:?}"
            );
            assert!(takeover.contains("at once at the end"), "{v}: {takeover}");
        } else {
            assert!(warning.is_none(), "{v}: {warning:?}");
            assert!(!takeover.contains("at once"), "{v}: {takeover}");
        }
    }
}

#[tokio::test]
async fn canal_is_refused_like_the_converter_does() {
    let mut objs = objects(ChartGeneration::V0_3_10);
    objs.push(json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "canal-node", "namespace": "kube-system"},
        "spec": {"selector": {"matchLabels": {"k8s-app": "canal"}},
                 "template": {"metadata": {"labels": {"k8s-app": "canal"}},
                              "spec": {"containers": [{"name": "calico-node", "image": "calico/node:v3.19.1"}]}}}}));
    let p = plan_of(&sandbox(objs)).await;
    assert!(codes(&p).0.contains(&"CONVERTER_CANAL"), "{:?}", p.blockers);
    assert!(!p.ready());
}

#[tokio::test]
async fn unready_calico_node_pods_are_named_with_their_node() {
    let mut objs = objects(ChartGeneration::V0_3_10);
    let pod = objs
        .iter()
        .find(|o| {
            o["kind"] == "Pod" && o["metadata"]["labels"]["app.kubernetes.io/name"] == "calico-node"
        })
        .cloned()
        .unwrap_or_else(|| panic!("no calico-node pod"));
    let (name, node) = (
        pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
        pod["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
    );
    mutate(&mut objs, "Pod", &name, |p| {
        if let Some(cs) = p["status"]["conditions"].as_array_mut() {
            for c in cs.iter_mut().filter(|c| c["type"] == "Ready") {
                c["status"] = json!("False");
            }
        }
    });
    let p = plan_of(&sandbox(objs)).await;
    let f = p
        .blockers
        .iter()
        .find(|f| f.code == "CALICO_NODE_NOT_READY")
        .unwrap_or_else(|| panic!("{:?}", p.blockers));
    assert!(
        f.message.contains(&format!("{name} on {node}")),
        "{}",
        f.message
    );
}

use crate::support::real;

/// The sandbox served over HTTP with a kubeconfig for the binary.
struct Served {
    sb: Sandbox,
    handle: calico_migrate::sandbox::serve::ServeHandle,
    dir: tempfile::TempDir,
}

impl Served {
    async fn new() -> Served {
        Served::at(KubernetesVersion::default()).await
    }

    async fn at(kv: KubernetesVersion) -> Served {
        let sb = sandbox_at(objects(ChartGeneration::V0_3_10), kv);
        let handle = sb
            .serve("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        handle
            .write_kubeconfig(&dir.path().join("kubeconfig"))
            .unwrap_or_else(|e| panic!("{e}"));
        Served { sb, handle, dir }
    }

    /// `calico-migrate -o FMT --state-dir STATE plan --operator-manifest MANIFEST
    /// --calico-manifest <the real v3.30.3 policy-only manifest>` (the current path's
    /// second file; the same-version path ignores it).
    async fn plan(
        &self,
        state: &str,
        fmt: &str,
        manifest: &std::path::Path,
    ) -> std::process::Output {
        let kc = self.dir.path().join("kubeconfig");
        let state = self.dir.path().join(state);
        let (fmt, manifest) = (fmt.to_string(), manifest.to_path_buf());
        tokio::task::spawn_blocking(move || {
            bin()
                .env_remove("KUBECONFIG")
                .arg("--kubeconfig")
                .arg(&kc)
                .arg("--state-dir")
                .arg(&state)
                .args(["-o", &fmt, "plan", "--operator-manifest"])
                .arg(&manifest)
                .arg("--calico-manifest")
                .arg(real("calico-v3.30.3-policy-only.yaml"))
                .timeout(Duration::from_secs(120))
                .output()
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every write bumps the store's resourceVersion: equal means nothing was written.
    fn written(&self) -> u64 {
        self.sb.store().resource_version()
    }
}

fn blockers_of(out: &std::process::Output) -> Vec<Value> {
    let j: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    j["blockers"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_v3_19_1_operator_manifest_is_a_blocker_on_kubernetes_1_33() {
    let manifest = real("calico-v3.19.1-tigera-operator.rendered.yaml");
    let s = Served::at(k8s_1_33()).await;
    let (rv, before) = (
        s.written(),
        calico_migrate::sandbox::snapshot::snapshot(&s.sb),
    );
    let out = s.plan("state", "json", &manifest).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let blockers = blockers_of(&out);
    let unfixed: Vec<&Value> = blockers
        .iter()
        .filter(|b| b["fixed_by"].is_null())
        .collect();
    // Two blockers no step fixes: the API the cluster does not serve, and the manifest's
    // operator (v1.17.4) is not the one of the profile picked for 1.33 (v1.38.6).
    let codes: Vec<&str> = unfixed.iter().filter_map(|b| b["code"].as_str()).collect();
    assert_eq!(
        codes,
        [
            "OPERATOR_MANIFEST_VERSION_MISMATCH",
            "OPERATOR_MANIFEST_API_NOT_SERVED"
        ],
        "{unfixed:?}"
    );
    let mismatch = unfixed[0]["message"].as_str().unwrap_or("");
    assert!(
        mismatch.contains("installs operator v1.17.4 (document 24 (line 4877), Deployment tigera-operator/tigera-operator)")
            && mismatch.contains("written for operator v1.38.6"),
        "{mismatch}"
    );
    assert!(
        unfixed[0]["fix"]
            .as_str()
            .unwrap_or("")
            .contains("the built-in profile aws-calico-0.3.10-v3.19"),
        "{unfixed:?}"
    );
    let b = unfixed[1];
    let message = b["message"].as_str().unwrap_or("");
    // The PSP is the 20th document of the file (18 CRDs, Namespace, then it).
    for want in [
        manifest.to_string_lossy().as_ref(),
        "document 20 (line 4633), PodSecurityPolicy tigera-operator (policy/v1beta1, no longer served since Kubernetes 1.25)",
        "Kubernetes v1.33",
    ] {
        assert!(message.contains(want), "{want:?} not in {message}");
    }
    let fix = b["fix"].as_str().unwrap_or("");
    assert!(
        fix.contains("supports Kubernetes 1.33") && fix.contains("v3.30.3"),
        "{fix}"
    );
    assert_eq!(s.written(), rv, "plan wrote to the cluster");
    assert_eq!(
        calico_migrate::sandbox::snapshot::snapshot(&s.sb).ok(),
        before.ok()
    );
    // Text output names it too, and the saved plan keeps it for apply to refuse.
    let out = s.plan("state", "text", &manifest).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[OPERATOR_MANIFEST_API_NOT_SERVED]")
            && stdout.contains("NOT ready to apply"),
        "{stdout}"
    );
    let saved = plan::load(&s.dir.path().join("state")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        calico_migrate::migration::session::unresolved_blockers(&saved.plan)
            .iter()
            .any(|b| b.starts_with("OPERATOR_MANIFEST_API_NOT_SERVED")),
        "{:?}",
        saved.plan["blockers"]
    );
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_v3_30_3_operator_manifest_is_served_on_kubernetes_1_33() {
    let manifest = real("calico-v3.30.3-operator-crds-and-operator.yaml");
    let s = Served::new().await;
    let rv = s.written();
    let out = s.plan("state", "json", &manifest).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let blockers = blockers_of(&out);
    assert!(
        !blockers
            .iter()
            .any(|b| b["code"] == "OPERATOR_MANIFEST_API_NOT_SERVED"),
        "{blockers:?}"
    );
    assert_eq!(s.written(), rv, "plan wrote to the cluster");
    // Its objects are what the install-operator step reads from the state dir.
    let objects = calico_migrate::migration::manifest::read_manifest(
        "m",
        &std::fs::read(&manifest).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(objects.len(), 39);
    assert_eq!(
        objects
            .iter()
            .filter(|o| o.r.kind == "CustomResourceDefinition")
            .count(),
        32
    );
    s.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_operator_manifests_exit_2_naming_the_file_the_document_and_the_object() {
    let s = Served::new().await;
    let rv = s.written();
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tigera-operator\n";
    let real_text = std::fs::read_to_string(real("calico-v3.19.1-tigera-operator.rendered.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    // Cut inside the 8th document (a CRD's schema), mid-line and at a line end.
    let cut = 100_000;
    let at_line = &real_text[..=real_text[..cut].rfind('\n').unwrap_or(0)];
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "duplicate-keys.yaml",
            format!(
                "{ns}---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: tigera-operator\n  namespace: tigera-operator\n  name: operator\n"
            ),
            vec![
                "document 2 (line 5), apparently ServiceAccount tigera-operator/tigera-operator (v1)",
                "duplicate mapping key `name`",
                "line 11, column 3",
            ],
        ),
        (
            "unknown-kind.yaml",
            format!(
                "{ns}---\napiVersion: apps/v1\nkind: Deploymnet\nmetadata:\n  name: tigera-operator\n  namespace: tigera-operator\n"
            ),
            vec![
                "document 2 (line 5), Deploymnet tigera-operator/tigera-operator (apps/v1)",
                "apps/v1 has no kind Deploymnet",
            ],
        ),
        (
            "truncated-mid-line.yaml",
            real_text[..cut].to_string(),
            vec![
                "ends in the middle of a line, in document 8 (line 1771), ",
                "CustomResourceDefinition hostendpoints.crd.projectcalico.org (apiextensions.k8s.io/v1)",
                "truncated",
            ],
        ),
        (
            "truncated-at-a-line.yaml",
            at_line.to_string(),
            vec![
                "document 8 (line 1771), ",
                "CustomResourceDefinition hostendpoints.crd.projectcalico.org (apiextensions.k8s.io/v1)",
                "lacks spec.versions[0].served, spec.versions[0].storage",
            ],
        ),
    ];
    for (name, text, wants) in cases {
        let path = s.dir.path().join(name);
        std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        let state = format!("state-{name}");
        let out = s.plan(&state, "text", &path).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{name}: one error line: {stderr}");
        assert!(
            errors[0].starts_with(&format!("error: {}", path.display())),
            "{name}: the file first: {stderr}"
        );
        for want in wants {
            assert!(errors[0].contains(want), "{name}: {want:?} not in {stderr}");
        }
        assert!(
            !stderr.contains("Status {") && !stderr.contains("Error {"),
            "{stderr}"
        );
        let kept: Vec<String> = std::fs::read_dir(s.dir.path().join(&state))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|f| f == "plan.json" || f.starts_with("operator-manifest-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(kept.is_empty(), "{name}: nothing saved: {kept:?}");
    }
    assert_eq!(s.written(), rv, "plan wrote to the cluster");
    s.handle.shutdown().await;
}

#[tokio::test]
async fn api_errors_read_as_one_sentence_with_the_answer_and_what_to_do() {
    use calico_migrate::cluster::objects::Objects;
    // Kubernetes 1.25 or later: PodSecurityPolicies are no longer served.
    let sb = sandbox_at(objects(ChartGeneration::V0_3_10), k8s_1_33());
    let objs = Objects::new(sb.client(), RetryPolicy::default());
    let psp = json!({"apiVersion": "policy/v1beta1", "kind": "PodSecurityPolicy",
        "metadata": {"name": "calico-node"}, "spec": {"privileged": true}});
    let bad_name =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Bad_Name"}});
    let cases = [
        (
            objs.apply(&psp).await.err(),
            "applying PodSecurityPolicy calico-node (policy/v1beta1): the API server answered \
             404 Not Found (the server could not find the requested resource) when asked for \
             policy/v1beta1: the cluster does not serve that API; install the CRD that defines \
             PodSecurityPolicy, or use an apiVersion this cluster serves",
        ),
        (
            objs.create(&bad_name).await.err(),
            "creating Namespace Bad_Name (v1): the API server answered 422 Unprocessable Entity, \
             reason Invalid (",
        ),
    ];
    for (e, want) in cases {
        let e = e.unwrap_or_else(|| panic!("no error for {want}"));
        let text = e.to_string();
        assert!(text.starts_with(want), "{text}");
        assert!(
            !text.contains("Status {") && !text.contains("ApiError") && !text.contains("Some("),
            "no Debug dump: {text}"
        );
        // Nothing printed twice: no source to be chained after the sentence.
        assert!(std::error::Error::source(&e).is_none(), "{text}");
        assert_eq!(format!("{:#}", anyhow::Error::new(e)), text);
    }
}

#[tokio::test]
async fn install_operator_refuses_an_unserved_api_before_writing_anything() {
    use calico_migrate::cluster::objects::Objects;
    use calico_migrate::engine::Step;
    use calico_migrate::migration::manifest::read_manifest;
    use calico_migrate::migration::steps::install_operator::InstallOperator;
    use calico_migrate::migration::world::{ApplyOptions, World};
    let path = real("calico-v3.19.1-tigera-operator.rendered.yaml");
    let manifest = read_manifest("m", &std::fs::read(&path).unwrap_or_else(|e| panic!("{e}")))
        .unwrap_or_else(|e| panic!("{e}"));
    let sb = sandbox_at(objects(ChartGeneration::V0_3_10), k8s_1_33());
    let profile = Profile::load(SAME_VERSION_PROFILE).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let world = World::new(
        Objects::new(sb.client(), RetryPolicy::default()),
        profile.clone(),
        json!({}),
        dir.path(),
        calico_migrate::migration::world::Manifests {
            operator: manifest.into_iter().map(|o| o.obj).collect(),
            calico: Vec::new(),
        },
        ApplyOptions::from_profile(&profile),
    );
    let rv = sb.store().resource_version();
    let err = InstallOperator
        .ensure(&world)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_else(|| panic!("applied a manifest with a PodSecurityPolicy on 1.33"));
    assert!(
        err.starts_with(
            "the pinned operator manifest holds 1 object(s) of APIs this cluster (Kubernetes v1.33"
        ) && err.contains("PodSecurityPolicy tigera-operator (policy/v1beta1"),
        "{err}"
    );
    assert_eq!(sb.store().resource_version(), rv, "nothing written");
}

/// A scenario where `alice` may read everything but networking.k8s.io.
fn alice_without_networkpolicies() -> Vec<Value> {
    let mut objs = objects(ChartGeneration::V0_3_10);
    objs.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "read-but-networking"},
        "rules": [{"apiGroups": ["", "apps", "policy", "apiextensions.k8s.io",
                                 "crd.projectcalico.org", "operator.tigera.io",
                                 "authorization.k8s.io"],
                   "resources": ["*"], "verbs": ["get", "list", "watch", "create"]}]}),
    );
    objs.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "read-but-networking"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "read-but-networking"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
    );
    objs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_read_the_api_server_refuses_reads_as_one_sentence() {
    let sb = sandbox(alice_without_networkpolicies());
    let server = sb
        .serve("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("serve: {e}"));
    // In process: the error itself, as the CLI chains it.
    let mut cfg = kube::Config::new(server.url().parse().unwrap_or_else(|e| panic!("url: {e}")));
    cfg.auth_info.impersonate = Some("alice".into());
    let alice = kube::Client::try_from(cfg).unwrap_or_else(|e| panic!("client: {e}"));
    let err = inventory::read(&alice, "v1.29.15-eks".into(), &RetryPolicy::default())
        .await
        .err()
        .unwrap_or_else(|| panic!("alice read NetworkPolicies"));
    assert_networkpolicies_list_forbidden(err);
    // Through the binary: the whole output path, `error: ` and every source.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kc = dir.path().join("kubeconfig");
    let config = server
        .kubeconfig()
        .replace("  user: {}", "  user:\n    as: alice");
    assert!(config.contains("as: alice"), "{config}");
    std::fs::write(&kc, config).unwrap_or_else(|e| panic!("{e}"));
    let out = tokio::task::spawn_blocking(move || {
        plan_through(&kc, &dir.path().join("s"), Duration::from_secs(60))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains(
            ": listing NetworkPolicies (networking.k8s.io/v1) in all namespaces: the API \
             server answered 403 Forbidden ("
        ),
        "{stderr}"
    );
    println!("{line}");
    assert_one_api_sentence(line);
    assert_eq!(stderr.matches("403").count(), 1, "{stderr}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_inventory_read_through_server_errors_reads_as_one_sentence() {
    let sb = sandbox(objects(ChartGeneration::V0_3_10));
    let f = calico_migrate::sandbox::apiserver::faults::FaultConfig::parse_specs(&[
        "api-errors:1".into()
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    sb.set_faults(&f).unwrap_or_else(|e| panic!("{e:?}"));
    let quick = RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        deadline: Duration::from_millis(30),
    };
    let err = inventory::read(&sb.client(), "v1.29.15-eks".into(), &quick)
        .await
        .err()
        .unwrap_or_else(|| panic!("read through api-errors:1"));
    assert!(std::error::Error::source(&err).is_none(), "{err}");
    let text = format!("{:#}", anyhow::Error::new(err));
    assert!(
        text.starts_with("listing ") && text.contains(": the API server answered "),
        "{text}"
    );
    assert!(
        [
            "429 Too Many Requests",
            "500 Internal Server Error",
            "503 Service Unavailable"
        ]
        .iter()
        .any(|a| text.contains(a)),
        "{text}"
    );
    assert!(
        text.ends_with("wait until it recovers and run the command again"),
        "{text}"
    );
    assert_one_api_sentence(&text);
}
