//! Nodes and the calico-node agents on them, as the steps read them: which nodes
//! run DaemonSet pods (not Fargate), which carry the operator's migration label,
//! and on which a Ready calico-node runs.

use std::collections::BTreeSet;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::facts;
use super::refs::{FARGATE_LABEL, KUBE_SYSTEM, MIGRATION_LABEL};
use crate::cluster::objects::{ObjRef, Objects};

/// Non-Fargate nodes with no Ready calico-node pod (kube-system or calico-system).
pub async fn nodes_without_ready_agent(objects: &Objects) -> anyhow::Result<Vec<String>> {
    let mut ready: std::collections::BTreeSet<String> = Default::default();
    for (ns, sel) in [
        (KUBE_SYSTEM, "app.kubernetes.io/name=calico-node"),
        (KUBE_SYSTEM, "k8s-app=calico-node"),
        ("calico-system", "k8s-app=calico-node"),
    ] {
        for p in objects.list("v1", "Pod", Some(ns), Some(sel)).await? {
            if pod_ready(&p)
                && let Some(n) = facts::str_at(&p, "/spec/nodeName")
            {
                ready.insert(n.to_string());
            }
        }
    }
    Ok(worker_nodes(objects)
        .await?
        .into_iter()
        .filter(|n| !ready.contains(facts::name_of(n)))
        .map(|n| facts::name_of(&n).to_string())
        .collect())
}

/// Nodes that run DaemonSet pods: every node except Fargate ones.
pub async fn worker_nodes(objects: &Objects) -> anyhow::Result<Vec<Value>> {
    Ok(objects
        .list("v1", "Node", None, None)
        .await?
        .into_iter()
        .filter(|n| !is_fargate(n))
        .filter(|n| n.pointer("/metadata/deletionTimestamp").is_none())
        .collect())
}

pub fn is_fargate(node: &Value) -> bool {
    node.pointer(&format!(
        "/metadata/labels/{}",
        FARGATE_LABEL.replace('/', "~1")
    ))
    .and_then(Value::as_str)
        == Some("fargate")
}

/// Ready condition True and not being deleted.
pub fn pod_ready(p: &Value) -> bool {
    p.pointer("/metadata/deletionTimestamp").is_none()
        && p.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
}

/// A node as the takeover sees it.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub name: String,
    pub label: Option<String>,
    pub fargate: bool,
}

pub async fn list_nodes(objects: &Objects) -> anyhow::Result<Vec<NodeState>> {
    let mut out: Vec<NodeState> = objects
        .list("v1", "Node", None, None)
        .await?
        .iter()
        .filter(|n| n.pointer("/metadata/deletionTimestamp").is_none())
        .map(|n| {
            let labels = n.pointer("/metadata/labels");
            let label = |k: &str| {
                labels
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            NodeState {
                name: n
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                label: label(MIGRATION_LABEL),
                fargate: label(FARGATE_LABEL).as_deref() == Some("fargate"),
            }
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

/// Nodes with a Ready calico-node pod in `namespace` (operator label `k8s-app`, chart
/// label `app.kubernetes.io/name`).
pub async fn agents_ready(objects: &Objects, namespace: &str) -> anyhow::Result<BTreeSet<String>> {
    let pods = objects.list("v1", "Pod", Some(namespace), None).await?;
    Ok(pods
        .iter()
        .filter(|p| {
            ["k8s-app", "app.kubernetes.io/name"].iter().any(|k| {
                p.pointer("/metadata/labels")
                    .and_then(|l| l.get(*k))
                    .and_then(Value::as_str)
                    == Some("calico-node")
            })
        })
        .filter(|p| pod_ready(p))
        .filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

pub fn selects(ds: &Value, value: &str) -> bool {
    ds.pointer("/spec/template/spec/nodeSelector")
        .and_then(|s| s.get(MIGRATION_LABEL))
        .and_then(Value::as_str)
        == Some(value)
}
