//! Pod lifecycle in place of a scheduler and kubelets: unbound pods are bound
//! to a node that fits them (chosen by a hash of their name, so runs repeat),
//! bound pods get `Pending` with hostIP and podIP (hostNetwork pods take the
//! node's IP, others a free secondary IP of the node's /18 subnet, as with the
//! VPC CNI), then `Running` and Ready once `pod_start_delay` simulated seconds
//! have passed. Pods bound to a node that no longer exists are deleted (pod GC).
//!
//! A calico-node or calico-typha pod becomes Ready only once the API server gives its
//! Calico version what it reads (`felix.rs`); until then it stays Running, not Ready,
//! with the line the agent would log in its Ready condition and a kubelet `Unhealthy`
//! Event, and it is looked at again every tick (as felix retries).
//!
//! Faults: `agent-not-ready:NODE` keeps a calico-system calico-node pod on NODE Running
//! but never Ready; `typha-stuck` leaves calico-system typha pods unschedulable
//! with the scheduler's host-port message (calico issue 6810).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::faults::ControllerFaults;
use super::felix::{Agent, Gates};
use super::{deleting, gvr, label, merge, name, namespace, pods_gvr, sched, wopts};
use crate::sandbox::scenario::net::{POD_BASE, SUBNET_SIZE};
use crate::sandbox::{Sandbox, Subresource};

const MANAGER: &str = "sandbox-kubelet";

/// How long pods take to turn Ready, in simulated seconds.
#[derive(Debug, Clone, Copy)]
pub struct StartDelays {
    /// From creation to Ready (to the containers' start for a probed calico-node pod).
    pub pod: f64,
    /// calico-node pods wait for their readiness probe's first success too (`readiness.rs`).
    pub agent_readiness_probe: bool,
}

impl StartDelays {
    /// From creation to Ready for this pod.
    fn of(&self, p: &Value) -> f64 {
        if self.agent_readiness_probe && is_calico_node(p) {
            self.pod + super::readiness::first_success_after_start(p)
        } else {
            self.pod
        }
    }

    /// From a readiness check that held an agent unready to the next one: one period
    /// of its own probe under the realistic timings (the kubelet's prober runs it on a
    /// `periodSeconds` ticker, kubernetes pkg/kubelet/prober/worker.go `run` at commit
    /// 00421113e1c6); the next tick otherwise. Either way a client's write between
    /// ticks never turns a held agent Ready before the clock moves, and the settle that
    /// holds it knows when to look again.
    fn reprobe_after(&self, p: &Value) -> f64 {
        if self.agent_readiness_probe {
            let container = if is_calico_node(p) {
                "calico-node"
            } else {
                "calico-typha"
            };
            super::readiness::period(p, container)
        } else {
            NEXT_TICK
        }
    }
}

/// A due time just past `now`: reached at the next tick, whatever its length, and
/// never by a settle between ticks (whose clock stands still).
const NEXT_TICK: f64 = 1e-6;

pub struct PodLifecycle {
    /// uid -> simulated time the pod becomes ready.
    ready_at: HashMap<String, f64>,
    /// Next pod address offset per /18 subnet.
    next_ip: HashMap<u32, u32>,
    /// What each Calico version's agents are refused, once per tick.
    gates: Gates,
    /// The earliest simulated time a pod waits for (its `ready_at`), as the last pass
    /// found it; infinite when none waits.
    next_due: f64,
    /// The pods the last pass found settled (see [`Settled`]), by the address of the
    /// store's shared copy.
    settled: HashMap<usize, Settled>,
}

/// A pod a pass found bound, addressed, Running and not held unready: nothing for the
/// lifecycle to do. The store shares an object until it is written (a write stores a
/// new copy), so while the pass's pod and node are these very copies, the next pass
/// would reach the same verdict from the same fields: it skips the pod instead of
/// reading them again. At hundreds of nodes, reading a dozen fields of every pod on
/// every pass was a third of the sandbox's CPU and kept its clock behind real time.
/// Holding the copies keeps their addresses from being reused. An optimisation with no
/// behaviour of its own, like the settle skip (`Controllers::settle`): a real kubelet
/// acts on the events of its own pods (kubernetes pkg/kubelet/kubelet.go `syncLoop`
/// reads pod updates from its config channel), not on every pod of the cluster.
struct Settled {
    pod: Arc<Value>,
    node: Arc<Value>,
    node_name: String,
    uid: String,
}

fn node_ip(n: &Value) -> Option<String> {
    n.pointer("/status/addresses")
        .and_then(Value::as_array)?
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .map(String::from)
}

/// Whether `pod` can never run on `node`: a Fargate node runs only the pod the Fargate
/// scheduler placed there (`spec.schedulerName: fargate-scheduler`; EKS user guide,
/// fargate.html: "Each pod that runs on Fargate has its own compute boundary" and
/// DaemonSets are not supported). A DaemonSet pod that tolerates the Fargate taint and
/// is not kept off by an affinity stays Pending there for ever (reported against real
/// clusters: aws/amazon-cloudwatch-agent-operator issue 183, kubernetes-sigs/
/// aws-efs-csi-driver issue 328, aws/aws-cdk issue 11609).
fn runs_nowhere_on(pod: &Value, node: &Value) -> bool {
    let fargate = label(node, crate::kinds::FARGATE_LABEL) == Some("fargate");
    fargate && pod.pointer("/spec/schedulerName").and_then(Value::as_str) != Some(FARGATE_SCHEDULER)
}

/// The scheduler name of the pods Fargate runs.
const FARGATE_SCHEDULER: &str = "fargate-scheduler";

/// Pending with PodScheduled False, reason Unschedulable, written once. Upstream leaves
/// such a pod unbound (the DaemonSet controller pins it by node affinity and the default
/// scheduler never binds it); the sandbox's DaemonSets bind by `spec.nodeName`, so it
/// shows the node, and the message is the sandbox's (docs/sandbox-behaviour.md).
fn hold_pending_on_fargate(sb: &Sandbox, p: &Value, node: &str) -> bool {
    let message = format!(
        "Fargate node {node} runs only pods placed by the {FARGATE_SCHEDULER}: this pod will not start there"
    );
    if p.pointer("/status/conditions/0/message")
        .and_then(Value::as_str)
        == Some(message.as_str())
    {
        return false;
    }
    let st = json!({"status": {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
        "lastProbeTime": null, "lastTransitionTime": crate::sandbox::apiserver::store::now()}]}});
    merge(
        sb,
        &pods_gvr(),
        namespace(p),
        name(p),
        Subresource::Status,
        &st,
        MANAGER,
    )
    .is_ok()
}

pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// calico-node pods of either install (kube-system chart or calico-system operator).
pub fn is_calico_node(p: &Value) -> bool {
    label(p, "k8s-app") == Some("calico-node")
        || label(p, "app.kubernetes.io/name") == Some("calico-node")
}

/// calico-typha pods of either install.
pub fn is_calico_typha(p: &Value) -> bool {
    label(p, "k8s-app") == Some("calico-typha")
        || label(p, "app.kubernetes.io/name") == Some("calico-typha")
}

fn is_operator_typha(p: &Value) -> bool {
    namespace(p) == "calico-system" && label(p, "k8s-app") == Some("calico-typha")
}

fn condition(t: &str, ok: bool) -> Value {
    json!({"type": t, "status": if ok { "True" } else { "False" }, "lastProbeTime": null,
           "lastTransitionTime": crate::sandbox::apiserver::store::now()})
}

/// A Ready/ContainersReady condition held False by the kubelet for a container
/// (kubernetes pkg/kubelet/status generate.go: reason `ContainersNotReady`, message
/// `containers with unready status: [NAME]`), followed by what the agent logs.
fn unready_condition(t: &str, container: &str, log: &str) -> Value {
    let mut c = condition(t, false);
    c["reason"] = json!("ContainersNotReady");
    c["message"] = json!(format!(
        "containers with unready status: [{container}]; its log says: {log}"
    ));
    c
}

/// The Ready condition's message, if any.
fn ready_message(p: &Value) -> Option<&str> {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["message"].as_str())
}

/// The kubelet's `Unhealthy` Event for a failed readiness probe (the probe's output
/// as the kubelet reports it: calico-node's `-felix-ready`, node/pkg/health/health.go:119
/// and :247 at v3.30.3; typha's httpGet /readiness), with the agent's log line.
fn record_unhealthy(sb: &Sandbox, p: &Value, agent: Agent, log: &str) {
    let probe = match agent {
        Agent::Node => {
            "calico/node is not ready: felix is not ready: readiness probe reporting 503"
        }
        Agent::Typha => "HTTP probe failed with statuscode: 503",
    };
    let (ns, pname) = (namespace(p), name(p));
    let message = format!("Readiness probe failed: {probe}; the container logs: {log}");
    let now = crate::sandbox::apiserver::store::now();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{pname}.{:016x}", fnv(&message)), "namespace": ns},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": pname,
                           "uid": super::uid(p),
                           "fieldPath": format!("spec.containers{{{}}}", agent.container())},
        "reason": "Unhealthy", "type": "Warning", "message": message,
        "source": {"component": "kubelet",
                   "host": p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default()},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        "reportingComponent": "kubelet",
    });
    // Already recorded (same pod, same message): nothing to add.
    let _ = sb
        .store()
        .create(&gvr("", "v1", "events"), ns, event, &wopts(MANAGER));
}

impl Default for PodLifecycle {
    fn default() -> Self {
        Self {
            ready_at: HashMap::new(),
            next_ip: HashMap::new(),
            gates: Gates::default(),
            next_due: f64::INFINITY,
            settled: HashMap::new(),
        }
    }
}

impl PodLifecycle {
    /// The earliest simulated time a pod turns Ready by the clock alone, as the last
    /// pass left it: until then, and while the store does not change, a pass finds
    /// nothing to do. Everything else a pass reads is in the store.
    pub fn next_due(&self) -> f64 {
        self.next_due
    }

    /// Start a new settle: what the agents' gates read may have changed.
    pub fn begin_settle(&mut self) {
        self.gates.forget();
    }

    fn allocate(&mut self, node_ip: &str, used: &HashSet<String>) -> String {
        let ip: Ipv4Addr = node_ip.parse().unwrap_or(Ipv4Addr::new(10, 0, 0, 10));
        let subnet = u32::from(ip) & !(SUBNET_SIZE - 1);
        // Past the seeded pods' first addresses, never in the nodes' range.
        let next = self.next_ip.entry(subnet).or_insert(4096);
        loop {
            let offset = *next % (SUBNET_SIZE - POD_BASE - 1);
            let cand = Ipv4Addr::from(subnet + POD_BASE + offset).to_string();
            *next += 1;
            if !used.contains(&cand) {
                return cand;
            }
        }
    }

    /// One pass; true if anything was written.
    pub fn reconcile(
        &mut self,
        sb: &Sandbox,
        nodes: &[Arc<Value>],
        pods: &[Arc<Value>],
        now: f64,
        delays: StartDelays,
        f: &ControllerFaults,
    ) -> bool {
        // Looked up once per pod and pass: hashed, not searched (node names share long
        // prefixes, which made the comparisons of an ordered map a visible cost).
        let node_arcs: HashMap<&str, &Arc<Value>> = nodes.iter().map(|n| (name(n), n)).collect();
        let nodes: HashMap<&str, &Value> = node_arcs.iter().map(|(k, n)| (*k, &***n)).collect();
        // The pod IPs in use, gathered when a pod first needs an address: most passes
        // place no pod.
        let mut used: Option<HashSet<String>> = None;
        let g = pods_gvr();
        let mut changed = false;
        self.next_due = f64::INFINITY;
        let mut was_settled = std::mem::take(&mut self.settled);
        // The uids of the pods not settled: with the settled ones', those whose start
        // times are still worth keeping.
        let mut unsettled: Vec<&str> = Vec::new();
        for p in pods {
            let key = Arc::as_ptr(p) as usize;
            if let Some(s) = was_settled.remove(&key)
                && Arc::ptr_eq(&s.pod, p)
                && node_arcs
                    .get(s.node_name.as_str())
                    .is_some_and(|n| Arc::ptr_eq(n, &s.node))
            {
                self.settled.insert(key, s);
                continue;
            }
            unsettled.push(super::uid(p));
            if deleting(p) {
                continue;
            }
            let (ns, pname, uid) = (namespace(p), name(p), super::uid(p));
            let phase = p
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let node_name = p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if node_name.is_empty() {
                changed |= self.schedule(sb, p, &nodes, f);
                continue;
            }
            let Some(node) = nodes.get(node_name) else {
                changed |= super::delete(sb, &g, ns, pname);
                continue;
            };
            if runs_nowhere_on(p, node) {
                changed |= hold_pending_on_fargate(sb, p, node_name);
                continue;
            }
            if p.pointer("/status/hostIP").is_none() {
                let host_ip = node_ip(node).unwrap_or_default();
                let host_network = p
                    .pointer("/spec/hostNetwork")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let used = used.get_or_insert_with(|| {
                    pods.iter()
                        .filter_map(|p| {
                            p.pointer("/status/podIP")
                                .and_then(Value::as_str)
                                .map(String::from)
                        })
                        .collect()
                });
                let pod_ip = if host_network {
                    host_ip.clone()
                } else {
                    self.allocate(&host_ip, used)
                };
                used.insert(pod_ip.clone());
                let status = json!({"status": {
                    "phase": "Pending",
                    "conditions": [condition("PodScheduled", true), condition("Initialized", true),
                                   condition("Ready", false), condition("ContainersReady", false)],
                    "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                    "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                    "startTime": crate::sandbox::apiserver::store::now(),
                    "qosClass": "BestEffort",
                }});
                changed |= merge(sb, &g, ns, pname, Subresource::Status, &status, MANAGER).is_ok();
                let due = now + delays.of(p);
                self.next_due = self.next_due.min(due);
                self.ready_at.insert(uid.to_string(), due);
                continue;
            }
            // The fault targets the operator's agent (the new one of the swap).
            let stuck = is_calico_node(p)
                && namespace(p) == "calico-system"
                && f.agent_not_ready.contains(node_name);
            // A Calico agent held unready (by the fault, or by what its version reads):
            // looked at again when its readiness probe runs next, as on a real cluster
            // the probe succeeds at its first run after the cause is fixed.
            let agent_pod = is_calico_node(p) || is_calico_typha(p);
            let held_unready = phase == "Running" && agent_pod && !super::pod_ready(p);
            if phase != "Pending" && !held_unready {
                if let Some(n) = node_arcs.get(node_name) {
                    self.settled.insert(
                        key,
                        Settled {
                            pod: p.clone(),
                            node: (*n).clone(),
                            node_name: node_name.to_string(),
                            uid: uid.to_string(),
                        },
                    );
                }
                continue;
            }
            let due = *self
                .ready_at
                .entry(uid.to_string())
                .or_insert(now + delays.of(p));
            if now + 1e-9 < due {
                self.next_due = self.next_due.min(due);
                continue;
            }
            let blocked = if stuck {
                None
            } else {
                self.gates.blocked(sb, now, p)
            };
            let ready = !stuck && blocked.is_none();
            if !ready {
                let next = now + delays.reprobe_after(p);
                self.next_due = self.next_due.min(next);
                self.ready_at.insert(uid.to_string(), next);
            }
            // Its startup's writes come before felix runs (`startup.rs`).
            if ready && is_calico_node(p) {
                changed |= super::startup::ensure_default_config(sb, p);
            }
            if held_unready && !ready {
                let log = blocked.as_ref().map(|(agent, log)| {
                    unready_condition("Ready", agent.container(), log)["message"].clone()
                });
                // Unchanged reason: nothing to write.
                if ready_message(p) == log.as_ref().and_then(Value::as_str) {
                    continue;
                }
            }
            let unready_container = blocked.as_ref().map(|(a, _)| a.container());
            let containers: Vec<Value> = p.pointer("/spec/containers").and_then(Value::as_array)
                .map(Vec::as_slice).unwrap_or_default().iter().map(|c| json!({
                    "name": c["name"], "image": c["image"],
                    "ready": !stuck && unready_container.is_none_or(|u| c["name"] != u),
                    "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": crate::sandbox::apiserver::store::now()}},
                })).collect();
            let (ready_c, containers_c) = match &blocked {
                Some((agent, log)) => (
                    unready_condition("Ready", agent.container(), log),
                    unready_condition("ContainersReady", agent.container(), log),
                ),
                None => (
                    condition("Ready", ready),
                    condition("ContainersReady", ready),
                ),
            };
            let status = json!({"status": {
                "phase": "Running",
                "conditions": [condition("PodScheduled", true), condition("Initialized", true),
                               ready_c, containers_c],
                "containerStatuses": containers,
            }});
            if let Some((agent, log)) = &blocked {
                record_unhealthy(sb, p, *agent, log);
            }
            changed |= merge(sb, &g, ns, pname, Subresource::Status, &status, MANAGER).is_ok();
        }
        let live: HashSet<&str> = self
            .settled
            .values()
            .map(|s| s.uid.as_str())
            .chain(unsettled)
            .collect();
        self.ready_at.retain(|u, _| live.contains(u.as_str()));
        changed
    }

    fn schedule(
        &mut self,
        sb: &Sandbox,
        p: &Value,
        nodes: &HashMap<&str, &Value>,
        f: &ControllerFaults,
    ) -> bool {
        let spec = p.get("spec").cloned().unwrap_or_else(|| json!({}));
        // The default scheduler never binds to a Fargate node (only the Fargate
        // scheduler's pods run there, [`runs_nowhere_on`]). By name, so the pick below
        // is the same on every run.
        let mut fit: Vec<&&str> = nodes
            .iter()
            .filter(|(_, n)| !deleting(n) && sched::fits(&spec, n) && !runs_nowhere_on(p, n))
            .map(|(k, _)| k)
            .collect();
        fit.sort();
        let g = pods_gvr();
        let (ns, pname) = (namespace(p), name(p));
        let unschedulable = |msg: String| {
            json!({"status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg,
                "lastProbeTime": null, "lastTransitionTime": crate::sandbox::apiserver::store::now()}]}})
        };
        let status = if f.typha_stuck && is_operator_typha(p) {
            Some(unschedulable(format!(
                "0/{} nodes are available: {} node(s) didn't have free ports for the requested pod ports.",
                nodes.len(),
                nodes.len()
            )))
        } else if fit.is_empty() {
            Some(unschedulable(format!(
                "0/{} nodes are available: {} node(s) didn't match Pod's node affinity/selector.",
                nodes.len(),
                nodes.len()
            )))
        } else {
            None
        };
        if let Some(st) = status {
            let same = p.pointer("/status/conditions/0/message")
                == st.pointer("/status/conditions/0/message");
            return !same && merge(sb, &g, ns, pname, Subresource::Status, &st, MANAGER).is_ok();
        }
        let pick = fit[(fnv(&format!("{ns}/{pname}")) % fit.len() as u64) as usize];
        merge(
            sb,
            &g,
            ns,
            pname,
            Subresource::Main,
            &json!({"spec": {"nodeName": pick}}),
            "sandbox-scheduler",
        )
        .is_ok()
    }
}
