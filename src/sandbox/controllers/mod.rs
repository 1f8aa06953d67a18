//! Controllers that make the sandbox behave like a cluster: DaemonSets and
//! Deployments turn into pods, pods get IPs and become ready after a start
//! delay, nodes join and leave, the Tigera operator migrates a kube-system
//! Calico install, and a `helm uninstall` can be simulated. See
//! docs/sandbox-behaviour.md.
//!
//! Time is logical: the controllers advance in ticks of `tick_seconds`
//! simulated seconds. [`Controllers::tick`] runs one tick synchronously
//! (tests drive it by hand for determinism); [`start`] runs ticks on a Tokio
//! task every `tick_seconds / time_scale` real seconds and also reacts to the
//! store's change feed between ticks.

pub mod faults;
pub mod felix;
pub mod helm_uninstall;
pub mod history;
pub mod nodes;
pub mod operator;
pub mod pods;
pub mod readiness;
pub mod sched;
pub mod startup;
pub mod workloads;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use super::faults::FaultKnobs;
use super::{
    ApiError, DeleteOptions, Gvr, ListOptions, PatchKind, Sandbox, Subresource, WriteOptions,
};

pub use faults::ControllerFaults;
pub use helm_uninstall::{UninstallOutcome, helm_uninstall};

/// Timing knobs, all in simulated seconds except `time_scale`.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Simulated seconds per real second (10 = ten times faster than real).
    pub time_scale: f64,
    /// Simulated seconds one tick advances the clock.
    pub tick_seconds: f64,
    /// Simulated seconds from a pod's creation to Ready (to its containers' start for a
    /// calico-node pod when `agent_readiness_probe` holds).
    pub pod_start_delay: f64,
    /// calico-node pods turn Ready one period of their own readiness probe after their
    /// containers start (`readiness.rs`) instead of at `pod_start_delay`.
    pub agent_readiness_probe: bool,
    /// Simulated seconds between two actions of the operator.
    pub operator_step: f64,
    /// Simulated seconds from an operator pod's start to its first try at the leader
    /// lock: what tigera/operator's `main` does before `mgr.Start` (`operator.rs`).
    pub operator_start_delay: f64,
    /// Faults of the controllers in force at start (also written to
    /// ConfigMap sandbox-system/controller-faults).
    pub faults: ControllerFaults,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            time_scale: 10.0,
            tick_seconds: 1.0,
            pod_start_delay: 3.0,
            agent_readiness_probe: false,
            operator_step: 1.0,
            operator_start_delay: 0.0,
            faults: ControllerFaults::default(),
        }
    }
}

/// A pod's start on a real cluster: the Kubernetes SLO on pod startup latency,
/// "99th percentile per cluster-day <= 5s" for schedulable stateless pods, from creation
/// to all containers started, image pulls excluded (kubernetes/community
/// sig-scalability/slos/slos.md).
pub const REALISTIC_POD_START_SECONDS: f64 = 5.0;

/// tigera/operator's start before it tries the leader lock, as one real operator logged
/// it (tigera/operator issue 2173, v1.23.5: "Version" at 21:30:38, "starting manager"
/// and "attempting to acquire leader lease" at 21:30:42.53, one API discovery request
/// throttled 1.04 s between them). v1.38.6 cmd/main.go:192-466 does the same work first:
/// `WaitUntilActive`, provider, tenancy and Enterprise discovery, the Kubernetes
/// version, the bootstrap ConfigMap and its watch, `AddToManager`.
pub const REALISTIC_OPERATOR_START_SECONDS: f64 = 4.5;

/// Which timings the controllers run with (`calico-migrate sandbox --timings`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Timings {
    /// Short waits, the tests' (3 s pod start, agents and the operator at once).
    #[default]
    Fast,
    /// What a real cluster takes ([`ControllerOptions::realistic`]).
    Realistic,
}

impl ControllerOptions {
    /// The timings of a real cluster, each from its source (docs/sandbox-behaviour.md,
    /// "Realistic timings"): a pod starts in [`REALISTIC_POD_START_SECONDS`], a
    /// calico-node pod turns Ready one readiness-probe period later, and an operator
    /// pod tries the leader lock [`REALISTIC_OPERATOR_START_SECONDS`] after its start
    /// (the lease itself is lease.rs's, whatever the timings). Time scale 10 as the
    /// default; callers set their own.
    pub fn realistic() -> Self {
        Self {
            pod_start_delay: REALISTIC_POD_START_SECONDS,
            agent_readiness_probe: true,
            operator_start_delay: REALISTIC_OPERATOR_START_SECONDS,
            ..Self::default()
        }
    }

    /// The options of a [`Timings`] preset.
    pub fn with_timings(timings: Timings) -> Self {
        match timings {
            Timings::Fast => Self::default(),
            Timings::Realistic => Self::realistic(),
        }
    }
}

/// Why the controllers cannot start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControllerError {
    #[error("{knob} must be a positive number of seconds, got {value}")]
    NotPositive { knob: &'static str, value: f64 },
    #[error("{knob} must be zero or more seconds, got {value}")]
    NegativeDelay { knob: &'static str, value: f64 },
    /// Writing the fault ConfigMap failed.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl ControllerOptions {
    /// Reject values that would stall or spin the loop, naming the knob.
    pub fn validate(&self) -> Result<(), ControllerError> {
        let positive = |knob: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(ControllerError::NotPositive { knob, value })
            }
        };
        positive("time-scale", self.time_scale)?;
        positive("tick-seconds", self.tick_seconds)?;
        positive("operator-step", self.operator_step)?;
        let not_negative = |knob: &'static str, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(ControllerError::NegativeDelay { knob, value })
            }
        };
        not_negative("pod-start-delay", self.pod_start_delay)?;
        not_negative("operator-start-delay", self.operator_start_delay)?;
        Ok(())
    }

    /// Real time between two ticks.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_secs_f64((self.tick_seconds / self.time_scale).clamp(0.0005, 3600.0))
    }
}

/// A client's write, run by a test inside a pass.
#[cfg(test)]
type ClientWrite = Box<dyn FnOnce(&Sandbox) + Send>;

/// The controllers' state; one tick at a time.
pub struct Controllers {
    sb: Sandbox,
    opts: ControllerOptions,
    /// Simulated seconds since start.
    now: f64,
    pods: pods::PodLifecycle,
    workloads: workloads::Workloads,
    nodes: nodes::NodeLifecycle,
    operator: operator::Operator,
    /// The store's revision when the last settle ended with a pass that wrote nothing
    /// and saw nothing written while it ran.
    settled_at: Option<u64>,
    /// Passes run so far (settles skipped run none).
    passes: u64,
    /// A client's write landing while a pass runs, once (tests only).
    #[cfg(test)]
    mid_pass: Option<ClientWrite>,
}

impl Controllers {
    pub fn new(sb: &Sandbox, opts: ControllerOptions) -> Result<Self, ControllerError> {
        opts.validate()?;
        opts.faults.write(sb.store())?;
        Ok(Self {
            sb: sb.clone(),
            pods: pods::PodLifecycle::default(),
            workloads: workloads::Workloads::default(),
            nodes: nodes::NodeLifecycle::default(),
            operator: operator::Operator::new(opts.operator_step, opts.operator_start_delay),
            opts,
            now: 0.0,
            settled_at: None,
            passes: 0,
            #[cfg(test)]
            mid_pass: None,
        })
    }

    /// Simulated seconds elapsed.
    pub fn now(&self) -> f64 {
        self.now
    }

    /// The controllers' passes so far: what the sandbox spent on settling.
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// Advance the clock one tick: the operator acts (at its pace), then the
    /// workload controllers run until nothing changes.
    pub fn tick(&mut self) {
        self.now += self.opts.tick_seconds;
        let f = ControllerFaults::read(self.sb.store());
        self.operator.step(&self.sb, self.now, &f);
        self.nodes.reconcile(&self.sb, &f);
        self.settle(&f);
    }

    /// Run the workload controllers until pods stop changing (bounded).
    ///
    /// Skipped when it would find nothing to do: the store is where the last pass read
    /// and left it and no pod is due (its start delay run out, or a held agent's next
    /// readiness probe). A pass reads only the store and the clock, so it would write
    /// nothing; skipping keeps a quiet tick from costing a pass over every node and
    /// pod. An optimisation with no behaviour of its own: the real controllers act on
    /// their informers' events (kubernetes pkg/controller/daemon/daemon_controller.go at
    /// commit 0033f658085b: `NewDaemonSetsController` registers the DaemonSet,
    /// ControllerRevision, Pod and Node handlers that enqueue work, and `Run`'s workers
    /// only drain that queue), so with no event and no timer due they do nothing either.
    pub fn settle(&mut self, f: &ControllerFaults) {
        let revision = self.sb.store().resource_version();
        if self.settled_at == Some(revision) && self.now + 1e-9 < self.pods.next_due() {
            return;
        }
        self.settled_at = None;
        self.pods.begin_settle();
        // One snapshot of nodes and pods per pass, shared with the store rather than
        // copied. Status-only writes do not ask for another pass.
        for _ in 0..8 {
            // Read before the snapshot: a client may write while the pass runs, and
            // the revision after the pass would then count a write it never saw.
            let before = self.sb.store().resource_version();
            self.passes += 1;
            let nodes = list_shared(&self.sb, &nodes_gvr());
            let pods = list_shared(&self.sb, &pods_gvr());
            let mut changed = self.workloads.reconcile(&self.sb, &nodes, &pods);
            let delays = pods::StartDelays {
                pod: self.opts.pod_start_delay,
                agent_readiness_probe: self.opts.agent_readiness_probe,
            };
            changed |= self
                .pods
                .reconcile(&self.sb, &nodes, &pods, self.now, delays, f);
            #[cfg(test)]
            if let Some(write) = self.mid_pass.take() {
                write(&self.sb);
            }
            if !changed {
                // Settled only if nothing was written while the pass ran, by it (a
                // DaemonSet's counts, which the next pass reads) or by a client:
                // otherwise the next settle runs a pass to see it.
                let after = self.sb.store().resource_version();
                self.settled_at = (after == before).then_some(after);
                break;
            }
        }
    }

    /// Ticks until `done` holds or `max_ticks` pass; true if it held.
    pub fn run_until(&mut self, max_ticks: usize, mut done: impl FnMut(&Sandbox) -> bool) -> bool {
        for _ in 0..max_ticks {
            if done(&self.sb) {
                return true;
            }
            self.tick();
        }
        done(&self.sb)
    }
}

/// Controllers running on a Tokio task; dropping the handle stops them. (They hold the
/// sandbox, whose change feed they read, so nothing else would ever end them.)
pub struct ControllersHandle {
    task: tokio::task::JoinHandle<()>,
    /// The simulated clock after the last tick, as f64 bits: read without waiting for
    /// a tick in progress, so a reader can sample it often.
    clock: Arc<AtomicU64>,
}

impl ControllersHandle {
    /// Stop the controllers.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Simulated seconds elapsed.
    pub fn now(&self) -> f64 {
        f64::from_bits(self.clock.load(Ordering::Relaxed))
    }
}

impl Drop for ControllersHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start the controllers on the current Tokio runtime.
pub fn start(sb: &Sandbox, opts: ControllerOptions) -> Result<ControllersHandle, ControllerError> {
    let interval = opts.tick_interval();
    sb.add_routes(helm_uninstall::routes(sb));
    let mut c = Controllers::new(sb, opts)?;
    let mut feed = sb.store().subscribe();
    let clock = Arc::new(AtomicU64::new(c.now().to_bits()));
    let shown = clock.clone();
    let task = tokio::spawn(async move {
        let mut timer = tokio::time::interval(interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = timer.tick() => {
                    c.tick();
                    shown.store(c.now().to_bits(), Ordering::Relaxed);
                }
                ev = feed.recv() => {
                    if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        break;
                    }
                    // Drain what queued up, then react once at the current time.
                    while feed.try_recv().is_ok() {}
                    let f = ControllerFaults::read(c.sb.store());
                    c.settle(&f);
                    // Our own writes echo back through the feed: skip them.
                    while feed.try_recv().is_ok() {}
                }
            }
        }
    });
    Ok(ControllersHandle { task, clock })
}

impl Sandbox {
    /// Start the workload controllers and the simulated Tigera operator
    /// (see docs/sandbox-behaviour.md). Needs a Tokio runtime.
    pub fn start_controllers(
        &self,
        opts: ControllerOptions,
    ) -> Result<ControllersHandle, ControllerError> {
        start(self, opts)
    }
}

// ---- small helpers over the store, shared by the controllers ----

pub(crate) fn gvr(group: &str, version: &str, resource: &str) -> Gvr {
    Gvr::new(group, version, resource)
}

pub(crate) fn pods_gvr() -> Gvr {
    gvr("", "v1", "pods")
}
pub(crate) fn nodes_gvr() -> Gvr {
    gvr("", "v1", "nodes")
}
pub(crate) fn ds_gvr() -> Gvr {
    gvr("apps", "v1", "daemonsets")
}
pub(crate) fn deploy_gvr() -> Gvr {
    gvr("apps", "v1", "deployments")
}

/// The field manager of every controller write.
pub(crate) fn wopts(manager: &str) -> WriteOptions {
    WriteOptions {
        field_manager: Some(manager.to_string()),
        ..Default::default()
    }
}

/// Every object of a type (in a namespace, or all); empty when the type is not served.
pub(crate) fn list(sb: &Sandbox, g: &Gvr, ns: Option<&str>) -> Vec<Value> {
    sb.store()
        .list(g, ns, &ListOptions::default())
        .map(|p| p.items)
        .unwrap_or_default()
}

/// A sandbox seeded with the default scenario on `nodes` nodes and one namespace of one
/// pod, its controllers not started (unit tests drive passes by hand).
#[cfg(test)]
pub(crate) fn small_seeded_sandbox(nodes: usize) -> Sandbox {
    let cfg = crate::sandbox::scenario::ScenarioConfig {
        nodes,
        namespaces: 1,
        pods_per_namespace: 1,
        ..Default::default()
    };
    let sb = Sandbox::new(crate::sandbox::SandboxOptions::default());
    sb.load(crate::sandbox::scenario::build(&cfg).expect("the scenario"))
        .expect("the seed loads");
    sb
}

/// Every object of a type across namespaces, shared with the store (read only).
pub(crate) fn list_shared(sb: &Sandbox, g: &Gvr) -> Vec<Arc<Value>> {
    sb.store().list_shared(g, None).unwrap_or_default()
}

pub(crate) fn get(sb: &Sandbox, g: &Gvr, ns: &str, name: &str) -> Option<Value> {
    sb.store().get(g, ns, name).ok()
}

pub(crate) fn merge(
    sb: &Sandbox,
    g: &Gvr,
    ns: &str,
    name: &str,
    sub: Subresource,
    body: &Value,
    manager: &str,
) -> Result<Value, ApiError> {
    let opts = WriteOptions {
        subresource: sub,
        ..wopts(manager)
    };
    sb.store().patch(
        g,
        ns,
        name,
        PatchKind::Merge,
        body.to_string().as_bytes(),
        &opts,
    )
}

pub(crate) fn delete(sb: &Sandbox, g: &Gvr, ns: &str, name: &str) -> bool {
    sb.store()
        .delete(g, ns, name, &DeleteOptions::default())
        .is_ok()
}

/// `o.metadata[key]`, read with `get` rather than `Value::pointer`, which allocates two
/// strings per path segment: these accessors run over every node and pod on every pass.
fn meta<'a>(o: &'a Value, key: &str) -> Option<&'a Value> {
    o.get("metadata")?.get(key)
}
pub(crate) fn name(o: &Value) -> &str {
    meta(o, "name").and_then(Value::as_str).unwrap_or_default()
}
pub(crate) fn namespace(o: &Value) -> &str {
    meta(o, "namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}
pub(crate) fn uid(o: &Value) -> &str {
    meta(o, "uid").and_then(Value::as_str).unwrap_or_default()
}
pub(crate) fn label<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    meta(o, "labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
}
pub(crate) fn deleting(o: &Value) -> bool {
    meta(o, "deletionTimestamp").is_some()
}

/// A pod's Ready condition, as the controllers count it (kubernetes
/// pkg/api/v1/pod `IsPodReady`: the condition alone, a terminating pod included).
/// Clients that need a pod that stays use `kinds::pod_ready`, which also wants it
/// not being deleted. Read from the JSON directly: the controllers run this over
/// every pod on every pass.
pub(crate) fn pod_ready(p: &Value) -> bool {
    p.get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Whether `owner` (by uid) is the controller of `o`.
pub(crate) fn owned_by(o: &Value, owner_uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|rs| rs.iter().any(|r| r["uid"] == owner_uid))
}

pub(crate) fn owner_ref(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!([{
        "apiVersion": api_version, "kind": kind, "name": name(owner), "uid": uid(owner),
        "controller": true, "blockOwnerDeletion": true,
    }])
}

/// A workload's `spec.selector.matchLabels` as a predicate on labels (matchExpressions
/// are honoured for In/NotIn/Exists/DoesNotExist).
pub(crate) fn selector_matches(selector: &Value, labels: &Value) -> bool {
    sched::label_selector_matches(selector, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxOptions;
    use serde_json::json;

    fn deployment(name: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}},
                                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    }

    fn create(sb: &Sandbox, name: &str) {
        let r = sb
            .store()
            .create(&deploy_gvr(), "default", deployment(name), &wopts("client"));
        assert!(r.is_ok(), "{r:?}");
    }

    /// The sandbox's Deployment controller creates pods itself (no ReplicaSet).
    fn pods(sb: &Sandbox) -> usize {
        list(sb, &pods_gvr(), Some("default")).len()
    }

    #[tokio::test]
    async fn a_settle_runs_no_pass_while_nothing_changes_and_one_after_a_write() {
        let sb = Sandbox::new(SandboxOptions::default());
        let mut c = Controllers::new(&sb, ControllerOptions::default()).unwrap();
        let f = ControllerFaults::default();
        create(&sb, "web");
        c.settle(&f);
        assert_eq!(pods(&sb), 1);
        // Nothing written and no pod due (no node to run on): nothing to do.
        c.settle(&f);
        let quiet = c.passes();
        c.settle(&f);
        c.tick();
        assert_eq!(c.passes(), quiet, "a quiet settle or tick runs no pass");
        create(&sb, "api");
        c.settle(&f);
        assert!(c.passes() > quiet);
        assert_eq!(pods(&sb), 2);
    }

    #[tokio::test]
    async fn a_write_landing_during_a_pass_is_reconciled_by_the_next_settle() {
        let sb = Sandbox::new(SandboxOptions::default());
        let mut c = Controllers::new(&sb, ControllerOptions::default()).unwrap();
        let f = ControllerFaults::default();
        c.settle(&f);
        // The write lands after the pass read the store: that pass cannot have seen
        // it, so the settle must not call the store settled.
        c.mid_pass = Some(Box::new(|sb: &Sandbox| create(sb, "late")));
        // A write no controller acts on, so the one pass it asks for writes nothing.
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "unrelated", "namespace": "default"}});
        let r = sb.store().create(
            &gvr("", "v1", "configmaps"),
            "default",
            cm,
            &wopts("client"),
        );
        assert!(r.is_ok(), "{r:?}");
        c.settle(&f);
        assert_eq!(pods(&sb), 0, "the pass had read the store before the write");
        c.settle(&f);
        assert_eq!(pods(&sb), 1, "the next settle reconciles it");
    }

    /// A pod the lifecycle found settled is skipped only while it and its node are the
    /// copies it read: a node deleted since takes its pods with it (pod GC).
    #[tokio::test]
    async fn a_settled_pod_is_looked_at_again_when_its_node_goes() {
        let sb = Sandbox::new(SandboxOptions::default());
        let mut c = Controllers::new(&sb, ControllerOptions::default()).unwrap();
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                          "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.5"}]}});
        let r = sb.store().create(&nodes_gvr(), "", node, &wopts("client"));
        assert!(r.is_ok(), "{r:?}");
        create(&sb, "web");
        let running = |sb: &Sandbox| {
            list(sb, &pods_gvr(), Some("default"))
                .iter()
                .any(|p| p.pointer("/status/phase") == Some(&json!("Running")))
        };
        assert!(c.run_until(20, running), "the pod never ran");
        c.tick();
        let r = sb.store().delete(
            &nodes_gvr(),
            "",
            "n1",
            &crate::sandbox::DeleteOptions::default(),
        );
        assert!(r.is_ok(), "{r:?}");
        c.tick();
        let on_n1: Vec<Value> = list(&sb, &pods_gvr(), Some("default"))
            .into_iter()
            .filter(|p| p.pointer("/spec/nodeName") == Some(&json!("n1")))
            .collect();
        assert!(on_n1.is_empty(), "pods left on a deleted node: {on_n1:?}");
    }
}
