//! `calico-migrate plan`: read the cluster, predict blockers, write the steps.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sha2::{Digest, Sha256};

use super::{EXIT_BLOCKED, GlobalOpts, OutputFormat};
use crate::cluster::{access, connect, inventory};
use crate::engine::RetryPolicy;
use crate::engine::state_dir::{create_private_dir, write_atomic};
use crate::migration::plan::{self, SavedPlan};
use crate::migration::{permissions, profile::Profile, render};

/// Read the cluster, predict what would block the migration, and write the ordered steps.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Migration profile (a file in plans/ or a path).
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,

    /// The reviewed Tigera Operator manifest to apply (offline); its sha256 is pinned
    /// in the plan and the file is copied into the state dir.
    #[arg(long, value_name = "FILE")]
    pub operator_manifest: Option<PathBuf>,
}

pub async fn run(args: &PlanArgs, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    refuse_over_a_journal(&global.state_dir)?;
    let profile = Profile::load(args.profile.as_deref())?;
    let manifest_sha = match &args.operator_manifest {
        Some(path) => Some(pin_manifest(path, &profile, &global.state_dir)?),
        None => None,
    };
    let conn = connect::connect(global.kubeconfig.as_deref(), global.context.as_deref()).await?;
    let retry = RetryPolicy::default();
    let inv = inventory::read(&conn.client, conn.server_version.clone(), &retry)
        .await
        .with_context(|| format!("reading the cluster (context {})", conn.context))?;
    let access = access::review(
        &conn.client,
        &permissions::needed(),
        inventory::CONCURRENCY,
        &retry,
    )
    .await
    .with_context(|| "checking permissions with SelfSubjectAccessReview")?;
    let plan = plan::build(&inv, &profile, &access, manifest_sha.as_deref())
        .context("decoding the Helm release")?;
    let saved = SavedPlan::of(&plan, &inv, &profile);
    let path = plan::save(&global.state_dir, &saved).with_context(|| {
        format!(
            "saving the plan in state dir {}",
            global.state_dir.display()
        )
    })?;
    match global.output {
        OutputFormat::Json => super::output::print_json(&plan)?,
        OutputFormat::Markdown => print!("{}", render::markdown(&plan)),
        OutputFormat::Text | OutputFormat::Junit => print!("{}", render::text(&plan)),
    }
    eprintln!("plan saved to {}", path.display());
    Ok(if plan.unresolved().next().is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BLOCKED)
    })
}

/// A new plan would orphan the journal of a migration in this state dir (its identity
/// is the old plan's fingerprint): refuse, saying what is there and what to do.
fn refuse_over_a_journal(state_dir: &std::path::Path) -> anyhow::Result<()> {
    if !crate::engine::Journal::exists(state_dir) {
        return Ok(());
    }
    anyhow::bail!(
        "state dir {} holds the journal of a migration; a new plan would leave it unreadable. \
         Finish it (`calico-migrate apply --resume`) or roll it back (`calico-migrate rollback`), \
         see `calico-migrate status`; then keep that state dir as the record of the migration and \
         plan into another one (--state-dir)",
        state_dir.display()
    )
}

/// Hash the manifest, check it against the profile's pin, keep a copy in the state dir.
fn pin_manifest(
    path: &std::path::Path,
    profile: &Profile,
    state_dir: &std::path::Path,
) -> anyhow::Result<String> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read --operator-manifest {}", path.display()))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let pinned = &profile.operator.sha256;
    if !pinned.is_empty() && !pinned.eq_ignore_ascii_case(&sha) {
        anyhow::bail!(
            "--operator-manifest {} has sha256 {sha}, but profile {} pins {pinned}; use the \
             reviewed file or update the profile",
            path.display(),
            profile.name
        );
    }
    create_private_dir(state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let copy = state_dir.join(format!("operator-manifest-{sha}.yaml"));
    write_atomic(&copy, &bytes)?;
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_pinned_copied_and_checked_against_the_profile() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("op.yaml");
        std::fs::write(&file, "kind: Namespace\n").unwrap_or_else(|e| panic!("{e}"));
        let mut profile = Profile::load(None).unwrap_or_else(|e| panic!("{e}"));
        let state = dir.path().join("state");
        let sha = pin_manifest(&file, &profile, &state).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sha, hex::encode(Sha256::digest(b"kind: Namespace\n")));
        assert!(
            state
                .join(format!("operator-manifest-{sha}.yaml"))
                .is_file()
        );
        profile.operator.sha256 = "0".repeat(64);
        let err = pin_manifest(&file, &profile, &state)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains(&sha) && e.contains("pins")));
        let missing = pin_manifest(&dir.path().join("nope"), &profile, &state);
        assert!(missing.is_err_and(|e| e.to_string().contains("--operator-manifest")));
    }
}
