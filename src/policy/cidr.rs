//! Pod -> every address of a CIDR, exactly. The CIDR is cut wherever a policy or network
//! set draws a boundary inside it and around every pod and node address in it; inside
//! one piece every net holds all of it or none of it, so one address decides the piece.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Serialize;

use super::index::PolicyIndex;
use super::model::Protocol;
use super::verdict::Verdict;

/// Consecutive addresses with one verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AddressRange {
    pub first: IpAddr,
    pub last: IpAddr,
    /// The pod holding this address (a one-address range), judged pod to pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub verdict: Verdict,
}

/// How much of a CIDR the policies allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    All,
    Partly,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CidrVerdict {
    #[serde(serialize_with = "as_text")]
    pub net: IpNet,
    pub allowed: Coverage,
    /// In address order, covering the whole CIDR; neighbours differ in verdict or one
    /// of them is a pod.
    pub ranges: Vec<AddressRange>,
}

impl PolicyIndex {
    /// Pod -> each address of `net` on one port.
    pub fn verdict_cidr(
        &self,
        src: usize,
        net: IpNet,
        port: u16,
        protocol: Protocol,
    ) -> CidrVerdict {
        let net = net.trunc();
        let v6 = matches!(net, IpNet::V6(_));
        let (start, end) = (bits(net.network()), bits(net.broadcast()));
        let mut cuts = BTreeSet::from([start]);
        let mut cut_around = |first: u128, last: u128| {
            if last < start || first > end {
                return;
            }
            cuts.insert(first.max(start));
            if last < end {
                cuts.insert(last + 1);
            }
        };
        for c in self.cidrs() {
            if matches!(c, IpNet::V6(_)) == v6 {
                cut_around(bits(c.network()), bits(c.broadcast()));
            }
        }
        let held = self.pods().iter().filter_map(|p| p.ip);
        let nodes = self
            .hosts()
            .nodes
            .iter()
            .flat_map(|n| n.addresses.iter().copied());
        for ip in held.chain(nodes) {
            if ip.is_ipv6() == v6 {
                cut_around(bits(ip), bits(ip));
            }
        }

        let cuts: Vec<u128> = cuts.into_iter().collect();
        let mut ranges: Vec<AddressRange> = Vec::new();
        for (i, &first) in cuts.iter().enumerate() {
            let last = cuts.get(i + 1).map_or(end, |next| next - 1);
            let ip = addr(first, v6);
            let verdict = self.verdict_to_address(src, ip, port, protocol);
            let pod = self.hosts().pod_at(ip).map(|p| self.pods()[p].key());
            if let Some(prev) = ranges.last_mut()
                && pod.is_none()
                && prev.pod.is_none()
                && prev.verdict == verdict
            {
                prev.last = addr(last, v6);
                continue;
            }
            ranges.push(AddressRange {
                first: ip,
                last: addr(last, v6),
                pod,
                verdict,
            });
        }
        let allowed = match (
            ranges.iter().all(|r| r.verdict.allowed),
            ranges.iter().any(|r| r.verdict.allowed),
        ) {
            (true, _) => Coverage::All,
            (false, true) => Coverage::Partly,
            (false, false) => Coverage::None,
        };
        CidrVerdict {
            net,
            allowed,
            ranges,
        }
    }
}

fn as_text<S: serde::Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(net)
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn addr(bits: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        // Within an IPv4 CIDR the value fits in 32 bits.
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    }
}
