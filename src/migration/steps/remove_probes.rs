//! `remove-probes`: delete the probe workloads deployed by `baseline`.

use super::{Checks, StepContext, StepPlan, change, lines};

pub const ID: &str = "remove-probes";

pub fn describe(_ctx: &StepContext) -> StepPlan {
    StepPlan {
        id: ID,
        title: "Remove the probe workloads".into(),
        changes: vec![change(
            "Namespace calico-migrate-probes",
            "delete",
            &["probe DaemonSet and its pods (the tool's own objects)"],
        )],
        checks: Checks {
            before: lines(&["cleanup-leftovers done"]),
            after: lines(&["namespace calico-migrate-probes gone"]),
        },
        rollback: lines(&[
            "re-create the probe workloads (needed only to roll back earlier steps)",
        ]),
        gate: None,
    }
}
