//! The kube-system manifest install of Calico v3.30.3 in policy-only mode, as the
//! sandbox stands it in for projectcalico/calico v3.30.3 `manifests/calico-policy-only.yaml`
//! (what `calico-migrate plan --calico-manifest` is given on the current path): its 24
//! CRDs with open schemas, the ServiceAccounts, ClusterRole calico-node with the rules of
//! the sandbox's version data (controllers::felix), its binding, and the workloads whose
//! images align-versions takes. Less than the real file: no CRD schemas, no
//! calico-cni-plugin or calico-tier-getter roles, no PDBs, no calico-config (docs/sandbox.md).
//! A test compares the CRD names, kinds, scopes and the calico-node rules with the real file.

use serde_json::{Value, json};

use super::calico::{CALICO_GROUP, crd_v1};
use crate::sandbox::controllers::felix;

/// The release this manifest stands in for.
pub const RELEASE: &str = "v3.30.3";

/// The group of the Kubernetes network-policy API CRDs (AdminNetworkPolicy) the v3.30
/// manifest ships, served at v1alpha1.
const K8S_POLICY_GROUP: &str = "policy.networking.k8s.io";

/// (plural, kind, namespaced) of the v3.30.3 manifest's crd.projectcalico.org CRDs.
pub const CALICO_CRDS_V3_30: &[(&str, &str, bool)] = &[
    ("bgpconfigurations", "BGPConfiguration", false),
    ("bgpfilters", "BGPFilter", false),
    ("bgppeers", "BGPPeer", false),
    ("blockaffinities", "BlockAffinity", false),
    ("caliconodestatuses", "CalicoNodeStatus", false),
    ("clusterinformations", "ClusterInformation", false),
    ("felixconfigurations", "FelixConfiguration", false),
    ("globalnetworkpolicies", "GlobalNetworkPolicy", false),
    ("globalnetworksets", "GlobalNetworkSet", false),
    ("hostendpoints", "HostEndpoint", false),
    ("ipamblocks", "IPAMBlock", false),
    ("ipamconfigs", "IPAMConfig", false),
    ("ipamhandles", "IPAMHandle", false),
    ("ippools", "IPPool", false),
    ("ipreservations", "IPReservation", false),
    (
        "kubecontrollersconfigurations",
        "KubeControllersConfiguration",
        false,
    ),
    ("networkpolicies", "NetworkPolicy", true),
    ("networksets", "NetworkSet", true),
    (
        "stagedglobalnetworkpolicies",
        "StagedGlobalNetworkPolicy",
        false,
    ),
    (
        "stagedkubernetesnetworkpolicies",
        "StagedKubernetesNetworkPolicy",
        true,
    ),
    ("stagednetworkpolicies", "StagedNetworkPolicy", true),
    ("tiers", "Tier", false),
];

/// (plural, kind) of its policy.networking.k8s.io CRDs (cluster-scoped, with status).
pub const K8S_POLICY_CRDS: &[(&str, &str)] = &[
    ("adminnetworkpolicies", "AdminNetworkPolicy"),
    ("baselineadminnetworkpolicies", "BaselineAdminNetworkPolicy"),
];

fn strip_status(mut crd: Value) -> Value {
    if let Some(m) = crd.as_object_mut() {
        m.remove("status");
    }
    crd
}

fn account(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "namespace": "kube-system"}})
}

fn workload(kind: &str, name: &str, component: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": "kube-system", "labels": {"k8s-app": name}},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": name}},
            "template": {
                "metadata": {"labels": {"k8s-app": name}},
                "spec": {
                    "serviceAccountName": if name == "calico-kube-controllers" { name } else { "calico-node" },
                    "containers": [{"name": name, "image": format!("docker.io/calico/{component}:{RELEASE}")}],
                },
            },
        },
    })
}

/// The manifest's objects, in the file's order of kinds.
pub fn objects() -> Vec<Value> {
    let mut out: Vec<Value> = vec![
        account("calico-kube-controllers"),
        account("calico-node"),
        account("calico-cni-plugin"),
    ];
    out.extend(
        CALICO_CRDS_V3_30
            .iter()
            .map(|(p, k, ns)| strip_status(crd_v1(CALICO_GROUP, p, k, *ns, false))),
    );
    for (p, k) in K8S_POLICY_CRDS {
        let mut crd = strip_status(crd_v1(K8S_POLICY_GROUP, p, k, false, true));
        crd["spec"]["versions"][0]["name"] = json!("v1alpha1");
        out.push(crd);
    }
    let rules: Vec<Value> = felix::catalogue()
        .ok()
        .and_then(|c| c.line("v3.30"))
        .and_then(|v| v.cluster_role.as_ref())
        .map(|r| r.rules.iter().map(felix::RuleData::to_json).collect())
        .unwrap_or_default();
    out.push(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": "calico-node"}, "rules": rules}),
    );
    out.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": "calico-node"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "calico-node"},
                    "subjects": [{"kind": "ServiceAccount", "name": "calico-node", "namespace": "kube-system"}]}));
    out.push(workload("DaemonSet", "calico-node", "node"));
    out.push(workload(
        "Deployment",
        "calico-kube-controllers",
        "kube-controllers",
    ));
    out.push(workload("Deployment", "calico-typha", "typha"));
    out
}

/// [`objects`] as multi-document YAML, the form `plan --calico-manifest` reads.
pub fn yaml() -> String {
    let mut out = String::new();
    for obj in objects() {
        out.push_str("---\n");
        // JSON is valid YAML: keep the document even if the YAML writer refuses it.
        out.push_str(&serde_saphyr::to_string(&obj).unwrap_or_else(|_| obj.to_string()));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
