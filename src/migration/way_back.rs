//! The way back from any point of the takeover, which no source documents
//! (docs/upstream.md, "Rolling back": the operator's own mechanism runs backwards):
//! with the operator frozen, a node relabelled `pre-operator` leaves the
//! calico-system DaemonSet (nodeSelector `migrated`) and returns to the kube-system
//! one (nodeSelector `pre-operator` while nodes move), in reverse name order, one at a time,
//! checked like the way forward; then the kube-system objects and node labels are
//! restored as create-installation captured them. Used by the rollback of the
//! takeover and of create-installation.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail};
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::facts::int_at;
use super::nodes::{NodeState, list_nodes, selects, set_node_label};
use super::operator::freeze_operator;
use super::pre_operator::{PRE_OPERATOR_FILE, PreOperator};
use super::refs::{
    KUBE_SYSTEM, MIGRATED, MIGRATION_LABEL, PRE_OPERATOR, calico_node_binding, calico_node_role,
    calico_system_node, calico_system_workloads, kube_system_node, kube_system_typha,
};
use super::rollout::wait_rollout;
use super::swap::{Way, check_held, hold_across_swaps, watch_swap};
use super::wait::{wait_gone, wait_until};
use super::world::World;
use crate::checks::InFlight;
use crate::checks::conn::ConnPool;
use crate::cluster::objects::{ObjRef, same_object};
use crate::progress;

/// While nodes move back: every node not `migrated` labelled `pre-operator`, the
/// kube-system DaemonSet present and selecting them, kube-system typha running.
pub async fn prepare_way_back(
    world: &World,
    pre: &PreOperator,
    nodes: &[NodeState],
) -> anyhow::Result<()> {
    for n in nodes
        .iter()
        .filter(|n| n.label.as_deref() != Some(MIGRATED))
    {
        if n.label.as_deref() != Some(PRE_OPERATOR) {
            set_node_label(&world.objects, &n.name, Some(PRE_OPERATOR)).await?;
        }
    }
    let r = kube_system_node();
    let live = world.objects.get(&r).await?;
    if live
        .as_ref()
        .is_some_and(|d| d.pointer("/metadata/deletionTimestamp").is_some())
    {
        wait_until(
            world,
            "the old kube-system calico-node to be gone",
            world.options.node_ready_timeout,
            || async {
                Ok(world
                    .objects
                    .get(&kube_system_node())
                    .await?
                    .map(|_| "still being deleted".to_string()))
            },
        )
        .await?;
    }
    match world.objects.get(&r).await? {
        None => {
            let Some(saved) = pre.saved(&r) else {
                bail!(
                    "{r} is gone and the rollback data holds no copy of it; restore it from the baseline snapshot"
                );
            };
            let mut ds = saved.clone();
            ds["spec"]["template"]["spec"]["nodeSelector"][MIGRATION_LABEL] = json!(PRE_OPERATOR);
            tracing::info!("re-creating {r} for the nodes labelled {PRE_OPERATOR}");
            world.objects.create(&ds).await?;
        }
        Some(ds) if !selects(&ds, PRE_OPERATOR) => {
            tracing::info!("pointing {r} at the nodes labelled {PRE_OPERATOR}");
            world
                .objects
                .merge(
                    &r,
                    &json!({"spec": {"template": {"spec": {"nodeSelector": {MIGRATION_LABEL: PRE_OPERATOR}}}}}),
                )
                .await?;
        }
        Some(_) => {}
    }
    let t = kube_system_typha();
    match world.objects.get(&t).await? {
        None => {
            if let Some(saved) = pre.saved(&t) {
                tracing::info!("re-creating {t}");
                world.objects.restore(saved).await?;
            }
        }
        Some(d) if int_at(&d, "/spec/replicas") == Some(0) => {
            world.objects.scale(&t, 1).await?;
        }
        Some(_) => {}
    }
    wait_rollout(world, &r).await
}

/// Once the operator has finished, no node carries the migration label and the
/// calico-system DaemonSet selects every node: deleting it would leave every node
/// without an agent at once. Put the operator's mechanism back first (with the
/// operator frozen): every node labelled `migrated`, then the DaemonSet on that
/// selector with OnDelete, so no running pod restarts. Nodes can then move back
/// one at a time.
pub async fn restore_migration_selector(world: &World) -> anyhow::Result<()> {
    let r = calico_system_node();
    let Some(ds) = world.objects.get(&r).await? else {
        return Ok(());
    };
    if selects(&ds, MIGRATED) {
        return Ok(());
    }
    for n in list_nodes(&world.objects).await? {
        if !n.fargate && n.label.as_deref() != Some(MIGRATED) {
            set_node_label(&world.objects, &n.name, Some(MIGRATED)).await?;
        }
    }
    tracing::info!("pointing {r} at the nodes labelled {MIGRATED} (OnDelete: no pod restarts)");
    world
        .objects
        .merge(
            &r,
            &json!({"spec": {
                "updateStrategy": {"type": "OnDelete", "rollingUpdate": null},
                "template": {"spec": {"nodeSelector": {MIGRATION_LABEL: MIGRATED}}}
            }}),
        )
        .await?;
    Ok(())
}

/// Move every `migrated` node back to the kube-system agent, in reverse name order (the
/// operator took them in no order it records), checking each like the way forward: probed through
/// its swap, the `held` connections touching it still answering after it.
pub async fn move_nodes_back(
    world: &World,
    step: &str,
    pre: &PreOperator,
    held: Option<&ConnPool>,
) -> anyhow::Result<()> {
    let mut moved = 0usize;
    loop {
        let nodes = list_nodes(&world.objects).await?;
        let Some(node) = nodes
            .iter()
            .rev()
            .find(|n| n.label.as_deref() == Some(MIGRATED))
            .map(|n| n.name.clone())
        else {
            return Ok(());
        };
        prepare_way_back(world, pre, &nodes).await?;
        tracing::info!("moving node {node} back to the kube-system calico-node");
        set_node_label(&world.objects, &node, Some(PRE_OPERATOR)).await?;
        if let Some(problem) =
            watch_swap(world, step, &node, KUBE_SYSTEM, &InFlight::default(), None).await?
        {
            bail!("moving node {node} back: {problem}");
        }
        if let Some(pool) = held {
            check_held(world, step, Way::Back, pool, Some(&node))
                .await
                .map_err(|e| anyhow!("moving node {node} back: {e:#}"))?;
        }
        moved += 1;
        if moved.is_multiple_of(world.options.full_round_every) {
            let seed = (moved / world.options.full_round_every) as u64;
            world
                .check_sampled_round(
                    step,
                    &format!("after moving node {node} back"),
                    seed,
                    &BTreeSet::new(),
                )
                .await
                .map_err(|e| anyhow!("after moving node {node} back: {e:#}"))?;
        }
        progress::inc();
        if !world.options.pause.is_zero() {
            tokio::time::sleep(world.options.pause).await;
        }
    }
}

pub fn owned_by_installation(o: &Value) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r["kind"] == "Installation"))
}

/// Once no node is `migrated`: remove the operator's calico-system workloads and
/// restore the kube-system objects, node labels and the binding as captured. The
/// `held` connections must survive the kube-system rollout that restoring its
/// DaemonSet starts.
pub async fn restore_kube_system(
    world: &World,
    step: &str,
    pre: &PreOperator,
    held: Option<&ConnPool>,
) -> anyhow::Result<()> {
    let mut deleted = Vec::new();
    for r in calico_system_workloads() {
        if let Some(o) = world.objects.get(&r).await? {
            if owned_by_installation(&o) || !pre.calico_system_existed {
                if world.objects.delete(&r).await? {
                    tracing::info!("deleted {r} (the operator's)");
                }
                deleted.push(r);
            } else {
                tracing::warn!("keeping {r}: it is not owned by an Installation");
            }
        }
    }
    wait_gone(
        world,
        "the operator's calico-system workloads to be gone",
        &deleted,
    )
    .await?;
    // calico-node's RBAC first (what the restored agents read with), then the DaemonSet
    // and its rollout finished, then the rest: objects that create pods (the typha
    // autoscaler) must not start one on a node whose agent is being replaced.
    let is_rbac = |r: &ObjRef| *r == calico_node_role() || *r == calico_node_binding();
    let (rbac, others): (Vec<_>, Vec<_>) = pre.objects.iter().partition(|s| is_rbac(&s.object));
    let (agents, rest): (Vec<_>, Vec<_>) = others
        .into_iter()
        .partition(|s| s.object == kube_system_node());
    for s in rbac.iter().chain(&agents) {
        let Some(obj) = &s.live else { continue };
        if world.objects.restore(obj).await? {
            tracing::info!("restored {}", s.object);
        }
    }
    if world.objects.get(&kube_system_node()).await?.is_some() {
        wait_rollout(world, &kube_system_node()).await?;
    }
    for s in &rest {
        let Some(obj) = &s.live else { continue };
        if world.objects.restore(obj).await? {
            tracing::info!("restored {}", s.object);
        }
    }
    if let Some(pool) = held {
        check_held(world, step, Way::Back, pool, None).await?;
    }
    for n in list_nodes(&world.objects).await? {
        let want = pre.node_labels.get(&n.name).cloned().flatten();
        if n.label != want {
            set_node_label(&world.objects, &n.name, want.as_deref()).await?;
        }
    }
    world
        .check_round(step, "after returning every node to kube-system")
        .await?;
    Ok(())
}

/// After the Installation is gone: ClusterRole and ClusterRoleBinding `calico-node` as
/// they were before the operator ran. The operator replaced both with its own, owned by
/// the Installation: the garbage collector deletes them with it, and operator v1.38
/// deletes both by name when the Installation terminates (tigera/operator v1.38.6
/// pkg/render/node.go:235-245). Without them the kube-system calico-node cannot list
/// what it enforces. Restored (re-created if deleted), then checked.
pub async fn restore_agent_rbac(world: &World, pre: &PreOperator) -> anyhow::Result<()> {
    for r in [calico_node_role(), calico_node_binding()] {
        let Some(saved) = pre.saved(&r) else { continue };
        if world.objects.get(&r).await?.is_none() {
            // Re-created by server-side apply, a request that names the role: the API
            // server's escalation check then accepts `escalate` granted on that name
            // (kubernetes pkg/registry/rbac/escalation_check.go), where a create (POST,
            // no name) would need every permission of the role (deploy/20-rbac.yaml).
            world.objects.apply(saved).await?;
            tracing::info!("re-created {r} as it was before the operator");
        } else if world.objects.restore(saved).await? {
            tracing::info!("restored {r} as it was before the operator");
        }
        let live = world.objects.get(&r).await?;
        if !live.as_ref().is_some_and(|l| same_object(l, saved)) {
            bail!(
                "{r} is not as it was before the operator ran, so the kube-system calico-node may \
                 lack the permissions it reads with; compare it with the copy in the state dir \
                 ({PRE_OPERATOR_FILE}) and run `calico-migrate rollback` again"
            );
        }
    }
    Ok(())
}

/// The way back from any point of the takeover (idempotent): operator frozen, nodes
/// moved back one at a time, kube-system restored. Leaves the operator frozen.
pub async fn return_to_kube_system(
    world: &World,
    step: &str,
    pre: &PreOperator,
) -> anyhow::Result<()> {
    freeze_operator(world).await?;
    world.prober().await?;
    restore_migration_selector(world).await?;
    let migrated: Vec<String> = list_nodes(&world.objects)
        .await?
        .into_iter()
        .filter(|n| n.label.as_deref() == Some(MIGRATED))
        .map(|n| n.name)
        .collect();
    // The nodes to move back, then restoring the kube-system DaemonSet rolls every node.
    let nodes = list_nodes(&world.objects).await?.len();
    let held = hold_across_swaps(world, &migrated, migrated.len() + nodes).await?;
    move_nodes_back(world, step, pre, held.as_ref())
        .instrument(progress::bar(
            "rollback: nodes moved back to kube-system",
            migrated.len() as u64,
            "nodes",
        ))
        .await
        .map_err(|e| anyhow!("{e:#}. The operator stays frozen; fix the cause and run `calico-migrate rollback` again"))?;
    restore_kube_system(world, step, pre, held.as_ref()).await?;
    if let Some(pool) = held {
        pool.close().await;
    }
    Ok(())
}
