//! Executes what [`decide`] says, journaling each transition before the action
//! it announces.

use serde::Serialize;

use super::decide::{Action, Mode, Seen, decide};
use super::event::EventKind;
use super::journal::{Journal, JournalError};
use super::step::Step;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing is left to do in the mode that ran.
    Completed,
    /// A step (or its rollback) failed; the journal says where. Resume or roll back.
    Stopped { step: String, reason: String },
    /// The journal's state does not allow this run (e.g. apply during a rollback).
    Refused { reason: String },
    /// The observer held the run before a step's first attempt (a gate); nothing of
    /// that step was journaled or done. Run again to continue.
    Paused { step: String },
}

/// How a run ended, as a sentence for reports and errors.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Completed => f.write_str("completed"),
            Outcome::Stopped { step, reason } => write!(f, "stopped at step `{step}`: {reason}"),
            Outcome::Refused { reason } => write!(f, "refused: {reason}"),
            Outcome::Paused { step } => write!(f, "paused before step `{step}`"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "the steps given ({given}) are not the steps this journal was planned with ({planned}); use the plan the journal was made for"
    )]
    PlanMismatch { given: String, planned: String },
    #[error("step `{step}` was changed but its rollback data is missing from the journal")]
    MissingRollbackData { step: String },
}

/// Something that wants to hear about each action, e.g. a progress bar.
pub trait RunObserver: Send + Sync {
    fn action(&self, _step_id: &str, _action: &Action) {}
    /// Asked before a step's first attempt starts: true holds the run there
    /// ([`Outcome::Paused`]), e.g. for `--pause-before STEP`.
    fn hold_before(&self, _step_id: &str) -> bool {
        false
    }
}

struct Silent;
impl RunObserver for Silent {}

/// Run `steps` against `world` in `mode` until done, stopped or refused.
pub async fn run<W: ?Sized + Sync>(
    journal: &mut Journal,
    steps: &[Box<dyn Step<W>>],
    world: &W,
    mode: Mode,
) -> Result<Outcome, RunError> {
    run_observed(journal, steps, world, mode, &Silent).await
}

/// As [`run`], telling `observer` about every action before it is taken.
pub async fn run_observed<W: ?Sized + Sync>(
    journal: &mut Journal,
    steps: &[Box<dyn Step<W>>],
    world: &W,
    mode: Mode,
    observer: &dyn RunObserver,
) -> Result<Outcome, RunError> {
    check_steps_match(journal, steps)?;
    let mut seen: Option<Seen> = None;
    loop {
        let action = decide(journal.state(), mode, seen.take());
        let step_of = |i: usize| &steps[i];
        if let Action::StartAttempt { step, attempt: 1 } = action
            && observer.hold_before(step_of(step).id())
        {
            return Ok(Outcome::Paused {
                step: step_of(step).id().to_string(),
            });
        }
        if let Some(i) = action.step() {
            observer.action(step_of(i).id(), &action);
            tracing::debug!(step = step_of(i).id(), ?action, "engine action");
        }
        match action {
            Action::Done => return Ok(Outcome::Completed),
            Action::Refuse { reason } => return Ok(Outcome::Refused { reason }),
            Action::StartAttempt { step, attempt } => {
                let id = step_of(step).id().to_string();
                journal.append(EventKind::StepStarted { step: id, attempt })?;
            }
            Action::SaveRollback { step } => {
                let s = step_of(step);
                match s.capture(world).await {
                    Ok(data) => journal.save_rollback(s.id(), &data)?,
                    Err(e) => {
                        return fail(journal, s.id(), format!("capturing rollback data: {e:#}"));
                    }
                }
            }
            Action::Observe { step } => {
                let s = step_of(step);
                match s.verify(world).await {
                    Ok(v) => {
                        seen = Some(Seen {
                            step,
                            satisfied: v.passed,
                        })
                    }
                    Err(e) => return fail(journal, s.id(), format!("observing: {e:#}")),
                }
            }
            Action::Ensure { step } => {
                let s = step_of(step);
                if let Err(e) = s.ensure(world).await {
                    return fail(journal, s.id(), format!("{e:#}"));
                }
                match s.verify(world).await {
                    Ok(v) if v.passed => {
                        journal.append(EventKind::StepVerified {
                            step: s.id().to_string(),
                        })?;
                    }
                    Ok(v) => return fail(journal, s.id(), format!("verify failed: {}", v.detail)),
                    Err(e) => return fail(journal, s.id(), format!("verifying: {e:#}")),
                }
            }
            Action::MarkVerified { step } => {
                let id = step_of(step).id().to_string();
                journal.append(EventKind::StepVerified { step: id })?;
            }
            Action::StartRollback { step } => {
                let id = step_of(step).id().to_string();
                journal.append(EventKind::RollbackStarted { step: id })?;
            }
            Action::Undo { step } => {
                let s = step_of(step);
                let Some(data) = journal.rollback_data(s.id())? else {
                    return Err(RunError::MissingRollbackData {
                        step: s.id().to_string(),
                    });
                };
                match s.rollback(world, &data).await {
                    Ok(()) => {
                        journal.append(EventKind::RolledBack {
                            step: s.id().to_string(),
                        })?;
                    }
                    Err(e) => {
                        let reason = format!("{e:#}");
                        journal.append(EventKind::RollbackFailed {
                            step: s.id().to_string(),
                            error: reason.clone(),
                        })?;
                        return Ok(Outcome::Stopped {
                            step: s.id().to_string(),
                            reason,
                        });
                    }
                }
            }
            Action::ForgetUnchanged { step } => {
                let id = step_of(step).id().to_string();
                journal.append(EventKind::RolledBack { step: id })?;
            }
        }
    }
}

fn fail(journal: &mut Journal, step: &str, reason: String) -> Result<Outcome, RunError> {
    let attempt = journal
        .state()
        .steps
        .iter()
        .find(|s| s.id == step)
        .map_or(0, |s| s.attempts);
    journal.append(EventKind::StepFailed {
        step: step.to_string(),
        attempt,
        error: reason.clone(),
    })?;
    Ok(Outcome::Stopped {
        step: step.to_string(),
        reason,
    })
}

fn check_steps_match<W: ?Sized>(
    journal: &Journal,
    steps: &[Box<dyn Step<W>>],
) -> Result<(), RunError> {
    let planned: Vec<&str> = journal
        .state()
        .steps
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    let given: Vec<&str> = steps.iter().map(|s| s.id()).collect();
    if planned != given {
        return Err(RunError::PlanMismatch {
            given: given.join(", "),
            planned: planned.join(", "),
        });
    }
    Ok(())
}
