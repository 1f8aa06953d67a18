//! Calico's own objects: the 12 crd.projectcalico.org CRDs, the cluster-wide
//! singletons calico-node writes at start, and the seed organisation's
//! GlobalNetworkPolicy `deny-aws-imds` (docs/upstream.md, "The seeded cluster's
//! policies").

use serde_json::{Value, json};

/// (plural, kind, namespaced) of the CRDs aws-calico ships in `crds/`
/// (aws/eks-charts `stable/aws-calico/crds/crds.yaml`).
pub const CALICO_CRDS: &[(&str, &str, bool)] = &[
    ("bgpconfigurations", "BGPConfiguration", false),
    ("bgppeers", "BGPPeer", false),
    ("blockaffinities", "BlockAffinity", false),
    ("clusterinformations", "ClusterInformation", false),
    ("felixconfigurations", "FelixConfiguration", false),
    ("globalnetworkpolicies", "GlobalNetworkPolicy", false),
    ("globalnetworksets", "GlobalNetworkSet", false),
    ("hostendpoints", "HostEndpoint", false),
    ("ipamblocks", "IPAMBlock", false),
    ("ippools", "IPPool", false),
    ("networkpolicies", "NetworkPolicy", true),
    ("networksets", "NetworkSet", true),
];

pub const CALICO_GROUP: &str = "crd.projectcalico.org";

/// An apiextensions.k8s.io/v1 CRD with one served+stored version and a schema
/// that keeps every field (real Calico schemas are large; nothing here validates).
pub fn crd_v1(group: &str, plural: &str, kind: &str, namespaced: bool, status: bool) -> Value {
    let mut version = json!({
        "name": "v1",
        "served": true,
        "storage": true,
        "schema": {"openAPIV3Schema": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        }},
    });
    if status {
        version["subresources"] = json!({"status": {}});
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
            },
            "scope": if namespaced { "Namespaced" } else { "Cluster" },
            "versions": [version],
        },
        "status": {
            "acceptedNames": {"kind": kind, "listKind": format!("{kind}List"),
                              "plural": plural, "singular": kind.to_lowercase()},
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": super::BASE_TIME},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": super::BASE_TIME},
            ],
            "storedVersions": ["v1"],
        },
    })
}

/// The 12 Calico CRDs of the chart's `crds/crds.yaml` as the API server keeps them:
/// Helm creates them at apiextensions.k8s.io/v1beta1 (the file's version, no schema),
/// the server stores them at v1 with upstream's defaults and conversion
/// (`convert::crd_v1beta1_to_v1`: `preserveUnknownFields: true`, `conversion.strategy:
/// None`, versions without a schema, k8s.io/apiextensions-apiserver v0.34.0
/// pkg/apis/apiextensions/v1/conversion.go `Convert_apiextensions_CustomResourceDefinitionSpec_To_v1_CustomResourceDefinitionSpec`,
/// which moves a schema into the versions only when `validation` is set). An upgrade
/// of the control plane rewrites nothing, so a cluster installed at 1.21 reads them
/// the same way at every later minor. Status as established.
pub fn calico_crds() -> Vec<Value> {
    chart_crd_documents()
        .into_iter()
        .map(|d| {
            let mut crd = crate::sandbox::apiserver::convert::crd_v1beta1_to_v1(d);
            crd["apiVersion"] = json!("apiextensions.k8s.io/v1");
            let names = &crd["spec"]["names"];
            let (plural, kind) = (
                names["plural"].as_str().unwrap_or_default().to_string(),
                names["kind"].as_str().unwrap_or_default().to_string(),
            );
            crd["status"] = crd_v1(CALICO_GROUP, &plural, &kind, false, false)["status"].clone();
            crd
        })
        .collect()
}

/// The documents of the chart's `crds/crds.yaml`, in the file's order.
fn chart_crd_documents() -> Vec<Value> {
    super::chart_render::split_manifests(&calico_crds_v1beta1_yaml())
        .iter()
        .filter_map(|d| serde_saphyr::from_str::<Value>(d).ok())
        .filter(|d| d.get("kind").is_some())
        .collect()
}

/// The chart's `crds/crds.yaml` as it shipped: apiextensions v1beta1 documents
/// (aws/eks-charts stable/aws-calico/crds/crds.yaml at chart 0.3.10).
pub fn calico_crds_v1beta1_yaml() -> String {
    super::chart::chart_file("crds/crds.yaml").to_string()
}

/// FelixConfiguration `default` as calico-node creates it on first start in
/// KDD mode (projectcalico/calico `node/pkg/lifecycle/startup`).
pub fn felix_configuration_default() -> Value {
    json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "FelixConfiguration",
        "metadata": {"name": "default", "creationTimestamp": super::BASE_TIME},
        "spec": {"bpfLogLevel": "", "logSeverityScreen": "Info", "reportingInterval": "0s"},
    })
}

/// ClusterInformation `default`; calico-node appends `kdd` to CLUSTER_TYPE.
pub fn cluster_information_default(seed: u64, calico_version: &str) -> Value {
    json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "ClusterInformation",
        "metadata": {"name": "default", "creationTimestamp": super::BASE_TIME},
        "spec": {
            "calicoVersion": calico_version,
            "clusterGUID": format!("{:016x}{:016x}", super::ids::hash(seed, "guid-a"), super::ids::hash(seed, "guid-b")),
            "clusterType": "k8s,ecs,kdd",
            "datastoreReady": true,
        },
    })
}

/// Namespaces `deny-aws-imds` exempts, in the order docs/upstream.md ("The seeded
/// cluster's policies") gives them.
pub const IMDS_EXEMPT_NAMESPACES: &[&str] = &[
    "cert-manager",
    "ingress-controllers",
    "kube-system",
    "logging",
    "monitoring",
    "velero",
];

/// The seed organisation's only GlobalNetworkPolicy, exactly as docs/upstream.md
/// ("The seeded cluster's policies") gives it: Log then Deny TCP to the instance
/// metadata service, then Allow all; no order.
pub fn deny_aws_imds() -> Value {
    let exempt = IMDS_EXEMPT_NAMESPACES
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let imds = json!({"nets": ["169.254.169.254/32"], "ports": [80, 443]});
    json!({
        "apiVersion": "crd.projectcalico.org/v1",
        "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "deny-aws-imds", "creationTimestamp": super::BASE_TIME},
        "spec": {
            "selector": format!("projectcalico.org/namespace not in {{{exempt}}}"),
            "types": ["Egress"],
            "egress": [
                {"action": "Log", "protocol": "TCP", "destination": imds.clone()},
                {"action": "Deny", "protocol": "TCP", "destination": imds},
                {"action": "Allow", "destination": {"nets": ["0.0.0.0/0"]}},
            ],
        },
    })
}
