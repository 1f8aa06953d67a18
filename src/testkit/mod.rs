//! Fixtures shared by `rehearse`, the integration tests and the benches: one place
//! that starts a sandbox the way a migration needs it (seeded, controllers and data
//! plane running, served on loopback), so that the order of those steps and their
//! knobs are written once.
//!
//! A normal module, not `cfg(test)`: the `rehearse` command runs on it, and the
//! integration tests and benches link the library as any other crate does.

mod rig;

pub use rig::{Rig, RigOptions};
