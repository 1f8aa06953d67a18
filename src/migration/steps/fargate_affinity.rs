//! `fargate-affinity`: the converter refuses the chart's Fargate node affinity, so it
//! is removed just before the takeover. Fargate nodes never run DaemonSet pods, so the
//! set of nodes running calico-node does not change.

use super::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::converter::{Refusal, predict};

pub const ID: &str = "fargate-affinity";

pub fn describe(ctx: &StepContext) -> Option<StepPlan> {
    let ds = ctx.inv.find("daemonsets", "kube-system", "calico-node")?;
    if !predict(ds).contains(&Refusal::FargateAffinity) {
        return None;
    }
    Some(StepPlan {
        id: ID,
        title: "Remove the Fargate node affinity from kube-system calico-node".into(),
        changes: vec![change(
            "DaemonSet kube-system/calico-node",
            "patch",
            &[
                "remove spec.template.spec.affinity.nodeAffinity (eks.amazonaws.com/compute-type NotIn [fargate])",
            ],
        )],
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
                "calico-node rolled out: the same nodes run a Ready calico-node as before",
                "probe matrix equals the baseline",
            ]),
        },
        rollback: lines(&["restore the affinity from the snapshot; wait for the rollout"]),
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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::baseline::{
    KUBE_SYSTEM, MIGRATION_LABEL, forget_capture, keep_capture, pod_ready, stored_capture,
    worker_nodes,
};
use crate::checks::watch_node;
use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::facts::{name_of, str_at};
use crate::migration::world::{Cluster, Observation};

/// The value nodes get (the operator's `nodeSelectorValuePre`).
pub const PRE_OPERATOR: &str = "pre-operator";

/// Runs the `fargate-affinity` step.
pub struct FargateAffinity;

pub(crate) fn calico_node_ref() -> ObjRef {
    ObjRef::new("apps/v1", "DaemonSet", Some(KUBE_SYSTEM), "calico-node")
}

fn node_label(n: &Value) -> Option<&str> {
    n.pointer(&format!(
        "/metadata/labels/{}",
        MIGRATION_LABEL.replace('/', "~1")
    ))
    .and_then(Value::as_str)
}

fn selector_label(ds: &Value) -> Option<&str> {
    ds.pointer(&format!(
        "/spec/template/spec/nodeSelector/{}",
        MIGRATION_LABEL.replace('/', "~1")
    ))
    .and_then(Value::as_str)
}

async fn calico_node(world: &Cluster) -> anyhow::Result<Value> {
    world.objects.get(&calico_node_ref()).await?.context(
        "DaemonSet kube-system/calico-node does not exist; this step needs the kube-system install",
    )
}

/// What the DaemonSet change would be, if any; Err when the affinity is not the
/// chart's Fargate exclusion (the converter refuses it and removing it would
/// change where calico-node runs).
fn daemonset_patch(ds: &Value) -> anyhow::Result<Option<Value>> {
    let affinity = ds.pointer("/spec/template/spec/affinity");
    let has_affinity = affinity.is_some_and(|a| !a.is_null());
    if has_affinity {
        let only_fargate = affinity.and_then(Value::as_object).is_some_and(|m| {
            m.len() == 1
                && m.contains_key("nodeAffinity")
                && crate::migration::converter::predict(ds)
                    .contains(&crate::migration::converter::Refusal::FargateAffinity)
        });
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
    if !has_affinity && selected {
        return Ok(None);
    }
    let mut spec = json!({});
    if has_affinity {
        spec["affinity"] = Value::Null;
    }
    if !selected {
        spec["nodeSelector"] = json!({ MIGRATION_LABEL: PRE_OPERATOR });
    }
    Ok(Some(json!({"spec": {"template": {"spec": spec}}})))
}

/// Label every non-Fargate node that has no migration label yet.
async fn label_nodes(world: &Cluster) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for n in worker_nodes(world).await? {
        if node_label(&n).is_none() {
            let name = name_of(&n).to_string();
            tracing::info!("labelling node {name} {MIGRATION_LABEL}={PRE_OPERATOR}");
            world
                .objects
                .merge(
                    &ObjRef::new("v1", "Node", None, &name),
                    &json!({"metadata": {"labels": {MIGRATION_LABEL: PRE_OPERATOR}}}),
                )
                .await?;
            done.push(name);
        }
    }
    Ok(done)
}

impl Step<Cluster> for FargateAffinity {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Remove the Fargate node affinity from kube-system calico-node"
    }

    /// The DaemonSet and the migration label of every node.
    fn capture<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Value> {
        Box::pin(async move {
            if let Some(earlier) = stored_capture(world, ID)? {
                return Ok(earlier);
            }
            let ds = calico_node(world).await?;
            let mut labels = serde_json::Map::new();
            for n in world.objects.list("v1", "Node", None, None).await? {
                labels.insert(
                    name_of(&n).to_string(),
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

    fn ensure<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let ds = calico_node(world).await?;
            let patch = daemonset_patch(&ds)?;
            label_nodes(world).await?;
            if let Some(p) = patch {
                tracing::info!(
                    "replacing the Fargate affinity of kube-system calico-node by the nodeSelector \
                     {MIGRATION_LABEL}={PRE_OPERATOR}; calico-node rolls node by node"
                );
                world.objects.merge(&calico_node_ref(), &p).await?;
            }
            // A node that joined between the labels and the patch would lose its agent.
            label_nodes(world).await?;
            follow_rollout(world, ID).await?;
            world.check_round(ID, "after fargate-affinity").await?;
            Ok(())
        })
    }

    fn verify<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Verification> {
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
            let unlabelled: Vec<String> = worker_nodes(world)
                .await?
                .iter()
                .filter(|n| node_label(n).is_none())
                .map(|n| name_of(n).to_string())
                .collect();
            if !unlabelled.is_empty() {
                return Ok(Verification::failed(format!(
                    "node(s) without {MIGRATION_LABEL} would run no calico-node: {}",
                    unlabelled.join(", ")
                )));
            }
            if let Some(left) = rollout_unfinished(world).await? {
                return Ok(Verification::failed(left));
            }
            let missing = super::baseline::nodes_without_ready_agent(world).await?;
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

    fn rollback<'a>(&'a self, world: &'a Cluster, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let Some(before) = saved.get("daemonset") else {
                bail!("the rollback data of {ID} has no DaemonSet");
            };
            // DaemonSet first, labels last: the old selector must not lose a node.
            if let Some(ds) = world.objects.get(&calico_node_ref()).await? {
                let tpl = |o: &Value, k: &str| {
                    o.pointer(&format!("/spec/template/spec/{k}"))
                        .cloned()
                        .unwrap_or(Value::Null)
                };
                let want_sel = selector_label(before).map_or(Value::Null, |v| json!(v));
                let have_sel = selector_label(&ds).map_or(Value::Null, |v| json!(v));
                if tpl(&ds, "affinity") != tpl(before, "affinity") || want_sel != have_sel {
                    tracing::info!(
                        "restoring the Fargate affinity of kube-system calico-node; calico-node rolls node by node"
                    );
                    let patch = json!({"spec": {"template": {"spec": {
                        "affinity": tpl(before, "affinity"),
                        "nodeSelector": {MIGRATION_LABEL: want_sel},
                    }}}});
                    world.objects.merge(&calico_node_ref(), &patch).await?;
                    follow_rollout(world, ID).await?;
                }
            }
            let labels = saved
                .get("node_labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            for n in world.objects.list("v1", "Node", None, None).await? {
                let want = labels.get(name_of(&n)).cloned().unwrap_or(Value::Null);
                let have = node_label(&n).map_or(Value::Null, |v| json!(v));
                if want != have {
                    world
                        .objects
                        .merge(
                            &ObjRef::new("v1", "Node", None, name_of(&n)),
                            &json!({"metadata": {"labels": {MIGRATION_LABEL: want}}}),
                        )
                        .await?;
                }
            }
            forget_capture(world, ID)
        })
    }

    fn preview<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let ds = calico_node(world).await?;
            let mut out: Vec<String> = worker_nodes(world)
                .await?
                .iter()
                .filter(|n| node_label(n).is_none())
                .map(|n| {
                    format!(
                        "label Node {}: {MIGRATION_LABEL}={PRE_OPERATOR}",
                        name_of(n)
                    )
                })
                .collect();
            if let Some(p) = daemonset_patch(&ds)? {
                out.push(format!(
                    "patch DaemonSet kube-system/calico-node: {p} (calico-node rolls node by node, each node probed)"
                ));
            }
            if out.is_empty() {
                out.push("nothing to change: no affinity, nodes labelled".into());
            }
            Ok(out)
        })
    }
}

/// What is left of the kube-system calico-node rollout (None: finished).
pub async fn rollout_unfinished(world: &Cluster) -> anyhow::Result<Option<String>> {
    let ds = calico_node(world).await?;
    let state = RolloutState::read(world, &ds).await?;
    let pending: Vec<&String> = state.pending().collect();
    let observed = ds
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    if observed.is_some_and(|g| g < state.generation) {
        return Ok(Some(
            "the DaemonSet controller has not seen the latest kube-system calico-node yet".into(),
        ));
    }
    if pending.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "kube-system calico-node is not up to date and Ready on node(s) {}",
        pending
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The DaemonSet's pods on one node.
#[derive(Default)]
struct NodePods {
    /// An up-to-date pod exists (Ready or not).
    current: bool,
    /// An up-to-date pod is Ready: the node is done.
    ready: bool,
    /// An outdated pod exists that is not being deleted.
    old_alive: bool,
}

impl NodePods {
    /// The node's agent is being replaced right now.
    fn swapping(&self) -> bool {
        !self.ready && (self.current || !self.old_alive)
    }
}

/// The DaemonSet's pods by node.
struct RolloutState {
    generation: i64,
    nodes: BTreeMap<String, NodePods>,
}

impl RolloutState {
    async fn read(world: &Cluster, ds: &Value) -> anyhow::Result<Self> {
        let generation = ds
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let selector = ds
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "app.kubernetes.io/name=calico-node".into());
        let uid = str_at(ds, "/metadata/uid").unwrap_or_default();
        let mut nodes: BTreeMap<String, NodePods> = BTreeMap::new();
        for p in world
            .objects
            .list("v1", "Pod", Some(KUBE_SYSTEM), Some(&selector))
            .await?
        {
            let owned = p
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|r| str_at(r, "/uid") == Some(uid)));
            let Some(node) = str_at(&p, "/spec/nodeName").filter(|_| owned) else {
                continue;
            };
            // The DaemonSet controller labels its pods with the template generation.
            let current = str_at(&p, "/metadata/labels/pod-template-generation")
                == Some(generation.to_string().as_str());
            let deleting = p.pointer("/metadata/deletionTimestamp").is_some();
            let e = nodes.entry(node.to_string()).or_default();
            e.current |= current && !deleting;
            e.ready |= current && pod_ready(&p);
            e.old_alive |= !current && !deleting;
        }
        Ok(RolloutState { generation, nodes })
    }

    /// Nodes with a pod that is not (yet) an up-to-date Ready one.
    fn pending(&self) -> impl Iterator<Item = &String> {
        self.nodes.iter().filter(|(_, p)| !p.ready).map(|(n, _)| n)
    }

    fn swapping(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(NodePods::swapping)
    }
}

/// Resolves once `node` runs an up-to-date Ready kube-system calico-node.
async fn updated_on(world: &Cluster, node: &str) {
    loop {
        match calico_node(world).await {
            Ok(ds) => match RolloutState::read(world, &ds).await {
                Ok(s) if s.nodes.get(node).is_some_and(|p| p.ready) => return,
                Ok(_) => {}
                Err(e) => tracing::warn!("reading calico-node pods on {node}: {e:#}; trying again"),
            },
            Err(e) => tracing::warn!("{e:#}; trying again"),
        }
        tokio::time::sleep(world.options.poll).await;
    }
}

/// Follow the kube-system calico-node rolling update node by node: probe each
/// node continuously while its agent is replaced (`checks::watch_node`), record the
/// swap, and stop at the first node whose enforcement is not verified or whose
/// agent does not come back within `node_ready_timeout`, naming it. Nodes the
/// controller replaced while another was watched are probed right after.
pub async fn follow_rollout(world: &Cluster, step: &str) -> anyhow::Result<()> {
    let prober = world.prober().await?;
    let mut watched: BTreeSet<String> = BTreeSet::new();
    let mut to_check: BTreeSet<String> = BTreeSet::new();
    let mut last_progress = Instant::now();
    loop {
        let ds = calico_node(world).await?;
        let state = RolloutState::read(world, &ds).await?;
        let mut pending: Vec<String> = state.pending().cloned().collect();
        // A node seen before with no pod now: its old pod is gone, the new one not created yet.
        let podless: Vec<String> = to_check
            .iter()
            .filter(|n| !state.nodes.contains_key(*n))
            .cloned()
            .collect();
        pending.extend(podless.iter().cloned());
        to_check.extend(pending.iter().cloned());
        // A node swapping now first (its old pod gone or going, its new one not Ready),
        // then nodes the controller finished while another was watched; nodes still
        // waiting for the controller are watched once their swap starts.
        let next = pending
            .iter()
            .find(|n| !watched.contains(*n) && (state.swapping(n) || podless.contains(n)))
            .cloned()
            .or_else(|| {
                to_check
                    .iter()
                    .find(|n| !watched.contains(*n) && !pending.contains(n))
                    .cloned()
            });
        let observed = ds
            .pointer("/status/observedGeneration")
            .and_then(Value::as_i64)
            .unwrap_or(state.generation);
        match next {
            Some(node) => {
                tracing::info!("{step}: probing node {node} while its calico-node is replaced");
                let watch = watch_node(
                    &prober,
                    &node,
                    updated_on(world, &node),
                    world.options.poll,
                    world.options.node_ready_timeout,
                )
                .await
                .with_context(|| format!("probing node {node} during its calico-node swap"))?;
                world.observe(Observation::NodeSwap {
                    step: step.to_string(),
                    watch: watch.clone(),
                });
                if !watch.verified_at_end {
                    let why = watch
                        .last_failures
                        .iter()
                        .take(3)
                        .map(|f| format!("{} -> {}:{} {:?}", f.from, f.to, f.port, f.class))
                        .collect::<Vec<_>>()
                        .join("; ");
                    bail!(
                        "{step}: node {node}: enforcement was not verified after its calico-node was replaced \
                         (within {:?}; {why}); the rollout is stopped here: inspect the node, then \
                         `calico-migrate apply --resume` or `calico-migrate rollback`",
                        world.options.node_ready_timeout
                    );
                }
                let max = world.options.max_swap.as_millis() as u64;
                if watch.longest_unverified_ms > max {
                    bail!(
                        "{step}: node {node} went {} ms without verified enforcement during its swap \
                         (limit {max} ms); inspect it, then `calico-migrate apply --resume` or `calico-migrate rollback`",
                        watch.longest_unverified_ms
                    );
                }
                tracing::info!(
                    "{step}: node {node} verified ({} passes, longest unverified {} ms)",
                    watch.passes,
                    watch.longest_unverified_ms
                );
                watched.insert(node);
                last_progress = Instant::now();
            }
            None if pending.is_empty() && observed >= state.generation => return Ok(()),
            None => {
                if last_progress.elapsed() > world.options.node_ready_timeout {
                    bail!(
                        "{step}: the kube-system calico-node rollout made no progress for {:?} (waiting on: {})",
                        world.options.node_ready_timeout,
                        if pending.is_empty() {
                            "the DaemonSet controller".to_string()
                        } else {
                            pending.join(", ")
                        }
                    );
                }
                tokio::time::sleep(world.options.poll.min(Duration::from_secs(2))).await;
            }
        }
    }
}
