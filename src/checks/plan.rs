//! Which probes a round runs and what each should observe (pure). Every node is
//! probed as source and as destination with a fixed number of probes per node
//! (O(nodes), never all pairs): node i's clients reach its own servers, the next
//! node's servers (ring order) and IMDS, and the previous node's client reaches a
//! sample of the cluster's own pods on node i. Expectations come from the policy
//! engine only.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::workload::{NAMESPACE_A, NAMESPACE_B, PROBE_LABEL, ProbePod, Role, SERVER_PORT};
use crate::policy::index::{RawReason, SideOutcome};
use crate::policy::{PolicyIndex, Protocol};

/// The AWS instance metadata address `deny-aws-imds` protects.
pub const IMDS: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));

/// What a probe is about, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    SameNamespace,
    CrossNodeSameNamespace,
    CrossNamespace,
    Imds,
    ImdsExempt,
    ClusterSample,
    Dns,
}

/// Whether the policies allow the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expected {
    Allowed,
    Blocked,
}

/// One connection attempt: exec into `from` and `agnhost connect target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// `namespace/pod` of the client.
    pub from: String,
    /// `namespace/pod` of the destination, or the address / host name for external ones.
    pub to: String,
    /// What agnhost connects to (`IP:PORT` or `host:PORT`).
    pub target: String,
    pub port: u16,
    pub protocol: String,
    pub kind: ProbeKind,
    pub expected: Expected,
    /// The node whose enforcement decides a block (egress: source, ingress: destination).
    pub node: String,
    pub src_node: String,
    pub dst_node: Option<String>,
    /// True when the destination is outside the pod network (a refusal still proves reach).
    pub external: bool,
}

/// Why probes could not be planned for some pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unplanned {
    pub pod: String,
    pub node: String,
    pub reason: String,
}

/// The probes of one round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundPlan {
    pub probes: Vec<Probe>,
    pub nodes: Vec<String>,
    /// Probe pods the engine does not know (no IP yet): their probes become Check failed.
    pub unplanned: Vec<Unplanned>,
}

fn addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}:{port}"),
        IpAddr::V6(_) => format!("[{ip}]:{port}"),
    }
}

struct Ctx<'a> {
    index: &'a PolicyIndex,
    node_of: HashMap<String, String>,
    plan: RoundPlan,
}

impl Ctx<'_> {
    fn pod_probe(&mut self, src: &ProbePod, dst_key: &str, port: u16, kind: ProbeKind) {
        let idx = self.index;
        let (Some(s), Some(d)) = (idx.pod_index(&src.key()), idx.pod_index(dst_key)) else {
            return self.missing(&src.key(), dst_key);
        };
        let dst = &idx.pods()[d];
        let (Some(ip), Some(_)) = (dst.ip, idx.pods()[s].ip) else {
            return self.missing(&src.key(), dst_key);
        };
        let (eg, ing) = idx.decide_pods(s, d, port, Protocol::Tcp);
        let dst_node = dst.node.clone();
        let node = if eg.allowed {
            dst_node.clone().unwrap_or_else(|| src.node.clone())
        } else {
            src.node.clone()
        };
        self.plan.probes.push(Probe {
            from: src.key(),
            to: dst_key.to_string(),
            target: addr(ip, port),
            port,
            protocol: "TCP".into(),
            kind,
            expected: if eg.allowed && ing.allowed {
                Expected::Allowed
            } else {
                Expected::Blocked
            },
            node,
            src_node: src.node.clone(),
            dst_node,
            external: false,
        });
    }

    fn external_probe(&mut self, src: &ProbePod, ip: IpAddr, port: u16, kind: ProbeKind) {
        let Some(s) = self
            .index
            .pod_index(&src.key())
            .filter(|&s| self.index.pods()[s].ip.is_some())
        else {
            return self.missing(&src.key(), &ip.to_string());
        };
        let allowed = self.index.allowed_external(s, ip, port, Protocol::Tcp);
        self.plan.probes.push(Probe {
            from: src.key(),
            to: ip.to_string(),
            target: addr(ip, port),
            port,
            protocol: "TCP".into(),
            kind,
            expected: if allowed {
                Expected::Allowed
            } else {
                Expected::Blocked
            },
            node: src.node.clone(),
            src_node: src.node.clone(),
            dst_node: None,
            external: true,
        });
    }

    /// Resolve `target` (`host:port`) by name and connect. Resolution needs UDP 53 to a
    /// CoreDNS pod (kube-proxy picks one): the engine's verdict for every one of them
    /// sets the expectation. A DNS probe the policies block is expected to fail as a
    /// DNS failure; the connection after it must be one the policies allow.
    fn dns_probe(&mut self, src: &ProbePod, target: &str, servers: &[usize]) {
        let idx = self.index;
        let Some(s) = idx
            .pod_index(&src.key())
            .filter(|&s| idx.pods()[s].ip.is_some())
        else {
            return self.missing(&src.key(), target);
        };
        let allowed: Vec<bool> = servers
            .iter()
            .map(|&d| {
                let (eg, ing) = idx.decide_pods(s, d, DNS_PORT, Protocol::Udp);
                eg.allowed && ing.allowed
            })
            .collect();
        let expected = if allowed.is_empty() {
            None
        } else if allowed.iter().all(|a| *a) {
            Some(Expected::Allowed)
        } else if !allowed.iter().any(|a| *a) {
            Some(Expected::Blocked)
        } else {
            None
        };
        let Some(expected) = expected else {
            let reason = if allowed.is_empty() {
                format!(
                    "no running CoreDNS pod ({DNS_NAMESPACE}, {DNS_LABEL}={DNS_APP}) with an address: the DNS probe cannot be judged"
                )
            } else {
                "the policies allow DNS from this client to some CoreDNS pods and not to others: the probe would depend on the pod kube-proxy picks".to_string()
            };
            self.plan.unplanned.push(Unplanned {
                pod: src.key(),
                node: src.node.clone(),
                reason,
            });
            return;
        };
        let port = target
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        self.plan.probes.push(Probe {
            from: src.key(),
            to: target.to_string(),
            target: target.to_string(),
            port,
            protocol: "TCP".into(),
            kind: ProbeKind::Dns,
            expected,
            node: src.node.clone(),
            src_node: src.node.clone(),
            dst_node: None,
            external: true,
        });
    }

    fn missing(&mut self, src: &str, dst: &str) {
        for key in [src, dst] {
            let known = self
                .index
                .pod_index(key)
                .is_some_and(|i| self.index.pods()[i].ip.is_some());
            if !known && key.contains('/') && !self.plan.unplanned.iter().any(|u| u.pod == key) {
                self.plan.unplanned.push(Unplanned {
                    pod: key.to_string(),
                    node: self.node_of.get(key).cloned().unwrap_or_default(),
                    reason: "the pod has no IP address yet (not running)".into(),
                });
            }
        }
    }
}

const DNS_PORT: u16 = 53;
const DNS_NAMESPACE: &str = "kube-system";
const DNS_LABEL: &str = "k8s-app";
const DNS_APP: &str = "kube-dns";

/// The cluster's DNS servers the engine knows: CoreDNS pods with an address (what the
/// `kube-dns` Service selects on EKS).
fn dns_servers(index: &PolicyIndex) -> Vec<usize> {
    index
        .pods()
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.ip.is_some()
                && !p.host_network
                && p.key().starts_with(&format!("{DNS_NAMESPACE}/"))
                && p.labels.get(DNS_LABEL).map(String::as_str) == Some(DNS_APP)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Cluster pods considered per node for the sample (the first by key): bounds the
/// engine's work at O(nodes).
const SAMPLE_CANDIDATES: usize = 16;

/// How much a sample's verdict says about the cluster's own policies: a connection
/// a policy denies (proves enforcement), one a rule allows into a pod that policies
/// isolate (proves the rules are the cluster's), or one no policy decides.
fn sample_class(eg: SideOutcome, ing: SideOutcome) -> u8 {
    let by_policy = |o: SideOutcome| {
        matches!(
            o.reason,
            RawReason::Rule { .. } | RawReason::EndOfTier { .. }
        )
    };
    if (!eg.allowed && by_policy(eg)) || (!ing.allowed && by_policy(ing)) {
        0
    } else if eg.allowed && ing.allowed && matches!(ing.reason, RawReason::Rule { .. }) {
        1
    } else {
        2
    }
}

/// Per node, the cluster pod (not a probe pod, not hostNetwork, with an address and a
/// named TCP port) whose verdict from `sources[node]` (the previous node's client)
/// the policy engine finds most telling: on even positions a denied connection first,
/// on odd ones an allowed one into an isolated pod, so a round samples both kinds of
/// the cluster's own verdicts when it has them.
fn cluster_samples(
    index: &PolicyIndex,
    nodes: &[String],
    sources: &HashMap<String, String>,
) -> BTreeMap<String, (String, u16)> {
    let mut by_node: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
    for p in index
        .pods()
        .iter()
        .filter(|p| !p.host_network && p.ip.is_some() && !p.labels.contains_key(PROBE_LABEL))
    {
        let (Some(node), Some(np)) = (
            p.node.clone(),
            p.named_ports.iter().find(|np| np.protocol == Protocol::Tcp),
        ) else {
            continue;
        };
        by_node.entry(node).or_default().push((p.key(), np.port));
    }
    let mut out = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let Some(mut pods) = by_node.remove(node) else {
            continue;
        };
        pods.sort();
        pods.truncate(SAMPLE_CANDIDATES);
        let src = sources.get(node).and_then(|k| index.pod_index(k));
        let rank = |(key, port): &(String, u16)| -> u8 {
            let (Some(s), Some(d)) = (src, index.pod_index(key)) else {
                return 2;
            };
            let (eg, ing) = index.decide_pods(s, d, *port, Protocol::Tcp);
            // Odd positions swap the first two preferences.
            match sample_class(eg, ing) {
                c @ (0 | 1) if i % 2 == 1 => 1 - c,
                c => c,
            }
        };
        // min_by_key keeps the first of equals: key order breaks ties.
        if let Some(best) = pods.iter().min_by_key(|p| rank(p)) {
            out.insert(node.clone(), best.clone());
        }
    }
    out
}

/// Plan a round over `nodes` (sorted, deduplicated by the caller) for `pods`.
/// `dns_target` (`host:port`) adds one DNS-resolution probe per node.
pub fn plan_round(
    nodes: &[String],
    pods: &[ProbePod],
    index: &PolicyIndex,
    exempt_namespace: Option<&str>,
    dns_target: Option<&str>,
) -> RoundPlan {
    let mut ctx = Ctx {
        index,
        node_of: pods.iter().map(|p| (p.key(), p.node.clone())).collect(),
        plan: RoundPlan {
            nodes: nodes.to_vec(),
            ..RoundPlan::default()
        },
    };
    let by_role: HashMap<(&str, Role, &str), &ProbePod> = pods
        .iter()
        .map(|p| ((p.namespace.as_str(), p.role, p.node.as_str()), p))
        .collect();
    let n = nodes.len();
    let sources: HashMap<String, String> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, node)| {
            let prev = &nodes[(i + n - 1) % n];
            let c = by_role.get(&(NAMESPACE_A, Role::Client, prev.as_str()))?;
            Some((node.clone(), c.key()))
        })
        .collect();
    let samples = cluster_samples(index, nodes, &sources);
    let dns_servers = dns_servers(index);
    for (i, node) in nodes.iter().enumerate() {
        let next = &nodes[(i + 1) % n];
        let prev = &nodes[(i + n - 1) % n];
        let pick =
            |ns: &str, role, node: &str| by_role.get(&(ns, role, node)).map(|p| (*p).clone());
        let (Some(ca), Some(cb)) = (
            pick(NAMESPACE_A, Role::Client, node),
            pick(NAMESPACE_B, Role::Client, node),
        ) else {
            continue;
        };
        let key = |ns: &str, node: &str| by_role.get(&(ns, Role::Server, node)).map(|p| p.key());
        let (sa, sa_next, sb, sb_next) = (
            key(NAMESPACE_A, node),
            key(NAMESPACE_A, next),
            key(NAMESPACE_B, node),
            key(NAMESPACE_B, next),
        );
        if let Some(k) = sa.as_deref() {
            ctx.pod_probe(&ca, k, SERVER_PORT, ProbeKind::SameNamespace);
        }
        if let Some(k) = sb.as_deref() {
            ctx.pod_probe(&ca, k, SERVER_PORT, ProbeKind::CrossNamespace);
        }
        if let Some(k) = sa_next.as_deref().filter(|_| n > 1) {
            ctx.pod_probe(&ca, k, SERVER_PORT, ProbeKind::CrossNodeSameNamespace);
        }
        if let Some(k) = sb_next.as_deref().filter(|_| n > 1) {
            ctx.pod_probe(&cb, k, SERVER_PORT, ProbeKind::CrossNodeSameNamespace);
        }
        if let Some(k) = sa_next.as_deref() {
            ctx.pod_probe(&cb, k, SERVER_PORT, ProbeKind::CrossNamespace);
        }
        for port in [80, 443] {
            ctx.external_probe(&ca, IMDS, port, ProbeKind::Imds);
        }
        if let Some(cx) = exempt_namespace.and_then(|ns| pick(ns, Role::Client, node)) {
            ctx.external_probe(&cx, IMDS, 80, ProbeKind::ImdsExempt);
        }
        if let Some((dst, port)) = samples.get(node)
            && let Some(cp) = pick(NAMESPACE_A, Role::Client, prev)
        {
            ctx.pod_probe(&cp, dst, *port, ProbeKind::ClusterSample);
        }
        if let Some(t) = dns_target {
            ctx.dns_probe(&ca, t, &dns_servers);
        }
    }
    ctx.plan
}

/// Probes where `node` is the source or the destination (for continuous probing).
pub fn probes_touching<'a>(plan: &'a RoundPlan, node: &str) -> Vec<&'a Probe> {
    plan.probes
        .iter()
        .filter(|p| p.src_node == node || p.dst_node.as_deref() == Some(node))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::workload::{self, probe_pods};
    use serde_json::{Value, json};

    pub(crate) fn objects(nodes: &[String], pods: &[ProbePod], lapse_ip: bool) -> Vec<Value> {
        let mut objs = vec![
            workload::namespace_manifest(NAMESPACE_A),
            workload::namespace_manifest(NAMESPACE_B),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
            workload::default_policy_manifest(NAMESPACE_A),
            workload::default_policy_manifest(NAMESPACE_B),
            json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy",
                "metadata": {"name": "deny-aws-imds"},
                "spec": {"selector": "projectcalico.org/namespace not in {'kube-system'}",
                    "types": ["Egress"], "egress": [
                        {"action": "Deny", "protocol": "TCP",
                         "destination": {"nets": ["169.254.169.254/32"], "ports": [80, 443]}},
                        {"action": "Allow", "destination": {"nets": ["0.0.0.0/0"]}}]}}),
        ];
        for (i, p) in pods.iter().enumerate() {
            let mut m = workload::pod_manifest(p, workload::DEFAULT_IMAGE);
            if !(lapse_ip && i == 0) {
                m["status"] = json!({"phase": "Running", "podIP": format!("10.1.{}.{}", i / 200, i % 200 + 1)});
            }
            objs.push(m);
        }
        let _ = nodes;
        objs
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i:03}")).collect()
    }

    #[test]
    fn expectations_come_from_the_engine_and_cover_every_node_both_ways() {
        let nodes = nodes(4);
        let pods = probe_pods(&nodes, Some("kube-system"));
        let index = PolicyIndex::from_objects(&objects(&nodes, &pods, false)).unwrap();
        let plan = plan_round(&nodes, &pods, &index, Some("kube-system"), None);
        assert!(plan.unplanned.is_empty());
        for p in &plan.probes {
            let want = match p.kind {
                ProbeKind::SameNamespace
                | ProbeKind::CrossNodeSameNamespace
                | ProbeKind::ImdsExempt => Expected::Allowed,
                ProbeKind::CrossNamespace | ProbeKind::Imds => Expected::Blocked,
                _ => continue,
            };
            assert_eq!(p.expected, want, "{p:?}");
        }
        for n in &nodes {
            assert!(plan.probes.iter().any(|p| &p.src_node == n));
            assert!(plan.probes.iter().any(|p| p.dst_node.as_ref() == Some(n)));
            assert!(
                plan.probes
                    .iter()
                    .any(|p| &p.node == n && p.expected == Expected::Blocked)
            );
        }
        // A cross-namespace block is decided by the destination's ingress.
        let x = plan
            .probes
            .iter()
            .find(|p| {
                p.kind == ProbeKind::CrossNamespace && p.src_node != *p.dst_node.as_ref().unwrap()
            })
            .unwrap();
        assert_eq!(Some(&x.node), x.dst_node.as_ref());
    }

    #[test]
    fn probe_count_grows_linearly() {
        let count = |n| {
            let nodes = nodes(n);
            let pods = probe_pods(&nodes, None);
            let index = PolicyIndex::from_objects(&objects(&nodes, &pods, false)).unwrap();
            plan_round(&nodes, &pods, &index, None, None).probes.len()
        };
        assert_eq!(count(40), 4 * count(10));
    }

    #[test]
    fn the_engine_picks_cluster_samples_that_exercise_the_clusters_policies() {
        let nodes = nodes(2);
        let pods = probe_pods(&nodes, None);
        let mut objs = objects(&nodes, &pods, false);
        objs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
        objs.push(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db-closed", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}}),
        );
        objs.push(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "api-from-probes", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels":
                    {"kubernetes.io/metadata.name": NAMESPACE_A}}}]}]}}),
        );
        for (i, node) in nodes.iter().enumerate() {
            // Key order puts the undecided pod first: the engine must look past it.
            for (j, app) in ["a-web", "b-db", "c-api"].iter().enumerate() {
                let label = app.split_once('-').map_or(*app, |(_, l)| l);
                objs.push(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("{app}-{i}"), "namespace": "shop",
                        "labels": {"app": label}},
                    "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
                    "status": {"phase": "Running", "podIP": format!("10.9.{i}.{}", j + 1)}}));
            }
        }
        let index = PolicyIndex::from_objects(&objs).unwrap();
        let plan = plan_round(&nodes, &pods, &index, None, None);
        let sample = |node: &str| {
            plan.probes
                .iter()
                .find(|p| p.kind == ProbeKind::ClusterSample && p.dst_node.as_deref() == Some(node))
                .map(|p| (p.to.clone(), p.expected))
        };
        assert_eq!(
            sample("node-000"),
            Some(("shop/b-db-0".to_string(), Expected::Blocked))
        );
        assert_eq!(
            sample("node-001"),
            Some(("shop/c-api-1".to_string(), Expected::Allowed))
        );
    }

    #[test]
    fn a_dns_probe_without_a_dns_server_to_judge_it_is_reported_not_guessed() {
        let nodes = nodes(2);
        let pods = probe_pods(&nodes, None);
        let index = PolicyIndex::from_objects(&objects(&nodes, &pods, false)).unwrap();
        let plan = plan_round(&nodes, &pods, &index, None, Some("example.com:443"));
        assert!(plan.probes.iter().all(|p| p.kind != ProbeKind::Dns));
        assert_eq!(plan.unplanned.len(), 2, "{:?}", plan.unplanned);
        assert!(plan.unplanned.iter().all(|u| u.reason.contains("CoreDNS")));
        // With a CoreDNS pod and no policy on UDP 53, the lookup is expected to work.
        let mut objs = objects(&nodes, &pods, false);
        objs.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "coredns-1", "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns"}},
            "spec": {"nodeName": "node-000", "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": "10.9.9.9"}}));
        let index = PolicyIndex::from_objects(&objs).unwrap();
        let plan = plan_round(&nodes, &pods, &index, None, Some("example.com:443"));
        assert!(plan.unplanned.is_empty(), "{:?}", plan.unplanned);
        let dns: Vec<_> = plan
            .probes
            .iter()
            .filter(|p| p.kind == ProbeKind::Dns)
            .map(|p| (p.port, p.expected))
            .collect();
        assert_eq!(dns, vec![(443, Expected::Allowed); 2]);
    }

    #[test]
    fn pods_without_an_address_are_reported_not_guessed() {
        let nodes = nodes(3);
        let pods = probe_pods(&nodes, None);
        let index = PolicyIndex::from_objects(&objects(&nodes, &pods, true)).unwrap();
        let plan = plan_round(&nodes, &pods, &index, None, None);
        assert_eq!(plan.unplanned.len(), 1);
        assert_eq!(plan.unplanned[0].pod, pods[0].key());
    }
}
