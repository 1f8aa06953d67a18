//! The generic object store: every object is a `serde_json::Value` keyed by
//! (group, resource, namespace, name), with a monotonically increasing
//! resourceVersion, a change feed, and the semantics of the real registry
//! (k8s.io/apiserver pkg/registry/generic/registry/store.go): uid,
//! creationTimestamp, generation, conflicts, status/scale subresources.
//! Deletion, garbage collection, namespaces and CRDs live in `lifecycle.rs`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::select::{FieldSelector, LabelSelector};
use super::ssa::{self, Writer};
use super::types::{GroupResource, Gvr, Registry, ResourceType};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the store's feed (what watches are built from).
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub rv: u64,
    pub gr: GroupResource,
    pub namespace: String,
    pub name: String,
    pub kind: EventType,
    pub object: Value,
    /// The previous state, for MODIFIED (lets selector watches turn it into ADDED/DELETED).
    pub old: Option<Value>,
}

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `fieldManager`; defaults to "unknown" (the real server derives it from the user agent).
    pub field_manager: Option<String>,
    /// `force` of server-side apply.
    pub force: bool,
    /// `dryRun=All`: validate and compute, store nothing.
    pub dry_run: bool,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

pub(super) type Key = (String, String);

pub(super) struct State {
    pub rv: u64,
    pub registry: Registry,
    pub objects: HashMap<GroupResource, BTreeMap<Key, Value>>,
    pub history: VecDeque<Arc<WatchEvent>>,
    /// Every event with rv > floor is still in `history`.
    pub floor: u64,
    pub cap: usize,
    pub rng: fastrand::Rng,
    pub tx: broadcast::Sender<Arc<WatchEvent>>,
}

/// How a create treats its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A client's create: status is reset, fields are managed.
    Client,
    /// Seeding: objects are taken as they are, status included.
    Load,
}

/// The object store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    state: Arc<Mutex<State>>,
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub(super) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(super) fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// The object as seen at the requested version.
pub fn present(mut obj: Value, rt: &ResourceType, version: &str) -> Value {
    obj["apiVersion"] = json!(super::types::api_version(&rt.group, version));
    obj["kind"] = json!(rt.kind);
    obj
}

fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.starts_with(|c: char| c.is_ascii_alphanumeric())
                && l.ends_with(|c: char| c.is_ascii_alphanumeric())
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn name_problem(rt: &ResourceType, name: &str) -> Option<String> {
    let path_segment_ok = !name.contains('/') && !name.contains('%') && name != "." && name != "..";
    let ok = match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "namespaces") => name.len() <= 63 && !name.contains('.') && dns_subdomain(name),
        ("rbac.authorization.k8s.io", _) => path_segment_ok,
        _ if rt.custom => path_segment_ok,
        _ => dns_subdomain(name),
    };
    (!ok).then(|| {
        format!(
            "Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case \
             alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    })
}

/// Kinds whose registry strategy maintains `metadata.generation` (custom resources always do).
fn tracks_generation(rt: &ResourceType) -> bool {
    rt.custom
        || matches!(
            rt.group.as_str(),
            "apps" | "batch" | "policy" | "networking.k8s.io" | "apiextensions.k8s.io"
        )
}

/// Everything except metadata and status: a change here bumps `generation`.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Value::Object(m) = &mut o {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

/// Equal apart from resourceVersion and managedFields: such an update writes nothing.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        let m = meta_mut(&mut v);
        m.remove("resourceVersion");
        m.remove("managedFields");
        if let Value::Object(o) = &mut v {
            o.remove("apiVersion");
        }
        v
    };
    strip(a) == strip(b)
}

impl State {
    pub fn new(cap: usize, seed: u64) -> Self {
        let (tx, _) = broadcast::channel(cap.max(16));
        Self {
            rv: 0,
            registry: Registry::default(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            floor: 0,
            cap,
            rng: fastrand::Rng::with_seed(seed),
            tx,
        }
    }

    pub fn uid(&mut self) -> String {
        let h = |rng: &mut fastrand::Rng, n: usize| -> String {
            (0..n)
                .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
                .collect()
        };
        let a = h(&mut self.rng, 8);
        let b = h(&mut self.rng, 4);
        let c = h(&mut self.rng, 3);
        let d = h(&mut self.rng, 3);
        let e = h(&mut self.rng, 12);
        format!("{a}-{b}-4{c}-a{d}-{e}")
    }

    pub fn rt(&self, gvr: &Gvr) -> Result<ResourceType, ApiError> {
        self.registry
            .lookup(gvr)
            .cloned()
            .ok_or_else(ApiError::no_route)
    }

    pub fn get_obj(&self, gr: &GroupResource, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(gr)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Store `object` (or remove it for Deleted), stamp a new resourceVersion, feed watchers.
    pub fn commit(
        &mut self,
        gr: &GroupResource,
        kind: EventType,
        mut object: Value,
        old: Option<Value>,
    ) -> Value {
        self.rv += 1;
        meta_mut(&mut object).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let ns = meta_str(&object, "namespace").to_string();
        let name = meta_str(&object, "name").to_string();
        let map = self.objects.entry(gr.clone()).or_default();
        if kind == EventType::Deleted {
            map.remove(&(ns.clone(), name.clone()));
        } else {
            map.insert((ns.clone(), name.clone()), object.clone());
        }
        let ev = Arc::new(WatchEvent {
            rv: self.rv,
            gr: gr.clone(),
            namespace: ns,
            name,
            kind,
            object: object.clone(),
            old,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.cap {
            if let Some(e) = self.history.pop_front() {
                self.floor = e.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(ev);
        object
    }

    /// Create; `Origin::Load` keeps status and skips field management.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        mut obj: Value,
        w: &Writer,
        origin: Origin,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type {})",
                rt.kind
            )));
        }
        check_kind(rt, &obj)?;
        let ns = self.place(rt, ns, &mut obj)?;
        let name = {
            let meta = meta_mut(&mut obj);
            let name = meta
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if name.is_empty() {
                let prefix = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if prefix.is_empty() {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        "",
                        &[(
                            "metadata.name",
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
                const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                let suffix: String = (0..5)
                    .map(|_| ALPHA[self.rng.usize(0..ALPHA.len())] as char)
                    .collect();
                format!("{prefix}{suffix}")
            } else {
                name
            }
        };
        if let Some(why) = name_problem(rt, &name) {
            return Err(ApiError::invalid(
                &rt.kind,
                &name,
                &[("metadata.name", why)],
            ));
        }
        if rt.namespaced {
            match self.get_obj(&namespaces(), "", &ns) {
                None => return Err(ApiError::namespace_not_found(&ns)),
                Some(n) if !meta_str(n, "deletionTimestamp").is_empty() => {
                    return Err(ApiError::forbidden(format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        rt.qualified()
                    )));
                }
                _ => {}
            }
        }
        let gr = rt.gr();
        if self.get_obj(&gr, &ns, &name).is_some() {
            return Err(ApiError::already_exists(rt, &name));
        }
        // Seeded objects keep their uid: their dependents' ownerReferences name it,
        // and garbage collection follows those references.
        let seeded_uid = (origin == Origin::Load)
            .then(|| meta_str(&obj, "uid").to_string())
            .filter(|u| !u.is_empty());
        let uid = match seeded_uid {
            Some(u) => u,
            None => self.uid(),
        };
        {
            let meta = meta_mut(&mut obj);
            meta.insert("name".into(), json!(name));
            meta.insert("uid".into(), json!(uid));
            meta.entry("creationTimestamp").or_insert(json!(now()));
            if origin == Origin::Client {
                meta.insert("creationTimestamp".into(), json!(now()));
                meta.remove("deletionTimestamp");
                meta.remove("deletionGracePeriodSeconds");
            }
            if tracks_generation(rt) {
                meta.insert("generation".into(), json!(1));
            } else {
                meta.remove("generation");
            }
            meta.remove("resourceVersion");
            meta.remove("selfLink");
        }
        if origin == Origin::Client
            && rt.status
            && let Value::Object(m) = &mut obj
        {
            m.remove("status");
            if rt.kind == "Pod" && rt.group.is_empty() {
                m.insert(
                    "status".into(),
                    json!({"phase": "Pending", "qosClass": "BestEffort"}),
                );
            }
        }
        let seeded_status = (origin == Origin::Load)
            .then(|| obj.get("status").cloned())
            .flatten();
        self.admit(rt, &name, &mut obj, None)?;
        if let Some(st) = seeded_status {
            obj["status"] = st;
        }
        obj = present(obj, rt, version);
        if origin == Origin::Client {
            ssa::record_update(&Value::Null, &mut obj, w);
        }
        if dry_run {
            return Ok(obj);
        }
        if rt.group == "apiextensions.k8s.io" {
            self.serve_crd(&obj)?;
        }
        Ok(self.commit(&gr, EventType::Added, obj, None))
    }

    /// Namespace of an object for this request; fills it in or rejects a mismatch.
    fn place(&self, rt: &ResourceType, ns: &str, obj: &mut Value) -> Result<String, ApiError> {
        let meta = meta_mut(obj);
        if !rt.namespaced {
            meta.remove("namespace");
            return Ok(String::new());
        }
        let body_ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !body_ns.is_empty() && !ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let ns = if ns.is_empty() {
            body_ns.to_string()
        } else {
            ns.to_string()
        };
        let ns = if ns.is_empty() {
            "default".to_string()
        } else {
            ns
        };
        meta.insert("namespace".into(), json!(ns));
        Ok(ns)
    }

    /// Type-specific defaults and validation on every write.
    fn admit(
        &self,
        rt: &ResourceType,
        name: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        match (rt.group.as_str(), rt.resource.as_str()) {
            ("", "namespaces") => {
                let labels = meta_mut(obj).entry("labels").or_insert(json!({}));
                if let Value::Object(l) = labels {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
                if old.is_none() {
                    obj["spec"] = json!({"finalizers": ["kubernetes"]});
                    obj["status"] = json!({"phase": "Active"});
                }
            }
            ("", "configmaps")
                if meta_str(obj, "namespace") == super::faults::NAMESPACE
                    && name == super::faults::CONFIGMAP =>
            {
                super::faults::FaultConfig::from_data(obj.get("data"))
                    .map_err(|e| ApiError::invalid(&rt.kind, name, &[("data", e.to_string())]))?;
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let t = super::types::from_crd(obj).map_err(|errs| {
                    ApiError::invalid(
                        &rt.kind,
                        name,
                        &errs
                            .iter()
                            .map(|(f, m)| (*f, m.clone()))
                            .collect::<Vec<_>>(),
                    )
                })?;
                if let Some(existing) = self.registry.get(&t.gr())
                    && !existing.custom
                {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        name,
                        &[(
                            "spec.names.plural",
                            format!(
                                "Invalid value: \"{}\": is already served by a built-in type",
                                t.resource
                            ),
                        )],
                    ));
                }
                let conds = json!([
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now()}
                ]);
                let accepted = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
                let stored: Vec<String> = t.versions.first().cloned().into_iter().collect();
                obj["status"] = json!({"conditions": conds, "acceptedNames": accepted, "storedVersions": stored});
            }
            _ => {}
        }
        Ok(())
    }

    /// Replace an object. `sub` is "" / "status" / "scale". `precomputed` means
    /// managedFields were already set (server-side apply).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        new: Value,
        sub: &str,
        w: &Writer,
        precomputed: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let gr = rt.gr();
        let old = self
            .get_obj(&gr, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if !new.is_object() {
            return Err(ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type {})",
                rt.kind
            )));
        }
        check_kind(rt, &new)?;
        let body_name = meta_str(&new, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta_str(&new, "namespace");
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let body_rv = meta_str(&new, "resourceVersion");
        if !body_rv.is_empty() && body_rv != meta_str(&old, "resourceVersion") {
            return Err(ApiError::stale(rt, name));
        }
        let mut result = if sub == "status" {
            let mut r = old.clone();
            match new.get("status") {
                Some(s) => r["status"] = s.clone(),
                None => {
                    if let Value::Object(m) = &mut r {
                        m.remove("status");
                    }
                }
            }
            r
        } else {
            let mut r = new;
            if rt.status {
                match old.get("status") {
                    Some(s) => r["status"] = s.clone(),
                    None => {
                        if let Value::Object(m) = &mut r {
                            m.remove("status");
                        }
                    }
                }
            }
            r
        };
        {
            let keep = [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
            ];
            let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
            let managed = old_meta.get("managedFields").cloned();
            let meta = meta_mut(&mut result);
            meta.insert("name".into(), json!(name));
            for k in keep {
                match old_meta.get(k) {
                    Some(v) => meta.insert(k.into(), v.clone()),
                    None => meta.remove(k),
                };
            }
            meta.insert(
                "resourceVersion".into(),
                old_meta
                    .get("resourceVersion")
                    .cloned()
                    .unwrap_or(json!("")),
            );
            if !precomputed {
                match managed {
                    Some(m) => meta.insert("managedFields".into(), m),
                    None => meta.remove("managedFields"),
                };
            }
            // Finalizers cannot be added to an object that is going away.
            if old_meta.get("deletionTimestamp").is_some() {
                let old_f: Vec<Value> = old_meta
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if let Some(Value::Array(f)) = meta.get("finalizers")
                    && f.iter().any(|x| !old_f.contains(x))
                {
                    return Err(ApiError::forbidden(format!(
                        "{} \"{name}\" is forbidden: no new finalizers can be added if the object is being deleted",
                        rt.qualified()
                    )));
                }
            }
        }
        if tracks_generation(rt) && spec_part(&result) != spec_part(&old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            meta_mut(&mut result).insert("generation".into(), json!(g + 1));
        }
        self.admit(rt, name, &mut result, Some(&old))?;
        let mut result = present(result, rt, version);
        if same_content(&result, &old) {
            return Ok(present(old, rt, version));
        }
        if !precomputed {
            ssa::record_update(&old, &mut result, w);
        }
        if dry_run {
            return Ok(result);
        }
        if rt.group == "apiextensions.k8s.io" {
            self.serve_crd(&result)?;
        }
        let finalizers_done = result
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if !meta_str(&result, "deletionTimestamp").is_empty() && finalizers_done {
            return Ok(self.remove(rt, result));
        }
        Ok(self.commit(&gr, EventType::Modified, result, Some(old)))
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage, ApiError> {
        let start = match &opts.continue_token {
            Some(t) if !t.is_empty() => Some(decode_continue(t)?),
            _ => None,
        };
        let empty = BTreeMap::new();
        let map = self.objects.get(&rt.gr()).unwrap_or(&empty);
        use std::ops::Bound::*;
        let lower = match (&start, ns) {
            (Some(k), _) => Excluded(k.clone()),
            (None, Some(n)) => Included((n.to_string(), String::new())),
            (None, None) => Unbounded,
        };
        let mut items = Vec::new();
        let mut last: Option<Key> = None;
        let mut remaining = 0usize;
        let limit = opts.limit.filter(|l| *l > 0);
        for (k, v) in map.range((lower, Unbounded)) {
            if let Some(n) = ns
                && k.0 != n
            {
                if k.0.as_str() > n {
                    break;
                }
                continue;
            }
            if !opts.label_selector.matches(v) || !opts.field_selector.matches(v) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                remaining += 1;
                continue;
            }
            items.push(present(v.clone(), rt, version));
            last = Some(k.clone());
        }
        let (continue_token, remaining) = match (remaining, last) {
            (0, _) | (_, None) => (None, None),
            (r, Some(k)) => (Some(encode_continue(&k, self.rv)), Some(r)),
        };
        Ok(ListPage {
            items,
            resource_version: self.rv,
            continue_token,
            remaining,
        })
    }
}

pub(super) fn namespaces() -> GroupResource {
    GroupResource {
        group: String::new(),
        resource: "namespaces".into(),
    }
}

fn check_kind(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    let av = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !kind.is_empty() && kind != rt.kind {
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{av}\" cannot be handled as a {}: the kind of the data does not match the kind of the URL",
            rt.kind
        )));
    }
    if !av.is_empty() {
        let (g, v) = super::types::split_api_version(av);
        if g != rt.group || !rt.serves(v) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                super::types::api_version(&rt.group, rt.preferred_version())
            )));
        }
    }
    Ok(())
}

fn encode_continue(k: &Key, rv: u64) -> String {
    use base64::Engine;
    let raw = json!({"v": "sandbox.continue/v1", "rv": rv, "ns": k.0, "name": k.1}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(t: &str) -> Result<Key, ApiError> {
    use base64::Engine;
    let bad = || {
        ApiError::bad_request(format!(
            "continue key is not valid: \"{t}\" was not issued by this server"
        ))
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    match (
        v.get("ns").and_then(Value::as_str),
        v.get("name").and_then(Value::as_str),
    ) {
        (Some(ns), Some(n)) => Ok((ns.to_string(), n.to_string())),
        _ => Err(bad()),
    }
}

impl Store {
    pub fn new(history: usize, seed: u64) -> Self {
        let store = Self {
            state: Arc::new(Mutex::new(State::new(history, seed))),
        };
        {
            let mut st = store.lock();
            let w = Writer {
                manager: "sandbox",
                api_version: "v1",
                subresource: "",
                time: "",
            };
            let nsrt = st.registry.get(&namespaces()).cloned();
            if let Some(nsrt) = nsrt {
                for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                    let _ = st.create(
                        &nsrt,
                        "v1",
                        "",
                        json!({"metadata": {"name": n}}),
                        &w,
                        Origin::Load,
                        false,
                    );
                }
            }
        }
        store
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the data consistent enough to keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The type served at `gvr`, if any.
    pub fn resource_type(&self, gvr: &Gvr) -> Option<ResourceType> {
        self.lock().registry.lookup(gvr).cloned()
    }

    /// The type of `apiVersion` + `kind`.
    pub fn type_of_kind(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        self.lock().registry.by_kind(api_version, kind).cloned()
    }

    pub fn types(&self) -> Vec<ResourceType> {
        self.lock().registry.all().cloned().collect()
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The raw change feed of every write (no replay; see `watch` for that).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.lock().tx.subscribe()
    }

    pub fn get(&self, gvr: &Gvr, ns: &str, name: &str) -> Result<Value, ApiError> {
        let st = self.lock();
        let rt = st.rt(gvr)?;
        let ns = if rt.namespaced { ns } else { "" };
        st.get_obj(&rt.gr(), ns, name)
            .cloned()
            .map(|o| present(o, &rt, &gvr.version))
            .ok_or_else(|| ApiError::not_found(&rt, name))
    }

    /// `ns` None lists across namespaces.
    pub fn list(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage, ApiError> {
        let st = self.lock();
        let rt = st.rt(gvr)?;
        let ns = if rt.namespaced {
            ns.filter(|n| !n.is_empty())
        } else {
            None
        };
        st.list(&rt, &gvr.version, ns, opts)
    }

    pub fn create(
        &self,
        gvr: &Gvr,
        ns: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let rt = st.rt(gvr)?;
        let time = now();
        let av = gvr.api_version();
        let w = writer(opts, &av, "", &time);
        st.create(&rt, &gvr.version, ns, obj, &w, Origin::Client, opts.dry_run)
    }

    /// PUT; `sub` is "" or "status".
    pub fn update(
        &self,
        gvr: &Gvr,
        ns: &str,
        name: &str,
        obj: Value,
        sub: &str,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let rt = st.rt(gvr)?;
        if sub == "status" && !rt.status {
            return Err(ApiError::no_route());
        }
        let ns = if rt.namespaced { ns } else { "" };
        let time = now();
        let av = gvr.api_version();
        let w = writer(opts, &av, sub, &time);
        st.update(
            &rt,
            &gvr.version,
            ns,
            name,
            obj,
            sub,
            &w,
            false,
            opts.dry_run,
        )
    }

    /// Seed objects as they are (status included), creating or replacing each.
    /// CRDs are served as soon as they are loaded. Returns how many were stored.
    pub fn load(&self, objects: Vec<Value>) -> Result<usize, ApiError> {
        let mut st = self.lock();
        let mut n = 0;
        let w = Writer {
            manager: "sandbox",
            api_version: "",
            subresource: "",
            time: "",
        };
        for obj in objects {
            let av = obj
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let kind = obj
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let rt = st.registry.by_kind(&av, &kind).cloned().ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no kind \"{kind}\" is registered for version \"{av}\""
                ))
            })?;
            let (_, version) = super::types::split_api_version(&av);
            let version = version.to_string();
            let ns = meta_str(&obj, "namespace").to_string();
            let name = meta_str(&obj, "name").to_string();
            let ns_key = if rt.namespaced {
                if ns.is_empty() {
                    "default".to_string()
                } else {
                    ns.clone()
                }
            } else {
                String::new()
            };
            match st.get_obj(&rt.gr(), &ns_key, &name).cloned() {
                Some(old) => {
                    let mut obj = obj;
                    for k in ["uid", "creationTimestamp"] {
                        if let Some(v) = old.pointer(&format!("/metadata/{k}")) {
                            meta_mut(&mut obj).insert(k.into(), v.clone());
                        }
                    }
                    meta_mut(&mut obj).remove("resourceVersion");
                    let obj = present(obj, &rt, &version);
                    if rt.group == "apiextensions.k8s.io" {
                        st.serve_crd(&obj)?;
                    }
                    st.commit(&rt.gr(), EventType::Modified, obj, Some(old));
                }
                None => {
                    st.create(&rt, &version, &ns, obj, &w, Origin::Load, false)?;
                }
            }
            n += 1;
        }
        Ok(n)
    }
}

pub(super) fn writer<'a>(
    opts: &'a WriteOptions,
    api_version: &'a str,
    sub: &'a str,
    time: &'a str,
) -> Writer<'a> {
    Writer {
        manager: opts.field_manager.as_deref().unwrap_or("unknown"),
        api_version,
        subresource: sub,
        time,
    }
}
