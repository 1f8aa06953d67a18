//! The embedded Kubernetes API server used for rehearsals and tests.

pub mod scenario;
