//! The engine driving a plan of steps over a "world" of files, used by the crash
//! tests (tests/engine.rs): they SIGKILL this process at random moments and
//! check that resuming and rolling back always converge.
//!
//! ```text
//! fake_migration apply|rollback --state-dir DIR --world DIR [--steps N]
//!     [--delay-ms MS] [--cluster-uid UID] [--fingerprint F] [--to STEP]
//! ```
//!
//! Step `step-i` sets keys `k{i}` and `k{i+1 mod N}` to `v{i}`: neighbouring steps
//! overlap, so rolling back in the wrong order would leave the world wrong. Every
//! change a step's `ensure` makes, and every verify that passes, is appended to
//! `<world>/ops.log`, so the test can prove that no step acted after its verify
//! had passed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use calico_migrate::engine::{
    self, Journal, JournalIdentity, Mode, Outcome, PlannedStep, Step, StepFuture, Verification,
};
use serde_json::{Value, json};

struct World {
    dir: PathBuf,
    delay: Duration,
}

impl World {
    fn read(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(key)).ok()
    }

    /// Atomic write (temp file + rename), so a kill never leaves half a value.
    fn write(&self, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        let path = self.dir.join(key);
        match value {
            Some(v) => {
                let tmp = self.dir.join(format!(".{key}.tmp"));
                std::fs::write(&tmp, v)?;
                std::fs::rename(&tmp, &path)?;
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            },
        }
        Ok(())
    }

    fn log(&self, line: &str) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("ops.log"))?;
        f.write_all(format!("{line}\n").as_bytes())?;
        Ok(())
    }

    async fn pause(&self) {
        tokio::time::sleep(self.delay).await;
    }
}

struct KeyStep {
    id: String,
    keys: Vec<String>,
    value: String,
}

impl Step<World> for KeyStep {
    fn id(&self) -> &str {
        &self.id
    }

    fn title(&self) -> &str {
        "set keys"
    }

    fn capture<'a>(&'a self, w: &'a World) -> StepFuture<'a, Value> {
        Box::pin(async move {
            let before: serde_json::Map<String, Value> = self
                .keys
                .iter()
                .map(|k| (k.clone(), json!(w.read(k))))
                .collect();
            Ok(Value::Object(before))
        })
    }

    fn ensure<'a>(&'a self, w: &'a World) -> StepFuture<'a, ()> {
        Box::pin(async move {
            for k in &self.keys {
                if w.read(k).as_deref() != Some(self.value.as_str()) {
                    w.log(&format!("act {} {k}", self.id))?;
                    w.pause().await;
                    w.write(k, Some(&self.value))?;
                }
            }
            Ok(())
        })
    }

    fn verify<'a>(&'a self, w: &'a World) -> StepFuture<'a, Verification> {
        Box::pin(async move {
            w.pause().await;
            let missing: Vec<&String> = self
                .keys
                .iter()
                .filter(|k| w.read(k).as_deref() != Some(self.value.as_str()))
                .collect();
            if missing.is_empty() {
                w.log(&format!("verified {}", self.id))?;
                Ok(Verification::passed("keys set"))
            } else {
                Ok(Verification::failed(format!("not set: {missing:?}")))
            }
        })
    }

    fn rollback<'a>(&'a self, w: &'a World, saved: &'a Value) -> StepFuture<'a, ()> {
        Box::pin(async move {
            let saved = saved
                .as_object()
                .ok_or_else(|| anyhow::anyhow!("rollback data is not an object"))?;
            w.log(&format!("undo {}", self.id))?;
            for (k, v) in saved {
                w.pause().await;
                w.write(k, v.as_str())?;
            }
            Ok(())
        })
    }
}

struct Args {
    mode: String,
    state_dir: PathBuf,
    world: PathBuf,
    steps: usize,
    delay_ms: u64,
    cluster_uid: String,
    fingerprint: String,
    to: Option<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let mode = it
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: apply|rollback ..."))?;
    let mut a = Args {
        mode,
        state_dir: PathBuf::new(),
        world: PathBuf::new(),
        steps: 5,
        delay_ms: 2,
        cluster_uid: "fake-cluster".into(),
        fingerprint: "fake-plan".into(),
        to: None,
    };
    while let Some(flag) = it.next() {
        let val = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--state-dir" => a.state_dir = val.into(),
            "--world" => a.world = val.into(),
            "--steps" => a.steps = val.parse()?,
            "--delay-ms" => a.delay_ms = val.parse()?,
            "--cluster-uid" => a.cluster_uid = val,
            "--fingerprint" => a.fingerprint = val,
            "--to" => a.to = Some(val),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn steps(n: usize) -> Vec<Box<dyn Step<World>>> {
    (0..n)
        .map(|i| {
            Box::new(KeyStep {
                id: format!("step-{i}"),
                keys: vec![format!("k{i}"), format!("k{}", (i + 1) % n)],
                value: format!("v{i}"),
            }) as Box<dyn Step<World>>
        })
        .collect()
}

fn open_journal(a: &Args, plan: &[Box<dyn Step<World>>]) -> anyhow::Result<Journal> {
    let identity = JournalIdentity {
        cluster_uid: a.cluster_uid.clone(),
        plan_fingerprint: a.fingerprint.clone(),
    };
    let journal = if Journal::exists(&a.state_dir) {
        let j = Journal::open(&a.state_dir)?;
        j.check_identity(&identity)?;
        j
    } else {
        let planned = plan
            .iter()
            .map(|s| PlannedStep {
                id: s.id().into(),
                title: s.title().into(),
            })
            .collect();
        Journal::create(&a.state_dir, identity, planned)?
    };
    Ok(journal)
}

async fn real_main() -> anyhow::Result<ExitCode> {
    let a = parse_args()?;
    let plan = steps(a.steps);
    let mut journal = open_journal(&a, &plan)?;
    let mode = match a.mode.as_str() {
        "apply" => Mode::Apply,
        "rollback" => {
            let down_to = match &a.to {
                None => 0,
                Some(id) => journal
                    .state()
                    .index_of(id)
                    .ok_or_else(|| anyhow::anyhow!("unknown step id `{id}`"))?,
            };
            Mode::Rollback { down_to }
        }
        other => anyhow::bail!("unknown mode {other}"),
    };
    let world = World {
        dir: a.world.clone(),
        delay: Duration::from_millis(a.delay_ms),
    };
    let outcome = engine::run(&mut journal, &plan, &world, mode).await?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(match outcome {
        Outcome::Completed => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn main() -> ExitCode {
    // As the real CLI: what it writes in the state dir is private from the first write.
    calico_migrate::engine::state_dir::make_new_files_private();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(real_main()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
