//! What apply, rollback and rehearse share before the engine runs: the saved plan
//! read back with its runnable steps, the pinned operator manifest checked against
//! its sha256, and the journal's identity and planned steps.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::manifest;
use super::plan::{self, SavedPlan};
use super::profile::{OperatorInstall, Profile};
use super::steps::{self, RunStep};
use super::world::Manifests;

/// The saved plan, with what apply needs from it.
pub struct Loaded {
    pub saved: SavedPlan,
    pub profile: Profile,
    pub steps: Vec<RunStep>,
}

pub fn load_plan(state_dir: &Path) -> anyhow::Result<Loaded> {
    let saved = plan::load(state_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}. Run `calico-migrate plan` first, with the same --state-dir ({})",
            state_dir.display()
        )
    })?;
    let profile = match &saved.profile {
        Some(p) => serde_json::from_value::<Profile>(p.clone()).context(
            "the profile saved with the plan is not one this version reads; run `calico-migrate plan` again",
        )?,
        None => {
            let name = saved
                .plan
                .get("profile")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            Profile::load(&name)
                .with_context(|| format!("loading profile `{name}` named by the saved plan"))?
        }
    };
    let ids: Vec<String> = saved
        .plan
        .get("steps")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .filter_map(|s| s.get("id")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        bail!(
            "the saved plan has no steps: there is nothing to migrate (see `calico-migrate plan`)"
        );
    }
    let mut steps = Vec::new();
    let mut missing = Vec::new();
    for id in &ids {
        match steps::runnable(id) {
            Some(s) => steps.push(s),
            None => missing.push(id.clone()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "this version of calico-migrate cannot run step(s) {} of the saved plan; nothing was changed",
            missing.join(", ")
        );
    }
    Ok(Loaded {
        saved,
        profile,
        steps,
    })
}

/// Blockers of the saved plan that no step fixes.
pub fn unresolved_blockers(plan: &Value) -> Vec<String> {
    plan.get("blockers")
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .filter(|f| f.get("fixed_by").is_none_or(Value::is_null))
                .map(|f| {
                    format!(
                        "{}: {}",
                        f.get("code").and_then(Value::as_str).unwrap_or("?"),
                        f.get("message").and_then(Value::as_str).unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The state-dir copy of the reviewed target Calico manifest is
/// `<prefix>-<sha256>.yaml` (the operator manifest's is `operator-manifest-…`).
pub const CALICO_MANIFEST_PREFIX: &str = "calico-manifest";

/// The reviewed manifests the plan pinned, read back from the state dir and checked
/// against their sha256 again.
pub fn manifests(state_dir: &Path, plan: &Value, profile: &Profile) -> anyhow::Result<Manifests> {
    let operator = if profile.operator.install == OperatorInstall::External {
        Vec::new()
    } else {
        let Some(sha) = pinned(plan, "operator_manifest_sha256") else {
            bail!(
                "the plan pins no operator manifest; run `calico-migrate plan --operator-manifest \
                 FILE` with the reviewed tigera-operator.yaml"
            );
        };
        read_pinned(state_dir, "operator-manifest", "--operator-manifest", sha)?
    };
    let calico = match pinned(plan, "calico_manifest_sha256") {
        Some(sha) => read_pinned(state_dir, CALICO_MANIFEST_PREFIX, "--calico-manifest", sha)?,
        None => Vec::new(),
    };
    Ok(Manifests { operator, calico })
}

fn pinned<'a>(plan: &'a Value, key: &str) -> Option<&'a str> {
    plan.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// One pinned copy, its sha256 checked, read by the reader plan used.
fn read_pinned(
    state_dir: &Path,
    prefix: &str,
    flag: &str,
    sha: &str,
) -> anyhow::Result<Vec<Value>> {
    let path = state_dir.join(format!("{prefix}-{sha}.yaml"));
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "the plan pins {prefix} sha256 {sha} but {} cannot be read; run `calico-migrate plan \
             {flag} FILE` again",
            path.display()
        )
    })?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != sha {
        bail!(
            "{} has sha256 {got}, not the {sha} the plan pinned; it was changed after planning. \
             Run `calico-migrate plan {flag} FILE` with the reviewed file",
            path.display()
        );
    }
    // The same reader (and checks) as `plan`.
    let objects = manifest::read_manifest(&path.display().to_string(), &bytes)?;
    Ok(objects.into_iter().map(|o| o.obj).collect())
}

/// Multi-document Kubernetes YAML into objects (documents holding only comments
/// skipped, `kind: List` expanded), read as the operator manifest is
/// ([`manifest::read_objects`]): errors name the document and the object.
pub fn parse_manifest(text: &str) -> anyhow::Result<Vec<Value>> {
    let objects = manifest::read_objects("the manifest", text.as_bytes())?;
    Ok(objects.into_iter().map(|o| o.obj).collect())
}

pub fn identity(saved: &SavedPlan) -> crate::engine::JournalIdentity {
    crate::engine::JournalIdentity {
        cluster_uid: saved.cluster_uid.clone(),
        plan_fingerprint: saved.fingerprint.clone(),
    }
}

pub fn planned_steps(saved: &SavedPlan) -> Vec<crate::engine::PlannedStep> {
    saved
        .plan
        .get("steps")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .map(|s| crate::engine::PlannedStep {
                    id: s
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    title: s
                        .get("title")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}
