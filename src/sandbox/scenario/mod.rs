//! Seed objects for the sandbox: an EKS cluster running the aws-calico chart.

use serde_json::Value;

/// What the seeded cluster looks like.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub nodes: usize,
    pub namespaces: usize,
    pub pods_per_namespace: usize,
    pub seed: u64,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            nodes: 6,
            namespaces: 8,
            pods_per_namespace: 2,
            seed: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// Every object of the scenario, in creation order (namespaces and CRDs first).
pub fn build(_cfg: &ScenarioConfig) -> Result<Vec<Value>, ScenarioError> {
    Ok(Vec::new())
}
