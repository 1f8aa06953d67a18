//! The journal's records: one event per state transition, written and flushed
//! before the action it announces.

use serde::{Deserialize, Serialize};

/// Identity of a journal: which cluster and which plan it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalIdentity {
    /// UID of the cluster's kube-system namespace.
    pub cluster_uid: String,
    /// Digest of what the plan was built from.
    pub plan_fingerprint: String,
}

/// A step as the journal knows it: enough to show status and validate `--to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub id: String,
    pub title: String,
}

/// One journaled transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The plan was accepted; written once, first.
    Planned { steps: Vec<PlannedStep> },
    /// An attempt at a step begins (before any observation or change).
    StepStarted { step: String, attempt: u32 },
    /// What the step needs to be undone was stored (before any change).
    RollbackSaved { step: String },
    /// The step's verify passed.
    StepVerified { step: String },
    /// The attempt failed; the run stopped here.
    StepFailed {
        step: String,
        attempt: u32,
        error: String,
    },
    /// Undoing the step begins.
    RollbackStarted { step: String },
    /// The step was undone (or had changed nothing).
    RolledBack { step: String },
    /// Undoing the step failed; the rollback stopped here.
    RollbackFailed { step: String, error: String },
}

impl EventKind {
    /// The step an event is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            EventKind::Planned { .. } => None,
            EventKind::StepStarted { step, .. }
            | EventKind::RollbackSaved { step }
            | EventKind::StepVerified { step }
            | EventKind::StepFailed { step, .. }
            | EventKind::RollbackStarted { step }
            | EventKind::RolledBack { step }
            | EventKind::RollbackFailed { step, .. } => Some(step),
        }
    }

    /// A short verb for history listings.
    pub fn label(&self) -> &'static str {
        match self {
            EventKind::Planned { .. } => "planned",
            EventKind::StepStarted { .. } => "started",
            EventKind::RollbackSaved { .. } => "rollback-saved",
            EventKind::StepVerified { .. } => "verified",
            EventKind::StepFailed { .. } => "failed",
            EventKind::RollbackStarted { .. } => "rollback-started",
            EventKind::RolledBack { .. } => "rolled-back",
            EventKind::RollbackFailed { .. } => "rollback-failed",
        }
    }
}

/// An event with its place in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the journal, from 1, without gaps.
    pub seq: u64,
    /// When it was written (RFC 3339, UTC).
    pub at: String,
    #[serde(flatten)]
    pub kind: EventKind,
}
