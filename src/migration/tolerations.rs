//! Which taints a pod's tolerations tolerate, and the chart's calico-node tolerations
//! narrowed so that they no longer tolerate the Fargate node taint.
//!
//! Why: no operator release accepts the chart's Fargate exclusion (a node affinity) on
//! kube-system calico-node during a migration, and every release labels every node,
//! Fargate ones too, for that DaemonSet; its catch-all NoSchedule toleration would then
//! put a pod on each Fargate node that can never start there, and the operator would wait
//! for it without end. The converter never reads tolerations (no `Toleration` in
//! tigera/operator pkg/controller/migration at v1.17.4 or v1.38.6), so the Fargate taint
//! (`eks.amazonaws.com/compute-type=fargate:NoSchedule`, on every Fargate node) can keep
//! calico-node off those nodes instead, once the catch-all is replaced by one toleration
//! per NoSchedule taint the other nodes carry.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::kinds::FARGATE_LABEL;

/// The taint EKS puts on every Fargate node.
pub fn fargate_taint() -> Value {
    json!({"key": FARGATE_LABEL, "value": "fargate", "effect": "NoSchedule"})
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// `Toleration.ToleratesTaint` (k8s.io/api core/v1 toleration.go): the effect matches
/// (or the toleration has none), and the key matches (an empty key with `Exists` matches
/// every key) with `Exists`, or `Equal` (the default) and the same value.
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = text(toleration, "effect");
    if !effect.is_empty() && effect != text(taint, "effect") {
        return false;
    }
    let key = text(toleration, "key");
    if !key.is_empty() && key != text(taint, "key") {
        return false;
    }
    match text(toleration, "operator") {
        "Exists" => true,
        "" | "Equal" => !key.is_empty() && text(toleration, "value") == text(taint, "value"),
        _ => false,
    }
}

/// `tolerations` with every toleration of the Fargate taint taken out; a catch-all
/// (no key) one is replaced by what it tolerated that is not the Fargate taint: its
/// NoExecute and PreferNoSchedule halves when it had no effect, and one `Exists`
/// toleration per key of `no_schedule_keys` (the NoSchedule taint keys of the nodes
/// calico-node must keep running on). None when nothing tolerates the Fargate taint.
pub fn without_fargate(
    tolerations: &[Value],
    no_schedule_keys: &BTreeSet<String>,
) -> Option<Vec<Value>> {
    let fargate = fargate_taint();
    if !tolerations.iter().any(|t| tolerates(t, &fargate)) {
        return None;
    }
    let mut out: Vec<Value> = Vec::new();
    let push = |t: Value, out: &mut Vec<Value>| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    let mut wants_keys = false;
    for t in tolerations {
        if !tolerates(t, &fargate) {
            push(t.clone(), &mut out);
            continue;
        }
        if !text(t, "key").is_empty() {
            // A toleration of that key alone: dropped.
            continue;
        }
        wants_keys = true;
        if text(t, "effect").is_empty() {
            for effect in ["NoExecute", "PreferNoSchedule"] {
                let mut half = t.clone();
                half["effect"] = json!(effect);
                push(half, &mut out);
            }
        }
    }
    if wants_keys {
        for key in no_schedule_keys
            .iter()
            .filter(|k| k.as_str() != FARGATE_LABEL)
        {
            let t = json!({"key": key, "operator": "Exists", "effect": "NoSchedule"});
            push(t, &mut out);
        }
    }
    Some(out)
}

/// The NoSchedule taint keys of `nodes`' specs (`spec.taints`).
pub fn no_schedule_keys<'a>(nodes: impl IntoIterator<Item = &'a Value>) -> BTreeSet<String> {
    nodes
        .into_iter()
        .flat_map(|n| {
            n.pointer("/spec/taints")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter(|t| text(t, "effect") == "NoSchedule")
        .map(|t| text(&t, "key").to_string())
        .filter(|k| !k.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The aws-calico 0.3.10 chart's calico-node tolerations (templates/daemon-set.yaml).
    fn chart() -> Vec<Value> {
        vec![
            json!({"effect": "NoSchedule", "operator": "Exists"}),
            json!({"key": "CriticalAddonsOnly", "operator": "Exists"}),
            json!({"effect": "NoExecute", "operator": "Exists"}),
        ]
    }

    #[test]
    fn toleration_matching_follows_tolerates_taint() {
        let fargate = fargate_taint();
        assert!(tolerates(&json!({"operator": "Exists"}), &fargate));
        assert!(tolerates(
            &json!({"effect": "NoSchedule", "operator": "Exists"}),
            &fargate
        ));
        assert!(!tolerates(
            &json!({"effect": "NoExecute", "operator": "Exists"}),
            &fargate
        ));
        assert!(tolerates(
            &json!({"key": FARGATE_LABEL, "operator": "Exists"}),
            &fargate
        ));
        assert!(tolerates(
            &json!({"key": FARGATE_LABEL, "value": "fargate"}),
            &fargate
        ));
        assert!(!tolerates(
            &json!({"key": FARGATE_LABEL, "value": "ec2"}),
            &fargate
        ));
        assert!(!tolerates(
            &json!({"key": "CriticalAddonsOnly", "operator": "Exists"}),
            &fargate
        ));
        // An empty key with Equal is invalid upstream and tolerates nothing.
        assert!(!tolerates(&json!({"effect": "NoSchedule"}), &fargate));
    }

    #[test]
    fn the_chart_catch_all_becomes_one_toleration_per_ec2_taint() {
        let keys: BTreeSet<String> = ["dedicated".to_string(), FARGATE_LABEL.to_string()].into();
        let got = without_fargate(&chart(), &keys).unwrap_or_default();
        assert_eq!(
            got,
            vec![
                json!({"key": "CriticalAddonsOnly", "operator": "Exists"}),
                json!({"effect": "NoExecute", "operator": "Exists"}),
                json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}),
            ]
        );
        assert!(!got.iter().any(|t| tolerates(t, &fargate_taint())));
        // Every EC2 taint the chart tolerated is still tolerated.
        let dedicated = json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"});
        assert!(got.iter().any(|t| tolerates(t, &dedicated)));
    }

    #[test]
    fn a_toleration_of_everything_keeps_its_other_effects() {
        let got =
            without_fargate(&[json!({"operator": "Exists"})], &BTreeSet::new()).unwrap_or_default();
        assert_eq!(
            got,
            vec![
                json!({"operator": "Exists", "effect": "NoExecute"}),
                json!({"operator": "Exists", "effect": "PreferNoSchedule"}),
            ]
        );
    }

    #[test]
    fn nothing_to_narrow_is_none() {
        let t = [json!({"key": "CriticalAddonsOnly", "operator": "Exists"})];
        assert_eq!(without_fargate(&t, &BTreeSet::new()), None);
    }

    #[test]
    fn taint_keys_are_read_from_node_specs() {
        let nodes = [
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"},
                                       {"key": "spot", "effect": "PreferNoSchedule"}]}}),
            json!({"spec": {}}),
        ];
        assert_eq!(
            no_schedule_keys(nodes.iter()),
            ["dedicated".to_string()].into_iter().collect()
        );
    }
}
