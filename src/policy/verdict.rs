//! [`Verdict`]: whether a connection is allowed, and which policy and rule decided on
//! each side.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::index::{PolicyIndex, PolicyPos, RawReason, SideOutcome};
use super::model::{Action, Direction, PolicyId, Protocol};

/// A rule, named by its object and its place in the object's rule list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleRef {
    pub policy: PolicyId,
    pub tier: String,
    pub direction: Direction,
    /// Index in the object's `ingress`/`egress` list.
    pub index: usize,
    pub action: Action,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (tier {}) {}[{}] {:?}",
            self.policy, self.tier, self.direction, self.index, self.action
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// This side is not a pod's workload endpoint (an external address or a hostNetwork pod).
    NotApplicable,
    /// No policy selects the pod in this direction: Calico's namespace profile allows.
    NoPolicy,
    /// A rule matched and decided.
    Rule { rule: RuleRef },
    /// Policies of this tier select the pod and none matched: dropped at the end of the tier.
    EndOfTier {
        tier: String,
        policies: Vec<PolicyId>,
    },
    /// Every tier passed the packet on: the profile allows.
    PassedToProfile,
    /// From the pod's own node: Calico does not police a host's traffic to its local pods.
    LocalHost,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotApplicable => write!(f, "not a workload endpoint: no policy applies"),
            Reason::NoPolicy => write!(f, "no policy selects the pod: allowed by the profile"),
            Reason::Rule { rule } => write!(f, "decided by {rule}"),
            Reason::EndOfTier { tier, policies } => {
                let names: Vec<String> = policies.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "no rule matched in tier {tier} (selected by {}): dropped",
                    names.join(", ")
                )
            }
            Reason::PassedToProfile => write!(f, "passed by every tier: allowed by the profile"),
            Reason::LocalHost => write!(
                f,
                "from the pod's own node: Calico never applies ingress policy to it"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideDecision {
    pub allowed: bool,
    pub reason: Reason,
    /// Log (and Pass) rules the packet matched on the way.
    pub logged: Vec<RuleRef>,
}

/// Cases the Kubernetes specification leaves to the implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Caveat {
    /// A pod talking to itself: with Calico it never leaves the pod, so no policy applies.
    Loopback,
    /// The source uses the node's network namespace: host traffic, not pod policy.
    HostNetworkSource,
    /// The destination uses the node's network namespace: no pod ingress policy.
    HostNetworkDestination,
    /// Traffic between a pod and its own node. Kubernetes always allows it; Calico lets
    /// the node in without policy but applies the pod's egress policy towards the node.
    OwnNode,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// What the policies say: egress of the source and ingress of the destination.
    pub allowed: bool,
    pub egress: SideDecision,
    /// `None` for an external destination.
    pub ingress: Option<SideDecision>,
    pub caveats: Vec<Caveat>,
}

impl PolicyIndex {
    /// Fast yes/no for pod -> pod (no reasons collected).
    pub fn allowed(&self, src: usize, dst: usize, port: u16, protocol: Protocol) -> bool {
        self.sent_by_local_host(src, dst) || self.decide_pods_until_denied(src, dst, port, protocol)
    }

    /// Fast yes/no for pod -> external address.
    pub fn allowed_external(&self, src: usize, ip: IpAddr, port: u16, protocol: Protocol) -> bool {
        self.decide_external(src, ip, port, protocol).allowed
    }

    /// Pod -> pod with the deciding rules on both sides.
    pub fn verdict(&self, src: usize, dst: usize, port: u16, protocol: Protocol) -> Verdict {
        let ((eg, eg_logs), ing) = self.decide_with_logs(src, Ok(dst), port, protocol);
        let egress = self.side(Direction::Egress, eg, &eg_logs);
        let ingress = ing.map(|(o, logs)| self.side(Direction::Ingress, o, &logs));
        let mut caveats = Vec::new();
        if src == dst {
            caveats.push(Caveat::Loopback);
        }
        if self.pods()[src].host_network {
            caveats.push(Caveat::HostNetworkSource);
        }
        if self.pods()[dst].host_network {
            caveats.push(Caveat::HostNetworkDestination);
        }
        if self.sent_by_local_host(src, dst) {
            caveats.push(Caveat::OwnNode);
        }
        let allowed = egress.allowed && ingress.as_ref().is_none_or(|s| s.allowed);
        self.with_tier_policies(
            Verdict {
                allowed,
                egress,
                ingress,
                caveats,
            },
            src,
            Some(dst),
        )
    }

    /// Pod -> external address with the deciding egress rule.
    pub fn verdict_external(
        &self,
        src: usize,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
    ) -> Verdict {
        let ((eg, eg_logs), _) = self.decide_with_logs(src, Err(ip), port, protocol);
        let egress = self.side(Direction::Egress, eg, &eg_logs);
        let mut caveats = Vec::new();
        if self.pods()[src].host_network {
            caveats.push(Caveat::HostNetworkSource);
        }
        self.with_tier_policies(
            Verdict {
                allowed: egress.allowed,
                egress,
                ingress: None,
                caveats,
            },
            src,
            None,
        )
    }

    fn rule_ref(&self, dir: Direction, pos: PolicyPos, rule: u32) -> RuleRef {
        let p = self.policy_at(pos);
        let r = &p.rules(dir).unwrap_or(&[])[rule as usize];
        RuleRef {
            policy: p.id.clone(),
            tier: p.tier.clone(),
            direction: dir,
            index: r.index,
            action: r.action,
        }
    }

    pub(super) fn side(
        &self,
        dir: Direction,
        o: SideOutcome,
        logs: &[(PolicyPos, u32)],
    ) -> SideDecision {
        let reason = match o.reason {
            RawReason::NotApplicable => Reason::NotApplicable,
            RawReason::NoPolicy => Reason::NoPolicy,
            RawReason::PassedToProfile => Reason::PassedToProfile,
            RawReason::LocalHost => Reason::LocalHost,
            RawReason::Rule { policy, rule } => Reason::Rule {
                rule: self.rule_ref(dir, policy, rule),
            },
            RawReason::EndOfTier { tier_of } => {
                let tier = self.policy_at(tier_of).tier.clone();
                Reason::EndOfTier {
                    tier,
                    policies: Vec::new(),
                }
            }
        };
        SideDecision {
            allowed: o.allowed,
            reason,
            logged: logs
                .iter()
                .map(|&(p, r)| self.rule_ref(dir, p, r))
                .collect(),
        }
    }

    /// Fill the `policies` of an end-of-tier reason: those of the tier selecting the pod.
    pub(super) fn with_tier_policies(
        &self,
        mut v: Verdict,
        src: usize,
        dst: Option<usize>,
    ) -> Verdict {
        let fill = |side: &mut SideDecision, pod: usize, dir: Direction| {
            if let Reason::EndOfTier { tier, policies } = &mut side.reason {
                *policies = self
                    .policies_for(pod, dir)
                    .iter()
                    .map(|&pos| self.policy_at(pos))
                    .filter(|p| p.tier == *tier)
                    .map(|p| p.id.clone())
                    .collect();
            }
        };
        fill(&mut v.egress, src, Direction::Egress);
        if let (Some(side), Some(d)) = (v.ingress.as_mut(), dst) {
            fill(side, d, Direction::Ingress);
        }
        v
    }
}
