//! CustomResourceDefinitions a step created, on the way back: one is deleted only
//! while no object of its kind exists, since deleting a CRD deletes every object of it
//! (apiextensions-apiserver's finalizer `customresourcecleanup.apiextensions.k8s.io`).

use serde_json::{Value, json};

use crate::cluster::objects::ObjRef;
use crate::migration::facts::str_at;
use crate::migration::world::{Observation, World};

/// No object of the CRD's kind exists (or the CRD is gone): deleting it loses nothing.
pub async fn crd_is_empty(world: &World, crd: &ObjRef) -> anyhow::Result<bool> {
    let Some(live) = world.objects.get(crd).await? else {
        return Ok(true);
    };
    let group = str_at(&live, "/spec/group").unwrap_or_default();
    let kind = str_at(&live, "/spec/names/kind").unwrap_or_default();
    let version = live
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v.get("storage") == Some(&json!(true))))
        .and_then(|v| str_at(v, "/name"))
        .unwrap_or("v1");
    let objects = world
        .objects
        .list(&format!("{group}/{version}"), kind, None, None)
        .await?;
    Ok(objects.is_empty())
}

/// Delete the objects a step created, the last created first. A CRD `may_keep` accepts
/// is kept while objects of it exist, and the kept ones are said in a note naming what
/// created them (`by`). Returns what was deleted (or already gone), to wait for.
pub async fn delete_created(
    world: &World,
    step: &str,
    created: &[ObjRef],
    may_keep: impl Fn(&ObjRef) -> bool,
    by: &str,
) -> anyhow::Result<Vec<ObjRef>> {
    let mut kept = Vec::new();
    let mut deleted = Vec::new();
    for r in created.iter().rev() {
        if r.kind == "CustomResourceDefinition" && may_keep(r) && !crd_is_empty(world, r).await? {
            kept.push(r.name.as_str());
            continue;
        }
        if world.objects.delete(r).await? {
            tracing::info!("deleted {r}");
        }
        deleted.push(r.clone());
    }
    world.objects.forget_kinds();
    if !kept.is_empty() {
        world.observe(Observation::Note {
            step: step.into(),
            text: format!(
                "kept {} CustomResourceDefinition(s) {by} created, because objects of them exist now (deleting a CRD deletes its objects): {}",
                kept.len(),
                kept.join(", ")
            ),
        });
    }
    Ok(deleted)
}
