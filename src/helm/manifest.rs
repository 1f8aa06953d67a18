//! Rendered manifests and what `helm uninstall` would do with them.
//!
//! helm/helm `pkg/releaseutil/manifest.go` splits the stored manifest on `---`
//! lines and reads the `# Source:` comment of each document;
//! `pkg/action/uninstall.go` deletes what that stored manifest lists (never the
//! live objects, never the chart's `crds/`), skipping documents annotated
//! `helm.sh/resource-policy: keep`, in the order of
//! `pkg/releaseutil/kind_sorter.go` (UninstallOrder). It first builds every
//! object through the API discovery, so a kind whose API version the cluster no
//! longer serves makes the uninstall fail.

use serde_json::Value;

use super::{HelmError, Release};

/// One document of a rendered manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestObject {
    /// `templates/...` path from the `# Source:` comment ("" when absent).
    pub source: String,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `metadata.namespace` as rendered (Helm fills in the release namespace when absent).
    pub namespace: Option<String>,
    /// `helm.sh/resource-policy: keep` is set in the stored manifest.
    pub keep: bool,
    pub body: Value,
}

/// An object `helm uninstall` would act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    /// None for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
    /// Kubernetes minor version (1.x) that stopped serving this apiVersion/kind.
    pub removed_in: Option<u32>,
}

/// Split a manifest into its documents; empty documents are skipped.
pub fn manifest_objects(manifest: &str) -> Result<Vec<ManifestObject>, HelmError> {
    let mut out = Vec::new();
    for (index, doc) in split_documents(manifest).into_iter().enumerate() {
        let source = doc
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("# Source:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let err = |problem: String| HelmError::Manifest {
            index,
            source_path: if source.is_empty() {
                "no # Source: comment".into()
            } else {
                source.clone()
            },
            problem,
        };
        let body: Value = match serde_saphyr::from_str::<Option<Value>>(&doc) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => return Err(err(format!("not valid YAML: {e}"))),
        };
        if body.is_null() {
            continue;
        }
        let s = |p: &str| body.pointer(p).and_then(Value::as_str).map(String::from);
        let api_version = s("/apiVersion").ok_or_else(|| err("apiVersion is missing".into()))?;
        let kind = s("/kind").ok_or_else(|| err("kind is missing".into()))?;
        let name = s("/metadata/name").ok_or_else(|| err("metadata.name is missing".into()))?;
        let keep = body
            .pointer("/metadata/annotations/helm.sh~1resource-policy")
            .and_then(Value::as_str)
            .is_some_and(|v| v.trim() == "keep");
        out.push(ManifestObject {
            source: source.clone(),
            api_version,
            kind,
            name,
            namespace: s("/metadata/namespace"),
            keep,
            body,
        });
    }
    Ok(out)
}

/// Documents between `---` separator lines, as Helm's SplitManifests sees them.
fn split_documents(manifest: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in manifest.lines() {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            docs.push(String::new());
            continue;
        }
        if let Some(d) = docs.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.retain(|d| !d.trim().is_empty());
    docs
}

/// Helm's resource-policy annotation and the value that makes `helm uninstall` leave an
/// object (helm pkg/kube/resource_policy.go).
pub const RESOURCE_POLICY: &str = "helm.sh/resource-policy";
pub const KEEP_POLICY: &str = "keep";

/// The stored manifest with every document annotated `helm.sh/resource-policy: keep`.
/// `helm uninstall` decides what to leave from the stored manifest, never from the live
/// objects (helm pkg/action/uninstall.go `deleteRelease`: `SplitManifests(rel.Manifest)`
/// then `filterManifestsToKeep`), so only this protects the objects from it. Each
/// document keeps its `# Source:` line; its YAML is written again from the parsed object.
pub fn with_keep_policy(manifest: &str) -> Result<String, HelmError> {
    let mut out = String::new();
    for (index, obj) in manifest_objects(manifest)?.into_iter().enumerate() {
        let mut body = obj.body;
        body["metadata"]["annotations"][RESOURCE_POLICY] = Value::from(KEEP_POLICY);
        let yaml = serde_saphyr::to_string(&body).map_err(|e| HelmError::Manifest {
            index,
            source_path: obj.source.clone(),
            problem: format!("cannot be written back as YAML ({e})"),
        })?;
        out.push_str("---\n");
        if !obj.source.is_empty() {
            out.push_str(&format!("# Source: {}\n", obj.source));
        }
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// What `helm uninstall` would delete, in Helm's uninstall order: every object
/// of the stored manifest except those marked keep. `crds/` files are never in
/// the manifest, so CRDs installed from there are never deleted. A manifest
/// that does not parse gives an empty plan; call [`manifest_objects`] for the error.
pub fn uninstall_plan(rel: &Release) -> Vec<ObjectRef> {
    let Ok(objs) = manifest_objects(&rel.manifest) else {
        return Vec::new();
    };
    let mut refs: Vec<(usize, usize, ObjectRef)> = objs
        .into_iter()
        .filter(|o| !o.keep)
        .enumerate()
        .map(|(i, o)| {
            let namespace = if is_cluster_scoped(&o.kind) {
                None
            } else {
                Some(o.namespace.unwrap_or_else(|| rel.namespace.clone()))
            };
            let rank = uninstall_rank(&o.kind);
            let removed_in = removed_api(&o.api_version, &o.kind);
            (
                rank,
                i,
                ObjectRef {
                    api_version: o.api_version,
                    kind: o.kind,
                    namespace,
                    name: o.name,
                    removed_in,
                },
            )
        })
        .collect();
    refs.sort_by_key(|(rank, i, _)| (*rank, *i));
    refs.into_iter().map(|(_, _, r)| r).collect()
}

/// Objects of the plan whose API a cluster at Kubernetes 1.`minor` no longer
/// serves: `helm uninstall` fails on them ("unable to build kubernetes objects
/// for delete") instead of deleting anything.
pub fn uninstall_blockers(rel: &Release, minor: u32) -> Vec<ObjectRef> {
    uninstall_plan(rel)
        .into_iter()
        .filter(|r| r.removed_in.is_some_and(|m| m <= minor))
        .collect()
}

/// helm/helm `pkg/releaseutil/kind_sorter.go` UninstallOrder; unknown kinds go last.
const UNINSTALL_ORDER: &[&str] = &[
    "APIService",
    "Ingress",
    "IngressClass",
    "Service",
    "CronJob",
    "Job",
    "StatefulSet",
    "HorizontalPodAutoscaler",
    "Deployment",
    "ReplicaSet",
    "ReplicationController",
    "Pod",
    "DaemonSet",
    "RoleBindingList",
    "RoleBinding",
    "RoleList",
    "Role",
    "ClusterRoleBindingList",
    "ClusterRoleBinding",
    "ClusterRoleList",
    "ClusterRole",
    "CustomResourceDefinition",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "StorageClass",
    "ConfigMap",
    "SecretList",
    "Secret",
    "ServiceAccount",
    "PodDisruptionBudget",
    "PodSecurityPolicy",
    "LimitRange",
    "ResourceQuota",
    "NetworkPolicy",
    "Namespace",
    "PriorityClass",
];

fn uninstall_rank(kind: &str) -> usize {
    UNINSTALL_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(UNINSTALL_ORDER.len())
}

/// Kinds of this project's world that are cluster-scoped.
pub fn is_cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace"
            | "Node"
            | "PersistentVolume"
            | "StorageClass"
            | "ClusterRole"
            | "ClusterRoleBinding"
            | "CustomResourceDefinition"
            | "PriorityClass"
            | "PodSecurityPolicy"
            | "APIService"
            | "IngressClass"
            | "MutatingWebhookConfiguration"
            | "ValidatingWebhookConfiguration"
            // crd.projectcalico.org / operator.tigera.io cluster-scoped kinds
            | "GlobalNetworkPolicy"
            | "GlobalNetworkSet"
            | "FelixConfiguration"
            | "ClusterInformation"
            | "BGPConfiguration"
            | "BGPPeer"
            | "BlockAffinity"
            | "HostEndpoint"
            | "IPAMBlock"
            | "IPPool"
            | "Installation"
            | "APIServer"
            | "TigeraStatus"
    )
}

/// The Kubernetes minor version that removed `api_version` for `kind`, from the
/// Kubernetes deprecated API migration guide (kubernetes/website
/// `content/en/docs/reference/using-api/deprecation-guide.md`).
pub fn removed_api(api_version: &str, kind: &str) -> Option<u32> {
    match (api_version, kind) {
        ("extensions/v1beta1", "Ingress") => Some(22),
        ("extensions/v1beta1", "PodSecurityPolicy") => Some(16),
        ("extensions/v1beta1", _) => Some(16),
        ("apps/v1beta1" | "apps/v1beta2", _) => Some(16),
        ("rbac.authorization.k8s.io/v1beta1", _) => Some(22),
        ("apiextensions.k8s.io/v1beta1", _) => Some(22),
        ("networking.k8s.io/v1beta1", _) => Some(22),
        ("scheduling.k8s.io/v1beta1", _) => Some(22),
        ("admissionregistration.k8s.io/v1beta1", _) => Some(22),
        ("policy/v1beta1", "PodDisruptionBudget" | "PodSecurityPolicy") => Some(25),
        ("batch/v1beta1", "CronJob") => Some(25),
        ("autoscaling/v2beta1", _) => Some(25),
        ("autoscaling/v2beta2", _) => Some(26),
        ("flowcontrol.apiserver.k8s.io/v1beta1", _) => Some(26),
        ("flowcontrol.apiserver.k8s.io/v1beta2", _) => Some(29),
        _ => None,
    }
}
