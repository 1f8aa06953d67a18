//! The data plane's incremental view of the cluster: pods, namespaces, policy
//! objects and nodes mirrored from the store's change feed, which agent enforces
//! on each node, and the policy indexes the probes use (built lazily, cached per
//! policy generation and pod-set version, never per probe).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::faults::DataPlaneFaults;
use super::monitor::{DivergenceReason, Monitor};
use crate::policy::{ClusterModel, InputError, Origin, PolicyIndex, Protocol};
use crate::sandbox::faults::{FaultKnobs, NAMESPACE as FAULT_NAMESPACE};
use crate::sandbox::{EventType, GroupResource, WatchEvent};

/// Namespaces whose `calico-node` DaemonSet pods are Calico agents: the manifest
/// install (aws-calico chart) and the operator's.
pub const AGENT_NAMESPACES: [&str; 2] = ["kube-system", "calico-system"];

pub type PodKey = (String, String);

/// What the data plane needs of a pod.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub uid: String,
    pub node: Option<String>,
    pub ip: Option<IpAddr>,
    pub host_network: bool,
    pub phase: String,
    pub ready: bool,
    /// `Some(namespace)` for a calico-node agent pod.
    pub agent: Option<String>,
    pub containers: Vec<String>,
    /// Declared container ports: what the pod listens on.
    pub listens: Vec<(u16, Protocol)>,
    /// The pod as read, shared with where it was read from: a held connection's source
    /// is read at each of its echoes, and a copy per echo was a tenth of the sandbox's
    /// CPU in a 500-node takeover.
    pub object: Arc<Value>,
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn is_agent(pod: &Value, ns: &str) -> bool {
    if !AGENT_NAMESPACES.contains(&ns) {
        return false;
    }
    let owned = pod
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| s(r, "/kind") == "DaemonSet" && s(r, "/name") == "calico-node")
        });
    let labelled = s(pod, "/metadata/labels/k8s-app") == "calico-node"
        || s(pod, "/metadata/labels/app.kubernetes.io~1name") == "calico-node";
    owned || labelled
}

impl PodInfo {
    pub fn from_value(ns: &str, object: Arc<Value>) -> PodInfo {
        let pod = &*object;
        let ready = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True")
            });
        let mut containers = Vec::new();
        let mut listens = Vec::new();
        for c in pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            containers.push(s(c, "/name").to_string());
            for p in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let port = p.get("containerPort").and_then(Value::as_u64);
                let proto =
                    Protocol::parse(p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"));
                if let (Some(port), Some(proto)) = (port.and_then(|n| u16::try_from(n).ok()), proto)
                {
                    listens.push((port, proto));
                }
            }
        }
        let node = Some(s(pod, "/spec/nodeName")).filter(|n| !n.is_empty());
        PodInfo {
            uid: s(pod, "/metadata/uid").to_string(),
            node: node.map(str::to_string),
            ip: s(pod, "/status/podIP").parse().ok(),
            host_network: pod
                .pointer("/spec/hostNetwork")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            phase: s(pod, "/status/phase").to_string(),
            ready,
            agent: is_agent(pod, ns).then(|| ns.to_string()),
            containers,
            listens,
            object,
        }
    }

    /// A pod with a workload endpoint that Calico enforces policy for.
    pub fn is_workload(&self) -> bool {
        !self.host_network
            && self.ip.is_some()
            && self.phase != "Succeeded"
            && self.phase != "Failed"
    }
}

/// The policy objects in force at some moment (current, or frozen on a node).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub objects: BTreeMap<String, Value>,
    /// XOR of per-object hashes of what matters (kind, identity, spec): equal sets, equal prints.
    pub fingerprint: u64,
    /// Bumped on every change; names the set in the index cache.
    pub generation: u64,
}

fn object_hash(key: &str, obj: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    obj.get("spec").map(Value::to_string).hash(&mut h);
    obj.pointer("/metadata/labels")
        .map(Value::to_string)
        .hash(&mut h);
    h.finish()
}

/// Whether a resource holds policy objects the engine reads.
fn policy_resource(gr: &GroupResource) -> bool {
    match gr.group.as_str() {
        "networking.k8s.io" => gr.resource == "networkpolicies",
        "crd.projectcalico.org" | "projectcalico.org" => matches!(
            gr.resource.as_str(),
            "networkpolicies" | "globalnetworkpolicies" | "globalnetworksets" | "tiers"
        ),
        _ => false,
    }
}

/// Which agent enforces on a node.
#[derive(Debug, Clone)]
pub enum Enforcer {
    /// A Ready calico-node (namespace kube-system or calico-system) programs current policies.
    Agent {
        namespace: String,
        pod: String,
        uid: String,
    },
    /// The last agent went away; its rules stay, frozen, for the pods it had programmed.
    Frozen {
        from: String,
        policies: Arc<PolicySet>,
        programmed: HashSet<String>,
    },
    /// No agent has programmed this node: workload pods fail closed.
    None,
}

#[derive(Debug, Clone)]
pub struct NodeState {
    pub enforcer: Enforcer,
    pub since: Timestamp,
}

/// One node's enforcement, as reported to clients.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    /// `kube-system`, `calico-system`, `frozen` or `none`.
    pub enforcer: String,
    /// For an agent, its pod; for frozen rules, the namespace of the agent that left them.
    pub agent: Option<String>,
    pub since: Timestamp,
    pub lapse: bool,
    pub agent_blocked: bool,
    pub fail_closed_pods: usize,
    pub stale_rules: bool,
}

/// How one side of a probe is enforced.
pub enum Side {
    AllowAll,
    Drop,
    Policies(Arc<PolicySet>),
}

pub struct World {
    pub pods: HashMap<PodKey, PodInfo>,
    by_node: HashMap<String, BTreeSet<PodKey>>,
    by_ip: HashMap<IpAddr, PodKey>,
    /// Namespaces and pods parsed for the policy engine once per change (not per rebuild);
    /// values the engine refuses are kept as errors.
    namespaces: BTreeMap<String, Result<crate::policy::Namespace, InputError>>,
    model_pods: BTreeMap<PodKey, Result<crate::policy::Pod, InputError>>,
    pub node_ips: HashMap<IpAddr, String>,
    /// Services by (namespace, name), for DNS names and ClusterIPs (kube-proxy's DNAT).
    pub services: BTreeMap<PodKey, Value>,
    service_ips: HashMap<IpAddr, PodKey>,
    pub policies: Arc<PolicySet>,
    pods_version: u64,
    pub nodes: BTreeMap<String, NodeState>,
    /// Fargate nodes (label `eks.amazonaws.com/compute-type=fargate`): no Calico agent
    /// ever runs there (EKS: DaemonSets are not supported on Fargate), so no policy
    /// is enforced on their pods and the monitor expects none.
    pub fargate: BTreeSet<String>,
    pub faults: DataPlaneFaults,
    /// `agent-not-ready` nodes of the controllers' ConfigMap.
    controller_blocked: BTreeSet<String>,
    pub monitor: Monitor,
    indexes: HashMap<u64, (u64, Arc<PolicyIndex>)>,
    /// Objects the engine refused (skipped), with why.
    pub policy_errors: BTreeMap<String, String>,
    pub dirty: bool,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> World {
        World {
            pods: HashMap::new(),
            by_node: HashMap::new(),
            by_ip: HashMap::new(),
            namespaces: BTreeMap::new(),
            model_pods: BTreeMap::new(),
            node_ips: HashMap::new(),
            services: BTreeMap::new(),
            service_ips: HashMap::new(),
            policies: Arc::new(PolicySet::default()),
            pods_version: 0,
            nodes: BTreeMap::new(),
            fargate: BTreeSet::new(),
            faults: DataPlaneFaults::default(),
            controller_blocked: BTreeSet::new(),
            monitor: Monitor::default(),
            indexes: HashMap::new(),
            policy_errors: BTreeMap::new(),
            dirty: true,
        }
    }

    /// Replace every mirrored object (start, or after the change feed lagged); node
    /// states and the monitor's history are kept and re-derived.
    pub fn reset(&mut self, objects: Vec<(GroupResource, Value)>, faults: DataPlaneFaults) {
        let (nodes, monitor) = (
            std::mem::take(&mut self.nodes),
            std::mem::take(&mut self.monitor),
        );
        let policies_before = self.policies.clone();
        *self = World::new();
        self.nodes = nodes;
        self.monitor = monitor;
        self.faults = faults;
        let mut set = PolicySet {
            generation: policies_before.generation + 1,
            ..Default::default()
        };
        for (gr, obj) in objects {
            if policy_resource(&gr) {
                let key = policy_key(&gr, &obj);
                set.fingerprint ^= object_hash(&key, &obj);
                set.objects.insert(key, obj);
            } else {
                self.upsert(&gr, &obj);
            }
        }
        self.pods_version += 1;
        self.policies = if set.fingerprint == policies_before.fingerprint {
            policies_before
        } else {
            Arc::new(set)
        };
        // Agents already Ready when the data plane starts (or re-reads the store) enforce,
        // whatever the faults: `agent-not-ready` only stops new ones.
        let now = Timestamp::now();
        let mut names: BTreeSet<String> = self.nodes.keys().cloned().collect();
        names.extend(self.by_node.keys().cloned());
        for n in names {
            let first_sight = self
                .nodes
                .get(&n)
                .is_none_or(|s| matches!(s.enforcer, Enforcer::None));
            self.reconcile_with(&n, now, first_sight);
        }
    }

    fn upsert(&mut self, gr: &GroupResource, obj: &Value) {
        let ns = s(obj, "/metadata/namespace").to_string();
        let name = s(obj, "/metadata/name").to_string();
        match (gr.group.as_str(), gr.resource.as_str()) {
            ("", "pods") => {
                self.remove_pod(&(ns.clone(), name.clone()));
                let info = PodInfo::from_value(&ns, Arc::new(obj.clone()));
                let key = (ns, name);
                if let Some(n) = &info.node {
                    self.by_node
                        .entry(n.clone())
                        .or_default()
                        .insert(key.clone());
                }
                if let (Some(ip), false) = (info.ip, info.host_network) {
                    self.by_ip.insert(ip, key.clone());
                }
                if info.ip.is_some() {
                    let parsed = parse_one(obj, &format!("pod {}/{}", key.0, key.1))
                        .map(|m| m.pods.into_iter().next());
                    if let Some(p) = parsed.transpose() {
                        self.model_pods.insert(key.clone(), p);
                    }
                }
                self.pods.insert(key, info);
            }
            ("", "namespaces") => {
                let parsed = parse_one(obj, &format!("namespace {name}"))
                    .map(|m| m.namespaces.into_iter().next());
                match parsed.transpose() {
                    Some(n) => self.namespaces.insert(name, n),
                    None => self.namespaces.remove(&name),
                };
                self.pods_version += 1;
            }
            ("", "services") => {
                let key = (ns, name);
                self.service_ips.retain(|_, k| *k != key);
                if let Ok(ip) = s(obj, "/spec/clusterIP").parse::<IpAddr>() {
                    self.service_ips.insert(ip, key.clone());
                }
                self.services.insert(key, obj.clone());
            }
            ("", "nodes") => {
                self.node_ips.retain(|_, n| *n != name);
                for a in obj
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Ok(ip) = s(a, "/address").parse::<IpAddr>() {
                        self.node_ips.insert(ip, name.clone());
                    }
                }
                if obj.pointer("/metadata/labels/eks.amazonaws.com~1compute-type")
                    == Some(&Value::from("fargate"))
                {
                    self.fargate.insert(name.clone());
                } else {
                    self.fargate.remove(&name);
                }
                self.nodes.entry(name).or_insert_with(|| NodeState {
                    enforcer: Enforcer::None,
                    since: Timestamp::now(),
                });
            }
            ("", "configmaps") if ns == FAULT_NAMESPACE && name == super::faults::CONFIGMAP => {
                match DataPlaneFaults::from_data(obj.get("data")) {
                    Ok(f) => self.faults = f,
                    Err(e) => tracing::warn!("data-plane faults ignored: {e}"),
                }
            }
            ("", "configmaps")
                if ns == FAULT_NAMESPACE && name == super::faults::CONTROLLER_CONFIGMAP =>
            {
                self.controller_blocked = super::faults::controller_blocked(obj.get("data"));
            }
            _ => {}
        }
    }

    fn remove_pod(&mut self, key: &PodKey) -> Option<PodInfo> {
        let old = self.pods.remove(key)?;
        self.model_pods.remove(key);
        // The caller bumps `pods_version` if what the policy engine sees changed.
        if let Some(n) = &old.node
            && let Some(set) = self.by_node.get_mut(n)
        {
            set.remove(key);
        }
        if let Some(ip) = old.ip
            && self.by_ip.get(&ip) == Some(key)
        {
            self.by_ip.remove(&ip);
        }
        Some(old)
    }

    /// Apply one change from the store's feed; re-derive the nodes it touches.
    pub fn apply(&mut self, ev: &WatchEvent) {
        let now = Timestamp::now();
        let gr = &ev.gr;
        if policy_resource(gr) {
            let key = policy_key(gr, &ev.object);
            let set = Arc::make_mut(&mut self.policies);
            if let Some(old) = set.objects.remove(&key) {
                set.fingerprint ^= object_hash(&key, &old);
            }
            if ev.kind != EventType::Deleted {
                set.fingerprint ^= object_hash(&key, &ev.object);
                set.objects.insert(key, ev.object.clone());
            }
            set.generation += 1;
            self.dirty = true;
            let frozen: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, st)| matches!(st.enforcer, Enforcer::Frozen { .. }))
                .map(|(n, _)| n.clone())
                .collect();
            for n in frozen {
                self.reconcile(&n, now);
            }
            return;
        }
        let mut touched: BTreeSet<String> = BTreeSet::new();
        match (gr.group.as_str(), gr.resource.as_str()) {
            ("", "pods") => {
                let key = (ev.namespace.clone(), ev.name.clone());
                let before = self.model_pods.get(&key).cloned();
                if let Some(old) = self.remove_pod(&key) {
                    touched.extend(old.node);
                }
                if ev.kind != EventType::Deleted {
                    self.upsert(gr, &ev.object);
                    touched.extend(self.pods.get(&key).and_then(|p| p.node.clone()));
                }
                // Status-only updates (readiness, conditions) keep the cached indexes.
                if self.model_pods.get(&key) != before.as_ref() {
                    self.pods_version += 1;
                }
                self.dirty = true;
            }
            ("", "namespaces") => {
                if ev.kind == EventType::Deleted {
                    self.namespaces.remove(&ev.name);
                    self.pods_version += 1;
                } else {
                    self.upsert(gr, &ev.object);
                }
                self.dirty = true;
            }
            ("", "services") => {
                if ev.kind == EventType::Deleted {
                    let key = (ev.namespace.clone(), ev.name.clone());
                    self.service_ips.retain(|_, k| *k != key);
                    self.services.remove(&key);
                } else {
                    self.upsert(gr, &ev.object);
                }
            }
            ("", "nodes") => {
                if ev.kind == EventType::Deleted {
                    self.node_ips.retain(|_, n| *n != ev.name);
                    self.nodes.remove(&ev.name);
                    self.fargate.remove(&ev.name);
                    self.monitor.report(&ev.name, &BTreeMap::new(), now);
                } else {
                    self.upsert(gr, &ev.object);
                    touched.insert(ev.name.clone());
                }
            }
            ("", "configmaps")
                if ev.namespace == FAULT_NAMESPACE
                    && [
                        super::faults::CONFIGMAP,
                        super::faults::CONTROLLER_CONFIGMAP,
                    ]
                    .contains(&ev.name.as_str()) =>
            {
                let before = (self.faults.clone(), self.controller_blocked.clone());
                if ev.kind == EventType::Deleted {
                    if ev.name == super::faults::CONFIGMAP {
                        self.faults = DataPlaneFaults::default();
                    } else {
                        self.controller_blocked.clear();
                    }
                } else {
                    self.upsert(gr, &ev.object);
                }
                for set in [
                    &before.0.lapse,
                    &before.0.agent_not_ready,
                    &before.1,
                    &self.faults.lapse,
                    &self.faults.agent_not_ready,
                    &self.controller_blocked,
                ] {
                    touched.extend(set.iter().cloned());
                }
            }
            _ => {}
        }
        for n in touched {
            self.reconcile(&n, now);
        }
    }

    fn pods_on(&self, node: &str) -> impl Iterator<Item = &PodInfo> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| self.pods.get(k))
    }

    /// Which agent enforces on `node` now; then report its divergences to the monitor.
    pub fn reconcile(&mut self, node: &str, now: Timestamp) {
        self.reconcile_with(node, now, false);
    }

    /// `adopt`: take a Ready agent even on an `agent-not-ready` node (it was there first).
    fn reconcile_with(&mut self, node: &str, now: Timestamp, adopt: bool) {
        let agents: Vec<&PodInfo> = self
            .pods_on(node)
            .filter(|p| p.agent.is_some() && p.ready && p.phase == "Running")
            .collect();
        let blocked = !adopt && self.agent_blocked(node);
        let state = self.nodes.get(node).cloned().unwrap_or(NodeState {
            enforcer: Enforcer::None,
            since: now,
        });
        let current = match &state.enforcer {
            Enforcer::Agent { uid, .. } => Some(uid.as_str()),
            _ => None,
        };
        // The enforcing agent stays while Ready; a new one takes over only once Ready
        // (in sync) and not blocked by `agent-not-ready`. The operator's wins a tie.
        let chosen = agents
            .iter()
            .find(|a| Some(a.uid.as_str()) == current)
            .or_else(|| {
                if blocked {
                    None
                } else {
                    agents
                        .iter()
                        .find(|a| a.agent.as_deref() == Some("calico-system"))
                        .or(agents.first())
                }
            });
        let next = match (chosen, &state.enforcer) {
            (Some(a), Enforcer::Agent { uid, .. }) if *uid == a.uid => None,
            (Some(a), _) => Some(Enforcer::Agent {
                namespace: a.agent.clone().unwrap_or_default(),
                pod: s(&a.object, "/metadata/name").to_string(),
                uid: a.uid.clone(),
            }),
            (None, Enforcer::Agent { namespace, .. }) => Some(Enforcer::Frozen {
                from: namespace.clone(),
                policies: self.policies.clone(),
                programmed: self
                    .pods_on(node)
                    .filter(|p| p.is_workload())
                    .map(|p| p.uid.clone())
                    .collect(),
            }),
            (None, _) => None,
        };
        let state = match next {
            Some(enforcer) => NodeState {
                enforcer,
                since: now,
            },
            None => state,
        };
        self.nodes.insert(node.to_string(), state);
        let reasons = self.divergences(node);
        self.monitor.report(node, &reasons, now);
    }

    /// How `node`'s enforcement differs from what the current policies require.
    pub fn divergences(&self, node: &str) -> BTreeMap<DivergenceReason, String> {
        let mut out = BTreeMap::new();
        if self.faults.lapse.contains(node) {
            out.insert(
                DivergenceReason::Lapse,
                format!("fault lapse:{node}: enforcement lapsed to allow-all"),
            );
        }
        let Some(state) = self.nodes.get(node) else {
            return out;
        };
        if self.fargate.contains(node) {
            // Nothing of Calico's runs on a Fargate node: nothing to diverge from.
            return BTreeMap::new();
        }
        match &state.enforcer {
            Enforcer::Agent { .. } => {}
            Enforcer::None => {
                let n = self.pods_on(node).filter(|p| p.is_workload()).count();
                if n > 0 {
                    out.insert(
                        DivergenceReason::NoAgent,
                        format!("no calico-node has programmed the node; {n} pods fail closed"),
                    );
                }
            }
            Enforcer::Frozen {
                from,
                policies,
                programmed,
            } => {
                if policies.fingerprint != self.policies.fingerprint {
                    out.insert(
                        DivergenceReason::StaleRules,
                        format!(
                            "rules frozen when the {from} calico-node left; policies changed since"
                        ),
                    );
                }
                let n = self
                    .pods_on(node)
                    .filter(|p| p.is_workload() && !programmed.contains(&p.uid))
                    .count();
                if n > 0 {
                    out.insert(
                        DivergenceReason::FailClosed,
                        format!("{n} pods created while no calico-node ran fail closed"),
                    );
                }
            }
        }
        out
    }

    pub fn report(&self) -> Vec<NodeReport> {
        self.nodes
            .iter()
            .map(|(name, st)| {
                let d = self.divergences(name);
                let (enforcer, agent) = match &st.enforcer {
                    Enforcer::Agent { namespace, pod, .. } => {
                        (namespace.clone(), Some(format!("{namespace}/{pod}")))
                    }
                    Enforcer::Frozen { from, .. } => ("frozen".to_string(), Some(from.clone())),
                    Enforcer::None if self.fargate.contains(name) => ("fargate".to_string(), None),
                    Enforcer::None => ("none".to_string(), None),
                };
                let fail_closed_pods = match &st.enforcer {
                    _ if self.fargate.contains(name) => 0,
                    Enforcer::Agent { .. } => 0,
                    Enforcer::None => self.pods_on(name).filter(|p| p.is_workload()).count(),
                    Enforcer::Frozen { programmed, .. } => self
                        .pods_on(name)
                        .filter(|p| p.is_workload() && !programmed.contains(&p.uid))
                        .count(),
                };
                NodeReport {
                    node: name.clone(),
                    enforcer,
                    agent,
                    since: st.since,
                    lapse: self.faults.lapse.contains(name),
                    agent_blocked: self.agent_blocked(name),
                    fail_closed_pods,
                    stale_rules: d.contains_key(&DivergenceReason::StaleRules),
                }
            })
            .collect()
    }

    /// `agent-not-ready` from either ConfigMap.
    pub fn agent_blocked(&self, node: &str) -> bool {
        self.faults.agent_not_ready.contains(node) || self.controller_blocked.contains(node)
    }

    /// The Service a cluster DNS name names, seen from namespace `from_ns`:
    /// `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local` (the pod's search path).
    pub fn service_by_name(&self, host: &str, from_ns: &str) -> Option<&Value> {
        let host = host.trim_end_matches('.');
        let rest = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(host);
        let (name, ns) = rest.split_once('.').unwrap_or((rest, from_ns));
        if ns.contains('.') {
            return None;
        }
        self.services.get(&(ns.to_string(), name.to_string()))
    }

    pub fn service_by_cluster_ip(&self, ip: IpAddr) -> Option<&Value> {
        self.service_ips.get(&ip).and_then(|k| self.services.get(k))
    }

    /// kube-proxy's choice for `svc:port/proto`: the first Ready Running pod (by name) that
    /// the selector matches, and the target port on it. None: no endpoint (connection refused).
    pub fn service_backend(
        &self,
        svc: &Value,
        port: u16,
        proto: Protocol,
    ) -> Option<(PodInfo, u16)> {
        let ns = s(svc, "/metadata/namespace");
        let selector = svc.pointer("/spec/selector").and_then(Value::as_object)?;
        let sp = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)?
            .iter()
            .find(|p| {
                p.get("port").and_then(Value::as_u64) == Some(u64::from(port))
                    && Protocol::parse(p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"))
                        == Some(proto)
            })?;
        let mut pods: Vec<&PodInfo> = self
            .pods
            .iter()
            .filter(|((pns, _), p)| {
                pns == ns
                    && p.ready
                    && p.phase == "Running"
                    && p.ip.is_some()
                    && selector.iter().all(|(k, v)| {
                        p.object.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v)
                    })
            })
            .map(|(_, p)| p)
            .collect();
        pods.sort_by_key(|p| s(&p.object, "/metadata/name").to_string());
        for p in pods {
            let target = match sp.get("targetPort") {
                None => Some(port),
                Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                Some(Value::String(name)) => named_port(&p.object, name, proto),
                Some(_) => None,
            };
            if let Some(t) = target {
                return Some((p.clone(), t));
            }
        }
        None
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.by_ip.get(&ip).and_then(|k| self.pods.get(k))
    }

    /// Host-network pods on a node (they listen on the node's address).
    pub fn host_pods_on(&self, node: &str) -> Vec<&PodInfo> {
        self.pods_on(node).filter(|p| p.host_network).collect()
    }

    /// How traffic of `pod` is enforced on its node.
    pub fn side(&self, pod: &PodInfo) -> Side {
        let Some(node) = &pod.node else {
            return Side::Drop;
        };
        if self.faults.lapse.contains(node) || pod.host_network || self.fargate.contains(node) {
            // hostNetwork pods have no workload endpoint (no host endpoints modelled).
            return Side::AllowAll;
        }
        match self.nodes.get(node).map(|s| &s.enforcer) {
            Some(Enforcer::Agent { .. }) => Side::Policies(self.policies.clone()),
            Some(Enforcer::Frozen {
                policies,
                programmed,
                ..
            }) if programmed.contains(&pod.uid) => Side::Policies(policies.clone()),
            _ => Side::Drop,
        }
    }

    /// The policy index for a policy set over the current pods and namespaces.
    pub fn index(&mut self, set: &Arc<PolicySet>) -> Result<Arc<PolicyIndex>, EvalError> {
        if let Some((v, idx)) = self.indexes.get(&set.generation)
            && *v == self.pods_version
        {
            return Ok(idx.clone());
        }
        let mut model = ClusterModel::new();
        let mut errors = BTreeMap::new();
        for (name, ns) in &self.namespaces {
            match ns {
                Ok(n) => model.namespaces.push(n.clone()),
                Err(e) => drop(errors.insert(format!("namespace {name}"), e.to_string())),
            }
        }
        for ((ns, name), p) in &self.model_pods {
            match p {
                Ok(p) => model.pods.push(p.clone()),
                Err(e) => drop(errors.insert(format!("pod {ns}/{name}"), e.to_string())),
            }
        }
        for (key, obj) in &set.objects {
            let origin = Origin {
                source: key.clone(),
                document: 0,
            };
            if let Err(e) = model.add_value(obj, &origin) {
                errors.insert(key.clone(), e.to_string());
            }
        }
        for (what, e) in &errors {
            tracing::warn!("data plane skips {what}: {e}");
        }
        self.policy_errors = errors;
        let idx = Arc::new(PolicyIndex::build(model).map_err(EvalError::Policies)?);
        // Keep the current set and the frozen ones only.
        let live: HashSet<u64> = self
            .nodes
            .values()
            .filter_map(|s| match &s.enforcer {
                Enforcer::Frozen { policies, .. } => Some(policies.generation),
                _ => None,
            })
            .chain([self.policies.generation, set.generation])
            .collect();
        self.indexes.retain(|g, _| live.contains(g));
        self.indexes
            .insert(set.generation, (self.pods_version, idx.clone()));
        Ok(idx)
    }

    /// Build the current index ahead of probes (called after changes settle).
    pub fn warm(&mut self) {
        if self.dirty {
            self.dirty = false;
            let set = self.policies.clone();
            if let Err(e) = self.index(&set) {
                tracing::warn!("data plane: {e}");
            }
        }
    }
}

/// Why the data plane cannot judge a flow (answered as an exec's internal error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("the policies cannot be evaluated: {0}")]
    Policies(InputError),
    #[error("pod {0} is not in the data plane's model")]
    UnknownPod(String),
}

/// A container port of `pod` by name and protocol.
fn named_port(pod: &Value, name: &str, proto: Protocol) -> Option<u16> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|c| c.get("ports").and_then(Value::as_array))
        .flatten()
        .find(|p| {
            p.get("name").and_then(Value::as_str) == Some(name)
                && Protocol::parse(p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"))
                    == Some(proto)
        })
        .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
        .and_then(|n| u16::try_from(n).ok())
}

/// Parse one object for the policy engine.
fn parse_one(obj: &Value, what: &str) -> Result<ClusterModel, InputError> {
    let mut m = ClusterModel::new();
    let origin = Origin {
        source: what.to_string(),
        document: 0,
    };
    m.add_value(obj, &origin)?;
    Ok(m)
}

fn policy_key(gr: &GroupResource, obj: &Value) -> String {
    format!(
        "{}/{} {}/{}",
        gr.group,
        gr.resource,
        s(obj, "/metadata/namespace"),
        s(obj, "/metadata/name")
    )
}
