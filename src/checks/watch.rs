//! Probe one node continuously while its Calico agent is swapped: every pass runs the
//! probes where the node is source or destination (judged with the prober's recent
//! plan; a failure is judged again with policies read afresh, since they may change),
//! and the longest time between two passes that verified
//! enforcement is recorded. It ends once `done` has resolved and a pass verifies, or
//! at `max` (then `verified_at_end` is false).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::outcome::{Failure, ResultClass, RoundReport, compare};
use super::plan::{Expected, Probe, RoundPlan, probes_touching};
use super::round::{CheckError, Prober};

/// What continuous probing of one node saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeWatch {
    pub node: String,
    pub passes: u32,
    pub failed_passes: u32,
    /// Probes run over all passes (what the watch cost, for the benches).
    #[serde(default)]
    pub probes: u32,
    /// Longest time without a verifying pass (from the start, between passes, to the end).
    pub longest_unverified_ms: u64,
    /// How long the node was watched, first pass to last.
    #[serde(default)]
    pub millis: u64,
    /// Passes that ended before the node's new agent was seen Ready (its readiness is
    /// polled during each pass): 0 means the watch began after the swap, or in its
    /// last moment, and saw only its end.
    #[serde(default)]
    pub passes_before_ready: u32,
    pub verified_at_end: bool,
    /// The failures of the last failing pass (empty when none failed).
    pub last_failures: Vec<Failure>,
}

impl NodeWatch {
    /// The nodes the last failing pass blames and a few of its pairs, for messages.
    pub fn failure_summary(&self, pairs: usize) -> String {
        let mut nodes: Vec<&str> = self.last_failures.iter().map(|f| f.node.as_str()).collect();
        nodes.sort();
        nodes.dedup();
        let shown: Vec<String> = self
            .last_failures
            .iter()
            .take(pairs)
            .map(|f| {
                format!(
                    "{} -> {}:{} expected {:?}, observed {:?}",
                    f.from, f.to, f.port, f.expected, f.observed
                )
            })
            .collect();
        format!(
            "failing on node(s) {}: {}",
            nodes.join(", "),
            shown.join("; ")
        )
    }
}

/// Nodes whose agent is being replaced while another node is watched (the operator
/// moves the next node while the last one is checked): a probe with one of them at
/// the other end says nothing about the watched node, and that node's own watch
/// covers it. Shared with whoever follows the operator, which updates it.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<BTreeSet<String>>>);

impl InFlight {
    pub fn set(&self, nodes: BTreeSet<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = nodes;
    }

    pub fn get(&self) -> BTreeSet<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One pass over the probes touching `node` and no node in flight, judged with
/// `plan`: the report and how many probes ran.
async fn pass(
    prober: &Prober,
    plan: &RoundPlan,
    node: &str,
    in_flight: &BTreeSet<String>,
) -> (RoundReport, usize) {
    let other_end_moving = |p: &Probe| {
        let other = if p.src_node == node {
            p.dst_node.as_deref()
        } else {
            Some(p.src_node.as_str())
        };
        other.is_some_and(|o| o != node && in_flight.contains(o))
    };
    let probes: Vec<Probe> = probes_touching(plan, node)
        .into_iter()
        .filter(|p| !other_end_moving(p))
        .cloned()
        .collect();
    let records = prober.execute(&probes).await;
    let mut sub = RoundPlan {
        probes: Vec::new(),
        nodes: vec![node.to_string()],
        unplanned: plan.unplanned.clone(),
    };
    sub.unplanned.retain(|u| u.node == node);
    (compare(&sub, records, 0), probes.len())
}

/// The pace of a polling loop: a tick every `period` counted from the last tick, not
/// from when the last poll returned, so a wait sends the same requests per second
/// however long the API server takes to answer them (a poll slower than `period` is
/// followed by the next at once, never by two). The first tick is one period away:
/// poll, then `tick().await`.
pub fn every(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Run `work` to its end while driving `done` too, and note when it resolves. A pass
/// that outlasts the interval is followed at once by the next, so `done` (a readiness
/// poll: a request that progresses only while polled) would otherwise wait for a pause
/// between passes that never comes, and the watch would run passes after the agent was
/// Ready without seeing it.
async fn alongside<T>(
    work: impl Future<Output = T>,
    done: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    finished: &mut bool,
) -> T {
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = done.as_mut(), if !*finished => *finished = true,
        }
    }
}

/// Probe `node` every `interval` until `done` resolves and a pass verifies, or `max`.
/// Passes judge with the prober's recent plan; a pass that fails with it is run again
/// with a plan made afresh, and only that one counts (policies may have changed).
pub async fn watch_node(
    prober: &Prober,
    node: &str,
    in_flight: &InFlight,
    done: impl Future<Output = ()>,
    interval: Duration,
    max: Duration,
) -> Result<NodeWatch, CheckError> {
    let start = Instant::now();
    let mut last_verified = start;
    let mut out = NodeWatch {
        node: node.to_string(),
        ..NodeWatch::default()
    };
    let mut done = std::pin::pin!(done);
    let mut finished = false;
    let mut tick = every(interval);
    loop {
        let moving = in_flight.get();
        let plan = prober.recent_plan().await?;
        let (mut report, mut ran) =
            alongside(pass(prober, &plan, node, &moving), &mut done, &mut finished).await;
        out.probes += ran as u32;
        if !report.passed {
            let fresh = prober.plan().await?;
            (report, ran) = alongside(
                pass(prober, &fresh, node, &moving),
                &mut done,
                &mut finished,
            )
            .await;
            out.probes += ran as u32;
        }
        let now = Instant::now();
        out.passes += 1;
        out.passes_before_ready += u32::from(!finished);
        let ok = report.passed && ran > 0;
        // The node's own enforcement is verified when no failure is decided there: a
        // pair failing on another node (a lapse elsewhere) is that node's window.
        let own_ok = ran > 0 && report.failures.iter().all(|f| f.node != node);
        // A pair the policies block that reached its destination (connected, or
        // refused by it) is a lapse: no reason to wait.
        let lapse = report.failures.iter().any(|f| {
            f.expected == Expected::Blocked
                && matches!(f.observed, ResultClass::Allowed | ResultClass::Refused)
        });
        if own_ok {
            out.longest_unverified_ms = out
                .longest_unverified_ms
                .max((now - last_verified).as_millis() as u64);
            last_verified = now;
        }
        if !ok {
            out.failed_passes += 1;
            out.last_failures = report.failures;
        }
        if !finished {
            finished = futures::poll!(done.as_mut()).is_ready();
        }
        if (finished && ok) || lapse || now - start >= max {
            out.verified_at_end = ok;
            out.millis = (now - start).as_millis() as u64;
            if !own_ok {
                out.longest_unverified_ms = out
                    .longest_unverified_ms
                    .max((now - last_verified).as_millis() as u64);
            }
            return Ok(out);
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut done, if !finished => { finished = true; }
        }
    }
}

/// Resolves once a calico-node pod (label `k8s-app=calico-node`, the operator's, or
/// `app.kubernetes.io/name=calico-node`, the aws-calico chart's) in `namespace`
/// (`calico-system` for the operator's agent) on `node` is Ready: the usual `done` for [`watch_node`] during a
/// takeover. Polls every `period`; API errors are logged and polled again.
pub async fn agent_ready(client: &kube::Client, namespace: &str, node: &str, period: Duration) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let is_agent = |p: &Pod| {
        p.metadata.labels.as_ref().is_some_and(|l| {
            ["k8s-app", "app.kubernetes.io/name"]
                .iter()
                .any(|k| l.get(*k).map(String::as_str) == Some("calico-node"))
        })
    };
    let mut tick = every(period);
    loop {
        match pods.list(&lp).await {
            Ok(list) => {
                let ready = list.items.iter().filter(|p| is_agent(p)).any(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                });
                if ready {
                    return;
                }
            }
            Err(e) => tracing::warn!("reading calico-node on {node}: {e}; trying again"),
        }
        tick.tick().await;
    }
}

#[cfg(test)]
mod tests {
    use super::every;
    use std::time::Duration;
    use tokio::time::{Instant, sleep};

    #[tokio::test(start_paused = true)]
    async fn polls_start_a_period_apart_whatever_a_poll_takes() {
        let start = Instant::now();
        let at = || start.elapsed().as_millis();
        let mut tick = every(Duration::from_millis(100));
        // A fast poll: the next starts a period after the last one started.
        sleep(Duration::from_millis(10)).await;
        tick.tick().await;
        assert_eq!(at(), 100);
        // A poll slower than the period: the next starts at once, and only one.
        sleep(Duration::from_millis(250)).await;
        tick.tick().await;
        assert_eq!(at(), 350);
        sleep(Duration::from_millis(10)).await;
        tick.tick().await;
        assert_eq!(at(), 450);
    }
}
