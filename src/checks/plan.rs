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

/// Per node, the first cluster pod (by key) that is not a probe pod, not hostNetwork,
/// has an address and a named TCP port: the sample of the cluster's own verdicts.
fn cluster_samples(index: &PolicyIndex) -> BTreeMap<String, (String, u16)> {
    let mut out = BTreeMap::new();
    let mut pods: Vec<_> = index
        .pods()
        .iter()
        .filter(|p| !p.host_network && p.ip.is_some() && !p.labels.contains_key(PROBE_LABEL))
        .filter_map(|p| {
            let port = p
                .named_ports
                .iter()
                .find(|np| np.protocol == Protocol::Tcp)?
                .port;
            Some((p.node.clone()?, p.key(), port))
        })
        .collect();
    pods.sort();
    for (node, key, port) in pods {
        out.entry(node).or_insert((key, port));
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
    let samples = cluster_samples(index);
    let n = nodes.len();
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
            let port = t
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0);
            ctx.plan.probes.push(Probe {
                from: ca.key(),
                to: t.to_string(),
                target: t.to_string(),
                port,
                protocol: "TCP".into(),
                kind: ProbeKind::Dns,
                expected: Expected::Allowed,
                node: node.clone(),
                src_node: node.clone(),
                dst_node: None,
                external: true,
            });
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
    fn pods_without_an_address_are_reported_not_guessed() {
        let nodes = nodes(3);
        let pods = probe_pods(&nodes, None);
        let index = PolicyIndex::from_objects(&objects(&nodes, &pods, true)).unwrap();
        let plan = plan_round(&nodes, &pods, &index, None, None);
        assert_eq!(plan.unplanned.len(), 1);
        assert_eq!(plan.unplanned[0].pod, pods[0].key());
    }
}
