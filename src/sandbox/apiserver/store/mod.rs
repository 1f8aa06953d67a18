//! The generic object store: every object is a `serde_json::Value` keyed by
//! (group, resource, namespace, name), with a monotonically increasing
//! resourceVersion, a change feed, and the semantics of the real registry
//! (k8s.io/apiserver pkg/registry/generic/registry/store.go): uid,
//! creationTimestamp, generation, conflicts, status/scale subresources.
//!
//! `impl Store` and `impl State` are split by concern, one file each:
//! - this file: the data (objects, history, registry), the change feed, get and list;
//! - [`write`]: create, update (the object or its status) and seeding;
//! - [`apply`]: PATCH in every format, server-side apply, the scale subresource;
//! - [`lifecycle`]: deletion, finalizers, garbage collection, namespaces, CRDs;
//! - [`watch`]: watches replayed from history and fed by the change feed;
//! - [`persist`]: the store as an image for a data dir, and restart or upgrade rules.

pub mod apply;
pub mod lifecycle;
pub mod persist;
pub mod watch;
mod write;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
pub use write::TEMPLATE_GENERATION;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::error::ApiError;
use super::select::{FieldSelector, LabelSelector};
use super::ssa::Writer;
use super::types::{GroupResource, Gvr, Registry, ResourceType, Subresource};
use super::versions::KubernetesVersion;

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
    /// The part written by an update or a patch (the object, its status or its scale);
    /// recorded in managedFields. A create always writes the object.
    pub subresource: Subresource,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// One page of a list: its items copied out of the store (`Value`), or shared with it
/// (`Arc<Value>`, [`Store::list_page_shared`]).
#[derive(Debug, Clone)]
pub struct ListPage<T = Value> {
    pub items: Vec<T>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

pub(super) type Key = (String, String);

pub(super) struct State {
    pub rv: u64,
    /// The Kubernetes minor served, which decides the built-in API versions.
    pub kubernetes: KubernetesVersion,
    pub registry: Registry,
    /// Shared, so that a whole collection can be read without copying it (the
    /// sandbox's controllers read every node and pod on each pass).
    pub objects: HashMap<GroupResource, BTreeMap<Key, Arc<Value>>>,
    pub history: VecDeque<Arc<WatchEvent>>,
    /// Every event with rv > floor is still in `history`.
    pub floor: u64,
    pub cap: usize,
    pub rng: fastrand::Rng,
    pub tx: broadcast::Sender<Arc<WatchEvent>>,
}

/// Where a write comes from, which decides how its input is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A client's create or update: status is reset on create, fields are managed.
    Client,
    /// Server-side apply: `ssa::apply` has already computed managedFields; a create
    /// takes the applied object as seeding does.
    Applied,
    /// Seeding: objects are taken as they are, status included.
    Load,
}

/// One write as the store carries it out: [`WriteOptions`] resolved into the
/// writer that managedFields record, with where the write comes from.
pub(super) struct Write<'a> {
    /// Who writes, through which subresource, when.
    pub by: Writer<'a>,
    pub origin: Origin,
    /// `dryRun=All`: validate and compute, store nothing.
    pub dry_run: bool,
}

impl<'a> Write<'a> {
    /// A client's write through `subresource`, as `opts` asks for it.
    pub fn client(
        opts: &'a WriteOptions,
        api_version: &'a str,
        subresource: Subresource,
        time: &'a str,
    ) -> Self {
        Write {
            by: Writer {
                manager: opts.field_manager.as_deref().unwrap_or("unknown"),
                api_version,
                subresource,
                time,
            },
            origin: Origin::Client,
            dry_run: opts.dry_run,
        }
    }

    /// Seeding: taken as given, stored for real.
    pub fn seed() -> Self {
        Write {
            by: Writer {
                manager: "sandbox",
                api_version: "",
                subresource: Subresource::Main,
                time: "",
            },
            origin: Origin::Load,
            dry_run: false,
        }
    }
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

/// A stored object as seen at the requested version (converted, `convert::to_version`).
pub fn present(obj: Value, rt: &ResourceType, version: &str) -> Value {
    super::convert::to_version(rt, version, obj)
}

/// `obj` as stored is already what [`present`] would make of it: asked in the storage
/// version, and naming that version and its kind.
fn is_presented(obj: &Value, rt: &ResourceType, version: &str) -> bool {
    version == rt.storage_version()
        && obj.get("kind").and_then(Value::as_str) == Some(rt.kind.as_str())
        && obj.get("apiVersion").and_then(Value::as_str)
            == Some(super::types::api_version(&rt.group, version).as_str())
}

impl State {
    pub fn new(cap: usize, seed: u64, kubernetes: KubernetesVersion) -> Self {
        let (tx, _) = broadcast::channel(cap.max(16));
        Self {
            rv: 0,
            kubernetes,
            registry: Registry::at(kubernetes),
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
        self.get_shared(gr, ns, name).map(|o| &**o)
    }

    /// The stored copy itself, for readers that share it rather than copy it.
    fn get_shared(&self, gr: &GroupResource, ns: &str, name: &str) -> Option<&Arc<Value>> {
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
            map.insert((ns.clone(), name.clone()), Arc::new(object.clone()));
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

    /// A page of a list, the items shared with the store where they are stored in the
    /// version asked for (a reader that only serialises them copies nothing), converted
    /// copies otherwise.
    pub fn list(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage<Arc<Value>>, ApiError> {
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
            items.push(if is_presented(v, rt, version) {
                v.clone()
            } else {
                Arc::new(present((**v).clone(), rt, version))
            });
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
    /// A store serving the built-ins of Kubernetes `kubernetes`.
    pub fn new(history: usize, seed: u64, kubernetes: KubernetesVersion) -> Self {
        let store = Self {
            state: Arc::new(Mutex::new(State::new(history, seed, kubernetes))),
        };
        {
            let mut st = store.lock();
            let w = Write::seed();
            let nsrt = st.registry.get(&namespaces()).cloned();
            if let Some(nsrt) = nsrt {
                for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                    let _ = st.create(&nsrt, "v1", "", json!({"metadata": {"name": n}}), &w);
                }
            }
        }
        store
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the data consistent enough to keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Kubernetes minor this store serves.
    pub fn kubernetes_version(&self) -> KubernetesVersion {
        self.lock().kubernetes
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

    /// One object shared rather than copied, as [`Store::list_shared`] shares a list.
    pub fn get_shared(&self, gvr: &Gvr, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        let st = self.lock();
        let rt = st.rt(gvr)?;
        let ns = if rt.namespaced { ns } else { "" };
        let o = st
            .get_shared(&rt.gr(), ns, name)
            .ok_or_else(|| ApiError::not_found(&rt, name))?;
        Ok(if gvr.version == rt.storage_version() {
            o.clone()
        } else {
            Arc::new(present((**o).clone(), &rt, &gvr.version))
        })
    }

    /// Every object of a type (in `ns`, or all), shared rather than copied: no selector,
    /// no pages. For readers that only look (the sandbox's controllers), at the storage
    /// version; another version is converted, so copied. A write stores a new copy, so
    /// an object not written since the last list is the same allocation (the
    /// controllers remember what they read of it by that).
    pub fn list_shared(&self, gvr: &Gvr, ns: Option<&str>) -> Result<Vec<Arc<Value>>, ApiError> {
        let st = self.lock();
        let rt = st.rt(gvr)?;
        let ns = ns.filter(|n| rt.namespaced && !n.is_empty());
        let Some(map) = st.objects.get(&rt.gr()) else {
            return Ok(Vec::new());
        };
        let objects = map
            .iter()
            .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
            .map(|(_, o)| o);
        Ok(if gvr.version == rt.storage_version() {
            objects.cloned().collect()
        } else {
            objects
                .map(|o| Arc::new(present((**o).clone(), &rt, &gvr.version)))
                .collect()
        })
    }

    /// `ns` None lists across namespaces.
    pub fn list(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage, ApiError> {
        let page = self.list_page_shared(gvr, ns, opts)?;
        Ok(ListPage {
            items: page.items.into_iter().map(Arc::unwrap_or_clone).collect(),
            resource_version: page.resource_version,
            continue_token: page.continue_token,
            remaining: page.remaining,
        })
    }

    /// [`Store::list`] with the items shared with the store where it holds them in the
    /// version asked for: what the API server serialises for a client's LIST, so a list
    /// of every node or pod is not copied out first (it was a tenth of the sandbox's
    /// CPU in a 500-node takeover, the tool listing nodes every poll).
    pub fn list_page_shared(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage<Arc<Value>>, ApiError> {
        let st = self.lock();
        let rt = st.rt(gvr)?;
        let ns = if rt.namespaced {
            ns.filter(|n| !n.is_empty())
        } else {
            None
        };
        st.list(&rt, &gvr.version, ns, opts)
    }
}
