//! What stopping a dev cluster removes besides its network: the workloads
//! its agents started (killed through their cgroups), the task shims, the
//! mounts under the agents' data dirs (container root filesystems) and the
//! agents' cgroup trees. The agents' data dirs and the server's store stay.

use std::path::Path;
use std::time::{Duration, Instant};

/// Kill every workload and shim of the agent whose cgroups live under
/// `cgroup_parent` and whose data dir is `data`, unmount what is mounted
/// under `data` and remove the cgroup tree. Returns what could not be done.
pub fn agent_leftovers(cgroup_parent: &str, data: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let layout = match taba_cgroups::Layout::detect() {
        Ok(l) => Some(l),
        Err(e) => {
            errors.push(format!("cgroups: {e}"));
            None
        }
    };
    if let Some(l) = &layout {
        // Kills the workloads (they are in their tasks' cgroups).
        if let Err(e) = l.destroy(cgroup_parent) {
            tracing::debug!("first pass removing cgroup {cgroup_parent}: {e}");
        }
    }
    kill_shims(data);
    unmount_below(data, &mut errors);
    if let Some(l) = &layout {
        if let Err(e) = l.destroy(cgroup_parent) {
            errors.push(format!("removing cgroup {cgroup_parent}: {e}"));
        }
    }
    errors
}

/// SIGKILL the task shims that name a task dir under `data`, and wait (up to
/// 5 s) until they are gone.
fn kill_shims(data: &Path) {
    let data_s = data.to_string_lossy().to_string();
    let shims = || -> Vec<i32> {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_shim = args.get(1).is_some_and(|a| *a == b"shim");
            let mine = args
                .iter()
                .any(|a| String::from_utf8_lossy(a).starts_with(&data_s));
            if is_shim && mine {
                pids.push(pid);
            }
        }
        pids
    };
    let start = Instant::now();
    loop {
        let pids = shims();
        if pids.is_empty() || start.elapsed() > Duration::from_secs(5) {
            return;
        }
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Detach every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path, errors: &mut Vec<String>) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts.dedup();
    for m in mounts {
        if let Err(e) = rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH) {
            if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOENT {
                errors.push(format!("unmounting {m}: {e}"));
            }
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(Ok(v)) = s.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8)) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(super::unescape_mountinfo(r"/a\040b/c"), "/a b/c");
        assert_eq!(super::unescape_mountinfo("/plain"), "/plain");
    }
}
