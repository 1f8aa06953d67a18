//! Bounded waits: poll until a condition holds, saying what is still awaited.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::world::World;
use crate::cluster::objects::ObjRef;

/// Poll `probe` every `world.options.poll` until it answers `None` (done); `Some(text)`
/// says what is still awaited (logged when it changes). Fails after `timeout`.
pub async fn wait_until<F, Fut>(
    world: &World,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match probe().await? {
            None => return Ok(()),
            Some(waiting) => {
                if waiting != last {
                    tracing::info!("waiting for {what}: {waiting}");
                    last = waiting;
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "gave up after {} s waiting for {what}: {last}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(world.options.poll).await;
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
