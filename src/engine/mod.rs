//! The resumable state machine, independent of Calico and of Kubernetes.
//!
//! A plan is an ordered list of [`Step`]s. The [`journal`] records every
//! transition in sled and flushes it before the action it announces; the
//! [`decide`](decide::decide) function chooses the next action from the journal's
//! state alone; the [`runner`] executes it. The world (the cluster) stays the
//! source of truth: a resumed step re-observes before it acts.

pub mod decide;
pub mod event;
pub mod journal;
pub mod retry;
pub mod runner;
pub mod state;
pub mod state_dir;
pub mod step;

pub use decide::{Action, Mode, Seen, decide};
pub use event::{Event, EventKind, JournalIdentity, PlannedStep};
pub use journal::{Journal, JournalError};
pub use retry::{RetryPolicy, retry};
pub use runner::{Outcome, RunError, RunObserver, run, run_observed};
pub use state::{PlanState, StepPhase, StepState};
pub use step::{Step, StepFuture, Verification};

#[cfg(test)]
mod tests;
