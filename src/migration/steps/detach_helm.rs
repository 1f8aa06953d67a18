//! `detach-helm`: take the chart's objects away from Helm without deleting anything:
//! back up and remove the release records, strip the Helm labels and annotations the
//! converter refuses, so no later `helm uninstall` can delete RBAC, CRDs or policies.

use super::{Checks, StepContext, StepPlan, change, lines};

pub const ID: &str = "detach-helm";

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let rel = ctx.source.release.as_deref()?;
    let ns = ctx.source.namespace.as_deref().unwrap_or("kube-system");
    let rev = ctx.source.release_revision.unwrap_or(0);
    let records: Vec<String> = ctx
        .inv
        .list("helm3_secrets")
        .iter()
        .filter(|s| {
            crate::migration::facts::str_at(s, "/metadata/labels/name") == Some(rel)
                && crate::migration::facts::str_at(s, "/metadata/namespace") == Some(ns)
        })
        .map(|s| format!("Secret {ns}/{}", crate::migration::facts::name_of(s)))
        .collect();
    let mut changes: Vec<_> = records
        .iter()
        .map(|r| {
            change(
                r.clone(),
                "delete",
                &["after backup to the journal (data, labels, type)"],
            )
        })
        .collect();
    let objs = crate::migration::facts::helm_releases(ctx.inv, &ctx.profile.source.chart)
        .ok()
        .and_then(|rs| rs.into_iter().next())
        .map(|r| crate::helm::uninstall_plan(&r))
        .unwrap_or_default();
    for o in objs {
        let obj = match &o.namespace {
            Some(n) => format!("{} {n}/{}", o.kind, o.name),
            None => format!("{} {}", o.kind, o.name),
        };
        changes.push(change(
            obj,
            "patch",
            &[
                "remove metadata.annotations meta.helm.sh/release-name, meta.helm.sh/release-namespace",
                "remove metadata.labels app.kubernetes.io/managed-by, helm.sh/chart",
            ],
        ));
    }
    Some(StepPlan {
        id: ID,
        title: format!(
            "Detach release {ns}/{rel} (revision {rev}) from Helm without deleting anything"
        ),
        changes,
        checks: Checks {
            before: lines(&[
                "release records readable and backed up (decoded release JSON stored in the journal)",
            ]),
            after: lines(&[
                "`helm list` would no longer show the release; no chart object carries meta.helm.sh/* annotations",
                "the converter prediction for kube-system calico-node has no annotation refusal",
                "every object of the release still exists (none deleted)",
            ]),
        },
        rollback: lines(&[
            "re-create the release Secrets from the backup (same name, type, labels, data)",
            "restore the Helm labels and annotations on every chart object",
        ]),
        gate: None,
    })
}
