//! Where each step stands, derived from the journal's events (pure).

use serde::Serialize;

use super::event::{Event, EventKind, PlannedStep};

/// The phase of one step, as the journal proves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// Never started.
    Pending,
    /// An attempt began; its rollback data is not saved, so nothing was changed.
    Started,
    /// Rollback data is saved; the step may have acted. Its outcome is unknown.
    Saved,
    /// Its verify passed.
    Verified,
    /// The last attempt failed.
    Failed,
    /// Undoing it began.
    RollingBack,
    /// Undone (or nothing to undo); a later apply starts it afresh.
    RolledBack,
    /// Undoing it failed.
    RollbackFailed,
}

impl StepPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            StepPhase::Pending => "pending",
            StepPhase::Started => "started",
            StepPhase::Saved => "in-progress",
            StepPhase::Verified => "verified",
            StepPhase::Failed => "failed",
            StepPhase::RollingBack => "rolling-back",
            StepPhase::RolledBack => "rolled-back",
            StepPhase::RollbackFailed => "rollback-failed",
        }
    }
}

/// One step's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepState {
    pub id: String,
    pub title: String,
    pub phase: StepPhase,
    /// Attempts begun since the step was last pending or rolled back.
    pub attempts: u32,
    /// Whether rollback data is stored for the current application of the step.
    pub rollback_saved: bool,
    pub last_error: Option<String>,
}

/// Every step's state, in plan order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanState {
    pub steps: Vec<StepState>,
}

/// The events do not describe a possible history: the journal is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidHistory(pub String);

impl PlanState {
    /// A plan with every step pending.
    pub fn new(steps: &[PlannedStep]) -> Self {
        PlanState {
            steps: steps
                .iter()
                .map(|s| StepState {
                    id: s.id.clone(),
                    title: s.title.clone(),
                    phase: StepPhase::Pending,
                    attempts: 0,
                    rollback_saved: false,
                    last_error: None,
                })
                .collect(),
        }
    }

    /// Replay a journal. The first event must be `Planned`, sequence numbers run
    /// from 1 without gaps, and every transition must be one the runner makes.
    pub fn from_events(events: &[Event]) -> Result<Self, InvalidHistory> {
        let Some(first) = events.first() else {
            return Err(InvalidHistory("the journal holds no events".into()));
        };
        let EventKind::Planned { steps } = &first.kind else {
            return Err(InvalidHistory(format!(
                "the first event is `{}`, not `planned`",
                first.kind.label()
            )));
        };
        let mut state = PlanState::new(steps);
        for (i, ev) in events.iter().enumerate() {
            let expected = i as u64 + 1;
            if ev.seq != expected {
                return Err(InvalidHistory(format!(
                    "event #{expected} is missing (found #{} in its place)",
                    ev.seq
                )));
            }
            if i > 0 {
                state.apply(&ev.kind).map_err(|e| {
                    InvalidHistory(format!("event #{} ({}): {}", ev.seq, ev.kind.label(), e.0))
                })?;
            }
        }
        Ok(state)
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// Apply one transition, refusing those the runner never writes.
    pub fn apply(&mut self, kind: &EventKind) -> Result<(), InvalidHistory> {
        use StepPhase::*;
        let Some(id) = kind.step() else {
            return Err(InvalidHistory("a second `planned` event".into()));
        };
        let Some(idx) = self.index_of(id) else {
            return Err(InvalidHistory(format!("step `{id}` is not in the plan")));
        };
        let s = &mut self.steps[idx];
        let bad = |s: &StepState| {
            Err(InvalidHistory(format!(
                "step `{}` cannot go from {} to {}",
                s.id,
                s.phase.as_str(),
                kind.label()
            )))
        };
        match kind {
            EventKind::StepStarted { attempt, .. } => {
                if !matches!(s.phase, Pending | RolledBack | Failed) || *attempt != s.attempts + 1 {
                    return bad(s);
                }
                s.attempts = *attempt;
                s.phase = if s.rollback_saved { Saved } else { Started };
            }
            EventKind::RollbackSaved { .. } => {
                if s.phase != Started {
                    return bad(s);
                }
                s.rollback_saved = true;
                s.phase = Saved;
            }
            EventKind::StepVerified { .. } => {
                if s.phase != Saved {
                    return bad(s);
                }
                s.phase = Verified;
                s.last_error = None;
            }
            EventKind::StepFailed { attempt, error, .. } => {
                if !matches!(s.phase, Started | Saved) || *attempt != s.attempts {
                    return bad(s);
                }
                s.phase = Failed;
                s.last_error = Some(error.clone());
            }
            EventKind::RollbackStarted { .. } => {
                if !s.rollback_saved
                    || !matches!(s.phase, Saved | Verified | Failed | RollbackFailed)
                {
                    return bad(s);
                }
                s.phase = RollingBack;
            }
            EventKind::RolledBack { .. } => {
                let nothing_changed = !s.rollback_saved && matches!(s.phase, Started | Failed);
                if s.phase != RollingBack && !nothing_changed {
                    return bad(s);
                }
                s.phase = RolledBack;
                s.attempts = 0;
                s.rollback_saved = false;
                s.last_error = None;
            }
            EventKind::RollbackFailed { error, .. } => {
                if s.phase != RollingBack {
                    return bad(s);
                }
                s.phase = RollbackFailed;
                s.last_error = Some(error.clone());
            }
            EventKind::Planned { .. } => return bad(s),
        }
        Ok(())
    }

    /// True when every step is verified.
    pub fn complete(&self) -> bool {
        self.steps.iter().all(|s| s.phase == StepPhase::Verified)
    }

    /// True when some step has been started or changed anything since planning.
    pub fn in_progress(&self) -> bool {
        self.steps
            .iter()
            .any(|s| !matches!(s.phase, StepPhase::Pending | StepPhase::RolledBack))
    }
}
