//! Objects of any kind, as JSON, for the migration steps: get, list, server-side
//! apply, merge patch, delete, and restore from a snapshot. Every call retries
//! transient errors (cluster::errors) and resolves kinds through discovery once.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, ObjectList, Patch, PatchParams, PostParams,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::errors::{Conflicts, advice, answer, with_retry};
use crate::engine::RetryPolicy;

/// The field manager of every write the tool makes.
pub const FIELD_MANAGER: &str = "calico-migrate";

/// Which object: `apiVersion`, `kind`, namespace (None when cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjRef {
    pub fn new(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Self {
        ObjRef {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// The reference of an object as the API returns it.
    pub fn of(obj: &Value) -> Option<Self> {
        Some(ObjRef {
            api_version: obj.get("apiVersion")?.as_str()?.to_string(),
            kind: obj.get("kind")?.as_str()?.to_string(),
            namespace: obj
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            name: obj.pointer("/metadata/name")?.as_str()?.to_string(),
        })
    }

    /// The object with its API version, for messages:
    /// `PodSecurityPolicy tigera-operator (policy/v1beta1)`.
    pub fn describe(&self) -> String {
        if self.name.is_empty() {
            return match &self.namespace {
                Some(ns) => format!("{} objects in {ns} ({})", self.kind, self.api_version),
                None => format!("{} objects ({})", self.kind, self.api_version),
            };
        }
        format!("{self} ({})", self.api_version)
    }

    fn gvk(&self) -> GroupVersionKind {
        let (group, version) = match self.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", self.api_version.as_str()),
        };
        GroupVersionKind::gvk(group, version, &self.kind)
    }
}

impl fmt::Display for ObjRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A failed call, as one sentence: verb, object (kind, name, apiVersion), what the
/// API server answered (HTTP status, reason, message) and what to do. The Kubernetes
/// error is kept for callers that class it ([`ObjectError::kube`]) but is not the
/// error's `source`: its text is already in the sentence, and a source would be
/// printed a second time by every `{:#}` and by the CLI's error chain.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("{action} {object}: {}; {}", answer(.error), advice(.error))]
    Api {
        /// What was being done, as a gerund: `creating`, `reading`, ...
        action: &'static str,
        /// [`ObjRef::describe`] of the object.
        object: String,
        error: kube::Error,
    },
    /// The cluster does not serve the object's apiVersion (discovery answered 404), or
    /// serves it without that kind.
    #[error(
        "{action} {object}: {}; install the CRD that defines {kind}, or use an apiVersion \
         this cluster serves (`kubectl api-resources` lists them)",
        unknown_detail(.api_version, .kind, .error)
    )]
    Unknown {
        action: &'static str,
        object: String,
        api_version: String,
        kind: String,
        error: kube::Error,
    },
    #[error("{0} has no apiVersion, kind or metadata.name; every object needs all three")]
    Malformed(String),
}

fn unknown_detail(api_version: &str, kind: &str, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(_) => format!(
            "{} when asked for {api_version}: the cluster does not serve that API",
            answer(e)
        ),
        _ => format!("the cluster serves {api_version} but no kind {kind} in it"),
    }
}

/// Whether discovery's answer means "not served": the group/version answers 404
/// (upstream removes whole group/versions, e.g. policy/v1beta1 in 1.25:
/// https://kubernetes.io/docs/reference/using-api/deprecation-guide/), or it is
/// served without the kind. Anything else (403, 5xx, no answer) is an error.
fn is_unserved(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
        || matches!(
            e,
            kube::Error::Discovery(
                kube::error::DiscoveryError::MissingKind(_)
                    | kube::error::DiscoveryError::MissingResource(_)
            )
        )
}

impl ObjectError {
    /// The Kubernetes error behind this one, for callers that class it.
    pub fn kube(&self) -> Option<&kube::Error> {
        match self {
            ObjectError::Api { error, .. } | ObjectError::Unknown { error, .. } => Some(error),
            ObjectError::Malformed(_) => None,
        }
    }

    /// Whether the API answered 404 Not Found.
    pub fn is_not_found(&self) -> bool {
        matches!(self.kube(), Some(kube::Error::Api(s)) if s.code == 404)
    }
}

/// A client for objects of any kind. A clone shares the client and the kinds resolved
/// (a task of its own, such as the takeover's guard, resolves nothing again).
#[derive(Clone)]
pub struct Objects {
    client: kube::Client,
    retry: RetryPolicy,
    kinds: Arc<Mutex<HashMap<String, (ApiResource, ApiCapabilities)>>>,
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Objects {
    pub fn new(client: kube::Client, retry: RetryPolicy) -> Self {
        Objects {
            client,
            retry,
            kinds: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Forget resolved kinds (after CRDs were created or deleted).
    pub fn forget_kinds(&self) {
        if let Ok(mut k) = self.kinds.lock() {
            k.clear();
        }
    }

    async fn resolve(
        &self,
        action: &'static str,
        r: &ObjRef,
    ) -> Result<(ApiResource, ApiCapabilities), ObjectError> {
        let key = format!("{}/{}", r.api_version, r.kind);
        if let Some(hit) = self.kinds.lock().ok().and_then(|k| k.get(&key).cloned()) {
            return Ok(hit);
        }
        let gvk = r.gvk();
        let found = with_retry(&self.retry, Conflicts::Fail, || {
            kube::discovery::pinned_kind(&self.client, &gvk)
        })
        .await
        .map_err(|error| {
            if is_unserved(&error) {
                ObjectError::Unknown {
                    action,
                    object: r.describe(),
                    api_version: r.api_version.clone(),
                    kind: r.kind.clone(),
                    error,
                }
            } else {
                ObjectError::Api {
                    action,
                    object: r.describe(),
                    error,
                }
            }
        })?;
        if let Ok(mut k) = self.kinds.lock() {
            k.insert(key, found.clone());
        }
        Ok(found)
    }

    async fn api(
        &self,
        action: &'static str,
        r: &ObjRef,
    ) -> Result<Api<DynamicObject>, ObjectError> {
        let (ar, caps) = self.resolve(action, r).await?;
        Ok(match (&caps.scope, &r.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client.clone(), &ar),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        })
    }

    fn err(action: &'static str, r: &ObjRef) -> impl FnOnce(kube::Error) -> ObjectError {
        let object = r.describe();
        move |error| ObjectError::Api {
            action,
            object,
            error,
        }
    }

    /// The object, or None when it does not exist (or its kind is not served).
    pub async fn get(&self, r: &ObjRef) -> Result<Option<Value>, ObjectError> {
        let api = match self.api("reading", r).await {
            Ok(api) => api,
            Err(ObjectError::Unknown { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let got = with_retry(&self.retry, Conflicts::Fail, || api.get_opt(&r.name))
            .await
            .map_err(Self::err("reading", r))?;
        Ok(got.map(|o| to_value(&o, r)))
    }

    /// The API to list `probe`'s kind with (in its namespace, or all); None when the
    /// kind is not served.
    async fn list_api(&self, probe: &ObjRef) -> Result<Option<Api<DynamicObject>>, ObjectError> {
        let (ar, caps) = match self.resolve("listing", probe).await {
            Ok(x) => x,
            Err(ObjectError::Unknown { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(match (caps.scope, probe.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }))
    }

    /// Every object of a kind (in `namespace`, or all), optionally by label selector.
    /// An unserved kind lists as empty.
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        labels: Option<&str>,
    ) -> Result<Vec<Value>, ObjectError> {
        self.list_selected(api_version, kind, namespace, labels, None)
            .await
    }

    /// [`Objects::list`] with a field selector too (`spec.nodeName=NODE` for the pods of
    /// one node: the API server filters, so the answer does not grow with the cluster).
    pub async fn list_selected(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Vec<Value>, ObjectError> {
        let probe = ObjRef::new(api_version, kind, namespace, "");
        let Some(api) = self.list_api(&probe).await? else {
            return Ok(Vec::new());
        };
        let mut lp = ListParams::default();
        if let Some(l) = labels {
            lp = lp.labels(l);
        }
        if let Some(f) = fields {
            lp = lp.fields(f);
        }
        self.every_page(
            &probe,
            lp,
            |lp| {
                let api = api.clone();
                async move { api.list(&lp).await }
            },
            |o| to_value(&o, &probe),
        )
        .await
    }

    /// The metadata of every object of a kind (in `namespace`, or all), without the
    /// rest: a list the API server answers with `PartialObjectMetadataList` (Accept
    /// `application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`, what
    /// client-go's metadata client, k8s.io/client-go/metadata/metadata.go, and kube's
    /// `Api::list_metadata`, kube-rs/kube#1137, send). For the loops that poll
    /// every node each period and read only names and labels: a Node's status (its
    /// conditions, images, addresses) is most of it, and would be sent and parsed
    /// node by node at every poll. An unserved kind lists as empty.
    pub async fn list_metadata(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, ObjectError> {
        let probe = ObjRef::new(api_version, kind, namespace, "");
        let Some(api) = self.list_api(&probe).await? else {
            return Ok(Vec::new());
        };
        self.every_page(
            &probe,
            ListParams::default(),
            |lp| {
                let api = api.clone();
                async move { api.list_metadata(&lp).await }
            },
            |o| o.metadata,
        )
        .await
    }

    /// Every page of a LIST, 500 objects a page, following `continue` (each page
    /// retried as the retry policy says), each object kept as `keep` makes it.
    async fn every_page<O: Clone, T, Fut>(
        &self,
        probe: &ObjRef,
        base: ListParams,
        list: impl Fn(ListParams) -> Fut,
        keep: impl Fn(O) -> T,
    ) -> Result<Vec<T>, ObjectError>
    where
        Fut: std::future::Future<Output = Result<ObjectList<O>, kube::Error>>,
    {
        let mut out = Vec::new();
        let mut lp = base.limit(500);
        loop {
            let page = with_retry(&self.retry, Conflicts::Fail, || list(lp.clone()))
                .await
                .map_err(Self::err("listing", probe))?;
            out.extend(page.items.into_iter().map(&keep));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => return Ok(out),
            }
        }
    }

    /// Server-side apply `obj` with field manager `calico-migrate`, forcing conflicts.
    pub async fn apply(&self, obj: &Value) -> Result<Value, ObjectError> {
        let r = ObjRef::of(obj).ok_or_else(|| ObjectError::Malformed(brief(obj)))?;
        let api = self.api("applying", &r).await?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let body = strip_server_fields(obj);
        let patch = Patch::Apply(&body);
        let out = with_retry(&self.retry, Conflicts::Retry, || {
            api.patch(&r.name, &pp, &patch)
        })
        .await
        .map_err(Self::err("applying", &r))?;
        Ok(to_value(&out, &r))
    }

    /// JSON merge patch; None when the object does not exist.
    pub async fn merge(&self, r: &ObjRef, patch: &Value) -> Result<Option<Value>, ObjectError> {
        let api = self.api("patching", r).await?;
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(patch);
        match with_retry(&self.retry, Conflicts::Retry, || {
            api.patch(&r.name, &pp, &patch)
        })
        .await
        {
            Ok(o) => Ok(Some(to_value(&o, r))),
            Err(e) if is_code(&e, 404) => Ok(None),
            Err(e) => Err(Self::err("patching", r)(e)),
        }
    }

    /// JSON merge patch of the `scale` subresource's replicas.
    pub async fn scale(&self, r: &ObjRef, replicas: i64) -> Result<bool, ObjectError> {
        let api = self.api("scaling", r).await?;
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
        match with_retry(&self.retry, Conflicts::Retry, || {
            api.patch_scale(&r.name, &pp, &patch)
        })
        .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_code(&e, 404) => Ok(false),
            Err(e) => Err(Self::err("scaling", r)(e)),
        }
    }

    /// Delete (background propagation); false when it was already gone.
    pub async fn delete(&self, r: &ObjRef) -> Result<bool, ObjectError> {
        let api = match self.api("deleting", r).await {
            Ok(api) => api,
            Err(ObjectError::Unknown { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let dp = DeleteParams::background();
        match with_retry(&self.retry, Conflicts::Fail, || api.delete(&r.name, &dp)).await {
            Ok(_) => Ok(true),
            Err(e) if is_code(&e, 404) => Ok(false),
            Err(e) => Err(Self::err("deleting", r)(e)),
        }
    }

    /// Create `obj` (server fields stripped); Ok(false) when it already exists.
    pub async fn create(&self, obj: &Value) -> Result<bool, ObjectError> {
        let r = ObjRef::of(obj).ok_or_else(|| ObjectError::Malformed(brief(obj)))?;
        let api = self.api("creating", &r).await?;
        let body: DynamicObject = serde_json::from_value(strip_server_fields(obj))
            .map_err(|_| ObjectError::Malformed(r.to_string()))?;
        let pp = PostParams::default();
        match with_retry(&self.retry, Conflicts::Fail, || api.create(&pp, &body)).await {
            Ok(_) => Ok(true),
            Err(e) if is_code(&e, 409) => Ok(false),
            Err(e) => Err(Self::err("creating", &r)(e)),
        }
    }

    /// Make the live object equal to `snapshot` (ignoring server-managed fields):
    /// create it when missing, replace it when it differs, leave it when equal.
    /// Returns whether anything was written. An object being deleted is waited out
    /// by the caller (this reports it as an error so the step retries).
    pub async fn restore(&self, snapshot: &Value) -> Result<bool, ObjectError> {
        let r = ObjRef::of(snapshot).ok_or_else(|| ObjectError::Malformed(brief(snapshot)))?;
        let api = self.api("restoring", &r).await?;
        let want = strip_server_fields(snapshot);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let live = with_retry(&self.retry, Conflicts::Fail, || api.get_opt(&r.name))
                .await
                .map_err(Self::err("reading", &r))?;
            let result = match live {
                None => {
                    let body: DynamicObject = serde_json::from_value(want.clone())
                        .map_err(|_| ObjectError::Malformed(r.to_string()))?;
                    api.create(&PostParams::default(), &body)
                        .await
                        .map(|_| true)
                }
                Some(live) => {
                    let live = to_value(&live, &r);
                    if same_object(&live, snapshot) {
                        return Ok(false);
                    }
                    if live.pointer("/metadata/deletionTimestamp").is_some() {
                        return Err(ObjectError::Api {
                            action: "restoring",
                            object: r.describe(),
                            error: kube::Error::Api(Box::new(
                                kube::core::Status::failure(
                                    "the object is being deleted; try again once it is gone",
                                    "Conflict",
                                )
                                .with_code(409),
                            )),
                        });
                    }
                    let mut body = want.clone();
                    body["metadata"]["resourceVersion"] = live
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(Value::Null);
                    let body: DynamicObject = serde_json::from_value(body)
                        .map_err(|_| ObjectError::Malformed(r.to_string()))?;
                    api.replace(&r.name, &PostParams::default(), &body)
                        .await
                        .map(|_| true)
                }
            };
            match result {
                Ok(w) => return Ok(w),
                // Someone wrote in between (or created it): read again and retry.
                Err(e) if is_code(&e, 409) && attempts < 5 => continue,
                Err(e) if super::errors::is_transient(&e, Conflicts::Fail) && attempts < 5 => {
                    tokio::time::sleep(self.retry.min_delay * attempts).await;
                    continue;
                }
                Err(e) => return Err(Self::err("restoring", &r)(e)),
            }
        }
    }

    /// The kinds the API server serves at `api_version` (its discovery document,
    /// `/api/v1` or `/apis/GROUP/VERSION`, subresources left out), or None when it
    /// does not serve that group/version (404, as upstream answers for a removed one).
    pub async fn served_kinds(
        &self,
        api_version: &str,
    ) -> Result<Option<BTreeSet<String>>, ObjectError> {
        let found = with_retry(&self.retry, Conflicts::Fail, || async {
            if api_version.contains('/') {
                self.client.list_api_group_resources(api_version).await
            } else {
                self.client.list_core_api_resources(api_version).await
            }
        })
        .await;
        match found {
            Ok(list) => Ok(Some(
                list.resources
                    .into_iter()
                    .filter(|r| !r.name.contains('/'))
                    .map(|r| r.kind)
                    .collect(),
            )),
            Err(e) if is_code(&e, 404) => Ok(None),
            Err(error) => Err(ObjectError::Api {
                action: "discovering",
                object: format!("the API {api_version}"),
                error,
            }),
        }
    }
}

fn to_value(o: &DynamicObject, r: &ObjRef) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    // Lists return items without apiVersion/kind; put them back for snapshots.
    if let Some(m) = v.as_object_mut() {
        m.entry("apiVersion")
            .or_insert_with(|| json!(r.api_version));
        m.entry("kind").or_insert_with(|| json!(r.kind));
    }
    v
}

fn brief(obj: &Value) -> String {
    let s = obj.to_string();
    s.chars().take(120).collect()
}

/// Metadata fields the server owns: never written back, never compared.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Annotations the API server writes itself: a DaemonSet's template generation is its
/// counter, not desired state; it rises with every template change and a client's
/// value is ignored (kubernetes pkg/registry/apps/daemonset/strategy.go
/// PrepareForUpdate), so a rollback that puts a template back leaves it higher.
pub fn drop_server_annotations(meta: &mut serde_json::Map<String, Value>) {
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("deprecated.daemonset.template.generation");
    }
}

/// The object without server-managed metadata and without `status`.
pub fn strip_server_fields(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in SERVER_METADATA {
            m.remove(*k);
        }
        drop_server_annotations(m);
        // Empty maps are the same as absent ones for every API object.
        for k in ["labels", "annotations"] {
            if m.get(k)
                .and_then(Value::as_object)
                .is_some_and(|x| x.is_empty())
            {
                m.remove(k);
            }
        }
    }
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    v
}

/// Equal ignoring server-managed fields and status.
pub fn same_object(a: &Value, b: &Value) -> bool {
    strip_server_fields(a) == strip_server_fields(b)
}

/// Whether `live` already holds every field of `want` (maps: each key, recursively;
/// lists and scalars: equal). Server-side apply of `want` would change nothing then.
pub fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| l.get(k).is_some_and(|lv| contains(lv, wv))),
        (Value::Array(l), Value::Array(w)) => {
            l.len() == w.len() && l.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        _ => live == want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_comparison_ignore_server_fields() {
        let a = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "calico-node", "namespace": "kube-system", "uid": "1",
                         "resourceVersion": "5", "labels": {}},
            "spec": {"x": 1}, "status": {"numberReady": 3}});
        let b = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "calico-node", "namespace": "kube-system", "uid": "2",
                         "resourceVersion": "9"},
            "spec": {"x": 1}});
        assert!(same_object(&a, &b));
        let mut c = b.clone();
        c["spec"]["x"] = json!(2);
        assert!(!same_object(&a, &c));
        let r = ObjRef::of(&a).unwrap_or_else(|| panic!("ref"));
        assert_eq!(r.to_string(), "DaemonSet kube-system/calico-node");
        assert_eq!(r.gvk().group, "apps");
        let core = ObjRef::new("v1", "Node", None, "n1");
        assert_eq!(core.gvk().group, "");
        assert_eq!(core.to_string(), "Node n1");
    }
}
