//! `calico-migrate plan`: read the cluster, predict blockers, write the steps.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sha2::{Digest, Sha256};

use super::{EXIT_BLOCKED, GlobalOpts, OutputFormat};
use crate::cluster::objects::Objects;
use crate::cluster::{access, connect, inventory};
use crate::engine::RetryPolicy;
use crate::engine::state_dir::{create_private_dir, write_atomic};
use crate::migration::manifest::{self, ManifestObject};
use crate::migration::plan::{self, Pins, SavedPlan};
use crate::migration::profile::{OperatorInstall, SOURCE_CHART};
use crate::migration::{facts, permissions, profile::Profile, render, rules};

/// Read the cluster, predict what would block the migration, and write the ordered steps.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Migration profile: a built-in name (aws-calico-0.3.10-v3.19, the same-version
    /// path for Kubernetes up to 1.24; aws-calico-0.3.10-v3.30, the current path;
    /// aws-calico-0.3.11-v3.30, for the operator-based chart 0.3.11) or a YAML file.
    /// Without it, plan picks the built-in profile written for the release's chart
    /// version and for the operator release --operator-manifest installs, where it runs
    /// on the cluster's Kubernetes, else the one whose operator runs on that version,
    /// and says why.
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,

    /// The reviewed Tigera Operator manifest to apply (offline); its sha256 is pinned
    /// in the plan and the file is copied into the state dir.
    #[arg(long, value_name = "FILE")]
    pub operator_manifest: Option<PathBuf>,

    /// The reviewed manifest install of the target Calico, policy-only mode (for
    /// v3.30.3: manifests/calico-policy-only.yaml): align-versions applies its CRDs and
    /// RBAC, then its images. Pinned by sha256 like --operator-manifest.
    #[arg(long, value_name = "FILE")]
    pub calico_manifest: Option<PathBuf>,

    /// Hand the operator's objects to the Helm release NAMESPACE/NAME at the end (e.g.
    /// tigera-operator/calico): they get its ownership metadata, so the team's `helm
    /// install` of the projectcalico tigera-operator chart adopts them instead of
    /// failing. The plan prints that `helm install` with the chart version and values.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub adopt_into_release: Option<String>,
}

pub async fn run(args: &PlanArgs, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
    refuse_over_a_journal(&global.state_dir)?;
    if let Some(spec) = &args.adopt_into_release {
        crate::migration::steps::adopt_release::parse_release(spec).map_err(anyhow::Error::msg)?;
    }
    let named = args.profile.as_deref().map(Profile::load).transpose()?;
    // The files apply will read, read now by the same function: an error in one ends
    // plan with exit 2 before the cluster is even asked.
    let given_operator = args
        .operator_manifest
        .as_deref()
        .map(|p| Reviewed::read(p, OPERATOR))
        .transpose()?;
    let given_calico = args
        .calico_manifest
        .as_deref()
        .map(|p| Reviewed::read(p, CALICO))
        .transpose()?;
    let conn = connect::connect(global.kubeconfig.as_deref(), global.context.as_deref()).await?;
    let retry = RetryPolicy::default();
    let inv = inventory::read(&conn.client, conn.server_version.clone(), &retry)
        .await
        .with_context(|| format!("reading the cluster (context {})", conn.context))?;
    let (profile, reason) = match named {
        Some(p) => (p, None),
        None => {
            // The release's chart version says which generation runs (0.3.11 is
            // operator-based); a reviewed operator manifest says which release the team
            // chose: the profile written for both, where it runs on this cluster.
            let source = facts::source(&inv, SOURCE_CHART).context("decoding the Helm release")?;
            let release = given_operator
                .as_ref()
                .and_then(|m| manifest::operator_version(&m.objects))
                .map(|(v, _)| v);
            let picked = Profile::pick_for(
                &conn.server_version,
                release.as_deref(),
                source.chart_version.as_deref(),
            )?;
            (picked.profile, Some(picked.reason))
        }
    };
    let manifest = reviewed_or_pinned(given_operator, OPERATOR, &profile, &global.state_dir)?;
    let calico = reviewed_or_pinned(given_calico, CALICO, &profile, &global.state_dir)?;
    let access = access::review(
        &conn.client,
        &permissions::needed(),
        inventory::CONCURRENCY,
        &retry,
    )
    .await
    .with_context(|| "checking permissions with SelfSubjectAccessReview")?;
    let mut plan = plan::build(
        &inv,
        &profile,
        &access,
        Pins {
            operator: manifest.as_ref().map(|m| m.sha.as_str()),
            calico: calico.as_ref().map(|m| m.sha.as_str()),
            adopt_into: args.adopt_into_release.as_deref(),
        },
    )
    .context("decoding the Helm release")?;
    plan.profile_reason = reason;
    if let Some(m) = &manifest {
        if profile.operator.install != OperatorInstall::External
            && let Some((found, at)) = manifest::operator_version(&m.objects)
            && found != profile.target.operator_version
        {
            plan.add_findings([rules::manifest_operator_mismatch(
                &m.file, &found, at.place, &profile,
            )]);
        }
        if profile.operator.install != OperatorInstall::External {
            let objects = Objects::new(conn.client.clone(), retry);
            let served = manifest::served_apis(&objects, &m.objects).await?;
            let missing = manifest::unserved(&m.file, &m.objects, &served)?;
            if !missing.is_empty() {
                plan.add_findings([rules::manifest_api_not_served(
                    &m.file,
                    &inv.server_version,
                    &missing,
                )]);
            }
        }
        m.pin(&global.state_dir)?;
    }
    if let Some(m) = &calico {
        m.pin(&global.state_dir)?;
    }
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

/// Which reviewed manifest: its flag, the state-dir copy's name and the profile's pin.
#[derive(Debug, Clone, Copy)]
struct ManifestKind {
    flag: &'static str,
    /// The copy in the state dir is `<prefix>-<sha256>.yaml` (what apply reads).
    prefix: &'static str,
    pinned: fn(&Profile) -> Option<&str>,
}

const OPERATOR: ManifestKind = ManifestKind {
    flag: "--operator-manifest",
    prefix: "operator-manifest",
    pinned: |p| Some(p.operator.sha256.as_str()),
};

const CALICO: ManifestKind = ManifestKind {
    flag: "--calico-manifest",
    prefix: crate::migration::session::CALICO_MANIFEST_PREFIX,
    pinned: |p| p.calico_manifest.as_ref().map(|m| m.sha256.as_str()),
};

/// A reviewed manifest: its bytes, sha256 and objects, read and checked by
/// [`manifest::read_manifest`], the function apply's steps read it with.
struct Reviewed {
    kind: ManifestKind,
    /// The path as given, for messages.
    file: String,
    sha: String,
    bytes: Vec<u8>,
    objects: Vec<ManifestObject>,
}

impl Reviewed {
    /// Read the file, parse and check it.
    fn read(path: &std::path::Path, kind: ManifestKind) -> anyhow::Result<Reviewed> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read {} {}", kind.flag, path.display()))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        let file = path.display().to_string();
        let objects = manifest::read_manifest(&file, &bytes)?;
        Ok(Reviewed {
            kind,
            file,
            sha,
            bytes,
            objects,
        })
    }

    /// Refuse a file other than the one the profile pins.
    fn check_pin(&self, profile: &Profile) -> anyhow::Result<()> {
        let pinned = (self.kind.pinned)(profile).unwrap_or_default();
        if !pinned.is_empty() && !pinned.eq_ignore_ascii_case(&self.sha) {
            anyhow::bail!(
                "{} {} has sha256 {}, but profile {} pins {pinned}; use the reviewed file or \
                 update the profile",
                self.kind.flag,
                self.file,
                self.sha,
                profile.name
            );
        }
        Ok(())
    }

    /// Keep a copy in the state dir under its sha256: what apply reads.
    fn pin(&self, state_dir: &std::path::Path) -> anyhow::Result<()> {
        create_private_dir(state_dir)
            .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
        let copy = state_dir.join(format!("{}-{}.yaml", self.kind.prefix, self.sha));
        write_atomic(&copy, &self.bytes)?;
        Ok(())
    }
}

/// The manifest given on the command line (checked against the profile's pin), or
/// the copy an earlier plan left in the state dir under the profile's pin.
fn reviewed_or_pinned(
    given: Option<Reviewed>,
    kind: ManifestKind,
    profile: &Profile,
    state_dir: &std::path::Path,
) -> anyhow::Result<Option<Reviewed>> {
    if let Some(m) = given {
        m.check_pin(profile)?;
        return Ok(Some(m));
    }
    pinned_copy(kind, profile, state_dir)
        .map(|copy| Reviewed::read(&copy, kind))
        .transpose()
}

/// The copy of the manifest the profile pins, when an earlier plan left it in the
/// state dir: apply reads that one.
fn pinned_copy(
    kind: ManifestKind,
    profile: &Profile,
    state_dir: &std::path::Path,
) -> Option<std::path::PathBuf> {
    let sha = (kind.pinned)(profile)?.to_ascii_lowercase();
    let copy = state_dir.join(format!("{}-{sha}.yaml", kind.prefix));
    (!sha.is_empty() && copy.is_file()).then_some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::profile::SAME_VERSION_PROFILE;

    const NAMESPACE: &[u8] =
        b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: tigera-operator\n";

    #[test]
    fn manifest_is_pinned_copied_and_checked_against_the_profile() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("op.yaml");
        std::fs::write(&file, NAMESPACE).unwrap_or_else(|e| panic!("{e}"));
        let mut profile = Profile::load(SAME_VERSION_PROFILE).unwrap_or_else(|e| panic!("{e}"));
        let state = dir.path().join("state");
        let m = Reviewed::read(&file, OPERATOR).unwrap_or_else(|e| panic!("{e}"));
        m.check_pin(&profile).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.sha, hex::encode(Sha256::digest(NAMESPACE)));
        assert_eq!(m.objects.len(), 1);
        m.pin(&state).unwrap_or_else(|e| panic!("{e}"));
        let copy = state.join(format!("operator-manifest-{}.yaml", m.sha));
        assert!(copy.is_file());
        profile.operator.sha256 = m.sha.to_uppercase();
        assert_eq!(pinned_copy(OPERATOR, &profile, &state), Some(copy));
        assert_eq!(pinned_copy(CALICO, &profile, &state), None);
        profile.operator.sha256 = "0".repeat(64);
        let err = m.check_pin(&profile).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains(&m.sha) && e.contains("pins")));
        let missing = Reviewed::read(&dir.path().join("nope"), OPERATOR);
        assert!(missing.is_err_and(|e| e.to_string().contains("--operator-manifest")));
    }

    #[test]
    fn a_manifest_that_does_not_read_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("op.yaml");
        std::fs::write(&file, "kind: Namespace\n").unwrap_or_else(|e| panic!("{e}"));
        let err = Reviewed::read(&file, CALICO).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("document 1 (line 1)")
                    && e.contains("has no apiVersion, metadata.name")),
            "{err:?}"
        );
    }
}
