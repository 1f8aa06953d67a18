//! Verdicts between any two parties of a connection: pods, nodes and addresses.
//!
//! What Calico does with a node's own traffic, as the chart and the operator configure
//! it (both set `FELIX_DEFAULTENDPOINTTOHOSTACTION=ACCEPT`):
//! - node -> a pod on that node: never policed (felix/rules/static.go,
//!   filterOutputChain: "We don't currently police host -> endpoint").
//! - pod -> its own node: the pod's egress policy applies, then the endpoint-to-host
//!   action accepts. Kubernetes says traffic to and from the pod's node is always
//!   allowed; Calico enforces the egress side, so the verdict carries
//!   [`Caveat::OwnNode`].
//! - node -> a pod on another node: the packet arrives with the node's address as its
//!   source, judged by the pod's ingress policy like any address (nets, ipBlock).
//! - pod -> another node: the pod's egress policy against the node's address.

use std::net::IpAddr;

use super::index::{PolicyIndex, RawReason, SideOutcome};
use super::model::{Direction, Protocol};
use super::verdict::{Caveat, Reason, SideDecision, Verdict};

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A pod, by its index in [`PolicyIndex::pods`].
    Pod(usize),
    /// A node, by its index in the index's [`Hosts`](super::hosts::Hosts).
    Node(usize),
    /// Any address: resolved to the pod or node holding it when the model has one.
    Address(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error(
        "neither end is a pod's workload endpoint, so no pod policy applies; name a pod on one side"
    )]
    NoWorkload,
    #[error(
        "node {0} has no address in the input; add its Node object (status.addresses) or a \
         hostNetwork pod on it"
    )]
    NodeWithoutAddress(String),
}

/// A peer after resolving addresses to the pods and nodes that hold them.
#[derive(Debug, Clone, Copy)]
enum End {
    Pod(usize),
    /// A node or an outside address; `ip` is `None` for a node the input gives no
    /// address for (enough for its own pods, whose traffic from it is never policed).
    Host {
        node: Option<usize>,
        ip: Option<IpAddr>,
    },
}

impl PolicyIndex {
    /// Any peer -> any peer, with the deciding rules. At least one end must be a pod.
    pub fn verdict_between(
        &self,
        src: Peer,
        dst: Peer,
        port: u16,
        protocol: Protocol,
    ) -> Result<Verdict, PeerError> {
        match (self.end(src), self.end(dst)) {
            (End::Pod(s), End::Pod(d)) => Ok(self.verdict(s, d, port, protocol)),
            (End::Pod(s), End::Host { node, ip }) => {
                let ip = ip.ok_or_else(|| self.unaddressed(node))?;
                Ok(self.verdict_to_host(s, node, ip, port, protocol))
            }
            (End::Host { node, ip }, End::Pod(d)) => {
                self.verdict_from_host(node, ip, d, port, protocol)
            }
            (End::Host { .. }, End::Host { .. }) => Err(PeerError::NoWorkload),
        }
    }

    /// Pod -> an address: the pod holding it when one does, else an outside address
    /// (or a node's, which only the pod's egress policy judges).
    pub fn verdict_to_address(
        &self,
        src: usize,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Verdict {
        match self.hosts().pod_at(ip) {
            Some(d) => self.verdict(src, d, port, protocol),
            None => self.verdict_to_host(src, self.hosts().node_at(ip), ip, port, protocol),
        }
    }

    fn verdict_to_host(
        &self,
        src: usize,
        node: Option<usize>,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Verdict {
        let mut v = self.verdict_external(src, ip, port, protocol);
        if node.is_some() && node == self.node_of(src) {
            v.caveats.push(Caveat::OwnNode);
        }
        v
    }

    fn unaddressed(&self, node: Option<usize>) -> PeerError {
        let name = node.map_or_else(String::new, |n| self.hosts().nodes[n].name.clone());
        PeerError::NodeWithoutAddress(name)
    }

    fn end(&self, peer: Peer) -> End {
        match peer {
            Peer::Pod(i) => End::Pod(i),
            Peer::Node(n) => End::Host {
                node: Some(n),
                ip: self.hosts().nodes[n].addresses.first().copied(),
            },
            Peer::Address(ip) => match self.hosts().pod_at(ip) {
                Some(p) => End::Pod(p),
                None => End::Host {
                    node: self.hosts().node_at(ip),
                    ip: Some(ip),
                },
            },
        }
    }

    fn node_of(&self, pod: usize) -> Option<usize> {
        self.pods()[pod]
            .node
            .as_deref()
            .and_then(|n| self.hosts().node_index(n))
    }

    /// Node or outside address -> pod: no egress policy of ours on the sending side; the
    /// pod's own node is let through, anything else meets the pod's ingress policy.
    fn verdict_from_host(
        &self,
        node: Option<usize>,
        ip: Option<IpAddr>,
        dst: usize,
        port: u16,
        protocol: Protocol,
    ) -> Result<Verdict, PeerError> {
        let egress = SideDecision {
            allowed: true,
            reason: Reason::NotApplicable,
            logged: Vec::new(),
        };
        let mut caveats = Vec::new();
        let ingress = if node.is_some() && node == self.node_of(dst) {
            caveats.push(Caveat::OwnNode);
            let local = SideOutcome {
                allowed: true,
                reason: RawReason::LocalHost,
            };
            self.side(Direction::Ingress, local, &[])
        } else {
            let ip = ip.ok_or_else(|| self.unaddressed(node))?;
            let (out, logs) = self.decide_ingress_from(ip, dst, port, protocol);
            self.side(Direction::Ingress, out, &logs)
        };
        if self.pods()[dst].host_network {
            caveats.push(Caveat::HostNetworkDestination);
        }
        let v = Verdict {
            allowed: ingress.allowed,
            egress,
            ingress: Some(ingress),
            caveats,
        };
        // The egress side is not applicable, so only the ingress side's tier is filled.
        Ok(self.with_tier_policies(v, dst, Some(dst)))
    }
}
