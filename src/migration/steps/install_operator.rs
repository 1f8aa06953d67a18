//! `install-operator`: apply the operator's CRDs and the operator, without an
//! Installation (which would start the migration at once).

use super::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::profile::OperatorInstall;

pub const ID: &str = "install-operator";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let p = ctx.profile;
    let external = p.operator.install == OperatorInstall::External;
    let pin = ctx.manifest_sha256.unwrap_or("(not pinned)");
    StepPlan {
        id: ID,
        title: format!("Install the Tigera Operator {} without an Installation", p.target.operator_version),
        changes: if external {
            vec![change("tigera-operator (installed by Helm/Terraform)", "create", &["by the team, outside calico-migrate"])]
        } else {
            vec![
                change("CustomResourceDefinition *.operator.tigera.io", "create", &["from the pinned manifest"]),
                change("Namespace tigera-operator, ServiceAccount, ClusterRole, ClusterRoleBinding", "create", &["from the pinned manifest"]),
                change("Deployment tigera-operator/tigera-operator", "create", &[&format!("image quay.io/tigera/operator:{}", p.target.operator_version), &format!("manifest sha256 {pin}")]),
            ]
        },
        checks: Checks {
            before: lines(&[
                "no Installation exists (else the operator would start migrating at once)",
                "the Calico crd.projectcalico.org CRDs are v1; the projectcalico.org/v3 CRDs are never applied",
            ]),
            after: lines(&["tigera-operator Deployment Available", "kube-system calico-node untouched (same generation)"]),
        },
        rollback: lines(&["delete the operator Deployment, its RBAC and namespace, and the operator.tigera.io CRDs (finalizers cleared)"]),
        gate: external.then(|| format!(
            "install tigera-operator {} with Helm/Terraform WITHOUT an Installation (chart value installation.enabled=false), then run `calico-migrate apply --resume`",
            p.target.operator_version
        )),
    }
}
