//! `calico-migrate check`: prove on every node that what the policies say is what
//! the node does. Pure parts: [`workload`] (probe manifests), [`plan`] (which probes,
//! expected verdicts from the policy engine), [`outcome`] (agnhost result classes,
//! comparison, baseline), [`render`] (text, JSON, JUnit). I/O: [`round`] (create the
//! probe workload, exec probes with bounded concurrency, clean up) and [`watch`]
//! (probe one node continuously during its agent swap). See docs/checks.md.

pub mod conn;
pub mod outcome;
pub mod plan;
pub mod render;
pub mod round;
pub mod watch;
pub mod workload;

pub use outcome::{Failure, FailureClass, ResultClass, RoundReport};
pub use plan::{Expected, Probe, ProbeKind, RoundPlan};
pub use round::{CheckError, Prober, RoundOptions, cleanup, run_round};
pub use watch::{InFlight, NodeWatch, agent_ready, every, watch_node};
