//! Which nodes a pod template fits, as the DaemonSet controller and the
//! scheduler decide it (kubernetes/kubernetes pkg/controller/daemon/daemon_controller.go
//! `NodeShouldRunDaemonPod` and `predicates`, commit 0033f658: the template's nodeName,
//! `nodeaffinity.GetRequiredNodeAffinity(pod).Match(node)` — nodeSelector and required
//! node affinity —, and `FindMatchingUntoleratedTaint` over NoSchedule and NoExecute
//! taints; the scheduler's NodeAffinity and TaintToleration filter plugins check the
//! same for unbound pods). A DaemonSet pod on a node it no longer fits keeps running
//! unless the node affinity or an untolerated NoExecute taint excludes it
//! (`shouldContinueRunning`, [`may_continue`]). Resources, ports (except the typha
//! fault), preferred affinity and the tolerations the DaemonSet controller adds itself
//! (`AddOrUpdateDaemonPodTolerations`: not-ready, unreachable, pressure taints the
//! sandbox never sets) are not considered.

use serde_json::Value;

/// `spec.selector` (matchLabels + matchExpressions) against a label map.
pub fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(Value::Object(ml)) = selector.get("matchLabels")
        && !ml.iter().all(|(k, v)| get(k) == v.as_str())
    {
        return false;
    }
    let exprs = selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    exprs.iter().all(|e| expression_matches(e, &get))
}

fn expression_matches<'a>(e: &Value, get: &dyn Fn(&str) -> Option<&'a str>) -> bool {
    let key = e["key"].as_str().unwrap_or_default();
    let values: Vec<&str> = e["values"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let have = get(key);
    match e["operator"].as_str().unwrap_or_default() {
        "In" => have.is_some_and(|h| values.contains(&h)),
        "NotIn" => !have.is_some_and(|h| values.contains(&h)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(h), Some(v)) = (
                have.and_then(|h| h.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if e["operator"] == "Gt" { h > v } else { h < v }
        }
        _ => false,
    }
}

/// Whether a pod with this spec may run on `node`: nodeSelector, required
/// node affinity (terms ORed, expressions ANDed), and taints.
pub fn fits(pod_spec: &Value, node: &Value) -> bool {
    selects(pod_spec, node) && tolerates(pod_spec, node)
}

/// `shouldContinueRunning`: a DaemonSet pod already on `node` stays unless the node
/// name or affinity excludes it or a NoExecute taint is not tolerated (an untolerated
/// NoSchedule taint only stops new pods).
pub fn may_continue(pod_spec: &Value, node: &Value) -> bool {
    selects(pod_spec, node) && tolerates_effects(pod_spec, node, &["NoExecute"])
}

/// `fitsNodeName` and `fitsNodeAffinity`: the spec's nodeName (if any) is the node's,
/// its nodeSelector and required node affinity terms (ORed, expressions ANDed) match.
fn selects(pod_spec: &Value, node: &Value) -> bool {
    let empty = Value::Object(Default::default());
    let node_name = node.pointer("/metadata/name").and_then(Value::as_str);
    if let Some(want) = pod_spec.get("nodeName").and_then(Value::as_str)
        && !want.is_empty()
        && Some(want) != node_name
    {
        return false;
    }
    let labels = node.pointer("/metadata/labels").unwrap_or(&empty);
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    if let Some(Value::Object(sel)) = pod_spec.get("nodeSelector")
        && !sel.iter().all(|(k, v)| get(k) == v.as_str())
    {
        return false;
    }
    if let Some(terms) = pod_spec
        .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
    {
        let name = node.pointer("/metadata/name").and_then(Value::as_str);
        let any = terms.iter().any(|t| {
            let exprs = t["matchExpressions"].as_array().map(Vec::as_slice).unwrap_or_default();
            let fields = t["matchFields"].as_array().map(Vec::as_slice).unwrap_or_default();
            (!exprs.is_empty() || !fields.is_empty())
                && exprs.iter().all(|e| expression_matches(e, &get))
                && fields.iter().all(|e| {
                    let by_name = |k: &str| if k == "metadata.name" { name } else { None };
                    expression_matches(e, &by_name)
                })
        });
        if !any {
            return false;
        }
    }
    true
}

/// Every NoSchedule / NoExecute taint of the node is tolerated.
pub fn tolerates(pod_spec: &Value, node: &Value) -> bool {
    tolerates_effects(pod_spec, node, &["NoSchedule", "NoExecute"])
}

/// Every taint of the node with one of `effects` is tolerated.
fn tolerates_effects(pod_spec: &Value, node: &Value, effects: &[&str]) -> bool {
    let taints = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let tols = pod_spec
        .get("tolerations")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t["effect"].as_str().is_some_and(|e| effects.contains(&e)))
        .all(|t| tols.iter().any(|tol| toleration_matches(tol, t)))
}

/// k8s.io/api core/v1 `Toleration.ToleratesTaint`.
fn toleration_matches(tol: &Value, taint: &Value) -> bool {
    let effect = tol["effect"].as_str().unwrap_or_default();
    if !effect.is_empty() && Some(effect) != taint["effect"].as_str() {
        return false;
    }
    let key = tol["key"].as_str().unwrap_or_default();
    if !key.is_empty() && Some(key) != taint["key"].as_str() {
        return false;
    }
    match tol["operator"].as_str().unwrap_or("Equal") {
        "Exists" => true,
        _ => {
            tol["value"].as_str().unwrap_or_default() == taint["value"].as_str().unwrap_or_default()
                && !key.is_empty()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selector_affinity_and_taints() {
        let node = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/os": "linux"}},
                          "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}});
        let fargate = json!({"metadata": {"name": "f", "labels": {"eks.amazonaws.com/compute-type": "fargate"}}});
        let spec = json!({
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"]}]}]}}},
        });
        assert!(!fits(&spec, &node), "untolerated NoSchedule taint");
        let mut tolerant = spec.clone();
        tolerant["tolerations"] = json!([{"effect": "NoSchedule", "operator": "Exists"}]);
        assert!(fits(&tolerant, &node));
        assert!(
            !fits(&tolerant, &fargate),
            "nodeSelector and Fargate affinity"
        );
        // A NoSchedule taint stops new pods only; NoExecute also evicts.
        assert!(may_continue(&spec, &node));
        let mut evicting = node.clone();
        evicting["spec"]["taints"][0]["effect"] = json!("NoExecute");
        assert!(!may_continue(&spec, &evicting));
        assert!(!may_continue(&tolerant, &fargate), "affinity excludes it");
        // A template's nodeName pins the pod (fitsNodeName).
        let mut pinned = tolerant.clone();
        pinned["nodeName"] = json!("other");
        assert!(!fits(&pinned, &node));
        pinned["nodeName"] = json!("n1");
        assert!(fits(&pinned, &node));
        // The Fargate taint: only a toleration of it (or of every NoSchedule) lets a pod in.
        let fargate_node = json!({"metadata": {"name": "fargate-ip-10-0-0-12", "labels": {"eks.amazonaws.com/compute-type": "fargate"}},
            "spec": {"taints": [{"key": "eks.amazonaws.com/compute-type", "value": "fargate", "effect": "NoSchedule"}]}});
        assert!(!fits(&json!({}), &fargate_node));
        assert!(fits(
            &json!({"tolerations": [{"operator": "Exists"}]}),
            &fargate_node
        ));
        assert!(fits(
            &json!({"tolerations": [{"key": "eks.amazonaws.com/compute-type", "operator": "Equal",
            "value": "fargate", "effect": "NoSchedule"}]}),
            &fargate_node
        ));
        let mut keyed = spec.clone();
        keyed["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "cpu"}]);
        assert!(!fits(&keyed, &node), "wrong toleration value");
        assert!(label_selector_matches(
            &json!({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]}),
            &json!({"a": "1"})
        ));
    }
}
