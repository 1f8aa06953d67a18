//! Addresses of a VPC like EKS clusters use: 10.0.0.0/16 split into one /18
//! subnet per availability zone; with the VPC CNI, pods take secondary IPs of
//! their node's subnet (no podCIDR on the Node).

use std::net::Ipv4Addr;

/// Zones the nodes are spread over (a, b, c of the region).
pub const ZONES: usize = 3;
/// Host addresses in each zone's /18 reserved for nodes: 10 .. 1023 (the first four
/// /24s, the first ten addresses left to the VPC); pods take the rest.
const NODE_BASE: u32 = 10;
/// First host address of a zone's /18 that pods take.
pub const POD_BASE: u32 = 1024;
/// Addresses in each zone's /18.
pub const SUBNET_SIZE: u32 = 1 << 14;

/// Most nodes the address plan supports.
pub const MAX_NODES: usize = ZONES * (POD_BASE - NODE_BASE) as usize;
/// Most pod IPs per zone.
pub const MAX_PODS_PER_ZONE: usize = (SUBNET_SIZE - POD_BASE - 1) as usize;

/// A node as the other builders need it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub index: usize,
    pub name: String,
    pub ip: String,
    pub zone: usize,
}

fn subnet_base(zone: usize) -> u32 {
    u32::from(Ipv4Addr::new(10, 0, 0, 0)) + zone as u32 * SUBNET_SIZE
}

/// Node `i`'s zone and primary IP (zone = i mod 3).
pub fn node_address(i: usize) -> (usize, Ipv4Addr) {
    let zone = i % ZONES;
    let host = NODE_BASE + (i / ZONES) as u32;
    (zone, Ipv4Addr::from(subnet_base(zone) + host))
}

/// Hands out pod IPs per zone in order: deterministic and collision-free as long as no
/// zone takes more than [`MAX_PODS_PER_ZONE`] (see [`PodIps::overflow`]).
#[derive(Debug, Default)]
pub struct PodIps {
    next: [u32; ZONES],
}

impl PodIps {
    pub fn next(&mut self, node: &NodeInfo) -> String {
        let z = node.zone % ZONES;
        let ip = Ipv4Addr::from(subnet_base(z) + POD_BASE + self.next[z]);
        self.next[z] += 1;
        ip.to_string()
    }

    /// The first zone given more pods than its subnet holds, with its pod count: the
    /// addresses past the subnet's end are then another zone's.
    pub fn overflow(&self) -> Option<(usize, usize)> {
        (0..ZONES)
            .map(|z| (z, self.next[z] as usize))
            .find(|&(_, n)| n > MAX_PODS_PER_ZONE)
    }
}
