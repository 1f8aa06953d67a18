//! Everything that talks to Kubernetes through kube (`kube::Client`).

pub mod access;
pub mod connect;
pub mod errors;
pub mod inventory;
pub mod lease;
pub mod objects;
pub mod reduce;
