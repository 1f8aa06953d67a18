//! Files the steps keep in the state dir: a step's first capture and the helpers
//! that write and remove state-dir files.
//!
//! The engine captures again when a failed step is attempted again, after that
//! step may already have changed the cluster (deleted a Secret, removed an
//! affinity). Steps whose changes destroy what their rollback needs keep their
//! first capture in the state dir and return it from every later capture, until
//! their rollback finishes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use super::world::World;
use crate::engine::state_dir::{read_json, write_atomic};

fn capture_path(world: &World, step: &str) -> PathBuf {
    world.state_dir.join(format!("capture-{step}.json"))
}

/// The capture an earlier attempt of `step` stored, if any.
pub fn stored_capture(world: &World, step: &str) -> anyhow::Result<Option<Value>> {
    Ok(read_json(
        &capture_path(world, step),
        &format!("remove it only if no attempt of `{step}` changed the cluster"),
    )?)
}

/// Keep `data` as the first capture of `step` (atomically), and return it.
pub fn keep_capture(world: &World, step: &str, data: Value) -> anyhow::Result<Value> {
    write_atomic(&capture_path(world, step), &serde_json::to_vec(&data)?)?;
    Ok(data)
}

/// Forget the first capture of `step` once its rollback is complete.
pub fn forget_capture(world: &World, step: &str) -> anyhow::Result<()> {
    remove_file(&capture_path(world, step))
}

pub fn remove_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}
