//! calico-migrate: move an EKS cluster from the aws-calico Helm chart to the
//! Tigera Operator without a lapse in NetworkPolicy enforcement.
//!
//! Layers (see docs/architecture.md): `cli` -> `migration` -> `engine`, `checks`
//! -> `policy`; `cluster` does the Kubernetes I/O; `sandbox` is an in-process
//! Kubernetes API server used for rehearsals and tests; `testkit` starts one with
//! its controllers and data plane for them.

pub mod checks;
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod felix_env;
pub mod helm;
pub mod kinds;
pub mod migration;
pub mod policy;
pub mod progress;
pub mod rehearse;
pub mod sandbox;
pub mod testkit;
