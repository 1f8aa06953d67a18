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

impl RolloutState {
    async fn read(world: &World, ds: &Value) -> anyhow::Result<Self> {
        Self::read_on(world, ds, None).await
    }

    /// The DaemonSet's pods on `node` only, or on every node: a wait for one node's
    /// agent asks the API server for that node's pods (a field selector), so each poll
    /// costs the same at 10 nodes and at 500.
    async fn read_on(world: &World, ds: &Value, node: Option<&str>) -> anyhow::Result<Self> {
        let namespace = str_at(ds, "/metadata/namespace").unwrap_or(KUBE_SYSTEM);
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
    loop {
        match daemonset(world, r).await {
            Ok(ds) => match RolloutState::read_on(world, &ds, Some(node)).await {
                Ok(s) if s.nodes.get(node).is_some_and(|p| p.ready) => return,
                Ok(_) => {}
                Err(e) => tracing::warn!("reading calico-node pods on {node}: {e:#}; trying again"),
            },
            Err(e) => tracing::warn!("{e:#}; trying again"),
        }
        tokio::time::sleep(world.options.poll).await;
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
                tokio::time::sleep(world.options.poll.min(Duration::from_secs(2))).await;
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
        loop {
            let ds = daemonset(world, r).await?;
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
                tokio::time::sleep(world.options.poll).await;
                continue;
            }
            checked += 1;
            crate::progress::set(checked);
        }
    }
    .instrument(bar)
    .await
}

/// Wait for a DaemonSet's rollout, giving up only when nothing progressed for
/// `node_ready_timeout` (a rollout of many nodes takes longer than one node's wait).
pub async fn wait_rollout(world: &World, r: &ObjRef) -> anyhow::Result<()> {
    let mut last_seen = String::new();
    let mut since = Instant::now();
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
        tokio::time::sleep(world.options.poll).await;
    }
}
