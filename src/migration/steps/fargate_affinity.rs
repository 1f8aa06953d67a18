//! `fargate-affinity`: the converter refuses the chart's Fargate node affinity, so it
//! is removed just before the takeover. Fargate nodes never run DaemonSet pods, so the
//! set of nodes running calico-node does not change.

use super::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::converter::{Refusal, predict};

pub const ID: &str = "fargate-affinity";

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let ds = ctx.inv.find("daemonsets", "kube-system", "calico-node")?;
    if !predict(ds).contains(&Refusal::FargateAffinity) {
        return None;
    }
    Some(StepPlan {
        id: ID,
        title: "Remove the Fargate node affinity from kube-system calico-node".into(),
        changes: vec![change(
            "DaemonSet kube-system/calico-node",
            "patch",
            &[
                "remove spec.template.spec.affinity.nodeAffinity (eks.amazonaws.com/compute-type NotIn [fargate])",
            ],
        )],
        checks: Checks {
            before: vec![format!(
                "Fargate nodes: {} (DaemonSet pods never run there)",
                if ctx.summary.fargate_nodes.is_empty() {
                    "none".to_string()
                } else {
                    ctx.summary.fargate_nodes.join(", ")
                }
            )],
            after: lines(&[
                "calico-node rolled out: the same nodes run a Ready calico-node as before",
                "probe matrix equals the baseline",
            ]),
        },
        rollback: lines(&["restore the affinity from the snapshot; wait for the rollout"]),
        gate: None,
    })
}
