//! The policy engine: what Kubernetes NetworkPolicies and Calico (Global)NetworkPolicies
//! say should reach what. Pure: no I/O, no async, no cluster client.
//!
//! Use: collect objects into a [`ClusterModel`] (from `serde_json::Value`s or YAML text),
//! build a [`PolicyIndex`] once per policy change, then ask [`PolicyIndex::verdict`],
//! [`PolicyIndex::verdict_external`] (with reasons), [`PolicyIndex::allowed`] /
//! [`PolicyIndex::allowed_external`] (fast yes/no), [`PolicyIndex::matrix`], and
//! [`diff`] to prove two policy sets equivalent.
//!
//! ```
//! use calico_migrate::policy::{ClusterModel, PolicyIndex, Protocol};
//! let yaml = r#"
//! apiVersion: v1
//! kind: Pod
//! metadata: {name: a, namespace: x}
//! status: {podIP: 10.0.0.1}
//! ---
//! apiVersion: crd.projectcalico.org/v1
//! kind: GlobalNetworkPolicy
//! metadata: {name: deny-aws-imds}
//! spec:
//!   types: [Egress]
//!   egress:
//!   - {action: Deny, protocol: TCP, destination: {nets: [169.254.169.254/32], ports: [80, 443]}}
//!   - {action: Allow, destination: {nets: [0.0.0.0/0]}}
//! "#;
//! let mut model = ClusterModel::new();
//! model.add_yaml(yaml, "example.yaml").unwrap();
//! let index = PolicyIndex::build(model).unwrap();
//! let a = index.pod_index("x/a").unwrap();
//! let imds = "169.254.169.254".parse().unwrap();
//! assert!(!index.allowed_external(a, imds, 80, Protocol::Tcp));
//! assert!(index.allowed_external(a, imds, 8080, Protocol::Tcp));
//! ```

pub mod cidr;
pub mod class_verdicts;
pub mod cluster;
pub mod diff;
pub mod error;
pub mod hosts;
pub mod index;
pub mod matrix;
pub mod model;
pub mod parse;
pub mod peer;
pub mod selector;
pub mod verdict;

pub use cidr::{AddressRange, CidrVerdict, Coverage};
pub use class_verdicts::ClassVerdicts;
pub use cluster::ClusterModel;
pub use diff::{CellDiff, DiffError, PolicySetDiff, diff};
pub use error::{InputError, Origin};
pub use hosts::Hosts;
pub use index::PolicyIndex;
pub use matrix::{Matrix, PodClasses, pod_classes};
pub use model::{
    Action, Direction, Namespace, NetworkSet, Node, Pod, Policy, PolicyId, PolicyKind, Protocol,
};
pub use peer::{Peer, PeerError};
pub use selector::{Labels, Selector, SelectorError};
pub use verdict::{Caveat, Reason, RuleRef, SideDecision, Verdict};
