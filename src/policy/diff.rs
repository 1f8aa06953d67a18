//! Policy-set comparison: which objects changed, and every (source, destination, port,
//! protocol) whose verdict differs.
//!
//! Exhaustive without enumerating 65,535 ports or 2^32 addresses: verdicts only change
//! at the bounds of port ranges, named-port numbers and CIDRs the rules mention, so one
//! probe per interval between consecutive bounds covers every port and every address.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::class_verdicts::cores;
use super::index::PolicyIndex;
use super::matrix::{PodClasses, pod_classes};
use super::model::{PortSpec, Protocol};

/// One differing cell. `src`/`dst` name a representative; `pod_pairs` says how many
/// pod pairs (or pod x address-range pairs) share the same difference (pod pairs the
/// own-node exemption allows whatever the policies say are not counted: they never
/// differ).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellDiff {
    pub src: String,
    pub dst: String,
    pub port: u16,
    pub protocol: Protocol,
    pub before: bool,
    pub after: bool,
    pub pod_pairs: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicySetDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub cells: Vec<CellDiff>,
    /// Ports (per protocol) and external addresses probed to cover the whole space.
    pub ports_probed: usize,
    pub externals_probed: usize,
}

impl PolicySetDiff {
    /// True when both sets allow exactly the same traffic.
    pub fn equivalent(&self) -> bool {
        self.cells.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error(
        "pod {0} is in the `before` input but not in `after`; compare policy sets over the same pods"
    )]
    MissingAfter(String),
    #[error(
        "pod {0} is in the `after` input but not in `before`; compare policy sets over the same pods"
    )]
    MissingBefore(String),
}

/// Compare two indexes built over the same pods.
pub fn diff(before: &PolicyIndex, after: &PolicyIndex) -> Result<PolicySetDiff, DiffError> {
    let mut out = PolicySetDiff::default();
    object_changes(before, after, &mut out);

    let mut map = Vec::with_capacity(before.pods().len());
    for p in before.pods() {
        map.push(
            after
                .pod_index(&p.key())
                .ok_or_else(|| DiffError::MissingAfter(p.key()))?,
        );
    }
    for p in after.pods() {
        if before.pod_index(&p.key()).is_none() {
            return Err(DiffError::MissingBefore(p.key()));
        }
    }
    let all: Vec<usize> = (0..before.pods().len()).collect();
    let classes = pod_classes(&[before, after], &[Vec::new(), map.clone()], &all);
    let reps = &classes.representatives;
    let ports = port_representatives(&[before, after]);
    let externals = address_representatives(&[before, after]);
    out.ports_probed = ports.len();
    out.externals_probed = externals.len();
    let pods = before.pods();
    let reps_after: Vec<usize> = reps.iter().map(|&r| map[r]).collect();
    let exempt = own_node_pairs(before, &classes);
    let threads = cores();
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        for &port in &ports {
            // Policy verdicts: the own-node exemption is the same in both sets.
            let before_verdicts = before.class_verdicts(reps, port, protocol, threads);
            let after_verdicts = after.class_verdicts(&reps_after, port, protocol, threads);
            for (si, &s) in reps.iter().enumerate() {
                for (di, &d) in reps.iter().enumerate() {
                    let b = before_verdicts.allowed(si, di);
                    let a = after_verdicts.allowed(si, di);
                    let pairs = classes.sizes[si] * classes.sizes[di]
                        - exempt.get(&(si, di)).copied().unwrap_or(0);
                    if a != b && pairs > 0 {
                        out.cells.push(CellDiff {
                            src: pods[s].key(),
                            dst: pods[d].key(),
                            port,
                            protocol,
                            before: b,
                            after: a,
                            pod_pairs: pairs,
                        });
                    }
                }
                for &ip in &externals {
                    let b = before.allowed_external(s, ip, port, protocol);
                    let a = after.allowed_external(map[s], ip, port, protocol);
                    if a != b {
                        out.cells.push(CellDiff {
                            src: pods[s].key(),
                            dst: ip.to_string(),
                            port,
                            protocol,
                            before: b,
                            after: a,
                            pod_pairs: classes.sizes[si],
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Per class pair, how many of its pod pairs are a hostNetwork pod reaching a pod on its
/// own node: Felix never polices those (see [`PolicyIndex::verdict`]), so no policy
/// change can make them differ. The pods' placement is `index`'s.
fn own_node_pairs(index: &PolicyIndex, classes: &PodClasses) -> HashMap<(usize, usize), usize> {
    let mut on_node: HashMap<&str, HashMap<usize, usize>> = HashMap::new();
    for (p, pod) in index.pods().iter().enumerate() {
        if let Some(n) = &pod.node {
            *on_node
                .entry(n.as_str())
                .or_default()
                .entry(classes.class_of[p] as usize)
                .or_default() += 1;
        }
    }
    let mut out: HashMap<(usize, usize), usize> = HashMap::new();
    for (p, pod) in index.pods().iter().enumerate() {
        let Some(local) = pod.node.as_deref().filter(|_| pod.host_network) else {
            continue;
        };
        for (&class, &count) in on_node.get(local).into_iter().flatten() {
            *out.entry((classes.class_of[p] as usize, class))
                .or_default() += count;
        }
    }
    out
}

fn object_changes(before: &PolicyIndex, after: &PolicyIndex, out: &mut PolicySetDiff) {
    let b: BTreeMap<String, &serde_json::Value> = before
        .model()
        .records
        .iter()
        .map(|r| (r.key(), &r.spec))
        .collect();
    let a: BTreeMap<String, &serde_json::Value> = after
        .model()
        .records
        .iter()
        .map(|r| (r.key(), &r.spec))
        .collect();
    for (k, spec) in &b {
        match a.get(k) {
            None => out.removed.push(k.clone()),
            Some(s) if s != spec => out.changed.push(k.clone()),
            Some(_) => {}
        }
    }
    out.added = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
}

/// One port per interval on which every rule's port match is constant.
pub fn port_representatives(indexes: &[&PolicyIndex]) -> Vec<u16> {
    let mut bounds: BTreeSet<u32> = BTreeSet::from([1]);
    for ix in indexes {
        for p in &ix.model().policies {
            for r in p.ingress.iter().flatten().chain(p.egress.iter().flatten()) {
                for spec in r.destination.ports.iter().chain(&r.destination.not_ports) {
                    if let PortSpec::Range(a, b) = spec {
                        bounds.insert(u32::from(*a));
                        bounds.insert(u32::from(*b) + 1);
                    }
                }
            }
        }
        for pod in ix.pods() {
            for np in &pod.named_ports {
                bounds.insert(u32::from(np.port));
                bounds.insert(u32::from(np.port) + 1);
            }
        }
    }
    bounds
        .into_iter()
        .filter(|p| (1..=65535).contains(p))
        .map(|p| p as u16)
        .collect()
}

/// One address per interval on which membership in every mentioned CIDR is constant.
pub fn address_representatives(indexes: &[&PolicyIndex]) -> Vec<IpAddr> {
    let mut v4: BTreeSet<u32> = BTreeSet::from([0]);
    let mut v6: BTreeSet<u128> = BTreeSet::from([0]);
    for ix in indexes {
        for net in ix.cidrs() {
            match net {
                ipnet::IpNet::V4(n) => {
                    v4.insert(u32::from(n.network()));
                    if let Some(next) = u32::from(n.broadcast()).checked_add(1) {
                        v4.insert(next);
                    }
                }
                ipnet::IpNet::V6(n) => {
                    v6.insert(u128::from(n.network()));
                    if let Some(next) = u128::from(n.broadcast()).checked_add(1) {
                        v6.insert(next);
                    }
                }
            }
        }
    }
    v4.into_iter()
        .map(|a| IpAddr::V4(Ipv4Addr::from(a)))
        .chain(v6.into_iter().map(|a| IpAddr::V6(Ipv6Addr::from(a))))
        .collect()
}
