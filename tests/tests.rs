//! The integration tests, as one binary: each module was a test binary of its own,
//! and each of those linked the whole crate. Run one module with
//! `cargo test --test integration MODULE::` (e.g. `apply::`).
//!
//! All modules share one process: nothing here may change process-wide state (the
//! environment, the umask, the current directory, a global tracing subscriber) or
//! listen on a fixed port or write to a fixed path.

// Shared helpers.
mod api_sentence;
mod helm_client;
mod kubectl_client;
mod support;

// The tests, one module per area.
mod apply;
mod check;
mod compatibility;
mod deploy;
mod engine;
mod operator_chart;
mod plan;
mod policy;
mod policy_class_verdicts;
mod policy_hosts;
mod rehearse;
mod sandbox_api;
mod sandbox_behaviour;
mod sandbox_dataplane;
mod sandbox_kubectl;
mod sandbox_upgrade;
mod scenario;
