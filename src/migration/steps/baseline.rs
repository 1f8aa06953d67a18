//! `baseline`: snapshot every object the migration may touch, and every policy object,
//! into the journal; deploy probe workloads and record the reachability baseline.

use super::{Checks, StepContext, StepPlan, change, lines};

pub const ID: &str = "baseline";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let s = ctx.summary;
    StepPlan {
        id: ID,
        title: "Snapshot the Calico install and every policy object; record the probe baseline"
            .into(),
        changes: vec![
            change(
                "journal (state dir)",
                "backup",
                &[
                    "kube-system calico-node, calico-typha, autoscaler, Service, PDB, ConfigMaps, ServiceAccounts",
                    "ClusterRoles/ClusterRoleBindings/Role/RoleBinding of the chart",
                    "Helm release records",
                    "Calico CRDs, FelixConfiguration, IPPools",
                    "every NetworkPolicy, Calico NetworkPolicy, GlobalNetworkPolicy, GlobalNetworkSet, NetworkSet, HostEndpoint",
                ],
            ),
            change(
                "Namespace calico-migrate-probes",
                "create",
                &["probe DaemonSet (one pod per node)"],
            ),
        ],
        checks: Checks {
            before: vec![
                "the journal belongs to this cluster (kube-system UID) and this plan's fingerprint"
                    .into(),
                format!(
                    "policy counts still match the plan: {} NetworkPolicies, {} Calico NetworkPolicies, {} GlobalNetworkPolicies",
                    s.network_policies, s.calico_network_policies, s.global_network_policies
                ),
            ],
            after: lines(&[
                "snapshot stored and flushed; digests of the policy objects recorded",
                "a probe pod Ready on every non-Fargate node; the probe matrix equals the policy engine's expectation",
            ]),
        },
        rollback: lines(&["delete the probe namespace (the snapshot stays in the journal)"]),
        gate: None,
    }
}
