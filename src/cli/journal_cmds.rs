//! `status`, `history` and the journal checks of `rollback`.

use std::process::ExitCode;

use super::{GlobalOpts, RollbackArgs};

pub fn status(_g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    anyhow::bail!("status: not built yet")
}

pub fn history(_g: &GlobalOpts) -> anyhow::Result<ExitCode> {
    anyhow::bail!("history: not built yet")
}

pub fn rollback_preflight(_a: &RollbackArgs, _g: &GlobalOpts) -> anyhow::Result<()> {
    Ok(())
}
