//! `apply` and `rollback`: run the saved plan's steps through the engine against
//! the cluster, under the Lease, journaling every transition.
//!
//! The order matters for "bad input changes nothing": everything that can be
//! refused (no plan, other cluster, drift, unknown steps, missing manifest, no
//! confirmation, a held Lease) is refused before the journal is created or the
//! cluster is touched (the Lease, taken last, is the one write before the run).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use serde::Serialize;
use serde_json::Value;

use super::output::print_json;
use super::{ApplyArgs, EXIT_BLOCKED, GlobalOpts, OutputFormat, RollbackArgs};
use crate::cluster::lease::{self, Holder};
use crate::cluster::objects::Objects;
use crate::cluster::{connect, inventory};
use crate::engine::{
    Action, Journal, Mode, Outcome, RetryPolicy, RunObserver, StepPhase, run_observed,
};
use crate::migration::plan;
use crate::migration::profile::Profile;
use crate::migration::session::{
    Loaded, identity, load_plan, manifests, planned_steps, unresolved_blockers,
};
use crate::migration::world::{ApplyOptions, Observation, World};

/// Exit code of a run that stopped (failed check or step, or a gate): resumable.
pub const EXIT_STOPPED: u8 = 1;

async fn cluster_uid(client: &kube::Client) -> anyhow::Result<String> {
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let ns = api
        .get("kube-system")
        .await
        .context("reading namespace kube-system (the cluster's identity)")?;
    ns.metadata
        .uid
        .context("namespace kube-system has no uid; is this a Kubernetes API server?")
}

/// Ask on the terminal; without one, require --yes.
fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} Pass --yes to confirm (stdin is not a terminal); nothing was changed");
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}

/// Prints each step as it starts, for the person watching.
struct Progress {
    ids: Vec<String>,
    quiet: bool,
    pause_before: Vec<String>,
    started: Instant,
}

impl RunObserver for Progress {
    fn action(&self, step_id: &str, action: &Action) {
        if self.quiet {
            return;
        }
        let k = self
            .ids
            .iter()
            .position(|i| i == step_id)
            .map_or(0, |i| i + 1);
        let n = self.ids.len();
        let t = self.started.elapsed().as_secs();
        // One line per step on a terminal (`progress::say`); the finer actions go to
        // the debug log, and to the screen with -v.
        let (what, headline) = match action {
            Action::StartAttempt { attempt, .. } if *attempt > 1 => {
                (format!("starting (attempt {attempt})"), true)
            }
            Action::StartAttempt { .. } => ("starting".to_string(), true),
            Action::Observe { .. } => ("observing after a restart".to_string(), true),
            Action::StartRollback { .. } => ("rolling back".to_string(), true),
            Action::ForgetUnchanged { .. } => ("unchanged, nothing to undo".to_string(), true),
            Action::Ensure { .. } => ("changing and verifying".to_string(), false),
            Action::MarkVerified { .. } => ("verified".to_string(), false),
            Action::Undo { .. } => ("restoring".to_string(), false),
            Action::SaveRollback { .. } => ("saving rollback data".to_string(), false),
            Action::Done | Action::Refuse { .. } => return,
        };
        let line = format!("[{t:>4}s] step {k}/{n} {step_id}: {what}");
        if headline {
            crate::progress::say(line);
        } else {
            tracing::debug!("{line}");
        }
    }

    fn hold_before(&self, step_id: &str) -> bool {
        self.pause_before.iter().any(|p| p == step_id)
    }
}

#[derive(Serialize)]
struct RunReport<'a> {
    command: &'static str,
    #[serde(flatten)]
    outcome: &'a Outcome,
    state_dir: String,
    seconds: f64,
    steps: Vec<StepLine>,
    observations: Vec<Observation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_taken_over_from: Option<String>,
}

#[derive(Serialize)]
struct StepLine {
    id: String,
    phase: &'static str,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

fn step_lines(journal: &Journal) -> Vec<StepLine> {
    journal
        .state()
        .steps
        .iter()
        .map(|s| StepLine {
            id: s.id.clone(),
            phase: s.phase.as_str(),
            attempts: s.attempts,
            last_error: s.last_error.clone(),
        })
        .collect()
}

fn print_report(g: &GlobalOpts, r: &RunReport) -> anyhow::Result<()> {
    if g.output == OutputFormat::Json {
        return print_json(r);
    }
    for s in &r.steps {
        println!("{:<22} {:<14} attempts {}", s.id, s.phase, s.attempts);
    }
    for o in &r.observations {
        match o {
            Observation::NodeSwap { watch, .. } => println!(
                "  node {}: {} probe passes ({} before its new agent was Ready), longest without verified enforcement {} ms{}",
                watch.node,
                watch.passes,
                watch.passes_before_ready,
                watch.longest_unverified_ms,
                if watch.verified_at_end {
                    ""
                } else {
                    " (NOT verified at the end)"
                }
            ),
            Observation::Round {
                label,
                passed,
                probes,
                nodes,
                ..
            } => println!(
                "  check {label}: {} ({probes} probes on {nodes} nodes)",
                if *passed { "passed" } else { "FAILED" }
            ),
            Observation::HeldConnections { report, .. } => println!(
                "  connections across {}'s swap: {}",
                report.node,
                report.summary()
            ),
            Observation::Note { step, text } => println!("  {step}: {text}"),
        }
    }
    if let Some(h) = &r.lease_taken_over_from {
        println!("note: took over a stale Lease from {h}");
    }
    let secs = r.seconds;
    match r.outcome {
        Outcome::Completed => println!("{}: complete in {secs:.1}s", r.command),
        Outcome::Stopped { step, reason } if r.command == "rollback" => println!(
            "{}: STOPPED at step `{step}` after {secs:.1}s: {reason}\n\
             The journal in {} records where it stands. Fix the cause, then run \
             `calico-migrate rollback` again: it continues where it stopped.",
            r.command, r.state_dir
        ),
        Outcome::Stopped { step, reason } => println!(
            "{}: STOPPED at step `{step}` after {secs:.1}s: {reason}\n\
             The journal in {} records where it stands. Fix the cause, then \
             `calico-migrate apply --resume`, or undo with `calico-migrate rollback`.",
            r.command, r.state_dir
        ),
        Outcome::Refused { reason } => println!("{}: refused: {reason}", r.command),
        Outcome::Paused { step } => println!(
            "{}: paused before step `{step}` as asked. Continue with `calico-migrate apply --resume`.",
            r.command
        ),
    }
    Ok(())
}

fn exit_code(outcome: &Outcome) -> ExitCode {
    match outcome {
        Outcome::Completed | Outcome::Paused { .. } => ExitCode::SUCCESS,
        Outcome::Stopped { .. } => ExitCode::from(EXIT_STOPPED),
        Outcome::Refused { .. } => ExitCode::from(super::EXIT_ERROR),
    }
}

fn options(args_pause: Option<u64>, time_scale: f64, profile: &Profile) -> ApplyOptions {
    let mut o = ApplyOptions::from_profile(profile).for_time_scale(time_scale);
    if let Some(p) = args_pause {
        o.pause = Duration::from_secs(p);
    }
    o
}

/// Everything up to the engine run, shared by apply and rollback.
struct Session {
    loaded: Loaded,
    client: kube::Client,
    context: String,
}

async fn session(g: &GlobalOpts) -> anyhow::Result<Session> {
    let loaded = load_plan(&g.state_dir)?;
    let conn = connect::connect(g.kubeconfig.as_deref(), g.context.as_deref()).await?;
    let uid = cluster_uid(&conn.client).await?;
    if uid != loaded.saved.cluster_uid {
        bail!(
            "the plan in {} was made for cluster {} (kube-system UID), but context `{}` is cluster {uid}; \
             pick the right --context, or use another --state-dir for this cluster",
            g.state_dir.display(),
            loaded.saved.cluster_uid,
            conn.context
        );
    }
    Ok(Session {
        loaded,
        client: conn.client,
        context: conn.context,
    })
}

pub async fn apply(args: &ApplyArgs, g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    let blockers = unresolved_blockers(&plan::load(&g.state_dir).map_or(Value::Null, |s| s.plan));
    if !blockers.is_empty() {
        eprintln!(
            "error: the plan has blockers no step fixes; fix them and run `calico-migrate plan` again:\n  {}",
            blockers.join("\n  ")
        );
        return Ok(ExitCode::from(EXIT_BLOCKED));
    }
    let s = session(g).await?;
    let saved = &s.loaded.saved;
    let profile = &s.loaded.profile;
    let ids: Vec<&str> = s.loaded.steps.iter().map(|st| st.id()).collect();
    if let Some(bad) = args
        .pause_before
        .iter()
        .find(|p| !ids.contains(&p.as_str()))
    {
        bail!(
            "--pause-before {bad}: the plan has no step `{bad}`; its steps are {}",
            ids.join(", ")
        );
    }
    let manifest = manifests(&g.state_dir, &saved.plan, profile)?;
    let exists = Journal::exists(&g.state_dir);
    if args.resume && !exists {
        bail!(
            "nothing to resume: {} has no journal; start the migration with `calico-migrate apply`",
            g.state_dir.display()
        );
    }
    let objects = Objects::new(s.client.clone(), RetryPolicy::default());
    let world = World::new(
        objects,
        profile.clone(),
        saved.plan.clone(),
        &g.state_dir,
        manifest,
        options(args.pause_seconds, args.sandbox_time_scale, profile),
    );
    if args.dry_run {
        return dry_run(&s, &world, g).await;
    }
    let (mut journal, held) = if exists {
        let j = Journal::open(&g.state_dir)?;
        j.check_identity(&identity(saved))?;
        let st = j.state();
        if st.complete() && !args.resume {
            println!(
                "apply: the migration in {} is already complete",
                g.state_dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if st.steps.iter().any(|s| s.phase == StepPhase::RollingBack) {
            bail!(
                "a rollback is in progress in {}; finish it with `calico-migrate rollback`",
                g.state_dir.display()
            );
        }
        if st.in_progress() && !args.resume {
            bail!(
                "a migration is in progress in {}: continue it with `calico-migrate apply --resume` \
                 or undo it with `calico-migrate rollback`",
                g.state_dir.display()
            );
        }
        confirm(
            &format!(
                "Continue the migration of context `{}` ({} steps)?",
                s.context,
                st.steps.len()
            ),
            args.yes,
        )?;
        let held = take_lease(&s, g, args.lease_seconds).await?;
        (j, held)
    } else {
        let retry = RetryPolicy::default();
        let version = s
            .client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_default();
        let inv = inventory::read(&s.client, version, &retry)
            .await
            .context("reading the cluster to compare it with the plan")?;
        plan::check_drift(saved, &inv, profile)?;
        confirm(
            &format!(
                "Migrate context `{}` to the Tigera Operator ({} steps)?",
                s.context,
                s.loaded.steps.len()
            ),
            args.yes,
        )?;
        // A held Lease refuses the run before the journal exists.
        let held = take_lease(&s, g, args.lease_seconds).await?;
        let j = Journal::create(&g.state_dir, identity(saved), planned_steps(saved));
        match j {
            Ok(j) => (j, held),
            Err(e) => {
                let _ = held.release().await;
                return Err(e.into());
            }
        }
    };
    run(
        "apply",
        &s,
        &world,
        &mut journal,
        Mode::Apply,
        args.pause_before.clone(),
        held,
        g,
    )
    .await
}

pub async fn rollback(args: &RollbackArgs, g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    super::journal_cmds::rollback_preflight(args, g)?;
    let s = session(g).await?;
    let saved = &s.loaded.saved;
    let profile = &s.loaded.profile;
    let mut journal = Journal::open(&g.state_dir)?;
    journal.check_identity(&identity(saved))?;
    let down_to = match &args.to {
        Some(to) => journal.state().index_of(to).unwrap_or(0),
        None => 0,
    };
    let changed = journal
        .state()
        .steps
        .iter()
        .skip(down_to)
        .filter(|s| s.phase != StepPhase::Pending)
        .count();
    if changed == 0 {
        println!("rollback: nothing to undo");
        return Ok(ExitCode::SUCCESS);
    }
    confirm(
        &format!(
            "Roll back {changed} step(s) on context `{}`{}?",
            s.context,
            args.to
                .as_ref()
                .map(|t| format!(" down to and including `{t}`"))
                .unwrap_or_default()
        ),
        args.yes,
    )?;
    // The manifest is only needed to know what install-operator created; the rollback
    // data in the journal has it, so a missing file does not block a rollback.
    let manifest = manifests(&g.state_dir, &saved.plan, profile).unwrap_or_default();
    let world = World::new(
        Objects::new(s.client.clone(), RetryPolicy::default()),
        profile.clone(),
        saved.plan.clone(),
        &g.state_dir,
        manifest,
        options(args.pause_seconds, args.sandbox_time_scale, profile),
    );
    let held = take_lease(&s, g, args.lease_seconds).await?;
    run(
        "rollback",
        &s,
        &world,
        &mut journal,
        Mode::Rollback { down_to },
        Vec::new(),
        held,
        g,
    )
    .await
}

/// Take the Lease: after the journal is open (sled's lock then proves an earlier
/// holder with this state dir is gone) and before anything is written.
async fn take_lease(s: &Session, g: &GlobalOpts, seconds: u64) -> anyhow::Result<lease::HeldLease> {
    Ok(lease::acquire(
        &s.client,
        Holder::for_state_dir(&g.state_dir),
        Duration::from_secs(seconds),
    )
    .await?)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    command: &'static str,
    s: &Session,
    world: &World,
    journal: &mut Journal,
    mode: Mode,
    pause_before: Vec<String>,
    held: lease::HeldLease,
    g: &GlobalOpts,
) -> anyhow::Result<ExitCode> {
    let took_over_from = held.took_over_from.clone();
    if let Some(h) = &took_over_from {
        tracing::warn!("took over a stale Lease from {h}");
    }
    let progress = Progress {
        ids: s.loaded.steps.iter().map(|s| s.id().to_string()).collect(),
        quiet: g.quiet || g.output == OutputFormat::Json,
        pause_before,
        started: Instant::now(),
    };
    let started = Instant::now();
    let outcome = run_observed(journal, &s.loaded.steps, world, mode, &progress).await;
    let lost = held.lost();
    if let Err(e) = held.release().await {
        tracing::warn!("releasing the Lease: {e}");
    }
    let outcome = outcome?;
    if lost {
        tracing::error!(
            "the Lease was lost while running: another process may have changed the cluster; check `calico-migrate status`"
        );
    }
    let report = RunReport {
        command,
        outcome: &outcome,
        state_dir: g.state_dir.display().to_string(),
        seconds: started.elapsed().as_secs_f64(),
        steps: step_lines(journal),
        observations: world.observations(),
        lease_taken_over_from: took_over_from,
    };
    print_report(g, &report)?;
    Ok(exit_code(&outcome))
}

async fn dry_run(s: &Session, world: &World, g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    #[derive(Serialize)]
    struct Preview {
        step: String,
        changes: Vec<String>,
    }
    let mut out = Vec::new();
    for step in &s.loaded.steps {
        let changes = step
            .preview(world)
            .await
            .with_context(|| format!("previewing step {}", step.id()))?;
        out.push(Preview {
            step: step.id().to_string(),
            changes,
        });
    }
    if g.output == OutputFormat::Json {
        print_json(&out)?;
    } else {
        println!(
            "apply --dry-run on context `{}`: nothing is changed",
            s.context
        );
        for p in &out {
            println!("{}", p.step);
            if p.changes.is_empty() {
                println!("  (nothing to change now)");
            }
            for c in &p.changes {
                println!("  - {c}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
