//! Whether the calico-node agents are settled: every node runs a Ready agent that
//! nothing is about to replace.
//!
//! A probe pod must be created only where its node's agent stays until it has
//! programmed the pod: a pod created after the old agent went and before the new one
//! is Ready gets no rules from either, and fails closed there; the rules the old agent
//! left (if any) do not know its address either. "Every node has a Ready agent right
//! now" is not enough, because a replacement can already be decided and not yet
//! visible in the pods:
//! - the operator relabels a node (`projectcalico.org/operator-node-migration`) and the
//!   DaemonSet controller deletes the node's agent a moment later, when it syncs; the
//!   operator may be frozen in between, with the relabel already done
//!   (tigera/operator v1.38.6 `pkg/controller/migration/namespace_migration.go:614-619`,
//!   `migrateEachNode`: `addNodeLabel`, then one second's sleep "to give a chance for the
//!   label changes to propagate");
//! - a template change starts a rolling update that replaces one node's agent at a
//!   time: between two nodes, every node has a Ready agent
//!   (kubernetes `pkg/controller/daemon/update.go`, `rollingUpdate`, bounded by
//!   `maxUnavailable`).
//!
//! Pure: the caller lists the nodes, the DaemonSets and the agent pods.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};

use crate::kinds::{deleting, is_fargate, pod_node, pod_ready};

/// Why the agents are not settled, one sentence per DaemonSet or node; empty when they are.
pub fn unsettled(nodes: &[Node], daemonsets: &[DaemonSet], agents: &[Pod]) -> Vec<String> {
    let by_uid: BTreeMap<&str, &DaemonSet> = daemonsets
        .iter()
        .filter_map(|d| Some((d.metadata.uid.as_deref()?, d)))
        .collect();
    let mut out: Vec<String> = daemonsets.iter().filter_map(rolling_out).collect();
    for node in nodes
        .iter()
        .filter(|n| !is_fargate(n) && !deleting(&n.metadata))
    {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let ready: Vec<(&Pod, Option<&DaemonSet>)> = agents
            .iter()
            .filter(|p| pod_node(p) == Some(name) && pod_ready(p))
            .map(|p| (p, owner(p).and_then(|uid| by_uid.get(uid).copied())))
            .collect();
        if ready
            .iter()
            .any(|(_, ds)| ds.is_some_and(|d| selects(d, node)))
        {
            continue;
        }
        out.push(match ready.first() {
            None => format!("node {name} has no Ready calico-node"),
            Some((_, Some(ds))) => format!(
                "node {name}'s calico-node is about to be replaced: its DaemonSet {} no longer selects the node",
                qualified(&ds.metadata)
            ),
            Some((pod, None)) => format!(
                "node {name}'s calico-node {} belongs to no DaemonSet that still exists, so it is about to be removed",
                qualified(&pod.metadata)
            ),
        });
    }
    out
}

/// The DaemonSet's rolling update is under way (or not yet seen by its controller).
/// An `OnDelete` DaemonSet replaces nothing by itself, so it never counts.
fn rolling_out(ds: &DaemonSet) -> Option<String> {
    let spec = ds.spec.as_ref()?;
    let on_delete = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        == Some("OnDelete");
    if on_delete {
        return None;
    }
    let name = qualified(&ds.metadata);
    let status = ds.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation).unwrap_or(-1);
    if observed < ds.metadata.generation.unwrap_or(0) {
        return Some(format!(
            "the DaemonSet controller has not yet acted on the latest spec of {name}"
        ));
    }
    let status = status?;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    (updated < status.current_number_scheduled).then(|| {
        format!(
            "{name} is rolling out ({updated} of {} pods up to date)",
            status.current_number_scheduled
        )
    })
}

/// The DaemonSet's pod template nodeSelector matches the node's labels. Affinity is
/// left out on purpose: it only keeps agents off Fargate nodes, which run none, and a
/// pod's required affinity is only checked at scheduling (IgnoredDuringExecution).
fn selects(ds: &DaemonSet, node: &Node) -> bool {
    let Some(selector) = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.node_selector.as_ref())
    else {
        return true;
    };
    let labels = node.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The uid of the pod's controller.
fn owner(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

fn qualified(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::view;
    use serde_json::{Value, json};

    const LABEL: &str = "projectcalico.org/operator-node-migration";

    fn node(name: &str, label: Option<&str>) -> Node {
        let mut labels = json!({"kubernetes.io/os": "linux"});
        if let Some(l) = label {
            labels[LABEL] = json!(l);
        }
        view(&json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn ds(ns: &str, uid: &str, migration: Option<&str>, status: Value) -> DaemonSet {
        let mut selector = json!({"kubernetes.io/os": "linux"});
        if let Some(m) = migration {
            selector[LABEL] = json!(m);
        }
        view(
            &json!({"metadata": {"name": "calico-node", "namespace": ns, "uid": uid,
                "generation": 2},
            "spec": {"selector": {}, "template": {"spec": {
                "nodeSelector": selector, "containers": []}}},
            "status": status}),
        )
        .unwrap()
    }

    fn settled_status() -> Value {
        json!({"observedGeneration": 2, "desiredNumberScheduled": 2,
            "currentNumberScheduled": 2, "numberMisscheduled": 0, "numberReady": 2,
            "updatedNumberScheduled": 2})
    }

    fn agent(ns: &str, owner: &str, node: &str) -> Pod {
        view(
            &json!({"metadata": {"name": format!("calico-node-{node}"), "namespace": ns,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                    "name": "calico-node", "uid": owner, "controller": true}]},
            "spec": {"nodeName": node, "containers": []},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .unwrap()
    }

    #[test]
    fn every_node_on_the_daemonset_that_selects_it_is_settled() {
        let nodes = [node("a", Some("migrated")), node("b", Some("pre-operator"))];
        let dss = [
            ds("kube-system", "ks", Some("pre-operator"), settled_status()),
            ds("calico-system", "cs", Some("migrated"), settled_status()),
        ];
        let pods = [
            agent("calico-system", "cs", "a"),
            agent("kube-system", "ks", "b"),
        ];
        assert!(unsettled(&nodes, &dss, &pods).is_empty());
    }

    #[test]
    fn a_relabelled_node_whose_old_agent_still_runs_is_not_settled() {
        // The operator labelled b `migrated`; the DaemonSet controller has not deleted
        // its kube-system agent yet.
        let nodes = [node("a", Some("migrated")), node("b", Some("migrated"))];
        let dss = [
            ds("kube-system", "ks", Some("pre-operator"), settled_status()),
            ds("calico-system", "cs", Some("migrated"), settled_status()),
        ];
        let pods = [
            agent("calico-system", "cs", "a"),
            agent("kube-system", "ks", "b"),
        ];
        assert_eq!(
            unsettled(&nodes, &dss, &pods),
            [
                "node b's calico-node is about to be replaced: its DaemonSet kube-system/calico-node no longer selects the node"
            ]
        );
        // Once the new agent is Ready there, b is settled even before the old one goes.
        let mut pods = pods.to_vec();
        pods.push(agent("calico-system", "cs", "b"));
        assert!(unsettled(&nodes, &dss, &pods).is_empty());
    }

    #[test]
    fn a_rolling_update_between_two_nodes_is_not_settled() {
        let nodes = [node("a", None), node("b", None)];
        let mut status = settled_status();
        status["updatedNumberScheduled"] = json!(1);
        let dss = [ds("calico-system", "cs", None, status)];
        let pods = [
            agent("calico-system", "cs", "a"),
            agent("calico-system", "cs", "b"),
        ];
        assert_eq!(
            unsettled(&nodes, &dss, &pods),
            ["calico-system/calico-node is rolling out (1 of 2 pods up to date)"]
        );
        // A template change the controller has not seen yet.
        let mut status = settled_status();
        status["observedGeneration"] = json!(1);
        let dss = [ds("calico-system", "cs", None, status)];
        assert_eq!(
            unsettled(&nodes, &dss, &pods),
            [
                "the DaemonSet controller has not yet acted on the latest spec of calico-system/calico-node"
            ]
        );
        // OnDelete replaces nothing by itself.
        let mut on_delete = dss[0].clone();
        on_delete.spec.as_mut().unwrap().update_strategy = view(&json!({"type": "OnDelete"}));
        assert!(unsettled(&nodes, &[on_delete], &pods).is_empty());
    }

    #[test]
    fn missing_agents_orphans_and_fargate_nodes() {
        let mut fargate = node("f", None);
        fargate
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(crate::kinds::FARGATE_LABEL.into(), "fargate".into());
        let nodes = [node("a", None), node("b", None), fargate];
        let dss = [ds("calico-system", "cs", None, settled_status())];
        // a's agent belongs to a DaemonSet that was deleted; b has none.
        let pods = [agent("kube-system", "gone", "a")];
        assert_eq!(
            unsettled(&nodes, &dss, &pods),
            [
                "node a's calico-node kube-system/calico-node-a belongs to no DaemonSet that still exists, so it is about to be removed",
                "node b has no Ready calico-node",
            ]
        );
    }
}
