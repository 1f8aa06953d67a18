//! Seed objects for the sandbox: an EKS cluster running the aws-calico chart.
//!
//! [`build`] returns every object of the cluster as the API would serve it,
//! namespaces and CRDs first, so `Sandbox::load` can take them in order. The
//! same configuration and seed always give byte-identical JSON. Smaller
//! builders (`chart::calico_node_daemonset`, `cluster::node`,
//! `cluster::user_namespace`, ...) are public for tests and controllers.
//! What each object reproduces and from where: docs/scenario.md.

pub mod calico;
pub mod chart;
pub mod chart_render;
pub mod cluster;
pub mod ids;
pub mod net;
pub mod operator;
pub mod operator_chart;
pub mod policy_only;
mod release;
pub mod workloads;

use serde_json::Value;

pub use chart::ChartValues;
pub use release::{chart_release, live_chart_objects};

/// Timestamp of every seeded object: the cluster looks installed at one moment.
pub const BASE_TIME: &str = "2024-03-04T09:00:00Z";
/// [`BASE_TIME`] in Unix seconds.
pub const BASE_TIME_UNIX: i64 = 1_709_542_800;

/// Which aws-calico chart generation is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChartGeneration {
    /// Chart 0.3.10, Calico v3.19.1 as plain manifests in the release namespace.
    #[default]
    V0_3_10,
    /// Chart 0.3.11: tigera-operator v1.20.1 with Helm-managed CRDs.
    V0_3_11,
}

/// What the seeded cluster looks like. Build it with `..Default::default()`
/// so that new knobs keep their defaults.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub nodes: usize,
    /// Fargate nodes beside the EC2 ones (`cluster::fargate_node`), each running one
    /// pod of the Fargate profile namespace `fargate-apps`.
    pub fargate_nodes: usize,
    pub namespaces: usize,
    pub pods_per_namespace: usize,
    pub seed: u64,
    /// Whether Calico is installed: the aws-calico release of `chart` with its
    /// workloads, CRDs and RBAC, and Calico's cluster-wide objects. `false` seeds the same
    /// EKS cluster (nodes, add-ons, namespaces, workloads, NetworkPolicies) without any
    /// of it, for a real `helm install` of the chart (`sandbox --no-calico`).
    pub calico: bool,
    /// Which chart generation the cluster runs (plan must tell them apart).
    pub chart: ChartGeneration,
    /// Helm release name (`aws-calico` in the chart README; `calico` at the seed organisation).
    pub release_name: String,
    pub release_namespace: String,
    /// AWS region of the nodes (labels, provider IDs, DNS names).
    pub region: String,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            nodes: 6,
            fargate_nodes: 0,
            namespaces: 8,
            pods_per_namespace: 2,
            seed: 1,
            calico: true,
            chart: ChartGeneration::V0_3_10,
            release_name: "aws-calico".into(),
            release_namespace: "kube-system".into(),
            region: "eu-west-1".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// Upper bounds that keep the address plan collision-free.
pub const MAX_NAMESPACES: usize = 20_000;
pub const MAX_PODS: usize = 40_000;

/// Every object of the scenario, in creation order (namespaces and CRDs first).
pub fn build(cfg: &ScenarioConfig) -> Result<Vec<Value>, ScenarioError> {
    validate(cfg)?;
    release::assemble(cfg)
}

fn validate(sc: &ScenarioConfig) -> Result<(), ScenarioError> {
    let bad = |m: String| Err(ScenarioError::Invalid(m));
    if sc.nodes == 0 || sc.nodes > net::MAX_NODES {
        return bad(format!(
            "--nodes must be between 1 and {} (got {})",
            net::MAX_NODES,
            sc.nodes
        ));
    }
    if sc.fargate_nodes > net::MAX_NODES - sc.nodes {
        return bad(format!(
            "--fargate-nodes must be at most {} with {} EC2 nodes (got {}): the nodes share \
             the address plan's {} node addresses",
            net::MAX_NODES - sc.nodes,
            sc.nodes,
            sc.fargate_nodes,
            net::MAX_NODES
        ));
    }
    if sc.namespaces > MAX_NAMESPACES {
        return bad(format!(
            "--namespaces must be at most {MAX_NAMESPACES} (got {})",
            sc.namespaces
        ));
    }
    let pods = sc.namespaces.saturating_mul(sc.pods_per_namespace);
    if pods > MAX_PODS {
        return bad(format!(
            "namespaces x pods-per-namespace must be at most {MAX_PODS} (got {pods}); lower either"
        ));
    }
    // Helm limits release names to 53 characters of DNS-1123 label.
    if !is_dns1123_label(&sc.release_name) || sc.release_name.len() > 53 {
        return bad(format!(
            "release name {:?} must be a DNS-1123 label of at most 53 characters",
            sc.release_name
        ));
    }
    if !is_dns1123_label(&sc.release_namespace) {
        return bad(format!(
            "release namespace {:?} must be a DNS-1123 label",
            sc.release_namespace
        ));
    }
    if sc.region.is_empty()
        || !sc
            .region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad(format!("region {:?} must look like eu-west-1", sc.region));
    }
    Ok(())
}

/// RFC 1123 label: lowercase alphanumerics and '-', alphanumeric at both ends, 1..=63.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}
