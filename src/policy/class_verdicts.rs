//! The policies' verdicts for every pair of pod classes at once.
//!
//! Walking each pair's rules costs classes² × rules. Instead every distinct peer a rule
//! names is resolved once to the set of classes it matches, and each class walks its own
//! policies once per direction with bitsets over all classes: `egress[s]` holds the
//! destination classes that s's egress policies let through, `ingress[d]` the source
//! classes that d's ingress policies admit. The semantics are those of
//! `PolicyIndex::decide_side`, which stays the reference: tests compare the two on random
//! policy sets.

use std::collections::HashMap;

use fixedbitset::FixedBitSet;

use super::index::{PolicyIndex, PolicyPos, ip_version_matches, protocol_matches};
use super::model::{Action, Direction, EntityMatch, Protocol, Rule};

/// Per class pair, what each side's policies say (without the own-node exemption, which
/// depends on where pods run rather than on their class).
#[derive(Debug, Clone)]
pub struct ClassVerdicts {
    egress: Vec<FixedBitSet>,
    ingress: Vec<FixedBitSet>,
}

impl ClassVerdicts {
    /// The policies allow class `s` to reach class `d`.
    pub fn allowed(&self, s: usize, d: usize) -> bool {
        self.egress[s].contains(d) && self.ingress[d].contains(s)
    }
}

/// The remote half of a rule as far as it depends on the remote class: the same key
/// resolves to the same classes, whichever policy holds it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PeerKey {
    dir: Direction,
    /// Egress only: the packet's family is the destination's.
    ip_version: Option<u8>,
    entity: EntityMatch,
}

impl PeerKey {
    fn of(dir: Direction, rule: &Rule) -> PeerKey {
        let (mut entity, ip_version) = match dir {
            Direction::Egress => (rule.destination.clone(), rule.ip_version),
            Direction::Ingress => {
                // Source ports belong to the rule's local half (they never match a probe).
                let mut e = rule.source.clone();
                e.ports.clear();
                e.not_ports.clear();
                (e, None)
            }
        };
        // The home namespace only confines a bare selector and service account names.
        if entity.namespace_selector.is_some() && entity.service_account_names.is_empty() {
            entity.home_namespace = None;
        }
        PeerKey {
            dir,
            ip_version,
            entity,
        }
    }
}

/// The classes a peer matches: listed when few, a bitset otherwise.
enum PeerSet {
    Few(Vec<u32>),
    Many(FixedBitSet),
}

impl PeerSet {
    fn new(hits: Vec<u32>, classes: usize) -> PeerSet {
        if hits.len() * 16 < classes {
            PeerSet::Few(hits)
        } else {
            let mut bits = FixedBitSet::with_capacity(classes);
            bits.extend(hits.iter().map(|&x| x as usize));
            PeerSet::Many(bits)
        }
    }

    /// Allow or deny the open classes of this set: they leave `open` and `undecided`,
    /// and join `allowed` when given.
    fn decide(
        &self,
        open: &mut FixedBitSet,
        undecided: &mut FixedBitSet,
        mut allowed: Option<&mut FixedBitSet>,
    ) {
        match self {
            PeerSet::Few(ids) => {
                for &x in ids {
                    let x = x as usize;
                    if open.contains(x) {
                        open.set(x, false);
                        undecided.set(x, false);
                        if let Some(a) = allowed.as_deref_mut() {
                            a.insert(x);
                        }
                    }
                }
            }
            PeerSet::Many(bits) => {
                let mut hit = bits.clone();
                hit.intersect_with(open);
                open.difference_with(&hit);
                undecided.difference_with(&hit);
                if let Some(a) = allowed {
                    a.union_with(&hit);
                }
            }
        }
    }

    /// Pass: the set's classes skip the rest of the tier.
    fn pass(&self, open: &mut FixedBitSet) {
        match self {
            PeerSet::Few(ids) => ids.iter().for_each(|&x| open.set(x as usize, false)),
            PeerSet::Many(bits) => open.difference_with(bits),
        }
    }
}

/// Everything the walks share for one port and protocol.
struct Walk<'a> {
    index: &'a PolicyIndex,
    reps: &'a [usize],
    port: u16,
    protocol: Protocol,
    /// Per direction, per policy position, per rule: the peer set's number.
    peer_of: [Vec<Vec<u32>>; 2],
    peers: Vec<PeerSet>,
}

/// Classes by what a peer's candidates are drawn from: their namespace, and whether a
/// network set holds their address.
struct ClassGroups {
    by_namespace: Vec<Vec<u32>>,
    in_network_sets: Vec<u32>,
}

impl ClassGroups {
    fn of(index: &PolicyIndex, reps: &[usize]) -> ClassGroups {
        let mut by_namespace = vec![Vec::new(); index.namespace_count()];
        let mut in_network_sets = Vec::new();
        for (c, &rep) in reps.iter().enumerate() {
            by_namespace[index.pod_namespace_index(rep)].push(c as u32);
            if index.in_network_set(rep) {
                in_network_sets.push(c as u32);
            }
        }
        ClassGroups {
            by_namespace,
            in_network_sets,
        }
    }
}

/// Threads to split class work over: the machine's cores.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn slot(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl PolicyIndex {
    /// The policies' verdicts between the pods `reps` (one per class, as
    /// [`super::pod_classes`] picks them), for one port and protocol, on at most
    /// `threads` threads.
    pub fn class_verdicts(
        &self,
        reps: &[usize],
        port: u16,
        protocol: Protocol,
        threads: usize,
    ) -> ClassVerdicts {
        let threads = threads.max(1);
        let (peer_of, keys) = self.peer_keys(reps);
        let groups = ClassGroups::of(self, reps);
        let peers = split_over(&keys, threads, |key| {
            self.peer_set(key, reps, &groups, port, protocol)
        });
        let walk = Walk {
            index: self,
            reps,
            port,
            protocol,
            peer_of,
            peers,
        };
        let locals: Vec<usize> = (0..reps.len()).collect();
        let mut verdicts = ClassVerdicts {
            egress: split_over(&locals, threads, |&c| walk.side(Direction::Egress, c)),
            ingress: split_over(&locals, threads, |&c| walk.side(Direction::Ingress, c)),
        };
        // A destination without an address takes its packet's family from the source:
        // the one input not fixed by either class alone. Those columns are decided per
        // pair (there are few such classes: pods not yet given an address).
        for (d, &rep) in reps.iter().enumerate() {
            if self.pods()[rep].ip.is_none() {
                verdicts.ingress[d].insert_range(..);
                for (s, &src) in reps.iter().enumerate() {
                    let ok = self.decide_pods_until_denied(src, rep, port, protocol);
                    verdicts.egress[s].set(d, ok);
                }
            }
        }
        verdicts
    }

    /// Number every distinct peer of the rules of policies that select one of `reps`.
    fn peer_keys(&self, reps: &[usize]) -> ([Vec<Vec<u32>>; 2], Vec<PeerKey>) {
        let mut peer_of: [Vec<Vec<u32>>; 2] = [
            vec![Vec::new(); self.policy_count()],
            vec![Vec::new(); self.policy_count()],
        ];
        let mut ids: HashMap<PeerKey, u32> = HashMap::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut used = vec![false; self.policy_count()];
            for &r in reps {
                for &pos in self.policies_for(r, dir) {
                    used[pos as usize] = true;
                }
            }
            for (pos, _) in used.iter().enumerate().filter(|(_, u)| **u) {
                let rules = self.policy_at(pos as PolicyPos).rules(dir).unwrap_or(&[]);
                peer_of[slot(dir)][pos] = rules
                    .iter()
                    .map(|rule| {
                        let next = ids.len() as u32;
                        *ids.entry(PeerKey::of(dir, rule)).or_insert(next)
                    })
                    .collect();
            }
        }
        let mut keys: Vec<(u32, PeerKey)> = ids.into_iter().map(|(k, id)| (id, k)).collect();
        keys.sort_unstable_by_key(|(id, _)| *id);
        (peer_of, keys.into_iter().map(|(_, k)| k).collect())
    }

    /// The classes a peer matches. Candidates first (a peer that selects endpoints
    /// matches only pods of the namespaces it reaches, or addresses in network sets),
    /// then the exact test on each.
    fn peer_set(
        &self,
        key: &PeerKey,
        reps: &[usize],
        groups: &ClassGroups,
        port: u16,
        protocol: Protocol,
    ) -> PeerSet {
        let e = &key.entity;
        let candidates: Vec<u32> = if e.selects_endpoints() {
            let namespaces: Vec<usize> = match (&e.namespace_selector, &e.home_namespace) {
                (Some(sel), _) => self.namespaces_matching(sel),
                (None, Some(home)) => self.namespace_position(home).into_iter().collect(),
                (None, None) => (0..self.namespace_count()).collect(),
            };
            let mut c: Vec<u32> = namespaces
                .iter()
                .flat_map(|&n| groups.by_namespace[n].iter().copied())
                .chain(groups.in_network_sets.iter().copied())
                .collect();
            c.sort_unstable();
            c.dedup();
            c
        } else {
            (0..reps.len() as u32).collect()
        };
        let hits = candidates
            .into_iter()
            .filter(|&c| self.peer_matches(key, reps[c as usize], port, protocol))
            .collect();
        PeerSet::new(hits, reps.len())
    }

    /// The remote half of a rule (see [`PeerKey`]) against one pod.
    fn peer_matches(&self, key: &PeerKey, pod: usize, port: u16, protocol: Protocol) -> bool {
        match key.dir {
            Direction::Egress => {
                let ip = self.pods()[pod].ip;
                let pkt = self.packet(ip, port, protocol);
                key.ip_version
                    .is_none_or(|v| (v == 6) == ip.is_some_and(|a| a.is_ipv6()))
                    && self.dst_ports_match(&key.entity, Some(pod), pkt)
                    && self.entity_matches(&key.entity, self.pod_party(pod))
            }
            Direction::Ingress => self.entity_matches(&key.entity, self.source_party(pod)),
        }
    }
}

impl Walk<'_> {
    /// The local half of a rule against the local pod.
    fn local_matches(&self, dir: Direction, rule: &Rule, pod: usize) -> bool {
        let ix = self.index;
        let party = ix.pod_party(pod);
        // The packet's family is the destination's: the local pod's on ingress.
        let pkt = ix.packet(ix.pods()[pod].ip, self.port, self.protocol);
        protocol_matches(rule, pkt)
            && match dir {
                Direction::Egress => ix.entity_matches(&rule.source, party),
                Direction::Ingress => {
                    ip_version_matches(rule, pkt)
                        && ix.dst_ports_match(&rule.destination, Some(pod), pkt)
                        && ix.entity_matches(&rule.destination, party)
                }
            }
    }

    /// Class `local`'s policies in direction `dir`: the remote classes they let through.
    fn side(&self, dir: Direction, local: usize) -> FixedBitSet {
        let ix = self.index;
        let n = self.reps.len();
        let rep = self.reps[local];
        let policies = ix.policies_for(rep, dir);
        let mut allowed = FixedBitSet::with_capacity(n);
        let mut undecided = FixedBitSet::with_capacity(n);
        undecided.insert_range(..);
        // Open: undecided and not passed on in the current tier.
        let mut open = FixedBitSet::with_capacity(n);
        let mut i = 0;
        while i < policies.len() && !undecided.is_clear() {
            let tier = ix.tier_rank(policies[i]);
            let first_in_tier = policies[i];
            open.clone_from(&undecided);
            while i < policies.len() && ix.tier_rank(policies[i]) == tier {
                let pos = policies[i];
                i += 1;
                if open.is_clear() {
                    continue;
                }
                let rules = ix.policy_at(pos).rules(dir).unwrap_or(&[]);
                for (r, rule) in rules.iter().enumerate() {
                    if rule.action == Action::Log || !self.local_matches(dir, rule, rep) {
                        continue;
                    }
                    let peers = &self.peers[self.peer_of[slot(dir)][pos as usize][r] as usize];
                    match rule.action {
                        Action::Allow => {
                            peers.decide(&mut open, &mut undecided, Some(&mut allowed))
                        }
                        Action::Deny => peers.decide(&mut open, &mut undecided, None),
                        Action::Pass => peers.pass(&mut open),
                        Action::Log => {}
                    }
                }
            }
            // Selected in this tier, nothing decided, not passed: dropped at its end.
            if !ix.tier_passes(first_in_tier) {
                undecided.difference_with(&open);
            }
        }
        // No policy, or every tier passed: the profile allows.
        allowed.union_with(&undecided);
        allowed
    }
}

/// `f` over `items`, the items split into at most `threads` runs of consecutive items,
/// results in the items' order.
fn split_over<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    // Threads cost more than a small job.
    if threads == 1 || items.len() < 64 {
        return items.iter().map(f).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a verdict thread panicked"))
            .collect()
    })
}
