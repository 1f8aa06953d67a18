//! `create-installation`: create Installation `default` for EKS + AmazonVPC, which
//! starts the operator's migration (it labels every node `pre-operator` first).

use super::{Checks, StepContext, StepPlan, change, lines};

pub const ID: &str = "create-installation";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let spec = ctx.profile.installation.to_string();
    StepPlan {
        id: ID,
        title: "Create Installation default (EKS, AmazonVPC CNI)".into(),
        changes: vec![
            change(
                "Installation default (operator.tigera.io/v1)",
                "create",
                &[&format!("spec {spec}")],
            ),
            change(
                "Node (every node, by the operator)",
                "label",
                &["projectcalico.org/operator-node-migration=pre-operator"],
            ),
            change(
                "DaemonSet kube-system/calico-node (by the operator)",
                "patch",
                &[
                    "spec.template.spec.nodeSelector: projectcalico.org/operator-node-migration=pre-operator",
                ],
            ),
            change(
                "Deployment kube-system/calico-typha-horizontal-autoscaler (by the operator)",
                "delete",
                &["the autoscaler; kube-system typha scaled down as calico-system typha comes up"],
            ),
        ],
        checks: Checks {
            before: lines(&[
                "the converter prediction has no refusal left",
                "tigera-operator Available",
            ]),
            after: lines(&[
                "TigeraStatus calico not Degraded (no MigrationError)",
                "every node labelled pre-operator; kube-system calico-node Ready on every node with the new nodeSelector",
                "calico-system typha Ready; probe matrix equals the baseline",
            ]),
        },
        rollback: lines(&[
            "scale the operator to 0; delete Installation default (finalizers cleared, calico issue 6629)",
            "restore kube-system calico-node, typha and the autoscaler from the snapshot; remove the node labels",
        ]),
        gate: None,
    }
}
