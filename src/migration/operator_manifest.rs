//! The pinned operator manifest as the steps apply it: its objects checked and put in
//! the order they can be applied in, and refused before anything is written when the
//! cluster does not serve one of its APIs.

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::manifest::{ManifestObject, check_object, served_apis, unserved};
use super::world::World;
use crate::cluster::objects::ObjRef;

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
        .objects
        .client()
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|_| "of unknown version".into());
    let f = super::rules::manifest_api_not_served(file, &version, &missing);
    bail!("{}; {}", f.message, f.fix)
}
