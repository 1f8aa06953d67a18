//! The sandbox's simulated data plane: which Calico agent enforces policy on each
//! node, probes answered through `pods/exec` (`/agnhost connect ...`), the
//! `lapse` / `agent-not-ready` faults, and the enforcement monitor. See
//! docs/sandbox-dataplane.md.
//!
//! ```no_run
//! # async fn demo(sb: calico_migrate::sandbox::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
//! use calico_migrate::sandbox::dataplane::{DataPlane, DataPlaneOptions};
//! let dp = DataPlane::start(&sb, DataPlaneOptions::default())?; // inside a Tokio runtime
//! let out = dp.exec("team-0001", "probe", &["/agnhost".into(), "connect".into(),
//!     "10.0.0.7:8080".into(), "--timeout=1s".into()]).await?;
//! assert!(dp.intervals().await.is_empty(), "enforcement diverged");
//! # Ok(()) }
//! ```

pub mod exec;
pub mod faults;
pub mod flows;
pub mod monitor;
pub mod probe;
pub mod world;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

pub use faults::{DataPlaneFaults, agent_blocked};
pub use monitor::{DivergenceReason, Interval};
pub use probe::ExecOutcome;
pub use world::NodeReport;

use super::faults::FaultKnobs;
use super::{ApiError, Gvr, ListOptions, Sandbox};
use world::World;

/// Timing knobs of the data plane.
#[derive(Debug, Clone)]
pub struct DataPlaneOptions {
    /// Quiet time after the last pod, namespace or policy change before the policy
    /// index is rebuilt in the background (a probe arriving earlier builds it itself).
    pub debounce: Duration,
    /// Share of agnhost's `--timeout` a dropped probe really waits (0 answers at once).
    pub timeout_scale: f64,
    /// Faults in force at start (written to ConfigMap sandbox-system/dataplane-faults);
    /// empty keeps whatever that ConfigMap already says.
    pub faults: DataPlaneFaults,
}

impl Default for DataPlaneOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(50),
            timeout_scale: 0.1,
            faults: DataPlaneFaults::default(),
        }
    }
}

/// Why an exec could not run a command at all (the API answers these before any output).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    #[error("pods \"{0}\" not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// The pod exists but its container does not run (real kubelets: "container not found").
    #[error("{0}")]
    NotRunning(String),
    #[error("{0}")]
    Internal(String),
    /// The data plane cannot judge the flow.
    #[error(transparent)]
    Eval(#[from] world::EvalError),
}

struct Inner {
    sandbox: Sandbox,
    world: Mutex<World>,
    /// The resourceVersion up to which the store's feed has been applied.
    processed: tokio::sync::watch::Sender<u64>,
    opts: DataPlaneOptions,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Per node, how many times its conntrack table was flushed (see [`flows`]).
    conntrack: Mutex<std::collections::HashMap<String, u64>>,
}

/// A running data plane. Cheap to clone.
#[derive(Clone)]
pub struct DataPlane {
    inner: Arc<Inner>,
}

const MIRRORED: [(&str, &str, &str); 11] = [
    ("", "v1", "namespaces"),
    ("", "v1", "services"),
    ("", "v1", "nodes"),
    ("", "v1", "pods"),
    ("", "v1", "configmaps"),
    ("networking.k8s.io", "v1", "networkpolicies"),
    ("crd.projectcalico.org", "v1", "networkpolicies"),
    ("crd.projectcalico.org", "v1", "globalnetworkpolicies"),
    ("crd.projectcalico.org", "v1", "globalnetworksets"),
    ("crd.projectcalico.org", "v1", "tiers"),
    ("projectcalico.org", "v3", "globalnetworkpolicies"),
];

fn snapshot(sb: &Sandbox) -> (Vec<(super::GroupResource, serde_json::Value)>, u64) {
    let store = sb.store();
    let rv = store.resource_version();
    let mut out = Vec::new();
    for (g, v, r) in MIRRORED {
        let gvr = Gvr::new(g, v, r);
        // Calico's CRDs may not be installed: nothing to mirror then.
        if let Ok(page) = store.list(&gvr, None, &ListOptions::default()) {
            out.extend(page.items.into_iter().map(|o| (gvr.gr(), o)));
        }
    }
    (out, rv)
}

impl DataPlane {
    /// Start following the sandbox's store and serve `pods/exec` and
    /// `GET /sandbox/v1/enforcement` on its router. Call inside a Tokio runtime.
    pub fn start(sandbox: &Sandbox, opts: DataPlaneOptions) -> Result<DataPlane, ApiError> {
        if opts.faults != DataPlaneFaults::default() {
            opts.faults.write(sandbox.store())?;
        }
        let mut rx = sandbox.store().subscribe();
        let mut world = World::new();
        let (objects, rv) = snapshot(sandbox);
        world.reset(objects, DataPlaneFaults::read(sandbox.store()));
        let (processed, _) = tokio::sync::watch::channel(rv);
        let dp = DataPlane {
            inner: Arc::new(Inner {
                sandbox: sandbox.clone(),
                world: Mutex::new(world),
                processed,
                opts,
                task: Mutex::new(None),
                conntrack: Mutex::new(std::collections::HashMap::new()),
            }),
        };
        let weak = Arc::downgrade(&dp.inner);
        let debounce = dp.inner.opts.debounce;
        let task = tokio::spawn(async move {
            let mut seen = rv;
            // Build the first index once the start-up settles, before any probe asks.
            let mut pending = true;
            loop {
                let next = if pending {
                    match tokio::time::timeout(debounce, rx.recv()).await {
                        Ok(r) => r,
                        Err(_) => {
                            pending = false;
                            let Some(inner) = weak.upgrade() else { return };
                            lock(&inner.world).warm();
                            continue;
                        }
                    }
                } else {
                    rx.recv().await
                };
                let Some(inner) = weak.upgrade() else { return };
                match next {
                    Ok(ev) if ev.rv <= seen => {}
                    Ok(ev) => {
                        seen = ev.rv;
                        let mut w = lock(&inner.world);
                        w.apply(&ev);
                        pending |= w.dirty;
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!("data plane fell {n} changes behind; re-reading the store");
                        let (objects, rv) = snapshot(&inner.sandbox);
                        let faults = DataPlaneFaults::read(inner.sandbox.store());
                        lock(&inner.world).reset(objects, faults);
                        seen = rv;
                        pending = true;
                    }
                    Err(RecvError::Closed) => return,
                }
                // Every resourceVersion is one event, sent under the store's lock: with
                // nothing queued, all changes up to the store's version are applied.
                let now = inner.sandbox.store().resource_version();
                if rx.is_empty() {
                    seen = seen.max(now);
                }
                inner.processed.send_replace(seen);
            }
        });
        *lock(&dp.inner.task) = Some(task);
        sandbox.add_routes(exec::routes(dp.clone()));
        Ok(dp)
    }

    /// Stop following the store (probes then answer from the last state).
    pub fn stop(&self) {
        if let Some(t) = lock(&self.inner.task).take() {
            t.abort();
        }
    }

    /// Wait until every change the store holds now is applied (at most 5 s).
    pub async fn sync(&self) {
        let target = self.inner.sandbox.store().resource_version();
        let mut rx = self.inner.processed.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|v| *v >= target)).await;
    }

    /// The faults in force.
    pub fn faults(&self) -> DataPlaneFaults {
        DataPlaneFaults::read(self.inner.sandbox.store())
    }

    /// Change the faults (same as writing ConfigMap sandbox-system/dataplane-faults).
    pub async fn set_faults(&self, f: &DataPlaneFaults) -> Result<(), ApiError> {
        f.write(self.inner.sandbox.store())?;
        self.sync().await;
        Ok(())
    }

    /// Each node's enforcement now.
    pub async fn nodes(&self) -> Vec<NodeReport> {
        self.sync().await;
        lock(&self.inner.world).report()
    }

    /// Every divergence interval recorded so far (open ones have `end: None`).
    pub async fn intervals(&self) -> Vec<Interval> {
        self.sync().await;
        lock(&self.inner.world).monitor.intervals()
    }

    /// Forget recorded intervals (those still open restart now).
    pub async fn clear_intervals(&self) {
        self.sync().await;
        lock(&self.inner.world)
            .monitor
            .clear(jiff::Timestamp::now());
    }

    /// The pod an exec runs in, as the API and the kubelet check it: known, on a node, Running.
    /// Asked again of every held connection's source at each of its echoes, so the pod
    /// is read where the store keeps it, not copied.
    fn running_pod(&self, ns: &str, name: &str) -> Result<world::PodInfo, ExecError> {
        let pod_value = self
            .inner
            .sandbox
            .store()
            .get_shared(&Gvr::new("", "v1", "pods"), ns, name)
            .map_err(|_| ExecError::NotFound(name.to_string()))?;
        let src = world::PodInfo::from_value(ns, pod_value);
        if src.node.is_none() {
            return Err(ExecError::BadRequest(format!(
                "pod {name} does not have a host assigned"
            )));
        }
        if src.phase != "Running" {
            let phase = if src.phase.is_empty() {
                "unknown"
            } else {
                &src.phase
            };
            return Err(ExecError::NotRunning(format!(
                "container not found: pod {ns}/{name} is {phase}, not Running; wait for it to start (kubectl wait --for=condition=Ready pod/{name})"
            )));
        }
        Ok(src)
    }

    /// Forget every connection-tracking entry on `node` (what `conntrack -F` does there):
    /// the next packet of each established flow through the node is judged again by the
    /// rules in force on it (see [`flows`]).
    pub fn flush_conntrack(&self, node: &str) {
        *lock(&self.inner.conntrack)
            .entry(node.to_string())
            .or_insert(0) += 1;
    }

    /// Run `command` in pod `ns/name` as the exec subresource would.
    pub async fn exec(
        &self,
        ns: &str,
        name: &str,
        command: &[String],
    ) -> Result<ExecOutcome, ExecError> {
        self.sync().await;
        let src = self.running_pod(ns, name)?;
        match flows::parse(command) {
            Some(Err(usage)) => return Ok(usage),
            Some(Ok(_)) => {
                return Err(ExecError::BadRequest(
                    "the hold script streams its output: run it through pods/exec \
                     (websocket), not DataPlane::exec"
                        .into(),
                ));
            }
            None => {}
        }
        let (dest, timeout, proto_name) = match probe::parse_command(command) {
            probe::Command::NotFound(c) => return Ok(probe::not_found(&c)),
            probe::Command::Usage(m) => return Ok(probe::usage(&m)),
            probe::Command::Connect {
                dest,
                timeout,
                protocol,
            } => (dest, timeout, protocol),
        };
        let Some(proto) = ["tcp", "udp", "sctp"]
            .contains(&proto_name.as_str())
            .then(|| crate::policy::Protocol::parse(&proto_name))
            .flatten()
        else {
            return Ok(probe::unsupported_protocol(&proto_name));
        };
        let result = {
            let mut w = lock(&self.inner.world);
            probe::connect(&mut w, &src, &dest, proto)?
        };
        if result == probe::Connect::Dropped {
            // A dropped SYN waits for the client's timeout (the kernel's ~2 min when none).
            // Capped so that an absurd --timeout cannot hold a connection for days.
            let nominal = if timeout.is_zero() {
                Duration::from_secs(127)
            } else {
                timeout.min(Duration::from_secs(600))
            };
            let wait = nominal.mul_f64(self.inner.opts.timeout_scale.clamp(0.0, 1.0));
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(probe::agnhost_output(&result, src.ip, &dest, &proto_name))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
