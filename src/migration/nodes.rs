//! Nodes and the calico-node agents on them, as the steps read them: which nodes
//! run DaemonSet pods (not Fargate), which carry the operator's migration label,
//! and on which a Ready calico-node runs.

use std::collections::BTreeSet;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use super::refs::{CALICO_SYSTEM, KUBE_SYSTEM, MIGRATION_LABEL};
use crate::cluster::objects::{ObjRef, Objects};
use crate::kinds::{self, deleting, is_fargate, is_fargate_node, pod_label, pod_node, pod_ready};

/// The calico-node pods of both installs: the chart labels them
/// `app.kubernetes.io/name`, the operator `k8s-app`.
const AGENT_LABELS: [&str; 2] = ["k8s-app", "app.kubernetes.io/name"];

fn is_agent(pod: &Pod) -> bool {
    AGENT_LABELS
        .iter()
        .any(|k| pod_label(pod, k) == Some("calico-node"))
}

/// The nodes of the pods in `namespace` that are Ready calico-node agents.
fn ready_agent_nodes(pods: &[Value]) -> impl Iterator<Item = String> + '_ {
    pods.iter()
        .filter_map(kinds::view::<Pod>)
        .filter(|p| is_agent(p) && pod_ready(p))
        .filter_map(|p| pod_node(&p).map(str::to_string))
}

/// Non-Fargate nodes with no Ready calico-node pod (kube-system or calico-system).
pub async fn nodes_without_ready_agent(objects: &Objects) -> anyhow::Result<Vec<String>> {
    let mut ready: BTreeSet<String> = BTreeSet::new();
    for (ns, sel) in [
        (KUBE_SYSTEM, "app.kubernetes.io/name=calico-node"),
        (KUBE_SYSTEM, "k8s-app=calico-node"),
        (CALICO_SYSTEM, "k8s-app=calico-node"),
    ] {
        let pods = objects.list("v1", "Pod", Some(ns), Some(sel)).await?;
        ready.extend(ready_agent_nodes(&pods));
    }
    Ok(worker_nodes(objects)
        .await?
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .filter(|n| !ready.contains(n))
        .collect())
}

/// Why the calico-node agents are not settled (`settled::unsettled`): a node with no
/// Ready agent, or whose agent is about to be replaced, or a rolling update under way.
pub async fn unsettled_agents(objects: &Objects) -> anyhow::Result<Vec<String>> {
    let mut daemonsets = Vec::new();
    let mut agents: Vec<Pod> = Vec::new();
    for ns in [KUBE_SYSTEM, CALICO_SYSTEM] {
        daemonsets.extend(
            objects
                .list("apps/v1", "DaemonSet", Some(ns), None)
                .await?
                .iter()
                .filter_map(kinds::view::<k8s_openapi::api::apps::v1::DaemonSet>),
        );
        agents.extend(
            objects
                .list("v1", "Pod", Some(ns), None)
                .await?
                .iter()
                .filter_map(kinds::view::<Pod>)
                .filter(is_agent),
        );
    }
    let nodes: Vec<Node> = objects
        .list("v1", "Node", None, None)
        .await?
        .iter()
        .filter_map(kinds::view::<Node>)
        .collect();
    Ok(super::settled::unsettled(&nodes, &daemonsets, &agents))
}

/// Nodes that run DaemonSet pods: every node except Fargate ones and those being
/// deleted.
pub async fn worker_nodes(objects: &Objects) -> anyhow::Result<Vec<Node>> {
    Ok(objects
        .list("v1", "Node", None, None)
        .await?
        .iter()
        .filter_map(kinds::view::<Node>)
        .filter(|n| !is_fargate(n) && !deleting(&n.metadata))
        .collect())
}

/// A node as the takeover sees it.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub name: String,
    /// Its migration label (`pre-operator`, `migrated`), if any.
    pub label: Option<String>,
    pub fargate: bool,
}

/// Every node not being deleted, by name.
pub async fn list_nodes(objects: &Objects) -> anyhow::Result<Vec<NodeState>> {
    // Names and labels are all it reads: the nodes' metadata, not the whole nodes
    // (polled every period by the takeover's loops, at any cluster size).
    let mut out: Vec<NodeState> = objects
        .list_metadata("v1", "Node", None)
        .await?
        .into_iter()
        .filter(|m| !deleting(m))
        .map(|m| NodeState {
            label: m
                .labels
                .as_ref()
                .and_then(|l| l.get(MIGRATION_LABEL))
                .cloned(),
            fargate: is_fargate_node(&m),
            name: m.name.unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub async fn set_node_label(
    objects: &Objects,
    node: &str,
    value: Option<&str>,
) -> anyhow::Result<()> {
    let r = ObjRef::new("v1", "Node", None, node);
    objects
        .merge(
            &r,
            &json!({"metadata": {"labels": {MIGRATION_LABEL: value}}}),
        )
        .await
        .with_context(|| format!("labelling node {node}"))?;
    Ok(())
}

/// Nodes with a Ready calico-node pod in `namespace`.
pub async fn agents_ready(objects: &Objects, namespace: &str) -> anyhow::Result<BTreeSet<String>> {
    let pods = objects.list("v1", "Pod", Some(namespace), None).await?;
    Ok(ready_agent_nodes(&pods).collect())
}

/// Whether a calico-node DaemonSet's pods run only on nodes whose migration label
/// is `value`.
pub fn selects(ds: &Value, value: &str) -> bool {
    ds.pointer("/spec/template/spec/nodeSelector")
        .and_then(|s| s.get(MIGRATION_LABEL))
        .and_then(Value::as_str)
        == Some(value)
}
