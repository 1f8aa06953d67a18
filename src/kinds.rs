//! Typed views (k8s-openapi) of the built-in kinds whose shape is known — Node, Pod,
//! DaemonSet, Deployment — and the predicates on them that must mean the same in
//! every layer: a Fargate node, a Ready node or pod, a DaemonSet rolled out, a
//! Deployment ready. Objects travel as JSON (`cluster::objects`, the sandbox's
//! store: CRDs and snapshots have no fixed shape); [`view`] reads one of these kinds
//! from it without copying.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Node label EKS sets on Fargate nodes, value `fargate` (EKS user guide, "AWS
/// Fargate considerations": Fargate pods run on a node of their own that runs no
/// DaemonSet pod).
pub const FARGATE_LABEL: &str = "eks.amazonaws.com/compute-type";

/// `v` read as `T`; None when it is not one (a field of the wrong type, a required
/// field missing).
pub fn view<T: DeserializeOwned>(v: &Value) -> Option<T> {
    T::deserialize(v).ok()
}

/// Whether `v`, read as `T`, satisfies `test` (false when it is not a `T`).
pub fn is<T: DeserializeOwned>(v: &Value, test: impl Fn(&T) -> bool) -> bool {
    view(v).is_some_and(|t| test(&t))
}

/// The object is being deleted (deletionTimestamp set).
pub fn deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// A Fargate node: it runs no DaemonSet pod, so no calico-node.
pub fn is_fargate(node: &Node) -> bool {
    is_fargate_node(&node.metadata)
}

/// [`is_fargate`] from the node's metadata alone (a metadata-only list).
pub fn is_fargate_node(meta: &ObjectMeta) -> bool {
    label(meta, FARGATE_LABEL) == Some("fargate")
}

/// The node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Ready condition True and not being deleted.
pub fn pod_ready(pod: &Pod) -> bool {
    !deleting(&pod.metadata)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node a pod is bound to.
pub fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

/// A pod label's value.
pub fn pod_label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    label(&pod.metadata, key)
}

/// A DaemonSet whose current template runs Ready on every node it selects: the
/// controller has seen the latest spec (observedGeneration), and every scheduled pod
/// is updated and Ready. Stricter than `kubectl rollout status`, which counts
/// available pods: Ready is what a probe through the node needs.
pub fn daemonset_rolled_out(ds: &DaemonSet) -> bool {
    let Some(s) = &ds.status else {
        return false;
    };
    s.observed_generation.unwrap_or(-1) == ds.metadata.generation.unwrap_or(0)
        && s.desired_number_scheduled == s.number_ready
        && Some(s.desired_number_scheduled) == s.updated_number_scheduled
}

/// Every desired replica Ready (and at least one desired).
pub fn deployment_ready(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    want >= 1 && ready >= want
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ready: &str, deleting: bool) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"k8s-app": "calico-node"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        p
    }

    #[test]
    fn pods_are_ready_only_with_ready_true_and_not_deleting() {
        assert!(is(&pod("True", false), pod_ready));
        assert!(!is(&pod("False", false), pod_ready));
        assert!(!is(&pod("True", true), pod_ready));
        let p: Pod = view(&pod("True", false)).unwrap();
        assert_eq!(pod_node(&p), Some("n1"));
        assert_eq!(pod_label(&p, "k8s-app"), Some("calico-node"));
        // Not a pod at all: no.
        assert!(!is(&json!({"spec": {"containers": 3}}), pod_ready));
    }

    #[test]
    fn fargate_and_ready_nodes() {
        let n = json!({"metadata": {"name": "f", "labels": {FARGATE_LABEL: "fargate"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(is(&n, is_fargate));
        assert!(is(&n, node_ready));
        let ec2 = json!({"metadata": {"name": "e", "labels": {FARGATE_LABEL: "ec2"}}});
        assert!(!is(&ec2, is_fargate));
        assert!(!is(&ec2, node_ready));
    }

    #[test]
    fn a_daemonset_is_rolled_out_when_every_scheduled_pod_is_updated_and_ready() {
        let ds = |generation: i64, observed: i64, ready: i32, updated: i32| {
            json!({"metadata": {"name": "d", "generation": generation},
                "spec": {"selector": {}, "template": {}},
                "status": {"observedGeneration": observed, "desiredNumberScheduled": 3,
                    "currentNumberScheduled": 3, "numberMisscheduled": 0,
                    "numberReady": ready, "updatedNumberScheduled": updated}})
        };
        assert!(is(&ds(2, 2, 3, 3), daemonset_rolled_out));
        assert!(
            !is(&ds(2, 1, 3, 3), daemonset_rolled_out),
            "spec not yet seen"
        );
        assert!(!is(&ds(2, 2, 2, 3), daemonset_rolled_out), "one not Ready");
        assert!(
            !is(&ds(2, 2, 3, 2), daemonset_rolled_out),
            "one not updated"
        );
        assert!(!is(
            &json!({"metadata": {"name": "d"}}),
            daemonset_rolled_out
        ));
    }

    #[test]
    fn a_deployment_is_ready_with_every_desired_replica_ready() {
        let d = |replicas: Option<i32>, ready: Option<i32>| {
            json!({"metadata": {"name": "d"},
                "spec": {"replicas": replicas, "selector": {}, "template": {}},
                "status": {"readyReplicas": ready}})
        };
        assert!(is(&d(Some(2), Some(2)), deployment_ready));
        assert!(
            is(&d(None, Some(1)), deployment_ready),
            "replicas default 1"
        );
        assert!(!is(&d(Some(2), Some(1)), deployment_ready));
        assert!(!is(&d(Some(0), Some(0)), deployment_ready), "scaled to 0");
    }
}
