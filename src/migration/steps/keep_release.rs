//! `keep-release` (operator-based chart 0.3.11): mark every object of the release, and
//! the Installation its post-install hook created, `helm.sh/resource-policy: keep`
//! before anything else touches the release. The chart holds every Calico and operator
//! CRD as a template, so until the release is detached a `helm uninstall` would delete
//! them and every Calico policy with them.
//!
//! Helm reads the policy in two places: `helm uninstall` from the *stored* manifest of
//! the release record (helm pkg/action/uninstall.go `deleteRelease`:
//! `filterManifestsToKeep` over `SplitManifests(rel.Manifest)`), an upgrade that drops an
//! object from the live one (pkg/kube/client.go `Update`). So the step annotates both:
//! every live object, and every document of the current release record's manifest.
//! Rollback puts back the annotations it changed and the record as it was.

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::objects::ObjRef;
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::capture::{forget_capture, keep_capture, stored_capture};
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::facts::helm_releases;
use crate::migration::release::{chart_objects_live, hook_objects_live, release_secrets};
use crate::migration::world::World;

pub const ID: &str = "keep-release";

use crate::helm::{KEEP_POLICY as KEEP, RESOURCE_POLICY};

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let rel = ctx.source.release.as_deref()?;
    let ns = ctx.source.namespace.as_deref().unwrap_or("?");
    let release = helm_releases(ctx.inv, &ctx.profile.source.chart)
        .ok()
        .and_then(|rs| rs.into_iter().next());
    let mut changes: Vec<_> = release
        .as_ref()
        .map(crate::helm::uninstall_plan)
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let obj = match &o.namespace {
                Some(n) => format!("{} {n}/{}", o.kind, o.name),
                None => format!("{} {}", o.kind, o.name),
            };
            change(
                obj,
                "patch",
                &["add metadata.annotations helm.sh/resource-policy: keep"],
            )
        })
        .collect();
    if let Some(r) = &release {
        changes.push(change(
            format!(
                "Secret {ns}/{} (the current release record)",
                crate::helm::secret_name(&r.name, r.version)
            ),
            "patch",
            &["every document of the stored manifest annotated helm.sh/resource-policy: keep (what `helm uninstall` reads); backed up first"],
        ));
    }
    if release.is_some_and(|r| !r.hooks.is_empty()) {
        changes.push(change(
            "the objects the release's hooks created (Installation default)",
            "patch",
            &["add metadata.annotations helm.sh/resource-policy: keep"],
        ));
    }
    Some(StepPlan {
        id: ID,
        title: format!("Mark every object of release {ns}/{rel} `helm.sh/resource-policy: keep`"),
        changes,
        checks: Checks {
            before: lines(&["the release records are readable (they list the objects)"]),
            after: lines(&[
                "every object of the release, CRDs first among them, carries helm.sh/resource-policy: keep, live and in the release record's manifest: a `helm uninstall` from here on deletes none of them",
            ]),
        },
        rollback: lines(&[
            "remove the annotation where this step added it; a value the object had before is put back",
            "the release record as it was",
        ]),
        gate: None,
    })
}

/// One object and the resource-policy annotation it had before the step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marked {
    object: ObjRef,
    before: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    objects: Vec<Marked>,
    /// The current release record as it was (the Secret, server fields stripped).
    #[serde(default)]
    record: Option<Value>,
}

/// The current release record and the release it holds.
async fn current_record(world: &World) -> anyhow::Result<Option<(Value, crate::helm::Release)>> {
    let Some((name, _, _)) = world.release() else {
        return Ok(None);
    };
    let secrets = release_secrets(world).await?;
    let Some(rel) = crate::helm::current_release(&secrets, &name)? else {
        return Ok(None);
    };
    let secret = secrets
        .into_iter()
        .find(|s| {
            s.pointer("/metadata/name").and_then(Value::as_str)
                == Some(crate::helm::secret_name(&rel.name, rel.version).as_str())
        })
        .context("the current release record disappeared while it was read")?;
    Ok(Some((secret, rel)))
}

/// Whether every document of the stored manifest is marked keep.
fn manifest_kept(rel: &crate::helm::Release) -> anyhow::Result<bool> {
    Ok(crate::helm::manifest_objects(&rel.manifest)?
        .iter()
        .all(|o| o.keep))
}

fn policy_of(o: &Value) -> Option<String> {
    o.pointer("/metadata/annotations")
        .and_then(|a| a.get(RESOURCE_POLICY))
        .and_then(Value::as_str)
        .map(String::from)
}

fn patch(value: Option<&str>) -> Value {
    json!({"metadata": {"annotations": {RESOURCE_POLICY: value}}})
}

/// The release's live objects and hook objects, CRDs first: a crash half-way leaves
/// the objects whose loss costs most already marked.
async fn release_objects(world: &World) -> anyhow::Result<Vec<(ObjRef, Value)>> {
    let mut all = chart_objects_live(world).await?;
    all.extend(hook_objects_live(world).await?);
    all.sort_by_key(|(r, _)| r.kind != "CustomResourceDefinition");
    Ok(all)
}

async fn saved(world: &World) -> anyhow::Result<Saved> {
    let Some(v) = stored_capture(world, ID)? else {
        return Ok(Saved::default());
    };
    serde_json::from_value(v).context("keep-release's capture is not what this version wrote")
}

/// Runs the `keep-release` step.
pub struct KeepRelease;

impl Step<World> for KeepRelease {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Mark every object of the release helm.sh/resource-policy: keep"
    }

    /// The objects and the annotation each had, from the first attempt: a retry after a
    /// crash would otherwise see this step's own annotations as the objects' own.
    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            if let Some(earlier) = stored_capture(world, ID)? {
                return Ok(earlier);
            }
            let objects = release_objects(world)
                .await?
                .into_iter()
                .map(|(object, live)| Marked {
                    before: policy_of(&live),
                    object,
                })
                .collect();
            let record = current_record(world)
                .await?
                .map(|(s, _)| crate::cluster::objects::strip_server_fields(&s));
            keep_capture(world, ID, serde_json::to_value(Saved { objects, record })?)
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let saved = saved(world).await?;
            if saved.objects.is_empty() {
                anyhow::bail!(
                    "the release lists no object that exists: its records may be gone; run \
                     `calico-migrate status` and plan again"
                );
            }
            for m in &saved.objects {
                let Some(live) = world.objects.get(&m.object).await? else {
                    tracing::warn!("{} no longer exists; nothing to keep", m.object);
                    continue;
                };
                if policy_of(&live).as_deref() != Some(KEEP) {
                    world.objects.merge(&m.object, &patch(Some(KEEP))).await?;
                    tracing::info!("marked {} {RESOURCE_POLICY}: {KEEP}", m.object);
                }
            }
            if let Some((secret, mut rel)) = current_record(world).await?
                && !manifest_kept(&rel)?
            {
                rel.manifest = crate::helm::with_keep_policy(&rel.manifest)?;
                world
                    .objects
                    .restore(&crate::helm::with_release(&secret, &rel))
                    .await?;
                tracing::info!(
                    "marked every document of release record {} {RESOURCE_POLICY}: {KEEP}",
                    crate::migration::facts::name_of(&secret)
                );
            }
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let saved = saved(world).await?;
            let mut unmarked = Vec::new();
            let mut gone = Vec::new();
            for m in &saved.objects {
                match world.objects.get(&m.object).await? {
                    None => gone.push(m.object.to_string()),
                    Some(l) if policy_of(&l).as_deref() != Some(KEEP) => {
                        unmarked.push(m.object.to_string())
                    }
                    Some(_) => {}
                }
            }
            // Once detach-helm removed the records there is no stored manifest to read.
            let record_unmarked = match current_record(world).await? {
                Some((_, rel)) => !manifest_kept(&rel)?,
                None => false,
            };
            Ok(if !gone.is_empty() {
                Verification::failed(format!(
                    "objects of the release are gone: {}",
                    gone.join(", ")
                ))
            } else if record_unmarked {
                Verification::failed(format!(
                    "the release record's manifest has documents without {RESOURCE_POLICY}: {KEEP}, so `helm uninstall` would delete them"
                ))
            } else if !unmarked.is_empty() {
                Verification::failed(format!(
                    "objects without {RESOURCE_POLICY}: {KEEP}: {}",
                    unmarked.join(", ")
                ))
            } else {
                let crds = saved
                    .objects
                    .iter()
                    .filter(|m| m.object.kind == "CustomResourceDefinition")
                    .count();
                Verification::passed(format!(
                    "{} objects of the release ({crds} CRDs) carry {RESOURCE_POLICY}: {KEEP}, live and in the release record's manifest",
                    saved.objects.len()
                ))
            })
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, captured: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let saved: Saved = serde_json::from_value(captured.clone())
                .context("keep-release's rollback data is not what this version wrote")?;
            for m in &saved.objects {
                let Some(live) = world.objects.get(&m.object).await? else {
                    continue;
                };
                if policy_of(&live) != m.before {
                    world
                        .objects
                        .merge(&m.object, &patch(m.before.as_deref()))
                        .await?;
                    tracing::info!("restored {RESOURCE_POLICY} on {}", m.object);
                }
            }
            // The record as it was, where one exists again (detach-helm's rollback put
            // back the record it had backed up, this step's version of it).
            if let Some(record) = &saved.record
                && let Some(r) = ObjRef::of(record)
                && world.objects.get(&r).await?.is_some()
                && world.objects.restore(record).await?
            {
                tracing::info!("restored release record {r} as it was");
            }
            forget_capture(world, ID)
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let out: Vec<String> = release_objects(world)
                .await?
                .into_iter()
                .filter(|(_, l)| policy_of(l).as_deref() != Some(KEEP))
                .map(|(r, _)| format!("annotate {r} {RESOURCE_POLICY}={KEEP}"))
                .collect();
            Ok(if out.is_empty() {
                vec!["nothing to change: every object of the release is marked keep".into()]
            } else {
                out
            })
        })
    }
}
