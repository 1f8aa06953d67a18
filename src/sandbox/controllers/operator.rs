//! The Tigera operator's takeover of a kube-system Calico install, simulated
//! from tigera/operator pkg/controller/migration/namespace_migration.go and
//! pkg/controller/migration/convert/*.go (see docs/upstream.md, "The operator's
//! migration"). One action per `operator_step`, each chosen from the live
//! cluster state, so the operator resumes wherever it was stopped:
//!
//! - active only while Deployment `tigera-operator/tigera-operator` has a ready
//!   replica (scale it to 0 and it freezes; scale back and it resumes);
//! - on Installation `default`: finalizer `tigera.io/operator-cleanup` (removed
//!   only by a running operator when the Installation is deleted: calico issue 6629);
//! - the migration converter on the kube-system install (convert.rs), until it first
//!   succeeds in an operator process; on refusal TigeraStatus `calico` Degraded with
//!   the operator's text;
//! - v1.17.x / v1.20.x on a Kubernetes without policy/v1beta1 PodDisruptionBudget
//!   (1.25+): the render fails, Degraded, no migration (migration.rs `render_failure`);
//! - otherwise the migration in the documented order (migration.rs);
//! - a Degraded it sets stays until a reconcile needs no migration or the operator
//!   process ends ([`StatusMemory`]);
//! - a new operator process reconciles only once it holds Lease `operator-lock`, which
//!   the last one, stopped without releasing it, keeps for 15 s after its last renewal
//!   (lease.rs);
//! - it tries for that lease only `start_delay` simulated seconds after its pod turned
//!   Ready: tigera/operator's `main` runs its discovery and set-up before `mgr.Start`
//!   starts the leader election (v1.38.6 cmd/main.go:192-466, v1.17.4 main.go:131-227);
//!   0 by default, 4.5 s under the realistic timings (`ControllerOptions::realistic`).
//!   The operator Deployment has no readiness probe, so its pod is Ready as its
//!   container starts: that is the process's start. The first reconcile after the
//!   lease is won comes one `operator_step` later; the informers' cache sync, the
//!   conversion and the render are charged nothing beyond that step.

mod convert;
mod lease;
mod migration;
mod status;

pub use convert::{DEGRADED_PREFIX, Existing, OperatorRefusal, RefusalKind, convert, version_of};
pub use lease::{LEASE_DURATION_SECONDS, LEASE_NAME};
pub use migration::{
    Line, MIGRATION_ERROR_REASON, TYPHA_TIMEOUT, TYPHA_WAIT_SECONDS, expected_typha_replicas,
    kube_system_typha_target,
};

use serde_json::Value;

use super::faults::ControllerFaults;
use super::{deploy_gvr, get, gvr};
use crate::sandbox::{Gvr, Sandbox};

pub const FINALIZER: &str = "tigera.io/operator-cleanup";
pub const MANAGER: &str = "tigera-operator";

pub fn installations() -> Gvr {
    gvr("operator.tigera.io", "v1", "installations")
}
pub fn tigerastatuses() -> Gvr {
    gvr("operator.tigera.io", "v1", "tigerastatuses")
}

/// The operator Deployment, if a Ready operator pod runs that is not being deleted:
/// a pod being deleted has had its SIGTERM and its manager stops reconciling, so
/// scaling the Deployment to 0 freezes the operator as soon as the ReplicaSet
/// deletes the pod, whatever the Deployment's status still says.
pub fn running_operator(sb: &Sandbox) -> Option<Value> {
    let d = get(sb, &deploy_gvr(), "tigera-operator", "tigera-operator")?;
    let wanted = d
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let pods = sb
        .store()
        .list(
            &super::pods_gvr(),
            Some("tigera-operator"),
            &crate::sandbox::ListOptions::default(),
        )
        .map(|l| l.items)
        .unwrap_or_default();
    let alive = pods
        .iter()
        .any(|p| !super::deleting(p) && super::pod_ready(p));
    (wanted >= 1 && alive).then_some(d)
}

/// The operator's image tag (e.g. `v1.20.1`), read from its Deployment.
pub fn operator_version(deploy: &Value) -> String {
    deploy
        .pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
        .and_then(|i| i.rsplit_once(':').map(|(_, t)| t.to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// What one operator process's status manager holds in memory: its explicit
/// Degraded (reason, message). tigera/operator v1.17.4 pkg/controller/status/status.go:277-292
/// (v1.20.1 :319-334, v1.38.6 :355-375) keep it in the process only: a new operator pod
/// starts with none and overwrites a stale TigeraStatus Degraded at its first status
/// write, unless it sets Degraded again (status.go:138-142, v1.38.6 :180-181).
#[derive(Debug, Default)]
pub struct StatusMemory {
    process: Option<String>,
    degraded: Option<(String, String)>,
    /// `migrationChecked`: once a conversion succeeded, the process never runs the
    /// converter again (v1.17.4 core_controller.go:672 and :739, v1.38.6 :796 and :919).
    migration_checked: bool,
}

impl StatusMemory {
    /// `SetDegraded(reason, msg)`: kept until `ClearDegraded` or the process ends.
    pub fn set_degraded(&mut self, reason: &str, message: String) {
        self.degraded = Some((reason.to_string(), message));
    }
    /// `ClearDegraded()`: only at the end of a reconcile that needs no migration
    /// (v1.17.4 core_controller.go:1156, v1.20.1 :1194, v1.38.6 :1587).
    pub fn clear_degraded(&mut self) {
        self.degraded = None;
    }
    pub fn degraded(&self) -> Option<&(String, String)> {
        self.degraded.as_ref()
    }
    /// Whether this process has converted the kube-system install already.
    pub fn migration_checked(&self) -> bool {
        self.migration_checked
    }
    /// A conversion succeeded: the process does not check again.
    pub fn set_migration_checked(&mut self) {
        self.migration_checked = true;
    }
}

/// The Ready operator pod that is not being deleted, as its leader-election identity:
/// one operator process. controller-runtime names a candidate `<hostname>_<uuid>`
/// (v0.7.0 and v0.20.2 pkg/leaderelection/leader_election.go: `os.Hostname()`, a pod's
/// name, then a fresh UUID); the pod's uid stands for the UUID.
fn operator_process(sb: &Sandbox) -> Option<String> {
    sb.store()
        .list(
            &super::pods_gvr(),
            Some("tigera-operator"),
            &crate::sandbox::ListOptions::default(),
        )
        .ok()?
        .items
        .iter()
        .filter(|p| !super::deleting(p) && super::pod_ready(p))
        .filter_map(|p| {
            let uid = p.pointer("/metadata/uid").and_then(Value::as_str)?;
            let name = p.pointer("/metadata/name").and_then(Value::as_str)?;
            Some((uid.to_string(), format!("{name}_{uid}")))
        })
        .min()
        .map(|(_, id)| id)
}

pub struct Operator {
    every: f64,
    last: f64,
    /// Simulated seconds a new process spends before it tries the lease.
    start_delay: f64,
    /// When the current process was first seen Ready.
    process_since: f64,
    memory: StatusMemory,
    run: migration::RunMemory,
    lease: lease::LeaderLease,
}

impl Operator {
    pub fn new(every: f64, start_delay: f64) -> Self {
        Self {
            every,
            last: f64::NEG_INFINITY,
            start_delay,
            process_since: 0.0,
            memory: StatusMemory::default(),
            run: migration::RunMemory::default(),
            lease: lease::LeaderLease::default(),
        }
    }

    /// Act once if its step interval has passed.
    pub fn step(&mut self, sb: &Sandbox, now: f64, f: &ControllerFaults) {
        if now - self.last + 1e-9 < self.every {
            return;
        }
        self.last = now;
        let Some(op) = running_operator(sb) else {
            return;
        };
        let process = operator_process(sb);
        if self.memory.process != process {
            // A new operator process: a fresh status manager and migration run.
            self.memory = StatusMemory {
                process: process.clone(),
                ..StatusMemory::default()
            };
            self.run = migration::RunMemory::default();
            self.process_since = now;
        }
        // It reconciles only once it leads (main.go LeaderElection, "operator-lock").
        let Some(process) = process else {
            return;
        };
        // Its `main` has not reached `mgr.Start` yet: no election, no reconcile.
        if now - self.process_since + 1e-9 < self.start_delay {
            return;
        }
        if !self.lease.lead(sb, &op, &process, now) {
            return;
        }
        let Some(install) = get(sb, &installations(), "", "default") else {
            // OnCRNotFound clears the explicit Degraded (v1.17.4 status.go:174-175).
            self.memory.clear_degraded();
            return;
        };
        migration::act(sb, &op, &install, f, &mut self.memory, &mut self.run, now);
    }
}
