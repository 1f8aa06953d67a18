//! The seed scenario: determinism, counts, validity, the Helm release record,
//! and that the sandbox accepts every object.

use std::collections::BTreeSet;

use calico_migrate::helm;
use calico_migrate::sandbox::scenario::{
    self, ChartGeneration, ScenarioConfig, is_dns1123_label, is_dns1123_subdomain,
};
use calico_migrate::sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};

fn cfg(nodes: usize, namespaces: usize, pods: usize, seed: u64) -> ScenarioConfig {
    ScenarioConfig {
        nodes,
        namespaces,
        pods_per_namespace: pods,
        seed,
        ..ScenarioConfig::default()
    }
}

fn built(c: &ScenarioConfig) -> Vec<Value> {
    match scenario::build(c) {
        Ok(v) => v,
        Err(e) => panic!("build failed: {e}"),
    }
}

fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, ns: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && o["metadata"]["namespace"].as_str().unwrap_or("") == ns
        })
        .unwrap_or_else(|| panic!("{kind} {ns}/{name} missing"))
}

#[test]
fn same_seed_same_json_other_seed_other_placement() {
    let a = serde_json::to_string(&built(&cfg(7, 9, 3, 42))).unwrap_or_default();
    let b = serde_json::to_string(&built(&cfg(7, 9, 3, 42))).unwrap_or_default();
    let c = serde_json::to_string(&built(&cfg(7, 9, 3, 43))).unwrap_or_default();
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn counts_and_status_are_consistent() {
    let objs = built(&cfg(12, 10, 4, 1));
    assert_eq!(of_kind(&objs, "Node").len(), 12);
    let ds = find(&objs, "DaemonSet", "kube-system", "calico-node");
    assert_eq!(ds["status"]["numberReady"], 12);
    let calico_pods: Vec<_> = of_kind(&objs, "Pod")
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == "calico-node")
        .collect();
    assert_eq!(calico_pods.len(), 12);
    let on_nodes: BTreeSet<_> = calico_pods
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str())
        .collect();
    assert_eq!(on_nodes.len(), 12, "one calico-node per node");
    for p in &calico_pods {
        assert_eq!(p["spec"]["hostNetwork"], true);
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["uid"],
            ds["metadata"]["uid"]
        );
        assert_eq!(p["metadata"]["labels"]["pod-template-generation"], "1");
        assert!(p["metadata"]["labels"]["controller-revision-hash"].is_string());
        assert_eq!(p["status"]["phase"], "Running");
        let term = &p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0];
        assert_eq!(term["matchFields"][0]["values"][0], p["spec"]["nodeName"]);
        assert_eq!(
            term["matchExpressions"][0]["key"],
            "eks.amazonaws.com/compute-type"
        );
        assert_eq!(p["spec"]["priority"], 2_000_001_000);
    }
    // 12 nodes -> ladder step (10, 2).
    let typha = find(&objs, "Deployment", "kube-system", "calico-typha");
    assert_eq!(typha["spec"]["replicas"], 2);
    assert_eq!(typha["status"]["readyReplicas"], 2);
    let typha_pods = of_kind(&objs, "Pod")
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == "calico-typha")
        .count();
    assert_eq!(typha_pods, 2);
    // User namespaces: 2 or 3 policies, 4 pods each, IPs unique.
    let nps = of_kind(&objs, "NetworkPolicy");
    assert_eq!(nps.len(), 10 * 2 + 4);
    let user_pods: Vec<_> = of_kind(&objs, "Pod")
        .into_iter()
        .filter(|p| {
            p["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .starts_with("team-")
        })
        .collect();
    assert_eq!(user_pods.len(), 40);
    let ips: BTreeSet<_> = of_kind(&objs, "Pod")
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .map(|p| p["status"]["podIP"].as_str().unwrap_or("").to_string())
        .collect();
    let non_host = of_kind(&objs, "Pod")
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .count();
    assert_eq!(ips.len(), non_host, "pod IPs are unique");
    for n in of_kind(&objs, "Node") {
        assert!(n["spec"].get("podCIDR").is_none());
        assert!(
            n["metadata"]["labels"]
                .get("eks.amazonaws.com/compute-type")
                .is_none()
        );
        assert!(
            n["status"]["nodeInfo"]["kubeletVersion"]
                .as_str()
                .unwrap_or("")
                .starts_with("v1.29.")
        );
        assert_eq!(n["status"]["conditions"][3]["type"], "Ready");
        assert_eq!(n["status"]["conditions"][3]["status"], "True");
    }
}

#[test]
fn every_object_is_well_formed() {
    for generation in [ChartGeneration::V0_3_10, ChartGeneration::V0_3_11] {
        let c = ScenarioConfig {
            chart: generation,
            ..cfg(4, 5, 2, 3)
        };
        let objs = scenario::build(&c).unwrap_or_default();
        assert!(objs.len() > 50);
        let mut seen = BTreeSet::new();
        for o in &objs {
            let kind = o["kind"].as_str().unwrap_or("");
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            assert!(o["apiVersion"].is_string() && !kind.is_empty(), "{o}");
            assert!(is_dns1123_subdomain(name), "{kind} name {name:?}");
            let ns = o["metadata"]["namespace"].as_str();
            if helm::is_cluster_scoped(kind) {
                assert!(ns.is_none(), "{kind} {name} is cluster-scoped");
            } else {
                assert!(
                    ns.is_some_and(is_dns1123_label),
                    "{kind} {name} needs a namespace"
                );
            }
            assert!(
                seen.insert((
                    o["apiVersion"].to_string(),
                    kind.to_string(),
                    ns.map(String::from),
                    name.to_string()
                )),
                "duplicate {kind} {name}"
            );
        }
        // The sandbox accepts the whole scenario in this order.
        let sb = Sandbox::new(SandboxOptions::default());
        assert_eq!(
            sb.load(objs.clone()).map_err(|e| e.to_string()),
            Ok(objs.len())
        );
    }
}

#[test]
fn helm_manifest_lists_exactly_the_live_chart_objects() {
    let objs = built(&cfg(3, 2, 1, 1));
    let secret = find(
        &objs,
        "Secret",
        "kube-system",
        "sh.helm.release.v1.aws-calico.v1",
    );
    assert_eq!(secret["type"], "helm.sh/release.v1");
    assert_eq!(secret["metadata"]["labels"]["owner"], "helm");
    assert_eq!(secret["metadata"]["labels"]["createdAt"], "1709542800");
    let rel = helm::decode_release_secret(secret).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rel.chart.metadata.version, "0.3.10");
    assert_eq!(rel.chart.metadata.app_version, "3.19.1");
    assert_eq!(rel.status(), "deployed");
    assert_eq!(rel.version, 1);
    assert_eq!(
        helm::decode_release_secret(&helm::encode_release_secret(&rel)),
        Ok(rel.clone())
    );
    let crd_text: String = rel.chart.crd_files().map(|f| f.text()).collect();
    assert_eq!(
        crd_text.matches("kind: CustomResourceDefinition").count(),
        12
    );
    assert!(crd_text.contains("apiextensions.k8s.io/v1beta1"));

    let manifest = helm::manifest_objects(&rel.manifest).unwrap_or_else(|e| panic!("{e}"));
    let listed: BTreeSet<_> = manifest
        .iter()
        .map(|m| (m.kind.clone(), m.name.clone()))
        .collect();
    let live: BTreeSet<_> = objs
        .iter()
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm")
        .map(|o| {
            (
                o["kind"].as_str().unwrap_or("").to_string(),
                o["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(listed, live);
    assert_eq!(listed.len(), 14);
    for o in objs
        .iter()
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm")
    {
        assert_eq!(
            o["metadata"]["annotations"]["meta.helm.sh/release-name"],
            "aws-calico"
        );
        assert_eq!(
            o["metadata"]["annotations"]["meta.helm.sh/release-namespace"],
            "kube-system"
        );
        assert_eq!(
            o["metadata"]["labels"]["helm.sh/chart"],
            "aws-calico-0.3.10"
        );
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/instance"],
            "aws-calico"
        );
    }
    let pdb = manifest
        .iter()
        .find(|m| m.kind == "PodDisruptionBudget")
        .map(|m| m.api_version.clone());
    assert_eq!(pdb.as_deref(), Some("policy/v1beta1"));
    assert_eq!(
        find(&objs, "PodDisruptionBudget", "kube-system", "calico-typha")["apiVersion"],
        "policy/v1"
    );
    // helm uninstall would fail on the removed PDB API on 1.29.
    assert_eq!(helm::uninstall_blockers(&rel, 29).len(), 1);
    assert_eq!(helm::uninstall_plan(&rel).len(), 14);
}

#[test]
fn calico_node_daemonset_matches_the_chart() {
    let objs = built(&cfg(2, 0, 0, 1));
    let ds = find(&objs, "DaemonSet", "kube-system", "calico-node");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    // values.yaml: calico.node.image quay.io/calico/node, calico.tag v3.19.1.
    assert_eq!(c["image"], "quay.io/calico/node:v3.19.1");
    let env: Vec<String> = c["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap_or(""),
                e["value"].as_str().unwrap_or("<from>")
            )
        })
        .collect();
    assert_eq!(
        env,
        [
            "DATASTORE_TYPE=kubernetes",
            "FELIX_INTERFACEPREFIX=eni",
            // `{{ .Values.calico.node.logseverity }}`, values.yaml `Info`.
            "FELIX_LOGSEVERITYSCREEN=Info",
            "CALICO_NETWORKING_BACKEND=none",
            "CLUSTER_TYPE=k8s,ecs",
            "CALICO_DISABLE_FILE_LOGGING=true",
            "FELIX_TYPHAK8SSERVICENAME=calico-typha",
            "FELIX_DEFAULTENDPOINTTOHOSTACTION=ACCEPT",
            "FELIX_IPTABLESMANGLEALLOWACTION=Return",
            "FELIX_IPV6SUPPORT=false",
            "WAIT_FOR_DATASTORE=true",
            "FELIX_LOGSEVERITYSYS=none",
            "FELIX_PROMETHEUSMETRICSENABLED=true",
            "FELIX_ROUTESOURCE=WorkloadIPs",
            "NO_DEFAULT_POOLS=true",
            "NODENAME=<from>",
            "IP=",
            "FELIX_HEALTHENABLED=true",
        ]
    );
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0],
        json!({"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]})
    );
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "calico-node"})
    );
    let svc = find(&objs, "Service", "kube-system", "calico-typha");
    assert_eq!(svc["spec"]["ports"][0]["port"], 5473);
    assert_eq!(of_kind(&objs, "CustomResourceDefinition").len(), 12);
}

#[test]
fn the_gnp_is_the_one_from_facts() {
    let objs = built(&ScenarioConfig::default());
    let gnp = find(&objs, "GlobalNetworkPolicy", "", "deny-aws-imds");
    assert_eq!(gnp["apiVersion"], "crd.projectcalico.org/v1");
    assert_eq!(
        gnp["spec"]["selector"],
        r#"projectcalico.org/namespace not in {"cert-manager", "ingress-controllers", "kube-system", "logging", "monitoring", "velero"}"#
    );
    assert_eq!(gnp["spec"]["types"], json!(["Egress"]));
    assert!(gnp["spec"].get("order").is_none());
    let imds = json!({"nets": ["169.254.169.254/32"], "ports": [80, 443]});
    assert_eq!(
        gnp["spec"]["egress"],
        json!([
            {"action": "Log", "protocol": "TCP", "destination": imds},
            {"action": "Deny", "protocol": "TCP", "destination": imds},
            {"action": "Allow", "destination": {"nets": ["0.0.0.0/0"]}},
        ])
    );
    for ns in ["ingress-controllers", "monitoring"] {
        let n = find(&objs, "Namespace", "", ns);
        assert_eq!(n["metadata"]["labels"]["component"], ns);
    }
    let np = find(
        &objs,
        "NetworkPolicy",
        "team-0001",
        "allow-ingress-controllers",
    );
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["component"],
        "ingress-controllers"
    );
    let d = find(&objs, "NetworkPolicy", "team-0001", "default");
    assert_eq!(d["spec"]["podSelector"], json!({}));
    assert_eq!(
        d["spec"]["ingress"],
        json!([{"from": [{"podSelector": {}}]}])
    );
}

#[test]
fn chart_0_3_11_is_operator_based() {
    let c = ScenarioConfig {
        chart: ChartGeneration::V0_3_11,
        release_name: "calico".into(),
        ..cfg(3, 1, 1, 1)
    };
    let objs = scenario::build(&c).unwrap_or_default();
    let op = find(&objs, "Deployment", "tigera-operator", "tigera-operator");
    assert_eq!(
        op["spec"]["template"]["spec"]["containers"][0]["image"],
        "quay.io/tigera/operator:v1.20.1"
    );
    let inst = find(&objs, "Installation", "", "default");
    assert_eq!(inst["spec"]["cni"]["type"], "AmazonVPC");
    assert!(objs.iter().all(|o| !(o["kind"] == "DaemonSet"
        && o["metadata"]["name"] == "calico-node"
        && o["metadata"]["namespace"] == "kube-system")));
    let secret = find(
        &objs,
        "Secret",
        "kube-system",
        "sh.helm.release.v1.calico.v1",
    );
    let rel = helm::decode_release_secret(secret).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rel.chart.metadata.version, "0.3.11");
    // The CRDs are templates here: helm uninstall would delete them.
    let crds = helm::uninstall_plan(&rel)
        .into_iter()
        .filter(|r| r.kind == "CustomResourceDefinition")
        .count();
    // The chart's templates/crds/: 17 crd.projectcalico.org and 2 operator.tigera.io.
    assert_eq!(crds, 17 + 2);
    assert_eq!(rel.hooks.len(), 1);
    // The operator's calico-node runs on every node in calico-system.
    let ds = find(&objs, "DaemonSet", "calico-system", "calico-node");
    assert_eq!(ds["status"]["numberReady"], 3);
    let pods = of_kind(&objs, "Pod")
        .into_iter()
        .filter(|p| {
            p["metadata"]["namespace"] == "calico-system"
                && p["metadata"]["labels"]["k8s-app"] == "calico-node"
        })
        .count();
    assert_eq!(pods, 3);
    let ts = find(&objs, "TigeraStatus", "", "calico");
    assert_eq!(ts["status"]["conditions"][0]["type"], "Available");
}

#[test]
fn a_thousand_nodes_get_distinct_addresses_apart_from_their_pods() {
    let objs = built(&cfg(1000, 1500, 10, 1));
    let nodes: BTreeSet<String> = of_kind(&objs, "Node")
        .iter()
        .map(|n| {
            n["status"]["addresses"][0]["address"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(nodes.len(), 1000, "node addresses are unique");
    let pods: Vec<String> = of_kind(&objs, "Pod")
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .map(|p| p["status"]["podIP"].as_str().unwrap_or("").to_string())
        .collect();
    let distinct: BTreeSet<&String> = pods.iter().collect();
    assert_eq!(distinct.len(), pods.len(), "pod IPs are unique");
    assert!(
        pods.iter().all(|ip| !nodes.contains(ip)),
        "no pod holds a node's address"
    );
    let e = scenario::build(&cfg(3043, 1, 1, 1))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("between 1 and 3042"), "{e}");
}

#[test]
fn bad_configs_are_refused_clearly() {
    let e = scenario::build(&cfg(0, 1, 1, 1))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("--nodes"), "{e}");
    let e = scenario::build(&cfg(3, 20_000, 10, 1))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("pods-per-namespace"), "{e}");
    let c = ScenarioConfig {
        release_name: "Bad_Name".into(),
        ..cfg(3, 1, 1, 1)
    };
    let e = scenario::build(&c)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("release name"), "{e}");
}

#[test]
fn a_zone_whose_subnet_cannot_hold_its_pods_is_refused() {
    // One node: every pod in zone a, whose /18 has 15,359 pod addresses.
    let e = scenario::build(&cfg(1, 1_600, 10, 1))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("zone eu-west-1a")
            && e.contains("15359 pod addresses")
            && e.contains("add nodes"),
        "{e}"
    );
    // The same pods over three zones fit, every address distinct.
    let objs = built(&cfg(3, 1_600, 10, 1));
    let pods: Vec<&str> = of_kind(&objs, "Pod")
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .filter_map(|p| p["status"]["podIP"].as_str())
        .collect();
    let distinct: BTreeSet<&&str> = pods.iter().collect();
    assert_eq!(distinct.len(), pods.len(), "pod IPs are unique");
}

/// Benchmark, not a test of speed: prints how long the benchmark-sized
/// scenario takes to build and to load. Run with
/// `cargo test --release --test scenario -- --ignored --nocapture scale`.
#[test]
#[ignore = "benchmark; run explicitly"]
fn scale_benchmark_figures() {
    let c = cfg(100, 1500, 10, 1);
    let t = std::time::Instant::now();
    let objs = built(&c);
    let build = t.elapsed();
    let bytes = serde_json::to_vec(&objs).map(|v| v.len()).unwrap_or(0);
    let t = std::time::Instant::now();
    let again = built(&c);
    let rebuild = t.elapsed();
    assert_eq!(objs, again);
    let sb = Sandbox::new(SandboxOptions::default());
    let t = std::time::Instant::now();
    let loaded = sb.load(objs.clone()).map_err(|e| e.to_string());
    let load = t.elapsed();
    let pods = of_kind(&objs, "Pod").len();
    println!(
        "scenario nodes=100 namespaces=1500 pods/ns=10: {} objects ({pods} pods, {:.1} MiB JSON); build {:?}, rebuild {:?}; Sandbox::load {:?} ({loaded:?})",
        objs.len(),
        bytes as f64 / (1 << 20) as f64,
        build,
        rebuild,
        load
    );
}

/// The operator.tigera.io CRDs shipped as YAML data are the ones the builder
/// makes (regenerate with SCENARIO_WRITE_DATA=1 after changing the builder).
#[test]
fn shipped_operator_crd_data_matches_the_builder() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/sandbox/scenario/data/operator-crds.yaml"
    );
    let built = scenario::operator::operator_crds();
    if std::env::var_os("SCENARIO_WRITE_DATA").is_some() {
        let mut text = String::from(
            "# operator.tigera.io/v1 CRDs (tigera/operator v1.20), permissive schemas.\n# Generated from src/sandbox/scenario/operator.rs; tests/scenario.rs checks they agree.\n",
        );
        for c in &built {
            text.push_str("---\n");
            text.push_str(&serde_saphyr::to_string(c).unwrap_or_default());
        }
        std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs, built);
    let kinds: Vec<_> = docs
        .iter()
        .map(|d| d["spec"]["names"]["kind"].as_str().unwrap_or(""))
        .collect();
    assert!(
        kinds.contains(&"Installation")
            && kinds.contains(&"TigeraStatus")
            && kinds.contains(&"APIServer")
    );
}

#[test]
#[ignore = "prints the stored manifest for inspection"]
fn print_manifest() {
    let objs = built(&cfg(3, 1, 1, 1));
    let s = find(
        &objs,
        "Secret",
        "kube-system",
        "sh.helm.release.v1.aws-calico.v1",
    );
    let rel = helm::decode_release_secret(s).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", rel.manifest);
}

#[test]
fn small_builders_follow_their_inputs() {
    use scenario::chart::{self, ChartValues};
    let v = ChartValues {
        node_extra_env: vec![json!({"name": "FELIX_XDPENABLED", "value": "false"})],
        ..ChartValues::default()
    };
    let ds = chart::calico_node_daemonset(&v);
    let env = &ds["spec"]["template"]["spec"]["containers"][0]["env"];
    let last = env
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["name"], "FELIX_XDPENABLED");
    assert!(
        ds["metadata"].get("namespace").is_none(),
        "rendered, not live"
    );
    let ladder: Vec<_> = [1, 9, 10, 99, 100, 250, 2500]
        .iter()
        .map(|n| chart::typha_replicas(*n))
        .collect();
    assert_eq!(ladder, [1, 1, 2, 2, 3, 4, 8]);
    let (node, info) = scenario::cluster::node(4, 7, "us-east-1");
    assert_eq!(node["metadata"]["name"], info.name);
    assert!(info.name.ends_with(".ec2.internal"));
    assert_eq!(
        node["metadata"]["labels"]["topology.k8s.aws/zone-id"],
        "use1-az2"
    );
    assert_eq!(
        node["metadata"]["labels"]["topology.kubernetes.io/zone"],
        "us-east-1b"
    );
    let ns = scenario::cluster::user_namespace(3, 7);
    assert_eq!(
        ns.len(),
        4,
        "namespace + 3 policies for every third namespace"
    );
    assert_eq!(scenario::cluster::user_namespace(4, 7).len(), 3);
}

/// The sandbox's stand-in for Calico v3.30.3's policy-only manifest (what rehearse pins
/// as `--calico-manifest`) has the real file's CRDs (name, kind, scope, served version),
/// its ClusterRole calico-node rules and its calico-node and typha images.
#[test]
fn the_policy_only_stand_in_matches_the_real_manifest() {
    use calico_migrate::migration::calico_manifest::alignment;
    use calico_migrate::sandbox::scenario::policy_only;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/real/calico-v3.30.3-policy-only.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("SKIPPED: {} is not available", path.display());
        return;
    };
    let real =
        calico_migrate::migration::session::parse_manifest(&text).unwrap_or_else(|e| panic!("{e}"));
    let ours = policy_only::objects();
    let crds = |objs: &[serde_json::Value]| -> Vec<(String, String, String, String)> {
        let mut v: Vec<_> = objs
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .map(|o| {
                (
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    o["spec"]["names"]["kind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    o["spec"]["scope"].as_str().unwrap_or_default().to_string(),
                    o["spec"]["versions"][0]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(crds(&ours), crds(&real));
    let role = |objs: &[serde_json::Value]| {
        objs.iter()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == "calico-node")
            .map(|o| o["rules"].clone())
    };
    assert_eq!(role(&ours), role(&real));
    let a = alignment(&ours, policy_only::RELEASE).unwrap_or_else(|e| panic!("{e}"));
    let b = alignment(&real, policy_only::RELEASE).unwrap_or_else(|e| panic!("{e}"));
    for workload in ["calico-node", "calico-typha"] {
        assert_eq!(
            a.images[workload].get(workload),
            b.images[workload].get(workload),
            "{workload}"
        );
    }
}

#[test]
fn fargate_nodes_beyond_the_address_plan_are_refused() {
    let mut c = cfg(3, 1, 1, 1);
    c.fargate_nodes = calico_migrate::sandbox::scenario::net::MAX_NODES;
    let e = scenario::build(&c)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("--fargate-nodes must be at most"), "{e}");
    c.fargate_nodes = 2;
    let objs = scenario::build(&c).unwrap_or_default();
    let fargate: Vec<&Value> = objs
        .iter()
        .filter(|o| {
            o["kind"] == "Node"
                && o["metadata"]["labels"]["eks.amazonaws.com/compute-type"] == "fargate"
        })
        .collect();
    assert_eq!(fargate.len(), 2);
    for n in &fargate {
        assert_eq!(
            n["spec"]["taints"],
            serde_json::json!([{"key": "eks.amazonaws.com/compute-type", "value": "fargate", "effect": "NoSchedule"}])
        );
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        let pods: Vec<&Value> = objs
            .iter()
            .filter(|o| o["kind"] == "Pod" && o["spec"]["nodeName"] == name)
            .collect();
        assert_eq!(pods.len(), 1, "{name}: {pods:?}");
        assert_eq!(pods[0]["metadata"]["namespace"], "fargate-apps");
        assert_eq!(
            pods[0]["status"]["podIP"],
            n["status"]["addresses"][0]["address"]
        );
    }
}
