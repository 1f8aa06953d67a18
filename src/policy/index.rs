//! [`PolicyIndex`]: policies sorted as Felix applies them and, per pod, the policies
//! that select it in each direction, so a verdict only walks the relevant rules.
//!
//! Evaluation follows Calico's data plane (projectcalico/calico felix/rules): per
//! direction, tiers in ascending order; in a tier, policies by (order, name); the first
//! matching Allow or Deny rule decides, Log continues, Pass jumps to the next tier; an
//! endpoint selected by some policy of a tier that matches nothing is dropped at the
//! end of that tier (unless the Tier's `defaultAction` is Pass); with no policy left (or all passed) the namespace profile allows.

use std::collections::HashMap;
use std::net::IpAddr;

use super::cluster::ClusterModel;
use super::error::InputError;
use super::hosts::Hosts;
use super::model::*;
use super::selector::{Labels, Selector};

/// A policy's position in the sorted evaluation order.
pub type PolicyPos = u32;

/// Builds once, answers many verdicts. Rebuild when policies change (cost grows with
/// pods x policies of their own namespace plus global policies).
#[derive(Debug, Clone)]
pub struct PolicyIndex {
    model: ClusterModel,
    /// Namespaces by name (declared ones, plus implicit ones pods refer to).
    namespaces: Vec<Namespace>,
    ns_by_name: HashMap<String, usize>,
    pod_ns: Vec<usize>,
    pod_by_key: HashMap<String, usize>,
    endpoint_labels: Vec<Labels>,
    /// Indices into `model.policies` in evaluation order.
    sorted: Vec<usize>,
    tier_rank: Vec<u32>,
    /// Per sorted position: the tier's default action is Pass rather than Deny.
    tier_passes: Vec<bool>,
    ingress_of: Vec<Vec<PolicyPos>>,
    egress_of: Vec<Vec<PolicyPos>>,
    netsets_of_pod: Vec<Vec<u32>>,
    hosts: Hosts,
}

/// What happened on one side (egress of the source, ingress of the destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawReason {
    /// Not a workload endpoint side (external address, hostNetwork pod).
    NotApplicable,
    /// No policy selects the endpoint in this direction: the profile allows.
    NoPolicy,
    /// A rule decided (Allow or Deny).
    Rule { policy: PolicyPos, rule: u32 },
    /// Selected in a tier, no rule matched: dropped at the end of that tier.
    EndOfTier { tier_of: PolicyPos },
    /// Every tier passed: the profile allows.
    PassedToProfile,
    /// From the destination's own node: Felix does not police host -> local workload.
    LocalHost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideOutcome {
    pub allowed: bool,
    pub reason: RawReason,
}

/// A side's outcome with the Log/Pass rules matched on the way.
pub(crate) type Traced = (SideOutcome, Vec<(PolicyPos, u32)>);

/// The remote or local party of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Party<'a> {
    pod: Option<usize>,
    ip: Option<IpAddr>,
    netsets: &'a [u32],
}

/// A connection attempt.
#[derive(Debug, Clone, Copy)]
pub(super) struct Packet {
    port: u16,
    protocol: Protocol,
    v6: bool,
}

impl PolicyIndex {
    /// Validate the model and index it.
    pub fn build(model: ClusterModel) -> Result<PolicyIndex, InputError> {
        model.validate()?;
        let mut namespaces = model.namespaces.clone();
        let mut ns_by_name: HashMap<String, usize> = namespaces
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut pod_ns = Vec::with_capacity(model.pods.len());
        for p in &model.pods {
            let idx = *ns_by_name.entry(p.namespace.clone()).or_insert_with(|| {
                namespaces.push(Namespace::new(&p.namespace, Labels::new()));
                namespaces.len() - 1
            });
            pod_ns.push(idx);
        }
        let pod_by_key = model
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key(), i))
            .collect();
        let endpoint_labels: Vec<Labels> = model.pods.iter().map(Pod::endpoint_labels).collect();

        // Tier order: Tier objects, the default tier at its fixed order; ties by name.
        let tier_order = |name: &str| -> (f64, String) {
            let order = if name == "default" {
                Some(DEFAULT_TIER_ORDER)
            } else {
                model
                    .tiers
                    .iter()
                    .find(|t| t.name == name)
                    .and_then(|t| t.order)
            };
            (order.unwrap_or(f64::INFINITY), name.to_string())
        };
        let mut sorted: Vec<usize> = (0..model.policies.len()).collect();
        sorted.sort_by(|&a, &b| {
            let (pa, pb) = (&model.policies[a], &model.policies[b]);
            let (ta, tb) = (tier_order(&pa.tier), tier_order(&pb.tier));
            ta.0.total_cmp(&tb.0)
                .then_with(|| ta.1.cmp(&tb.1))
                .then_with(|| {
                    pa.order
                        .unwrap_or(f64::INFINITY)
                        .total_cmp(&pb.order.unwrap_or(f64::INFINITY))
                })
                .then_with(|| pa.sort_name.cmp(&pb.sort_name))
        });
        let mut tier_rank = Vec::with_capacity(sorted.len());
        let mut rank = 0u32;
        for (i, &p) in sorted.iter().enumerate() {
            if i > 0 && model.policies[sorted[i - 1]].tier != model.policies[p].tier {
                rank += 1;
            }
            tier_rank.push(rank);
        }
        let tier_passes: Vec<bool> = sorted
            .iter()
            .map(|&p| {
                let tier = &model.policies[p].tier;
                model
                    .tiers
                    .iter()
                    .any(|t| t.name == *tier && t.default_action == Action::Pass)
            })
            .collect();

        // Which policies can select which pods: namespaced ones only look at their namespace.
        let mut by_ns: HashMap<&str, Vec<PolicyPos>> = HashMap::new();
        let mut global: Vec<PolicyPos> = Vec::new();
        for (pos, &pi) in sorted.iter().enumerate() {
            let pos = pos as PolicyPos;
            match &model.policies[pi].namespace {
                Some(ns) => by_ns.entry(ns.as_str()).or_default().push(pos),
                None => global.push(pos),
            }
        }
        let mut ingress_of = Vec::with_capacity(model.pods.len());
        let mut egress_of = Vec::with_capacity(model.pods.len());
        for (i, pod) in model.pods.iter().enumerate() {
            let mut ing = Vec::new();
            let mut eg = Vec::new();
            if !pod.host_network {
                let ns_labels = &namespaces[pod_ns[i]].labels;
                let local = by_ns
                    .get(pod.namespace.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                for &pos in local.iter().chain(global.iter()) {
                    let p = &model.policies[sorted[pos as usize]];
                    let selected = p.selector.matches(&endpoint_labels[i])
                        && p.namespace_selector
                            .as_ref()
                            .is_none_or(|s| s.matches(ns_labels));
                    if selected {
                        if p.ingress.is_some() {
                            ing.push(pos);
                        }
                        if p.egress.is_some() {
                            eg.push(pos);
                        }
                    }
                }
                ing.sort_unstable();
                eg.sort_unstable();
            }
            ingress_of.push(ing);
            egress_of.push(eg);
        }
        let netsets_of_pod = model
            .pods
            .iter()
            .map(|p| match p.ip {
                Some(ip) => netsets_containing(&model.network_sets, ip),
                None => Vec::new(),
            })
            .collect();
        let hosts = Hosts::build(&model);
        Ok(PolicyIndex {
            hosts,
            model,
            namespaces,
            ns_by_name,
            pod_ns,
            pod_by_key,
            endpoint_labels,
            sorted,
            tier_rank,
            tier_passes,
            ingress_of,
            egress_of,
            netsets_of_pod,
        })
    }

    pub fn model(&self) -> &ClusterModel {
        &self.model
    }

    pub fn pods(&self) -> &[Pod] {
        &self.model.pods
    }

    /// Index of a pod by `namespace/name`.
    pub fn pod_index(&self, key: &str) -> Option<usize> {
        self.pod_by_key.get(key).copied()
    }

    /// The policy at an evaluation position.
    pub fn policy_at(&self, pos: PolicyPos) -> &Policy {
        &self.model.policies[self.sorted[pos as usize]]
    }

    /// Policies selecting a pod, in evaluation order.
    pub fn policies_for(&self, pod: usize, dir: Direction) -> &[PolicyPos] {
        match dir {
            Direction::Ingress => &self.ingress_of[pod],
            Direction::Egress => &self.egress_of[pod],
        }
    }

    /// Nodes and who owns which address.
    pub fn hosts(&self) -> &Hosts {
        &self.hosts
    }

    /// A hostNetwork source on the destination's node is that node's own traffic to a
    /// local workload, which Felix lets through without the workload's ingress policy
    /// (felix/rules/static.go, filterOutputChain).
    pub(crate) fn sent_by_local_host(&self, src: usize, dst: usize) -> bool {
        let (s, d) = (&self.model.pods[src], &self.model.pods[dst]);
        s.host_network && s.node.is_some() && s.node == d.node
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.ns_by_name.get(ns).map(|&i| &self.namespaces[i].labels)
    }

    pub(crate) fn pod_namespace_index(&self, pod: usize) -> usize {
        self.pod_ns[pod]
    }

    pub(super) fn namespace_count(&self) -> usize {
        self.namespaces.len()
    }

    pub(super) fn namespace_position(&self, name: &str) -> Option<usize> {
        self.ns_by_name.get(name).copied()
    }

    /// Namespaces whose labels a `namespaceSelector` matches.
    pub(super) fn namespaces_matching(&self, selector: &Selector) -> Vec<usize> {
        (0..self.namespaces.len())
            .filter(|&n| selector.matches(&self.namespaces[n].labels))
            .collect()
    }

    /// True when some network set holds the pod's address.
    pub(super) fn in_network_set(&self, pod: usize) -> bool {
        !self.netsets_of_pod[pod].is_empty()
    }

    pub(super) fn policy_count(&self) -> usize {
        self.sorted.len()
    }

    /// Policies of one tier share a rank; ranks ascend in evaluation order.
    pub(super) fn tier_rank(&self, pos: PolicyPos) -> u32 {
        self.tier_rank[pos as usize]
    }

    /// The tier of the policy at `pos` passes what it leaves undecided (rather than
    /// dropping it).
    pub(super) fn tier_passes(&self, pos: PolicyPos) -> bool {
        self.tier_passes[pos as usize]
    }

    pub(crate) fn endpoint_labels_of(&self, pod: usize) -> &Labels {
        &self.endpoint_labels[pod]
    }

    /// Every CIDR any rule or network set mentions (what can tell two IPs apart).
    pub fn cidrs(&self) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for p in &self.model.policies {
            for r in p.ingress.iter().flatten().chain(p.egress.iter().flatten()) {
                for e in [&r.source, &r.destination] {
                    out.extend(e.nets.iter().copied());
                    out.extend(e.not_nets.iter().copied());
                }
            }
        }
        for s in &self.model.network_sets {
            out.extend(s.nets.iter().copied());
        }
        out.sort();
        out.dedup();
        out
    }

    /// Build straight from objects as the sandbox stores them.
    pub fn from_objects(objects: &[serde_json::Value]) -> Result<PolicyIndex, InputError> {
        PolicyIndex::build(ClusterModel::from_values(objects)?)
    }

    /// What the policies say, both sides, the ingress side skipped once egress has
    /// denied. Without the own-node exemption ([`PolicyIndex::sent_by_local_host`]), which
    /// depends on where pods run rather than on their class: callers working on pod
    /// classes apply it per pod pair.
    pub(crate) fn decide_pods_until_denied(
        &self,
        src: usize,
        dst: usize,
        port: u16,
        protocol: Protocol,
    ) -> bool {
        let s = self.pod_party(src);
        let d = self.pod_party(dst);
        let pkt = self.packet(d.ip.or(s.ip), port, protocol);
        let src_host = self.model.pods[src].host_network;
        if !src_host
            && !self
                .decide_side(Direction::Egress, &self.egress_of[src], s, d, pkt, None)
                .allowed
        {
            return false;
        }
        if self.model.pods[dst].host_network {
            return true;
        }
        let src_as_seen = self.source_party(src);
        self.decide_side(
            Direction::Ingress,
            &self.ingress_of[dst],
            d,
            src_as_seen,
            pkt,
            None,
        )
        .allowed
    }

    /// Pod -> pod: the egress side of the source, then the ingress side of the destination.
    pub fn decide_pods(
        &self,
        src: usize,
        dst: usize,
        port: u16,
        protocol: Protocol,
    ) -> (SideOutcome, SideOutcome) {
        let s = self.pod_party(src);
        let d = self.pod_party(dst);
        let pkt = self.packet(d.ip.or(s.ip), port, protocol);
        let eg = if self.model.pods[src].host_network {
            SideOutcome {
                allowed: true,
                reason: RawReason::NotApplicable,
            }
        } else {
            self.decide_side(Direction::Egress, &self.egress_of[src], s, d, pkt, None)
        };
        let src_as_seen = self.source_party(src);
        let ing = if self.model.pods[dst].host_network {
            SideOutcome {
                allowed: true,
                reason: RawReason::NotApplicable,
            }
        } else if self.sent_by_local_host(src, dst) {
            SideOutcome {
                allowed: true,
                reason: RawReason::LocalHost,
            }
        } else {
            self.decide_side(
                Direction::Ingress,
                &self.ingress_of[dst],
                d,
                src_as_seen,
                pkt,
                None,
            )
        };
        (eg, ing)
    }

    /// Pod -> address outside the pod network (or any address the caller names).
    pub fn decide_external(
        &self,
        src: usize,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> SideOutcome {
        self.decide_with_address(Direction::Egress, src, ip, port, protocol, None)
    }

    /// Address outside the pod network (a remote node, a load balancer) -> pod: the
    /// destination's ingress side, with the Log rules passed on the way. The caller
    /// handles the destination's own node, which is never policed.
    pub(crate) fn decide_ingress_from(
        &self,
        ip: IpAddr,
        dst: usize,
        port: u16,
        protocol: Protocol,
    ) -> Traced {
        let mut logs = Vec::new();
        let out =
            self.decide_with_address(Direction::Ingress, dst, ip, port, protocol, Some(&mut logs));
        (out, logs)
    }

    /// One side of a pod talking with an address that is no pod's: the pod's egress
    /// towards it, or its ingress from it.
    fn decide_with_address(
        &self,
        dir: Direction,
        pod: usize,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
        logs: Option<&mut Vec<(PolicyPos, u32)>>,
    ) -> SideOutcome {
        if self.model.pods[pod].host_network {
            return SideOutcome {
                allowed: true,
                reason: RawReason::NotApplicable,
            };
        }
        let netsets = netsets_containing(&self.model.network_sets, ip);
        let remote = Party {
            pod: None,
            ip: Some(ip),
            netsets: &netsets,
        };
        let pkt = self.packet(Some(ip), port, protocol);
        let policies = self.policies_for(pod, dir);
        self.decide_side(dir, policies, self.pod_party(pod), remote, pkt, logs)
    }

    /// Like [`PolicyIndex::decide_pods`] / [`PolicyIndex::decide_external`] but also
    /// collecting the Log rules passed on the way: `(egress logs, ingress logs)`.
    pub(crate) fn decide_with_logs(
        &self,
        src: usize,
        dst: Result<usize, IpAddr>,
        port: u16,
        protocol: Protocol,
    ) -> (Traced, Option<Traced>) {
        let s = self.pod_party(src);
        let ext_sets;
        let d = match dst {
            Ok(d) => self.pod_party(d),
            Err(ip) => {
                ext_sets = netsets_containing(&self.model.network_sets, ip);
                Party {
                    pod: None,
                    ip: Some(ip),
                    netsets: &ext_sets,
                }
            }
        };
        let pkt = self.packet(d.ip.or(s.ip), port, protocol);
        let mut eg_logs = Vec::new();
        let eg = if self.model.pods[src].host_network {
            SideOutcome {
                allowed: true,
                reason: RawReason::NotApplicable,
            }
        } else {
            self.decide_side(
                Direction::Egress,
                &self.egress_of[src],
                s,
                d,
                pkt,
                Some(&mut eg_logs),
            )
        };
        let ing = match dst {
            Ok(d_idx) => {
                let mut logs = Vec::new();
                let src_as_seen = self.source_party(src);
                let out = if self.model.pods[d_idx].host_network {
                    SideOutcome {
                        allowed: true,
                        reason: RawReason::NotApplicable,
                    }
                } else if self.sent_by_local_host(src, d_idx) {
                    SideOutcome {
                        allowed: true,
                        reason: RawReason::LocalHost,
                    }
                } else {
                    self.decide_side(
                        Direction::Ingress,
                        &self.ingress_of[d_idx],
                        d,
                        src_as_seen,
                        pkt,
                        Some(&mut logs),
                    )
                };
                Some((out, logs))
            }
            Err(_) => None,
        };
        ((eg, eg_logs), ing)
    }

    pub(super) fn pod_party(&self, i: usize) -> Party<'_> {
        Party {
            pod: Some(i),
            ip: self.model.pods[i].ip,
            netsets: &self.netsets_of_pod[i],
        }
    }

    /// A pod as the source its destination's policy sees: a hostNetwork pod sends from
    /// the node's address, with no workload labels.
    pub(super) fn source_party(&self, i: usize) -> Party<'_> {
        let p = self.pod_party(i);
        if self.model.pods[i].host_network {
            Party { pod: None, ..p }
        } else {
            p
        }
    }

    pub(super) fn packet(&self, ip: Option<IpAddr>, port: u16, protocol: Protocol) -> Packet {
        Packet {
            port,
            protocol,
            v6: ip.is_some_and(|a| a.is_ipv6()),
        }
    }

    fn decide_side(
        &self,
        dir: Direction,
        policies: &[PolicyPos],
        local: Party<'_>,
        remote: Party<'_>,
        pkt: Packet,
        mut logs: Option<&mut Vec<(PolicyPos, u32)>>,
    ) -> SideOutcome {
        if policies.is_empty() {
            return SideOutcome {
                allowed: true,
                reason: RawReason::NoPolicy,
            };
        }
        let (src, dst) = match dir {
            Direction::Ingress => (remote, local),
            Direction::Egress => (local, remote),
        };
        let mut i = 0;
        while i < policies.len() {
            let tier = self.tier_rank[policies[i] as usize];
            let first_in_tier = policies[i];
            let mut passed = false;
            while i < policies.len() && self.tier_rank[policies[i] as usize] == tier {
                let pos = policies[i];
                i += 1;
                if passed {
                    continue;
                }
                let rules = self.policy_at(pos).rules(dir).unwrap_or(&[]);
                for (ri, rule) in rules.iter().enumerate() {
                    if !self.rule_matches(rule, src, dst, pkt) {
                        continue;
                    }
                    match rule.action {
                        Action::Allow | Action::Deny => {
                            return SideOutcome {
                                allowed: rule.action == Action::Allow,
                                reason: RawReason::Rule {
                                    policy: pos,
                                    rule: ri as u32,
                                },
                            };
                        }
                        Action::Log => {
                            if let Some(l) = logs.as_deref_mut() {
                                l.push((pos, ri as u32));
                            }
                        }
                        Action::Pass => {
                            if let Some(l) = logs.as_deref_mut() {
                                l.push((pos, ri as u32));
                            }
                            passed = true;
                            break;
                        }
                    }
                }
            }
            if !passed && !self.tier_passes[first_in_tier as usize] {
                return SideOutcome {
                    allowed: false,
                    reason: RawReason::EndOfTier {
                        tier_of: first_in_tier,
                    },
                };
            }
        }
        SideOutcome {
            allowed: true,
            reason: RawReason::PassedToProfile,
        }
    }

    fn rule_matches(&self, r: &Rule, src: Party<'_>, dst: Party<'_>, pkt: Packet) -> bool {
        protocol_matches(r, pkt)
            && ip_version_matches(r, pkt)
            && self.dst_ports_match(&r.destination, dst.pod, pkt)
            && self.entity_matches(&r.source, src)
            && self.entity_matches(&r.destination, dst)
    }

    pub(super) fn dst_ports_match(
        &self,
        e: &EntityMatch,
        dst_pod: Option<usize>,
        pkt: Packet,
    ) -> bool {
        let hit = |s: &PortSpec| match s {
            PortSpec::Range(a, b) => *a <= pkt.port && pkt.port <= *b,
            PortSpec::Named(n) => dst_pod.is_some_and(|p| {
                self.model.pods[p]
                    .named_ports
                    .iter()
                    .any(|np| np.name == *n && np.port == pkt.port && np.protocol == pkt.protocol)
            }),
        };
        (e.ports.is_empty() || e.ports.iter().any(hit)) && !e.not_ports.iter().any(hit)
    }

    pub(super) fn entity_matches(&self, e: &EntityMatch, party: Party<'_>) -> bool {
        if !e.nets.is_empty()
            && !party
                .ip
                .is_some_and(|ip| e.nets.iter().any(|n| n.contains(&ip)))
        {
            return false;
        }
        if party
            .ip
            .is_some_and(|ip| e.not_nets.iter().any(|n| n.contains(&ip)))
        {
            return false;
        }
        if e.selects_endpoints() && !self.selected(e, party) {
            return false;
        }
        if let Some(not) = &e.not_selector {
            let endpoint_hit = party
                .pod
                .is_some_and(|p| not.matches(&self.endpoint_labels[p]));
            let set_hit = party
                .netsets
                .iter()
                .any(|&s| not.matches_entity(&self.model.network_sets[s as usize].labels, true));
            if endpoint_hit || set_hit {
                return false;
            }
        }
        if !e.service_account_names.is_empty() {
            let Some(p) = party.pod else { return false };
            let pod = &self.model.pods[p];
            if !e.service_account_names.contains(&pod.service_account)
                || e.home_namespace
                    .as_ref()
                    .is_some_and(|h| *h != pod.namespace)
            {
                return false;
            }
        }
        true
    }

    /// Selector/namespaceSelector match: the endpoint itself, or a network set holding its IP.
    fn selected(&self, e: &EntityMatch, party: Party<'_>) -> bool {
        if let Some(p) = party.pod {
            let pod = &self.model.pods[p];
            let ns_ok = match &e.namespace_selector {
                Some(nss) => nss.matches(&self.namespaces[self.pod_ns[p]].labels),
                None => e
                    .home_namespace
                    .as_ref()
                    .is_none_or(|h| *h == pod.namespace),
            };
            if ns_ok
                && e.selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&self.endpoint_labels[p]))
            {
                return true;
            }
        }
        party.netsets.iter().any(|&s| {
            let set = &self.model.network_sets[s as usize];
            let ns_ok = match &e.namespace_selector {
                // Only `global()` reaches non-namespaced sets.
                Some(nss) => mentions_global(nss) && nss.matches_entity(&Labels::new(), true),
                None => e.home_namespace.is_none(),
            };
            ns_ok
                && e.selector
                    .as_ref()
                    .is_none_or(|sel| sel.matches_entity(&set.labels, true))
        })
    }
}

/// The rule's protocol fields, and its source ports: the probe's source port is
/// ephemeral and unknown, so a rule that constrains it cannot be shown to match.
pub(super) fn protocol_matches(r: &Rule, pkt: Packet) -> bool {
    r.protocol.as_ref().is_none_or(|p| p.matches(pkt.protocol))
        && !r
            .not_protocol
            .as_ref()
            .is_some_and(|p| p.matches(pkt.protocol))
        && r.source.ports.is_empty()
        && r.source.not_ports.is_empty()
}

pub(super) fn ip_version_matches(r: &Rule, pkt: Packet) -> bool {
    r.ip_version.is_none_or(|v| (v == 6) == pkt.v6)
}

fn mentions_global(s: &Selector) -> bool {
    match s {
        Selector::Global => true,
        Selector::Not(x) => mentions_global(x),
        Selector::And(xs) | Selector::Or(xs) => xs.iter().any(mentions_global),
        _ => false,
    }
}

fn netsets_containing(sets: &[NetworkSet], ip: IpAddr) -> Vec<u32> {
    sets.iter()
        .enumerate()
        .filter(|(_, s)| s.nets.iter().any(|n| n.contains(&ip)))
        .map(|(i, _)| i as u32)
        .collect()
}
