//! The host's own utilization, as the node's measured use: CPU from the
//! aggregate line of `/proc/stat` (busy jiffies between two samples over all
//! jiffies, times the node's MHz), memory from `/proc/meminfo`
//! (`MemTotal - MemAvailable`). It counts everything on the host, not only
//! taba's allocations: what makes a node hot is its real load.

use std::path::Path;

/// Cumulative CPU time of the host from `/proc/stat`, in jiffies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Jiffies spent doing work (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// All jiffies (busy plus idle and iowait).
    pub total: u64,
}

/// Parse the aggregate `cpu ` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    // (guest time is already counted in user and nice).
    if v.len() < 4 {
        return None;
    }
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let idle = at(3) + at(4);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some(CpuTimes {
        busy,
        total: busy + idle,
    })
}

/// Memory in use from `/proc/meminfo`: `MemTotal - MemAvailable`, bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some(total.saturating_sub(available) * 1024)
}

/// Read the host's CPU times and memory in use.
pub fn sample(proc_dir: &Path) -> Option<(CpuTimes, u64)> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    let mem = std::fs::read_to_string(proc_dir.join("meminfo")).ok()?;
    Some((parse_proc_stat(&stat)?, parse_meminfo(&mem)?))
}

/// CPU in use between two samples, MHz, for a node of `total_mhz`.
pub fn cpu_mhz_between(prev: CpuTimes, now: CpuTimes, total_mhz: u64) -> u64 {
    let dt = now.total.saturating_sub(prev.total);
    if dt == 0 {
        return 0;
    }
    let busy = now.busy.saturating_sub(prev.busy).min(dt);
    (u128::from(busy) * u128::from(total_mhz) / u128::from(dt)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_meminfo() {
        let stat = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\nintr 1\n";
        let t = parse_proc_stat(stat).unwrap();
        assert_eq!(t.busy, 100 + 5 + 50 + 3 + 2);
        assert_eq!(t.total, t.busy + 800 + 40);
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        assert_eq!(parse_proc_stat("cpu  a b c d\n"), None);
        let mem = "MemTotal:       16000 kB\nMemFree:  1000 kB\nMemAvailable:   4000 kB\n";
        assert_eq!(parse_meminfo(mem), Some(12000 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cpu_between_samples() {
        let a = CpuTimes {
            busy: 100,
            total: 1000,
        };
        let b = CpuTimes {
            busy: 150,
            total: 1100,
        };
        // Half the jiffies busy on an 8000 MHz node: 4000 MHz.
        assert_eq!(cpu_mhz_between(a, b, 8000), 4000);
        assert_eq!(cpu_mhz_between(a, a, 8000), 0);
    }

    #[test]
    fn reads_this_hosts_proc() {
        let (cpu, mem) = sample(Path::new("/proc")).expect("/proc/stat and /proc/meminfo");
        assert!(cpu.total > 0 && cpu.busy <= cpu.total);
        assert!(mem > 0);
    }
}
