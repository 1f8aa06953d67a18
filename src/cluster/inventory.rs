//! Read everything the plan depends on: paginated LISTs (`limit` + `continue`, as
//! kubectl pages) run a few at a time, retried through transient errors. Kinds the
//! server does not serve (404: no Calico CRDs, PSPs removed in 1.25) read as absent.
//! Policies and namespaces are reduced page by page ([`super::reduce`]): the plan keeps
//! only their identity and digest, never the whole listed set.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::errors::{Conflicts, Permission, Scope, answer, with_retry};
use super::reduce::{Keep, Reduced, reduce};
use crate::engine::RetryPolicy;

/// Objects per LIST page (kubectl's default chunk size).
pub const PAGE_SIZE: u32 = 500;
/// LISTs in flight at once.
pub const CONCURRENCY: usize = 6;

/// Namespaces where Calico's own workloads can live.
pub const CALICO_NAMESPACES: [&str; 3] = ["kube-system", "calico-system", "tigera-operator"];

/// One collection to read: a URL path prefix plus an optional namespace and selector.
#[derive(Debug, Clone)]
pub struct Collection {
    pub key: &'static str,
    pub group_version: &'static str,
    pub resource: &'static str,
    pub kind: &'static str,
    pub namespace: Option<&'static str>,
    pub label_selector: Option<&'static str>,
}

impl Collection {
    fn path(&self) -> String {
        let base = if self.group_version.contains('/') {
            format!("/apis/{}", self.group_version)
        } else {
            format!("/api/{}", self.group_version)
        };
        match self.namespace {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.resource),
            None => format!("{base}/{}", self.resource),
        }
    }

    /// Whether the resource is namespaced (read across all namespaces when
    /// `namespace` is None). Every namespaced resource of [`collections`] is here.
    fn namespaced(&self) -> bool {
        const NAMESPACED: [&str; 8] = [
            "networkpolicies",
            "networksets",
            "secrets",
            "configmaps",
            "pods",
            "daemonsets",
            "deployments",
            "poddisruptionbudgets",
        ];
        NAMESPACED.contains(&self.resource)
    }

    /// The collection, for messages: `NetworkPolicies (networking.k8s.io/v1) in all
    /// namespaces`, `Secrets (v1) labelled owner=helm in kube-system`, `Nodes (v1)`.
    pub fn describe(&self) -> String {
        let mut out = format!("{} ({})", plural(self.kind), self.group_version);
        if let Some(sel) = self.label_selector {
            out.push_str(&format!(" labelled {sel}"));
        }
        match self.namespace {
            Some(ns) => out.push_str(&format!(" in {ns}")),
            None if self.namespaced() => out.push_str(" in all namespaces"),
            None => {}
        }
        out
    }

    /// How much of each object the plan needs. The policy keys are
    /// `migration::facts::POLICY_KINDS`; a test there holds the two lists together.
    pub fn keep(&self) -> Keep {
        match self.key {
            "namespaces" => Keep::Identity,
            "network_policies"
            | "calico_network_policies"
            | "global_network_policies"
            | "global_network_sets"
            | "network_sets"
            | "host_endpoints" => Keep::Desired,
            _ => Keep::Whole,
        }
    }

    /// The permission a LIST of this collection needs.
    pub fn permission(&self) -> Permission {
        let scope = match self.namespace {
            Some(ns) => Scope::Namespace(ns.to_string()),
            None if self.namespaced() => Scope::AllNamespaces,
            None => Scope::Cluster,
        };
        Permission::new("list", self.resource, self.group_version, scope)
    }
}

/// `NetworkPolicy` -> `NetworkPolicies`, `TigeraStatus` -> `TigeraStatuses`.
fn plural(kind: &str) -> String {
    if let Some(stem) = kind.strip_suffix('y') {
        format!("{stem}ies")
    } else if kind.ends_with('s') {
        format!("{kind}es")
    } else {
        format!("{kind}s")
    }
}

const fn col(
    key: &'static str,
    group_version: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespace: Option<&'static str>,
    label_selector: Option<&'static str>,
) -> Collection {
    Collection {
        key,
        group_version,
        resource,
        kind,
        namespace,
        label_selector,
    }
}

/// Everything `plan` reads, by key. Helm's records are read in kube-system only: the
/// operator migrates a kube-system install, so that is where its release lives, and
/// reading Secrets cluster-wide is a privilege the Job of deploy/ does not need.
pub fn collections() -> Vec<Collection> {
    let mut v = vec![
        col("namespaces", "v1", "namespaces", "Namespace", None, None),
        col("nodes", "v1", "nodes", "Node", None, None),
        col(
            "helm3_secrets",
            "v1",
            "secrets",
            "Secret",
            Some("kube-system"),
            Some("owner=helm"),
        ),
        col(
            "helm3_configmaps",
            "v1",
            "configmaps",
            "ConfigMap",
            Some("kube-system"),
            Some("owner=helm"),
        ),
        col(
            "helm2_configmaps",
            "v1",
            "configmaps",
            "ConfigMap",
            Some("kube-system"),
            Some("OWNER=TILLER"),
        ),
        col(
            "helm2_secrets",
            "v1",
            "secrets",
            "Secret",
            Some("kube-system"),
            Some("OWNER=TILLER"),
        ),
        col(
            "crds",
            "apiextensions.k8s.io/v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            None,
            None,
        ),
        col(
            "network_policies",
            "networking.k8s.io/v1",
            "networkpolicies",
            "NetworkPolicy",
            None,
            None,
        ),
        col(
            "calico_network_policies",
            "crd.projectcalico.org/v1",
            "networkpolicies",
            "NetworkPolicy",
            None,
            None,
        ),
        col(
            "global_network_policies",
            "crd.projectcalico.org/v1",
            "globalnetworkpolicies",
            "GlobalNetworkPolicy",
            None,
            None,
        ),
        col(
            "global_network_sets",
            "crd.projectcalico.org/v1",
            "globalnetworksets",
            "GlobalNetworkSet",
            None,
            None,
        ),
        col(
            "network_sets",
            "crd.projectcalico.org/v1",
            "networksets",
            "NetworkSet",
            None,
            None,
        ),
        col(
            "host_endpoints",
            "crd.projectcalico.org/v1",
            "hostendpoints",
            "HostEndpoint",
            None,
            None,
        ),
        col(
            "felix_configurations",
            "crd.projectcalico.org/v1",
            "felixconfigurations",
            "FelixConfiguration",
            None,
            None,
        ),
        col(
            "ip_pools",
            "crd.projectcalico.org/v1",
            "ippools",
            "IPPool",
            None,
            None,
        ),
        col(
            "installations",
            "operator.tigera.io/v1",
            "installations",
            "Installation",
            None,
            None,
        ),
        col(
            "tigera_statuses",
            "operator.tigera.io/v1",
            "tigerastatuses",
            "TigeraStatus",
            None,
            None,
        ),
        col(
            "pod_security_policies",
            "policy/v1beta1",
            "podsecuritypolicies",
            "PodSecurityPolicy",
            None,
            None,
        ),
        col(
            "calico_node_pods",
            "v1",
            "pods",
            "Pod",
            Some("kube-system"),
            Some("app.kubernetes.io/name=calico-node"),
        ),
    ];
    for ns in CALICO_NAMESPACES {
        v.push(col(
            "daemonsets",
            "apps/v1",
            "daemonsets",
            "DaemonSet",
            Some(ns),
            None,
        ));
        v.push(col(
            "deployments",
            "apps/v1",
            "deployments",
            "Deployment",
            Some(ns),
            None,
        ));
        v.push(col(
            "pdbs",
            "policy/v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            Some(ns),
            None,
        ));
        v.push(col(
            "configmaps",
            "v1",
            "configmaps",
            "ConfigMap",
            Some(ns),
            None,
        ));
    }
    v
}

/// One collection as read: whole objects, or reduced ones ([`Collection::keep`]).
#[derive(Debug, Clone)]
pub enum Listed {
    Whole(Vec<Value>),
    Reduced(Vec<Reduced>),
}

impl Listed {
    pub fn empty(keep: Keep) -> Self {
        match keep {
            Keep::Whole => Listed::Whole(Vec::new()),
            Keep::Desired | Keep::Identity => Listed::Reduced(Vec::new()),
        }
    }

    /// Take one listed item: named with the collection's apiVersion and kind (a LIST's
    /// items omit them), then kept whole or reduced.
    pub fn push(&mut self, c: &Collection, mut item: Value) {
        if let Some(obj) = item.as_object_mut() {
            obj.entry("apiVersion")
                .or_insert_with(|| Value::String(c.group_version.into()));
            obj.entry("kind")
                .or_insert_with(|| Value::String(c.kind.into()));
        }
        match self {
            Listed::Whole(v) => v.push(item),
            Listed::Reduced(v) => v.push(reduce(item, c.keep())),
        }
    }
}

/// The objects read from the cluster, by collection key: whole in `objects`, reduced in
/// `reduced` ([`Collection::keep`]). A key maps to `None` when the server does not serve
/// that kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    /// `gitVersion` of the API server.
    pub server_version: String,
    /// UID of the kube-system namespace (the journal's cluster identity).
    pub cluster_uid: String,
    pub objects: BTreeMap<String, Option<Vec<Value>>>,
    pub reduced: BTreeMap<String, Option<Vec<Reduced>>>,
}

impl Inventory {
    /// Assemble what the LISTs returned (pure: [`read`] does the I/O). Collections
    /// read per namespace under one key are joined; a kind not served anywhere it is
    /// read cluster-wide reads as not served.
    pub fn assemble(server_version: String, listed: Vec<(Collection, Option<Listed>)>) -> Self {
        let mut inv = Inventory {
            server_version,
            ..Inventory::default()
        };
        for (c, items) in listed {
            let key = c.key.to_string();
            let not_served = items.is_none() && c.namespace.is_none();
            match c.keep() {
                Keep::Whole => {
                    let entry = inv.objects.entry(key).or_insert(Some(vec![]));
                    match (entry.as_mut(), items) {
                        (Some(acc), Some(Listed::Whole(mut v))) => acc.append(&mut v),
                        _ if not_served => *entry = None,
                        _ => {}
                    }
                }
                Keep::Desired | Keep::Identity => {
                    let entry = inv.reduced.entry(key).or_insert(Some(vec![]));
                    match (entry.as_mut(), items) {
                        (Some(acc), Some(Listed::Reduced(mut v))) => acc.append(&mut v),
                        _ if not_served => *entry = None,
                        _ => {}
                    }
                }
            }
        }
        for list in inv.objects.values_mut().flatten() {
            list.sort_by_cached_key(sort_key);
        }
        for list in inv.reduced.values_mut().flatten() {
            list.sort_unstable_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        }
        inv.cluster_uid = inv
            .reduced("namespaces")
            .iter()
            .find(|n| &*n.name == "kube-system")
            .and_then(|n| n.uid.as_deref())
            .unwrap_or_default()
            .to_string();
        inv
    }

    /// Whole objects of a collection (empty when absent, not served, or reduced).
    pub fn list(&self, key: &str) -> &[Value] {
        self.objects
            .get(key)
            .and_then(|o| o.as_deref())
            .unwrap_or(&[])
    }

    /// Reduced objects of a collection (empty when absent, not served, or kept whole).
    pub fn reduced(&self, key: &str) -> &[Reduced] {
        self.reduced
            .get(key)
            .and_then(|o| o.as_deref())
            .unwrap_or(&[])
    }

    /// How many objects a collection holds, whole or reduced.
    pub fn count(&self, key: &str) -> usize {
        self.list(key).len() + self.reduced(key).len()
    }

    /// Whether the server serves the collection's kind.
    pub fn served(&self, key: &str) -> bool {
        self.objects.get(key).is_some_and(|o| o.is_some())
            || self.reduced.get(key).is_some_and(|o| o.is_some())
    }

    /// The object named `name` in namespace `ns` among a collection kept whole.
    pub fn find(&self, key: &str, ns: &str, name: &str) -> Option<&Value> {
        self.list(key).iter().find(|o| {
            o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                && o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns)
        })
    }

    /// Minor version of Kubernetes parsed from `gitVersion` (`v1.29.15-eks` -> 29).
    pub fn minor(&self) -> Option<u32> {
        self.server_version
            .trim_start_matches('v')
            .split('.')
            .nth(1)
            .and_then(|m| m.trim_end_matches('+').parse().ok())
    }
}

/// Why the inventory could not be read: a LIST the API server refused (after the
/// retries, for a transient answer) or never answered, as one sentence: the collection
/// ([`Collection::describe`]), what the API server answered ([`answer`]) and what to do
/// (on a 403, the permission to grant). The Kubernetes error is kept for callers that
/// class it ([`InventoryError::kube`]) but is not the `source`: its text is already in
/// the sentence, and the CLI prints every source after it.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("listing {what}: {}; {}", answer(.error), .permission.advice(.error))]
    Api {
        what: String,
        permission: Permission,
        error: kube::Error,
    },
}

impl InventoryError {
    /// The Kubernetes error behind this one.
    pub fn kube(&self) -> &kube::Error {
        match self {
            InventoryError::Api { error, .. } => error,
        }
    }
}

/// Read every collection, `CONCURRENCY` at a time.
pub async fn read(
    client: &kube::Client,
    server_version: String,
    retry: &RetryPolicy,
) -> Result<Inventory, InventoryError> {
    let listed: Vec<(Collection, Option<Listed>)> = stream::iter(collections())
        .map(|c| async move {
            let items = list_all(client, &c, retry).await?;
            Ok::<_, InventoryError>((c, items))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Inventory::assemble(server_version, listed))
}

fn sort_key(o: &Value) -> (String, String) {
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

/// One LIST page: its items and the token of the next page. Typed, so the rest of the
/// response is skipped rather than built.
#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    items: Option<Vec<Value>>,
    #[serde(default)]
    metadata: PageMeta,
}

#[derive(Deserialize, Default)]
struct PageMeta {
    #[serde(default, rename = "continue")]
    cont: Option<String>,
}

/// LIST one collection page by page, each page's items kept or reduced as
/// [`Collection::keep`] says before the next is asked for. `None` when the kind is not
/// served (404).
pub async fn list_all(
    client: &kube::Client,
    c: &Collection,
    retry: &RetryPolicy,
) -> Result<Option<Listed>, InventoryError> {
    let mut out = Listed::empty(c.keep());
    let mut cont: Option<String> = None;
    loop {
        let mut query = format!("limit={PAGE_SIZE}");
        if let Some(sel) = c.label_selector {
            query.push_str("&labelSelector=");
            query.push_str(&encode(sel));
        }
        if let Some(token) = &cont {
            query.push_str("&continue=");
            query.push_str(&encode(token));
        }
        let uri = format!("{}?{query}", c.path());
        let page: Result<Page, kube::Error> = with_retry(retry, Conflicts::Fail, || {
            let uri = uri.clone();
            async move {
                let req = http::Request::get(uri)
                    .body(Vec::new())
                    .map_err(kube::Error::HttpError)?;
                client.request::<Page>(req).await
            }
        })
        .await;
        let page = match page {
            Ok(p) => p,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(error) => {
                return Err(InventoryError::Api {
                    what: c.describe(),
                    permission: c.permission(),
                    error,
                });
            }
        };
        for item in page.items.unwrap_or_default() {
            out.push(c, item);
        }
        cont = page.metadata.cont.filter(|s| !s.is_empty());
        if cont.is_none() {
            return Ok(Some(out));
        }
    }
}

/// Percent-encode a query value (selectors hold `=`, `,`, `!`; tokens hold `=`, `+`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_selectors() {
        assert_eq!(encode("a.b/c=d,e!=f"), "a.b%2Fc%3Dd%2Ce%21%3Df");
    }

    #[test]
    fn collections_read_as_kinds_with_their_api_and_namespace() {
        let all = collections();
        let find = |key: &str, ns: Option<&str>| {
            all.iter()
                .find(|c| c.key == key && c.namespace == ns)
                .map(Collection::describe)
                .unwrap_or_default()
        };
        assert_eq!(
            find("network_policies", None),
            "NetworkPolicies (networking.k8s.io/v1) in all namespaces"
        );
        assert_eq!(find("nodes", None), "Nodes (v1)");
        assert_eq!(
            find("helm3_secrets", Some("kube-system")),
            "Secrets (v1) labelled owner=helm in kube-system"
        );
        assert_eq!(
            find("tigera_statuses", None),
            "TigeraStatuses (operator.tigera.io/v1)"
        );
        let np = all.iter().find(|c| c.key == "calico_network_policies");
        assert_eq!(np.map(|c| c.permission().scope), Some(Scope::AllNamespaces));
    }

    #[test]
    fn minor_version() {
        let inv = Inventory {
            server_version: "v1.29.15-eks-473151a".into(),
            ..Inventory::default()
        };
        assert_eq!(inv.minor(), Some(29));
    }
}
