//! Following a calico-node DaemonSet's rolling update node by node, with each
//! node probed through its agent swap: every step that changes a calico-node pod
//! template (kube-system or the operator's calico-system one) goes through here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use tracing::Instrument as _;

use super::facts::{int_at, str_at};
use super::refs::KUBE_SYSTEM;
use super::swap::{Way, check_held};
use super::world::{Observation, World};
use crate::checks::conn::ConnPool;
use crate::checks::{InFlight, Prober, watch_node};
use crate::cluster::objects::ObjRef;
use crate::kinds::{self, daemonset_rolled_out, pod_ready};

pub async fn daemonset(world: &World, r: &ObjRef) -> anyhow::Result<Value> {
    world
        .objects
        .get(r)
        .await?
        .with_context(|| format!("{r} does not exist"))
}

/// What is left of the DaemonSet's rollout (None: finished).
pub async fn rollout_unfinished(world: &World, ds: &ObjRef) -> anyhow::Result<Option<String>> {
    let r = ds;
    let ds = daemonset(world, r).await?;
    let state = RolloutState::read(world, &ds).await?;
    let pending: Vec<&String> = state.pending().collect();
    let observed = ds
        .pointer("/status/observedGeneration")
        .and_then(Value::as_i64);
    if observed.is_some_and(|g| g < state.generation) {
        return Ok(Some(format!(
            "the DaemonSet controller has not seen the latest {r} yet"
        )));
    }
    if pending.is_empty() && state.covers(&ds) {
        return Ok(None);
    }
    if pending.is_empty() {
        return Ok(Some(format!(
            "{r} has fewer up-to-date Ready pods than nodes to run on (a pod is being replaced)"
        )));
    }
    Ok(Some(format!(
        "{r} is not up to date and Ready on node(s) {}",
        pending
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The DaemonSet's pods on one node.
#[derive(Default)]
pub struct NodePods {
    /// An up-to-date pod exists (Ready or not).
    current: bool,
    /// An up-to-date pod is Ready: the node is done.
    ready: bool,
    /// An outdated pod exists that is not being deleted.
    old_alive: bool,
    /// The names of the outdated pods not being deleted.
    old_pods: Vec<String>,
    /// Why the up-to-date pod is not Ready, as its Ready condition says (the agent's
    /// readiness probe output, e.g. which list felix cannot do).
    not_ready: Option<String>,
}

impl NodePods {
    /// The node's agent is being replaced right now.
    fn swapping(&self) -> bool {
        !self.ready && (self.current || !self.old_alive)
    }
}

/// The DaemonSet's pods by node.
pub struct RolloutState {
    generation: i64,
    nodes: BTreeMap<String, NodePods>,
}

/// What makes a pod of the DaemonSet up to date, as its controller decides
/// (kubernetes pkg/controller/daemon/util `IsPodUpdated`): a `controller-revision-hash`
/// label naming the current ControllerRevision, or a `pod-template-generation` label
/// equal to the template generation the API server keeps in the annotation
/// `deprecated.daemonset.template.generation`. Not `metadata.generation`: that also
/// rises when only the update strategy changes, which restarts no pod; and a template
/// put back as it was is up to date on the nodes that never left it, by hash alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Revision {
    template_generation: Option<i64>,
    hash: Option<String>,
}

impl Revision {
    /// The DaemonSet's current revision. Its hash is read only once the controller has
    /// observed the DaemonSet's latest generation: it makes the current
    /// ControllerRevision (update.go `constructHistory`) in the same sync that writes
    /// `status.observedGeneration`, so before that the newest revision may still be the
    /// previous template's.
    pub async fn read(world: &World, ds: &Value) -> anyhow::Result<Self> {
        let template_generation = ds
            .pointer("/metadata/annotations/deprecated.daemonset.template.generation")
            .and_then(Value::as_str)
            .and_then(|g| g.parse().ok());
        let generation = int_at(ds, "/metadata/generation").unwrap_or(0);
        let observed = int_at(ds, "/status/observedGeneration").unwrap_or(0);
        if observed < generation {
            return Ok(Revision {
                template_generation,
                hash: None,
            });
        }
        let namespace = str_at(ds, "/metadata/namespace").unwrap_or(KUBE_SYSTEM);
        let uid = str_at(ds, "/metadata/uid").unwrap_or_default();
        let hash = world
            .objects
            .list_selected(
                "apps/v1",
                "ControllerRevision",
                Some(namespace),
                Some(&pod_selector(ds)),
                None,
            )
            .await?
            .iter()
            .filter(|r| owned_by(r, uid))
            .max_by_key(|r| int_at(r, "/revision").unwrap_or(0))
            .and_then(|r| str_at(r, "/metadata/labels/controller-revision-hash"))
            .map(str::to_string);
        Ok(Revision {
            template_generation,
            hash,
        })
    }

    fn is_current(&self, pod: &Value) -> bool {
        let label = |k: &str| str_at(pod, &format!("/metadata/labels/{k}"));
        let by_hash = self
            .hash
            .as_deref()
            .is_some_and(|h| label("controller-revision-hash") == Some(h));
        let by_generation = self
            .template_generation
            .is_some_and(|g| label("pod-template-generation") == Some(g.to_string().as_str()));
        by_hash || by_generation
    }
}

fn owned_by(o: &Value, uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| str_at(r, "/uid") == Some(uid)))
}

/// The DaemonSet's `matchLabels` as a label selector.
fn pod_selector(ds: &Value) -> String {
    ds.pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "app.kubernetes.io/name=calico-node".into())
}

impl RolloutState {
    async fn read(world: &World, ds: &Value) -> anyhow::Result<Self> {
        let revision = Revision::read(world, ds).await?;
        Self::read_on(world, ds, &revision, None).await
    }

    /// The DaemonSet's pods on `node` only, or on every node: a wait for one node's
    /// agent asks the API server for that node's pods (a field selector), so each poll
    /// costs the same at 10 nodes and at 500.
    async fn read_on(
        world: &World,
        ds: &Value,
        revision: &Revision,
        node: Option<&str>,
    ) -> anyhow::Result<Self> {
        let namespace = str_at(ds, "/metadata/namespace").unwrap_or(KUBE_SYSTEM);
        let generation = ds
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let selector = pod_selector(ds);
        let uid = str_at(ds, "/metadata/uid").unwrap_or_default();
        let mut nodes: BTreeMap<String, NodePods> = BTreeMap::new();
        let on_node = node.map(|n| format!("spec.nodeName={n}"));
        for p in world
            .objects
            .list_selected(
                "v1",
                "Pod",
                Some(namespace),
                Some(&selector),
                on_node.as_deref(),
            )
            .await?
        {
            let Some(node) = str_at(&p, "/spec/nodeName").filter(|_| owned_by(&p, uid)) else {
                continue;
            };
            let current = revision.is_current(&p);
            let deleting = p.pointer("/metadata/deletionTimestamp").is_some();
            let e = nodes.entry(node.to_string()).or_default();
            e.current |= current && !deleting;
            e.ready |= current && kinds::is(&p, pod_ready);
            e.old_alive |= !current && !deleting;
            if !current
                && !deleting
                && let Some(name) = str_at(&p, "/metadata/name")
            {
                e.old_pods.push(name.to_string());
            }
            if current && !deleting && !kinds::is(&p, pod_ready) {
                e.not_ready = Some(ready_message(&p));
            }
        }
        Ok(RolloutState { generation, nodes })
    }

    /// Whether every node the DaemonSet should run on has its up-to-date Ready pod.
    /// Pods alone cannot tell: between the old pod's deletion and the new one's
    /// creation a node has no pod at all, so it is in no list; the controller's count of
    /// nodes to run on (`desiredNumberScheduled`, for the generation it observed) is.
    fn covers(&self, ds: &Value) -> bool {
        let desired = ds
            .pointer("/status/desiredNumberScheduled")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let ready = self.nodes.values().filter(|p| p.ready).count() as u64;
        ready >= desired
    }

    /// Nodes with a pod that is not (yet) an up-to-date Ready one.
    fn pending(&self) -> impl Iterator<Item = &String> {
        self.nodes.iter().filter(|(_, p)| !p.ready).map(|(n, _)| n)
    }

    fn swapping(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(NodePods::swapping)
    }

    /// The nodes whose up-to-date pod exists but is not Ready, with the reason.
    fn stuck(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|(n, p)| Some(format!("{n}: {}", p.not_ready.as_ref()?)))
            .collect()
    }
}

/// A pod's Ready condition in words: its message, else its reason, else "not Ready".
fn ready_message(pod: &Value) -> String {
    let cond = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| str_at(c, "/type") == Some("Ready")));
    let text = |k: &str| cond.and_then(|c| str_at(c, k)).filter(|s| !s.is_empty());
    match (text("/reason"), text("/message")) {
        (_, Some(m)) => format!("the new calico-node is not Ready: {m}"),
        (Some(r), None) => format!("the new calico-node is not Ready ({r})"),
        (None, None) => "the new calico-node is not Ready yet".to_string(),
    }
}

/// Resolves once `node` runs an up-to-date Ready pod of the DaemonSet.
pub async fn updated_on(world: &World, r: &ObjRef, node: &str) {
    // The revision is read again only when the DaemonSet changed: each poll then costs
    // the DaemonSet and the node's pods, whatever the size of the cluster.
    let mut known: Option<(Option<String>, Revision)> = None;
    let mut tick = crate::checks::every(world.options.poll);
    loop {
        match daemonset(world, r).await {
            Ok(ds) => {
                let version = str_at(&ds, "/metadata/resourceVersion").map(str::to_string);
                let revision = match &known {
                    Some((v, rev)) if *v == version => Ok(rev.clone()),
                    _ => Revision::read(world, &ds).await,
                };
                match revision {
                    Ok(revision) => {
                        match RolloutState::read_on(world, &ds, &revision, Some(node)).await {
                            Ok(s) if s.nodes.get(node).is_some_and(|p| p.ready) => return,
                            Ok(_) => {}
                            Err(e) => tracing::warn!(
                                "reading calico-node pods on {node}: {e:#}; trying again"
                            ),
                        }
                        known = Some((version, revision));
                    }
                    Err(e) => tracing::warn!("reading {r}'s revisions: {e:#}; trying again"),
                }
            }
            Err(e) => tracing::warn!("{e:#}; trying again"),
        }
        tick.tick().await;
    }
}

/// Follow a calico-node DaemonSet's rolling update node by node: probe each
/// node continuously while its agent is replaced (`checks::watch_node`), record the
/// swap, and stop at the first node whose enforcement is not verified or whose
/// agent does not come back within `node_ready_timeout`, naming it. Nodes the
/// controller replaced while another was watched are probed right after.
///
/// `prober` is set up by the caller before it changes the pod template: probe pods
/// created while a node's agent is being replaced would fail closed there, and their
/// new addresses are what the rules frozen on that node do not know.
pub async fn follow_rollout(
    world: &World,
    step: &str,
    r: &ObjRef,
    prober: &Prober,
) -> anyhow::Result<()> {
    let bar = nodes_bar(world, step, r).await?;
    follow(world, step, r, prober).instrument(bar).await
}

/// The progress bar of a rollout: nodes checked out of the DaemonSet's nodes.
async fn nodes_bar(world: &World, step: &str, r: &ObjRef) -> anyhow::Result<tracing::Span> {
    let nodes = daemonset(world, r)
        .await?
        .pointer("/status/desiredNumberScheduled")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(crate::progress::bar(
        &format!("{step}: nodes checked after their calico-node was replaced"),
        nodes,
        "nodes",
    ))
}

pub async fn follow(world: &World, step: &str, r: &ObjRef, prober: &Prober) -> anyhow::Result<()> {
    let mut watched: BTreeSet<String> = BTreeSet::new();
    let mut to_check: BTreeSet<String> = BTreeSet::new();
    let mut last_progress = Instant::now();
    let mut tick = crate::checks::every(world.options.poll.min(Duration::from_secs(2)));
    loop {
        let ds = daemonset(world, r).await?;
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
                check_swap(world, step, r, prober, None, &node).await?;
                watched.insert(node);
                crate::progress::set(watched.len() as u64);
                last_progress = Instant::now();
                tick.reset();
            }
            None if pending.is_empty() && observed >= state.generation && state.covers(&ds) => {
                return Ok(());
            }
            None => {
                let stuck = state.stuck();
                if last_progress.elapsed() > world.options.node_ready_timeout && !stuck.is_empty() {
                    bail!(
                        "{step}: the rollout of {r} stopped at node {}; calico-migrate stops \
                         here (the DaemonSet controller replaces no other node while this one \
                         is not Ready): fix the cause, then `calico-migrate apply --resume`, or \
                         `calico-migrate rollback`",
                        stuck.join("; node ")
                    );
                }
                if last_progress.elapsed() > world.options.node_ready_timeout {
                    bail!(
                        "{step}: the rollout of {r} made no progress for {:?} (waiting on: {})",
                        world.options.node_ready_timeout,
                        if pending.is_empty() {
                            "the DaemonSet controller".to_string()
                        } else {
                            pending.join(", ")
                        }
                    );
                }
                tick.tick().await;
            }
        }
    }
}

/// Probe `node` while its calico-node of DaemonSet `r` is replaced, until its up-to-date
/// pod is Ready and enforcement verifies; then every `held` connection touching it must
/// still carry requests. Records the swap; fails naming the node.
async fn check_swap(
    world: &World,
    step: &str,
    r: &ObjRef,
    prober: &Prober,
    held: Option<&ConnPool>,
    node: &str,
) -> anyhow::Result<()> {
    tracing::info!("{step}: probing node {node} while its calico-node ({r}) is replaced");
    let started = Instant::now();
    let watch = watch_node(
        prober,
        node,
        &InFlight::default(),
        updated_on(world, r, node),
        world.options.poll,
        world.options.node_ready_timeout,
    )
    .await
    .with_context(|| format!("probing node {node} during its calico-node swap"))?;
    world.observe(Observation::NodeSwap {
        step: step.to_string(),
        watch: watch.clone(),
    });
    if started.elapsed() >= world.options.node_ready_timeout {
        // The watch ran out its time: say first whether the agent never came back.
        let ds = daemonset(world, r).await?;
        let revision = Revision::read(world, &ds).await?;
        let here = RolloutState::read_on(world, &ds, &revision, Some(node)).await?;
        if !here.nodes.get(node).is_some_and(|p| p.ready) {
            let why = here
                .nodes
                .get(node)
                .and_then(|p| p.not_ready.clone())
                .unwrap_or_else(|| {
                    format!(
                        "no up-to-date calico-node is Ready there after {} s",
                        world.options.node_ready_timeout.as_secs()
                    )
                });
            bail!(
                "{step}: the rollout of {r} stopped at node {node}: {why}; calico-migrate \
                 stops here and replaces no other node: fix the cause, then `calico-migrate \
                 apply --resume`, or `calico-migrate rollback`"
            );
        }
    }
    if !watch.verified_at_end {
        bail!(
            "{step}: enforcement was not verified while node {node}'s calico-node was replaced \
             ({}); calico-migrate stops here: inspect the node(s), then \
             `calico-migrate apply --resume` or `calico-migrate rollback`",
            watch.failure_summary(3)
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
    if let Some(pool) = held {
        let way = if r.namespace.as_deref() == Some(KUBE_SYSTEM) {
            Way::Back
        } else {
            Way::Forward
        };
        check_held(world, step, way, pool, Some(node)).await?;
    }
    tracing::info!(
        "{step}: node {node} verified ({} passes, longest unverified {} ms)",
        watch.passes,
        watch.longest_unverified_ms
    );
    Ok(())
}

/// Replace an `OnDelete` DaemonSet's outdated calico-node pods one node at a time:
/// nodes already being replaced first (checked as they come), then each node with an
/// outdated pod, whose pod is deleted (the DaemonSet controller creates the up-to-date
/// one) and checked through its swap ([`check_swap`]) before the next is touched. The
/// first node that fails stops it with no other node replaced.
pub async fn replace_node_by_node(
    world: &World,
    step: &str,
    r: &ObjRef,
    prober: &Prober,
    held: Option<&ConnPool>,
) -> anyhow::Result<()> {
    let bar = nodes_bar(world, step, r).await?;
    async {
        let mut checked = 0u64;
        let mut tick = crate::checks::every(world.options.poll);
        loop {
            let ds = daemonset(world, r).await?;
            if int_at(&ds, "/status/observedGeneration").unwrap_or(0)
                < int_at(&ds, "/metadata/generation").unwrap_or(0)
            {
                // Which pods are outdated is the controller's to say for the template it
                // has seen (a template put back is current on the nodes that kept it).
                tick.tick().await;
                continue;
            }
            let state = RolloutState::read(world, &ds).await?;
            if let Some(node) = state.nodes.keys().find(|n| state.swapping(n)).cloned() {
                check_swap(world, step, r, prober, held, &node).await?;
            } else if let Some((node, pods)) = state
                .nodes
                .iter()
                .find(|(_, p)| !p.current && !p.old_pods.is_empty())
            {
                let node = node.clone();
                for pod in &pods.old_pods {
                    let pr = ObjRef::new("v1", "Pod", r.namespace.as_deref(), pod);
                    tracing::info!("{step}: replacing calico-node on node {node} (deleting {pr})");
                    world.objects.delete(&pr).await?;
                }
                check_swap(world, step, r, prober, held, &node).await?;
            } else if state.pending().next().is_none() && state.covers(&ds) {
                return Ok(());
            } else {
                // A node between its old pod's deletion and its new one's creation.
                tick.tick().await;
                continue;
            }
            checked += 1;
            crate::progress::set(checked);
            tick.reset();
        }
    }
    .instrument(bar)
    .await
}

/// The update strategy that pauses a DaemonSet: its controller replaces no pod by itself
/// (`rollingUpdate` cleared: it belongs to the other type).
fn on_delete_strategy() -> Value {
    serde_json::json!({"type": "OnDelete", "rollingUpdate": null})
}

/// A DaemonSet's update strategy as the API server defaults it when absent (apps/v1:
/// RollingUpdate, maxUnavailable 1): what a paced rollout puts back.
pub fn update_strategy(ds: &Value) -> Value {
    ds.pointer("/spec/updateStrategy")
        .filter(|s| !s.is_null())
        .cloned()
        .unwrap_or_else(
            || serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}),
        )
}

/// `patch`, a merge patch of calico-node's pod template, with the update strategy set to
/// OnDelete in the same write: the DaemonSet controller starts no rolling update of its own.
pub fn paused(patch: &Value) -> Value {
    let mut p = patch.clone();
    p["spec"]["updateStrategy"] = on_delete_strategy();
    p
}

/// Whether DaemonSet `ds` still has the strategy a paced rollout set (None: `restore` is
/// back).
pub fn strategy_left(ds: &Value, restore: &Value) -> Option<String> {
    let kind = |s: &Value| str_at(s, "/type").unwrap_or("RollingUpdate").to_string();
    let now = update_strategy(ds);
    (kind(&now) != kind(restore)).then(|| {
        format!(
            "calico-node's update strategy is still {} (calico-migrate paces its rollout; \
             `calico-migrate apply --resume` puts {} back)",
            kind(&now),
            kind(restore)
        )
    })
}

/// Roll a pod-template change of calico-node DaemonSet `r` out at calico-migrate's pace:
/// `patch` (if any; none when a resumed run finds it applied) is written with the update
/// strategy OnDelete ([`paused`]); every node's pod is then replaced and checked in turn
/// ([`replace_node_by_node`]), so the first node that fails stops the rollout with no
/// other node replaced, where a RollingUpdate would go on to the next node as soon as
/// the failed one's pod is Ready; last, the strategy `restore` (as captured before the
/// step) goes back, which restarts nothing: a change outside the pod template leaves
/// every pod up to date (kubernetes pkg/controller/daemon/util `IsPodUpdated`).
pub async fn roll_paced(
    world: &World,
    step: &str,
    r: &ObjRef,
    patch: Option<&Value>,
    restore: &Value,
    prober: &Prober,
) -> anyhow::Result<()> {
    match patch {
        Some(p) => {
            world.objects.merge(r, &paused(p)).await?;
        }
        None => {
            let ds = daemonset(world, r).await?;
            if str_at(&ds, "/spec/updateStrategy/type") != Some("OnDelete")
                && rollout_unfinished(world, r).await?.is_some()
            {
                // A rolling update in progress (a run resumed after a crash): pause it.
                world
                    .objects
                    .merge(r, &paused(&serde_json::json!({})))
                    .await?;
            }
        }
    }
    replace_node_by_node(world, step, r, prober, None).await?;
    put_strategy_back(world, step, r, restore).await
}

/// Go on with a paced rollout a stopped run left (DaemonSet `r` not on `restore`, its
/// template already written): the nodes not replaced yet are, then `restore` goes back.
pub async fn finish_paced(
    world: &World,
    step: &str,
    r: &ObjRef,
    restore: &Value,
) -> anyhow::Result<()> {
    let Some(ds) = world.objects.get(r).await? else {
        return Ok(());
    };
    if strategy_left(&ds, restore).is_none() {
        return Ok(());
    }
    let prober = world.prober().await?;
    roll_paced(world, step, r, None, restore, &prober).await
}

/// Put DaemonSet `r`'s update strategy back to `restore` unless it is; restarts nothing.
pub async fn put_strategy_back(
    world: &World,
    step: &str,
    r: &ObjRef,
    restore: &Value,
) -> anyhow::Result<()> {
    let ds = daemonset(world, r).await?;
    if update_strategy(&ds) != *restore {
        let mut back = restore.clone();
        if back.get("rollingUpdate").is_none() {
            back["rollingUpdate"] = Value::Null;
        }
        tracing::info!("{step}: putting {r}'s update strategy back");
        world
            .objects
            .merge(r, &serde_json::json!({"spec": {"updateStrategy": back}}))
            .await?;
    }
    Ok(())
}

/// Nodes whose up-to-date calico-node of `r` exists but is not Ready, with the reason:
/// a paced rollout stopped there.
pub async fn stuck_nodes(world: &World, r: &ObjRef) -> anyhow::Result<Vec<String>> {
    let ds = daemonset(world, r).await?;
    Ok(RolloutState::read(world, &ds).await?.stuck())
}

/// Wait for a DaemonSet's rollout, giving up only when nothing progressed for
/// `node_ready_timeout` (a rollout of many nodes takes longer than one node's wait).
pub async fn wait_rollout(world: &World, r: &ObjRef) -> anyhow::Result<()> {
    let mut last_seen = String::new();
    let mut since = Instant::now();
    let mut tick = crate::checks::every(world.options.poll);
    loop {
        let Some(ds) = world.objects.get(r).await? else {
            bail!("{r} disappeared while waiting for its rollout");
        };
        if kinds::is(&ds, daemonset_rolled_out) {
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
        tick.tick().await;
    }
}
