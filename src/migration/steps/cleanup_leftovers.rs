//! `cleanup-leftovers`: remove what the operator's migration leaves behind from the
//! chart, never RBAC the operator now uses, never a policy object or a CRD.

use super::{Checks, StepContext, StepPlan, change, lines};

pub const ID: &str = "cleanup-leftovers";

/// Chart objects the operator leaves behind and does not use (FACTS.md).
pub const LEFTOVERS: [&str; 5] = [
    "Service kube-system/calico-typha",
    "PodDisruptionBudget kube-system/calico-typha",
    "ConfigMap kube-system/calico-typha-horizontal-autoscaler",
    "ServiceAccount kube-system/calico-typha-cpha",
    "Role/RoleBinding kube-system/calico-typha-cpha, ClusterRole/ClusterRoleBinding calico-typha-cpha",
];

pub fn describe(_ctx: &StepContext) -> StepPlan {
    StepPlan {
        id: ID,
        title: "Delete the chart's leftovers the operator does not use".into(),
        changes: LEFTOVERS
            .iter()
            .map(|o| change(*o, "delete", &["after snapshot (already in the baseline)"]))
            .collect(),
        checks: Checks {
            before: lines(&[
                "verify-completion passed",
                "kept: ClusterRole/ClusterRoleBinding calico-node and ServiceAccount calico-node (the operator took them over), all CRDs, all policy objects",
            ]),
            after: lines(&[
                "TigeraStatus calico still Available; probe matrix equals the baseline",
            ]),
        },
        rollback: lines(&["re-create the deleted objects from the snapshot"]),
        gate: None,
    }
}
