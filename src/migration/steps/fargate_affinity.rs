//! `fargate-affinity`: the converter refuses the chart's Fargate node affinity, so it
//! is removed just before the takeover, and with it the catch-all NoSchedule toleration
//! that would let calico-node onto Fargate nodes once the operator labels them
//! (src/migration/tolerations.rs): Fargate's own taint keeps it off them instead. The
//! set of nodes running calico-node does not change.

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::kinds;
use crate::migration::capture::{forget_capture, keep_capture, stored_capture};
use crate::migration::converter::{
    ConverterLine, Existing, Refusal, is_fargate_exclusion, predict,
};
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::nodes::{nodes_without_ready_agent, set_node_label, worker_nodes};
use crate::migration::refs::{MIGRATION_LABEL, PRE_OPERATOR, kube_system_node};
use crate::migration::rollout::{
    finish_paced, paused, roll_paced, rollout_unfinished, strategy_left, update_strategy,
};
use crate::migration::tolerations;
use crate::migration::world::World;

pub const ID: &str = "fargate-affinity";

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let ds = ctx.inv.find("daemonsets", "kube-system", "calico-node")?;
    let line = ConverterLine::of(&ctx.profile.target.operator_version);
    if !predict(&Existing::daemonset(ds), line).contains(&Refusal::FargateAffinity) {
        return None;
    }
    Some(StepPlan {
        id: ID,
        title: "Remove the Fargate node affinity from kube-system calico-node".into(),
        changes: vec![
            change(
                "Node (every non-Fargate node)",
                "label",
                &[
                    "projectcalico.org/operator-node-migration=pre-operator (the label the operator sets first)",
                ],
            ),
            change(
                "DaemonSet kube-system/calico-node",
                "patch",
                &[
                    "remove spec.template.spec.affinity.nodeAffinity (eks.amazonaws.com/compute-type NotIn [fargate])",
                    "spec.template.spec.nodeSelector: projectcalico.org/operator-node-migration=pre-operator",
                    "spec.template.spec.tolerations: the catch-all NoSchedule toleration replaced by one per NoSchedule taint of the EC2 nodes, so the Fargate taint keeps calico-node off the Fargate nodes the operator labels too",
                ],
            ),
        ],
        checks: Checks {
            before: vec![format!(
                "Fargate nodes: {} (DaemonSet pods never run there)",
                if ctx.summary.fargate_nodes.is_empty() {
                    "none".to_string()
                } else {
                    ctx.summary.fargate_nodes.join(", ")
                }
            )],
            after: lines(&[
                "calico-node replaced one node at a time by calico-migrate (OnDelete meanwhile, the update strategy put back after): the same nodes run a Ready calico-node as before",
                "probe matrix equals the baseline",
            ]),
        },
        rollback: lines(&[
            "restore the affinity, nodeSelector and tolerations, calico-node replaced node by node, then the node labels",
        ]),
        gate: None,
    })
}

// ---------------------------------------------------------------------------
// apply / rollback
//
// The converter refuses any affinity on kube-system calico-node and accepts only
// OS keys and the migration label in its nodeSelector (tigera/operator
// convert/core.go; src/sandbox/controllers/operator/convert.rs). So the Fargate
// exclusion becomes: every non-Fargate node labelled
// `projectcalico.org/operator-node-migration=pre-operator` (the label the
// operator's takeover sets on every node first, namespace_migration.go
// `labelUnmigratedNodes`) and that label in the DaemonSet's nodeSelector
// (what the operator's `ensureKubeSysNodeDaemonSetHasNodeSelectorAndIsReady`
// sets next, so its own patch finds nothing to do). Nodes are labelled before
// the DaemonSet changes: a node the new selector does not match would lose its
// calico-node at once.

/// Runs the `fargate-affinity` step.
pub struct FargateAffinity;

fn node_label(n: &Node) -> Option<&str> {
    n.metadata
        .labels
        .as_ref()?
        .get(MIGRATION_LABEL)
        .map(String::as_str)
}

fn node_name(n: &Node) -> &str {
    n.metadata.name.as_deref().unwrap_or("")
}

/// Every node, being deleted or not.
async fn all_nodes(world: &World) -> anyhow::Result<Vec<Node>> {
    Ok(world
        .objects
        .list("v1", "Node", None, None)
        .await?
        .iter()
        .filter_map(kinds::view::<Node>)
        .collect())
}

fn selector_label(ds: &Value) -> Option<&str> {
    ds.pointer(&format!(
        "/spec/template/spec/nodeSelector/{}",
        MIGRATION_LABEL.replace('/', "~1")
    ))
    .and_then(Value::as_str)
}

async fn calico_node(world: &World) -> anyhow::Result<Value> {
    world.objects.get(&kube_system_node()).await?.context(
        "DaemonSet kube-system/calico-node does not exist; this step needs the kube-system install",
    )
}

/// What the DaemonSet change would be, if any; Err when the affinity is not the
/// chart's Fargate exclusion (the converter refuses it and removing it would
/// change where calico-node runs). `no_schedule_keys`: the NoSchedule taint keys of
/// the nodes calico-node runs on, each kept tolerated.
fn daemonset_patch(
    ds: &Value,
    no_schedule_keys: &BTreeSet<String>,
) -> anyhow::Result<Option<Value>> {
    let affinity = ds.pointer("/spec/template/spec/affinity");
    let has_affinity = affinity.is_some_and(|a| !a.is_null());
    if has_affinity {
        let only_fargate = affinity.is_some_and(is_fargate_exclusion);
        if !only_fargate {
            bail!(
                "kube-system calico-node has an affinity other than the chart's Fargate exclusion \
                 ({}); the operator refuses any affinity, so remove it yourself after checking \
                 where calico-node must run, then run apply --resume",
                affinity.map(Value::to_string).unwrap_or_default()
            );
        }
    }
    let selected = selector_label(ds).is_some();
    let narrowed = tolerations::without_fargate(template_tolerations(ds), no_schedule_keys);
    if !has_affinity && selected && narrowed.is_none() {
        return Ok(None);
    }
    let mut spec = json!({});
    if has_affinity {
        spec["affinity"] = Value::Null;
    }
    if !selected {
        spec["nodeSelector"] = json!({ MIGRATION_LABEL: PRE_OPERATOR });
    }
    if let Some(t) = narrowed {
        spec["tolerations"] = json!(t);
    }
    Ok(Some(json!({"spec": {"template": {"spec": spec}}})))
}

fn template_tolerations(ds: &Value) -> &[Value] {
    ds.pointer("/spec/template/spec/tolerations")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The NoSchedule taint keys of the nodes calico-node runs on (every non-Fargate node).
async fn ec2_taint_keys(world: &World) -> anyhow::Result<BTreeSet<String>> {
    let nodes: Vec<Value> = worker_nodes(&world.objects)
        .await?
        .iter()
        .filter_map(|n| serde_json::to_value(n).ok())
        .collect();
    Ok(tolerations::no_schedule_keys(nodes.iter()))
}

/// kube-system calico-node's update strategy before the step (from its capture): what
/// its paced rollout puts back.
fn strategy_before(world: &World) -> anyhow::Result<Value> {
    let captured = stored_capture(world, ID)?;
    let ds = captured.as_ref().and_then(|c| c.get("daemonset"));
    Ok(update_strategy(ds.unwrap_or(&json!({}))))
}

/// Label every non-Fargate node that has no migration label yet.
async fn label_nodes(world: &World) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for n in worker_nodes(&world.objects).await? {
        if node_label(&n).is_none() {
            let name = node_name(&n).to_string();
            tracing::info!("labelling node {name} {MIGRATION_LABEL}={PRE_OPERATOR}");
            set_node_label(&world.objects, &name, Some(PRE_OPERATOR)).await?;
            done.push(name);
        }
    }
    Ok(done)
}

impl Step<World> for FargateAffinity {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Remove the Fargate node affinity from kube-system calico-node"
    }

    /// The DaemonSet and the migration label of every node.
    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            if let Some(earlier) = stored_capture(world, ID)? {
                return Ok(earlier);
            }
            let ds = calico_node(world).await?;
            let mut labels = serde_json::Map::new();
            for n in all_nodes(world).await? {
                labels.insert(
                    node_name(&n).to_string(),
                    node_label(&n).map_or(Value::Null, |v| json!(v)),
                );
            }
            keep_capture(
                world,
                ID,
                json!({"daemonset": strip_server_fields(&ds), "node_labels": labels}),
            )
        })
    }

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let ds = calico_node(world).await?;
            let patch = daemonset_patch(&ds, &ec2_taint_keys(world).await?)?;
            let prober = world.prober().await?;
            label_nodes(world).await?;
            if let Some(p) = patch {
                tracing::info!(
                    "replacing the Fargate affinity of kube-system calico-node by the nodeSelector \
                     {MIGRATION_LABEL}={PRE_OPERATOR} and tolerations that leave Fargate's taint \
                     untolerated; calico-node is replaced node by node"
                );
                world
                    .objects
                    .merge(&kube_system_node(), &paused(&p))
                    .await?;
            }
            // A node that joined between the labels and the patch would lose its agent.
            label_nodes(world).await?;
            let restore = strategy_before(world)?;
            roll_paced(world, ID, &kube_system_node(), None, &restore, &prober).await?;
            world.check_round(ID, "after fargate-affinity").await?;
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let ds = calico_node(world).await?;
            if ds
                .pointer("/spec/template/spec/affinity")
                .is_some_and(|a| !a.is_null())
            {
                return Ok(Verification::failed(
                    "kube-system calico-node still has an affinity",
                ));
            }
            if selector_label(&ds).is_none() {
                return Ok(Verification::failed(format!(
                    "kube-system calico-node does not select {MIGRATION_LABEL}"
                )));
            }
            let fargate = tolerations::fargate_taint();
            if let Some(t) = template_tolerations(&ds)
                .iter()
                .find(|t| tolerations::tolerates(t, &fargate))
            {
                return Ok(Verification::failed(format!(
                    "kube-system calico-node still tolerates the Fargate taint ({t}): the \
                     operator labels Fargate nodes too, and its pods there would never start"
                )));
            }
            let unlabelled: Vec<String> = worker_nodes(&world.objects)
                .await?
                .iter()
                .filter(|n| node_label(n).is_none())
                .map(|n| node_name(n).to_string())
                .collect();
            if !unlabelled.is_empty() {
                return Ok(Verification::failed(format!(
                    "node(s) without {MIGRATION_LABEL} would run no calico-node: {}",
                    unlabelled.join(", ")
                )));
            }
            if let Some(left) = rollout_unfinished(world, &kube_system_node()).await? {
                return Ok(Verification::failed(left));
            }
            if let Some(left) = strategy_left(&ds, &strategy_before(world)?) {
                return Ok(Verification::failed(left));
            }
            let missing = nodes_without_ready_agent(&world.objects).await?;
            if !missing.is_empty() {
                return Ok(Verification::failed(format!(
                    "no Ready calico-node on node(s) {}",
                    missing.join(", ")
                )));
            }
            Ok(Verification::passed(format!(
                "no affinity; nodeSelector {MIGRATION_LABEL}={PRE_OPERATOR}; every non-Fargate node \
                 labelled and running an up-to-date Ready calico-node"
            )))
        })
    }

    fn rollback<'a>(&'a self, world: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let Some(before) = saved.get("daemonset") else {
                bail!("the rollback data of {ID} has no DaemonSet");
            };
            // DaemonSet first, labels last: the old selector must not lose a node.
            if let Some(ds) = world.objects.get(&kube_system_node()).await? {
                let tpl = |o: &Value, k: &str| {
                    o.pointer(&format!("/spec/template/spec/{k}"))
                        .cloned()
                        .unwrap_or(Value::Null)
                };
                let want_sel = selector_label(before).map_or(Value::Null, |v| json!(v));
                let have_sel = selector_label(&ds).map_or(Value::Null, |v| json!(v));
                if tpl(&ds, "affinity") != tpl(before, "affinity")
                    || tpl(&ds, "tolerations") != tpl(before, "tolerations")
                    || want_sel != have_sel
                {
                    let prober = world.prober().await?;
                    tracing::info!(
                        "restoring the Fargate affinity and tolerations of kube-system calico-node; calico-node is replaced node by node"
                    );
                    let patch = json!({"spec": {"template": {"spec": {
                        "affinity": tpl(before, "affinity"),
                        "tolerations": tpl(before, "tolerations"),
                        "nodeSelector": {MIGRATION_LABEL: want_sel},
                    }}}});
                    roll_paced(
                        world,
                        ID,
                        &kube_system_node(),
                        Some(&patch),
                        &update_strategy(before),
                        &prober,
                    )
                    .await?;
                } else {
                    // A rollback stopped during its paced rollout: the template is back,
                    // the nodes not replaced yet still run the other one.
                    finish_paced(world, ID, &kube_system_node(), &update_strategy(before)).await?;
                }
            }
            let labels = saved
                .get("node_labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for n in all_nodes(world).await? {
                let want = labels.get(node_name(&n)).cloned().unwrap_or(Value::Null);
                let have = node_label(&n).map_or(Value::Null, |v| json!(v));
                if want != have {
                    world
                        .objects
                        .merge(
                            &ObjRef::new("v1", "Node", None, node_name(&n)),
                            &json!({"metadata": {"labels": {MIGRATION_LABEL: want}}}),
                        )
                        .await?;
                }
            }
            forget_capture(world, ID)
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let ds = calico_node(world).await?;
            let mut out: Vec<String> = worker_nodes(&world.objects)
                .await?
                .iter()
                .filter(|n| node_label(n).is_none())
                .map(|n| {
                    format!(
                        "label Node {}: {MIGRATION_LABEL}={PRE_OPERATOR}",
                        node_name(n)
                    )
                })
                .collect();
            if let Some(p) = daemonset_patch(&ds, &ec2_taint_keys(world).await?)? {
                out.push(format!(
                    "patch DaemonSet kube-system/calico-node: {p} (calico-node replaced node by node, each node probed)"
                ));
            }
            if out.is_empty() {
                out.push("nothing to change: no affinity, nodes labelled".into());
            }
            Ok(out)
        })
    }
}
