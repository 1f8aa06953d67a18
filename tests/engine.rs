//! The engine and the journal commands through real processes: crash campaigns
//! (SIGKILL at random moments) and bad state dirs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use calico_migrate::engine::{Journal, JournalIdentity};

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_calico-migrate"))
}

/// The example that runs the engine over a world of files (examples/fake_migration.rs).
fn fake_migration() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_calico-migrate"));
    bin.parent()
        .expect("target dir")
        .join("examples")
        .join("fake_migration")
}

struct Trial {
    _tmp: tempfile::TempDir,
    state: PathBuf,
    world: PathBuf,
    steps: usize,
    delay_ms: u64,
}

impl Trial {
    fn new(steps: usize, delay_ms: u64) -> Trial {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        let world = tmp.path().join("world");
        std::fs::create_dir_all(&world).expect("world dir");
        // k0 is absent at the start: rollback must delete it again.
        for i in 1..steps {
            std::fs::write(world.join(format!("k{i}")), format!("init{i}")).expect("seed world");
        }
        Trial {
            _tmp: tmp,
            state,
            world,
            steps,
            delay_ms,
        }
    }

    fn command(&self, mode: &str) -> Command {
        let mut c = Command::new(fake_migration());
        c.arg(mode)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--world")
            .arg(&self.world)
            .args([
                "--steps",
                &self.steps.to_string(),
                "--delay-ms",
                &self.delay_ms.to_string(),
            ]);
        c
    }

    fn run(&self, mode: &str) -> Output {
        self.command(mode).output().expect("run fake_migration")
    }

    /// Start `mode` and SIGKILL it after `after_ms`.
    fn kill_after(&self, mode: &str, after_ms: u64) {
        let mut child = self
            .command(mode)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(after_ms));
        let _ = child.kill(); // SIGKILL on Unix; it may already have finished
        let _ = child.wait();
    }

    fn keys(&self) -> BTreeMap<String, String> {
        (0..self.steps)
            .filter_map(|i| {
                let k = format!("k{i}");
                std::fs::read_to_string(self.world.join(&k))
                    .ok()
                    .map(|v| (k, v))
            })
            .collect()
    }

    fn initial(&self) -> BTreeMap<String, String> {
        (1..self.steps)
            .map(|i| (format!("k{i}"), format!("init{i}")))
            .collect()
    }

    /// The world after every step, in order.
    fn target(&self) -> BTreeMap<String, String> {
        let mut w = self.initial();
        for i in 0..self.steps {
            for k in [i, (i + 1) % self.steps] {
                w.insert(format!("k{k}"), format!("v{i}"));
            }
        }
        w
    }

    /// No `act` of a step after a `verified` of it, until an `undo` of it.
    fn assert_no_action_after_verified(&self, trial: u64) {
        let log = std::fs::read_to_string(self.world.join("ops.log")).unwrap_or_default();
        let mut verified = std::collections::HashSet::new();
        for line in log.lines() {
            let mut parts = line.split_whitespace();
            let (Some(op), Some(step)) = (parts.next(), parts.next()) else {
                continue;
            };
            match op {
                "verified" => {
                    verified.insert(step.to_string());
                }
                "undo" => {
                    verified.remove(step);
                }
                "act" => assert!(
                    !verified.contains(step),
                    "trial {trial}: {step} acted after its verify passed\n{log}\n{}",
                    String::from_utf8_lossy(&run_cli(&self.state, &["history"]).stdout)
                ),
                _ => {}
            }
        }
    }
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"completed\""),
        "{what}: {out:?}"
    );
}

/// Kill apply (and rollback) at random moments, 50 seeded trials: every resume
/// finishes, no step acts after its verify passed, and rollback after any crash
/// point restores the world exactly.
#[test]
fn sigkill_at_random_points_always_resumes_and_rolls_back() {
    let trials = 50;
    for seed in 0..trials {
        let mut rng = fastrand::Rng::with_seed(seed);
        let t = Trial::new(3 + rng.usize(0..4), 1 + rng.u64(0..3));
        for _ in 0..rng.usize(1..4) {
            t.kill_after("apply", rng.u64(0..120));
        }
        if rng.bool() {
            // Roll back from wherever the crash left it, crashing the rollback too.
            for _ in 0..rng.usize(0..3) {
                t.kill_after("rollback", rng.u64(0..80));
            }
            assert_ok(&t.run("rollback"), "rollback after crash");
            assert_eq!(t.keys(), t.initial(), "trial {seed}: rollback after crash");
        }
        assert_ok(&t.run("apply"), "resumed apply");
        assert_eq!(t.keys(), t.target(), "trial {seed}: apply after crash");
        t.assert_no_action_after_verified(seed);
        for _ in 0..rng.usize(0..3) {
            t.kill_after("rollback", rng.u64(0..80));
        }
        assert_ok(&t.run("rollback"), "final rollback");
        assert_eq!(t.keys(), t.initial(), "trial {seed}: final rollback");
        t.assert_no_action_after_verified(seed);
    }
}

#[test]
fn partial_rollback_stops_at_the_named_step() {
    let t = Trial::new(4, 0);
    assert_ok(&t.run("apply"), "apply");
    let out = t
        .command("rollback")
        .args(["--to", "step-2"])
        .output()
        .expect("run");
    assert_ok(&out, "rollback --to step-2");
    // Steps 0 and 1 stay applied: k0 = v0, k1 = v1, k2 = v1 (step 1 set it).
    let keys = t.keys();
    assert_eq!(keys.get("k0").map(String::as_str), Some("v0"));
    assert_eq!(keys.get("k1").map(String::as_str), Some("v1"));
    assert_eq!(keys.get("k2").map(String::as_str), Some("v1"));
    assert_eq!(keys.get("k3").map(String::as_str), Some("init3"));
}

/// Make a journal with one verified step, the way apply leaves it.
fn journal_with_progress(dir: &Path) {
    let world = dir.with_extension("world");
    std::fs::create_dir_all(&world).expect("world dir");
    let out = Command::new(fake_migration())
        .args(["apply", "--steps", "3", "--delay-ms", "0", "--state-dir"])
        .arg(dir)
        .arg("--world")
        .arg(&world)
        .output()
        .expect("run");
    assert_ok(&out, "seed journal");
}

fn run_cli(state: &Path, args: &[&str]) -> Output {
    cli()
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("run calico-migrate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A user error: exit 2, one paragraph on stderr, no panic.
fn assert_user_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "not one paragraph: {err}"
    );
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

#[test]
fn status_and_history_read_the_journal() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("s");
    journal_with_progress(&state);
    let out = run_cli(&state, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("complete: all 3 steps verified"), "{text}");
    assert!(text.contains("step-2"), "{text}");

    let out = run_cli(&state, &["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["complete"], true);
    assert_eq!(v["cluster_uid"], "fake-cluster");
    assert_eq!(v["steps"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["steps"][0]["phase"], "verified");

    let out = run_cli(&state, &["history", "-o", "json"]);
    let events: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(events[0]["kind"], "planned");
    // Each step: started, rollback_saved, verified.
    assert_eq!(events.len(), 1 + 3 * 3);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e["seq"] == (i as u64 + 1))
    );
}

#[test]
fn missing_state_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("nothing-here");
    assert_user_error(&run_cli(&state, &["status"]), "no migration journal in");
    assert!(!state.exists(), "status created the state dir");
}

#[test]
fn corrupt_or_truncated_journal_is_refused_unchanged() {
    for damage in ["garbage", "truncate", "empty-events"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let state = tmp.path().join("s");
        journal_with_progress(&state);
        let db = state.join("journal").join("db");
        match damage {
            "garbage" => std::fs::write(&db, vec![0xA5u8; 4096]).expect("write"),
            "truncate" => {
                // sled preallocates; cut inside the written part of the log.
                let bytes = std::fs::read(&db).expect("read");
                let used = bytes.iter().rposition(|b| *b != 0).unwrap_or(0);
                std::fs::write(&db, &bytes[..used / 2]).expect("write");
            }
            _ => {
                // A journal whose events were lost: a valid database, an impossible history.
                std::fs::remove_dir_all(&state).expect("rm");
                let db = sled::open(state.join("journal")).expect("sled");
                let meta = db.open_tree("meta").expect("tree");
                meta.insert("format", calico_migrate::engine::journal::FORMAT)
                    .expect("insert");
                meta.insert(
                    "identity",
                    br#"{"cluster_uid":"u","plan_fingerprint":"f"}"#.to_vec(),
                )
                .expect("insert");
                db.flush().expect("flush");
            }
        }
        // This process wrote the journal too: private, as the CLI keeps it (otherwise
        // the CLI would rightly warn about sled's new files).
        make_private(&state);
        let before = snapshot(&state);
        for cmd in ["status", "history"] {
            let out = run_cli(&state, &[cmd]);
            assert_user_error(&out, "is damaged");
        }
        assert!(
            snapshot(&state) == before,
            "{damage}: the state dir changed"
        );
    }
}

#[test]
fn journal_of_another_cluster_or_plan_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("s");
    journal_with_progress(&state);
    let world = tmp.path().join("w");
    std::fs::create_dir_all(&world).expect("w");
    let history = || run_cli(&state, &["history", "-o", "json"]).stdout;
    let before = history();
    for (flag, value, needle) in [
        (
            "--cluster-uid",
            "another-cluster",
            "belongs to cluster (kube-system UID) fake-cluster",
        ),
        (
            "--fingerprint",
            "another-plan",
            "belongs to plan (fingerprint) fake-plan",
        ),
    ] {
        let out = Command::new(fake_migration())
            .args(["apply", "--steps", "3", flag, value, "--state-dir"])
            .arg(&state)
            .arg("--world")
            .arg(&world)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
    assert_eq!(history(), before, "the journal changed");
    // The library refuses the same way.
    let j = Journal::open(&state).expect("open");
    let other = JournalIdentity {
        cluster_uid: "x".into(),
        plan_fingerprint: "fake-plan".into(),
    };
    assert!(j.check_identity(&other).is_err());
}

#[test]
fn unknown_rollback_step_is_refused_with_the_plan_steps() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("s");
    journal_with_progress(&state);
    let before = snapshot(&state);
    let out = run_cli(&state, &["rollback", "--to", "no-such-step", "--yes"]);
    assert_user_error(&out, "unknown step id `no-such-step`");
    assert!(
        stderr(&out).contains("step-0, step-1, step-2"),
        "{}",
        stderr(&out)
    );
    drop(out);
    let after = snapshot(&state);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_second_process_on_the_same_state_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("s");
    journal_with_progress(&state);
    let held = Journal::open(&state).expect("open");
    // This process opened the journal too: private, as the CLI keeps it (otherwise
    // the CLI would rightly warn about sled's new files).
    make_private(&state);
    let out = run_cli(&state, &["status"]);
    assert_user_error(&out, "in use by another calico-migrate process");
    assert!(stderr(&out).contains(&state.display().to_string()));
    drop(held);
    assert!(run_cli(&state, &["status"]).status.success());
}

#[test]
fn read_only_state_dir_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().expect("tmp");
    set_mode(tmp.path(), 0o755); // reachable by the unprivileged user below
    let parent = tmp.path().join("ro");
    std::fs::create_dir_all(&parent).expect("dir");
    let state = parent.join("s");
    journal_with_progress(&state);
    let fresh = parent.join("fresh");
    let before = snapshot(&parent);
    set_mode(&parent, 0o555);
    set_mode(&state, 0o555);
    set_mode(&state.join("journal"), 0o555);
    for f in std::fs::read_dir(state.join("journal"))
        .expect("ls")
        .flatten()
    {
        set_mode(&f.path(), 0o444);
    }
    // Root ignores permissions: run the commands as an unprivileged user then.
    let as_user = |args: &[&str], dir: &Path| -> Output {
        let mut c = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_calico-migrate"));
            c
        } else {
            cli()
        };
        c.arg("--state-dir")
            .arg(dir)
            .args(args)
            .output()
            .expect("run")
    };
    if is_root() {
        // The binary must be reachable by that user.
        let probe = as_user(&["--version"], &state);
        if !probe.status.success() {
            eprintln!(
                "skipping: setpriv cannot run the binary as an unprivileged user: {}",
                stderr(&probe)
            );
            set_mode(&parent, 0o755);
            return;
        }
    }
    // Reading works on a read-only state dir: status opens a private copy.
    let out = as_user(&["status"], &state);
    assert!(
        out.status.success(),
        "status on a read-only dir: {}",
        stderr(&out)
    );
    // Others can read it and this user cannot change that: said, not refused.
    assert!(
        stderr(&out).contains("could not be made private"),
        "{}",
        stderr(&out)
    );
    let out = as_user(&["status"], &fresh);
    assert_user_error(&out, "no migration journal");
    // Continuing or starting a journal there is refused, naming the directory.
    for dir in [&state, &fresh] {
        let mut c = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(fake_migration());
            c
        } else {
            Command::new(fake_migration())
        };
        let out = c
            .args(["apply", "--steps", "3", "--state-dir"])
            .arg(dir)
            .arg("--world")
            .arg(tmp.path())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("is not writable"), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&dir.display().to_string()),
            "{}",
            stderr(&out)
        );
    }
    set_mode(&parent, 0o755);
    set_mode(&state, 0o755);
    set_mode(&state.join("journal"), 0o755);
    assert!(
        snapshot(&parent) == before,
        "the read-only state dir changed"
    );
}

/// Every directory and file below `dir` (the dir included), with its mode.
fn modes(dir: &Path) -> BTreeMap<PathBuf, u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.insert(p.clone(), meta.permissions().mode() & 0o7777);
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("ls").flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Make `dir` and everything below it private, as the CLI keeps a state dir. The
/// CLI gets there with umask 077 (`make_new_files_private`); a test must not, since
/// the umask belongs to the whole test binary and every process it starts.
fn make_private(dir: &Path) {
    for (path, _) in modes(dir) {
        set_mode(&path, if path.is_dir() { 0o700 } else { 0o600 });
    }
}

#[test]
fn the_state_dir_is_private_from_the_first_write() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("s");
    journal_with_progress(&state);
    assert!(run_cli(&state, &["status"]).status.success());
    let all = modes(&state);
    assert!(all.len() > 5, "{all:?}");
    for (path, mode) in &all {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", path.display());
    }
}

#[test]
fn a_state_dir_an_earlier_version_left_readable_is_made_private_on_first_use() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("s");
    journal_with_progress(&state);
    // What an earlier version left: directories 0755, files 0644.
    for (path, _) in modes(&state) {
        set_mode(&path, if path.is_dir() { 0o755 } else { 0o644 });
    }
    let contents = snapshot(&state);
    let out = run_cli(&state, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("private to you"),
        "a warning says so: {}",
        stderr(&out)
    );
    for (path, mode) in modes(&state) {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
    assert!(snapshot(&state) == contents, "only the modes changed");
    // Once private, nothing more to say.
    let out = run_cli(&state, &["status"]);
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_state_dir_every_user_can_write_is_refused_and_left_as_it_is() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("s");
    journal_with_progress(&state);
    set_mode(&state, 0o777);
    let before = (modes(&state), snapshot(&state));
    for args in [
        &["status"][..],
        &["history"],
        &["rollback", "--yes"],
        &["plan"],
    ] {
        let out = run_cli(&state, args);
        assert_user_error(&out, "can be written by every user");
        assert!(stderr(&out).contains("chmod 700"), "{}", stderr(&out));
        assert!(
            (modes(&state), snapshot(&state)) == before,
            "{args:?} changed the dir"
        );
    }
    set_mode(&state, 0o700);
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
