//! `helm uninstall` simulated against the sandbox: it reads the release's
//! stored record (not the live objects), plans with crate::helm::uninstall_plan
//! (which honours `helm.sh/resource-policy: keep` only when it is in the stored
//! manifest), fails as Helm does when an object's API is no longer served
//! ("unable to build kubernetes objects for delete"), and otherwise deletes the
//! planned objects and then the release's Secrets. `dry_run` only reports.
//!
//! HTTP: `POST /sandbox/helm/uninstall?release=NAME&namespace=NS[&dryRun=true]`
//! answers the [`UninstallOutcome`] as JSON (422 when the release is missing).

use serde::Serialize;
use serde_json::Value;

use super::{gvr, list, name};
use crate::helm::{self, ObjectRef};
use crate::sandbox::{DeleteOptions, Gvr, Sandbox};

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UninstallOutcome {
    pub release: String,
    pub revision: u32,
    /// What Helm would delete (`Kind namespace/name`, or `Kind name` when cluster-scoped), in its order.
    pub plan: Vec<String>,
    /// Objects kept by `helm.sh/resource-policy: keep` in the stored manifest.
    pub kept: Vec<String>,
    /// Objects actually deleted (empty on dry run or failure).
    pub deleted: Vec<String>,
    /// Planned objects already gone.
    pub not_found: Vec<String>,
    /// Helm's error when it refuses to uninstall (nothing is deleted then).
    pub error: Option<String>,
}

fn describe(r: &ObjectRef) -> String {
    match &r.namespace {
        Some(ns) => format!("{} {ns}/{}", r.kind, r.name),
        None => format!("{} {}", r.kind, r.name),
    }
}

fn release_secrets(sb: &Sandbox, namespace: &str, release: &str) -> Vec<Value> {
    list(sb, &gvr("", "v1", "secrets"), Some(namespace))
        .into_iter()
        .filter(|s| s["type"] == "helm.sh/release.v1")
        .filter(|s| s.pointer("/metadata/labels/name").and_then(Value::as_str) == Some(release))
        .collect()
}

/// Why `helm uninstall` does not start: helm's own words.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("cannot read release {release}: {source}")]
    Unreadable {
        release: String,
        source: helm::HelmError,
    },
    #[error("uninstall: Release not loaded: {release}: release: not found (namespace {namespace})")]
    NotFound { release: String, namespace: String },
}

/// Uninstall (or plan, with `dry_run`) release `release` of namespace `namespace`.
pub fn helm_uninstall(
    sb: &Sandbox,
    release: &str,
    namespace: &str,
    dry_run: bool,
) -> Result<UninstallOutcome, UninstallError> {
    let records = release_secrets(sb, namespace, release);
    let rel = helm::current_release(&records, release)
        .map_err(|source| UninstallError::Unreadable {
            release: release.to_string(),
            source,
        })?
        .ok_or_else(|| UninstallError::NotFound {
            release: release.to_string(),
            namespace: namespace.to_string(),
        })?;
    let plan = helm::uninstall_plan(&rel);
    let kept = helm::manifest_objects(&rel.manifest)
        .map(|objs| {
            objs.into_iter()
                .filter(|o| o.keep)
                .map(|o| {
                    let ns = (!helm::is_cluster_scoped(&o.kind))
                        .then(|| o.namespace.clone().unwrap_or_else(|| rel.namespace.clone()));
                    describe(&ObjectRef {
                        api_version: o.api_version,
                        kind: o.kind,
                        namespace: ns,
                        name: o.name,
                        removed_in: None,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = UninstallOutcome {
        release: release.to_string(),
        revision: rel.version,
        plan: plan.iter().map(describe).collect(),
        kept,
        deleted: Vec::new(),
        not_found: Vec::new(),
        error: None,
    };
    let mut targets: Vec<(Gvr, &ObjectRef)> = Vec::new();
    for r in &plan {
        match sb.store().type_of_kind(&r.api_version, &r.kind) {
            Some(rt) => {
                let (_, version) =
                    crate::sandbox::apiserver::types::split_api_version(&r.api_version);
                targets.push((Gvr::new(&rt.group, version, &rt.resource), r));
            }
            None => {
                out.error = Some(format!(
                    "uninstallation completed with 1 error(s): unable to build kubernetes objects for delete: resource mapping not found for name: \"{}\" namespace: \"{}\" from \"\": no matches for kind \"{}\" in version \"{}\"\nensure CRDs are installed first",
                    r.name,
                    r.namespace.clone().unwrap_or_default(),
                    r.kind,
                    r.api_version
                ));
                return Ok(out);
            }
        }
    }
    if dry_run {
        return Ok(out);
    }
    for (g, r) in targets {
        let ns = r.namespace.as_deref().unwrap_or_default();
        match sb
            .store()
            .delete(&g, ns, &r.name, &DeleteOptions::default())
        {
            Ok(_) => out.deleted.push(describe(r)),
            Err(_) => out.not_found.push(describe(r)),
        }
    }
    for s in records {
        let _ = sb.store().delete(
            &gvr("", "v1", "secrets"),
            namespace,
            name(&s),
            &DeleteOptions::default(),
        );
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct Query {
    release: String,
    namespace: Option<String>,
    #[serde(rename = "dryRun")]
    dry_run: Option<bool>,
}

/// The control endpoint (added to the sandbox's router by `start`).
pub fn routes(sb: &Sandbox) -> axum::Router {
    let sb = sb.clone();
    axum::Router::new().route(
        "/sandbox/helm/uninstall",
        axum::routing::post(move |q: axum::extract::Query<Query>| {
            let sb = sb.clone();
            async move {
                let ns = q.namespace.clone().unwrap_or_else(|| "default".into());
                match helm_uninstall(&sb, &q.release, &ns, q.dry_run.unwrap_or(false)) {
                    Ok(o) => (
                        http::StatusCode::OK,
                        axum::Json(serde_json::to_value(o).unwrap_or_default()),
                    ),
                    Err(e) => (
                        http::StatusCode::UNPROCESSABLE_ENTITY,
                        axum::Json(serde_json::json!({"error": e.to_string()})),
                    ),
                }
            }
        }),
    )
}
