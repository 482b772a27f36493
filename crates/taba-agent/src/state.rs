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
        std::fs::create_dir_all(&allocs).map_err(|source| StateError::Io {
            path: allocs.clone(),
            source,
        })?;
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
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
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

    /// Remove an allocation's directory.
    pub fn remove_alloc(&self, id: &str) -> Result<(), StateError> {
        let dir = self.alloc_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path: dir, source }),
        }
    }
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

/// Write `bytes` to `path` via a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}
