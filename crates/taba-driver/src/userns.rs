//! Host id ranges for containers with `user_namespace = "auto"`.
//!
//! Each allocation gets one range of [`RANGE_SIZE`] uids and gids (its tasks
//! share it), `base + index * RANGE_SIZE`, with an index no live allocation
//! on the node holds. The table is a JSON file (0600) the agent keeps in its
//! data dir, so a restarted agent never hands out a range still in use. An
//! entry is released when its allocation's directory is gone (the agent
//! removes it when the allocation is garbage collected).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use taba_runtime::container::userns::IdRange;

use crate::DriverError;

/// Ids per allocation: a whole 16-bit id space, as images expect.
pub const RANGE_SIZE: u32 = 65536;
/// Format version of the table file.
const TABLE_VERSION: u32 = 1;

/// Where ranges start and how many there are (`[isolation]` of the agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsernsConfig {
    /// First host id of range 0.
    pub base: u32,
    /// How many ranges (allocations with a user namespace at once).
    pub ranges: u32,
}

impl Default for UsernsConfig {
    fn default() -> Self {
        Self {
            base: 1_000_000_000,
            ranges: 4096,
        }
    }
}

impl UsernsConfig {
    /// Why this configuration cannot work, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.ranges == 0 {
            return Err("userns_ranges must be at least 1".into());
        }
        let end = u64::from(self.base) + u64::from(self.ranges) * u64::from(RANGE_SIZE);
        if end > u64::from(u32::MAX) {
            return Err(format!(
                "userns_base + userns_ranges * {RANGE_SIZE} = {end} is past the last id (2^32-1)"
            ));
        }
        if self.base < RANGE_SIZE {
            return Err(format!(
                "userns_base {} overlaps the host's own ids (below {RANGE_SIZE})",
                self.base
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Table {
    version: u32,
    /// alloc id -> (index, the allocation's directory).
    ranges: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    index: u32,
    alloc_dir: PathBuf,
}

/// The node's table of ranges.
pub struct IdRanges {
    config: UsernsConfig,
    path: PathBuf,
    lock: Mutex<()>,
}

impl IdRanges {
    /// The table kept at `path`.
    pub fn new(config: UsernsConfig, path: PathBuf) -> Self {
        Self {
            config,
            path,
            lock: Mutex::new(()),
        }
    }

    fn load(&self) -> Result<Table, DriverError> {
        match std::fs::read(&self.path) {
            Ok(b) => {
                let t: Table = serde_json::from_slice(&b).map_err(|e| {
                    DriverError::Start(format!("user namespace table {}: {e}", self.path.display()))
                })?;
                if t.version > TABLE_VERSION {
                    return Err(DriverError::Start(format!(
                        "user namespace table {} has version {}, newer than this agent",
                        self.path.display(),
                        t.version
                    )));
                }
                Ok(t)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Table {
                version: TABLE_VERSION,
                ..Table::default()
            }),
            Err(source) => Err(DriverError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn save(&self, t: &Table) -> Result<(), DriverError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| DriverError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&serde_json::to_vec_pretty(t).expect("plain data"))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }

    fn range(&self, index: u32) -> IdRange {
        let host = self.config.base + index * RANGE_SIZE;
        IdRange {
            host_uid: host,
            host_gid: host,
            size: RANGE_SIZE,
        }
    }

    /// The range of allocation `alloc_id` (whose directory is `alloc_dir`):
    /// the one it holds, or the lowest free one. Entries of allocations
    /// whose directory is gone are released first.
    pub fn acquire(&self, alloc_id: &str, alloc_dir: &Path) -> Result<IdRange, DriverError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut t = self.load()?;
        t.version = TABLE_VERSION;
        let before = t.ranges.len();
        t.ranges
            .retain(|id, e| id == alloc_id || e.alloc_dir.exists());
        if let Some(e) = t.ranges.get(alloc_id) {
            let r = self.range(e.index);
            if t.ranges.len() != before {
                self.save(&t)?;
            }
            return Ok(r);
        }
        let used: std::collections::BTreeSet<u32> = t.ranges.values().map(|e| e.index).collect();
        let index = (0..self.config.ranges)
            .find(|i| !used.contains(i))
            .ok_or_else(|| {
                DriverError::Start(format!(
                    "user_namespace: all {} id ranges of this node are in use (agent option isolation.userns_ranges)",
                    self.config.ranges
                ))
            })?;
        t.ranges.insert(
            alloc_id.to_string(),
            Entry {
                index,
                alloc_dir: alloc_dir.to_path_buf(),
            },
        );
        self.save(&t)?;
        Ok(self.range(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_get_disjoint_ranges_that_survive_a_restart_and_are_released() {
        let d = tempfile::tempdir().unwrap();
        let table = d.path().join("state/userns.json");
        let cfg = UsernsConfig {
            base: 200_000,
            ranges: 2,
        };
        let (a_dir, b_dir, c_dir) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        for p in [&a_dir, &b_dir, &c_dir] {
            std::fs::create_dir(p).unwrap();
        }
        let ids = IdRanges::new(cfg, table.clone());
        let a = ids.acquire("a", &a_dir).unwrap();
        let b = ids.acquire("b", &b_dir).unwrap();
        assert_eq!(a.host_uid, 200_000);
        assert_eq!(b.host_uid, 200_000 + RANGE_SIZE);
        assert!(a.host_uid + a.size <= b.host_uid, "disjoint");
        assert_eq!(
            ids.acquire("a", &a_dir).unwrap(),
            a,
            "same allocation, same range"
        );
        // A restarted agent reads the table: no live range is handed out again.
        let again = IdRanges::new(cfg, table.clone());
        let e = again.acquire("c", &c_dir).unwrap_err().to_string();
        assert!(e.contains("all 2 id ranges"), "{e}");
        assert_eq!(again.acquire("b", &b_dir).unwrap(), b);
        // The allocation is gone: its range is free.
        std::fs::remove_dir(&a_dir).unwrap();
        assert_eq!(again.acquire("c", &c_dir).unwrap(), a);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&table).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn configuration_is_checked() {
        assert!(UsernsConfig::default().check().is_ok());
        let e = UsernsConfig {
            base: 4_000_000_000,
            ranges: 8192,
        }
        .check()
        .unwrap_err();
        assert!(e.contains("past the last id"), "{e}");
        assert!(UsernsConfig { base: 0, ranges: 1 }.check().is_err());
        assert!(UsernsConfig {
            base: 100_000,
            ranges: 0
        }
        .check()
        .is_err());
    }
}
