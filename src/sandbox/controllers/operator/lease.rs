//! The operator's leader election, as its manager configures it: tigera/operator
//! `main.go` (v1.17.4 :161-162, v1.20.1 :162-163; v1.38.6 `cmd/main.go`:253-254) sets
//! `LeaderElection: true, LeaderElectionID: "operator-lock"` and nothing else, so
//! controller-runtime's defaults hold (v0.7.0 and v0.20.2 pkg/manager/internal.go:
//! LeaseDuration 15 s, RenewDeadline 10 s, RetryPeriod 2 s; `LeaderElectionReleaseOnCancel`
//! false). A stopped operator does not give the lock up: its successor reconciles
//! nothing until the lease has gone 15 s without renewal. That is what a freeze and
//! unfreeze (scale to 0 and back) costs on a real cluster beside the pod's start,
//! unless someone releases the lock meanwhile: a Lease with no holder (client-go's
//! step-down record) or none at all is taken at the candidate's next try.
//!
//! The lock is Lease `operator-lock` in the operator's namespace (v0.20.2
//! pkg/leaderelection/leader_election.go:71-73 defaults to "leases"); v0.7.0 (the
//! v1.17 and v1.20 lines) defaults to "configmapsleases" (:59-63), a ConfigMap and a Lease
//! of that name held together; the sandbox writes the Lease only (docs/sandbox-behaviour.md).

use serde_json::{Value, json};

use super::super::{get, gvr, merge, wopts};
use super::MANAGER;
use crate::sandbox::{Sandbox, Subresource};

/// `LeaderElectionID`.
pub const LEASE_NAME: &str = "operator-lock";
/// controller-runtime's default LeaseDuration.
pub const LEASE_DURATION_SECONDS: f64 = 15.0;
/// controller-runtime's default RetryPeriod: how often the leader renews and a
/// candidate tries.
const RETRY_PERIOD_SECONDS: f64 = 2.0;

/// Who holds the lock and when it last renewed it, in simulated seconds.
#[derive(Debug, Default)]
pub struct LeaderLease {
    holder: Option<String>,
    renewed: f64,
    tried: f64,
    transitions: u64,
}

impl LeaderLease {
    /// Whether `process` leads now: it holds the lease (renewing it every retry
    /// period), or takes it because no one held it or the holder's last renewal is a
    /// lease duration old (tried every retry period, as client-go's elector does).
    pub fn lead(&mut self, sb: &Sandbox, op: &Value, process: &str, now: f64) -> bool {
        let ns = op
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("tigera-operator");
        // A lock released as client-go's elector steps down (no holder) or deleted is
        // free: a candidate takes it at its next try (`tryAcquireOrRenew`).
        let record = get(
            sb,
            &gvr("coordination.k8s.io", "v1", "leases"),
            ns,
            LEASE_NAME,
        );
        let released = match &record {
            Some(l) => l
                .pointer("/spec/holderIdentity")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty),
            None => true,
        };
        if released && self.holder.as_deref() != Some(process) {
            self.holder = None;
        }
        if self.holder.as_deref() == Some(process) {
            if now - self.renewed >= RETRY_PERIOD_SECONDS {
                self.renewed = now;
                write(sb, ns, process, self.transitions, false);
            }
            return true;
        }
        if now - self.tried < RETRY_PERIOD_SECONDS {
            return false;
        }
        self.tried = now;
        let expired = self.holder.is_none() || now - self.renewed >= LEASE_DURATION_SECONDS;
        if !expired {
            return false;
        }
        if self.holder.is_some() {
            self.transitions += 1;
        }
        self.holder = Some(process.to_string());
        self.renewed = now;
        write(sb, ns, process, self.transitions, true);
        // The manager starts its controllers once elected: it reconciles from the next step.
        false
    }
}

/// The Lease as client-go's LeaseLock writes it (`holderIdentity`,
/// `leaseDurationSeconds`, `acquireTime`, `renewTime`, `leaseTransitions`).
fn write(sb: &Sandbox, ns: &str, holder: &str, transitions: u64, acquired: bool) {
    let g = gvr("coordination.k8s.io", "v1", "leases");
    // A MicroTime, as metav1.MicroTime marshals it.
    let ts = jiff::Timestamp::now();
    let now = format!(
        "{}.{:06}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        ts.subsec_microsecond()
    );
    let mut spec = json!({"holderIdentity": holder, "leaseDurationSeconds": LEASE_DURATION_SECONDS as u64,
        "renewTime": now, "leaseTransitions": transitions});
    if acquired {
        spec["acquireTime"] = json!(now);
    }
    if get(sb, &g, ns, LEASE_NAME).is_some() {
        let _ = merge(
            sb,
            &g,
            ns,
            LEASE_NAME,
            Subresource::Main,
            &json!({ "spec": spec }),
            MANAGER,
        );
    } else {
        let _ = sb.store().create(
            &g,
            ns,
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                   "metadata": {"name": LEASE_NAME, "namespace": ns}, "spec": spec}),
            &wopts(MANAGER),
        );
    }
}
