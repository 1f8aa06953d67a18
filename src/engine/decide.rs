//! What to do next: a pure function of the journal's state and what the runner
//! has observed of the current step. The runner only executes what this says.

use serde::Serialize;

use super::state::{PlanState, StepPhase};

/// Which way the run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run every step to verified, in order.
    Apply,
    /// Undo every step at index `down_to` or later, last first.
    Rollback { down_to: usize },
}

/// What the runner saw when it ran a step's verify in this run (an `Observe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub step: usize,
    /// The verify passed: the world already is as the step wants it.
    pub satisfied: bool,
}

/// The next action. Every action names the plan index of its step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Journal the start of attempt `attempt`.
    StartAttempt { step: usize, attempt: u32 },
    /// Capture what undoing the step needs, and journal it, before any change.
    SaveRollback { step: usize },
    /// Run verify before acting: the step may already be done (a lost journal write).
    Observe { step: usize },
    /// Act (idempotently), then verify.
    Ensure { step: usize },
    /// Journal that the step is verified.
    MarkVerified { step: usize },
    /// Journal the start of undoing the step.
    StartRollback { step: usize },
    /// Undo the step with its saved data, then journal it rolled back.
    Undo { step: usize },
    /// Journal the step rolled back: it changed nothing, so there is nothing to undo.
    ForgetUnchanged { step: usize },
    /// The run cannot go on; the reason says what to do.
    Refuse { reason: String },
    /// Nothing is left to do in this mode.
    Done,
}

impl Action {
    /// The plan index of the step the action is about, if any.
    pub fn step(&self) -> Option<usize> {
        match *self {
            Action::StartAttempt { step, .. }
            | Action::SaveRollback { step }
            | Action::Observe { step }
            | Action::Ensure { step }
            | Action::MarkVerified { step }
            | Action::StartRollback { step }
            | Action::Undo { step }
            | Action::ForgetUnchanged { step } => Some(step),
            Action::Refuse { .. } | Action::Done => None,
        }
    }
}

/// Decide the next action.
///
/// `seen` is the last observation of this run; it counts only for the step it
/// names, so a stale observation never decides for another step.
pub fn decide(state: &PlanState, mode: Mode, seen: Option<Seen>) -> Action {
    match mode {
        Mode::Apply => decide_apply(state, seen),
        Mode::Rollback { down_to } => decide_rollback(state, down_to),
    }
}

fn decide_apply(state: &PlanState, seen: Option<Seen>) -> Action {
    if let Some(s) = state
        .steps
        .iter()
        .find(|s| matches!(s.phase, StepPhase::RollingBack | StepPhase::RollbackFailed))
    {
        return Action::Refuse {
            reason: format!(
                "step `{}` is being rolled back; finish with `calico-migrate rollback` before applying again",
                s.id
            ),
        };
    }
    let Some(step) = state
        .steps
        .iter()
        .position(|s| s.phase != StepPhase::Verified)
    else {
        return Action::Done;
    };
    let s = &state.steps[step];
    match s.phase {
        StepPhase::Started => Action::SaveRollback { step },
        StepPhase::Saved => match seen {
            Some(seen) if seen.step == step && seen.satisfied => Action::MarkVerified { step },
            Some(seen) if seen.step == step => Action::Ensure { step },
            _ => Action::Observe { step },
        },
        // Pending, RolledBack or Failed (Verified and rollback phases are excluded above).
        _ => Action::StartAttempt {
            step,
            attempt: s.attempts + 1,
        },
    }
}

fn decide_rollback(state: &PlanState, down_to: usize) -> Action {
    let last_touched = state
        .steps
        .iter()
        .enumerate()
        .skip(down_to)
        .rev()
        .find(|(_, s)| !matches!(s.phase, StepPhase::Pending | StepPhase::RolledBack));
    let Some((step, s)) = last_touched else {
        return Action::Done;
    };
    match s.phase {
        StepPhase::RollingBack => Action::Undo { step },
        _ if !s.rollback_saved => Action::ForgetUnchanged { step },
        _ => Action::StartRollback { step },
    }
}
