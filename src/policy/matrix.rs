//! Reachability matrices over pods and external addresses.
//!
//! Pods that no rule can tell apart share a class: same namespace (name and labels),
//! same endpoint labels (which include the service account), same named ports, same
//! hostNetwork flag, same address family and the same membership in every CIDR any rule
//! or network set mentions. The evaluator reads nothing else about a pod, so one verdict
//! per class pair is exact for every pod pair it stands for.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::class_verdicts::{ClassVerdicts, cores};
use super::index::PolicyIndex;
use super::model::{NamedPort, Protocol};
use super::selector::Labels;

/// Pods grouped into classes that every policy treats alike.
#[derive(Debug, Clone)]
pub struct PodClasses {
    /// Class of each pod in the list the classes were built for (same positions).
    pub class_of: Vec<u32>,
    /// One pod index (into the first index's pods) per class.
    pub representatives: Vec<usize>,
    /// How many pods each class holds.
    pub sizes: Vec<usize>,
}

#[derive(Hash, PartialEq, Eq)]
struct ClassKey<'a> {
    namespaces: Vec<usize>,
    labels: &'a Labels,
    named_ports: &'a [NamedPort],
    host_network: bool,
    ip_state: u8,
    cidr_bits: Vec<u64>,
}

/// Partition `pods` (indices into `indexes[0]`'s pods; `maps[k][i]` is the same pod in
/// `indexes[k]`) so that every index gives the same verdicts for every pod of a class.
pub fn pod_classes(indexes: &[&PolicyIndex], maps: &[Vec<usize>], pods: &[usize]) -> PodClasses {
    let mut cidrs: Vec<ipnet::IpNet> = indexes.iter().flat_map(|i| i.cidrs()).collect();
    cidrs.sort();
    cidrs.dedup();
    let first = indexes[0];
    let mut ids: HashMap<ClassKey<'_>, u32> = HashMap::new();
    let mut class_of = Vec::with_capacity(pods.len());
    let mut representatives = Vec::new();
    let mut sizes = Vec::new();
    for &p in pods {
        let pod = &first.pods()[p];
        let mut bits = vec![0u64; cidrs.len().div_ceil(64)];
        if let Some(ip) = pod.ip {
            for (b, net) in cidrs.iter().enumerate() {
                if net.contains(&ip) {
                    bits[b / 64] |= 1 << (b % 64);
                }
            }
        }
        let key = ClassKey {
            namespaces: indexes
                .iter()
                .enumerate()
                .map(|(k, ix)| ix.pod_namespace_index(if k == 0 { p } else { maps[k][p] }))
                .collect(),
            labels: first.endpoint_labels_of(p),
            named_ports: &pod.named_ports,
            host_network: pod.host_network,
            ip_state: match pod.ip {
                None => 0,
                Some(IpAddr::V4(_)) => 1,
                Some(IpAddr::V6(_)) => 2,
            },
            cidr_bits: bits,
        };
        let next = representatives.len() as u32;
        let id = *ids.entry(key).or_insert(next);
        if id == next {
            representatives.push(p);
            sizes.push(0);
        }
        sizes[id as usize] += 1;
        class_of.push(id);
    }
    PodClasses {
        class_of,
        representatives,
        sizes,
    }
}

/// Expected reachability for one port and protocol.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub port: u16,
    pub protocol: Protocol,
    /// The pods (indices into the index's pods), sources and destinations alike.
    pub pods: Vec<usize>,
    /// External destinations: the spelling given, and the address.
    pub externals: Vec<(String, IpAddr)>,
    pub classes: PodClasses,
    /// Per position: the node a hostNetwork pod's traffic comes from, and every pod's
    /// node, so the own-node exemption is applied per pod pair.
    host_node: Vec<Option<u32>>,
    node: Vec<Option<u32>>,
    verdicts: ClassVerdicts,
    external_allowed: Vec<bool>,
}

impl PolicyIndex {
    /// The matrix over `pods` (all pods when `None`) and `externals`.
    pub fn matrix(
        &self,
        pods: Option<&[usize]>,
        externals: &[(String, IpAddr)],
        port: u16,
        protocol: Protocol,
    ) -> Matrix {
        self.matrix_on_threads(pods, externals, port, protocol, cores())
    }

    /// [`PolicyIndex::matrix`] computed on at most `threads` threads.
    pub fn matrix_on_threads(
        &self,
        pods: Option<&[usize]>,
        externals: &[(String, IpAddr)],
        port: u16,
        protocol: Protocol,
        threads: usize,
    ) -> Matrix {
        let pods: Vec<usize> = match pods {
            Some(p) => p.to_vec(),
            None => (0..self.pods().len()).collect(),
        };
        let classes = pod_classes(&[self], &[Vec::new()], &pods);
        let reps = &classes.representatives;
        let c = reps.len();
        let verdicts = self.class_verdicts(reps, port, protocol, threads);
        let mut external_allowed = vec![false; c * externals.len()];
        for (si, &s) in reps.iter().enumerate() {
            for (ei, (_, ip)) in externals.iter().enumerate() {
                external_allowed[si * externals.len() + ei] =
                    self.allowed_external(s, *ip, port, protocol);
            }
        }
        let node: Vec<Option<u32>> = pods
            .iter()
            .map(|&p| {
                let name = self.pods()[p].node.as_deref()?;
                self.hosts().node_index(name).map(|n| n as u32)
            })
            .collect();
        let host_node = pods
            .iter()
            .zip(&node)
            .map(|(&p, n)| n.filter(|_| self.pods()[p].host_network))
            .collect();
        Matrix {
            port,
            protocol,
            host_node,
            node,
            pods,
            externals: externals.to_vec(),
            classes,
            verdicts,
            external_allowed,
        }
    }
}

impl Matrix {
    /// Source pod at position `i` of [`Matrix::pods`] to destination pod at position `j`.
    pub fn allowed(&self, i: usize, j: usize) -> bool {
        if self.host_node[i].is_some() && self.host_node[i] == self.node[j] {
            return true;
        }
        let (a, b) = (
            self.classes.class_of[i] as usize,
            self.classes.class_of[j] as usize,
        );
        self.verdicts.allowed(a, b)
    }

    /// Source pod at position `i` to external destination `e`.
    pub fn allowed_external(&self, i: usize, e: usize) -> bool {
        let a = self.classes.class_of[i] as usize;
        self.external_allowed[a * self.externals.len() + e]
    }

    /// Cells the Kubernetes specification leaves to the implementation: loopback and
    /// hostNetwork sources or destinations, as `(source key, destination key, why)`.
    pub fn implementation_defined(
        &self,
        index: &PolicyIndex,
    ) -> Vec<(String, String, &'static str)> {
        let pods = index.pods();
        let mut out = Vec::new();
        for &s in &self.pods {
            out.push((pods[s].key(), pods[s].key(), "loopback"));
        }
        for &s in &self.pods {
            for &d in &self.pods {
                // Includes a hostNetwork pod to a pod on its node (Calico: never policed).
                if s != d && (pods[s].host_network || pods[d].host_network) {
                    out.push((pods[s].key(), pods[d].key(), "hostNetwork"));
                }
            }
        }
        out
    }

    /// `{"port", "protocol", "allowed": {src: {dst: bool}}, "implementation_defined": [..]}`.
    pub fn to_json(&self, index: &PolicyIndex) -> Value {
        let pods = index.pods();
        let mut allowed = Map::new();
        for (i, &s) in self.pods.iter().enumerate() {
            let mut row = Map::new();
            for (j, &d) in self.pods.iter().enumerate() {
                row.insert(pods[d].key(), Value::Bool(self.allowed(i, j)));
            }
            for (e, (name, _)) in self.externals.iter().enumerate() {
                row.insert(name.clone(), Value::Bool(self.allowed_external(i, e)));
            }
            allowed.insert(pods[s].key(), Value::Object(row));
        }
        let caveats: Vec<Value> = self
            .implementation_defined(index)
            .into_iter()
            .map(|(s, d, why)| json!({"from": s, "to": d, "why": why}))
            .collect();
        json!({
            "port": self.port,
            "protocol": self.protocol.to_string(),
            "allowed": allowed,
            "implementation_defined": caveats,
        })
    }

    /// A truth table as the upstream e2e tests print it: `.` allowed, `X` blocked.
    pub fn to_text(&self, index: &PolicyIndex) -> String {
        let pods = index.pods();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Reachability {}/{} (rows: from, columns: to; . allowed, X blocked)",
            self.port, self.protocol
        );
        let mut header = vec!["-".to_string()];
        header.extend(self.pods.iter().map(|&d| pods[d].key()));
        header.extend(self.externals.iter().map(|(n, _)| n.clone()));
        let _ = writeln!(out, "{}", header.join("\t"));
        for (i, &s) in self.pods.iter().enumerate() {
            let mut row = vec![pods[s].key()];
            for j in 0..self.pods.len() {
                row.push(if self.allowed(i, j) { "." } else { "X" }.into());
            }
            for e in 0..self.externals.len() {
                row.push(
                    if self.allowed_external(i, e) {
                        "."
                    } else {
                        "X"
                    }
                    .into(),
                );
            }
            let _ = writeln!(out, "{}", row.join("\t"));
        }
        out
    }
}
