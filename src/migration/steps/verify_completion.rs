//! `verify-completion`: the operator finished: TigeraStatus Available, kube-system
//! agents gone, every node migrated, the policy set unchanged.

use super::{Checks, StepContext, StepPlan, change, lines};

pub const ID: &str = "verify-completion";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let s = ctx.summary;
    StepPlan {
        id: ID,
        title: "Verify the operator completed the migration".into(),
        changes: vec![change("(none)", "read", &["read-only step"])],
        checks: Checks {
            before: lines(&["takeover done on every node"]),
            after: vec![
                "TigeraStatus calico Available; Installation status mirrors it".into(),
                "kube-system DaemonSet calico-node and Deployment calico-typha deleted by the operator".into(),
                "every node's calico-node runs from calico-system; node migration labels removed".into(),
                format!(
                    "policy set unchanged: {} NetworkPolicies, {} Calico NetworkPolicies, {} GlobalNetworkPolicies, same digests as the baseline",
                    s.network_policies, s.calico_network_policies, s.global_network_policies
                ),
                "probe matrix equals the baseline".into(),
            ],
        },
        rollback: lines(&["nothing to undo (read-only)"]),
        gate: None,
    }
}
