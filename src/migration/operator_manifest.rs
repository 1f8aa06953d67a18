//! The pinned operator manifest as the steps apply it: its objects checked and put in
//! the order they can be applied in, and refused before anything is written when the
//! cluster does not serve one of its APIs.

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::manifest::{ManifestObject, check_object, served_apis, unserved};
use super::world::World;
use crate::cluster::objects::{ObjRef, contains, strip_server_fields};

/// The order a step applies the manifest in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// A first install: namespaces and CRDs first so the objects after them resolve.
    Install,
    /// An upgrade of a running operator: namespaces and CRDs first, then RBAC and the
    /// rest, the Deployment last, so the new operator starts with every kind and
    /// permission it reads already in place.
    Upgrade,
}

/// The manifest's objects with their references, in `order`.
pub fn manifest_in_order(world: &World, order: Order) -> anyhow::Result<Vec<(ObjRef, &Value)>> {
    let mut out = Vec::new();
    for obj in &world.operator_manifest {
        let r = ObjRef::of(obj).with_context(|| {
            format!(
                "an object of the operator manifest has no apiVersion, kind or name: {}",
                obj.to_string().chars().take(120).collect::<String>()
            )
        })?;
        if let Err((problem, fix)) = check_object(&r, obj) {
            bail!(
                "the operator manifest holds {}: {problem}; {fix}",
                r.describe()
            );
        }
        out.push((r, obj));
    }
    let rank = |r: &ObjRef| match (r.kind.as_str(), order) {
        ("Namespace", _) => 0,
        ("CustomResourceDefinition", _) => 1,
        ("Deployment", Order::Upgrade) => 3,
        _ => 2,
    };
    out.sort_by_key(|(r, _)| rank(r));
    Ok(out)
}

/// Refuse, before anything is written, a manifest with objects of APIs the cluster
/// does not serve (the check and the words of plan's `OPERATOR_MANIFEST_API_NOT_SERVED`):
/// the cluster may have been upgraded since the plan, and applying half of the manifest
/// helps nobody.
pub async fn refuse_unserved(world: &World) -> anyhow::Result<()> {
    let file = "the pinned operator manifest";
    let manifest: Vec<ManifestObject> = world
        .operator_manifest
        .iter()
        .filter_map(|obj| {
            Some(ManifestObject {
                place: None,
                r: ObjRef::of(obj)?,
                obj: obj.clone(),
            })
        })
        .collect();
    let served = served_apis(&world.objects, &manifest).await?;
    let missing = unserved(file, &manifest, &served)?;
    if missing.is_empty() {
        return Ok(());
    }
    let version = world
        .server_version()
        .await
        .unwrap_or_else(|_| "of unknown version".into());
    let f = super::rules::manifest_api_not_served(file, &version, &missing);
    bail!("{}; {}", f.message, f.fix)
}

/// Server-side apply `objects` (from [`manifest_in_order`]) where the live object does
/// not hold them already, kinds resolved again after each run of CRDs.
pub async fn apply_in_order(world: &World, objects: &[(ObjRef, &Value)]) -> anyhow::Result<()> {
    let mut applied = 0;
    for (i, (r, obj)) in objects.iter().enumerate() {
        let live = world.objects.get(r).await?;
        if live.is_some_and(|l| contains(&l, &strip_server_fields(obj))) {
            continue;
        }
        // The error names the verb, the object and the API server's answer.
        world.objects.apply(obj).await?;
        tracing::info!("applied {r}");
        applied += 1;
        // New CRDs: resolve kinds again before the objects that follow.
        if r.kind == "CustomResourceDefinition"
            && objects.get(i + 1).is_none_or(|(n, _)| n.kind != r.kind)
        {
            world.objects.forget_kinds();
        }
    }
    world.objects.forget_kinds();
    tracing::info!(
        "operator manifest: {applied} object(s) applied, {} already in place",
        objects.len() - applied
    );
    Ok(())
}

/// What applying `objects` would do, for `apply --dry-run`.
pub async fn preview_in_order(
    world: &World,
    objects: &[(ObjRef, &Value)],
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (r, obj) in objects {
        match world.objects.get(r).await? {
            None => out.push(format!("create {r}")),
            Some(l) if !contains(&l, &strip_server_fields(obj)) => {
                out.push(format!("server-side apply {r} (fields differ)"))
            }
            Some(_) => {}
        }
    }
    Ok(out)
}

/// The manifest's objects as they are live, server fields stripped, and those that do
/// not exist: what a step that applies the manifest needs to undo it.
pub async fn live_state(world: &World, order: Order) -> anyhow::Result<(Vec<Value>, Vec<ObjRef>)> {
    let mut existed = Vec::new();
    let mut created = Vec::new();
    for (r, _) in manifest_in_order(world, order)? {
        match world.objects.get(&r).await? {
            Some(live) => existed.push(strip_server_fields(&live)),
            None => created.push(r),
        }
    }
    Ok((existed, created))
}
