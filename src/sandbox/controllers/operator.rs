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
//! - converter checks on kube-system DaemonSet calico-node (convert.rs); on
//!   refusal TigeraStatus `calico` Degraded / MigrationError with the operator's text;
//! - otherwise the migration in the documented order (migration.rs).

mod convert;
mod migration;
mod status;

pub use convert::{DEGRADED_PREFIX, OperatorRefusal, check_daemonset};
pub use migration::{expected_typha_replicas, kube_system_typha_target};

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

pub struct Operator {
    every: f64,
    last: f64,
}

impl Operator {
    pub fn new(every: f64) -> Self {
        Self {
            every,
            last: f64::NEG_INFINITY,
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
        let Some(install) = get(sb, &installations(), "", "default") else {
            return;
        };
        migration::act(sb, &op, &install, f);
    }
}
