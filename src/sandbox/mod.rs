//! The embedded Kubernetes API server used for rehearsals and tests.
//!
//! [`Sandbox`] owns a generic object [`Store`] (every object a
//! `serde_json::Value`, keyed by group/resource/namespace/name) and exposes it
//! three ways: the store's own API for in-process controllers (get, list,
//! create, update, patch, delete, watch, a change feed), an axum
//! [`Sandbox::router`] speaking the Kubernetes REST API, and a `kube::Client`
//! bound to that router without any socket ([`Sandbox::client`]). `serve`
//! puts the router on a loopback port for kubectl. See docs/sandbox.md.
//!
//! The API server itself is [`apiserver`]. [`scenario`] seeds it,
//! [`controllers`] and [`dataplane`] simulate the cluster as its clients, and
//! [`faults`] is the shape their fault knobs and the API's share. This file
//! starts a sandbox; [`serve`] and [`snapshot`] serve and compare one.

pub mod apiserver;
pub mod controllers;
pub mod datadir;
pub mod dataplane;
pub mod faults;
pub mod scenario;
pub mod serve;
pub mod snapshot;

use std::sync::Arc;

use faults::FaultKnobs;

pub use apiserver::error::ApiError;
pub use apiserver::faults::FaultConfig;
pub use apiserver::requests::{RequestLog, RequestLogError, RequestRecord};
pub use apiserver::store::apply::PatchKind;
pub use apiserver::store::lifecycle::{DeleteOptions, Deleted};
pub use apiserver::store::{EventType, ListOptions, ListPage, Store, WatchEvent, WriteOptions};
pub use apiserver::types::{GroupResource, Gvr, ResourceType, Subresource};
pub use apiserver::versions::{KubernetesVersion, VersionError};
pub use serve::ServeHandle;

/// How a sandbox starts.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Seed of uids, generated names and fault draws.
    pub seed: u64,
    /// How many past events watches can resume from (older ones answer 410 Gone).
    pub history: usize,
    /// Faults in force at start (also written to ConfigMap sandbox-system/faults).
    pub faults: FaultConfig,
    /// How often watches that allow bookmarks get one (the real server: about a minute).
    pub bookmark_interval: std::time::Duration,
    /// The Kubernetes minor served: `/version`, and which API versions of the built-in
    /// kinds discovery lists and requests reach (`apiserver::versions::WINDOWS`).
    pub kubernetes_version: KubernetesVersion,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            history: 50_000,
            faults: FaultConfig::default(),
            bookmark_interval: std::time::Duration::from_secs(60),
            kubernetes_version: KubernetesVersion::default(),
        }
    }
}

struct Inner {
    store: Store,
    dice: apiserver::faults::Dice,
    /// Routes added by other parts of the sandbox (e.g. pods/exec), tried before the API.
    extra: std::sync::Mutex<Option<axum::Router>>,
    bookmark_interval: std::time::Duration,
    seed: u64,
    /// The requests served, while someone records them.
    requests: apiserver::requests::RequestLog,
}

/// A running sandbox cluster. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl Sandbox {
    pub fn new(opts: SandboxOptions) -> Self {
        let store = Store::new(opts.history, opts.seed, opts.kubernetes_version);
        Self::with_store(opts, store)
    }

    /// A sandbox over a store made elsewhere, e.g. a data dir's (`datadir::DataDir`,
    /// `Store::from_image`); `opts.kubernetes_version` and `history` are the store's
    /// business then, the rest applies as in [`Sandbox::new`].
    pub fn with_store(opts: SandboxOptions, store: Store) -> Self {
        let boot = [
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": faults::NAMESPACE}}),
            opts.faults.to_configmap(),
        ];
        // Both objects are well-formed and their namespace exists by construction.
        if let Err(e) = store.load(boot.to_vec()) {
            tracing::error!("sandbox bootstrap failed: {e}");
        }
        Self {
            inner: Arc::new(Inner {
                store,
                dice: apiserver::faults::Dice::new(opts.seed),
                extra: std::sync::Mutex::new(None),
                bookmark_interval: opts.bookmark_interval,
                seed: opts.seed,
                requests: apiserver::requests::RequestLog::default(),
            }),
        }
    }

    /// The seed it started with: what the simulated controllers draw their choices from
    /// (e.g. the order in which the operator takes nodes).
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// The object store, for in-process controllers.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Seed objects (e.g. `scenario::build`), CRDs first; status is kept as given.
    pub fn load(&self, objects: Vec<serde_json::Value>) -> Result<usize, ApiError> {
        self.inner.store.load(objects)
    }

    /// The Kubernetes REST API as an axum Router (with any routes added by `add_routes`).
    pub fn router(&self) -> axum::Router {
        let base = apiserver::http::router(self.clone());
        let extra = self
            .inner
            .extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let api = match extra {
            Some(extra) => extra.merge(base),
            None => base,
        };
        // Impersonated requests (kubectl --as) are held to RBAC; the admin passes.
        // Outermost, the request log, so a refused request counts as served too.
        api.layer(axum::middleware::from_fn_with_state(
            self.clone(),
            apiserver::authz_http::enforce,
        ))
        .layer(axum::middleware::from_fn_with_state(
            self.clone(),
            apiserver::requests::record,
        ))
    }

    /// The log of the requests its routers serve: off until started
    /// (`sb.requests().start(capacity)`), then counted by time window.
    pub fn requests(&self) -> &apiserver::requests::RequestLog {
        &self.inner.requests
    }

    /// Serve extra routes (without a fallback) ahead of the generic API, e.g.
    /// `/api/v1/namespaces/{ns}/pods/{name}/exec` for a simulated data plane. Routers,
    /// clients and servers built afterwards include them.
    pub fn add_routes(&self, routes: axum::Router) {
        let mut extra = self.inner.extra.lock().unwrap_or_else(|e| e.into_inner());
        *extra = Some(match extra.take() {
            Some(r) => r.merge(routes),
            None => routes,
        });
    }

    /// A kube client talking to the router in-process (no socket), default namespace "default".
    /// Like `kube::Client::new`, call it inside a Tokio runtime (it spawns the client's buffer task).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Serve on a loopback address such as "127.0.0.1:0".
    pub async fn serve(&self, addr: &str) -> std::io::Result<ServeHandle> {
        serve::serve(self.clone(), addr).await
    }

    /// The faults in force now (from ConfigMap sandbox-system/faults).
    pub fn fault_config(&self) -> FaultConfig {
        FaultConfig::read(self.store())
    }

    /// Change the faults in force (same as patching the ConfigMap).
    pub fn set_faults(&self, f: &FaultConfig) -> Result<(), ApiError> {
        f.write(self.store())
    }

    pub(crate) fn bookmark_interval(&self) -> std::time::Duration {
        self.inner.bookmark_interval
    }

    pub(crate) fn dice(&self) -> apiserver::faults::Dice {
        self.inner.dice.clone()
    }
}
