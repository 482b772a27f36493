//! What a cgroup is asked to enforce ([`Limits`]), what the kernel then holds
//! ([`AppliedLimits`]), and what it measured ([`Stats`]); the conversions
//! from taba's units to each cgroup version's knobs.

use crate::CgroupError;
use rustix::process::{kill_process, Pid, Signal};
use std::path::Path;

/// CFS period used for CPU quotas, microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Smallest quota, in cores, a cgroup can be given (1 ms per 100 ms period).
pub const MIN_CPU_CORES: f64 = 0.01;

/// Largest quota, in cores, accepted (far above any real host).
pub const MAX_CPU_CORES: f64 = 100_000.0;

/// The limits of one workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// CPU share in MHz; proportional weight against the other cgroups:
    /// v1 `cpu.shares` = MHz (clamped to 2..=262144), v2 `cpu.weight` =
    /// shares x 100 / 1024 (clamped to 1..=10000), so a task of 1024 MHz
    /// weighs as much as a process outside any taba cgroup on both versions.
    pub cpu_mhz: u64,
    /// Hard CPU cap in cores (1.5 = one and a half CPUs), or none.
    pub cpu_max_cores: Option<f64>,
    /// Hard memory limit, bytes. Swap is disabled for the cgroup where the
    /// kernel allows (v1 `memory.memsw.limit_in_bytes` = the limit, v2
    /// `memory.swap.max` = 0; v1 without memsw: `memory.swappiness` = 0).
    pub memory_bytes: u64,
    /// Most processes (and threads) at once; 0 means no limit.
    pub pids_max: u64,
}

impl Limits {
    /// Checks every field; the error names the field and why.
    pub fn validate(&self) -> Result<(), CgroupError> {
        if let Some(cores) = self.cpu_max_cores {
            if !cores.is_finite() || !(MIN_CPU_CORES..=MAX_CPU_CORES).contains(&cores) {
                return Err(CgroupError::InvalidLimit {
                    field: "cpu_max_cores",
                    reason: format!("{cores} is not between {MIN_CPU_CORES} and {MAX_CPU_CORES}"),
                });
            }
        }
        if self.memory_bytes == 0 {
            return Err(CgroupError::InvalidLimit {
                field: "memory_bytes",
                reason: "must be greater than zero".into(),
            });
        }
        Ok(())
    }

    /// v1 `cpu.shares`.
    pub fn cpu_shares(&self) -> u64 {
        self.cpu_mhz.clamp(2, 262_144)
    }

    /// v2 `cpu.weight`, proportional to the shares (1024 shares = 100).
    pub fn cpu_weight(&self) -> u64 {
        ((self.cpu_shares() * 100 + 512) / 1024).clamp(1, 10_000)
    }

    /// The CFS quota per [`CPU_PERIOD_US`], microseconds; `None` = no cap.
    pub fn cpu_quota_us(&self) -> Option<u64> {
        self.cpu_max_cores
            .map(|c| ((c * CPU_PERIOD_US as f64).round() as u64).max(1_000))
    }
}

/// The limits a cgroup holds, read back from the kernel's files after
/// [`crate::AnyCgroup::apply`] (values may be rounded by the kernel, e.g.
/// memory to whole pages).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppliedLimits {
    /// v1 `cpu.shares`; `None` on v2.
    pub cpu_shares: Option<u64>,
    /// v2 `cpu.weight`; `None` on v1.
    pub cpu_weight: Option<u64>,
    /// CFS quota, microseconds per `cpu_period_us`; `None` = no cap.
    pub cpu_quota_us: Option<u64>,
    /// CFS period, microseconds.
    pub cpu_period_us: u64,
    /// Memory limit, bytes; `None` = unlimited.
    pub memory_max: Option<u64>,
    /// Swap the cgroup may use on top of `memory_max`, bytes (0 = none);
    /// `None` when the kernel offers no per-cgroup swap limit or it is
    /// unlimited.
    pub swap_max: Option<u64>,
    /// Process limit; `None` = unlimited.
    pub pids_max: Option<u64>,
}

/// Usage measured by the kernel for one cgroup (including its descendants).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU time consumed, nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use without reclaimable page cache: usage minus inactive
    /// file pages (v1 `total_inactive_file`, v2 `inactive_file` of
    /// `memory.stat`), bytes.
    pub memory_usage: u64,
    /// Peak memory usage, bytes (v1 `memory.max_usage_in_bytes`, v2
    /// `memory.peak`; on v2 kernels before 5.19, which keep no peak, the
    /// current usage including page cache).
    pub memory_max_usage: u64,
    /// Processes killed by the OOM killer because of this cgroup's limit.
    /// On v1 kernels without an `oom_kill` counter (before 4.13) this is a
    /// guess: 1 when the limit was ever hit (`memory.failcnt` > 0), else 0.
    pub oom_kills: u64,
    /// Processes and threads now in the cgroup.
    pub pids_current: u64,
}

/// Sends SIGKILL to every pid. A pid that is already gone is fine; pid 0
/// (a process outside our pid namespace, as `cgroup.procs` shows it) is
/// skipped, because signalling 0 would hit our own process group.
/// SIGKILL whatever `pids` lists until it lists nothing (at most
/// `KILL_WAIT`); `StillPopulated` naming `procs_path` otherwise.
pub(crate) fn kill_until_empty(
    pids: impl Fn() -> Result<Vec<u32>, CgroupError>,
    procs_path: &Path,
) -> Result<(), CgroupError> {
    let empty = crate::fs::poll_until(crate::v1::KILL_WAIT, || {
        let now = pids()?;
        sigkill_all(&now, procs_path)?;
        Ok(now.is_empty())
    })?;
    if !empty {
        return Err(CgroupError::StillPopulated {
            path: procs_path.to_path_buf(),
            remaining: pids()?.len(),
        });
    }
    Ok(())
}

pub(crate) fn sigkill_all(pids: &[u32], procs_path: &Path) -> Result<(), CgroupError> {
    for &pid in pids {
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let Some(pid_t) = Pid::from_raw(raw) else {
            continue;
        };
        match kill_process(pid_t, Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(source) => {
                return Err(CgroupError::Signal {
                    pid,
                    path: procs_path.to_owned(),
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cpu_mhz: u64, cores: Option<f64>) -> Limits {
        Limits {
            cpu_mhz,
            cpu_max_cores: cores,
            memory_bytes: 1 << 20,
            pids_max: 0,
        }
    }

    #[test]
    fn weight_is_proportional_to_shares() {
        assert_eq!(limits(1024, None).cpu_weight(), 100);
        assert_eq!(limits(2048, None).cpu_weight(), 200);
        assert_eq!(limits(512, None).cpu_weight(), 50);
        assert_eq!(limits(0, None).cpu_shares(), 2);
        assert_eq!(limits(0, None).cpu_weight(), 1);
        assert_eq!(limits(u64::MAX, None).cpu_shares(), 262_144);
        assert_eq!(limits(u64::MAX, None).cpu_weight(), 10_000);
    }

    #[test]
    fn quota_is_cores_times_period() {
        assert_eq!(limits(1, Some(1.5)).cpu_quota_us(), Some(150_000));
        assert_eq!(limits(1, Some(0.01)).cpu_quota_us(), Some(1_000));
        assert_eq!(limits(1, None).cpu_quota_us(), None);
    }

    #[test]
    fn bad_limits_name_their_field() {
        for cores in [0.0, -1.0, f64::NAN, f64::INFINITY, 0.001, 1e9] {
            let err = limits(1, Some(cores)).validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    CgroupError::InvalidLimit {
                        field: "cpu_max_cores",
                        ..
                    }
                ),
                "{cores}: {err:?}"
            );
        }
        let mut l = limits(1, None);
        l.memory_bytes = 0;
        assert!(matches!(
            l.validate(),
            Err(CgroupError::InvalidLimit {
                field: "memory_bytes",
                ..
            })
        ));
        limits(1, Some(2.0)).validate().unwrap();
    }

    #[test]
    fn pid_zero_is_never_signalled() {
        // Would kill our own process group if it were.
        sigkill_all(&[0], Path::new("cgroup.procs")).unwrap();
    }
}
