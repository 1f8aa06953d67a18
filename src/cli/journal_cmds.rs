//! `status`, `history`, and the journal checks `rollback` makes before it
//! touches anything.

use std::process::ExitCode;

use serde::Serialize;

use super::output::print_json;
use super::{GlobalOpts, OutputFormat, RollbackArgs};
use crate::engine::{Journal, PlanState, StepPhase, StepState};

#[derive(Serialize)]
struct StatusReport<'a> {
    state_dir: String,
    cluster_uid: &'a str,
    plan_fingerprint: &'a str,
    summary: String,
    complete: bool,
    steps: &'a [StepState],
}

/// One line saying where the migration stands.
pub fn summarize(state: &PlanState) -> String {
    let total = state.steps.len();
    let verified = state
        .steps
        .iter()
        .filter(|s| s.phase == StepPhase::Verified)
        .count();
    if let Some(s) = state
        .steps
        .iter()
        .find(|s| matches!(s.phase, StepPhase::Failed | StepPhase::RollbackFailed))
    {
        let verb = if s.phase == StepPhase::Failed {
            "failed"
        } else {
            "rollback failed"
        };
        return format!(
            "stopped: step `{}` {verb}: {}; fix the cause, then `calico-migrate apply --resume` or `calico-migrate rollback`",
            s.id,
            s.last_error.as_deref().unwrap_or("no detail")
        );
    }
    if let Some(s) = state
        .steps
        .iter()
        .find(|s| s.phase == StepPhase::RollingBack)
    {
        return format!(
            "rolling back at step `{}`; finish with `calico-migrate rollback`",
            s.id
        );
    }
    if state.complete() {
        return format!("complete: all {total} steps verified");
    }
    if !state.in_progress() {
        return format!("not started ({total} steps planned, or all rolled back)");
    }
    format!(
        "in progress: {verified} of {total} steps verified; continue with `calico-migrate apply --resume`"
    )
}

pub fn status(g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    let journal = Journal::open_read_only(&g.state_dir)?;
    let state = journal.state();
    let report = StatusReport {
        state_dir: g.state_dir.display().to_string(),
        cluster_uid: &journal.identity().cluster_uid,
        plan_fingerprint: &journal.identity().plan_fingerprint,
        summary: summarize(state),
        complete: state.complete(),
        steps: &state.steps,
    };
    match g.output {
        OutputFormat::Json => print_json(&report)?,
        _ => print_status_text(&report),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status_text(r: &StatusReport<'_>) {
    println!("State dir:        {}", r.state_dir);
    println!("Cluster:          kube-system UID {}", r.cluster_uid);
    println!("Plan fingerprint: {}", r.plan_fingerprint);
    println!("Status:           {}", r.summary);
    println!();
    let width = r.steps.iter().map(|s| s.id.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<15}  {:>8}  TITLE",
        "STEP", "PHASE", "ATTEMPTS"
    );
    for s in r.steps {
        println!(
            "{:<width$}  {:<15}  {:>8}  {}",
            s.id,
            s.phase.as_str(),
            s.attempts,
            s.title
        );
        if let Some(err) = &s.last_error {
            println!("{:<width$}  last error: {err}", "");
        }
    }
}

pub fn history(g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    let journal = Journal::open_read_only(&g.state_dir)?;
    let events = journal.events()?;
    match g.output {
        OutputFormat::Json => print_json(&events)?,
        _ => {
            println!(
                "{:>5}  {:<32}  {:<16}  STEP / DETAIL",
                "SEQ", "TIME", "EVENT"
            );
            for e in &events {
                let detail = match &e.kind {
                    crate::engine::EventKind::Planned { steps } => format!("{} steps", steps.len()),
                    crate::engine::EventKind::StepStarted { step, attempt } => {
                        format!("{step} (attempt {attempt})")
                    }
                    crate::engine::EventKind::StepFailed { step, error, .. }
                    | crate::engine::EventKind::RollbackFailed { step, error } => {
                        format!("{step}: {error}")
                    }
                    other => other.step().unwrap_or_default().to_string(),
                };
                println!(
                    "{:>5}  {:<32}  {:<16}  {detail}",
                    e.seq,
                    e.at,
                    e.kind.label()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks `rollback` makes before anything else: a journal exists, and `--to`
/// names one of its steps.
pub fn rollback_preflight(args: &RollbackArgs, g: &GlobalOpts) -> anyhow::Result<()> {
    let journal = Journal::open_read_only(&g.state_dir)?;
    if let Some(to) = &args.to {
        let state = journal.state();
        if state.index_of(to).is_none() {
            let ids: Vec<&str> = state.steps.iter().map(|s| s.id.as_str()).collect();
            anyhow::bail!(
                "unknown step id `{to}` for --to; the steps of this plan are: {}. Nothing was changed",
                ids.join(", ")
            );
        }
    }
    Ok(())
}
