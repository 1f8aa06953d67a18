//! `remove-probes`: delete the probe workloads deployed by `baseline`.

use serde_json::Value;

use crate::checks::workload::PROBE_LABEL;
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::world::World;

pub const ID: &str = "remove-probes";

pub fn describe(_ctx: &StepContext) -> StepPlan {
    StepPlan {
        id: ID,
        title: "Remove the probe workloads".into(),
        changes: vec![change(
            "Namespaces calico-migrate-probe-* (labelled calico-migrate.io/probe=true)",
            "delete",
            &["the probe pods (the tool's own objects)"],
        )],
        checks: Checks {
            before: lines(&["cleanup-leftovers done"]),
            after: lines(&["no namespace or pod labelled calico-migrate.io/probe=true is left"]),
        },
        rollback: lines(&[
            "nothing: the probes are set up again when an earlier step's rollback runs its checks",
        ]),
        gate: None,
    }
}

// ---------------------------------------------------------------------------
// apply / rollback

/// The step: the tool's own objects only.
pub struct RemoveProbes;

impl Step<World> for RemoveProbes {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Remove the probe workloads"
    }

    fn capture<'a>(&'a self, _world: &'a World) -> StepFuture<'a, Value> {
        // Nothing to restore: a rollback of earlier steps sets the probes up again
        // when its checks need them.
        Box::pin(async { Ok(Value::Null) })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move { world.remove_probes().await })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let selector = format!("{PROBE_LABEL}=true");
            let nss = world
                .objects
                .list("v1", "Namespace", None, Some(&selector))
                .await?;
            let pods = world
                .objects
                .list("v1", "Pod", None, Some(&selector))
                .await?;
            Ok(if nss.is_empty() && pods.is_empty() {
                Verification::passed("no probe namespace or pod is left")
            } else {
                Verification::failed(format!(
                    "{} probe namespace(s) and {} probe pod(s) still exist",
                    nss.len(),
                    pods.len()
                ))
            })
        })
    }

    fn rollback<'a>(&'a self, _world: &'a World, _saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn preview<'a>(&'a self, _world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async {
            Ok(vec![format!(
                "delete the namespaces and pods labelled {PROBE_LABEL}=true (the probe workload)"
            )])
        })
    }
}
