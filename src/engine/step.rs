//! A migration step as the engine sees it: observe, act, verify, undo.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

/// The futures steps return; boxed so plans can hold `dyn Step`.
pub type StepFuture<'a, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'a>>;

/// What a verify found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub passed: bool,
    /// Why it passed or what is still missing, for the journal and the user.
    pub detail: String,
}

impl Verification {
    pub fn passed(detail: impl Into<String>) -> Self {
        Verification {
            passed: true,
            detail: detail.into(),
        }
    }
    pub fn failed(detail: impl Into<String>) -> Self {
        Verification {
            passed: false,
            detail: detail.into(),
        }
    }
}

/// One step of a plan, acting on a world `W` (a cluster client, or a fake in tests).
///
/// Contract the runner relies on:
/// - `capture` changes nothing and returns everything `rollback` needs;
/// - `ensure` is idempotent: it observes and acts only where the world differs,
///   so running it again after a crash at any point converges;
/// - `verify` changes nothing;
/// - `rollback` is idempotent and restores what `capture` saw.
pub trait Step<W: ?Sized>: Send + Sync {
    fn id(&self) -> &str;
    fn title(&self) -> &str;
    fn capture<'a>(&'a self, world: &'a W) -> StepFuture<'a, Value>;
    fn ensure<'a>(&'a self, world: &'a W) -> StepFuture<'a, ()>;
    fn verify<'a>(&'a self, world: &'a W) -> StepFuture<'a, Verification>;
    fn rollback<'a>(&'a self, world: &'a W, saved: &'a Value) -> StepFuture<'a, ()>;
    /// What `ensure` would change now, one line per change, changing nothing
    /// (`apply --dry-run`). Steps that only wait or check say so.
    fn preview<'a>(&'a self, _world: &'a W) -> StepFuture<'a, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}
