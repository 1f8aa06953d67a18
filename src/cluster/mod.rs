//! Everything that talks to Kubernetes through kube (`kube::Client`).

pub mod errors;
