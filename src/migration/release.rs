//! The aws-calico Helm release as the steps read it live: its records (Helm 3
//! release Secrets) and the objects its manifest lists, at the API versions the
//! cluster serves. Baseline snapshots them; detach-helm backs them up and removes
//! the records.

use serde_json::Value;

use super::capture::stored_capture;
use super::world::World;
use crate::cluster::objects::ObjRef;

/// The step that removes the release records; once it has run, the release's object
/// list is read from its first capture.
pub const DETACH_HELM_STEP: &str = "detach-helm";

/// The plan's release's Helm 3 records (Secrets labelled `owner=helm,name=<release>`).
pub async fn release_secrets(world: &World) -> anyhow::Result<Vec<Value>> {
    let Some((name, ns, _)) = world.release() else {
        return Ok(Vec::new());
    };
    let selector = format!("owner=helm,name={name}");
    Ok(world
        .objects
        .list("v1", "Secret", Some(&ns), Some(&selector))
        .await?
        .into_iter()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some(crate::helm::RELEASE_SECRET_TYPE))
        .collect())
}

/// Every live object the release's manifest lists, at an API version the cluster
/// serves. Read from the current release record; once the records are gone (this
/// step ran), from this step's stored capture.
pub async fn chart_objects_live(world: &World) -> anyhow::Result<Vec<(ObjRef, Value)>> {
    let mut refs: Vec<ObjRef> = Vec::new();
    let secrets = release_secrets(world).await?;
    if let Some((name, _, _)) = world.release()
        && let Some(rel) = crate::helm::current_release(&secrets, &name)?
    {
        refs = manifest_refs(&rel.manifest, &rel.namespace)?;
    } else if let Some(c) = stored_capture(world, DETACH_HELM_STEP)? {
        refs = c
            .get("objects")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(ObjRef::of).collect())
            .unwrap_or_default();
    }
    live(world, refs).await
}

/// Every live object the current release's hooks created (aws-calico 0.3.11's
/// Installation `default`, a post-install hook). Helm does not list hook objects in the
/// manifest and `helm uninstall` leaves them, unless a delete policy says otherwise.
pub async fn hook_objects_live(world: &World) -> anyhow::Result<Vec<(ObjRef, Value)>> {
    let secrets = release_secrets(world).await?;
    let Some((name, _, _)) = world.release() else {
        return Ok(Vec::new());
    };
    let Some(rel) = crate::helm::current_release(&secrets, &name)? else {
        return Ok(Vec::new());
    };
    let mut refs = Vec::new();
    for h in &rel.hooks {
        let text = h
            .get("manifest")
            .and_then(Value::as_str)
            .unwrap_or_default();
        refs.extend(manifest_refs(text, &rel.namespace)?);
    }
    live(world, refs).await
}

/// The objects a rendered manifest lists, namespaced ones in `namespace` unless they
/// name their own.
fn manifest_refs(manifest: &str, namespace: &str) -> anyhow::Result<Vec<ObjRef>> {
    Ok(crate::helm::manifest_objects(manifest)?
        .into_iter()
        .map(|o| {
            let namespace = if crate::helm::is_cluster_scoped(&o.kind) {
                None
            } else {
                Some(o.namespace.unwrap_or_else(|| namespace.to_string()))
            };
            ObjRef {
                api_version: o.api_version,
                kind: o.kind,
                namespace,
                name: o.name,
            }
        })
        .collect())
}

async fn live(world: &World, refs: Vec<ObjRef>) -> anyhow::Result<Vec<(ObjRef, Value)>> {
    let mut out = Vec::new();
    for r in refs {
        if let Some(found) = get_served(world, &r).await? {
            out.push(found);
        }
    }
    Ok(out)
}

/// The object at its manifest API version, or at the version that replaced a
/// removed one (the 0.3.10 manifest's policy/v1beta1 PodDisruptionBudget is
/// policy/v1 on Kubernetes 1.25+).
async fn get_served(world: &World, r: &ObjRef) -> anyhow::Result<Option<(ObjRef, Value)>> {
    let mut candidates = vec![r.clone()];
    if let Some(v) = replacement_api(&r.api_version, &r.kind) {
        candidates.push(ObjRef {
            api_version: v.to_string(),
            ..r.clone()
        });
    }
    for c in candidates {
        if let Some(o) = world.objects.get(&c).await? {
            return Ok(Some((ObjRef::of(&o).unwrap_or(c), o)));
        }
    }
    Ok(None)
}

/// The GA API of a removed beta API (kubernetes/website deprecation-guide.md).
fn replacement_api(api_version: &str, kind: &str) -> Option<&'static str> {
    match (api_version, kind) {
        ("policy/v1beta1", "PodDisruptionBudget") => Some("policy/v1"),
        ("rbac.authorization.k8s.io/v1beta1", _) => Some("rbac.authorization.k8s.io/v1"),
        ("apps/v1beta1" | "apps/v1beta2" | "extensions/v1beta1", "DaemonSet" | "Deployment") => {
            Some("apps/v1")
        }
        ("apiextensions.k8s.io/v1beta1", _) => Some("apiextensions.k8s.io/v1"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_beta_apis_are_read_at_their_ga_version() {
        assert_eq!(
            replacement_api("policy/v1beta1", "PodDisruptionBudget"),
            Some("policy/v1")
        );
        assert_eq!(
            replacement_api("apiextensions.k8s.io/v1beta1", "CustomResourceDefinition"),
            Some("apiextensions.k8s.io/v1")
        );
        assert_eq!(replacement_api("v1", "Service"), None);
    }
}
