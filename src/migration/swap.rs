//! A node's agent swap, checked: the node probed until its new calico-node is
//! Ready and enforcement verifies, and the established connections held across the
//! swaps still carrying requests after it. The takeover moves nodes forward with
//! it, the way back moves them back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tokio::task::JoinHandle;

use super::nodes::{agents_ready, list_nodes};
use super::refs::{CALICO_SYSTEM, KUBE_SYSTEM, MIGRATED, PRE_OPERATOR};
use super::world::{Observation, World};
use crate::checks::conn::{self, ConnPool, HoldOptions};
use crate::checks::{self, CheckError, InFlight, NodeWatch, Prober};

/// Probe `node` through its agent swap until the calico-node in `namespace` there is
/// Ready and a pass verifies (bounded by `node_ready_timeout`); records the swap.
/// `early` is the watch [`SwapWatcher`] started at the node's relabel, if it did: its
/// outcome is judged here. Returns what went wrong, if anything.
pub async fn watch_swap(
    world: &World,
    step: &str,
    node: &str,
    namespace: &'static str,
    in_flight: &InFlight,
    early: Option<Watching>,
) -> anyhow::Result<Option<String>> {
    let (watch, ready) = match early {
        Some(task) => task
            .await
            .map_err(|e| anyhow!("the watch of node {node} ended without an outcome: {e}"))?,
        None => {
            // A node that joined during the takeover has no probe pods yet: its first
            // agent comes up first (no pod is created on a node without one), then its
            // pods.
            if !world.prober().await?.nodes().iter().any(|n| n == node) {
                let ready =
                    checks::agent_ready(world.client(), namespace, node, world.options.poll);
                // Not Ready in time: prober_covering says so (it waits for every agent).
                let _ = tokio::time::timeout(world.options.node_ready_timeout, ready).await;
            }
            let prober = world.prober_covering(node).await?;
            swap_watch(
                prober,
                world.client().clone(),
                namespace,
                node.to_string(),
                in_flight.clone(),
                world.options.poll,
                world.options.node_ready_timeout,
            )
            .await
        }
    }
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
    let problem = swap_problem(world, &watch, ready, namespace);
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

/// The watch of one node's swap with what it needs owned, so it can run on a task of
/// its own: `node` probed until its calico-node in `namespace` is Ready and a pass
/// verifies, or `max`. Returns the watch and whether the agent became Ready.
async fn swap_watch(
    prober: Arc<Prober>,
    client: kube::Client,
    namespace: &'static str,
    node: String,
    in_flight: InFlight,
    poll: Duration,
    max: Duration,
) -> Result<(NodeWatch, bool), CheckError> {
    let ready = AtomicBool::new(false);
    let done = async {
        checks::agent_ready(&client, namespace, &node, poll).await;
        ready.store(true, Ordering::SeqCst);
    };
    tracing::info!("probing node {node} until its calico-node in {namespace} is Ready");
    let watch = checks::watch_node(&prober, &node, &in_flight, done, poll, max).await?;
    Ok((watch, ready.load(Ordering::SeqCst)))
}

/// A node's watch running on a task of its own.
pub type Watching = JoinHandle<Result<(NodeWatch, bool), CheckError>>;

/// Starts a node's watch as soon as the operator relabels it, while the takeover is
/// still checking the node before (its held connections, a sampled round), so the
/// node is probed from the start of its swap rather than from when the takeover gets
/// to it. The watches started are kept until taken; those never taken are aborted
/// with [`abort_started`].
#[derive(Clone)]
pub struct SwapWatcher {
    prober: Arc<Prober>,
    client: kube::Client,
    namespace: &'static str,
    in_flight: InFlight,
    poll: Duration,
    max: Duration,
    started: Started,
}

/// The watches started and not yet taken, by node.
pub type Started = Arc<Mutex<BTreeMap<String, Watching>>>;

impl SwapWatcher {
    /// A watcher with the world's probe workload as it is now.
    pub async fn new(
        world: &World,
        namespace: &'static str,
        in_flight: &InFlight,
        started: &Started,
    ) -> anyhow::Result<Self> {
        Ok(SwapWatcher {
            prober: world.prober().await?,
            client: world.client().clone(),
            namespace,
            in_flight: in_flight.clone(),
            poll: world.options.poll,
            max: world.options.node_ready_timeout,
            started: started.clone(),
        })
    }

    /// Start `node`'s watch unless it has one. A node without probe pods (it joined
    /// during the takeover) is left to [`watch_swap`], which adds them.
    pub fn start(&self, node: &str) {
        if !self.prober.nodes().iter().any(|n| n == node) {
            return;
        }
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if started.contains_key(node) {
            return;
        }
        let watch = swap_watch(
            self.prober.clone(),
            self.client.clone(),
            self.namespace,
            node.to_string(),
            self.in_flight.clone(),
            self.poll,
            self.max,
        );
        started.insert(node.to_string(), tokio::spawn(watch));
    }
}

/// `node`'s watch, if one was started.
pub fn take_started(started: &Started, node: &str) -> Option<Watching> {
    started
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(node)
}

/// Abort the watches started and never taken (the takeover stopped before it got to
/// their nodes): a watch left running would probe until its timeout.
pub fn abort_started(started: &Started) {
    for (_, task) in std::mem::take(&mut *started.lock().unwrap_or_else(|e| e.into_inner())) {
        task.abort();
    }
}

fn swap_problem(world: &World, w: &NodeWatch, ready: bool, namespace: &str) -> Option<String> {
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
pub async fn hold_across_swaps(
    world: &World,
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
pub enum Way {
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
pub async fn check_held(
    world: &World,
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
        // Moved: labelled for that calico-node, or running it Ready (after the last node
        // the operator may already have removed the labels).
        let agents = agents_ready(&world.objects, way.namespace()).await?;
        let moved: Vec<String> = list_nodes(&world.objects)
            .await?
            .into_iter()
            .filter(|n| {
                broken.contains(&n.name)
                    && (n.label.as_deref() == Some(way.label()) || agents.contains(&n.name))
            })
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
