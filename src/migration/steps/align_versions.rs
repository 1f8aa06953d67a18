//! `align-versions` (only when the profile asks): upgrade the manifest install's
//! images and CRDs in place, node by node, to the Calico the operator will install.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::capture::{forget_capture, keep_capture, stored_capture};
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::facts::{name_of, str_at};
use crate::migration::profile::parse_version;
use crate::migration::refs::{CALICO_GROUP, kube_system_node, kube_system_typha};
use crate::migration::rollout::{follow_rollout, rollout_unfinished};
use crate::migration::world::{Observation, World};

pub const ID: &str = "align-versions";

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let running = ctx.source.calico_version.as_deref()?;
    let target = &ctx.profile.target.calico_version;
    let same =
        parse_version(running).map(|v| (v.0, v.1)) == parse_version(target).map(|v| (v.0, v.1));
    if !ctx.profile.target.align_versions || same {
        return None;
    }
    Some(StepPlan {
        id: ID,
        title: format!("Upgrade the kube-system Calico from {running} to {target} in place"),
        changes: vec![
            change(
                "CustomResourceDefinition *.crd.projectcalico.org",
                "patch",
                &["spec.versions[v1].schema (server-side apply, v1 only)"],
            ),
            change(
                "DaemonSet kube-system/calico-node",
                "patch",
                &[
                    "spec.template.spec.containers[calico-node].image",
                    "spec.template.spec.initContainers[*].image",
                ],
            ),
            change(
                "Deployment kube-system/calico-typha",
                "patch",
                &["spec.template.spec.containers[calico-typha].image"],
            ),
        ],
        checks: Checks {
            before: lines(&[
                "every calico-node pod Ready",
                "probe matrix equals the baseline",
            ]),
            after: lines(&[
                "calico-node rolled out one node at a time (maxUnavailable 1), each node probed after its pod is Ready",
                "probe matrix equals the baseline",
            ]),
        },
        rollback: vec![format!(
            "restore images {running} and the CRDs from the snapshot, node by node"
        )],
        gate: None,
    })
}

// ---------------------------------------------------------------------------
// apply / rollback

/// Calico component images this step re-tags (quay.io/calico/<name>, calico/<name>).
const CALICO_IMAGES: [&str; 5] = [
    "node",
    "typha",
    "cni",
    "pod2daemon-flexvol",
    "kube-controllers",
];

/// Runs the `align-versions` step.
pub struct AlignVersions;

/// `image` with its tag set to `tag` when it is a Calico component image.
pub fn retag(image: &str, tag: &str) -> Option<String> {
    if image.contains('@') {
        return None;
    }
    let (repo, _) = match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (image, ""),
    };
    let component = repo.rsplit('/').next().unwrap_or_default();
    let calico = repo.rsplit('/').nth(1) == Some("calico") && CALICO_IMAGES.contains(&component);
    calico.then(|| format!("{repo}:{tag}"))
}

/// The containers arrays of a pod template with Calico images re-tagged to `tag`:
/// a merge patch (None when every Calico image already has it). Merge patches
/// replace lists whole, so the lists are sent complete.
fn retag_patch(obj: &Value, tag: &str) -> anyhow::Result<Option<Value>> {
    let mut spec = serde_json::Map::new();
    for key in ["initContainers", "containers"] {
        let Some(list) = obj
            .pointer(&format!("/spec/template/spec/{key}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        let mut changed = false;
        let mut out = list.clone();
        for c in &mut out {
            let image = str_at(c, "/image").unwrap_or_default().to_string();
            if image.contains('@') && image.contains("calico/") {
                bail!(
                    "{} pins {image} by digest; set the {tag} image yourself or turn align_versions off",
                    ObjRef::of(obj).map(|r| r.to_string()).unwrap_or_default()
                );
            }
            if let Some(new) = retag(&image, tag)
                && new != image
            {
                c["image"] = json!(new);
                changed = true;
            }
        }
        if changed {
            spec.insert(key.to_string(), Value::Array(out));
        }
    }
    Ok((!spec.is_empty()).then(|| json!({"spec": {"template": {"spec": spec}}})))
}

/// Merge patch putting back the containers arrays of `saved` where their images differ.
fn images_back(saved: &Value, live: &Value) -> Option<Value> {
    let images = |o: &Value, key: &str| -> Vec<String> {
        o.pointer(&format!("/spec/template/spec/{key}"))
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .map(|c| str_at(c, "/image").unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut spec = serde_json::Map::new();
    for key in ["initContainers", "containers"] {
        if images(saved, key) != images(live, key)
            && let Some(list) = saved.pointer(&format!("/spec/template/spec/{key}"))
        {
            spec.insert(key.to_string(), list.clone());
        }
    }
    (!spec.is_empty()).then(|| json!({"spec": {"template": {"spec": spec}}}))
}

/// The crd.projectcalico.org CRDs of the reviewed operator manifest (v1 API only:
/// the projectcalico.org/v3 CRDs must never be applied on such a cluster).
fn manifest_calico_crds(world: &World) -> Vec<Value> {
    world
        .operator_manifest
        .iter()
        .filter(|o| {
            str_at(o, "/kind") == Some("CustomResourceDefinition")
                && str_at(o, "/spec/group") == Some(CALICO_GROUP)
        })
        .cloned()
        .collect()
}

fn crd_ref(name: &str) -> ObjRef {
    ObjRef::new(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        name,
    )
}

/// CRDs whose live spec differs from the manifest's (or that do not exist).
async fn crds_to_apply(world: &World) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for want in manifest_calico_crds(world) {
        let live = world.objects.get(&crd_ref(name_of(&want))).await?;
        if live.as_ref().and_then(|l| l.get("spec")) != want.get("spec") {
            out.push(want);
        }
    }
    Ok(out)
}

/// Wait (bounded by `node_ready_timeout`) until kube-system typha runs its template.
async fn typha_rolled_out(world: &World) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match typha_unfinished(world).await? {
            None => return Ok(()),
            Some(why) if start.elapsed() > world.options.node_ready_timeout => {
                bail!(
                    "{ID}: kube-system calico-typha did not roll out within {:?}: {why}",
                    world.options.node_ready_timeout
                )
            }
            Some(why) => tracing::info!("{ID}: waiting for kube-system calico-typha: {why}"),
        }
        tokio::time::sleep(world.options.poll).await;
    }
}

async fn typha_unfinished(world: &World) -> anyhow::Result<Option<String>> {
    let Some(d) = world.objects.get(&kube_system_typha()).await? else {
        return Ok(None);
    };
    let n = |p: &str| d.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let want = d
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if n("/status/observedGeneration") < n("/metadata/generation") {
        return Ok(Some(
            "the controller has not seen the new template yet".into(),
        ));
    }
    if n("/status/updatedReplicas") < want || n("/status/readyReplicas") < want {
        return Ok(Some(format!(
            "{} of {want} replicas updated, {} ready",
            n("/status/updatedReplicas"),
            n("/status/readyReplicas")
        )));
    }
    Ok(None)
}

impl Step<World> for AlignVersions {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Upgrade the kube-system Calico in place to the target version"
    }

    /// calico-node, typha and the Calico CRDs as they are.
    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            if let Some(earlier) = stored_capture(world, ID)? {
                return Ok(earlier);
            }
            let get = |r: ObjRef| async move {
                Ok::<_, anyhow::Error>(
                    world
                        .objects
                        .get(&r)
                        .await?
                        .map(|o| strip_server_fields(&o)),
                )
            };
            let mut crds = Vec::new();
            for want in manifest_calico_crds(world) {
                if let Some(c) = get(crd_ref(name_of(&want))).await? {
                    crds.push(c);
                }
            }
            keep_capture(
                world,
                ID,
                json!({
                    "daemonset": get(kube_system_node()).await?,
                    "typha": get(kube_system_typha()).await?,
                    "crds": crds,
                }),
            )
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let tag = world.profile.target.calico_version.clone();
            let prober = world.prober().await?;
            // CRDs first: the new agents may read fields the old schemas drop.
            if world.operator_manifest.is_empty() {
                world.observe(Observation::Note {
                    step: ID.into(),
                    text: "the operator is installed externally: no manifest to take the Calico CRDs from; they stay as they are".into(),
                });
            }
            for crd in crds_to_apply(world).await? {
                tracing::info!("{ID}: applying CustomResourceDefinition {}", name_of(&crd));
                world.objects.apply(&crd).await?;
            }
            world.objects.forget_kinds();
            if let Some(typha) = world.objects.get(&kube_system_typha()).await?
                && let Some(p) = retag_patch(&typha, &tag)?
            {
                tracing::info!("{ID}: upgrading kube-system calico-typha to {tag}");
                world.objects.merge(&kube_system_typha(), &p).await?;
            }
            typha_rolled_out(world).await?;
            let ds = world
                .objects
                .get(&kube_system_node())
                .await?
                .context("DaemonSet kube-system/calico-node does not exist")?;
            if let Some(p) = retag_patch(&ds, &tag)? {
                tracing::info!("{ID}: upgrading kube-system calico-node to {tag}, node by node");
                world.objects.merge(&kube_system_node(), &p).await?;
            }
            follow_rollout(world, ID, &kube_system_node(), &prober).await?;
            world.check_round(ID, "after align-versions").await?;
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let tag = &world.profile.target.calico_version;
            for r in [kube_system_node(), kube_system_typha()] {
                if let Some(o) = world.objects.get(&r).await?
                    && retag_patch(&o, tag)?.is_some()
                {
                    return Ok(Verification::failed(format!(
                        "{r} still runs Calico images other than {tag}"
                    )));
                }
            }
            let stale = crds_to_apply(world).await?;
            if !stale.is_empty() {
                let names: Vec<&str> = stale.iter().map(name_of).collect();
                return Ok(Verification::failed(format!(
                    "CRDs differ from the operator manifest: {}",
                    names.join(", ")
                )));
            }
            if let Some(why) = typha_unfinished(world).await? {
                return Ok(Verification::failed(format!(
                    "kube-system calico-typha: {why}"
                )));
            }
            if let Some(why) = rollout_unfinished(world, &kube_system_node()).await? {
                return Ok(Verification::failed(why));
            }
            Ok(Verification::passed(format!(
                "kube-system calico-node and calico-typha run {tag} on every node; Calico CRDs match the operator manifest"
            )))
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            // Agents first, then typha, then the CRDs: the reverse of ensure.
            if let Some(before) = saved.get("daemonset").filter(|v| !v.is_null())
                && let Some(live) = world.objects.get(&kube_system_node()).await?
                && let Some(p) = images_back(before, &live)
            {
                let prober = world.prober().await?;
                tracing::info!("{ID}: restoring the kube-system calico-node images, node by node");
                world.objects.merge(&kube_system_node(), &p).await?;
                follow_rollout(world, ID, &kube_system_node(), &prober).await?;
            }
            if let Some(before) = saved.get("typha").filter(|v| !v.is_null())
                && let Some(live) = world.objects.get(&kube_system_typha()).await?
                && let Some(p) = images_back(before, &live)
            {
                tracing::info!("{ID}: restoring the kube-system calico-typha images");
                world.objects.merge(&kube_system_typha(), &p).await?;
                typha_rolled_out(world).await?;
            }
            // Restored in place, never deleted: deleting a Calico CRD deletes its objects.
            for crd in saved
                .get("crds")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                world.objects.restore(&crd).await?;
            }
            world.objects.forget_kinds();
            forget_capture(world, ID)
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let tag = &world.profile.target.calico_version;
            let mut out: Vec<String> = crds_to_apply(world)
                .await?
                .iter()
                .map(|c| {
                    format!(
                        "apply CustomResourceDefinition {} (server-side)",
                        name_of(c)
                    )
                })
                .collect();
            for r in [kube_system_typha(), kube_system_node()] {
                if let Some(o) = world.objects.get(&r).await?
                    && let Some(p) = retag_patch(&o, tag)?
                {
                    out.push(format!("patch {r}: images to {tag}: {p}"));
                }
            }
            if out.is_empty() {
                out.push(format!("nothing to change: already on {tag}"));
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod apply_tests {
    use super::*;

    #[test]
    fn only_calico_images_are_retagged() {
        assert_eq!(
            retag("quay.io/calico/node:v3.19.1", "v3.20.0").as_deref(),
            Some("quay.io/calico/node:v3.20.0")
        );
        assert_eq!(
            retag("calico/typha:v3.19.1", "v3.20.0").as_deref(),
            Some("calico/typha:v3.20.0")
        );
        assert_eq!(
            retag(
                "registry.k8s.io/cpa/cluster-proportional-autoscaler:1.8.1",
                "v3.20.0"
            ),
            None
        );
        assert_eq!(retag("quay.io/calico/node@sha256:abc", "v3.20.0"), None);
        assert_eq!(
            retag("localhost:5000/calico/node", "v3.20.0").as_deref(),
            Some("localhost:5000/calico/node:v3.20.0")
        );
    }

    #[test]
    fn patch_sends_whole_lists_and_restores_them() {
        let ds = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "calico-node", "image": "quay.io/calico/node:v3.19.1", "env": [{"name": "A"}]},
            {"name": "sidecar", "image": "busybox:1"}]}}}});
        let p = retag_patch(&ds, "v3.20.0")
            .unwrap_or_default()
            .unwrap_or_default();
        let cs = &p["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "quay.io/calico/node:v3.20.0");
        assert_eq!(cs[0]["env"], json!([{"name": "A"}]));
        assert_eq!(cs[1]["image"], "busybox:1");
        let mut live = ds.clone();
        live["spec"]["template"]["spec"]["containers"] = cs.clone();
        assert_eq!(retag_patch(&live, "v3.20.0").unwrap_or_default(), None);
        let back = images_back(&ds, &live).unwrap_or_default();
        assert_eq!(
            back["spec"]["template"]["spec"]["containers"][0]["image"],
            "quay.io/calico/node:v3.19.1"
        );
        let pinned = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "calico-node", "image": "quay.io/calico/node@sha256:abc"}]}}}});
        assert!(retag_patch(&pinned, "v3.20.0").is_err());
    }
}
