//! Which nodes a pod template fits, as the DaemonSet controller and the
//! scheduler decide it (k8s.io/kubernetes pkg/controller/daemon
//! `NodeShouldRunDaemonPod`, component-helpers nodeaffinity, taint helpers):
//! nodeSelector, required node affinity, and NoSchedule/NoExecute taints
//! against tolerations. Resources, ports (except the typha fault) and
//! preferred affinity are not considered.

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
    let empty = Value::Object(Default::default());
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
    tolerates(pod_spec, node)
}

/// Every NoSchedule / NoExecute taint of the node is tolerated.
pub fn tolerates(pod_spec: &Value, node: &Value) -> bool {
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
        .filter(|t| matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
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
        let mut keyed = spec.clone();
        keyed["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "cpu"}]);
        assert!(!fits(&keyed, &node), "wrong toleration value");
        assert!(label_selector_matches(
            &json!({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "DoesNotExist"}]}),
            &json!({"a": "1"})
        ));
    }
}
