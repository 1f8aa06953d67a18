//! `upgrade-operator` (operator-based chart 0.3.11): move the release's operator to the
//! target line from the pinned operator manifest — CRDs created or updated first, then
//! the RBAC and the rest, the Deployment last — and calico-system with it node by node.
//! The new operator renders calico-node at its Calico with RollingUpdate; the step halts
//! that rollout at once (calico-node OnDelete, the operator frozen) and replaces the pods
//! itself, one node at a time, each probed through its swap with connections held across
//! the rollout, stopping at the first node not verified; then the operator runs again.
//! Rollback puts the release's operator back and moves calico-system back the same way;
//! it is refused where that operator cannot render.

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::objects::ObjRef;
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::crds::delete_created;
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::facts::{calico_node_version, int_at, operator_renders_v1beta1, str_at};
use crate::migration::nodes::list_nodes;
use crate::migration::operator::freeze_operator;
use crate::migration::operator::{condition, progressing_message};
use crate::migration::operator_manifest::{
    Order, apply_in_order, live_state, manifest_in_order, preview_in_order, refuse_unserved,
};
use crate::migration::profile::parse_minor;
use crate::migration::refs::{
    calico_system_node, installation_ref, operator_ref, tigera_status_ref,
};
use crate::migration::rollout::replace_node_by_node;
use crate::migration::swap::{Way, check_held, hold_across_swaps};
use crate::migration::wait::{wait_gone, wait_until, wait_while_progressing};
use crate::migration::world::World;

pub const ID: &str = "upgrade-operator";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let p = ctx.profile;
    let pin = ctx.manifest_sha256.unwrap_or("(not pinned)");
    let from = ctx.source.calico_version.as_deref().unwrap_or("?");
    let target = &p.target.calico_version;
    StepPlan {
        id: ID,
        title: format!(
            "Upgrade the Tigera Operator to {} and follow calico-system from {from} to {target} node by node",
            p.target.operator_version
        ),
        changes: vec![
            change(
                "CustomResourceDefinition (every one of the operator manifest)",
                "create or update",
                &[&format!("from the pinned manifest, sha256 {pin}")],
            ),
            change(
                "Namespace tigera-operator, ServiceAccount, ClusterRoles, ClusterRoleBinding, RoleBinding",
                "create or update",
                &["from the pinned manifest"],
            ),
            change(
                "Deployment tigera-operator/tigera-operator",
                "update",
                &[&format!(
                    "image quay.io/tigera/operator:{}, after the CRDs and RBAC",
                    p.target.operator_version
                )],
            ),
            change(
                "DaemonSet calico-system/calico-node, Deployments calico-typha and calico-kube-controllers",
                "rendered by the operator",
                &[
                    &format!("Calico {target}"),
                    "calico-node: updateStrategy OnDelete and the operator frozen while calico-migrate replaces its pods one node at a time; the operator's RollingUpdate back at the end",
                ],
            ),
        ],
        checks: Checks {
            before: lines(&[
                "Installation default exists; the operator Deployment exists",
                "the operator manifest's APIs are all served by the cluster",
            ]),
            after: vec![
                format!(
                    "tigera-operator {} rolled out and Ready",
                    p.target.operator_version
                ),
                format!(
                    "calico-system calico-node at {target} on every node, each node probed through its swap (stop at the first failure)"
                ),
                format!(
                    "TigeraStatus calico Available; Installation status.calicoVersion {target}"
                ),
            ],
        },
        rollback: lines(&[
            "refused where the release's operator cannot render (v1.17-v1.27 on Kubernetes 1.25+): roll forward there",
            "put back the operator Deployment, RBAC and CRDs as they were; delete what the manifest created (a Calico CRD only while it holds no object)",
            "follow calico-system back to its version node by node, each node probed",
        ]),
        gate: None,
    }
}

/// What the rollback needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    /// Manifest objects that existed before, as they were (the release's operator).
    existed: Vec<Value>,
    /// Manifest objects that did not exist.
    created: Vec<ObjRef>,
    /// The Calico version calico-system ran before (`v3.20.0`).
    calico_version: Option<String>,
}

/// The image tag of calico-system calico-node's calico-node container.
async fn running_calico(world: &World) -> anyhow::Result<Option<String>> {
    Ok(world
        .objects
        .get(&calico_system_node())
        .await?
        .as_ref()
        .and_then(calico_node_version))
}

fn operator_tag(d: &Value) -> Option<&str> {
    str_at(d, "/spec/template/spec/containers/0/image")
        .and_then(|i| i.rsplit_once(':').map(|(_, t)| t))
}

/// Whether the Deployment's rollout is complete: the controller saw its generation and
/// every replica is updated, Ready, and no old one is left.
fn rolled_out(d: &Value) -> bool {
    let n = |k: &str| int_at(d, &format!("/status/{k}")).unwrap_or(0);
    let want = int_at(d, "/spec/replicas").unwrap_or(1);
    n("observedGeneration") >= int_at(d, "/metadata/generation").unwrap_or(0)
        && n("updatedReplicas") >= want
        && n("readyReplicas") >= want
        && n("replicas") == want
}

/// Wait until the operator Deployment runs `tag` and nothing older.
async fn wait_operator_rolled_out(world: &World, tag: &str) -> anyhow::Result<()> {
    wait_until(
        world,
        &format!("the operator {tag} to be rolled out"),
        world.options.node_ready_timeout,
        || async {
            Ok(match world.objects.get(&operator_ref()).await? {
                Some(d) if operator_tag(&d) == Some(tag) && rolled_out(&d) => None,
                Some(d) => Some(format!(
                    "image {}, {} of {} replica(s) updated and Ready",
                    operator_tag(&d).unwrap_or("?"),
                    int_at(&d, "/status/updatedReplicas").unwrap_or(0),
                    int_at(&d, "/spec/replicas").unwrap_or(1)
                )),
                None => Some("no Deployment tigera-operator/tigera-operator".into()),
            })
        },
    )
    .await
}

/// Wait until the operator has rendered calico-node at `version` (its pod template):
/// the DaemonSet controller starts replacing pods from then on.
async fn wait_rendered(world: &World, version: &str) -> anyhow::Result<()> {
    wait_until(
        world,
        &format!("the operator to render calico-node {version}"),
        world.options.node_ready_timeout,
        || async {
            Ok(match running_calico(world).await? {
                Some(v) if v == version => None,
                Some(v) => Some(format!(
                    "calico-system calico-node still at {v}; {}",
                    progressing_message(world).await
                )),
                None => Some("no DaemonSet calico-system/calico-node".into()),
            })
        },
    )
    .await
}

/// Whether operator release `tag` writes `status.calicoVersion` on the Installation:
/// from v1.29.0, once every component is available (v1.38.6
/// pkg/controller/installation/core_controller.go:1589-1602); v1.20.1's
/// InstallationStatus has no such field.
fn writes_calico_version(tag: &str) -> bool {
    crate::migration::profile::parse_version(tag).is_some_and(|v| v >= (1, 29, 0))
}

/// Wait until TigeraStatus calico is Available and, where the operator `tag` writes it,
/// the Installation reports `version`.
async fn wait_available(world: &World, tag: &str, version: &str) -> anyhow::Result<()> {
    let reports_version = writes_calico_version(tag);
    wait_while_progressing(
        world,
        &format!("TigeraStatus calico Available at {version}"),
        world.options.node_ready_timeout,
        || async {
            let ts = world.objects.get(&tigera_status_ref()).await?;
            let available = ts
                .as_ref()
                .and_then(|t| condition(t, "Available"))
                .is_some_and(|(on, _, _)| on);
            let installed = world
                .objects
                .get(&installation_ref())
                .await?
                .and_then(|i| str_at(&i, "/status/calicoVersion").map(String::from));
            Ok(
                if available && (!reports_version || installed.as_deref() == Some(version)) {
                    None
                } else {
                    Some(format!(
                        "Installation reports {}; {}",
                        installed.as_deref().unwrap_or("no version"),
                        progressing_message(world).await
                    ))
                },
            )
        },
    )
    .await
}

/// The established connections held across the rollout, one per node (opened while
/// every agent is Ready, before anything is rendered).
async fn hold(world: &World) -> anyhow::Result<Option<crate::checks::conn::ConnPool>> {
    let nodes: Vec<String> = list_nodes(&world.objects)
        .await?
        .into_iter()
        .filter(|n| !n.fargate)
        .map(|n| n.name)
        .collect();
    hold_across_swaps(world, &nodes, nodes.len()).await
}

/// Move calico-system calico-node to `version` node by node under calico-migrate's
/// pace: `render` (run unless calico-node already renders `version`) has the operator
/// render it; the rollout is then halted at once ([`halt_rollout`]: the operator frozen,
/// calico-node OnDelete), and each node's pod replaced and checked in turn, the
/// connections held across every swap ([`replace_node_by_node`]). Only the node(s) the
/// DaemonSet controller replaced between the render and the halt move unpaced: with
/// maxUnavailable 1 the next one waits for the first new agent to be Ready, so at most
/// one in practice, and it is checked first. At the first failure nothing else moves.
async fn move_paced<F, Fut>(
    world: &World,
    prober: &crate::checks::Prober,
    version: &str,
    render: F,
) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let held = hold(world).await?;
    let result = async {
        if running_calico(world).await?.as_deref() != Some(version) {
            render().await?;
        }
        halt_rollout(world).await?;
        replace_node_by_node(world, ID, &calico_system_node(), prober, held.as_ref()).await?;
        if let Some(pool) = &held {
            check_held(world, ID, Way::Forward, pool, None).await?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Some(pool) = held {
        pool.close().await;
    }
    result.map_err(|e| {
        e.context(
            "calico-migrate keeps the operator frozen and calico-system calico-node on \
             OnDelete, so no other node is replaced: inspect the node, then `calico-migrate \
             apply --resume` or `calico-migrate rollback`",
        )
    })
}

/// Stop the rolling update where it is: the operator frozen first (it would render its
/// RollingUpdate back), then calico-node set to OnDelete, which replaces nothing by
/// itself. Starting the operator again puts its RollingUpdate back (it renders the
/// DaemonSet whole); with every pod up to date that restarts nothing. The operator's own strategy cannot say so: its validation refuses
/// `nodeUpdateStrategy: OnDelete` (tigera/operator v1.38.6
/// pkg/controller/installation/validation.go:299-303).
async fn halt_rollout(world: &World) -> anyhow::Result<()> {
    // OnDelete first, so the DaemonSet controller stops at once, then the operator
    // frozen; a reconcile it ran before its pod went renders RollingUpdate back, so the
    // strategy is set once more after.
    set_on_delete(world).await?;
    freeze_operator(world).await?;
    set_on_delete(world).await?;
    tracing::info!(
        "pacing the rollout: the operator frozen, calico-system calico-node on OnDelete; \
         calico-migrate replaces it node by node"
    );
    Ok(())
}

/// calico-system calico-node's update strategy set to OnDelete, unless it is.
async fn set_on_delete(world: &World) -> anyhow::Result<()> {
    let Some(ds) = world.objects.get(&calico_system_node()).await? else {
        return Ok(());
    };
    if str_at(&ds, "/spec/updateStrategy/type") == Some("OnDelete") {
        return Ok(());
    }
    world
        .objects
        .merge(
            &calico_system_node(),
            &serde_json::json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}),
        )
        .await?;
    Ok(())
}

/// Whether the operator the rollback would put back can render on this cluster.
async fn refuse_unrenderable(world: &World, saved: &Saved) -> anyhow::Result<()> {
    let Some(tag) = saved
        .existed
        .iter()
        .find(|o| ObjRef::of(o).is_some_and(|r| r == operator_ref()))
        .and_then(operator_tag)
    else {
        return Ok(());
    };
    let version = world.server_version().await?;
    if operator_renders_v1beta1(tag) && parse_minor(&version).is_some_and(|m| m >= (1, 25)) {
        bail!(
            "upgrade-operator cannot be rolled back on Kubernetes {version}: the operator it \
             would put back ({tag}) renders policy/v1beta1 objects this cluster does not serve, \
             so it could not manage calico-system at all; roll forward instead (`calico-migrate \
             apply --resume`)"
        );
    }
    Ok(())
}

/// The step.
pub struct UpgradeOperator;

impl Step<World> for UpgradeOperator {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Upgrade the Tigera Operator and follow calico-system node by node"
    }

    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            let (existed, created) = live_state(world, Order::Upgrade).await?;
            Ok(serde_json::to_value(Saved {
                existed,
                created,
                calico_version: running_calico(world).await?,
            })?)
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            if world.objects.get(&installation_ref()).await?.is_none() {
                bail!(
                    "Installation default does not exist: the operator would have nothing to \
                     upgrade; check `kubectl get installation default` and plan again"
                );
            }
            refuse_unserved(world).await?;
            // Probes in place before any pod template changes (see rollout::follow_rollout).
            let prober = world.prober().await?;
            let target = &world.profile.target;
            let manifest = manifest_in_order(world, Order::Upgrade)?;
            move_paced(world, &prober, &target.calico_version, || async {
                apply_in_order(world, &manifest).await?;
                wait_operator_rolled_out(world, &target.operator_version).await?;
                wait_rendered(world, &target.calico_version).await
            })
            .await?;
            // Every node moved: the operator runs again (the manifest's replica count)
            // and renders its RollingUpdate back.
            apply_in_order(world, &manifest).await?;
            wait_operator_rolled_out(world, &target.operator_version).await?;
            wait_available(world, &target.operator_version, &target.calico_version).await
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let target = &world.profile.target;
            let op = world.objects.get(&operator_ref()).await?;
            match op.as_ref() {
                Some(d) if operator_tag(d) == Some(&target.operator_version) && rolled_out(d) => {}
                Some(d) => {
                    return Ok(Verification::failed(format!(
                        "tigera-operator runs {}, not {} (or is not rolled out)",
                        operator_tag(d).unwrap_or("?"),
                        target.operator_version
                    )));
                }
                None => {
                    return Ok(Verification::failed(
                        "no Deployment tigera-operator/tigera-operator",
                    ));
                }
            }
            let running = running_calico(world).await?;
            if running.as_deref() != Some(&target.calico_version) {
                return Ok(Verification::failed(format!(
                    "calico-system calico-node runs {}, not {}",
                    running.as_deref().unwrap_or("nothing"),
                    target.calico_version
                )));
            }
            if let Some(left) =
                crate::migration::rollout::rollout_unfinished(world, &calico_system_node()).await?
            {
                return Ok(Verification::failed(left));
            }
            let ts = world.objects.get(&tigera_status_ref()).await?;
            match ts.as_ref().and_then(|t| condition(t, "Available")) {
                Some((true, _, _)) => Ok(Verification::passed(format!(
                    "tigera-operator {} and calico-system calico-node {} on every node; TigeraStatus calico Available",
                    target.operator_version, target.calico_version
                ))),
                _ => Ok(Verification::failed(format!(
                    "TigeraStatus calico is not Available: {}",
                    progressing_message(world).await
                ))),
            }
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let saved: Saved = serde_json::from_value(saved.clone())
                .context("upgrade-operator's rollback data is not what this version wrote")?;
            refuse_unrenderable(world, &saved).await?;
            let prober = world.prober().await?;
            // The objects the manifest created: a CRD only while it holds nothing.
            let gone = delete_created(world, ID, &saved.created, |_| true, "the operator manifest")
                .await?;
            wait_gone(
                world,
                "the objects the operator manifest created to be gone",
                &gone,
            )
            .await?;
            world.objects.forget_kinds();
            // CRDs and RBAC first, the operator last, as on the way up.
            let mut existed = saved.existed.clone();
            existed.sort_by_key(|o| ObjRef::of(o).is_some_and(|r| r == operator_ref()));
            let (operator, others): (Vec<Value>, Vec<Value>) = existed
                .into_iter()
                .partition(|o| ObjRef::of(o).is_some_and(|r| r == operator_ref()));
            for obj in &others {
                if world.objects.restore(obj).await? {
                    tracing::info!(
                        "restored {}",
                        ObjRef::of(obj).map(|r| r.to_string()).unwrap_or_default()
                    );
                }
            }
            let tag = operator.first().and_then(operator_tag).map(String::from);
            let Some(back) = saved.calico_version.as_deref() else {
                for obj in &operator {
                    world.objects.restore(obj).await?;
                }
                return Ok(());
            };
            move_paced(world, &prober, back, || async {
                for obj in &operator {
                    if world.objects.restore(obj).await? {
                        tracing::info!("restored the operator {}", tag.as_deref().unwrap_or("?"));
                    }
                }
                if let Some(tag) = &tag {
                    wait_operator_rolled_out(world, tag).await?;
                }
                wait_rendered(world, back).await
            })
            .await?;
            // Every node moved back: the operator as it was, running.
            for obj in &operator {
                world.objects.restore(obj).await?;
            }
            if let Some(tag) = &tag {
                wait_operator_rolled_out(world, tag).await?;
            }
            wait_available(world, tag.as_deref().unwrap_or_default(), back).await
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let objects = manifest_in_order(world, Order::Upgrade)?;
            let mut out = preview_in_order(world, &objects).await?;
            out.push(format!(
                "then the operator renders calico-system calico-node {}, and calico-migrate replaces it one node at a time (the operator frozen, the DaemonSet on OnDelete), each node probed",
                world.profile.target.calico_version
            ));
            Ok(out)
        })
    }
}
