//! tigera-operator as the sandbox seeds and simulates it: what aws-calico chart 0.3.11
//! installs (tigera-operator v1.20.1, rendered from the embedded chart by
//! `operator_chart`; docs/upstream.md, "The aws-calico 0.3.11 chart"), what each
//! operator line renders for calico-system, and the operator manifests.

use serde_json::{Value, json};

use super::BASE_TIME;
use super::calico::{CALICO_CRDS, CALICO_GROUP, crd_v1};
use super::chart::ChartValues;
use super::operator_chart;

pub const OPERATOR_GROUP: &str = "operator.tigera.io";
pub const OPERATOR_IMAGE: &str = "quay.io/tigera/operator:v1.20.1";

/// (plural, kind, has status subresource) of operator.tigera.io/v1 in operator v1.20.
pub const OPERATOR_CRDS: &[(&str, &str, bool)] = &[
    ("apiservers", "APIServer", true),
    ("imagesets", "ImageSet", false),
    ("installations", "Installation", true),
    ("tigerastatuses", "TigeraStatus", true),
    ("amazoncloudintegrations", "AmazonCloudIntegration", true),
];

/// The operator.tigera.io/v1 CRDs (all cluster-scoped), not seeded for 0.3.10.
pub fn operator_crds() -> Vec<Value> {
    OPERATOR_CRDS
        .iter()
        .map(|(p, k, s)| crd_v1(OPERATOR_GROUP, p, k, false, *s))
        .collect()
}

/// Installation `default` as the 0.3.11 post-install hook creates it (the chart's
/// templates/crs/custom-resources.yaml, rendered).
pub fn installation_default() -> Value {
    let mut inst =
        operator_chart::render(&operator_chart::seed_values("aws-calico", "kube-system"))
            .ok()
            .and_then(|r| {
                r.hooks
                    .into_iter()
                    .find(|h| h.object["kind"] == "Installation")
            })
            .map(|h| h.object)
            .unwrap_or(Value::Null);
    inst["metadata"]["creationTimestamp"] = json!(BASE_TIME);
    inst
}

/// The rendered objects of chart 0.3.11 for the release of `v`, in install order
/// (Namespace, PodSecurityPolicy, ServiceAccount, the 19 CRDs, RBAC, the operator's
/// Deployment), each with its template; none when the chart does not render.
pub fn rendered_objects(v: &ChartValues) -> Vec<(&'static str, Value)> {
    operator_chart::render(v)
        .map(|r| r.docs.into_iter().map(|d| (d.source, d.object)).collect())
        .unwrap_or_default()
}

/// Calico version tigera-operator v1.20.1 (the operator aws-calico 0.3.11 installs)
/// installs: tigera/operator v1.20.1 pkg/components/calico.go:20, CalicoRelease "v3.20.0".
pub const OPERATOR_CALICO_VERSION: &str = "v3.20.0";

/// The Calico release each operator release installs, read at each tag from
/// tigera/operator `pkg/components/calico.go` (`CalicoRelease`): line 20 up to v1.20.x,
/// line 23 at v1.38.6. (operator tag prefix, Calico release), most specific first.
const CALICO_OF_OPERATOR: &[(&str, &str)] = &[
    ("v1.17.", "v3.19.1"),
    ("v1.20.0", "v3.20.0"),
    ("v1.20.1", "v3.20.0"),
    ("v1.20.2", "v3.20.0"),
    ("v1.20.3", "v3.20.1"),
    ("v1.20.4", "v3.20.2"),
    ("v1.38.6", "v3.30.3"),
];

/// The Calico release an operator of this image tag installs; None for a release the
/// sandbox does not know (the operator simulation then refuses to render, saying so).
pub fn calico_of_operator(operator_tag: &str) -> Option<&'static str> {
    CALICO_OF_OPERATOR
        .iter()
        .find(|(prefix, _)| operator_tag.starts_with(prefix))
        .map(|(_, calico)| *calico)
}

/// calico-node's readiness probe as the operator renders it, without BGP (the EKS
/// install's `CALICO_NETWORKING_BACKEND: none`), so felix only. tigera/operator v1.17.4
/// and v1.20.1: `TimeoutSeconds: 5, PeriodSeconds: 10` (pkg/render/node.go:1260-1266,
/// :1334-1340). v1.38.6 (Calico v3.30): `TimeoutSeconds: 10` (node.go:1713-1733), and
/// `setProbeTimeouts` fills `PeriodSeconds: 30`, `FailureThreshold: 3`,
/// `SuccessThreshold: 1` when it creates the DaemonSet
/// (pkg/controller/utils/component.go:125, :729-787).
fn calico_node_readiness_probe(calico_version: &str) -> Value {
    let exec = json!({"command": ["/bin/calico-node", "-felix-ready"]});
    if calico_version.starts_with("v3.30.") {
        json!({"exec": exec, "timeoutSeconds": 10, "periodSeconds": 30,
               "failureThreshold": 3, "successThreshold": 1})
    } else {
        json!({"exec": exec, "timeoutSeconds": 5, "periodSeconds": 10})
    }
}

/// What the operator runs in `calico-system` once the Installation is reconciled:
/// DaemonSet calico-node, Deployments calico-typha and calico-kube-controllers
/// (operator-style `k8s-app` labels, no Helm labels), all without status/pods.
pub fn calico_system_workloads(typha_replicas: usize, calico_version: &str) -> Vec<Value> {
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "calico-node", "namespace": "calico-system", "labels": {"k8s-app": "calico-node"}},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": "calico-node"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"k8s-app": "calico-node"}},
                "spec": {
                    "hostNetwork": true,
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "priorityClassName": "system-node-critical",
                    "serviceAccountName": "calico-node",
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                    {"effect": "NoSchedule", "operator": "Exists"},
                                    {"effect": "NoExecute", "operator": "Exists"}],
                    "containers": [{
                        "name": "calico-node",
                        "image": format!("docker.io/calico/node:{calico_version}"),
                        "env": [
                            {"name": "DATASTORE_TYPE", "value": "kubernetes"},
                            {"name": "WAIT_FOR_DATASTORE", "value": "true"},
                            {"name": "CLUSTER_TYPE", "value": "k8s,operator,ecs"},
                            {"name": "CALICO_DISABLE_FILE_LOGGING", "value": "true"},
                            {"name": "FELIX_DEFAULTENDPOINTTOHOSTACTION", "value": "ACCEPT"},
                            {"name": "FELIX_HEALTHENABLED", "value": "true"},
                            {"name": "NODENAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "FELIX_TYPHAK8SNAMESPACE", "value": "calico-system"},
                            {"name": "FELIX_TYPHAK8SSERVICENAME", "value": "calico-typha"},
                            {"name": "FELIX_INTERFACEPREFIX", "value": "eni"},
                            {"name": "FELIX_IPTABLESMANGLEALLOWACTION", "value": "Return"},
                            {"name": "FELIX_ROUTESOURCE", "value": "WorkloadIPs"},
                            {"name": "CALICO_NETWORKING_BACKEND", "value": "none"},
                            {"name": "IP", "value": "none"},
                            {"name": "NO_DEFAULT_POOLS", "value": "true"},
                        ],
                        "securityContext": {"privileged": true},
                        "readinessProbe": calico_node_readiness_probe(calico_version),
                    }],
                },
            },
        },
    });
    let deploy = |name: &str, replicas: usize, host: bool, image: String| {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "calico-system", "labels": {"k8s-app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"k8s-app": name}},
                "template": {
                    "metadata": {"labels": {"k8s-app": name}},
                    "spec": {
                        "hostNetwork": host,
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "serviceAccountName": name,
                        "containers": [{"name": name, "image": image}],
                    },
                },
            },
        })
    };
    vec![
        ds,
        deploy(
            "calico-typha",
            typha_replicas,
            true,
            format!("docker.io/calico/typha:{calico_version}"),
        ),
        deploy(
            "calico-kube-controllers",
            1,
            false,
            format!("docker.io/calico/kube-controllers:{calico_version}"),
        ),
    ]
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn cluster_role_and_binding(name: &str, rules: Vec<Value>) -> [Value; 2] {
    [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name}, "rules": rules}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "calico-system"}]}),
    ]
}

/// ClusterRole and ClusterRoleBinding `calico-typha` for ServiceAccount
/// calico-system/calico-typha, as tigera/operator v1.20.1 renders them
/// (pkg/render/typha.go:171-191 `typhaRoleBinding`, :194-314 `typhaRole`).
pub fn calico_typha_rbac(calico_version: &str) -> [Value; 2] {
    // v1.38.6 (Calico v3.30.3), pkg/render/typha.go:199-345 `typhaRole`, adds the
    // AdminNetworkPolicy kinds, the v3.30 Calico kinds (bgpfilters, caliconodestatuses,
    // ipreservations, the staged policies, tiers) and creating tiers.
    let v3_30 = calico_version.starts_with("v3.30.");
    let mut calico_read = vec![
        "bgpconfigurations",
        "bgppeers",
        "blockaffinities",
        "clusterinformations",
        "felixconfigurations",
        "globalnetworkpolicies",
        "globalnetworksets",
        "hostendpoints",
        "ipamblocks",
        "ippools",
        "networkpolicies",
        "networksets",
    ];
    if v3_30 {
        calico_read.extend([
            "bgpfilters",
            "caliconodestatuses",
            "ipreservations",
            "stagedglobalnetworkpolicies",
            "stagedkubernetesnetworkpolicies",
            "stagednetworkpolicies",
            "tiers",
        ]);
    }
    let mut rules = vec![
        rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["list", "watch"],
        ),
        rule(&[""], &["pods", "nodes", "namespaces"], &["get"]),
        rule(&[""], &["endpoints", "services"], &["watch", "list", "get"]),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(
            &["networking.k8s.io"],
            &["networkpolicies"],
            &["watch", "list"],
        ),
    ];
    if v3_30 {
        rules.push(rule(
            &["policy.networking.k8s.io"],
            &["adminnetworkpolicies", "baselineadminnetworkpolicies"],
            &["watch", "list"],
        ));
    }
    rules.extend([
        rule(
            &[""],
            &["pods", "namespaces", "serviceaccounts"],
            &["watch", "list"],
        ),
        rule(&[""], &["pods/status"], &["patch"]),
        rule(
            &["crd.projectcalico.org"],
            &calico_read,
            &["get", "list", "watch"],
        ),
        rule(
            &["crd.projectcalico.org"],
            &["globalbgpconfigs", "globalfelixconfigs"],
            &["get", "list", "watch"],
        ),
        rule(
            &["crd.projectcalico.org"],
            &["clusterinformations", "felixconfigurations", "ippools"],
            &["create", "update"],
        ),
    ]);
    if v3_30 {
        rules.push(rule(&["crd.projectcalico.org"], &["tiers"], &["create"]));
    }
    rules.extend([
        rule(&[""], &["nodes"], &["get", "list", "watch"]),
        rule(
            &["crd.projectcalico.org"],
            &["blockaffinities", "ipamblocks", "ipamhandles"],
            &["get", "list", "create", "update", "delete"],
        ),
        rule(&["crd.projectcalico.org"], &["ipamconfigs"], &["get"]),
        rule(&["crd.projectcalico.org"], &["blockaffinities"], &["watch"]),
    ]);
    cluster_role_and_binding("calico-typha", rules)
}

/// ClusterRole and ClusterRoleBinding `calico-node` for ServiceAccount
/// calico-system/calico-node, as tigera/operator v1.20.1 renders them for Calico
/// (pkg/render/node.go:240-368 `nodeRole`, without the Enterprise `extraRules`).
/// Seeded for chart 0.3.11; in a migration from 0.3.10 the simulated operator adds its
/// subject to the chart's binding instead (docs/sandbox-behaviour.md).
pub fn calico_node_rbac() -> [Value; 2] {
    cluster_role_and_binding("calico-node", node_role_rules(NodeRole::V1_20))
}

/// The operator release whose `nodeRole` is rendered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NodeRole {
    /// v1.17.4: v1.20.1's without the EndpointSlice rule (added in between).
    V1_17,
    /// v1.20.1 pkg/render/node.go:240-368.
    V1_20,
    /// v1.38.6 pkg/render/node.go:361-530: adds AdminNetworkPolicies, service-account
    /// tokens, the v3.30 Calico kinds, caliconodestatuses, creating tiers and ipamconfigs
    /// writes.
    V1_38,
}

/// The rules of ClusterRole calico-node as `release` renders them for Calico (the
/// Enterprise and OpenShift rules left out).
fn node_role_rules(release: NodeRole) -> Vec<Value> {
    let v1_38 = release == NodeRole::V1_38;
    let mut calico_read = vec![
        "bgpconfigurations",
        "bgppeers",
        "blockaffinities",
        "clusterinformations",
        "felixconfigurations",
        "globalnetworkpolicies",
        "stagedglobalnetworkpolicies",
        "globalnetworksets",
        "hostendpoints",
        "ipamblocks",
        "ippools",
        "networkpolicies",
        "stagedkubernetesnetworkpolicies",
        "stagednetworkpolicies",
        "networksets",
    ];
    if v1_38 {
        calico_read.extend(["bgpfilters", "ipreservations", "tiers"]);
    }
    let mut rules = Vec::new();
    if release != NodeRole::V1_17 {
        rules.push(rule(
            &["discovery.k8s.io"],
            &["endpointslices"],
            &["list", "watch"],
        ));
    }
    rules.extend([
        rule(&[""], &["pods", "nodes", "namespaces"], &["get"]),
        rule(&[""], &["endpoints", "services"], &["watch", "list", "get"]),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(
            &["networking.k8s.io"],
            &["networkpolicies"],
            &["watch", "list"],
        ),
    ]);
    if v1_38 {
        rules.push(rule(
            &["policy.networking.k8s.io"],
            &["adminnetworkpolicies", "baselineadminnetworkpolicies"],
            &["watch", "list"],
        ));
    }
    rules.extend([
        rule(
            &[""],
            &["pods", "namespaces", "serviceaccounts"],
            &["watch", "list"],
        ),
        rule(&[""], &["pods/status"], &["patch"]),
    ]);
    if v1_38 {
        rules.push(rule(&[""], &["serviceaccounts/token"], &["create"]));
    }
    rules.extend([
        rule(&[""], &["configmaps"], &["get"]),
        rule(
            &["crd.projectcalico.org"],
            &calico_read,
            &["get", "list", "watch"],
        ),
    ]);
    if v1_38 {
        rules.push(rule(
            &["crd.projectcalico.org"],
            &["caliconodestatuses"],
            &["get", "list", "watch", "update"],
        ));
    }
    rules.extend([
        rule(
            &["crd.projectcalico.org"],
            &["globalbgpconfigs", "globalfelixconfigs"],
            &["get", "list", "watch"],
        ),
        rule(
            &["crd.projectcalico.org"],
            &["clusterinformations", "felixconfigurations", "ippools"],
            &["create", "update"],
        ),
    ]);
    if v1_38 {
        rules.push(rule(&["crd.projectcalico.org"], &["tiers"], &["create"]));
    }
    let ipam: &[&str] = if v1_38 {
        &[
            "blockaffinities",
            "ipamblocks",
            "ipamconfigs",
            "ipamhandles",
        ]
    } else {
        &["blockaffinities", "ipamblocks", "ipamhandles"]
    };
    rules.extend([
        rule(&[""], &["nodes"], &["get", "list", "watch"]),
        rule(
            &["crd.projectcalico.org"],
            ipam,
            &["get", "list", "create", "update", "delete"],
        ),
        rule(&["crd.projectcalico.org"], &["ipamconfigs"], &["get"]),
        rule(&["crd.projectcalico.org"], &["blockaffinities"], &["watch"]),
    ]);
    rules
}

/// ClusterRole and ClusterRoleBinding `calico-node` as the operator installing
/// `calico_version` renders them during a migration from a kube-system install: its own
/// role (v1.38.6 `nodeRole`; v1.20.1's, `calico_node_rbac`, for v1.20; v1.17.4's for
/// v1.17), and the
/// binding to calico-system/calico-node plus kube-system/calico-node, which
/// `migration.AddBindingForKubeSystemNode` adds while kube-system agents still run
/// (v1.38.6 pkg/render/node.go:301-330). The caller sets the controller ownerReference
/// to the Installation (pkg/controller/utils/component.go:87), so deleting the
/// Installation garbage-collects both.
pub fn operator_calico_node_rbac(calico_version: &str) -> [Value; 2] {
    let release = if calico_version.starts_with("v3.30.") {
        NodeRole::V1_38
    } else if calico_version.starts_with("v3.19.") {
        NodeRole::V1_17
    } else {
        NodeRole::V1_20
    };
    let [role, mut binding] = cluster_role_and_binding("calico-node", node_role_rules(release));
    // AddBindingForKubeSystemNode (v1.38.6 pkg/controller/migration/namespace_migration.go
    // :172-190): the kube-system account, and the RKE nodes group.
    binding["subjects"] = json!([
        {"kind": "ServiceAccount", "name": "calico-node", "namespace": "calico-system"},
        {"kind": "ServiceAccount", "name": "calico-node", "namespace": "kube-system"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"},
    ]);
    [role, binding]
}

/// TigeraStatus `calico`, Available (the operator's summary of the install).
pub fn tigera_status_calico() -> Value {
    let cond = |t: &str, s: &str| {
        json!({"type": t, "status": s, "lastTransitionTime": BASE_TIME,
                                         "reason": "AllObjectsAvailable", "message": ""})
    };
    json!({
        "apiVersion": "operator.tigera.io/v1", "kind": "TigeraStatus",
        "metadata": {"name": "calico", "creationTimestamp": BASE_TIME},
        "spec": {},
        "status": {"conditions": [cond("Available", "True"), cond("Progressing", "False"), cond("Degraded", "False")]},
    })
}

/// A `tigera-operator.yaml` like the one the Calico docs publish for an operator
/// release (no Helm labels): Calico and operator CRDs, namespace `tigera-operator`,
/// the operator's ServiceAccount, RBAC and Deployment. No Installation: that comes
/// from `custom-resources.yaml`, which calico-migrate writes itself. A stand-in, not a
/// release's file: Calico v3.19's 12 CRDs and operator v1.20's five, a ClusterRole that
/// grants everything, and the Deployment of aws-calico 0.3.11 with the image asked for.
pub fn operator_manifest(operator_image: &str) -> Vec<Value> {
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "tigera-operator", "labels": {"name": "tigera-operator"}},
    })];
    for (p, k, ns) in CALICO_CRDS {
        out.push(without_status(crd_v1(CALICO_GROUP, p, k, *ns, false)));
    }
    out.extend(operator_crds().into_iter().map(without_status));
    out.push(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "tigera-operator", "namespace": "tigera-operator"},
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "tigera-operator"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "tigera-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tigera-operator"},
        "subjects": [{"kind": "ServiceAccount", "name": "tigera-operator", "namespace": "tigera-operator"}],
    }));
    // The operator's Deployment as aws-calico 0.3.11 renders it, with the image asked for.
    let mut deploy = rendered_objects(&ChartValues::default())
        .into_iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == "Deployment")
        .unwrap_or(Value::Null);
    if let Some(m) = deploy
        .pointer_mut("/metadata")
        .and_then(Value::as_object_mut)
    {
        m.remove("labels");
    }
    deploy["spec"]["template"]["spec"]["containers"][0]["image"] = json!(operator_image);
    out.push(deploy);
    out
}

fn without_status(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    v
}

/// [`operator_manifest`] as multi-document YAML.
pub fn operator_manifest_yaml(operator_image: &str) -> String {
    let mut out = String::new();
    for obj in operator_manifest(operator_image) {
        out.push_str("---\n");
        // JSON is valid YAML: keep the document even if the YAML writer refuses it.
        out.push_str(&serde_saphyr::to_string(&obj).unwrap_or_else(|_| obj.to_string()));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
