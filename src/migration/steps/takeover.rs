//! `takeover`: follow the operator's node-by-node migration (a node relabelled
//! `migrated` moves to the calico-system DaemonSet), checking after each node and
//! freezing the operator (scaled to 0) at the first failed check.

use super::{Checks, StepContext, StepPlan, change, lines};

pub const ID: &str = "takeover";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let p = &ctx.profile.pacing;
    let nodes = ctx
        .summary
        .nodes
        .saturating_sub(ctx.summary.fargate_nodes.len());
    StepPlan {
        id: ID,
        title: format!(
            "Follow the operator's takeover of {nodes} node(s), {} at a time",
            p.nodes_at_a_time
        ),
        changes: vec![
            change(
                "Node (each, by the operator)",
                "label",
                &["projectcalico.org/operator-node-migration: pre-operator -> migrated"],
            ),
            change(
                "DaemonSet calico-system/calico-node (by the operator)",
                "create",
                &["one pod per migrated node"],
            ),
            change(
                "Deployment kube-system/calico-typha (by the operator)",
                "scale",
                &["down as calico-system typha takes over"],
            ),
        ],
        checks: Checks {
            before: lines(&[
                "TigeraStatus calico Progressing, not Degraded",
                "every node has a Ready agent",
            ]),
            after: vec![
                format!(
                    "after each node: its calico-system calico-node Ready within {} s, no node without a Ready agent longer than {} s, probe matrix equals the baseline",
                    p.node_ready_timeout_seconds, ctx.profile.checks.max_swap_seconds
                ),
                format!(
                    "pause {} s between nodes; at the first failed check the operator is scaled to 0 and the run stops naming the node",
                    p.pause_seconds
                ),
            ],
        },
        rollback: lines(&[
            "scale the operator to 0 (freezes the takeover)",
            "relabel migrated nodes pre-operator one at a time, newest first; after each, kube-system calico-node Ready there and the probe matrix equals the baseline",
        ]),
        gate: None,
    }
}
