//! The plan builder: inventory + profile -> findings and ordered steps, the
//! fingerprint of the facts that matter, and the saved plan in the state dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::descriptor::{StepContext, StepPlan};
use super::facts::{self, Source, Summary, desired_part, digest};
use super::profile::Profile;
use super::refs;
use super::rules::{self, Finding, RuleInput, Severity};
use super::steps;
use crate::cluster::access::AccessReport;
use crate::cluster::inventory::Inventory;
use crate::engine::state_dir::{StateDirError, create_private_dir, write_atomic};
use crate::helm::HelmError;

/// File name of the saved plan in the state dir.
pub const PLAN_FILE: &str = "plan.json";

/// The JSON contract of `plan -o json` (and the saved plan's `plan` field).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub profile: String,
    pub cluster_uid: String,
    pub source: Source,
    pub inventory: Summary,
    pub blockers: Vec<Finding>,
    pub warnings: Vec<Finding>,
    pub steps: Vec<StepPlan>,
    pub fingerprint: String,
    pub operator_manifest_sha256: Option<String>,
    /// sha256 of the target Calico's manifest align-versions reads (current path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calico_manifest_sha256: Option<String>,
    /// Why this profile, when plan chose it from the cluster's Kubernetes version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_reason: Option<String>,
    /// The Helm release (`NAMESPACE/NAME`) the operator's objects are handed to at the
    /// end (`plan --adopt-into-release`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopt_into_release: Option<String>,
}

/// What the user fixed at plan time: the sha256 pins of the reviewed manifests a plan
/// applies, and the Helm release the operator is handed to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pins<'a> {
    /// The operator manifest (install-operator).
    pub operator: Option<&'a str>,
    /// The target Calico's manifest install (align-versions).
    pub calico: Option<&'a str>,
    /// `NAMESPACE/NAME` of `plan --adopt-into-release` (already validated).
    pub adopt_into: Option<&'a str>,
}

impl<'a> Pins<'a> {
    /// The pins given, or else the profile's own.
    pub fn or_profile(self, profile: &'a Profile) -> Pins<'a> {
        let nonempty = |s: &'a str| Some(s).filter(|s| !s.is_empty());
        Pins {
            operator: self.operator.or(nonempty(&profile.operator.sha256)),
            calico: self.calico.or(profile
                .calico_manifest
                .as_ref()
                .and_then(|m| nonempty(&m.sha256))),
            adopt_into: self.adopt_into,
        }
    }

    /// The pins a saved plan recorded.
    pub fn of_saved(plan: &'a Value) -> Pins<'a> {
        let get = |k: &str| plan.get(k).and_then(Value::as_str);
        Pins {
            operator: get("operator_manifest_sha256"),
            calico: get("calico_manifest_sha256"),
            adopt_into: get("adopt_into_release"),
        }
    }
}

impl Plan {
    /// Blockers no step of the plan fixes: these stop `apply`.
    pub fn unresolved(&self) -> impl Iterator<Item = &Finding> {
        self.blockers.iter().filter(|f| f.fixed_by.is_none())
    }

    /// The steps as the engine's journal records them (`EventKind::Planned`).
    pub fn planned_steps(&self) -> Vec<crate::engine::PlannedStep> {
        self.steps
            .iter()
            .map(|s| crate::engine::PlannedStep {
                id: s.id.to_string(),
                title: s.title.clone(),
            })
            .collect()
    }

    /// The journal identity apply creates its journal with.
    pub fn journal_identity(&self) -> crate::engine::JournalIdentity {
        crate::engine::JournalIdentity {
            cluster_uid: self.cluster_uid.clone(),
            plan_fingerprint: self.fingerprint.clone(),
        }
    }

    /// No unresolved blocker, and something to do.
    pub fn ready(&self) -> bool {
        self.unresolved().next().is_none() && !self.steps.is_empty()
    }

    /// Add findings made outside [`build`] (from what only a live cluster answers,
    /// e.g. which APIs it serves), filed and matched to their fixing step as `build`
    /// files its own.
    pub fn add_findings(&mut self, findings: impl IntoIterator<Item = Finding>) {
        for mut f in findings {
            f.fixed_by =
                rules::fixing_step(f.code).filter(|id| self.steps.iter().any(|s| s.id == *id));
            match f.severity {
                Severity::Blocker => self.blockers.push(f),
                Severity::Warning => self.warnings.push(f),
            }
        }
    }
}

/// Build the plan. Pure: everything comes from the arguments.
pub fn build(
    inv: &Inventory,
    profile: &Profile,
    access: &AccessReport,
    pins: Pins,
) -> Result<Plan, HelmError> {
    let source = facts::source(inv, &profile.source.chart)?;
    let summary = facts::summary(inv);
    let pins = pins.or_profile(profile);
    let findings = rules::evaluate(&RuleInput {
        inv,
        source: &source,
        summary: &summary,
        profile,
        access,
        manifest_sha256: pins.operator,
        calico_manifest_sha256: pins.calico,
    });
    let steps = steps::ordered(&StepContext {
        inv,
        source: &source,
        summary: &summary,
        profile,
        manifest_sha256: pins.operator,
        calico_manifest_sha256: pins.calico,
        adopt_into: pins.adopt_into,
    });
    let mut findings = findings;
    for f in &mut findings {
        f.fixed_by = rules::fixing_step(f.code).filter(|id| steps.iter().any(|s| s.id == *id));
    }
    let (blockers, warnings) = findings
        .into_iter()
        .partition(|f| f.severity == Severity::Blocker);
    Ok(Plan {
        profile: profile.name.clone(),
        cluster_uid: inv.cluster_uid.clone(),
        fingerprint: fingerprint(&fingerprint_facts(inv, profile, pins)),
        source,
        inventory: summary,
        blockers,
        warnings,
        steps,
        operator_manifest_sha256: pins.operator.map(str::to_string),
        calico_manifest_sha256: pins.calico.map(str::to_string),
        profile_reason: None,
        adopt_into_release: pins.adopt_into.map(str::to_string),
    })
}

/// Digest per fact that matters to apply; `apply` compares these one by one and
/// names the facts that changed.
pub fn fingerprint_facts(
    inv: &Inventory,
    profile: &Profile,
    pins: Pins,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), digest(&v));
    };
    put("cluster_uid", json!(inv.cluster_uid));
    put("kubernetes_minor", json!(inv.minor()));
    // Node names churn with autoscaling and do not change the steps; readiness and
    // Fargate placement do.
    let nodes = facts::node_facts(inv);
    let named = |keep: fn(&facts::NodeFact) -> bool| {
        nodes
            .iter()
            .filter(|n| keep(n))
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
    };
    put("nodes_not_ready", json!(named(|n| !n.ready)));
    put("nodes_fargate", json!(named(|n| n.fargate)));
    for (ns, name, key) in [
        (
            "kube-system",
            "calico-node",
            "daemonset/kube-system/calico-node",
        ),
        (
            "calico-system",
            "calico-node",
            "daemonset/calico-system/calico-node",
        ),
    ] {
        put(
            key,
            inv.find("daemonsets", ns, name)
                .map(desired_part)
                .unwrap_or(Value::Null),
        );
    }
    for name in [
        "calico-typha",
        "calico-typha-horizontal-autoscaler",
        "tigera-operator",
    ] {
        let d = inv
            .list("deployments")
            .iter()
            .find(|d| facts::name_of(d) == name)
            .map(|d| {
                // Replicas move with the autoscaler; they do not change the plan.
                let mut d = desired_part(d);
                if let Some(spec) = d.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("replicas");
                }
                d
            })
            .unwrap_or(Value::Null);
        put(&format!("deployment/{name}"), d);
    }
    let helm: Vec<Value> = ["helm3_secrets", "helm2_configmaps", "helm2_secrets"]
        .iter()
        .flat_map(|k| inv.list(k))
        .map(|s| {
            json!([
                s.pointer("/metadata/namespace"),
                facts::name_of(s),
                s.pointer("/metadata/labels")
            ])
        })
        .collect();
    put("helm_records", Value::Array(helm));
    let crds: Vec<Value> = inv
        .list("crds")
        .iter()
        .filter(|c| {
            let g = facts::str_at(c, "/spec/group").unwrap_or("");
            g == refs::CALICO_GROUP || g == "operator.tigera.io"
        })
        .map(|c| {
            json!([
                facts::name_of(c),
                c.pointer("/spec/versions").map(|vs| vs.as_array().map(|a| a
                    .iter()
                    .map(|v| json!([v.get("name"), v.get("served"), v.get("storage")]))
                    .collect::<Vec<_>>()))
            ])
        })
        .collect();
    put("crds", Value::Array(crds));
    // Policy objects are not in the fingerprint: teams change them daily, and the
    // baseline step snapshots them when apply starts. Their counts stay in the plan.
    put(
        "installations",
        json!(
            inv.list("installations")
                .iter()
                .map(facts::name_of)
                .collect::<Vec<_>>()
        ),
    );
    put(
        "profile",
        serde_json::to_value(profile).unwrap_or(Value::Null),
    );
    put("operator_manifest", json!(pins.operator));
    // Only on plans that pin one, so plans saved before the current path read the same.
    if let Some(calico) = pins.calico {
        put("calico_manifest", json!(calico));
    }
    m
}

pub fn fingerprint(facts: &BTreeMap<String, String>) -> String {
    digest(&serde_json::to_value(facts).unwrap_or(Value::Null))
}

/// What is saved in `<state-dir>/plan.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    pub fingerprint: String,
    pub facts: BTreeMap<String, String>,
    pub cluster_uid: String,
    pub created_at: String,
    pub plan: Value,
    /// The profile the plan was built with, whole: apply and rollback use this copy,
    /// so a profile given as a file needs no file later. Plans saved without it name
    /// a built-in profile in `plan.profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Value>,
}

impl SavedPlan {
    /// What `plan` saves for `built`, read from `inv` with `profile`, now.
    pub fn of(built: &Plan, inv: &Inventory, profile: &Profile) -> Self {
        SavedPlan {
            fingerprint: built.fingerprint.clone(),
            facts: fingerprint_facts(
                inv,
                profile,
                Pins {
                    operator: built.operator_manifest_sha256.as_deref(),
                    calico: built.calico_manifest_sha256.as_deref(),
                    adopt_into: built.adopt_into_release.as_deref(),
                },
            ),
            cluster_uid: built.cluster_uid.clone(),
            created_at: jiff::Timestamp::now().to_string(),
            plan: serde_json::to_value(built).unwrap_or(Value::Null),
            profile: serde_json::to_value(profile).ok(),
        }
    }
}

/// Why `apply` must not run the saved plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriftError {
    #[error("the saved plan belongs to cluster {saved} (kube-system UID), this is {now}")]
    OtherCluster { saved: String, now: String },
    #[error(
        "the cluster changed since the plan was made ({}); run `calico-migrate plan` again and review it",
        changed.join(", ")
    )]
    Changed { changed: Vec<String> },
}

/// Compare the saved plan with the cluster now: Ok when nothing that matters moved.
pub fn check_drift(
    saved: &SavedPlan,
    inv: &Inventory,
    profile: &Profile,
) -> Result<(), DriftError> {
    if saved.cluster_uid != inv.cluster_uid {
        return Err(DriftError::OtherCluster {
            saved: saved.cluster_uid.clone(),
            now: inv.cluster_uid.clone(),
        });
    }
    let changed = drift(
        &saved.facts,
        &fingerprint_facts(inv, profile, Pins::of_saved(&saved.plan)),
    );
    if changed.is_empty() {
        Ok(())
    } else {
        Err(DriftError::Changed { changed })
    }
}

/// Facts whose digest differs between the saved plan and now (for apply's refusal).
pub fn drift(saved: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<&String> = saved.keys().chain(now.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .cloned()
        .collect()
}

/// Write the plan atomically and private to its owner (the state dir is created 0700
/// if missing; [`write_atomic`]).
pub fn save(state_dir: &Path, saved: &SavedPlan) -> Result<PathBuf, StateDirError> {
    create_private_dir(state_dir).map_err(|e| StateDirError::Create {
        dir: state_dir.to_path_buf(),
        cause: e.to_string(),
    })?;
    let path = state_dir.join(PLAN_FILE);
    let text = serde_json::to_vec_pretty(saved).map_err(|e| StateDirError::Write {
        path: path.clone(),
        cause: e.to_string(),
    })?;
    write_atomic(&path, &text)?;
    Ok(path)
}

/// Why the saved plan cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum LoadPlanError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a saved plan: {source}", path.display())]
    NotAPlan {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Read a saved plan back (for apply).
pub fn load(state_dir: &Path) -> Result<SavedPlan, LoadPlanError> {
    let path = state_dir.join(PLAN_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(source) => return Err(LoadPlanError::Read { path, source }),
    };
    serde_json::from_slice(&text).map_err(|source| LoadPlanError::NotAPlan { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_names_changed_facts() {
        let a: BTreeMap<String, String> =
            [("nodes".into(), "1".into()), ("crds".into(), "2".into())].into();
        let mut b = a.clone();
        b.insert("nodes".into(), "9".into());
        b.insert("extra".into(), "x".into());
        assert_eq!(
            drift(&a, &b),
            vec!["extra".to_string(), "nodes".to_string()]
        );
        assert!(drift(&a, &a).is_empty());
    }

    #[test]
    fn save_is_atomic_and_readable() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let s = SavedPlan {
            fingerprint: "f".into(),
            facts: BTreeMap::new(),
            cluster_uid: "u".into(),
            created_at: "t".into(),
            plan: json!({"steps": []}),
            profile: None,
        };
        let p = save(dir.path(), &s).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.ends_with(PLAN_FILE));
        let back = load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.fingerprint, "f");
        let leftovers = std::fs::read_dir(dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(leftovers, 1);
    }
}
