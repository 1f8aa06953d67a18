//! The resource types the sandbox serves: built-in kinds and those defined by
//! CustomResourceDefinitions at run time.

use std::collections::BTreeMap;

use serde_json::Value;

use super::convert;
use super::versions::{self, KubernetesVersion};

/// (group, plural resource): the storage identity of a type. Every served version of
/// it reads the same stored object: built-ins through `convert.rs`, custom resources
/// with conversion `None` (only the `apiVersion` shown changes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

/// (group, version, resource): what a client addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Gvr {
    pub group: String,
    pub version: String,
    pub resource: String,
}

impl Gvr {
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
        }
    }

    /// From an `apiVersion` such as `v1` or `apps/v1`.
    pub fn from_api_version(api_version: &str, resource: &str) -> Self {
        let (g, v) = split_api_version(api_version);
        Self::new(g, v, resource)
    }

    pub fn gr(&self) -> GroupResource {
        GroupResource {
            group: self.group.clone(),
            resource: self.resource.clone(),
        }
    }

    pub fn api_version(&self) -> String {
        api_version(&self.group, &self.version)
    }
}

pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// A column of `kubectl get`'s table (CRD additionalPrinterColumns shape).
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_: String,
    pub json_path: String,
    pub priority: i64,
}

/// The part of an object a request addresses: the object itself or one of the
/// subresources the sandbox serves (the last segment of
/// `.../namespaces/NS/RESOURCE/NAME/SUBRESOURCE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Subresource {
    /// The object itself.
    #[default]
    Main,
    /// `status`: only `.status` is written, the rest is kept.
    Status,
    /// `scale`: the autoscaling/v1 Scale view of the replicas.
    Scale,
}

impl Subresource {
    /// The URL segment, also what managedFields record ("" for the object itself).
    pub fn as_str(self) -> &'static str {
        match self {
            Subresource::Main => "",
            Subresource::Status => "status",
            Subresource::Scale => "scale",
        }
    }

    /// From a URL segment ("" for the object itself); None for one the sandbox does not serve.
    pub fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "" => Some(Subresource::Main),
            "status" => Some(Subresource::Status),
            "scale" => Some(Subresource::Scale),
            _ => None,
        }
    }
}

/// Where the scale subresource reads and writes replicas.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    pub resource: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// Defined by a CRD (unstructured: no strategic merge patch).
    pub custom: bool,
    /// Extra printer columns (CRDs); built-ins have theirs in `table.rs`.
    pub columns: Vec<Column>,
}

impl ResourceType {
    pub fn gr(&self) -> GroupResource {
        GroupResource {
            group: self.group.clone(),
            resource: self.resource.clone(),
        }
    }

    /// `pods`, `deployments.apps`: how the real server names a resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    pub fn preferred_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    /// The version objects are kept at (`convert::to_storage`): the preferred one,
    /// which for every multi-version built-in here is v1, upstream's storage version.
    pub fn storage_version(&self) -> &str {
        self.preferred_version()
    }
}

struct B {
    rt: ResourceType,
}

impl B {
    fn new(group: &str, version: &str, resource: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            rt: ResourceType {
                group: group.into(),
                versions: vec![version.into()],
                resource: resource.into(),
                singular: kind.to_lowercase(),
                kind: kind.into(),
                namespaced,
                short_names: vec![],
                categories: vec![],
                status: false,
                scale: None,
                custom: false,
                columns: vec![],
            },
        }
    }
    /// Also served at `version` (after the ones named before), where
    /// `versions::served` says so.
    fn also(mut self, version: &str) -> Self {
        self.rt.versions.push(version.into());
        self
    }
    fn short(mut self, names: &[&str]) -> Self {
        self.rt.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }
    fn all(mut self) -> Self {
        self.rt.categories = vec!["all".into()];
        self
    }
    fn status(mut self) -> Self {
        self.rt.status = true;
        self
    }
    fn scale(mut self) -> Self {
        self.rt.scale = Some(ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: None,
        });
        self
    }
}

/// The built-in kinds this project, Helm and kubectl touch, each with every version
/// some supported minor serves (k8s.io/api, Kubernetes 1.21 to 1.34), preferred first;
/// [`builtins_at`] keeps what one minor serves.
pub fn builtins() -> Vec<ResourceType> {
    vec![
        B::new("", "v1", "namespaces", "Namespace", false)
            .short(&["ns"])
            .status(),
        B::new("", "v1", "nodes", "Node", false)
            .short(&["no"])
            .status(),
        B::new("", "v1", "pods", "Pod", true)
            .short(&["po"])
            .all()
            .status(),
        B::new("", "v1", "services", "Service", true)
            .short(&["svc"])
            .all()
            .status(),
        B::new("", "v1", "endpoints", "Endpoints", true).short(&["ep"]),
        B::new("", "v1", "configmaps", "ConfigMap", true).short(&["cm"]),
        B::new("", "v1", "secrets", "Secret", true),
        B::new("", "v1", "serviceaccounts", "ServiceAccount", true).short(&["sa"]),
        B::new(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
        )
        .short(&["pvc"])
        .status(),
        B::new("", "v1", "events", "Event", true).short(&["ev"]),
        B::new("apps", "v1", "daemonsets", "DaemonSet", true)
            .short(&["ds"])
            .all()
            .status(),
        B::new(
            "apps",
            "v1",
            "controllerrevisions",
            "ControllerRevision",
            true,
        ),
        B::new("apps", "v1", "deployments", "Deployment", true)
            .short(&["deploy"])
            .all()
            .status()
            .scale(),
        B::new("apps", "v1", "replicasets", "ReplicaSet", true)
            .short(&["rs"])
            .all()
            .status()
            .scale(),
        B::new("apps", "v1", "statefulsets", "StatefulSet", true)
            .short(&["sts"])
            .all()
            .status()
            .scale(),
        B::new("batch", "v1", "jobs", "Job", true).all().status(),
        B::new(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
        )
        .also("v1beta1")
        .short(&["pdb"])
        .status(),
        B::new(
            "policy",
            "v1beta1",
            "podsecuritypolicies",
            "PodSecurityPolicy",
            false,
        )
        .short(&["psp"]),
        B::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
        )
        .also("v1beta1"),
        B::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
        )
        .also("v1beta1"),
        B::new("rbac.authorization.k8s.io", "v1", "roles", "Role", true).also("v1beta1"),
        B::new(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
        )
        .also("v1beta1"),
        B::new(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
        )
        .short(&["netpol"]),
        B::new("coordination.k8s.io", "v1", "leases", "Lease", true).also("v1beta1"),
        // Answered by authz_http from RBAC objects; listed so discovery shows them.
        B::new(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
        ),
        B::new(
            "authorization.k8s.io",
            "v1",
            "selfsubjectrulesreviews",
            "SelfSubjectRulesReview",
            false,
        ),
        B::new("events.k8s.io", "v1", "events", "Event", true)
            .also("v1beta1")
            .short(&["ev"]),
        B::new(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        )
        .also("v1beta1")
        .short(&["crd", "crds"])
        .status(),
    ]
    .into_iter()
    .map(|b| b.rt)
    .collect()
}

/// The built-in kinds served at `kv`, each with the versions served there
/// (`versions::WINDOWS`); a kind with none left (PodSecurityPolicy from 1.25) is gone.
pub fn builtins_at(kv: KubernetesVersion) -> Vec<ResourceType> {
    builtins()
        .into_iter()
        .filter_map(|mut t| {
            t.versions
                .retain(|v| versions::served(&t.group, v, &t.resource, kv));
            (!t.versions.is_empty()).then_some(t)
        })
        .collect()
}

/// The group/resource of a built-in kind that `kv` serves at no version at all, where an
/// earlier minor served it at `api_version` (PodSecurityPolicy, policy/v1beta1, from 1.25).
pub fn retired_at(api_version: &str, kind: &str, kv: KubernetesVersion) -> Option<GroupResource> {
    let (g, v) = split_api_version(api_version);
    let t = builtins()
        .into_iter()
        .find(|t| t.group == g && t.kind == kind && t.versions.iter().any(|x| x == v))?;
    let gone = t
        .versions
        .iter()
        .all(|x| !versions::served(&t.group, x, &t.resource, kv));
    gone.then(|| t.gr())
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Validate a CRD and derive the type it defines. An apiextensions.k8s.io/v1beta1
/// document is converted to the v1 shape first (`convert::crd_v1beta1_to_v1`).
/// Errors are (field, message) pairs for a 422.
pub fn from_crd(crd: &Value) -> Result<ResourceType, Vec<(&'static str, String)>> {
    let converted;
    let crd =
        if crd.get("apiVersion").and_then(Value::as_str) == Some("apiextensions.k8s.io/v1beta1") {
            converted = convert::crd_v1beta1_to_v1(crd.clone());
            &converted
        } else {
            crd
        };
    let mut errs = Vec::new();
    let group = str_at(crd, &["spec", "group"])
        .unwrap_or_default()
        .to_string();
    let plural = str_at(crd, &["spec", "names", "plural"])
        .unwrap_or_default()
        .to_string();
    let kind = str_at(crd, &["spec", "names", "kind"])
        .unwrap_or_default()
        .to_string();
    let name = str_at(crd, &["metadata", "name"]).unwrap_or_default();
    if group.is_empty() {
        errs.push(("spec.group", "Required value".to_string()));
    }
    if plural.is_empty() {
        errs.push(("spec.names.plural", "Required value".to_string()));
    }
    if kind.is_empty() {
        errs.push(("spec.names.kind", "Required value".to_string()));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errs.push((
            "metadata.name",
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    let scope = str_at(crd, &["spec", "scope"]).unwrap_or_default();
    if scope != "Namespaced" && scope != "Cluster" {
        errs.push((
            "spec.scope",
            format!(
                "Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""
            ),
        ));
    }
    let versions: Vec<&Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push((
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version".to_string(),
        ));
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let served: Vec<&Value> = versions
        .iter()
        .copied()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
        .collect();
    // Preferred version: the storage one if served, else the first served.
    let mut names: Vec<String> = served
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    if let Some(storage) = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
        .and_then(|v| v.get("name").and_then(Value::as_str))
        && let Some(i) = names.iter().position(|n| n == storage)
    {
        let s = names.remove(i);
        names.insert(0, s);
    }
    let main = served.first().copied().unwrap_or(versions[0]);
    let sub = main.get("subresources");
    let scale = sub.and_then(|s| s.get("scale")).map(|s| ScalePaths {
        spec_replicas: s
            .get("specReplicasPath")
            .and_then(Value::as_str)
            .unwrap_or(".spec.replicas")
            .into(),
        status_replicas: s
            .get("statusReplicasPath")
            .and_then(Value::as_str)
            .unwrap_or(".status.replicas")
            .into(),
        label_selector: s
            .get("labelSelectorPath")
            .and_then(Value::as_str)
            .map(String::from),
    });
    let columns = main
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .filter_map(|c| {
                    Some(Column {
                        name: c.get("name")?.as_str()?.to_string(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .to_string(),
                        json_path: c.get("jsonPath")?.as_str()?.to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let names_v = crd.pointer("/spec/names");
    Ok(ResourceType {
        group,
        versions: names,
        singular: str_at(crd, &["spec", "names", "singular"])
            .map(String::from)
            .unwrap_or_else(|| kind.to_lowercase()),
        resource: plural,
        kind,
        namespaced: scope == "Namespaced",
        short_names: strings(names_v.and_then(|n| n.get("shortNames"))),
        categories: strings(names_v.and_then(|n| n.get("categories"))),
        status: sub.and_then(|s| s.get("status")).is_some(),
        scale,
        custom: true,
        columns,
    })
}

/// Every served type, keyed by (group, resource).
#[derive(Debug, Clone)]
pub struct Registry {
    types: BTreeMap<GroupResource, ResourceType>,
}

impl Default for Registry {
    /// The built-ins of the default minor (`KubernetesVersion::default`).
    fn default() -> Self {
        Self::at(KubernetesVersion::default())
    }
}

impl Registry {
    /// The built-ins served at `kv`.
    pub fn at(kv: KubernetesVersion) -> Self {
        Self {
            types: builtins_at(kv).into_iter().map(|t| (t.gr(), t)).collect(),
        }
    }

    pub fn get(&self, gr: &GroupResource) -> Option<&ResourceType> {
        self.types.get(gr)
    }

    /// The type served at group/version/resource.
    pub fn lookup(&self, gvr: &Gvr) -> Option<&ResourceType> {
        self.types.get(&gvr.gr()).filter(|t| t.serves(&gvr.version))
    }

    /// The type of an object's apiVersion + kind.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        let (g, v) = split_api_version(api_version);
        self.types
            .values()
            .find(|t| t.group == g && t.kind == kind && t.serves(v))
    }

    pub fn insert(&mut self, t: ResourceType) {
        self.types.insert(t.gr(), t);
    }

    pub fn remove(&mut self, gr: &GroupResource) -> Option<ResourceType> {
        self.types.remove(gr)
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }
}
