//! [`Hosts`]: the nodes of the model and which node or pod owns an address, so traffic
//! to or from a node (or an address that turns out to be a pod) is judged as the data
//! plane judges it.

use std::collections::HashMap;
use std::net::IpAddr;

use super::cluster::ClusterModel;
use super::model::Node;

#[derive(Debug, Clone, Default)]
pub struct Hosts {
    /// Node objects first, then nodes only named by pods' `spec.nodeName`.
    pub nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    node_by_ip: HashMap<IpAddr, usize>,
    /// Addresses held by exactly one workload (not hostNetwork) pod.
    pod_by_ip: HashMap<IpAddr, usize>,
}

impl Hosts {
    pub fn build(model: &ClusterModel) -> Hosts {
        let mut h = Hosts::default();
        for n in &model.nodes {
            h.node_mut(&n.name)
                .addresses
                .extend(n.addresses.iter().copied());
        }
        // A hostNetwork pod's IP is its node's address: the only source of node
        // addresses when the input holds no Node objects.
        let mut shared: HashMap<IpAddr, usize> = HashMap::new();
        for (i, p) in model.pods.iter().enumerate() {
            let Some(node) = &p.node else { continue };
            let n = h.node_mut(node);
            if p.host_network
                && let Some(ip) = p.ip
                && !n.addresses.contains(&ip)
            {
                n.addresses.push(ip);
            }
            if !p.host_network
                && let Some(ip) = p.ip
            {
                *shared.entry(ip).or_default() += 1;
                h.pod_by_ip.insert(ip, i);
            }
        }
        h.pod_by_ip.retain(|ip, _| shared.get(ip) == Some(&1));
        for (i, n) in h.nodes.iter().enumerate() {
            for ip in &n.addresses {
                h.node_by_ip.entry(*ip).or_insert(i);
            }
        }
        h
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        let i = *self.by_name.entry(name.to_string()).or_insert_with(|| {
            self.nodes.push(Node {
                name: name.to_string(),
                addresses: Vec::new(),
            });
            self.nodes.len() - 1
        });
        &mut self.nodes[i]
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The node holding this address (InternalIP, ExternalIP or a hostNetwork pod's IP).
    pub fn node_at(&self, ip: IpAddr) -> Option<usize> {
        self.node_by_ip.get(&ip).copied()
    }

    /// The workload pod holding this address, when exactly one does.
    pub fn pod_at(&self, ip: IpAddr) -> Option<usize> {
        self.pod_by_ip.get(&ip).copied()
    }
}
