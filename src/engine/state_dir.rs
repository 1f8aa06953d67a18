//! The state directory: who may read it, and how its files are written.
//!
//! It holds the journal, the saved plan, the pinned operator manifest, the debug logs
//! and the captures a rollback restores: backups of Helm's release Secrets (the whole
//! release, values included) and of every policy object. So it is the owner's alone:
//! the directory is created 0700 and every file 0600, from the first write on (the CLI
//! also sets the process umask to 077, so files sled creates on its own are 0600 too).
//!
//! A state dir any user can write is refused: whoever can replace the captured objects
//! decides what a rollback re-creates. One that others can merely read (the 0755 / 0644
//! an earlier version created) is tightened on first use, or used with a warning when
//! it cannot be (not ours, a read-only mount).
//!
//! Every file the tool writes there goes through [`write_atomic`]: a temp file in the
//! same directory, fsync, rename, fsync of the directory, so a crash leaves the old
//! content or the new, and the rename survives a power loss.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Mode of the state dir and of every directory in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in the state dir.
pub const FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error(
        "the state dir {dir} can be written by every user on this machine (mode {mode:04o}): \
         whoever can write there can change the journal and the objects a rollback \
         re-creates. Check that its contents are yours, then run `chmod 700 {dir}` and \
         retry, or choose another --state-dir. Nothing was changed"
    )]
    WritableByOthers { dir: PathBuf, mode: u32 },
    #[error(
        "--state-dir {path} is not a directory; name a directory (it is created, private \
         to you, if it does not exist)"
    )]
    NotADirectory { path: PathBuf },
    #[error(
        "cannot create the state dir {dir}: {cause}; choose a --state-dir you can write. \
         Nothing was changed"
    )]
    Create { dir: PathBuf, cause: String },
    #[error("cannot read the state dir {dir}: {cause}")]
    Unreadable { dir: PathBuf, cause: String },
    #[error("cannot write {path}: {cause}")]
    Write { path: PathBuf, cause: String },
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("{path} is damaged ({cause}); {what}")]
    Damaged {
        path: PathBuf,
        cause: String,
        what: String,
    },
}

/// What the permission bits of an existing state dir call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Only the owner can read it.
    Private,
    /// Group or others can read it (or the group can write it): make it private.
    Tighten,
    /// Every user can write it: refuse.
    Refuse,
}

/// Make every file and directory this process creates its user's alone (umask 077),
/// so what sled creates in the journal on its own is private too. Call it first thing
/// in `main`, before any thread starts: the umask is the whole process's.
pub fn make_new_files_private() {
    // SAFETY: umask only swaps the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Judge a directory's mode bits.
pub fn judge(mode: u32) -> Verdict {
    if mode & 0o002 != 0 {
        Verdict::Refuse
    } else if mode & 0o077 != 0 {
        Verdict::Tighten
    } else {
        Verdict::Private
    }
}

/// What [`prepare`] found and did, for the caller to tell the user.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Files and directories made private (written by an earlier version, or by hand).
    pub tightened: usize,
    /// Paths others can still read because they could not be made private, with why.
    pub still_readable: Vec<(PathBuf, String)>,
}

impl Prepared {
    /// One warning sentence for the user, if there is anything to say.
    pub fn warning(&self, dir: &Path) -> Option<String> {
        if let Some((path, cause)) = self.still_readable.first() {
            let more = match self.still_readable.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            return Some(format!(
                "{} in the state dir {} can be read by other users and could not be made \
                 private ({cause}){more}: it holds backups of Helm release Secrets and policy \
                 objects. Make it private (`chmod -R go= {}`) or use a --state-dir of your own",
                path.display(),
                dir.display(),
                dir.display(),
            ));
        }
        (self.tightened > 0).then(|| {
            format!(
                "made {} path(s) in the state dir {} private to you (directories 0700, files \
                 0600): other users could read them",
                self.tightened,
                dir.display()
            )
        })
    }
}

/// Make `dir` ready for use: create it private when `create` and it is missing, refuse
/// it when every user can write it, and make whatever others can read private.
///
/// With `create` false a missing dir is left missing (read-only commands report the
/// missing journal themselves).
pub fn prepare(dir: &Path, create: bool) -> Result<Prepared, StateDirError> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if create {
                create_private_dir(dir).map_err(|e| StateDirError::Create {
                    dir: dir.to_path_buf(),
                    cause: e.to_string(),
                })?;
            }
            return Ok(Prepared::default());
        }
        Err(e) => {
            return Err(StateDirError::Unreadable {
                dir: dir.to_path_buf(),
                cause: e.to_string(),
            });
        }
    };
    if !meta.is_dir() {
        return Err(StateDirError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if judge(mode) == Verdict::Refuse {
        return Err(StateDirError::WritableByOthers {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    let mut prepared = Prepared::default();
    tighten(dir, DIR_MODE, mode, &mut prepared);
    tighten_tree(dir, &mut prepared).map_err(|e| StateDirError::Unreadable {
        dir: dir.to_path_buf(),
        cause: e.to_string(),
    })?;
    Ok(prepared)
}

/// Create `dir` (and missing parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Walk the tree below `dir` (never following links) and make each entry private.
fn tighten_tree(dir: &Path, prepared: &mut Prepared) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            tighten(&entry.path(), DIR_MODE, mode, prepared);
            tighten_tree(&entry.path(), prepared)?;
        } else if meta.is_file() {
            tighten(&entry.path(), FILE_MODE, mode, prepared);
        }
    }
    Ok(())
}

/// Clear the group and other bits of `path` if any are set.
fn tighten(path: &Path, private: u32, mode: u32, prepared: &mut Prepared) {
    if mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, Permissions::from_mode(mode & private)) {
        Ok(()) => prepared.tightened += 1,
        Err(e) => prepared
            .still_readable
            .push((path.to_path_buf(), e.to_string())),
    }
}

/// Read a JSON file [`write_atomic`] wrote: None when there is none (what writes it has
/// not run). `what` says what the file is and what to do about it, for the error when
/// it does not parse.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> Result<Option<T>, StateDirError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateDirError::Damaged {
                path: path.to_path_buf(),
                cause: e.to_string(),
                what: what.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateDirError::Read {
            path: path.to_path_buf(),
            cause: e.to_string(),
        }),
    }
}

/// Write `bytes` to `path` atomically with mode 0600: a temp file beside it, fsync,
/// rename, fsync of the directory. The directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateDirError> {
    let failed = |at: &Path, e: std::io::Error| StateDirError::Write {
        path: at.to_path_buf(),
        cause: e.to_string(),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.as_deref().unwrap_or("file"),
        std::process::id()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(&tmp)
        .map_err(|e| failed(&tmp, e))?;
    // A temp file left by a crashed run of the same pid keeps its old mode: set it.
    file.set_permissions(Permissions::from_mode(FILE_MODE))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .map_err(|e| failed(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(path, e)
    })?;
    // The rename is durable once the directory entry is: fsync the directory.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn modes_are_judged_by_who_else_can_read_or_write() {
        assert_eq!(judge(0o700), Verdict::Private);
        assert_eq!(judge(0o755), Verdict::Tighten);
        assert_eq!(judge(0o750), Verdict::Tighten);
        assert_eq!(judge(0o770), Verdict::Tighten);
        assert_eq!(judge(0o2770), Verdict::Tighten);
        assert_eq!(judge(0o777), Verdict::Refuse);
        assert_eq!(judge(0o1777), Verdict::Refuse);
        assert_eq!(judge(0o702), Verdict::Refuse);
    }

    #[test]
    fn a_missing_dir_is_created_private_and_files_are_written_0600() {
        let top = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = top.path().join("a/state");
        assert_eq!(prepare(&dir, false).ok(), Some(Prepared::default()));
        assert!(!dir.exists(), "a read-only prepare creates nothing");
        assert_eq!(prepare(&dir, true).ok(), Some(Prepared::default()));
        assert_eq!(mode_of(&dir), 0o700);
        let file = dir.join("plan.json");
        write_atomic(&file, b"{}").unwrap_or_else(|e| panic!("{e}"));
        write_atomic(&file, b"{\"a\":1}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode_of(&file), 0o600);
        assert_eq!(
            std::fs::read(&file).ok().as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temp file left: {left:?}");
    }

    #[test]
    fn an_earlier_versions_readable_dir_is_tightened_and_a_world_writable_one_refused() {
        let top = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = top.path().join("state");
        let sub = dir.join("journal");
        std::fs::create_dir_all(&sub).unwrap_or_else(|e| panic!("{e}"));
        for (p, m) in [(&dir, 0o755), (&sub, 0o755)] {
            std::fs::set_permissions(p, Permissions::from_mode(m))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for f in [dir.join("plan.json"), sub.join("db")] {
            std::fs::write(&f, b"x").unwrap_or_else(|e| panic!("{e}"));
            std::fs::set_permissions(&f, Permissions::from_mode(0o644))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let prepared = prepare(&dir, true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prepared.tightened, 4);
        assert!(
            prepared
                .warning(&dir)
                .is_some_and(|w| w.contains("private"))
        );
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(&sub), 0o700);
        assert_eq!(mode_of(&dir.join("plan.json")), 0o600);
        assert_eq!(mode_of(&sub.join("db")), 0o600);
        assert_eq!(prepare(&dir, true).ok(), Some(Prepared::default()));

        std::fs::set_permissions(&dir, Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(sub.join("db"), Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = prepare(&dir, true).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("every user") && e.contains("chmod 700")),
            "{err:?}"
        );
        assert_eq!(mode_of(&dir), 0o777, "a refused dir is left as it was");
        assert_eq!(mode_of(&sub.join("db")), 0o644, "nothing in it changed");
    }

    #[test]
    fn what_cannot_be_tightened_is_named_in_one_warning() {
        let prepared = Prepared {
            tightened: 0,
            still_readable: vec![
                (PathBuf::from("/s"), "Operation not permitted".into()),
                (
                    PathBuf::from("/s/plan.json"),
                    "Operation not permitted".into(),
                ),
            ],
        };
        let w = prepared.warning(Path::new("/s"));
        assert!(
            w.as_deref()
                .is_some_and(|w| w.contains("could not be made private")
                    && w.contains("and 1 more")
                    && w.contains("chmod -R go= /s")),
            "{w:?}"
        );
        assert_eq!(Prepared::default().warning(Path::new("/s")), None);
    }

    #[test]
    fn a_file_named_as_state_dir_is_refused() {
        let top = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = top.path().join("f");
        std::fs::write(&file, b"").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            prepare(&file, true),
            Err(StateDirError::NotADirectory { .. })
        ));
    }
}
