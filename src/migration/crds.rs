//! CustomResourceDefinitions a step created, on the way back: one is deleted only
//! while no object of its kind exists, since deleting a CRD deletes every object of it
//! (apiextensions-apiserver's finalizer `customresourcecleanup.apiextensions.k8s.io`).

use serde_json::{Value, json};

use crate::cluster::objects::ObjRef;
use crate::migration::facts::str_at;
use crate::migration::world::World;

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
