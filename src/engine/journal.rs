//! The journal: an intent log in sled, flushed after every write.
//!
//! Layout of `<state-dir>/journal` (a sled database):
//! - tree `meta`: `format` (= [`FORMAT`]), `identity` (JSON [`JournalIdentity`]);
//! - tree `events`: key = sequence number (u64 big-endian), value = JSON [`Event`];
//! - tree `rollback`: key = step id, value = JSON of the step's rollback data.
//!
//! sled holds an exclusive file lock while the database is open, so a second
//! process on the same state dir is refused.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::event::{Event, EventKind, JournalIdentity, PlannedStep};
use super::state::{InvalidHistory, PlanState};

/// Marker of the on-disk format; bump when it changes incompatibly.
pub const FORMAT: &str = "calico-migrate-journal/1";

const JOURNAL_SUBDIR: &str = "journal";

/// Beside sled's files: the sequence number of the last event written, updated
/// after each flush. sled recovers a damaged log to a consistent prefix, which
/// would silently look like an older journal; this marker tells the two apart.
const HEAD_FILE: &str = "calico-migrate.head";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "no migration journal in {dir}: run `calico-migrate plan` first, or point --state-dir at the directory that holds one"
    )]
    Missing { dir: PathBuf },
    #[error(
        "a migration journal already exists in {dir}; continue it with `calico-migrate apply --resume`, or choose another --state-dir"
    )]
    AlreadyExists { dir: PathBuf },
    #[error(
        "the state dir {dir} is in use by another calico-migrate process (its journal is locked); wait for it to finish, or stop it, then retry"
    )]
    Locked { dir: PathBuf },
    #[error(
        "the state dir {dir} is not writable ({cause}); fix its permissions or choose another --state-dir. Nothing was changed"
    )]
    ReadOnly { dir: PathBuf, cause: String },
    #[error(
        "the journal in {dir} is damaged ({detail}); nothing was changed. Keep the directory for inspection, and restore it from a backup or start again in a new --state-dir"
    )]
    Corrupt { dir: PathBuf, detail: String },
    #[error(
        "the journal in {dir} belongs to {what} {found}, but this is {expected}; use the state dir made for this {what}, or a new --state-dir. Nothing was changed"
    )]
    Foreign {
        dir: PathBuf,
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("cannot use the journal in {dir}: {cause}")]
    Io { dir: PathBuf, cause: String },
}

/// An open journal. Dropping it releases the lock.
pub struct Journal {
    dir: PathBuf,
    db: sled::Db,
    events: sled::Tree,
    rollback: sled::Tree,
    identity: JournalIdentity,
    state: PlanState,
    next_seq: u64,
    /// Where sled's files are (the state dir's journal, or the private copy).
    db_path: PathBuf,
    /// Set for a read-only journal: the private copy it was opened from.
    _copy: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Whether `state_dir` holds a journal.
    pub fn exists(state_dir: &Path) -> bool {
        let j = state_dir.join(JOURNAL_SUBDIR);
        j.join("conf").is_file() && j.join("db").is_file()
    }

    /// Start a new journal for a plan. Refuses if one exists.
    ///
    /// The journal is built in a temporary directory beside its final place and
    /// renamed into place once complete, so a crash never leaves half a journal.
    pub fn create(
        state_dir: &Path,
        identity: JournalIdentity,
        steps: Vec<PlannedStep>,
    ) -> Result<Journal, JournalError> {
        if Journal::exists(state_dir) {
            return Err(JournalError::AlreadyExists {
                dir: state_dir.to_path_buf(),
            });
        }
        check_writable(state_dir)?;
        let io_err = |e: std::io::Error| JournalError::Io {
            dir: state_dir.to_path_buf(),
            cause: e.to_string(),
        };
        let staging = tempfile::Builder::new()
            .prefix(".journal-new-")
            .tempdir_in(state_dir)
            .map_err(io_err)?;
        {
            let db = open_db(state_dir, staging.path())?;
            let io = |e: sled::Error| io_error(state_dir, e);
            let meta = db.open_tree("meta").map_err(io)?;
            meta.insert("format", FORMAT).map_err(io)?;
            let id_json = serde_json::to_vec(&identity).map_err(|e| JournalError::Io {
                dir: state_dir.to_path_buf(),
                cause: e.to_string(),
            })?;
            meta.insert("identity", id_json).map_err(io)?;
            let events = db.open_tree("events").map_err(io)?;
            let first = Event {
                seq: 1,
                at: jiff::Timestamp::now().to_string(),
                kind: EventKind::Planned { steps },
            };
            let bytes = serde_json::to_vec(&first).map_err(|e| JournalError::Io {
                dir: state_dir.to_path_buf(),
                cause: e.to_string(),
            })?;
            events.insert(1u64.to_be_bytes(), bytes).map_err(io)?;
            db.flush().map_err(io)?;
        }
        write_head(staging.path(), 1).map_err(|e| JournalError::Io {
            dir: state_dir.to_path_buf(),
            cause: e.to_string(),
        })?;
        let staged = staging.keep();
        std::fs::rename(&staged, state_dir.join(JOURNAL_SUBDIR)).map_err(io_err)?;
        // sled lets go of its file lock when its background flusher drops the database,
        // which can come a moment after our last handle is gone: our own lock, not
        // another process's, so wait for it briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Journal::open(state_dir) {
                Err(JournalError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// Open an existing journal to continue it, validating its format and
    /// history first on a private copy, so a damaged journal is refused without
    /// sled touching a byte of it.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        drop(Journal::open_read_only(state_dir)?);
        check_writable(state_dir)?;
        check_writable(&state_dir.join(JOURNAL_SUBDIR))?;
        // The copy validated without them; no process holds the journal (checked there).
        remove_partial_snapshots(&state_dir.join(JOURNAL_SUBDIR)).map_err(|e| {
            JournalError::Io {
                dir: state_dir.to_path_buf(),
                cause: format!("removing a partial snapshot: {e}"),
            }
        })?;
        Journal::open_at(state_dir, &state_dir.join(JOURNAL_SUBDIR), None)
    }

    /// Open a private copy of the journal, for reading: the state dir is never
    /// written, and this works on a read-only state dir. Refused while another
    /// process holds the journal, whose files may be mid-write.
    pub fn open_read_only(state_dir: &Path) -> Result<Journal, JournalError> {
        if !Journal::exists(state_dir) {
            return Err(JournalError::Missing {
                dir: state_dir.to_path_buf(),
            });
        }
        check_unlocked(state_dir)?;
        let io_err = |cause: String| JournalError::Io {
            dir: state_dir.to_path_buf(),
            cause,
        };
        let copy = tempfile::Builder::new()
            .prefix("calico-migrate-journal-")
            .tempdir()
            .map_err(|e| io_err(e.to_string()))?;
        copy_dir(&state_dir.join(JOURNAL_SUBDIR), copy.path())
            .map_err(|e| io_err(format!("copying the journal: {e}")))?;
        let path = copy.path().to_path_buf();
        Journal::open_at(state_dir, &path, Some(copy))
    }

    fn open_at(
        state_dir: &Path,
        db_path: &Path,
        copy: Option<tempfile::TempDir>,
    ) -> Result<Journal, JournalError> {
        let corrupt = |detail: String| JournalError::Corrupt {
            dir: state_dir.to_path_buf(),
            detail,
        };
        let db = open_db(state_dir, db_path)?;
        let io = |e: sled::Error| io_error(state_dir, e);
        let meta = db.open_tree("meta").map_err(io)?;
        match meta.get("format").map_err(io)? {
            Some(f) if f.as_ref() == FORMAT.as_bytes() => {}
            Some(f) => {
                return Err(corrupt(format!(
                    "unknown format `{}`",
                    String::from_utf8_lossy(&f)
                )));
            }
            None => return Err(corrupt("no format marker".into())),
        }
        let identity: JournalIdentity = match meta.get("identity").map_err(io)? {
            Some(raw) => serde_json::from_slice(&raw)
                .map_err(|e| corrupt(format!("unreadable identity: {e}")))?,
            None => return Err(corrupt("no cluster identity".into())),
        };
        let events = db.open_tree("events").map_err(io)?;
        let rollback = db.open_tree("rollback").map_err(io)?;
        let all = read_events(&events).map_err(|e| match e {
            ReadError::Sled(e) => io_error(state_dir, e),
            ReadError::Bad(d) => corrupt(d),
        })?;
        let head = read_head(db_path)
            .map_err(|e| corrupt(format!("its head marker is unreadable: {e}")))?;
        if (all.len() as u64) < head {
            return Err(corrupt(format!(
                "it ends at event #{} but event #{head} was written: the database was truncated or damaged",
                all.len()
            )));
        }
        let state = PlanState::from_events(&all).map_err(|InvalidHistory(d)| corrupt(d))?;
        Ok(Journal {
            dir: state_dir.to_path_buf(),
            next_seq: all.len() as u64 + 1,
            db,
            events,
            rollback,
            identity,
            state,
            db_path: db_path.to_path_buf(),
            _copy: copy,
        })
    }

    /// Refuse a journal made for another cluster or another plan.
    pub fn check_identity(&self, expected: &JournalIdentity) -> Result<(), JournalError> {
        let foreign = |what, found: &str, expected: &str| JournalError::Foreign {
            dir: self.dir.clone(),
            what,
            found: found.to_string(),
            expected: expected.to_string(),
        };
        if self.identity.cluster_uid != expected.cluster_uid {
            return Err(foreign(
                "cluster (kube-system UID)",
                &self.identity.cluster_uid,
                &expected.cluster_uid,
            ));
        }
        if self.identity.plan_fingerprint != expected.plan_fingerprint {
            return Err(foreign(
                "plan (fingerprint)",
                &self.identity.plan_fingerprint,
                &expected.plan_fingerprint,
            ));
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn identity(&self) -> &JournalIdentity {
        &self.identity
    }

    /// The state every step is in.
    pub fn state(&self) -> &PlanState {
        &self.state
    }

    /// Every event, oldest first.
    pub fn events(&self) -> Result<Vec<Event>, JournalError> {
        read_events(&self.events).map_err(|e| match e {
            ReadError::Sled(e) => io_error(&self.dir, e),
            ReadError::Bad(detail) => JournalError::Corrupt {
                dir: self.dir.clone(),
                detail,
            },
        })
    }

    /// Write one event and flush it to disk before returning.
    pub fn append(&mut self, kind: EventKind) -> Result<Event, JournalError> {
        let mut next = self.state.clone();
        if !matches!(kind, EventKind::Planned { .. }) {
            next.apply(&kind)
                .map_err(|InvalidHistory(d)| JournalError::Corrupt {
                    dir: self.dir.clone(),
                    detail: format!("refusing to journal an impossible transition: {d}"),
                })?;
        }
        let event = Event {
            seq: self.next_seq,
            at: jiff::Timestamp::now().to_string(),
            kind,
        };
        let bytes = serde_json::to_vec(&event).map_err(|e| JournalError::Io {
            dir: self.dir.clone(),
            cause: e.to_string(),
        })?;
        self.events
            .insert(event.seq.to_be_bytes(), bytes)
            .map_err(|e| io_error(&self.dir, e))?;
        self.flush()?;
        write_head(&self.db_path, event.seq).map_err(|e| JournalError::Io {
            dir: self.dir.clone(),
            cause: e.to_string(),
        })?;
        self.next_seq += 1;
        self.state = next;
        Ok(event)
    }

    /// Store a step's rollback data, then journal that it is saved.
    ///
    /// The data is flushed before the event, so a crash between the two leaves
    /// the step `started` and the data is simply captured again.
    pub fn save_rollback(&mut self, step: &str, data: &Value) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(data).map_err(|e| JournalError::Io {
            dir: self.dir.clone(),
            cause: e.to_string(),
        })?;
        self.rollback
            .insert(step.as_bytes(), bytes)
            .map_err(|e| io_error(&self.dir, e))?;
        self.flush()?;
        self.append(EventKind::RollbackSaved {
            step: step.to_string(),
        })?;
        Ok(())
    }

    /// The rollback data saved for a step.
    pub fn rollback_data(&self, step: &str) -> Result<Option<Value>, JournalError> {
        let Some(raw) = self
            .rollback
            .get(step.as_bytes())
            .map_err(|e| io_error(&self.dir, e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| JournalError::Corrupt {
                dir: self.dir.clone(),
                detail: format!("rollback data of step `{step}` is unreadable: {e}"),
            })
    }

    fn flush(&self) -> Result<(), JournalError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| io_error(&self.dir, e))
    }
}

enum ReadError {
    Sled(sled::Error),
    Bad(String),
}

fn read_events(tree: &sled::Tree) -> Result<Vec<Event>, ReadError> {
    let mut out = Vec::with_capacity(tree.len());
    for item in tree.iter() {
        let (key, value) = item.map_err(ReadError::Sled)?;
        let seq = <[u8; 8]>::try_from(key.as_ref())
            .map(u64::from_be_bytes)
            .map_err(|_| ReadError::Bad("an event key is not a sequence number".into()))?;
        let ev: Event = serde_json::from_slice(&value)
            .map_err(|e| ReadError::Bad(format!("event #{seq} is unreadable: {e}")))?;
        if ev.seq != seq {
            return Err(ReadError::Bad(format!(
                "event #{seq} claims to be #{}",
                ev.seq
            )));
        }
        out.push(ev);
    }
    Ok(out)
}

fn check_writable(state_dir: &Path) -> Result<(), JournalError> {
    let ro = |cause: std::io::Error| JournalError::ReadOnly {
        dir: state_dir.to_path_buf(),
        cause: cause.to_string(),
    };
    super::state_dir::create_private_dir(state_dir).map_err(ro)?;
    let probe = state_dir.join(".write-probe");
    std::fs::write(&probe, b"").map_err(ro)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Refuse when another process holds sled's lock on the journal (an flock on
/// its `db` file, taken by sled for as long as the database is open).
fn check_unlocked(state_dir: &Path) -> Result<(), JournalError> {
    let db_file = state_dir.join(JOURNAL_SUBDIR).join("db");
    let file = std::fs::File::open(&db_file).map_err(|e| JournalError::Io {
        dir: state_dir.to_path_buf(),
        cause: e.to_string(),
    })?;
    match file.try_lock_shared() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(JournalError::Locked {
            dir: state_dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(JournalError::Io {
            dir: state_dir.to_path_buf(),
            cause: e.to_string(),
        }),
    }
}

fn write_head(db_path: &Path, seq: u64) -> Result<(), super::state_dir::StateDirError> {
    super::state_dir::write_atomic(&db_path.join(HEAD_FILE), seq.to_string().as_bytes())
}

/// Why the head marker cannot be read; it becomes the detail of [`JournalError::Corrupt`].
#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("`{text}` is not a number")]
    NotANumber { text: String },
}

fn read_head(db_path: &Path) -> Result<u64, HeadError> {
    let text = std::fs::read_to_string(db_path.join(HEAD_FILE))?;
    let text = text.trim();
    text.parse().map_err(|_| HeadError::NotANumber {
        text: text.to_string(),
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if is_partial_snapshot(&entry.file_name()) {
            continue;
        } else {
            std::fs::copy(entry.path(), &target)?;
            // The copy is ours to write (sled opens it read-write), whatever the original's mode.
            let mut perms = std::fs::metadata(&target)?.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms)?;
        }
    }
    Ok(())
}

/// A snapshot sled was still writing when its process died. sled 0.34.7 writes a
/// snapshot to `snap.<lsn>.generating` and renames it when complete, but on open it
/// reads the last `snap.*` file by name, `.generating` included, and refuses the whole
/// database as corrupt if that one is partial (spacejam/sled#1527). The log it was
/// made from is intact, so the partial file is only ever sled's own leftover.
fn is_partial_snapshot(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("snap.") && name.ends_with(".generating")
}

/// Remove the partial snapshots a killed process left (see [`is_partial_snapshot`]).
fn remove_partial_snapshots(db_path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(db_path)? {
        let entry = entry?;
        if is_partial_snapshot(&entry.file_name()) {
            tracing::warn!(
                "removing {}: a snapshot the journal's database was writing when its process died",
                entry.path().display()
            );
            match std::fs::remove_file(entry.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Open the sled database, turning sled's failures (and its panics on damaged
/// files) into [`JournalError`]s.
fn open_db(state_dir: &Path, path: &Path) -> Result<sled::Db, JournalError> {
    let config = sled::Config::new().path(path);
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(classify_open_error(state_dir, e)),
        Err(_) => Err(JournalError::Corrupt {
            dir: state_dir.to_path_buf(),
            detail: "the database files cannot be read".into(),
        }),
    }
}

fn classify_open_error(state_dir: &Path, e: sled::Error) -> JournalError {
    let dir = state_dir.to_path_buf();
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            JournalError::Locked { dir }
        }
        sled::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            JournalError::ReadOnly {
                dir,
                cause: io.to_string(),
            }
        }
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => JournalError::Corrupt {
            dir,
            detail: e.to_string(),
        },
        other => io_error(state_dir, other),
    }
}

fn io_error(state_dir: &Path, e: sled::Error) -> JournalError {
    JournalError::Io {
        dir: state_dir.to_path_buf(),
        cause: e.to_string(),
    }
}

#[cfg(test)]
mod partial_snapshot_tests {
    use super::*;
    use crate::engine::event::{EventKind, JournalIdentity, PlannedStep};

    #[test]
    fn a_snapshot_left_half_written_by_a_killed_process_does_not_damage_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let identity = JournalIdentity {
            cluster_uid: "uid".into(),
            plan_fingerprint: "fp".into(),
        };
        let steps = vec![PlannedStep {
            id: "one".into(),
            title: "One".into(),
        }];
        let mut j = Journal::create(dir.path(), identity, steps).unwrap();
        j.append(EventKind::StepStarted {
            step: "one".into(),
            attempt: 1,
        })
        .unwrap();
        let written = j.events().unwrap().len();
        drop(j);
        // What sled leaves when killed mid-snapshot: a `.generating` file that sorts
        // after every complete snapshot, cut short before its length and checksum.
        let partial = dir
            .path()
            .join(JOURNAL_SUBDIR)
            .join("snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&partial, b"cut short").unwrap();

        let read_only = Journal::open_read_only(dir.path()).unwrap();
        assert_eq!(read_only.events().unwrap().len(), written);
        assert!(partial.exists(), "reading changes nothing");
        drop(read_only);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.events().unwrap().len(), written);
        assert!(!partial.exists());
    }
}
