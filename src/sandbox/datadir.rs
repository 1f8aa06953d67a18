//! A sandbox's data dir (`sandbox --data-dir DIR`): the store kept across runs, so a
//! cluster can be stopped and started again, at the same Kubernetes minor (a restart)
//! or at the next one (an upgrade, as EKS upgrades a control plane).
//!
//! Layout: `DIR/store.json`, the store's image (`store::persist::StoreImage`: format,
//! Kubernetes minor, resourceVersion counter, every object in storage shape), mode
//! 0600 in a 0700 directory (it holds Secrets). It is replaced atomically (a temp
//! file `.store.json.tmp` beside it, fsync, rename, fsync of the directory): written
//! right after start, about [`SAVE_DELAY`] after a write (later writes within that
//! time join the same save), and once more on a clean stop. A crash loses at most
//! the writes of the last [`SAVE_DELAY`].
//!
//! Lock: the directory itself is locked (`flock`, exclusive, not blocking) while a
//! sandbox uses it, so a second sandbox on the same DIR is refused; the lock adds no
//! file and goes with the process.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Store;
use super::apiserver::store::persist::{self, ImageError, StoreImage, Transition, TransitionError};
use super::apiserver::versions::KubernetesVersion;

/// The store's file in the data dir.
pub const STORE_FILE: &str = "store.json";
/// The temp file a save writes before renaming it over [`STORE_FILE`].
const TMP_FILE: &str = ".store.json.tmp";
/// How long after a write the store is saved.
pub const SAVE_DELAY: Duration = Duration::from_secs(1);

/// Why a data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "--data-dir {path} is not a directory: name a directory, or a path that does not exist yet"
    )]
    NotADirectory { path: PathBuf },
    #[error(
        "cannot use --data-dir {path}: {cause}; check that it is a directory you may read and write"
    )]
    Io { path: PathBuf, cause: String },
    #[error(
        "another sandbox is using --data-dir {path}: stop it first, or choose another directory"
    )]
    Locked { path: PathBuf },
    #[error(
        "--data-dir {path} holds {file} but no sandbox store ({STORE_FILE}): choose an empty \
         or new directory"
    )]
    Foreign { path: PathBuf, file: String },
    #[error("{file} is not a sandbox store: {why}; move it away or choose another --data-dir")]
    Damaged { file: PathBuf, why: String },
    #[error("cannot start the cluster stored in {path}: {cause}")]
    Transition {
        path: PathBuf,
        cause: TransitionError,
    },
    #[error("cannot save the sandbox's store to {file}: {cause}")]
    Save { file: PathBuf, cause: String },
}

/// A data dir this process holds the lock of.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// The locked directory; the lock goes when this is dropped.
    _lock: File,
}

/// A stored cluster opened at a minor: its store and what starting it meant.
pub struct Restored {
    pub store: Store,
    pub transition: Transition,
}

impl DataDir {
    /// Lock `path` (created, mode 0700, when missing) and read its stored cluster, if
    /// any. Nothing in an existing directory is changed.
    pub fn open(path: &Path) -> Result<(DataDir, Option<StoreImage>), DataDirError> {
        let io = |e: std::io::Error| DataDirError::Io {
            path: path.to_path_buf(),
            cause: e.to_string(),
        };
        match std::fs::metadata(path) {
            Ok(m) if !m.is_dir() => {
                return Err(DataDirError::NotADirectory {
                    path: path.to_path_buf(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(io)?,
            Err(e) => return Err(io(e)),
        }
        let lock = File::open(path).map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::Locked {
                    path: path.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let dir = DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        };
        let file = dir.store_file();
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A crashed first save may leave its temp file: that is still "new".
                let other = std::fs::read_dir(path)
                    .map_err(io)?
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|n| n != TMP_FILE);
                if let Some(file) = other {
                    return Err(DataDirError::Foreign {
                        path: path.to_path_buf(),
                        file,
                    });
                }
                return Ok((dir, None));
            }
            Err(e) => {
                return Err(DataDirError::Io {
                    path: file,
                    cause: e.to_string(),
                });
            }
        };
        let image: StoreImage =
            serde_json::from_slice(&text).map_err(|e| DataDirError::Damaged {
                file: file.clone(),
                why: format!("it is not the JSON of a store ({e})"),
            })?;
        Ok((dir, Some(image)))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn store_file(&self) -> PathBuf {
        self.path.join(STORE_FILE)
    }

    /// The cluster of `image` started at `requested` (default: the stored minor): a
    /// restart at the same minor, an upgrade at the next; anything else is refused.
    pub fn restore(
        &self,
        image: StoreImage,
        requested: Option<KubernetesVersion>,
        history: usize,
        seed: u64,
    ) -> Result<Restored, DataDirError> {
        let damaged = |e: ImageError| DataDirError::Damaged {
            file: self.store_file(),
            why: e.to_string(),
        };
        let stored = image.kubernetes_version().map_err(damaged)?;
        let requested = requested.unwrap_or(stored);
        let transition =
            persist::transition(stored, requested).map_err(|cause| DataDirError::Transition {
                path: self.path.clone(),
                cause,
            })?;
        let store = Store::from_image(image, history, seed, requested).map_err(damaged)?;
        Ok(Restored { store, transition })
    }

    /// Replace the stored image with `store`'s, atomically.
    pub fn save(&self, store: &Store) -> Result<(), DataDirError> {
        let file = self.store_file();
        let failed = |at: &Path, e: std::io::Error| DataDirError::Save {
            file: at.to_path_buf(),
            cause: e.to_string(),
        };
        let bytes = serde_json::to_vec(&store.image()).map_err(|e| DataDirError::Save {
            file: file.clone(),
            cause: e.to_string(),
        })?;
        let tmp = self.path.join(TMP_FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| failed(&tmp, e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| failed(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &file).map_err(|e| failed(&file, e))?;
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| failed(&self.path, e))
    }
}

/// Saves the store to its data dir after writes, until [`Saver::stop`].
pub struct Saver {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    store: Store,
    dir: Arc<DataDir>,
}

impl Saver {
    /// Save `store` to `dir` [`SAVE_DELAY`] after each write (writes within the delay
    /// join one save). A failed save is logged and tried again after the next write.
    pub fn start(store: Store, dir: Arc<DataDir>) -> Saver {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let mut feed = store.subscribe();
        let (s, d) = (store.clone(), dir.clone());
        let task = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                tokio::select! {
                    r = feed.recv() => match r {
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    _ = stopped.changed() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(SAVE_DELAY) => {}
                    _ = stopped.changed() => return,
                }
                // What arrived meanwhile is in this save.
                feed = feed.resubscribe();
                let (s2, d2) = (s.clone(), d.clone());
                match tokio::task::spawn_blocking(move || d2.save(&s2)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("{e}"),
                    Err(e) => tracing::warn!("the sandbox's store save did not finish: {e}"),
                }
            }
        });
        Saver {
            stop,
            task,
            store,
            dir,
        }
    }

    /// Stop saving after writes, then save once more: what the store holds now is
    /// what the data dir keeps.
    pub async fn stop(self) -> Result<(), DataDirError> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let (s, d) = (self.store, self.dir);
        tokio::task::spawn_blocking(move || d.save(&s))
            .await
            .map_err(|e| DataDirError::Save {
                file: PathBuf::from(STORE_FILE),
                cause: e.to_string(),
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{Gvr, WriteOptions};
    use serde_json::json;

    fn kv(m: u32) -> KubernetesVersion {
        KubernetesVersion::new(m).unwrap()
    }

    #[test]
    fn a_saved_store_opens_again_and_upgrades_one_minor() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("d");
        let (dir, image) = DataDir::open(&path).unwrap();
        assert!(image.is_none());
        let store = Store::new(100, 1, kv(21));
        let cm = Gvr::new("", "v1", "configmaps");
        store
            .create(
                &cm,
                "default",
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}),
                &WriteOptions::default(),
            )
            .unwrap();
        dir.save(&store).unwrap();
        // Locked while held.
        assert!(matches!(
            DataDir::open(&path),
            Err(DataDirError::Locked { .. })
        ));
        drop(dir);
        let (dir, image) = DataDir::open(&path).unwrap();
        let image = image.unwrap();
        let before = std::fs::read(path.join(STORE_FILE)).unwrap();
        let e = dir
            .restore(image.clone(), Some(kv(23)), 100, 1)
            .err()
            .unwrap();
        assert!(matches!(e, DataDirError::Transition { .. }), "{e}");
        assert_eq!(std::fs::read(path.join(STORE_FILE)).unwrap(), before);
        let r = dir.restore(image, Some(kv(22)), 100, 1).unwrap();
        assert_eq!(
            r.transition,
            Transition::Upgrade {
                from: kv(21),
                to: kv(22)
            }
        );
        assert_eq!(
            r.store.get(&cm, "default", "c").unwrap()["data"],
            json!({"k": "v"})
        );
    }

    #[test]
    fn foreign_and_damaged_dirs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        assert!(matches!(
            DataDir::open(tmp.path()),
            Err(DataDirError::Foreign { .. })
        ));
        std::fs::write(tmp.path().join(STORE_FILE), "{not json").unwrap();
        let e = DataDir::open(tmp.path()).err().unwrap();
        assert!(matches!(e, DataDirError::Damaged { .. }), "{e}");
        let file = tmp.path().join("notes.txt");
        assert!(matches!(
            DataDir::open(&file),
            Err(DataDirError::NotADirectory { .. })
        ));
    }
}
