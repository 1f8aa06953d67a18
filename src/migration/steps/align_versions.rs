//! `align-versions` (current path): bring the kube-system install to the Calico the
//! target operator installs, from that version's own manifest (migration::calico_manifest):
//! its CRDs created or updated and its RBAC applied before any agent runs it, then typha's
//! and calico-node's images, node by node, each node probed through its swap. Only the
//! images change on the workloads, so the DaemonSet keeps the shape the operator's
//! converter accepts.

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::objects::{ObjRef, contains, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::calico_manifest::{
    Alignment, CALICO_NODE, CALICO_TYPHA, alignment, holds_rules, images_patch, role_over,
};
use crate::migration::capture::{forget_capture, keep_capture, stored_capture};
use crate::migration::crds::delete_created;
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::facts::{name_of, str_at};
use crate::migration::profile::parse_version;
use crate::migration::refs::{kube_system_node, kube_system_typha};
use crate::migration::rollout::{
    finish_paced, roll_paced, rollout_unfinished, strategy_left, stuck_nodes, update_strategy,
    wait_rollout,
};
use crate::migration::wait::wait_until;
use crate::migration::world::World;

pub const ID: &str = "align-versions";

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let running = ctx.source.calico_version.as_deref()?;
    let target = &ctx.profile.target.calico_version;
    let same =
        parse_version(running).map(|v| (v.0, v.1)) == parse_version(target).map(|v| (v.0, v.1));
    if !ctx.profile.target.align_versions || same {
        return None;
    }
    let pin = ctx.calico_manifest_sha256.unwrap_or("(not pinned)");
    Some(StepPlan {
        id: ID,
        title: format!("Upgrade the kube-system Calico from {running} to {target} in place"),
        changes: vec![
            change(
                "CustomResourceDefinition (every one of the Calico manifest)",
                "create or update",
                &[&format!("from the Calico {target} manifest, sha256 {pin}")],
            ),
            change(
                "ServiceAccount, ClusterRole, ClusterRoleBinding calico-node",
                "create or update",
                &["ClusterRole calico-node: the manifest's rules plus the ones it holds now"],
            ),
            change(
                "Deployment kube-system/calico-typha",
                "patch",
                &["spec.template.spec.containers[calico-typha].image"],
            ),
            change(
                "DaemonSet kube-system/calico-node",
                "patch",
                &["spec.template.spec.containers[calico-node].image"],
            ),
        ],
        checks: Checks {
            before: lines(&[
                "every calico-node pod Ready",
                "probe matrix equals the baseline",
            ]),
            after: lines(&[
                "the CRDs and RBAC of the target version in place before any agent runs it",
                "calico-node replaced by calico-migrate one node at a time (OnDelete while it does, the update strategy put back after), each node probed through its swap",
                "probe matrix equals the baseline",
            ]),
        },
        rollback: vec![format!(
            "restore images {running} node by node, then the RBAC and CRDs as they were; CRDs the step created are deleted only when empty, otherwise kept and reported"
        )],
        gate: None,
    })
}

/// What the rollback needs: every object the step changes, as it was, and what it created.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    daemonset: Option<Value>,
    typha: Option<Value>,
    /// CRDs and RBAC objects that existed, as they were.
    existed: Vec<Value>,
    /// CRDs and RBAC objects the step creates.
    created: Vec<ObjRef>,
}

/// Runs the `align-versions` step.
pub struct AlignVersions;

fn planned(world: &World) -> anyhow::Result<Alignment> {
    if world.calico_manifest.is_empty() {
        bail!(
            "{ID} needs the Calico {} manifest the plan pinned; run `calico-migrate plan \
             --calico-manifest FILE` with the reviewed calico-policy-only.yaml",
            world.profile.target.calico_version
        );
    }
    Ok(alignment(
        &world.calico_manifest,
        &world.profile.target.calico_version,
    )?)
}

fn reference(obj: &Value) -> anyhow::Result<ObjRef> {
    ObjRef::of(obj).with_context(|| {
        format!(
            "an object of the Calico manifest has no apiVersion, kind or name: {}",
            obj.to_string().chars().take(120).collect::<String>()
        )
    })
}

/// The object to apply for `want`, given what lives now (the calico-node role keeps
/// the rules it holds).
fn desired(want: &Value, live: Option<&Value>) -> Value {
    if str_at(want, "/kind") == Some("ClusterRole") && name_of(want) == CALICO_NODE {
        role_over(want, live)
    } else {
        want.clone()
    }
}

/// Whether the live object already holds what the step applies.
fn in_place(want: &Value, live: Option<&Value>) -> bool {
    let Some(live) = live else { return false };
    if str_at(want, "/kind") == Some("ClusterRole") {
        return holds_rules(live, want);
    }
    contains(live, &strip_server_fields(want))
}

/// Apply the CRDs, wait until each is Established (the server serves its kind), then
/// the RBAC: nothing of the new version runs before these exist.
async fn apply_prerequisites(world: &World, plan: &Alignment) -> anyhow::Result<()> {
    for want in &plan.crds {
        let r = reference(want)?;
        let live = world.objects.get(&r).await?;
        if in_place(want, live.as_ref()) {
            continue;
        }
        tracing::info!("{ID}: applying {r}");
        world.objects.apply(want).await?;
    }
    for want in &plan.crds {
        let r = reference(want)?;
        let what = format!("{r} to be Established");
        wait_until(world, &what, world.options.node_ready_timeout, || async {
            let live = world.objects.get(&r).await?;
            Ok((!live.as_ref().is_some_and(established)).then(|| "not yet".to_string()))
        })
        .await?;
    }
    world.objects.forget_kinds();
    for want in &plan.rbac {
        let r = reference(want)?;
        let live = world.objects.get(&r).await?;
        if in_place(want, live.as_ref()) {
            continue;
        }
        tracing::info!("{ID}: applying {r}");
        world.objects.apply(&desired(want, live.as_ref())).await?;
    }
    Ok(())
}

/// The CRD's Established condition is True (apiextensions-apiserver sets it once the
/// kind is served).
fn established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                str_at(c, "/type") == Some("Established") && str_at(c, "/status") == Some("True")
            })
        })
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

/// kube-system calico-node's update strategy before the step (from its capture): what
/// its paced rollouts put back.
fn strategy_before(world: &World) -> anyhow::Result<Value> {
    let saved: Saved = match stored_capture(world, ID)? {
        Some(v) => serde_json::from_value(v).context("the align-versions capture does not read")?,
        None => Saved::default(),
    };
    Ok(update_strategy(
        saved.daemonset.as_ref().unwrap_or(&json!({})),
    ))
}

/// Wait (bounded by `node_ready_timeout`) until kube-system typha runs its template.
async fn typha_rolled_out(world: &World) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let mut tick = crate::checks::every(world.options.poll);
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
        tick.tick().await;
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

    /// calico-node, typha, and every CRD and RBAC object the manifest brings, as they are.
    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            if let Some(earlier) = stored_capture(world, ID)? {
                return Ok(earlier);
            }
            let plan = planned(world)?;
            let get = |r: ObjRef| async move {
                Ok::<_, anyhow::Error>(
                    world
                        .objects
                        .get(&r)
                        .await?
                        .map(|o| strip_server_fields(&o)),
                )
            };
            let mut saved = Saved {
                daemonset: get(kube_system_node()).await?,
                typha: get(kube_system_typha()).await?,
                ..Saved::default()
            };
            for want in plan.crds.iter().chain(&plan.rbac) {
                let r = reference(want)?;
                match get(r.clone()).await? {
                    Some(live) => saved.existed.push(live),
                    None => saved.created.push(r),
                }
            }
            keep_capture(world, ID, serde_json::to_value(saved)?)
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let plan = planned(world)?;
            let prober = world.prober().await?;
            apply_prerequisites(world, &plan).await?;
            // Typha first: the new agents sync from it (typha serves a client of its
            // own version or older; calico-node connects to any typha it finds).
            if let Some(typha) = world.objects.get(&kube_system_typha()).await?
                && let Some(p) = images_patch(&typha, &plan.images[CALICO_TYPHA])
            {
                tracing::info!("{ID}: moving kube-system calico-typha to its target images");
                world.objects.merge(&kube_system_typha(), &p).await?;
            }
            typha_rolled_out(world).await?;
            let ds = world
                .objects
                .get(&kube_system_node())
                .await?
                .context("DaemonSet kube-system/calico-node does not exist")?;
            let patch = images_patch(&ds, &plan.images[CALICO_NODE]);
            if patch.is_some() {
                tracing::info!(
                    "{ID}: moving kube-system calico-node to its target images, node by node"
                );
            }
            let restore = strategy_before(world)?;
            roll_paced(
                world,
                ID,
                &kube_system_node(),
                patch.as_ref(),
                &restore,
                &prober,
            )
            .await?;
            world.check_round(ID, "after align-versions").await?;
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let plan = planned(world)?;
            let target = &world.profile.target.calico_version;
            for want in plan.crds.iter().chain(&plan.rbac) {
                let r = reference(want)?;
                let live = world.objects.get(&r).await?;
                if !in_place(want, live.as_ref()) {
                    return Ok(Verification::failed(format!(
                        "{r} is not as the Calico {target} manifest defines it"
                    )));
                }
            }
            for (r, images) in [
                (kube_system_node(), &plan.images[CALICO_NODE]),
                (kube_system_typha(), &plan.images[CALICO_TYPHA]),
            ] {
                if let Some(o) = world.objects.get(&r).await?
                    && images_patch(&o, images).is_some()
                {
                    return Ok(Verification::failed(format!(
                        "{r} still runs images other than Calico {target}'s"
                    )));
                }
            }
            if let Some(why) = typha_unfinished(world).await? {
                return Ok(Verification::failed(format!(
                    "kube-system calico-typha: {why}"
                )));
            }
            if let Some(why) = rollout_unfinished(world, &kube_system_node()).await? {
                return Ok(Verification::failed(why));
            }
            if let Some(ds) = world.objects.get(&kube_system_node()).await?
                && let Some(why) = strategy_left(&ds, &strategy_before(world)?)
            {
                return Ok(Verification::failed(why));
            }
            Ok(Verification::passed(format!(
                "kube-system calico-node and calico-typha run Calico {target} on every node, on the CRDs and RBAC of its manifest"
            )))
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let saved: Saved = serde_json::from_value(saved.clone())
                .context("the align-versions rollback data does not read")?;
            // Agents first, then typha, then RBAC and CRDs: the reverse of ensure, so
            // no agent runs a version whose CRDs or RBAC are gone.
            if let Some(before) = &saved.daemonset
                && let Some(live) = world.objects.get(&kube_system_node()).await?
                && let Some(p) = images_back(before, &live)
            {
                let restore = update_strategy(before);
                let stuck = stuck_nodes(world, &kube_system_node()).await?;
                if !stuck.is_empty() {
                    // The forward rollout stopped at a node whose new agent never became
                    // Ready: no probe pod can be placed there until it has an agent again.
                    // Put the old images and the update strategy back together, let the
                    // controller replace that pod (the others never left the old
                    // template, so they stay), then check every node.
                    tracing::info!(
                        "{ID}: the rollout stopped (node {}); restoring the kube-system calico-node images",
                        stuck.join("; node ")
                    );
                    let mut back = p.clone();
                    back["spec"]["updateStrategy"] = restore;
                    world.objects.merge(&kube_system_node(), &back).await?;
                    wait_rollout(world, &kube_system_node()).await?;
                    world
                        .check_round(ID, "after restoring the calico-node images")
                        .await?;
                } else {
                    let prober = world.prober().await?;
                    tracing::info!(
                        "{ID}: restoring the kube-system calico-node images, node by node"
                    );
                    roll_paced(world, ID, &kube_system_node(), Some(&p), &restore, &prober).await?;
                }
            }
            if let Some(before) = &saved.daemonset {
                // The images are back but a paced rollout stopped (this rollback's, or
                // the step's before it wrote them): the nodes not replaced yet go on.
                finish_paced(world, ID, &kube_system_node(), &update_strategy(before)).await?;
            }
            if let Some(before) = &saved.typha
                && let Some(live) = world.objects.get(&kube_system_typha()).await?
                && let Some(p) = images_back(before, &live)
            {
                tracing::info!("{ID}: restoring the kube-system calico-typha images");
                world.objects.merge(&kube_system_typha(), &p).await?;
                typha_rolled_out(world).await?;
            }
            for obj in &saved.existed {
                world.objects.restore(obj).await?;
            }
            delete_created(world, ID, &saved.created, |_| true, "align-versions").await?;
            forget_capture(world, ID)
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let plan = planned(world)?;
            let mut out = Vec::new();
            for want in plan.crds.iter().chain(&plan.rbac) {
                let r = reference(want)?;
                let live = world.objects.get(&r).await?;
                if !in_place(want, live.as_ref()) {
                    let verb = if live.is_some() { "update" } else { "create" };
                    out.push(format!("{verb} {r} (server-side apply)"));
                }
            }
            for (r, images) in [
                (kube_system_typha(), &plan.images[CALICO_TYPHA]),
                (kube_system_node(), &plan.images[CALICO_NODE]),
            ] {
                if let Some(o) = world.objects.get(&r).await?
                    && let Some(p) = images_patch(&o, images)
                {
                    out.push(format!("patch {r}: {p}"));
                }
            }
            if out.is_empty() {
                out.push(format!(
                    "nothing to change: already on Calico {}",
                    world.profile.target.calico_version
                ));
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod apply_tests {
    use super::*;

    #[test]
    fn images_back_restores_whole_lists_only_where_they_differ() {
        let before = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "calico-node", "image": "quay.io/calico/node:v3.19.1", "env": [{"name": "A"}]}]}}}});
        let mut live = before.clone();
        assert_eq!(images_back(&before, &live), None);
        live["spec"]["template"]["spec"]["containers"][0]["image"] =
            json!("docker.io/calico/node:v3.30.3");
        let back = images_back(&before, &live).unwrap_or_default();
        assert_eq!(
            back["spec"]["template"]["spec"]["containers"],
            before["spec"]["template"]["spec"]["containers"]
        );
    }

    #[test]
    fn the_calico_node_role_keeps_its_rules_and_is_in_place_when_it_holds_the_new_ones() {
        let want = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "calico-node"}, "rules": [{"resources": ["tiers"]}]});
        let live = json!({"kind": "ClusterRole", "metadata": {"name": "calico-node"},
            "rules": [{"resources": ["pods"]}]});
        assert!(!in_place(&want, Some(&live)));
        let applied = desired(&want, Some(&live));
        assert!(in_place(&want, Some(&applied)) && holds_rules(&applied, &live));
        assert!(!in_place(&want, None));
    }
}
