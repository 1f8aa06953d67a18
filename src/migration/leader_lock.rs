//! The Tigera operator's leader-election lock, released once a freeze has stopped every
//! operator pod.
//!
//! tigera/operator `main.go` (v1.17.4 :161-162, v1.38.6 `cmd/main.go`:253-254) runs its
//! manager with `LeaderElection: true, LeaderElectionID: "operator-lock"` and
//! controller-runtime's defaults (LeaseDuration 15 s, RetryPeriod 2 s,
//! `LeaderElectionReleaseOnCancel` false): a stopped operator keeps the lock, and the
//! next operator pod reconciles nothing until it has gone 15 s unrenewed. Each freeze and
//! start would pay that. Once no operator pod is left, nothing holds the lock any more,
//! so `calico-migrate` writes the record client-go's elector writes when it steps down
//! (`release()` in k8s.io/client-go tools/leaderelection/leaderelection.go: no holder, a
//! lease of 1 s): a candidate takes a lock without a holder at its first try
//! (`tryAcquireOrRenew`). The lock is Lease `operator-lock` in the operator's namespace;
//! controller-runtime v0.7.0 (operator v1.17 and v1.20) holds a ConfigMap of that name
//! too ("configmapsleases", a MultiLock whose holders must agree), so both are released.

use serde_json::{Value, json};

use super::refs::OPERATOR_NAMESPACE;
use super::world::World;
use crate::cluster::objects::ObjRef;

/// `LeaderElectionID`.
pub const LOCK_NAME: &str = "operator-lock";
/// Where client-go's ConfigMapLock keeps its record (resourcelock
/// `LeaderElectionRecordAnnotationKey`).
pub const CONFIGMAP_RECORD: &str = "control-plane.alpha.kubernetes.io/leader";

pub fn lease_ref() -> ObjRef {
    ObjRef::new(
        "coordination.k8s.io/v1",
        "Lease",
        Some(OPERATOR_NAMESPACE),
        LOCK_NAME,
    )
}

pub fn configmap_ref() -> ObjRef {
    ObjRef::new("v1", "ConfigMap", Some(OPERATOR_NAMESPACE), LOCK_NAME)
}

/// The merge patch that releases a held Lease, or None when it has no holder.
pub fn lease_release(lease: &Value) -> Option<Value> {
    let holder = lease
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or_default();
    (!holder.is_empty()).then(|| json!({"spec": {"holderIdentity": "", "leaseDurationSeconds": 1}}))
}

/// The merge patch that releases a held ConfigMap lock (its record is JSON in an
/// annotation), or None when it has no record or no holder.
pub fn configmap_release(cm: &Value) -> Option<Value> {
    let raw = cm
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(CONFIGMAP_RECORD))
        .and_then(Value::as_str)?;
    let mut record: Value = serde_json::from_str(raw).ok()?;
    let holder = record
        .get("holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if holder.is_empty() {
        return None;
    }
    record["holderIdentity"] = json!("");
    record["leaseDurationSeconds"] = json!(1);
    Some(json!({"metadata": {"annotations": {CONFIGMAP_RECORD: record.to_string()}}}))
}

/// Release the lock a stopped operator left. Call only when no operator pod is left.
/// A failure (say, RBAC without these two objects) only costs the next start up to
/// 15 s: it is logged, never an error.
pub async fn release(world: &World) {
    for (r, patch) in [
        (lease_ref(), lease_release as fn(&Value) -> Option<Value>),
        (configmap_ref(), configmap_release),
    ] {
        let result = match world.objects.get(&r).await {
            Ok(Some(o)) => match patch(&o) {
                Some(p) => world.objects.merge(&r, &p).await.map(|_| true),
                None => Ok(false),
            },
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => tracing::debug!("released the stopped operator's lock {}", r.describe()),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "could not release the stopped operator's leader lock {} ({e}); its next start waits up to 15 s for the lock to expire",
                r.describe()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lease_is_released_as_client_go_steps_down() {
        let held = json!({"spec": {"holderIdentity": "tigera-operator-5d9f_1a2b", "leaseDurationSeconds": 15}});
        assert_eq!(
            lease_release(&held),
            Some(json!({"spec": {"holderIdentity": "", "leaseDurationSeconds": 1}}))
        );
        assert_eq!(
            lease_release(&json!({"spec": {"holderIdentity": ""}})),
            None
        );
        assert_eq!(lease_release(&json!({"spec": {}})), None);
    }

    #[test]
    fn a_held_configmap_record_is_released_and_the_rest_kept() {
        let record = r#"{"holderIdentity":"op_1","leaseDurationSeconds":15,"acquireTime":"2026-01-01T00:00:00Z","renewTime":"2026-01-01T00:01:00Z","leaderTransitions":3}"#;
        let cm = json!({"metadata": {"annotations": {CONFIGMAP_RECORD: record}}});
        let patch = configmap_release(&cm).unwrap_or_default();
        let written: Value = serde_json::from_str(
            patch["metadata"]["annotations"][CONFIGMAP_RECORD]
                .as_str()
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        assert_eq!(written["holderIdentity"], "");
        assert_eq!(written["leaseDurationSeconds"], 1);
        assert_eq!(written["leaderTransitions"], 3);
        assert_eq!(written["renewTime"], "2026-01-01T00:01:00Z");
        let free =
            json!({"metadata": {"annotations": {CONFIGMAP_RECORD: r#"{"holderIdentity":""}"#}}});
        assert_eq!(configmap_release(&free), None);
        assert_eq!(configmap_release(&json!({"metadata": {}})), None);
    }
}
