//! `align-versions` (only when the profile asks): upgrade the manifest install's
//! images and CRDs in place, node by node, to the Calico the operator will install.

use super::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::profile::parse_version;

pub const ID: &str = "align-versions";

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let running = ctx.source.calico_version.as_deref()?;
    let target = &ctx.profile.target.calico_version;
    let same =
        parse_version(running).map(|v| (v.0, v.1)) == parse_version(target).map(|v| (v.0, v.1));
    if !ctx.profile.target.align_versions || same {
        return None;
    }
    Some(StepPlan {
        id: ID,
        title: format!("Upgrade the kube-system Calico from {running} to {target} in place"),
        changes: vec![
            change(
                "CustomResourceDefinition *.crd.projectcalico.org",
                "patch",
                &["spec.versions[v1].schema (server-side apply, v1 only)"],
            ),
            change(
                "DaemonSet kube-system/calico-node",
                "patch",
                &[
                    "spec.template.spec.containers[calico-node].image",
                    "spec.template.spec.initContainers[*].image",
                ],
            ),
            change(
                "Deployment kube-system/calico-typha",
                "patch",
                &["spec.template.spec.containers[calico-typha].image"],
            ),
        ],
        checks: Checks {
            before: lines(&[
                "every calico-node pod Ready",
                "probe matrix equals the baseline",
            ]),
            after: lines(&[
                "calico-node rolled out one node at a time (maxUnavailable 1), each node probed after its pod is Ready",
                "probe matrix equals the baseline",
            ]),
        },
        rollback: vec![format!(
            "restore images {running} and the CRDs from the snapshot, node by node"
        )],
        gate: None,
    })
}
