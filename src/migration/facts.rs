//! Facts derived from the raw inventory: which install the cluster runs (chart
//! generation, release, Calico version), node state, CRDs and policy counts.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::refs::CALICO_GROUP;
use crate::cluster::inventory::Inventory;
use crate::cluster::reduce::{Reduced, strip_server_fields};
use crate::helm::{self, Release};
use crate::kinds::{self, is_fargate, node_ready};

/// The 12 CRDs of aws-calico 0.3.x (docs/upstream.md, "The aws-calico 0.3.10 chart";
/// aws/eks-charts stable/aws-calico/crds).
pub const CALICO_CRDS: [&str; 12] = [
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
/// What installed the Calico the cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generation {
    /// kube-system calico-node from the aws-calico chart up to 0.3.10.
    ManifestChart,
    /// kube-system calico-node with no Helm 3 release (kubectl-applied manifests).
    ManifestUnmanaged,
    /// aws-calico 0.3.11 or later: tigera-operator from the chart.
    OperatorChart,
    /// An operator-managed Calico without the aws-calico chart.
    OperatorInstalled,
    /// No Calico agent at all.
    None,
}

/// The `source` block of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub generation: Generation,
    pub chart: Option<String>,
    pub chart_version: Option<String>,
    pub release: Option<String>,
    pub namespace: Option<String>,
    pub release_revision: Option<u32>,
    pub calico_version: Option<String>,
}

/// One node as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFact {
    pub name: String,
    pub ready: bool,
    pub fargate: bool,
}

/// Count and digest of one kind of policy object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyFact {
    pub count: usize,
    /// sha256 over (namespace, name, spec) of every object, sorted.
    pub digest: String,
}

/// The `inventory` block of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub kubernetes_version: String,
    pub nodes: usize,
    pub nodes_not_ready: Vec<String>,
    pub fargate_nodes: Vec<String>,
    pub namespaces: usize,
    pub network_policies: usize,
    pub calico_network_policies: usize,
    pub global_network_policies: usize,
    pub global_network_sets: usize,
    pub network_sets: usize,
    pub host_endpoints: usize,
    /// Number of crd.projectcalico.org CRDs present.
    pub crds: usize,
    pub crds_missing: Vec<String>,
    pub felix_configurations: Vec<String>,
    pub ip_pools: Vec<String>,
    pub policy_digests: BTreeMap<String, PolicyFact>,
    pub calico_node_ready: Option<String>,
    pub typha_replicas: Option<i64>,
    pub operator_present: bool,
    pub installation_present: bool,
}

/// The policy collections whose objects the migration must never lose.
pub const POLICY_KINDS: [&str; 6] = [
    "network_policies",
    "calico_network_policies",
    "global_network_policies",
    "global_network_sets",
    "network_sets",
    "host_endpoints",
];

pub fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

pub fn name_of(v: &Value) -> &str {
    str_at(v, "/metadata/name").unwrap_or("")
}

pub fn node_facts(inv: &Inventory) -> Vec<NodeFact> {
    inv.list("nodes")
        .iter()
        .map(|n| NodeFact {
            name: name_of(n).to_string(),
            ready: kinds::is(n, node_ready),
            fargate: kinds::is(n, is_fargate),
        })
        .collect()
}

/// Every Helm 3 release in the cluster whose chart is `chart`, current revision each.
pub fn helm_releases(inv: &Inventory, chart: &str) -> Result<Vec<Release>, helm::HelmError> {
    let secrets = inv.list("helm3_secrets");
    let mut names: Vec<(String, String)> = secrets
        .iter()
        .filter_map(|s| match helm::detect_release_record(s) {
            Some(helm::ReleaseRecord::Helm3Secret { release, .. }) => {
                Some((str_at(s, "/metadata/namespace")?.to_string(), release))
            }
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for (ns, name) in names {
        let records: Vec<Value> = secrets
            .iter()
            .filter(|s| str_at(s, "/metadata/namespace") == Some(ns.as_str()))
            .cloned()
            .collect();
        if let Some(rel) = helm::current_release(&records, &name)?
            && rel.chart.metadata.name == chart
        {
            out.push(rel);
        }
    }
    Ok(out)
}

/// Helm 2 (Tiller) records: `(namespace/name, release)`.
pub fn helm2_records(inv: &Inventory) -> Vec<String> {
    let mut out: Vec<String> = ["helm2_configmaps", "helm2_secrets"]
        .iter()
        .flat_map(|k| inv.list(k))
        .filter_map(|o| match helm::detect_release_record(o) {
            Some(r) if r.is_helm2() => Some(format!(
                "{} {}/{}",
                str_at(o, "/kind").unwrap_or("?"),
                str_at(o, "/metadata/namespace").unwrap_or(""),
                name_of(o)
            )),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The tag of the calico/node image of a DaemonSet (`v3.19.1`).
pub fn calico_node_version(ds: &Value) -> Option<String> {
    ds.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|c| str_at(c, "/image"))
        .find(|img| img.contains("calico/node") || img.contains("calico-node"))
        .and_then(|img| img.rsplit_once(':').map(|(_, t)| t.to_string()))
        .filter(|t| !t.contains('/'))
}

/// Decide the generation and fill the `source` block.
pub fn source(inv: &Inventory, chart: &str) -> Result<Source, helm::HelmError> {
    let ks_node = inv.find("daemonsets", "kube-system", "calico-node");
    let cs_node = inv.find("daemonsets", "calico-system", "calico-node");
    let operator = operator_present(inv);
    let releases = helm_releases(inv, chart)?;
    let release = releases.first();
    let chart_version = release.map(|r| r.chart.metadata.version.clone());
    let operator_chart = release.is_some_and(|r| {
        crate::migration::profile::parse_version(&r.chart.metadata.version)
            .is_some_and(|v| v >= (0, 3, 11))
    });
    let generation = match (ks_node.is_some(), release.is_some()) {
        _ if operator_chart => Generation::OperatorChart,
        (true, true) => Generation::ManifestChart,
        (true, false) => Generation::ManifestUnmanaged,
        (false, _) if cs_node.is_some() || operator => Generation::OperatorInstalled,
        (false, _) => Generation::None,
    };
    let calico_version = ks_node
        .or(cs_node)
        .and_then(calico_node_version)
        .or_else(|| {
            // An operator install without a readable image: ClusterInformation is not listed,
            // so fall back to the chart's appVersion.
            release.map(|r| format!("v{}", r.chart.metadata.app_version.trim_start_matches('v')))
        });
    Ok(Source {
        generation,
        chart: release.map(|r| r.chart.metadata.name.clone()),
        chart_version,
        release: release.map(|r| r.name.clone()),
        namespace: release.map(|r| r.namespace.clone()),
        release_revision: release.map(|r| r.version),
        calico_version,
    })
}

/// A tigera-operator Deployment anywhere we look, or an Installation.
pub fn operator_present(inv: &Inventory) -> bool {
    inv.list("deployments")
        .iter()
        .any(|d| name_of(d) == "tigera-operator")
}

/// The image tag of the tigera-operator Deployment (`v1.20.1`), if one runs.
pub fn operator_tag(inv: &Inventory) -> Option<String> {
    inv.list("deployments")
        .iter()
        .find(|d| name_of(d) == "tigera-operator")
        .and_then(|d| str_at(d, "/spec/template/spec/containers/0/image"))
        .and_then(|i| i.rsplit_once(':').map(|(_, t)| t.to_string()))
}

/// Whether operator release `tag` always renders policy/v1beta1 objects, so it cannot
/// render on Kubernetes 1.25+: a PodDisruptionBudget up to v1.26.0 (v1.17.4
/// pkg/render/typha.go:117-139, v1.20.1 :117-140) and PodSecurityPolicies until they
/// became conditional in v1.28.0 (pkg/controller/utils/discovery.go).
pub fn operator_renders_v1beta1(tag: &str) -> bool {
    crate::migration::profile::parse_version(tag).is_some_and(|v| v < (1, 28, 0))
}

/// sha256 of the canonical JSON of `v` (serde_json maps are sorted by key).
pub fn digest(v: &Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// The object without fields the server manages (for digests and drift).
pub fn desired_part(o: &Value) -> Value {
    let mut o = o.clone();
    strip_server_fields(&mut o);
    o
}

/// Count and digest of reduced policies: sha256 of the JSON array of their desired
/// parts sorted by their text, i.e. `digest(&Value::Array(sorted desired_part))`,
/// hashed from the texts kept at read time without building the array again.
fn policy_fact(objs: &[Reduced]) -> PolicyFact {
    let mut parts: Vec<&str> = objs
        .iter()
        .map(|o| o.desired.as_deref().unwrap_or("null"))
        .collect();
    parts.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"[");
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b",");
        }
        h.update(p.as_bytes());
    }
    h.update(b"]");
    PolicyFact {
        count: objs.len(),
        digest: hex::encode(h.finalize()),
    }
}

pub fn summary(inv: &Inventory) -> Summary {
    let nodes = node_facts(inv);
    let crd_names: Vec<&str> = inv
        .list("crds")
        .iter()
        .filter(|c| str_at(c, "/spec/group") == Some(CALICO_GROUP))
        .filter_map(|c| str_at(c, "/spec/names/plural"))
        .collect();
    let names = |key: &str| {
        inv.list(key)
            .iter()
            .map(|o| name_of(o).to_string())
            .collect()
    };
    let ks_node = inv.find("daemonsets", "kube-system", "calico-node");
    Summary {
        kubernetes_version: inv.server_version.clone(),
        nodes: nodes.len(),
        nodes_not_ready: nodes
            .iter()
            .filter(|n| !n.ready)
            .map(|n| n.name.clone())
            .collect(),
        fargate_nodes: nodes
            .iter()
            .filter(|n| n.fargate)
            .map(|n| n.name.clone())
            .collect(),
        namespaces: inv.count("namespaces"),
        network_policies: inv.count("network_policies"),
        calico_network_policies: inv.count("calico_network_policies"),
        global_network_policies: inv.count("global_network_policies"),
        global_network_sets: inv.count("global_network_sets"),
        network_sets: inv.count("network_sets"),
        host_endpoints: inv.count("host_endpoints"),
        crds: crd_names.len(),
        crds_missing: CALICO_CRDS
            .iter()
            .filter(|c| !crd_names.contains(c))
            .map(|c| format!("{c}.{CALICO_GROUP}"))
            .collect(),
        felix_configurations: names("felix_configurations"),
        ip_pools: names("ip_pools"),
        policy_digests: POLICY_KINDS
            .iter()
            .map(|k| (k.to_string(), policy_fact(inv.reduced(k))))
            .collect(),
        calico_node_ready: ks_node.map(|d| {
            let n = |p: &str| d.pointer(p).and_then(Value::as_i64).unwrap_or(0);
            format!(
                "{}/{}",
                n("/status/numberReady"),
                n("/status/desiredNumberScheduled")
            )
        }),
        typha_replicas: inv
            .find("deployments", "kube-system", "calico-typha")
            .and_then(|d| d.pointer("/spec/replicas").and_then(Value::as_i64)),
        operator_present: operator_present(inv),
        installation_present: !inv.list("installations").is_empty(),
    }
}

pub(crate) fn int_at(v: &Value, p: &str) -> Option<i64> {
    v.pointer(p).and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::inventory::{Collection, Listed, collections};
    use crate::cluster::reduce::Keep;
    use crate::sandbox::scenario::{self, ScenarioConfig};

    /// What a LIST of `c` returns from `objs` (label selectors aside: no reduced
    /// collection has one).
    fn listed(c: &Collection, objs: &[Value]) -> Vec<Value> {
        objs.iter()
            .filter(|o| str_at(o, "/apiVersion") == Some(c.group_version))
            .filter(|o| str_at(o, "/kind") == Some(c.kind))
            .filter(|o| {
                c.namespace
                    .is_none_or(|ns| str_at(o, "/metadata/namespace") == Some(ns))
            })
            .cloned()
            .collect()
    }

    fn reduced_inventory(objs: &[Value]) -> Inventory {
        let listed = collections()
            .into_iter()
            .map(|c| {
                let mut l = Listed::empty(c.keep());
                for o in listed(&c, objs) {
                    l.push(&c, o);
                }
                (c, Some(l))
            })
            .collect();
        Inventory::assemble("v1.29.15-eks".into(), listed)
    }

    /// The digest as it was computed from whole objects before they were reduced.
    fn whole_policy_fact(objs: &[Value]) -> PolicyFact {
        let mut parts: Vec<Value> = objs.iter().map(desired_part).collect();
        parts.sort_by_key(|p| p.to_string());
        PolicyFact {
            count: objs.len(),
            digest: digest(&Value::Array(parts)),
        }
    }

    #[test]
    fn the_policy_kinds_are_the_collections_read_reduced_to_their_desired_part() {
        let desired: Vec<&str> = collections()
            .iter()
            .filter(|c| c.keep() == Keep::Desired)
            .map(|c| c.key)
            .collect();
        assert_eq!(desired, POLICY_KINDS.to_vec());
    }

    #[test]
    fn a_reduced_inventory_counts_and_digests_as_the_whole_objects_did() {
        let cfg = ScenarioConfig {
            namespaces: 40,
            ..ScenarioConfig::default()
        };
        let mut objs = scenario::build(&cfg).unwrap_or_else(|e| panic!("{e:?}"));
        let all = collections();
        let col = |key: &str| {
            all.iter()
                .find(|c| c.key == key)
                .unwrap_or_else(|| panic!("no collection {key}"))
        };
        let s = summary(&reduced_inventory(&objs));
        for key in POLICY_KINDS {
            let whole = listed(col(key), &objs);
            assert_eq!(s.policy_digests[key], whole_policy_fact(&whole), "{key}");
        }
        assert!(s.network_policies > 40, "{}", s.network_policies);
        assert_eq!(
            s.network_policies,
            listed(col("network_policies"), &objs).len()
        );
        let namespaces = listed(col("namespaces"), &objs);
        assert_eq!(s.namespaces, namespaces.len());
        let kube_system = namespaces.iter().find(|n| name_of(n) == "kube-system");
        let uid = kube_system
            .and_then(|n| str_at(n, "/metadata/uid"))
            .unwrap_or_default();
        assert!(!uid.is_empty());
        assert_eq!(reduced_inventory(&objs).cluster_uid, uid);
        // One policy edited: its kind's digest moves, and still agrees.
        let np = objs
            .iter_mut()
            .find(|o| str_at(o, "/kind") == Some("NetworkPolicy"))
            .unwrap_or_else(|| panic!("no NetworkPolicy"));
        np["spec"]["edited"] = Value::Bool(true);
        let edited = summary(&reduced_inventory(&objs));
        assert_ne!(edited.policy_digests, s.policy_digests);
        for key in POLICY_KINDS {
            let whole = listed(col(key), &objs);
            assert_eq!(
                edited.policy_digests[key],
                whole_policy_fact(&whole),
                "{key}"
            );
        }
    }
}
