//! The agent's state on disk, so a restarted agent re-attaches instead of
//! restarting workloads.
//!
//! ```text
//! <data_dir>/node-id                     persistent node id
//! <data_dir>/allocs/<alloc>/alloc.json   the allocation as last received
//! <data_dir>/allocs/<alloc>/runner.json  task states, handles, restart history
//! <data_dir>/allocs/<alloc>/logs/        task logs (written by the shims)
//! <data_dir>/allocs/<alloc>/<task>/      the task's private dir (shim files, bundle)
//! ```
//!
//! Every file is written to a temporary name and renamed, so a crash leaves
//! either the old or the new content.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use taba_driver::TaskHandle;
use taba_types::{Allocation, NodeId, TaskState, UnixMillis};

/// Errors reading or writing agent state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A state file could not be read or written.
    #[error("agent state file {path}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A state file is not valid.
    #[error("agent state file {path} is corrupt: {reason}")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Current format version of `runner.json`.
pub const RUNNER_STATE_VERSION: u32 = 1;

/// Per-task bookkeeping of an allocation runner.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Observed state, reported to the servers.
    pub state: TaskState,
    /// The running (or last) workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<TaskHandle>,
    /// Times of restarts within the current policy window.
    #[serde(default)]
    pub restart_times: Vec<UnixMillis>,
}

/// `runner.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunnerState {
    /// Format version.
    pub version: u32,
    /// By task name.
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Why the agent stopped the allocation itself after losing contact
    /// with the servers (`stop_after_disconnect`); reported as `lost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

/// Paths of the agent's data dir.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Use (and create) `root`.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        let allocs = root.join("allocs");
        // 0700: allocation dirs hold environments (secrets), logs, and the
        // image-backed root filesystems, with their setuid binaries.
        for d in [root, &allocs] {
            private_dir(d).map_err(|source| StateError::Io {
                path: d.to_path_buf(),
                source,
            })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The data dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node id, created on first use.
    pub fn node_id(&self) -> Result<NodeId, StateError> {
        let path = self.root.join("node-id");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(NodeId(s.trim().to_string())),
            Ok(_) | Err(_) => {
                let id = NodeId::generate();
                write_atomic(&path, id.as_str().as_bytes())?;
                Ok(id)
            }
        }
    }

    /// The node secret the server issued at the first registration (plain
    /// HTTP only), if any: `<data>/node-secret`, 0600.
    pub fn node_secret(&self) -> Result<Option<String>, StateError> {
        let path = self.root.join("node-secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Keep the node secret (0600).
    pub fn save_node_secret(&self, secret: &str) -> Result<(), StateError> {
        write_private(&self.root.join("node-secret"), secret.as_bytes())
    }

    /// Directory of an allocation.
    pub fn alloc_dir(&self, id: &str) -> PathBuf {
        self.root.join("allocs").join(id)
    }

    /// Allocation ids with a directory here.
    pub fn alloc_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.root.join("allocs"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Save the allocation record.
    pub fn save_alloc(&self, alloc: &Allocation) -> Result<(), StateError> {
        let dir = self.alloc_dir(alloc.id.as_str());
        private_dir(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        write_json(&dir.join("alloc.json"), alloc)
    }

    /// Load the allocation record.
    pub fn load_alloc(&self, id: &str) -> Result<Option<Allocation>, StateError> {
        read_json(&self.alloc_dir(id).join("alloc.json"))
    }

    /// Save the runner state.
    pub fn save_runner(&self, id: &str, state: &RunnerState) -> Result<(), StateError> {
        write_json(&self.alloc_dir(id).join("runner.json"), state)
    }

    /// Load the runner state.
    pub fn load_runner(&self, id: &str) -> Result<Option<RunnerState>, StateError> {
        let path = self.alloc_dir(id).join("runner.json");
        let st: Option<RunnerState> = read_json(&path)?;
        if let Some(s) = &st {
            if s.version > RUNNER_STATE_VERSION {
                return Err(StateError::Corrupt {
                    path,
                    reason: format!(
                        "format version {} is newer than this agent ({RUNNER_STATE_VERSION})",
                        s.version
                    ),
                });
            }
        }
        Ok(st)
    }

    /// Remove an allocation's directory, after detaching whatever is still
    /// mounted under it (a container rootfs left by an agent killed
    /// mid-start): deleting through a mount would delete the mounted tree.
    pub fn remove_alloc(&self, id: &str) -> Result<(), StateError> {
        let dir = self.alloc_dir(id);
        unmount_under(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path: dir, source }),
        }
    }
}

/// Detach (lazily) every mount at or under `dir`, deepest first.
fn unmount_under(dir: &Path) -> std::io::Result<()> {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Ok(());
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        #[allow(unsafe_code)]
        // SAFETY: umount2 with a valid C string path and a flag.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: no longer a mount point (detached with its parent).
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Create `dir` if needed and make it 0700 (only the agent's user reads it).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Write `bytes` to a file only its owner can read (0600), via a
/// temporary file and a rename.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

/// Write `bytes` to `path` (mode 0600) via a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    /// An allocation dir with a rootfs still mounted (an agent killed
    /// mid-start) is removed without deleting through the mount.
    #[test]
    fn root_remove_alloc_detaches_leftover_mounts() {
        let d = tempfile::tempdir().unwrap();
        let st = StateDir::open(d.path()).unwrap();
        let rootfs = st.alloc_dir("a1").join("t/bundle/rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let lower = d.path().join("lower");
        std::fs::create_dir(&lower).unwrap();
        std::fs::write(lower.join("keep"), "image file").unwrap();
        let st_out = std::process::Command::new("mount")
            .args(["--bind"])
            .arg(&lower)
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(st_out.success(), "this test needs root (mount --bind)");
        st.remove_alloc("a1").unwrap();
        assert!(!st.alloc_dir("a1").exists());
        assert_eq!(
            std::fs::read_to_string(lower.join("keep")).unwrap(),
            "image file",
            "nothing deleted through the mount"
        );
    }

    #[test]
    fn data_dir_is_private_and_state_files_are_0600() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("agent");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let st = StateDir::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("allocs")), 0o700);
        st.node_id().unwrap();
        assert_eq!(mode(&root.join("node-id")), 0o600);
        let f = root.join("allocs/x.json");
        std::fs::write(&f, "old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&f, b"{}").unwrap();
        assert_eq!(mode(&f), 0o600, "a rewritten file is 0600 too");
        st.save_runner("a1", &RunnerState::default()).unwrap_err();
        private_dir(&st.alloc_dir("a1")).unwrap();
        st.save_runner("a1", &RunnerState::default()).unwrap();
        assert_eq!(mode(&st.alloc_dir("a1")), 0o700);
        assert_eq!(mode(&st.alloc_dir("a1").join("runner.json")), 0o600);
    }
}
