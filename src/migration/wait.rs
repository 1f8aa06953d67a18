//! Bounded waits: poll until a condition holds, saying what is still awaited.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::world::World;
use crate::cluster::objects::ObjRef;

/// Poll `probe` every `world.options.poll` (counted from the start of the last poll)
/// until it answers `None` (done); `Some(text)` says what is still awaited (logged when
/// it changes). Fails after `timeout`.
pub async fn wait_until<F, Fut>(
    world: &World,
    what: &str,
    timeout: Duration,
    probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    poll(world.options.poll, what, timeout, Deadline::Fixed, probe).await
}

/// [`wait_until`] polling every `period`, for a task that holds no `World` (the
/// takeover's guard runs on a task of its own).
pub async fn wait_until_every<F, Fut>(
    period: Duration,
    what: &str,
    timeout: Duration,
    probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    poll(period, what, timeout, Deadline::Fixed, probe).await
}

/// Like [`wait_until`], but gives up only when the awaited state has not changed for
/// `idle` (a rollout over every node takes longer than one node's wait, and how much
/// longer grows with the cluster): `probe`'s text, e.g. "19 of 20 Ready", is the
/// progress.
pub async fn wait_while_progressing<F, Fut>(
    world: &World,
    what: &str,
    idle: Duration,
    probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    poll(
        world.options.poll,
        what,
        idle,
        Deadline::AfterLastChange,
        probe,
    )
    .await
}

/// When a wait gives up: `timeout` after it started, or after the awaited text last
/// changed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Fixed,
    AfterLastChange,
}

async fn poll<F, Fut>(
    period: Duration,
    what: &str,
    timeout: Duration,
    deadline: Deadline,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    let mut since = Instant::now();
    let mut last = String::new();
    let mut tick = crate::checks::every(period);
    loop {
        match probe().await? {
            None => return Ok(()),
            Some(waiting) => {
                if waiting != last {
                    tracing::info!("waiting for {what}: {waiting}");
                    last = waiting;
                    if deadline == Deadline::AfterLastChange {
                        since = Instant::now();
                    }
                }
            }
        }
        if since.elapsed() >= timeout {
            match deadline {
                Deadline::Fixed => bail!(
                    "gave up after {} s waiting for {what}: {last}",
                    timeout.as_secs()
                ),
                Deadline::AfterLastChange => bail!(
                    "gave up waiting for {what}: nothing changed for {} s ({last})",
                    timeout.as_secs()
                ),
            }
        }
        tick.tick().await;
    }
}

/// Wait (at most `node_ready_timeout`) until none of `refs` exists any more.
pub async fn wait_gone(world: &World, what: &str, refs: &[ObjRef]) -> anyhow::Result<()> {
    wait_until(world, what, world.options.node_ready_timeout, || async {
        for r in refs {
            if world.objects.get(r).await?.is_some() {
                return Ok(Some(format!("{r} still exists")));
            }
        }
        Ok(None)
    })
    .await
}
