//! Node join and removal. A joining node is built like the seed scenario's
//! nodes (sandbox::scenario::cluster::node: next free index, same region and
//! seed), so it gets an IP in the zone's subnet and the usual labels; the
//! DaemonSet controller then schedules its daemons. A removed node takes its
//! pods with it (pods.rs deletes pods bound to missing nodes).

use serde_json::Value;

use super::faults::ControllerFaults;
use super::{label, list, name, nodes_gvr};
use crate::sandbox::scenario::cluster;
use crate::sandbox::{ApiError, DeleteOptions, Sandbox, Subresource};

/// The label the operator puts on nodes while it migrates them.
pub const MIGRATION_LABEL: &str = "projectcalico.org/operator-node-migration";

#[derive(Default)]
pub struct NodeLifecycle {
    /// `node-join:N` already fired for this N.
    joined_for: Option<usize>,
}

impl NodeLifecycle {
    pub fn reconcile(&mut self, sb: &Sandbox, f: &ControllerFaults) {
        let Some(n) = f.node_join_after else {
            self.joined_for = None;
            return;
        };
        if self.joined_for == Some(n) {
            return;
        }
        let migrated = list(sb, &nodes_gvr(), None)
            .iter()
            .filter(|node| label(node, MIGRATION_LABEL) == Some("migrated"))
            .count();
        if migrated >= n && join_node(sb).is_ok() {
            self.joined_for = Some(n);
        }
    }
}

/// Add a Ready EC2 node like the scenario's; returns its name.
pub fn join_node(sb: &Sandbox) -> Result<String, ApiError> {
    let nodes = list(sb, &nodes_gvr(), None);
    let region = nodes
        .iter()
        .find_map(|n| label(n, "topology.kubernetes.io/region").map(String::from))
        .unwrap_or_else(|| "eu-west-1".to_string());
    let taken: Vec<&str> = nodes.iter().map(name).collect();
    let seed = 1;
    let mut i = nodes.len();
    loop {
        let (node, info) = cluster::node(i, seed, &region);
        if !taken.contains(&info.name.as_str()) {
            let mut node: Value = node;
            if let Some(m) = node.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("uid");
                m.remove("creationTimestamp");
            }
            // A client create: status is dropped, so write it as the kubelet would.
            let status = node.get("status").cloned();
            sb.store().create(
                &nodes_gvr(),
                "",
                node,
                &super::wopts("sandbox-node-lifecycle"),
            )?;
            if let Some(st) = status {
                super::merge(
                    sb,
                    &nodes_gvr(),
                    "",
                    &info.name,
                    Subresource::Status,
                    &serde_json::json!({"status": st}),
                    "sandbox-kubelet",
                )?;
            }
            return Ok(info.name);
        }
        i += 1;
        if i > nodes.len() + crate::sandbox::scenario::net::MAX_NODES {
            return Err(ApiError::new(
                422,
                "Invalid",
                "no free node address left in the sandbox's VPC plan",
            ));
        }
    }
}

/// Remove a node (as a scaled-in node group would); its pods go with it.
pub fn remove_node(sb: &Sandbox, node: &str) -> Result<(), ApiError> {
    sb.store()
        .delete(&nodes_gvr(), "", node, &DeleteOptions::default())
        .map(|_| ())
}
