//! A cgroup on a pure v2 host: one directory in the unified hierarchy.
//!
//! Owns the v2 file names, enabling controllers down the tree
//! (`cgroup.subtree_control`), `cgroup.kill` and `cgroup.freeze`.

use crate::fs;
use crate::layout::V2_REQUIRED;
use crate::limits::{kill_until_empty, sigkill_all, AppliedLimits, Limits, Stats, CPU_PERIOD_US};
use crate::CgroupError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for `cgroup.events` to say `frozen 1` before killing anyway.
const FREEZE_WAIT: Duration = Duration::from_secs(1);

/// A cgroup on a v2 host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V2Cgroup {
    rel: String,
    root: PathBuf,
    path: PathBuf,
}

impl V2Cgroup {
    pub(crate) fn new(rel: &str, root: PathBuf) -> V2Cgroup {
        V2Cgroup {
            rel: rel.to_owned(),
            path: root.join(rel),
            root,
        }
    }

    /// Makes the directory and enables taba's controllers in the
    /// `cgroup.subtree_control` of the root and of every ancestor (only those
    /// not enabled yet, in one write per level).
    pub(crate) fn make(&self) -> Result<(), CgroupError> {
        let available_path = self.root.join("cgroup.controllers");
        let available = fs::read(&available_path)?;
        for c in V2_REQUIRED {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(CgroupError::MissingController {
                    controller: c,
                    path: available_path,
                });
            }
        }
        fs::create_dir_all(&self.path)?;
        let mut level = self.root.clone();
        let parts: Vec<_> = Path::new(&self.rel).iter().collect();
        for part in &parts {
            enable_controllers(&level)?;
            level.push(part);
        }
        Ok(())
    }

    /// The path relative to the root.
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the limits, then reads back what the kernel holds. A memory
    /// limit below what the cgroup uses (after reclaiming what the kernel
    /// can) is refused before anything is written, as v1 refuses it: v2's
    /// `memory.max` would take it and OOM-kill the workload.
    pub fn apply(&self, limits: &Limits) -> Result<AppliedLimits, CgroupError> {
        limits.validate()?;
        self.check_memory_fits(limits.memory_bytes)?;
        let p = &self.path;
        fs::write(&p.join("cpu.weight"), &limits.cpu_weight().to_string())?;
        let max = match limits.cpu_quota_us() {
            Some(q) => format!("{q} {CPU_PERIOD_US}"),
            None => format!("max {CPU_PERIOD_US}"),
        };
        fs::write(&p.join("cpu.max"), &max)?;
        fs::write(&p.join("memory.max"), &limits.memory_bytes.to_string())?;
        let swap = p.join("memory.swap.max");
        if swap.exists() {
            fs::write(&swap, "0")?;
        }
        let pids_max = match limits.pids_max {
            0 => "max".to_owned(),
            n => n.to_string(),
        };
        fs::write(&p.join("pids.max"), &pids_max)?;
        self.limits()
    }

    /// Errs with EBUSY on `memory.max` when the cgroup uses more than
    /// `limit` even after asking the kernel to reclaim the difference
    /// (`memory.reclaim`, 5.19+; without swap only caches can go). Memory
    /// that grows between this check and the write is still the kernel's to
    /// handle (it OOM-kills).
    fn check_memory_fits(&self, limit: u64) -> Result<(), CgroupError> {
        let current_path = self.path.join("memory.current");
        let Some(current) = fs::read_optional(&current_path)? else {
            return Ok(());
        };
        let current = fs::parse_u64(&current_path, &current)?;
        if current <= limit {
            return Ok(());
        }
        let reclaim = self.path.join("memory.reclaim");
        if reclaim.exists() {
            // EAGAIN when it could not reclaim it all: the check below decides.
            let _ = fs::write(&reclaim, &(current - limit).to_string());
        }
        if fs::read_u64(&current_path)? <= limit {
            return Ok(());
        }
        Err(CgroupError::Write {
            path: self.path.join("memory.max"),
            value: limit.to_string(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        })
    }

    /// Reads the limits the kernel holds now.
    pub fn limits(&self) -> Result<AppliedLimits, CgroupError> {
        let p = &self.path;
        let max_path = p.join("cpu.max");
        let max = fs::read(&max_path)?;
        let mut words = max.split_whitespace();
        let (quota, period) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let cpu_quota_us = match quota {
            "max" => None,
            q => Some(fs::parse_u64(&max_path, q)?),
        };
        let swap_path = p.join("memory.swap.max");
        let swap_max = match fs::read_optional(&swap_path)? {
            Some(t) if t.trim() == "max" => None,
            Some(t) => Some(fs::parse_u64(&swap_path, &t)?),
            None => None,
        };
        Ok(AppliedLimits {
            cpu_shares: None,
            cpu_weight: Some(fs::read_u64(&p.join("cpu.weight"))?),
            cpu_quota_us,
            cpu_period_us: fs::parse_u64(&max_path, period)?,
            memory_max: fs::read_max(&p.join("memory.max"))?,
            swap_max,
            pids_max: fs::read_max(&p.join("pids.max"))?,
        })
    }

    /// The one `cgroup.procs` file.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        vec![self.path.join("cgroup.procs")]
    }

    /// Moves a process (all its threads) into the cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        fs::write(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// Every process in the cgroup or below it, sorted.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut all = fs::procs_recursive(&self.path)?;
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// Usage counters.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let p = &self.path;
        let cpu_path = p.join("cpu.stat");
        let usage_usec =
            fs::keyed(&cpu_path, &fs::read(&cpu_path)?, "usage_usec")?.ok_or_else(|| {
                CgroupError::Parse {
                    path: cpu_path.clone(),
                    reason: "no usage_usec line".into(),
                }
            })?;
        let current = fs::read_u64(&p.join("memory.current"))?;
        let stat_path = p.join("memory.stat");
        let inactive = fs::keyed(&stat_path, &fs::read(&stat_path)?, "inactive_file")?.unwrap_or(0);
        let peak_path = p.join("memory.peak");
        let peak = match fs::read_optional(&peak_path)? {
            Some(t) => fs::parse_u64(&peak_path, &t)?,
            None => current,
        };
        Ok(Stats {
            cpu_usage_ns: usage_usec.saturating_mul(1000),
            memory_usage: current.saturating_sub(inactive),
            memory_max_usage: peak,
            oom_kills: self.oom_kills()?,
            pids_current: fs::read_u64(&p.join("pids.current"))?,
        })
    }

    /// The `oom_kill` counter of `memory.events`.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let path = self.path.join("memory.events");
        Ok(fs::keyed(&path, &fs::read(&path)?, "oom_kill")?.unwrap_or(0))
    }

    /// Kills every process in the cgroup and below: `cgroup.kill` (5.14+),
    /// else freeze, SIGKILL each, thaw; then waits until all are gone.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        if !self.path.is_dir() {
            return Ok(());
        }
        let kill = self.path.join("cgroup.kill");
        let freeze = self.path.join("cgroup.freeze");
        if kill.exists() {
            fs::write(&kill, "1")?;
        } else if freeze.exists() {
            fs::write(&freeze, "1")?;
            let events = self.path.join("cgroup.events");
            let killed = fs::poll_until(FREEZE_WAIT, || {
                Ok(fs::keyed(&events, &fs::read(&events)?, "frozen")? == Some(1))
            })
            .and_then(|_| sigkill_all(&self.pids()?, &procs));
            let thawed = fs::write(&freeze, "0");
            killed?;
            thawed?;
        }
        kill_until_empty(|| self.pids(), &procs)
    }

    /// Kills what is left, then removes the directory and those below it,
    /// children first. Removing a cgroup that is gone is fine.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        if !self.pids()?.is_empty() {
            self.kill_all()?;
        }
        fs::remove_tree(&self.path)
    }
}

/// Enables taba's controllers for the children of `level`.
fn enable_controllers(level: &Path) -> Result<(), CgroupError> {
    let path = level.join("cgroup.subtree_control");
    let enabled = fs::read(&path)?;
    let missing: Vec<String> = V2_REQUIRED
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&path, &missing.join(" "))
}
