//! The evaluator's model: namespaces, pods, network sets and policies in one
//! intermediate form. Kubernetes NetworkPolicies are translated into the Calico form
//! the way Calico itself does (`knp.default.<name>`, order 1000, default tier, Allow
//! rules), so one evaluator decides both kinds.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::selector::{Labels, Selector};

/// Label Calico puts on every workload endpoint: the pod's namespace.
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// Label Calico puts on every workload endpoint: `k8s`.
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// Label Calico puts on every workload endpoint: the pod's service account.
pub const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
/// Label the API server puts on every namespace (Kubernetes 1.21+).
pub const LABEL_K8S_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
/// Label Calico's namespace profiles carry: the namespace's name.
pub const LABEL_CALICO_NAME: &str = "projectcalico.org/name";

/// Order Calico gives every Kubernetes NetworkPolicy in the default tier
/// (projectcalico/calico libcalico-go/lib/backend/k8s/conversion/constants.go).
pub const K8S_POLICY_ORDER: f64 = 1000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parse the spelling Kubernetes and Calico use (case-insensitive).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// IANA protocol number, which Calico rules may use instead of the name.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A namespace with its effective labels (its own plus the implicit name labels).
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    pub fn new(name: &str, own_labels: Labels) -> Namespace {
        let mut labels = own_labels;
        labels.insert(LABEL_K8S_NAMESPACE_NAME.into(), name.into());
        labels.insert(LABEL_CALICO_NAME.into(), name.into());
        Namespace {
            name: name.into(),
            labels,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as the data plane sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// The pod's own labels; [`Pod::endpoint_labels`] adds Calico's.
    pub labels: Labels,
    pub ip: Option<IpAddr>,
    pub node: Option<String>,
    pub host_network: bool,
    pub service_account: String,
    pub named_ports: Vec<NamedPort>,
}

impl Pod {
    /// `namespace/name`, the key used in matrices and reports.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The labels of the pod's workload endpoint: the pod's plus those Calico adds.
    pub fn endpoint_labels(&self) -> Labels {
        let mut labels = self.labels.clone();
        labels.insert(LABEL_NAMESPACE.into(), self.namespace.clone());
        labels.insert(LABEL_ORCHESTRATOR.into(), "k8s".into());
        labels.insert(LABEL_SERVICE_ACCOUNT.into(), self.service_account.clone());
        labels
    }
}

/// A node: the host side of its pods' traffic. Its addresses come from the Node object's
/// `status.addresses` (InternalIP, ExternalIP) or from its hostNetwork pods' IPs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

/// A GlobalNetworkSet: labelled CIDRs that rule selectors can match.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSet {
    pub name: String,
    pub labels: Labels,
    pub nets: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PolicyKind {
    /// networking.k8s.io/v1 NetworkPolicy.
    KubernetesNetworkPolicy,
    /// Calico (crd.projectcalico.org/v1 or projectcalico.org/v3) NetworkPolicy.
    CalicoNetworkPolicy,
    /// Calico GlobalNetworkPolicy.
    GlobalNetworkPolicy,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::KubernetesNetworkPolicy => "NetworkPolicy (k8s)",
            PolicyKind::CalicoNetworkPolicy => "NetworkPolicy (Calico)",
            PolicyKind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
        })
    }
}

/// Which object a policy came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Action {
    Allow,
    Deny,
    Log,
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A rule's protocol: one we probe, or another (ICMP, a number) that never matches a probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProtocolMatch {
    Known(Protocol),
    Other(String),
}

impl ProtocolMatch {
    pub fn matches(&self, p: Protocol) -> bool {
        matches!(self, ProtocolMatch::Known(q) if *q == p)
    }
}

/// One entry of `ports`/`notPorts`: a range (a single port is `n..=n`) or a named port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortSpec {
    Range(u16, u16),
    Named(String),
}

/// The source or destination half of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EntityMatch {
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    pub selector: Option<Selector>,
    pub not_selector: Option<Selector>,
    pub namespace_selector: Option<Selector>,
    /// The namespace a namespaced policy's bare `selector` is confined to.
    pub home_namespace: Option<String>,
    pub ports: Vec<PortSpec>,
    pub not_ports: Vec<PortSpec>,
    pub service_account_names: Vec<String>,
}

impl EntityMatch {
    /// True when the entity restricts which endpoints match (not only addresses).
    pub fn selects_endpoints(&self) -> bool {
        self.selector.is_some() || self.namespace_selector.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Index of the rule in the object's `ingress`/`egress` list (Kubernetes rules
    /// expand into several of these with the same index, one per peer and port).
    pub index: usize,
    pub action: Action,
    pub protocol: Option<ProtocolMatch>,
    pub not_protocol: Option<ProtocolMatch>,
    pub ip_version: Option<u8>,
    pub source: EntityMatch,
    pub destination: EntityMatch,
}

/// A policy in evaluation form.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub id: PolicyId,
    pub tier: String,
    /// `None` sorts after every number, as Calico treats a missing order.
    pub order: Option<f64>,
    /// Name Calico sorts ties by (`knp.default.<name>` for Kubernetes policies).
    pub sort_name: String,
    /// For namespaced policies: only endpoints of this namespace.
    pub namespace: Option<String>,
    pub selector: Selector,
    pub namespace_selector: Option<Selector>,
    pub service_account_selector: Option<Selector>,
    /// `None` when the policy's types do not include ingress.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// A Calico Tier's order; the default tier exists without an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub name: String,
    pub order: Option<f64>,
    /// What happens to a packet no policy of the tier decided: `Deny` (the default) or
    /// `Pass` (the Tier's `spec.defaultAction`).
    pub default_action: Action,
}

/// Order of the `default` tier in current Calico (api/pkg/apis/projectcalico/v3/tier.go).
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
