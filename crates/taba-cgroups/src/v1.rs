//! A cgroup on v1 (and hybrid) hosts: one directory per mounted hierarchy.
//!
//! Owns the v1 file names and their quirks (memsw ordering, cpuset
//! inheritance, the freezer); never touches the v2 mount of a hybrid host.

use crate::fs;
use crate::limits::{kill_until_empty, sigkill_all, AppliedLimits, Limits, Stats, CPU_PERIOD_US};
use crate::CgroupError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// v1 reports "unlimited" memory as the largest page-aligned i64.
const UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// How long to wait for the freezer to report FROZEN before killing anyway.
const FREEZE_WAIT: Duration = Duration::from_secs(1);

/// How long killed processes get to leave the cgroup.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(5);

/// The cgroup's directory in one hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct V1Dir {
    /// Controllers of that hierarchy.
    pub(crate) controllers: Vec<&'static str>,
    /// The hierarchy's mount point.
    pub(crate) mount: PathBuf,
    /// `mount/rel`.
    pub(crate) path: PathBuf,
}

/// A cgroup on a v1 or hybrid host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Cgroup {
    rel: String,
    dirs: Vec<V1Dir>,
}

impl V1Cgroup {
    pub(crate) fn new(rel: &str, dirs: Vec<V1Dir>) -> V1Cgroup {
        V1Cgroup {
            rel: rel.to_owned(),
            dirs,
        }
    }

    /// Makes the directories; gives new cpuset cgroups their parent's CPUs
    /// and memory nodes (a cpuset cgroup starts empty and refuses tasks).
    pub(crate) fn make(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            fs::create_dir_all(&d.path)?;
            if d.controllers.contains(&"cpuset") {
                let mut parent = d.mount.clone();
                for part in Path::new(&self.rel).iter() {
                    let child = parent.join(part);
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let mine = child.join(file);
                        if fs::read(&mine)?.trim().is_empty() {
                            fs::write(&mine, fs::read(&parent.join(file))?.trim())?;
                        }
                    }
                    parent = child;
                }
            }
        }
        Ok(())
    }

    /// The path relative to every hierarchy root.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The cgroup's directory in each hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }

    fn dir(&self, controller: &'static str) -> Result<&Path, CgroupError> {
        self.dirs
            .iter()
            .find(|d| d.controllers.contains(&controller))
            .map(|d| d.path.as_path())
            .ok_or_else(|| CgroupError::MissingController {
                controller,
                path: self
                    .dirs
                    .first()
                    .map(|d| d.mount.clone())
                    .unwrap_or_default(),
            })
    }

    /// Writes the limits, then reads back what the kernel holds.
    pub fn apply(&self, limits: &Limits) -> Result<AppliedLimits, CgroupError> {
        limits.validate()?;
        let cpu = self.dir("cpu")?;
        fs::write(&cpu.join("cpu.shares"), &limits.cpu_shares().to_string())?;
        fs::write(&cpu.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        let quota = match limits.cpu_quota_us() {
            Some(q) => q.to_string(),
            None => "-1".to_owned(),
        };
        fs::write(&cpu.join("cpu.cfs_quota_us"), &quota)?;

        let mem = self.dir("memory")?;
        let limit = mem.join("memory.limit_in_bytes");
        let memsw = mem.join("memory.memsw.limit_in_bytes");
        let bytes = limits.memory_bytes.to_string();
        if memsw.exists() {
            // The kernel keeps memsw >= limit at every step: raise memsw
            // first when growing, lower the limit first when shrinking.
            if limits.memory_bytes > fs::read_u64(&limit)? {
                fs::write(&memsw, &bytes)?;
                fs::write(&limit, &bytes)?;
            } else {
                fs::write(&limit, &bytes)?;
                fs::write(&memsw, &bytes)?;
            }
        } else {
            fs::write(&limit, &bytes)?;
            fs::write(&mem.join("memory.swappiness"), "0")?;
        }

        let pids_max = match limits.pids_max {
            0 => "max".to_owned(),
            n => n.to_string(),
        };
        fs::write(&self.dir("pids")?.join("pids.max"), &pids_max)?;
        self.limits()
    }

    /// Reads the limits the kernel holds now.
    pub fn limits(&self) -> Result<AppliedLimits, CgroupError> {
        let cpu = self.dir("cpu")?;
        let quota_path = cpu.join("cpu.cfs_quota_us");
        let quota_text = fs::read(&quota_path)?;
        let cpu_quota_us = match quota_text.trim() {
            "-1" => None,
            q => Some(fs::parse_u64(&quota_path, q)?),
        };
        let mem = self.dir("memory")?;
        let limit = fs::read_u64(&mem.join("memory.limit_in_bytes"))?;
        let memory_max = (limit < UNLIMITED).then_some(limit);
        let swap_max = match fs::read_optional(&mem.join("memory.memsw.limit_in_bytes"))? {
            Some(text) => {
                let memsw = fs::parse_u64(&mem.join("memory.memsw.limit_in_bytes"), &text)?;
                (memsw < UNLIMITED).then(|| memsw.saturating_sub(limit))
            }
            None => None,
        };
        Ok(AppliedLimits {
            cpu_shares: Some(fs::read_u64(&cpu.join("cpu.shares"))?),
            cpu_weight: None,
            cpu_quota_us,
            cpu_period_us: fs::read_u64(&cpu.join("cpu.cfs_period_us"))?,
            memory_max,
            swap_max,
            pids_max: fs::read_max(&self.dir("pids")?.join("pids.max"))?,
        })
    }

    /// Deny every device, then allow `allow`; false when the devices
    /// hierarchy is not mounted.
    pub fn restrict_devices(&self, allow: &[&str]) -> Result<bool, CgroupError> {
        let Ok(dir) = self.dir("devices") else {
            return Ok(false);
        };
        fs::write(&dir.join("devices.deny"), "a")?;
        for rule in allow {
            fs::write(&dir.join("devices.allow"), rule)?;
        }
        Ok(true)
    }

    /// The `cgroup.procs` file of every hierarchy.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// Moves a process (all its threads) into the cgroup in every hierarchy.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        let pid = pid.to_string();
        for f in self.procs_files() {
            fs::write(&f, &pid)?;
        }
        Ok(())
    }

    /// Every process in the cgroup or below it, in any hierarchy, sorted.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut all = Vec::new();
        for d in &self.dirs {
            all.extend(fs::procs_recursive(&d.path)?);
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// Usage counters.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let cpu_usage_ns = fs::read_u64(&self.dir("cpuacct")?.join("cpuacct.usage"))?;
        let mem = self.dir("memory")?;
        let usage = fs::read_u64(&mem.join("memory.usage_in_bytes"))?;
        let stat_path = mem.join("memory.stat");
        let stat = fs::read(&stat_path)?;
        let cache = match fs::keyed(&stat_path, &stat, "total_inactive_file")? {
            Some(v) => v,
            None => fs::keyed(&stat_path, &stat, "total_cache")?.unwrap_or(0),
        };
        Ok(Stats {
            cpu_usage_ns,
            memory_usage: usage.saturating_sub(cache),
            memory_max_usage: fs::read_u64(&mem.join("memory.max_usage_in_bytes"))?,
            oom_kills: self.oom_kills()?,
            pids_current: fs::read_u64(&self.dir("pids")?.join("pids.current"))?,
        })
    }

    /// The `oom_kill` counter of `memory.oom_control` (kernel 4.13+), else
    /// 1 if the limit was ever hit (`memory.failcnt`).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let mem = self.dir("memory")?;
        let path = mem.join("memory.oom_control");
        match fs::keyed(&path, &fs::read(&path)?, "oom_kill")? {
            Some(n) => Ok(n),
            None => Ok(u64::from(fs::read_u64(&mem.join("memory.failcnt"))? > 0)),
        }
    }

    /// Kills every process in the cgroup and below: freeze (so nothing
    /// forks meanwhile), SIGKILL each, thaw; then waits until all are gone.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let procs = self.procs_files().into_iter().next().unwrap_or_default();
        if let Ok(fz) = self.dir("freezer") {
            if fz.is_dir() {
                let state = fz.join("freezer.state");
                fs::write(&state, "FROZEN")?;
                let killed =
                    fs::poll_until(FREEZE_WAIT, || Ok(fs::read(&state)?.trim() == "FROZEN"))
                        .and_then(|_| sigkill_all(&self.pids()?, &procs));
                // Thaw the whole subtree: a descendant frozen on its own (by
                // an agent that died in the middle of a kill) would keep its
                // processes, SIGKILL pending, frozen forever.
                let thawed = thaw_tree(fz);
                killed?;
                thawed?;
            }
        }
        // Without a freezer, and for anything that slipped through: kill
        // until the cgroup is empty.
        kill_until_empty(|| self.pids(), &procs)
    }

    /// Kills what is left, then removes the directories, children first,
    /// in every hierarchy. Removing a cgroup that is gone is fine.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        if !self.pids()?.is_empty() {
            self.kill_all()?;
        }
        for d in &self.dirs {
            fs::remove_tree(&d.path)?;
        }
        Ok(())
    }
}

/// Write THAWED to the freezer state of `dir` and of every cgroup below it.
fn thaw_tree(dir: &std::path::Path) -> Result<(), CgroupError> {
    fs::write(&dir.join("freezer.state"), "THAWED")?;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            thaw_tree(&e.path())?;
        }
    }
    Ok(())
}
