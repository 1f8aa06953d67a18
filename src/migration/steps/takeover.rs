//! `takeover`: follow the operator's node-by-node migration (a node relabelled
//! `migrated` moves to the calico-system DaemonSet), checking after each node and
//! freezing the operator (scaled to 0) at the first failed check.
//!
//! Also the way back, which no source documents (docs/upstream.md, "Rolling back":
//! the operator's own mechanism runs backwards): with the operator frozen, a node
//! relabelled `pre-operator` leaves the calico-system DaemonSet (nodeSelector `migrated`) and
//! returns to the kube-system one (nodeSelector `pre-operator` while nodes move),
//! in reverse name order, one at a time, checked like the way forward; then the kube-system
//! objects and node labels are restored as create-installation captured them.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;
use tracing::Instrument as _;

use crate::checks::InFlight;
use crate::checks::conn::ConnPool;
use crate::cluster::objects::Objects;
use crate::engine::{Step, StepFuture, Verification};
use crate::kinds::{self, deployment_ready};
use crate::migration::descriptor::{Checks, StepContext, StepPlan, change, lines};
use crate::migration::facts::int_at;
use crate::migration::nodes::{NodeState, agents_ready, list_nodes, selects};
use crate::migration::operator::{
    current_degraded, freeze_operator, progressing_message, run_operator, stop_operator,
};
use crate::migration::pre_operator::PreOperator;
use crate::migration::refs::{
    CALICO_SYSTEM, MIGRATED, calico_system_node, kube_system_node, operator_ref,
};
use crate::migration::rollout::{follow_rollout, rollout_unfinished};
use crate::migration::swap::{
    Started, SwapWatcher, Way, abort_started, check_held, hold_across_swaps, take_started,
    watch_swap,
};
use crate::migration::wait::wait_until;
use crate::migration::way_back::return_to_kube_system;
use crate::migration::world::World;
use crate::progress;

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
                    "a probe round over a seeded sample of {} node(s) after each {} node(s), and a full round over every node after the last; each equals the baseline",
                    ctx.profile.checks.round_sample_nodes,
                    ctx.profile.checks.full_round_every_nodes
                ),
                if ctx.profile.checks.hold_connections {
                    "one established connection per node (to the next node's probe server) held open across every swap; each must still carry requests after its nodes' swaps and after the final rollout".to_string()
                } else {
                    "established connections are not held across the swaps (checks.hold_connections: false)".to_string()
                },
                if p.pause_seconds > 0 {
                    format!(
                        "the operator is scaled to 0 after it moves {} node(s) and started again {} s after they are verified; at the first failed check it is scaled to 0 and the run stops naming the node",
                        p.nodes_at_a_time, p.pause_seconds
                    )
                } else {
                    format!(
                        "the operator runs on while the last moved node is checked and is scaled to 0 once {} node(s) have moved past a node not yet verified; at the first failed check it is scaled to 0 and the run stops naming the node, with at most {} node(s) moved past it",
                        p.nodes_at_a_time, p.nodes_at_a_time
                    )
                },
            ]
            .into_iter()
            .chain(ctx.profile.target.restarts_every_agent_at_the_end().then(|| {
                format!(
                    "operator {} restarts every calico-system calico-node at once at the end (plan: END_OF_MIGRATION_RESTART): followed like a rollout, every node probed until its agent is Ready again, the held connections checked after",
                    ctx.profile.target.operator_version
                )
            }))
            .collect(),
        },
        rollback: {
            let mut way_back = lines(&[
                "scale the operator to 0 (freezes the takeover)",
                "relabel migrated nodes pre-operator one at a time, in reverse name order; each probed through its swap until kube-system calico-node is Ready there; a sampled round every few nodes and a full round after the last equal the baseline",
            ]);
            if ctx.profile.checks.hold_connections {
                way_back.push("one established connection per node moved back held open across the moves back and the kube-system rollout; a break stops the rollback".into());
            }
            way_back
        },
        gate: None,
    }
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
async fn follow(world: &World) -> anyhow::Result<()> {
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
    let mut checks = NodeChecks {
        checked: already_migrated(world).await?,
        since_round: 0,
        rounds: 0,
        held: None,
        in_flight: InFlight::default(),
        started: Started::default(),
    };
    let to_move: Vec<String> = list_nodes(&world.objects)
        .await?
        .into_iter()
        .filter(|n| !n.fargate && !checks.checked.contains(&n.name))
        .map(|n| n.name)
        .collect();
    // The nodes to move, then the final rollout over every node.
    checks.held = hold_across_swaps(world, &to_move, to_move.len() + checks.checked.len()).await?;
    let mut pace = Pace::new(
        world.profile.pacing.nodes_at_a_time as usize,
        world.options.pause.is_zero(),
    );
    let mut tick = crate::checks::every(world.options.poll);
    loop {
        if let Some(d) = current_degraded(world).await? {
            bail!("{d}");
        }
        let nodes: Vec<NodeState> = list_nodes(&world.objects)
            .await?
            .into_iter()
            .filter(|n| !n.fargate)
            .collect();
        if let Some(node) = next_moved(world, &nodes, &checks.checked).await? {
            if pace.pipelined {
                pace.check_running(world, &mut checks, &node).await?;
            } else {
                // After the last node the operator goes straight on to its end: it
                // deletes kube-system calico-node and, before v1.35.0, removes the node
                // labels while calico-system calico-node still selects them
                // (END_OF_MIGRATION_RESTART). A freeze landing between those writes
                // would leave no DaemonSet selecting any node, every agent gone until
                // the operator runs again. No node is left to move past this one, so
                // it runs on while the node is checked.
                let last = nodes
                    .iter()
                    .all(|n| n.name == node || checks.checked.contains(&n.name));
                if !last {
                    pace.node_moved(world).await?;
                }
                checks.check(world, &node).await?;
            }
            pace.progressed();
            // Look for the next moved node now, and wait a whole period after that.
            tick.reset();
            continue;
        }
        if nodes.iter().all(|n| checks.checked.contains(&n.name)) {
            tracing::info!(
                "every node ({}) runs the calico-system calico-node, checked",
                nodes.len()
            );
            return finish(world, pace.running, checks).await;
        }
        pace.run(world).await?;
        if pace.since_progress() > world.options.node_ready_timeout {
            let waiting: Vec<&str> = nodes
                .iter()
                .filter(|n| !checks.checked.contains(&n.name))
                .map(|n| n.name.as_str())
                .collect();
            bail!(
                "no node moved to the calico-system calico-node for {} s ({}); not yet moved: {}",
                world.options.node_ready_timeout.as_secs(),
                progressing_message(world).await,
                waiting.join(", ")
            );
        }
        tick.tick().await;
    }
}

/// After a crash: the nodes already on a Ready calico-system agent, given one round.
async fn already_migrated(world: &World) -> anyhow::Result<BTreeSet<String>> {
    let nodes = list_nodes(&world.objects).await?;
    let agents = agents_ready(&world.objects, CALICO_SYSTEM).await?;
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
        progress::set(done.len() as u64);
    }
    Ok(done.into_iter().collect())
}

/// The next node the operator has moved that is not checked yet: labelled
/// `migrated`, or (once the operator has deleted the kube-system DaemonSet) on a
/// Ready calico-system agent.
async fn next_moved(
    world: &World,
    nodes: &[NodeState],
    checked: &BTreeSet<String>,
) -> anyhow::Result<Option<String>> {
    let gone = world.objects.get(&kube_system_node()).await?.is_none();
    let agents = if gone {
        agents_ready(&world.objects, CALICO_SYSTEM).await?
    } else {
        BTreeSet::new()
    };
    Ok(nodes
        .iter()
        .find(|n| {
            !checked.contains(&n.name)
                && (n.label.as_deref() == Some(MIGRATED) || (gone && agents.contains(&n.name)))
        })
        .map(|n| n.name.clone()))
}

/// When the operator runs. With a pause between nodes: started until `per_run` nodes
/// have moved, frozen while they are checked, started again after the pause. Without
/// one (`pipelined`): it runs at its own pace while the last moved node is checked,
/// and is frozen only once `per_run` nodes have moved past a node not yet verified.
struct Pace {
    per_run: usize,
    pipelined: bool,
    moved_in_run: usize,
    running: bool,
    last_progress: Instant,
}

impl Pace {
    fn new(nodes_at_a_time: usize, pipelined: bool) -> Self {
        Pace {
            per_run: nodes_at_a_time.max(1),
            pipelined,
            moved_in_run: 0,
            running: false,
            last_progress: Instant::now(),
        }
    }

    /// A node moved: freeze the operator once this run has moved its share.
    async fn node_moved(&mut self, world: &World) -> anyhow::Result<()> {
        self.moved_in_run += 1;
        if self.running && self.moved_in_run >= self.per_run {
            freeze_operator(world).await?;
            self.running = false;
        }
        Ok(())
    }

    /// Check `node` while the operator runs on. The operator moves a node only once
    /// every calico-node is Ready (v1.38.6 namespace_migration.go:652-703
    /// `waitUntilNodeCanBeMigrated`: ready + maxUnavailable > desired, and the
    /// Installation create-installation writes leaves maxUnavailable at 1), so the
    /// next node after `node` is relabelled once `node`'s agent is Ready, and the one
    /// after that only once the next one's new agent is Ready: a whole swap later.
    /// Freezing as soon as `per_run` nodes are relabelled past `node` therefore stops
    /// it before it can move another. Once `node` is verified it is started again
    /// without waiting for its pod: its start overlaps the swap already under way.
    async fn check_running(
        &mut self,
        world: &World,
        checks: &mut NodeChecks,
        node: &str,
    ) -> anyhow::Result<()> {
        // The guard runs on a task of its own: a check's CPU-bound part (planning a
        // round reads and indexes every pod and policy) must not keep it from its poll.
        // Polled beside the check in one task, it waited out a sampled round at 500
        // nodes while the operator moved two nodes past an unverified one.
        // Each node relabelled meanwhile is watched from then on, not from when this
        // check ends: its swap runs beside this node's last checks.
        let watcher =
            SwapWatcher::new(world, CALICO_SYSTEM, &checks.in_flight, &checks.started).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let guard = tokio::spawn(hold_back(
            Guard {
                objects: world.objects.clone(),
                period: world.options.poll,
                timeout: world.options.node_ready_timeout,
                node: node.to_string(),
                checked: checks.checked.clone(),
                per_run: self.per_run,
                in_flight: checks.in_flight.clone(),
                on_moved: Box::new(move |n| watcher.start(n)),
            },
            stopped,
        ));
        // Should this future be dropped (the run cancelled), the guard goes with it.
        let _abort = AbortOnDrop(guard.abort_handle());
        tokio::pin!(guard);
        let in_flight = checks.in_flight.clone();
        let guard_failed = |r: Result<anyhow::Result<()>, tokio::task::JoinError>| match r {
            Ok(Err(e)) => e,
            Ok(Ok(())) => anyhow!("the takeover's guard of the operator ended before the check"),
            Err(e) => anyhow!("the takeover's guard of the operator failed: {e}"),
        };
        let checked_node = tokio::select! {
            r = checks.check(world, node) => r,
            r = &mut guard => Err(guard_failed(r)),
        };
        if !guard.is_finished() || checked_node.is_ok() {
            // Let the guard finish what it is doing (a freeze under way lands before the
            // Deployment is read below), then hear how it ended: an error of its own
            // (the operator outran the freeze) counts even when the check passed.
            let _ = stop.send(());
            let guarded = (&mut guard).await;
            if checked_node.is_ok()
                && let Err(e) = guarded.map_err(|e| guard_failed(Err(e))).and_then(|r| r)
            {
                in_flight.set(BTreeSet::new());
                return Err(e);
            }
        }
        in_flight.set(BTreeSet::new());
        checked_node?;
        let frozen = world
            .objects
            .get(&operator_ref())
            .await?
            .is_some_and(|d| int_at(&d, "/spec/replicas") == Some(0));
        if frozen {
            // The guard froze it and saw its pod go: release the leader lock that pod
            // kept (a lock left held makes the next pod wait out the lease, 15 s, before
            // it does anything, a wait no swap hides), then start it again.
            freeze_operator(world).await?;
            tracing::info!("node {node} verified: starting the operator again");
            world.objects.scale(&operator_ref(), 1).await?;
        }
        self.running = true;
        Ok(())
    }

    /// Nothing to check: let the operator (frozen after a run) move the next nodes,
    /// after the pause.
    async fn run(&mut self, world: &World) -> anyhow::Result<()> {
        if self.running {
            return Ok(());
        }
        if self.moved_in_run > 0 && !world.options.pause.is_zero() {
            tracing::info!(
                "pausing {:.1} s before the operator moves the next node",
                world.options.pause.as_secs_f64()
            );
            tokio::time::sleep(world.options.pause).await;
        }
        run_operator(world, 1).await?;
        self.running = true;
        self.moved_in_run = 0;
        self.last_progress = Instant::now();
        Ok(())
    }

    /// A node passed its checks: the stall clock starts again.
    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    fn since_progress(&self) -> std::time::Duration {
        self.last_progress.elapsed()
    }
}

/// Aborts a spawned task when dropped (a `JoinHandle` dropped leaves its task running).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the guard of a node's check needs, owned: it runs on a task of its own.
struct Guard {
    objects: Objects,
    period: std::time::Duration,
    /// How long a freeze waits for the operator pod to go.
    timeout: std::time::Duration,
    node: String,
    checked: BTreeSet<String>,
    per_run: usize,
    in_flight: InFlight,
    /// Told each node relabelled past `node`, at every poll that sees it.
    on_moved: Box<dyn Fn(&str) + Send + Sync>,
}

/// While `g.node` is checked: keep `in_flight` to the nodes relabelled past it (each
/// told to `on_moved` as soon as it is seen), and
/// freeze the operator once there are `per_run` of them and a node is left for it to
/// move. Returns when told to stop (between polls, never in the middle of a freeze),
/// or with an error. Not when no node is left: after the last node the operator goes
/// straight on to its end, and a freeze landing between its writes there would leave
/// no DaemonSet selecting any node (see `follow`).
async fn hold_back(g: Guard, mut stop: tokio::sync::oneshot::Receiver<()>) -> anyhow::Result<()> {
    let node = g.node.as_str();
    // Nodes neither `node` nor checked nor on Fargate: (relabelled past `node`, any left).
    let open = |nodes: &[NodeState]| -> (BTreeSet<String>, bool) {
        let open = nodes
            .iter()
            .filter(|n| !n.fargate && n.name != node && !g.checked.contains(&n.name));
        let (past, left): (Vec<&NodeState>, Vec<&NodeState>) =
            open.partition(|n| n.label.as_deref() == Some(MIGRATED));
        (
            past.into_iter().map(|n| n.name.clone()).collect(),
            !left.is_empty(),
        )
    };
    let per_run = g.per_run;
    let mut frozen = false;
    let mut tick = crate::checks::every(g.period);
    loop {
        let (past, left) = open(&list_nodes(&g.objects).await?);
        let count = past.len();
        for n in &past {
            (g.on_moved)(n);
        }
        g.in_flight.set(past);
        if !frozen && count >= per_run && left {
            tracing::info!(
                "{count} node(s) moved past node {node} before it is verified: freezing the operator until it is"
            );
            stop_operator(&g.objects, g.period, g.timeout).await?;
            frozen = true;
            // The operator is stopped: what it moved meanwhile is final. More than
            // `per_run` means it outran the freeze (a swap faster than this poll):
            // the promise is broken, so stop and say so rather than go on.
            let (moved, _) = open(&list_nodes(&g.objects).await?);
            if moved.len() > per_run {
                bail!(
                    "the operator moved {} node(s) past node {node} before it could be stopped ({}), more than pacing.nodes_at_a_time ({per_run}); check those nodes first, or set a pause between nodes (`--pause-seconds`)",
                    moved.len(),
                    moved.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return Ok(()),
        }
    }
}

/// What the way forward has checked: each moved node probed through its swap, the
/// held connections after it, and a bounded round every `full_round_every` nodes.
struct NodeChecks {
    checked: BTreeSet<String>,
    since_round: usize,
    /// Bounded rounds run so far: the seed of the next one's sample.
    rounds: u64,
    held: Option<ConnPool>,
    /// Nodes relabelled past the node being checked (pipelined pacing).
    in_flight: InFlight,
    /// Watches started at a node's relabel, before its check (pipelined pacing).
    started: Started,
}

impl Drop for NodeChecks {
    /// A watch started for a node this run never got to would probe until its timeout.
    fn drop(&mut self) {
        abort_started(&self.started);
    }
}

impl NodeChecks {
    async fn check(&mut self, world: &World, node: &str) -> anyhow::Result<()> {
        let early = take_started(&self.started, node);
        if let Some(problem) =
            watch_swap(world, ID, node, CALICO_SYSTEM, &self.in_flight, early).await?
        {
            bail!("node {node}: {problem}");
        }
        if let Some(pool) = &self.held {
            check_held(world, ID, Way::Forward, pool, Some(node)).await?;
        }
        self.since_round += 1;
        if self.since_round >= world.options.full_round_every {
            // A full round is O(nodes) probes: one every K nodes would make the
            // takeover O(nodes²/K). A sample of the other nodes keeps the cost per
            // moved node flat; the full round comes after the last node.
            world
                .check_sampled_round(
                    ID,
                    &format!("after node {node}"),
                    self.rounds,
                    &self.in_flight.get(),
                )
                .await
                .map_err(|e| anyhow!("after node {node}: {e:#}"))?;
            self.rounds += 1;
            self.since_round = 0;
        }
        self.checked.insert(node.to_string());
        progress::set(self.checked.len() as u64);
        Ok(())
    }
}

/// Every node moved and checked. The operator finishes on its own: it removes the
/// kube-system install, then renders calico-system calico-node without the
/// migration nodeSelector (one more rolling restart of every node's agent, followed
/// like any other), then removes the node labels (verify-completion).
async fn finish(world: &World, running: bool, mut checks: NodeChecks) -> anyhow::Result<()> {
    // The rounds between nodes were samples: the full round comes now.
    if !checks.checked.is_empty() {
        world.check_round(ID, "after the last node moved").await?;
    }
    if !running {
        run_operator(world, 1).await?;
    }
    wait_until(
        world,
        "the operator to drop the migration nodeSelector of calico-system calico-node",
        world.options.node_ready_timeout,
        || async {
            if let Some(d) = current_degraded(world).await? {
                bail!("{d}");
            }
            Ok(match world.objects.get(&calico_system_node()).await? {
                Some(ds) if selects(&ds, MIGRATED) => Some(progressing_message(world).await),
                Some(_) => None,
                None => Some("no calico-system calico-node".into()),
            })
        },
    )
    .await?;
    let prober = world.prober().await?;
    follow_rollout(world, ID, &calico_system_node(), &prober).await?;
    if let Some(pool) = checks.held.take() {
        check_held(world, ID, Way::Forward, &pool, None).await?;
        pool.close().await;
    }
    Ok(())
}

/// Every non-Fargate node on a Ready calico-system agent (migrated, or the
/// kube-system DaemonSet gone). Returns the nodes that are not.
async fn not_taken_over(world: &World) -> anyhow::Result<(usize, Vec<String>)> {
    let nodes: Vec<NodeState> = list_nodes(&world.objects)
        .await?
        .into_iter()
        .filter(|n| !n.fargate)
        .collect();
    let agents = agents_ready(&world.objects, CALICO_SYSTEM).await?;
    let gone = world.objects.get(&kube_system_node()).await?.is_none();
    let missing = nodes
        .iter()
        .filter(|n| !(agents.contains(&n.name) && (gone || n.label.as_deref() == Some(MIGRATED))))
        .map(|n| n.name.clone())
        .collect();
    Ok((nodes.len(), missing))
}

/// The step.
pub struct Takeover;

impl Step<World> for Takeover {
    fn id(&self) -> &str {
        ID
    }

    fn title(&self) -> &str {
        "Follow the operator's node-by-node takeover"
    }

    fn capture<'a>(&'a self, world: &'a World) -> StepFuture<'a, Value> {
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

    fn ensure<'a>(&'a self, world: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let nodes = list_nodes(&world.objects)
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

    fn verify<'a>(&'a self, world: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            let (total, missing) = not_taken_over(world).await?;
            if missing.is_empty() {
                // The takeover leaves the operator running: it still has to remove the
                // kube-system install and finish (a crash may have left it frozen).
                match world.objects.get(&operator_ref()).await? {
                    Some(d) if kinds::is(&d, deployment_ready) => {}
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

    fn rollback<'a>(&'a self, world: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let pre: PreOperator = serde_json::from_value(saved.clone())
                .context("takeover's rollback data is not what this version wrote")?;
            return_to_kube_system(world, ID, &pre).await
        })
    }

    fn preview<'a>(&'a self, world: &'a World) -> StepFuture<'a, Vec<String>> {
        Box::pin(async move {
            let (_, missing) = not_taken_over(world).await?;
            Ok(missing
                .iter()
                .map(|n| format!("node {n}: follow the operator's relabel to `{MIGRATED}`, probe through the swap, then a check round"))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use serde_json::json;

    use super::{Guard, hold_back};
    use crate::checks::InFlight;
    use crate::cluster::objects::Objects;
    use crate::engine::RetryPolicy;
    use crate::migration::refs::{MIGRATED, MIGRATION_LABEL};
    use crate::sandbox::controllers::{self as sc, deploy_gvr, name, nodes_gvr};
    use crate::sandbox::{Sandbox, Subresource};

    fn replicas(sb: &Sandbox) -> i64 {
        sc::get(sb, &deploy_gvr(), "tigera-operator", "tigera-operator")
            .and_then(|d| d["spec"]["replicas"].as_i64())
            .expect("the operator's Deployment")
    }

    /// Four nodes, an operator Deployment at 1 replica (no controllers: no pod, so a
    /// freeze has nothing to wait for), and a guard of the first node's check with
    /// `migrated` nodes past it.
    fn rig(moved: usize) -> (Sandbox, Vec<String>) {
        let sb = sc::small_seeded_sandbox(4);
        for o in [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tigera-operator"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "tigera-operator", "namespace": "tigera-operator"},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"name": "tigera-operator"}},
                            "template": {"metadata": {"labels": {"name": "tigera-operator"}},
                                         "spec": {"containers": [{"name": "tigera-operator", "image": "quay.io/tigera/operator:v1.38.6"}]}}}}),
        ] {
            sb.load(vec![o]).expect("the object loads");
        }
        let mut nodes: Vec<String> = sc::list(&sb, &nodes_gvr(), None)
            .iter()
            .map(|n| name(n).to_string())
            .collect();
        nodes.sort();
        for n in &nodes[1..=moved] {
            sc::merge(
                &sb,
                &nodes_gvr(),
                "",
                n,
                Subresource::Main,
                &json!({"metadata": {"labels": {(MIGRATION_LABEL): MIGRATED}}}),
                "test",
            )
            .expect("the node is relabelled");
        }
        (sb, nodes)
    }

    fn guard(sb: &Sandbox, node: &str, in_flight: &InFlight, moved: &Moved) -> Guard {
        let moved = moved.clone();
        Guard {
            objects: Objects::new(sb.client(), RetryPolicy::default()),
            period: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            node: node.to_string(),
            checked: BTreeSet::new(),
            per_run: 1,
            in_flight: in_flight.clone(),
            on_moved: Box::new(move |n| {
                moved.lock().unwrap().insert(n.to_string());
            }),
        }
    }

    /// The nodes the guard said were relabelled past the checked one.
    type Moved = Arc<Mutex<BTreeSet<String>>>;

    /// The guard runs on a task of its own and freezes the operator once a node has
    /// moved past the one checked, while the checking task is busy (here it blocks its
    /// thread, as planning a round over a large cluster does), and tells that node on
    /// (its watch starts then); told to stop, it ends cleanly with the nodes in flight
    /// recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_guard_freezes_the_operator_while_the_check_is_busy() {
        let (sb, nodes) = rig(1);
        let in_flight = InFlight::default();
        let moved = Moved::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(hold_back(
            guard(&sb, &nodes[0], &in_flight, &moved),
            stopped,
        ));
        // The check's CPU-bound part: this task's thread does nothing else meanwhile.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(replicas(&sb), 0, "the operator was not frozen");
        assert_eq!(in_flight.get(), BTreeSet::from([nodes[1].clone()]));
        assert_eq!(*moved.lock().unwrap(), BTreeSet::from([nodes[1].clone()]));
        stop.send(()).expect("the guard still runs");
        task.await
            .expect("the guard's task")
            .expect("the guard ends without error");
    }

    /// Two nodes past the checked one when the guard first looks (the operator outran
    /// the freeze, with `nodes_at_a_time` 1): it freezes the operator and fails,
    /// naming them.
    #[tokio::test]
    async fn the_guard_stops_the_takeover_when_the_operator_outran_it() {
        let (sb, nodes) = rig(2);
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let guarded = hold_back(
            guard(&sb, &nodes[0], &InFlight::default(), &Moved::default()),
            stopped,
        );
        let e = tokio::time::timeout(Duration::from_secs(10), guarded)
            .await
            .expect("the guard ends on its own")
            .expect_err("two nodes moved past an unverified one");
        let text = e.to_string();
        assert!(
            text.contains("moved 2 node(s) past node")
                && text.contains(&nodes[1])
                && text.contains(&nodes[2]),
            "{text}"
        );
        assert_eq!(replicas(&sb), 0, "the operator was not frozen");
    }
}
