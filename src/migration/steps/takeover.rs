//! `takeover`: follow the operator's node-by-node migration (a node relabelled
//! `migrated` moves to the calico-system DaemonSet), checking after each node and
//! freezing the operator (scaled to 0) at the first failed check.
//!
//! Also the way back, which no source documents (docs/upstream.md, "Rolling back":
//! the operator's own mechanism runs backwards): with the operator frozen, a node
//! relabelled `pre-operator` leaves the calico-system DaemonSet (nodeSelector `migrated`) and
//! returns to the kube-system one (nodeSelector `pre-operator` while nodes move),
//! newest first, one at a time, checked like the way forward; then the kube-system
//! objects and node labels are restored as create-installation captured them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::baseline::pod_ready;
use super::install_operator::{
    deployment_ready, freeze_operator, int_at, operator_ref, run_operator, tigera_status_ref,
    wait_gone, wait_until,
};
use super::{Checks, StepContext, StepPlan, change, lines};
use crate::checks::conn::{self, ConnPool, HoldOptions};
use crate::checks::{self, NodeWatch};
use crate::cluster::objects::{ObjRef, strip_server_fields};
use crate::engine::{Step, StepFuture, Verification};
use crate::migration::facts::FARGATE_LABEL;
use crate::migration::rollout::{follow_rollout, rollout_unfinished};
use crate::migration::rules::MIGRATION_LABEL;
use crate::migration::world::{Cluster, Observation};
use crate::progress;
use tracing::Instrument as _;

pub const ID: &str = "takeover";

pub fn describe(ctx: &StepContext) -> StepPlan {
    let p = &ctx.profile.pacing;
    let nodes = ctx
        .summary
        .nodes
        .saturating_sub(ctx.summary.fargate_nodes.len());
    StepPlan {
        id: ID,
        title: format!(
            "Follow the operator's takeover of {nodes} node(s), {} at a time",
            p.nodes_at_a_time
        ),
        changes: vec![
            change(
                "Node (each, by the operator)",
                "label",
                &["projectcalico.org/operator-node-migration: pre-operator -> migrated"],
            ),
            change(
                "DaemonSet calico-system/calico-node (by the operator)",
                "create",
                &["one pod per migrated node"],
            ),
            change(
                "Deployment kube-system/calico-typha (by the operator)",
                "scale",
                &["down as calico-system typha takes over"],
            ),
        ],
        checks: Checks {
            before: lines(&[
                "TigeraStatus calico Progressing, not Degraded",
                "every node has a Ready agent",
            ]),
            after: vec![
                format!(
                    "each node probed as source and destination through its swap until its calico-system calico-node is Ready (within {} s) and enforcement verifies; never longer than {} s without verified enforcement",
                    p.node_ready_timeout_seconds, ctx.profile.checks.max_swap_seconds
                ),
                format!(
                    "a full probe round over every node after each {} node(s) and after the last; it equals the baseline",
                    ctx.profile.checks.full_round_every_nodes
                ),
                if ctx.profile.checks.hold_connections {
                    "one established connection per node (to the next node's probe server) held open across every swap; each must still carry requests after its nodes' swaps and after the final rollout".to_string()
                } else {
                    "established connections are not held across the swaps (checks.hold_connections: false)".to_string()
                },
                format!(
                    "pause {} s between nodes; at the first failed check the operator is scaled to 0 and the run stops naming the node",
                    p.pause_seconds
                ),
            ],
        },
        rollback: {
            let mut way_back = lines(&[
                "scale the operator to 0 (freezes the takeover)",
                "relabel migrated nodes pre-operator one at a time, newest first; after each, kube-system calico-node Ready there and the probe matrix equals the baseline",
            ]);
            if ctx.profile.checks.hold_connections {
                way_back.push("one established connection per node moved back held open across the moves back and the kube-system rollout; a break stops the rollback".into());
            }
            way_back
        },
        gate: None,
    }
}

pub const KUBE_SYSTEM: &str = "kube-system";
pub const CALICO_SYSTEM: &str = "calico-system";
/// Values of the operator's node label (namespace_migration.go).
pub const PRE_OPERATOR: &str = "pre-operator";
pub const MIGRATED: &str = "migrated";
/// create-installation's capture, kept in the state dir for the takeover's rollback
/// (the takeover starts after the operator has changed these objects).
pub const PRE_OPERATOR_FILE: &str = "pre-operator-state.json";

fn ks(api_version: &str, kind: &str, name: &str) -> ObjRef {
    ObjRef::new(api_version, kind, Some(KUBE_SYSTEM), name)
}
pub fn kube_system_node() -> ObjRef {
    ks("apps/v1", "DaemonSet", "calico-node")
}
pub(crate) fn kube_system_typha() -> ObjRef {
    ks("apps/v1", "Deployment", "calico-typha")
}
fn calico_node_binding() -> ObjRef {
    ObjRef::new(
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        None,
        "calico-node",
    )
}
pub(crate) fn calico_system_node() -> ObjRef {
    ObjRef::new("apps/v1", "DaemonSet", Some(CALICO_SYSTEM), "calico-node")
}
pub(crate) fn calico_system_typha() -> ObjRef {
    ObjRef::new("apps/v1", "Deployment", Some(CALICO_SYSTEM), "calico-typha")
}
/// What the operator creates in calico-system for the takeover (owned by the Installation).
fn calico_system_workloads() -> [ObjRef; 3] {
    [
        calico_system_node(),
        calico_system_typha(),
        ObjRef::new(
            "apps/v1",
            "Deployment",
            Some(CALICO_SYSTEM),
            "calico-kube-controllers",
        ),
    ]
}

/// Objects the operator's migration changes or deletes (docs/upstream.md, "The
/// operator's migration"), in the order they are restored: the DaemonSet last.
pub fn operator_touched() -> Vec<ObjRef> {
    vec![
        ks("v1", "ConfigMap", "kubernetes-services-endpoint"),
        kube_system_typha(),
        ks(
            "apps/v1",
            "Deployment",
            "calico-typha-horizontal-autoscaler",
        ),
        ks("apps/v1", "Deployment", "calico-kube-controllers"),
        calico_node_binding(),
        kube_system_node(),
    ]
}

/// One object as it was before the operator ran (None: it did not exist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedObject {
    pub object: ObjRef,
    pub live: Option<Value>,
}

/// What the cluster looked like before Installation `default` existed: everything
/// the operator's migration changes, so that the way back can restore it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreOperator {
    pub objects: Vec<SavedObject>,
    /// Each node's migration label (None: unlabelled, the normal case).
    pub node_labels: BTreeMap<String, Option<String>>,
    pub calico_system_existed: bool,
    pub tigera_status_existed: bool,
    /// The operator Deployment's replicas (None: no operator).
    pub operator_replicas: Option<i64>,
}

impl PreOperator {
    /// Read it from the cluster (changes nothing).
    pub async fn capture(world: &Cluster) -> anyhow::Result<Self> {
        let mut objects = Vec::new();
        for r in operator_touched() {
            let live = world
                .objects
                .get(&r)
                .await?
                .map(|v| strip_server_fields(&v));
            objects.push(SavedObject { object: r, live });
        }
        let node_labels = list_nodes(world)
            .await?
            .into_iter()
            .map(|n| (n.name, n.label))
            .collect();
        let ns = ObjRef::new("v1", "Namespace", None, CALICO_SYSTEM);
        Ok(PreOperator {
            objects,
            node_labels,
            calico_system_existed: world.objects.get(&ns).await?.is_some(),
            tigera_status_existed: world.objects.get(&tigera_status_ref()).await?.is_some(),
            operator_replicas: world
                .objects
                .get(&operator_ref())
                .await?
                .map(|d| int_at(&d, "/spec/replicas").unwrap_or(1)),
        })
    }

    pub fn saved(&self, r: &ObjRef) -> Option<&Value> {
        self.objects
            .iter()
            .find(|s| &s.object == r)
            .and_then(|s| s.live.as_ref())
    }

    /// Keep it in the state dir.
    pub fn save_file(&self, dir: &Path) -> anyhow::Result<()> {
        crate::migration::world::write_atomically(
            &dir.join(PRE_OPERATOR_FILE),
            &serde_json::to_vec(self)?,
        )
    }

    pub fn load_file(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(PRE_OPERATOR_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).with_context(|| {
                format!(
                    "{} is damaged; it is create-installation's capture",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

/// A node as the takeover sees it.
#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    pub name: String,
    pub label: Option<String>,
    pub fargate: bool,
}

pub(crate) async fn list_nodes(world: &Cluster) -> anyhow::Result<Vec<NodeState>> {
    let mut out: Vec<NodeState> = world
        .objects
        .list("v1", "Node", None, None)
        .await?
        .iter()
        .filter(|n| n.pointer("/metadata/deletionTimestamp").is_none())
        .map(|n| {
            let labels = n.pointer("/metadata/labels");
            let label = |k: &str| {
                labels
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            NodeState {
                name: n
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                label: label(MIGRATION_LABEL),
                fargate: label(FARGATE_LABEL).as_deref() == Some("fargate"),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub(crate) async fn set_node_label(
    world: &Cluster,
    node: &str,
    value: Option<&str>,
) -> anyhow::Result<()> {
    let r = ObjRef::new("v1", "Node", None, node);
    world
        .objects
        .merge(
            &r,
            &json!({"metadata": {"labels": {MIGRATION_LABEL: value}}}),
        )
        .await
        .with_context(|| format!("labelling node {node}"))?;
    Ok(())
}

/// Nodes with a Ready calico-node pod in `namespace` (operator label `k8s-app`, chart
/// label `app.kubernetes.io/name`).
pub(crate) async fn agents_ready(
    world: &Cluster,
    namespace: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let pods = world
        .objects
        .list("v1", "Pod", Some(namespace), None)
        .await?;
    Ok(pods
        .iter()
        .filter(|p| {
            ["k8s-app", "app.kubernetes.io/name"].iter().any(|k| {
                p.pointer("/metadata/labels")
                    .and_then(|l| l.get(*k))
                    .and_then(Value::as_str)
                    == Some("calico-node")
            })
        })
        .filter(|p| pod_ready(p))
        .filter_map(|p| p.pointer("/spec/nodeName").and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

/// A DaemonSet whose current template runs Ready on every node it selects.
pub(crate) fn rolled_out(ds: &Value) -> bool {
    let n = |k: &str| int_at(ds, &format!("/status/{k}")).unwrap_or(-1);
    n("observedGeneration") == int_at(ds, "/metadata/generation").unwrap_or(0)
        && n("desiredNumberScheduled") == n("numberReady")
        && n("desiredNumberScheduled") == n("updatedNumberScheduled")
}

/// Condition `t` of TigeraStatus calico: (status is True, reason, message).
pub(crate) fn condition(ts: &Value, t: &str) -> Option<(bool, String, String)> {
    let c = ts
        .pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == t)?;
    let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Some((s("status") == "True", s("reason"), s("message")))
}

/// The operator's Degraded message, if it reports one.
pub(crate) async fn degraded(world: &Cluster) -> anyhow::Result<Option<String>> {
    Ok(world
        .objects
        .get(&tigera_status_ref())
        .await?
        .and_then(|ts| condition(&ts, "Degraded"))
        .filter(|(on, _, _)| *on)
        .map(|(_, reason, message)| format!("TigeraStatus calico Degraded ({reason}): {message}")))
}

async fn progressing_message(world: &Cluster) -> String {
    match world.objects.get(&tigera_status_ref()).await {
        Ok(Some(ts)) => match condition(&ts, "Progressing") {
            Some((true, _, m)) if !m.is_empty() => format!("the operator says \"{m}\""),
            _ => "the operator reports no progress message".into(),
        },
        _ => "no TigeraStatus calico".into(),
    }
}

/// Probe `node` through its agent swap until the calico-node in `namespace` there is
/// Ready and a pass verifies (bounded by `node_ready_timeout`); records the swap.
/// Returns what went wrong, if anything.
async fn watch_swap(
    world: &Cluster,
    step: &str,
    node: &str,
    namespace: &str,
) -> anyhow::Result<Option<String>> {
    // A node that joined during the takeover has no probe pods yet: its first agent
    // comes up first (no pod is created on a node without one), then its pods.
    if !world.prober().await?.nodes().iter().any(|n| n == node) {
        let ready = checks::agent_ready(world.client(), namespace, node, world.options.poll);
        // Not Ready in time: prober_covering says so (it waits for every agent).
        let _ = tokio::time::timeout(world.options.node_ready_timeout, ready).await;
    }
    let prober = world.prober_covering(node).await?;
    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    let client = world.client().clone();
    let poll = world.options.poll;
    let done = async move {
        checks::agent_ready(&client, namespace, node, poll).await;
        flag.store(true, Ordering::SeqCst);
    };
    tracing::info!("probing node {node} until its calico-node in {namespace} is Ready");
    let watch = checks::watch_node(
        &prober,
        node,
        done,
        world.options.poll,
        world.options.node_ready_timeout,
    )
    .await
    .with_context(|| format!("probing node {node}"))?;
    world.observe(Observation::NodeSwap {
        step: step.to_string(),
        watch: watch.clone(),
    });
    tracing::info!(
        "node {node}: {} pass(es), {} failed, longest without verified enforcement {} ms",
        watch.passes,
        watch.failed_passes,
        watch.longest_unverified_ms
    );
    let problem = swap_problem(world, &watch, ready.load(Ordering::SeqCst), namespace);
    if problem.is_none() {
        // The line a person follows: one per node, short enough for a terminal.
        let failed = match watch.failed_passes {
            0 => String::new(),
            n => format!(", {n} failed"),
        };
        crate::progress::say(format_args!(
            "node {node} verified on {namespace} ({} passes{failed}, {} ms unverified)",
            watch.passes, watch.longest_unverified_ms
        ));
    }
    Ok(problem)
}

fn swap_problem(world: &Cluster, w: &NodeWatch, ready: bool, namespace: &str) -> Option<String> {
    let limit = world.options.max_swap;
    let failures = || w.failure_summary(5);
    if !ready {
        return Some(format!(
            "its calico-node in {namespace} was not Ready within {} s",
            world.options.node_ready_timeout.as_secs()
        ));
    }
    if !w.verified_at_end {
        return Some(format!("enforcement did not verify: {}", failures()));
    }
    if Duration::from_millis(w.longest_unverified_ms) > limit {
        return Some(format!(
            "it went {} ms without verified enforcement (limit {} s){}",
            w.longest_unverified_ms,
            limit.as_secs(),
            if w.last_failures.is_empty() {
                String::new()
            } else {
                format!("; {}", failures())
            }
        ));
    }
    None
}

/// One established connection per node still to move (see [`conn::ring_pairs`]),
/// held until the takeover (or the rollback) ends, through at most `swaps` node swaps;
/// `None` when the profile turns this off.
async fn hold_across_swaps(
    world: &Cluster,
    nodes: &[String],
    swaps: usize,
) -> anyhow::Result<Option<ConnPool>> {
    if !world.options.hold_connections || nodes.is_empty() {
        return Ok(None);
    }
    let plan = world.prober().await?.plan().await?;
    let pairs = conn::ring_pairs(&plan.probes, nodes);
    if pairs.is_empty() {
        tracing::warn!(
            "no allowed TCP pair between probe pods: no established connection is held across the swaps"
        );
        return Ok(None);
    }
    // The execs end with the takeover; `max` bounds the scripts should the tool die
    // (on a real cluster a closed exec stream does not stop its command): the longest
    // the swaps may take, each within its ready timeout and pause.
    let per_node = world.options.node_ready_timeout + world.options.pause;
    let opts = HoldOptions {
        max: per_node * (swaps as u32 + 2),
        interval: world.options.hold_interval,
        ..HoldOptions::default()
    };
    let pool = ConnPool::open(world.client(), pairs, &opts)
        .await
        .context("opening the connections held across the swaps")?;
    tracing::info!(
        "holding {} established connection(s) across the swaps",
        pool.len()
    );
    Ok(Some(pool))
}

/// Which way nodes move: forward to the operator's agent, or back in a rollback.
#[derive(Debug, Clone, Copy)]
enum Way {
    Forward,
    Back,
}

impl Way {
    /// The namespace of the calico-node a moved node runs.
    fn namespace(self) -> &'static str {
        match self {
            Way::Forward => CALICO_SYSTEM,
            Way::Back => KUBE_SYSTEM,
        }
    }

    /// The migration label of a node running that calico-node.
    fn label(self) -> &'static str {
        match self {
            Way::Forward => MIGRATED,
            Way::Back => PRE_OPERATOR,
        }
    }
}

/// After `node`'s swap (or, with `None`, the last rollout), every held connection
/// touching it must still carry requests; a broken one stops the takeover (or the
/// rollback).
async fn check_held(
    world: &Cluster,
    step: &str,
    way: Way,
    pool: &ConnPool,
    node: Option<&str>,
) -> anyhow::Result<()> {
    let report = pool.after_swap(node, Instant::now(), None).await;
    if report.connections.is_empty() {
        return Ok(());
    }
    let mut summary = report.summary();
    let broken = report.broken_nodes();
    world.observe(Observation::HeldConnections {
        step: step.to_string(),
        report,
    });
    let across = node.map_or(format!("the {} rollout", way.namespace()), |n| {
        format!("node {n}'s swap")
    });
    if broken.is_empty() {
        tracing::info!("after {across}: {summary}");
        return Ok(());
    }
    // Another node may have moved in the same run: name every node on the broken paths
    // that runs the new agent, since either end's swap can reset a flow.
    if node.is_some() {
        let moved: Vec<String> = list_nodes(world)
            .await?
            .into_iter()
            .filter(|n| broken.contains(&n.name) && n.label.as_deref() == Some(way.label()))
            .map(|n| n.name)
            .collect();
        summary.push_str(&format!(
            "; node(s) on their path running the {} calico-node: {}",
            way.namespace(),
            moved.join(", ")
        ));
    }
    bail!("after {across}: {summary}");
}

const FROZEN: &str =
    "The operator is frozen (Deployment tigera-operator scaled to 0), so nothing moves further";
const WHAT_NEXT: &str = "fix the cause and run `calico-migrate apply --resume` (it starts the operator again), or run `calico-migrate rollback` to move the migrated nodes back";

/// Follow the operator until every node runs the calico-system agent, checked.
///
/// The operator relabels the next node as soon as the last one is Ready; it does
/// not wait for our checks. So it runs only until `pacing.nodes_at_a_time` nodes
/// have moved, then it is frozen while those nodes are probed through their swap
/// and checked, and started again after `pacing.pause_seconds`: a failed check
/// never finds the operator already on the next node.
async fn follow(world: &Cluster) -> anyhow::Result<()> {
    if world.objects.get(&operator_ref()).await?.is_none() {
        bail!(
            "no Deployment tigera-operator/tigera-operator: install-operator must run first (`calico-migrate apply --resume`)"
        );
    }
    // After a crash the operator may have gone on alone: stop it before the probes
    // are set up, so no agent is replaced meanwhile (the loop below starts it again).
    freeze_operator(world).await?;
    // The probe pods exist before any node moves (created while every node has a
    // Ready agent: a pod created during a swap would fail closed).
    world.prober().await?;
    // After a crash: nodes already on a Ready calico-system agent get one round.
    let mut checked: BTreeSet<String> = BTreeSet::new();
    {
        let nodes = list_nodes(world).await?;
        let agents = agents_ready(world, CALICO_SYSTEM).await?;
        let gone = world.objects.get(&kube_system_node()).await?.is_none();
        let done: Vec<String> = nodes
            .iter()
            .filter(|n| !n.fargate && agents.contains(&n.name))
            .filter(|n| gone || n.label.as_deref() == Some(MIGRATED))
            .map(|n| n.name.clone())
            .collect();
        if !done.is_empty() {
            world
                .check_round(ID, &format!("nodes already migrated ({})", done.join(", ")))
                .await?;
            checked.extend(done);
            progress::set(checked.len() as u64);
        }
    }
    let to_move: Vec<String> = list_nodes(world)
        .await?
        .into_iter()
        .filter(|n| !n.fargate && !checked.contains(&n.name))
        .map(|n| n.name)
        .collect();
    // The nodes to move, then the final rollout over every node.
    let held = hold_across_swaps(world, &to_move, to_move.len() + checked.len()).await?;
    let per_run = world.profile.pacing.nodes_at_a_time.max(1);
    let mut moved_in_run = 0;
    let mut since_round = 0;
    let mut running = false;
    let mut last_progress = Instant::now();
    loop {
        if let Some(d) = degraded(world).await? {
            bail!("the operator reports a problem: {d}");
        }
        let nodes: Vec<NodeState> = list_nodes(world)
            .await?
            .into_iter()
            .filter(|n| !n.fargate)
            .collect();
        let gone = world.objects.get(&kube_system_node()).await?.is_none();
        let agents = if gone {
            agents_ready(world, CALICO_SYSTEM).await?
        } else {
            BTreeSet::new()
        };
        let next = nodes.iter().find(|n| {
            !checked.contains(&n.name)
                && (n.label.as_deref() == Some(MIGRATED) || (gone && agents.contains(&n.name)))
        });
        if let Some(n) = next {
            let node = n.name.clone();
            moved_in_run += 1;
            if running && moved_in_run >= per_run {
                freeze_operator(world).await?;
                running = false;
            }
            if let Some(problem) = watch_swap(world, ID, &node, CALICO_SYSTEM).await? {
                bail!("node {node}: {problem}");
            }
            if let Some(pool) = &held {
                check_held(world, ID, Way::Forward, pool, Some(&node)).await?;
            }
            since_round += 1;
            if since_round >= world.options.full_round_every {
                world
                    .check_round(ID, &format!("after node {node}"))
                    .await
                    .map_err(|e| anyhow!("after node {node}: {e:#}"))?;
                since_round = 0;
            }
            checked.insert(node);
            progress::set(checked.len() as u64);
            last_progress = Instant::now();
            continue;
        }
        if nodes.iter().all(|n| checked.contains(&n.name)) {
            tracing::info!(
                "every node ({}) runs the calico-system calico-node, checked",
                nodes.len()
            );
            if since_round > 0 {
                world.check_round(ID, "after the last node moved").await?;
            }
            // The operator finishes on its own: it removes the kube-system install,
            // then renders calico-system calico-node without the migration
            // nodeSelector (one more rolling restart of every node's agent, followed
            // like any other), then removes the node labels (verify-completion).
            if !running {
                run_operator(world, 1).await?;
            }
            wait_until(
                world,
                "the operator to drop the migration nodeSelector of calico-system calico-node",
                world.options.node_ready_timeout,
                || async {
                    if let Some(d) = degraded(world).await? {
                        bail!("the operator reports a problem: {d}");
                    }
                    Ok(match world.objects.get(&calico_system_node()).await? {
                        Some(ds) if selects(&ds, MIGRATED) => {
                            Some(progressing_message(world).await)
                        }
                        Some(_) => None,
                        None => Some("no calico-system calico-node".into()),
                    })
                },
            )
            .await?;
            let prober = world.prober().await?;
            follow_rollout(world, ID, &calico_system_node(), &prober).await?;
            if let Some(pool) = held {
                check_held(world, ID, Way::Forward, &pool, None).await?;
                pool.close().await;
            }
            return Ok(());
        }
        if !running {
            if moved_in_run > 0 && !world.options.pause.is_zero() {
                tracing::info!(
                    "pausing {:.1} s before the operator moves the next node",
                    world.options.pause.as_secs_f64()
                );
                tokio::time::sleep(world.options.pause).await;
            }
            run_operator(world, 1).await?;
            running = true;
            moved_in_run = 0;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > world.options.node_ready_timeout {
            let waiting: Vec<&str> = nodes
                .iter()
                .filter(|n| !checked.contains(&n.name))
                .map(|n| n.name.as_str())
                .collect();
            bail!(
                "no node moved to the calico-system calico-node for {} s ({}); not yet moved: {}",
                world.options.node_ready_timeout.as_secs(),
                progressing_message(world).await,
                waiting.join(", ")
            );
        }
        tokio::time::sleep(world.options.poll).await;
    }
}

/// Every non-Fargate node on a Ready calico-system agent (migrated, or the
/// kube-system DaemonSet gone). Returns the nodes that are not.
async fn not_taken_over(world: &Cluster) -> anyhow::Result<(usize, Vec<String>)> {
    let nodes: Vec<NodeState> = list_nodes(world)
        .await?
        .into_iter()
        .filter(|n| !n.fargate)
        .collect();
    let agents = agents_ready(world, CALICO_SYSTEM).await?;
    let gone = world.objects.get(&kube_system_node()).await?.is_none();
    let missing = nodes
        .iter()
        .filter(|n| !(agents.contains(&n.name) && (gone || n.label.as_deref() == Some(MIGRATED))))
        .map(|n| n.name.clone())
        .collect();
    Ok((nodes.len(), missing))
}

/// Wait for a DaemonSet's rollout, giving up only when nothing progressed for
/// `node_ready_timeout` (a rollout of many nodes takes longer than one node's wait).
async fn wait_rollout(world: &Cluster, r: &ObjRef) -> anyhow::Result<()> {
    let mut last_seen = String::new();
    let mut since = Instant::now();
    loop {
        let Some(ds) = world.objects.get(r).await? else {
            bail!("{r} disappeared while waiting for its rollout");
        };
        if rolled_out(&ds) {
            return Ok(());
        }
        let n = |k: &str| int_at(&ds, &format!("/status/{k}")).unwrap_or(0);
        let now = format!(
            "{} of {} Ready, {} updated",
            n("numberReady"),
            n("desiredNumberScheduled"),
            n("updatedNumberScheduled")
        );
        if now != last_seen {
            tracing::info!("waiting for the rollout of {r}: {now}");
            last_seen = now;
            since = Instant::now();
        }
        if since.elapsed() > world.options.node_ready_timeout {
            bail!(
                "the rollout of {r} made no progress for {} s ({last_seen})",
                world.options.node_ready_timeout.as_secs()
            );
        }
        tokio::time::sleep(world.options.poll).await;
    }
}

/// While nodes move back: every node not `migrated` labelled `pre-operator`, the
/// kube-system DaemonSet present and selecting them, kube-system typha running.
async fn prepare_way_back(
    world: &Cluster,
    pre: &PreOperator,
    nodes: &[NodeState],
) -> anyhow::Result<()> {
    for n in nodes
        .iter()
        .filter(|n| n.label.as_deref() != Some(MIGRATED))
    {
        if n.label.as_deref() != Some(PRE_OPERATOR) {
            set_node_label(world, &n.name, Some(PRE_OPERATOR)).await?;
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

fn selects(ds: &Value, value: &str) -> bool {
    ds.pointer("/spec/template/spec/nodeSelector")
        .and_then(|s| s.get(MIGRATION_LABEL))
        .and_then(Value::as_str)
        == Some(value)
}

/// Once the operator has finished, no node carries the migration label and the
/// calico-system DaemonSet selects every node: deleting it would leave every node
/// without an agent at once. Put the operator's mechanism back first (with the
/// operator frozen): every node labelled `migrated`, then the DaemonSet on that
/// selector with OnDelete, so no running pod restarts. Nodes can then move back
/// one at a time.
async fn restore_migration_selector(world: &Cluster) -> anyhow::Result<()> {
    let r = calico_system_node();
    let Some(ds) = world.objects.get(&r).await? else {
        return Ok(());
    };
    if selects(&ds, MIGRATED) {
        return Ok(());
    }
    for n in list_nodes(world).await? {
        if !n.fargate && n.label.as_deref() != Some(MIGRATED) {
            set_node_label(world, &n.name, Some(MIGRATED)).await?;
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

/// Move every `migrated` node back to the kube-system agent, newest first (the
/// operator migrates in name order), checking each like the way forward: probed through
/// its swap, the `held` connections touching it still answering after it.
async fn move_nodes_back(
    world: &Cluster,
    step: &str,
    pre: &PreOperator,
    held: Option<&ConnPool>,
) -> anyhow::Result<()> {
    let mut moved = 0usize;
    loop {
        let nodes = list_nodes(world).await?;
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
        set_node_label(world, &node, Some(PRE_OPERATOR)).await?;
        if let Some(problem) = watch_swap(world, step, &node, KUBE_SYSTEM).await? {
            bail!("moving node {node} back: {problem}");
        }
        if let Some(pool) = held {
            check_held(world, step, Way::Back, pool, Some(&node))
                .await
                .map_err(|e| anyhow!("moving node {node} back: {e:#}"))?;
        }
        moved += 1;
        if moved.is_multiple_of(world.options.full_round_every) {
            world
                .check_round(step, &format!("after moving node {node} back"))
                .await
                .map_err(|e| anyhow!("after moving node {node} back: {e:#}"))?;
        }
        progress::inc();
        if !world.options.pause.is_zero() {
            tokio::time::sleep(world.options.pause).await;
        }
    }
}

fn owned_by_installation(o: &Value) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r["kind"] == "Installation"))
}

/// Once no node is `migrated`: remove the operator's calico-system workloads and
/// restore the kube-system objects, node labels and the binding as captured. The
/// `held` connections must survive the kube-system rollout that restoring its
/// DaemonSet starts.
async fn restore_kube_system(
    world: &Cluster,
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
    let mut restored_ds = false;
    for s in &pre.objects {
        let Some(obj) = &s.live else { continue };
        if world.objects.restore(obj).await? {
            tracing::info!("restored {}", s.object);
            restored_ds |= s.object == kube_system_node();
        }
    }
    if restored_ds || world.objects.get(&kube_system_node()).await?.is_some() {
        wait_rollout(world, &kube_system_node()).await?;
    }
    if let Some(pool) = held {
        check_held(world, step, Way::Back, pool, None).await?;
    }
    for n in list_nodes(world).await? {
        let want = pre.node_labels.get(&n.name).cloned().flatten();
        if n.label != want {
            set_node_label(world, &n.name, want.as_deref()).await?;
        }
    }
    world
        .check_round(step, "after returning every node to kube-system")
        .await?;
    Ok(())
}

/// The way back from any point of the takeover (idempotent): operator frozen, nodes
/// moved back one at a time, kube-system restored. Leaves the operator frozen.
pub(crate) async fn return_to_kube_system(
    world: &Cluster,
    step: &str,
    pre: &PreOperator,
) -> anyhow::Result<()> {
    freeze_operator(world).await?;
    world.prober().await?;
    restore_migration_selector(world).await?;
    let migrated: Vec<String> = list_nodes(world)
        .await?
        .into_iter()
        .filter(|n| n.label.as_deref() == Some(MIGRATED))
        .map(|n| n.name)
        .collect();
    // The nodes to move back, then restoring the kube-system DaemonSet rolls every node.
    let nodes = list_nodes(world).await?.len();
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

/// The step.
pub struct Takeover;

impl Step<Cluster> for Takeover {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Follow the operator's node-by-node takeover"
    }

    fn capture<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Value> {
        Box::pin(async move {
            // The operator has been running since create-installation: its capture
            // is the state before any change. Without it, the live state.
            let pre = match PreOperator::load_file(&world.state_dir)? {
                Some(p) => p,
                None => PreOperator::capture(world).await?,
            };
            Ok(serde_json::to_value(pre)?)
        })
    }

    fn ensure<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let nodes = list_nodes(world)
                .await?
                .iter()
                .filter(|n| !n.fargate)
                .count();
            let bar = progress::bar(
                "takeover: nodes checked on the operator's calico-node",
                nodes as u64,
                "nodes",
            );
            match follow(world).instrument(bar).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Invariant 4: stop the operator where it stands before reporting.
                    match freeze_operator(world).await {
                        Ok(_) => Err(anyhow!("takeover stopped: {e:#}. {FROZEN}; {WHAT_NEXT}")),
                        Err(f) => Err(anyhow!(
                            "takeover stopped: {e:#}. Freezing the operator failed too ({f:#}): scale Deployment tigera-operator/tigera-operator to 0 now (`kubectl -n tigera-operator scale deployment tigera-operator --replicas=0`), then {WHAT_NEXT}"
                        )),
                    }
                }
            }
        })
    }

    fn verify<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let (total, missing) = not_taken_over(world).await?;
            if missing.is_empty() {
                // The takeover leaves the operator running: it still has to remove the
                // kube-system install and finish (a crash may have left it frozen).
                match world.objects.get(&operator_ref()).await? {
                    Some(d) if deployment_ready(&d) => {}
                    _ => {
                        return Ok(Verification::failed(
                            "the operator is not running: the takeover starts it again to finish",
                        ));
                    }
                }
                match world.objects.get(&calico_system_node()).await? {
                    Some(ds) if selects(&ds, MIGRATED) => {
                        return Ok(Verification::failed(
                            "calico-system calico-node still selects the migration label: the operator has not finished",
                        ));
                    }
                    _ => {}
                }
                if let Some(left) = rollout_unfinished(world, &calico_system_node()).await? {
                    return Ok(Verification::failed(left));
                }
            }
            Ok(if missing.is_empty() {
                Verification::passed(format!(
                    "{total} node(s) run a Ready calico-system calico-node"
                ))
            } else {
                Verification::failed(format!(
                    "{} of {total} node(s) not yet on a Ready calico-system calico-node: {}",
                    missing.len(),
                    missing.join(", ")
                ))
            })
        })
    }

    fn rollback<'a>(&'a self, world: &'a Cluster, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let pre: PreOperator = serde_json::from_value(saved.clone())
                .context("takeover's rollback data is not what this version wrote")?;
            return_to_kube_system(world, ID, &pre).await
        })
    }

    fn preview<'a>(&'a self, world: &'a Cluster) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let (_, missing) = not_taken_over(world).await?;
            Ok(missing
                .iter()
                .map(|n| format!("node {n}: follow the operator's relabel to `{MIGRATED}`, probe through the swap, then a check round"))
                .collect())
        })
    }
}
