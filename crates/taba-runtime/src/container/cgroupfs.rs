//! `/sys/fs/cgroup` inside a container: its own cgroups, read-only, so that
//! programs read their own limits (JVMs, Go runtimes), as runc mounts it
//! for a container with a cgroup namespace of its own.
//!
//! The layout is the host's, found in the parent from `/proc/self/mountinfo`:
//! - cgroup v2 (`/sys/fs/cgroup` is cgroup2): one cgroup2 mount;
//! - v1 or hybrid: a tmpfs, and on it one `cgroup` mount per v1 hierarchy of
//!   the host (same directory names and mount options, plus the host's
//!   symlinks such as `cpu -> cpu,cpuacct`), then the tmpfs made read-only.
//!   The v2 hierarchy of a hybrid host (`unified`) is left out, as podman
//!   and runc leave it out.
//!
//! Mounted from inside the container's cgroup namespace, each hierarchy's
//! root is the container's own cgroup: it sees nothing above it.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{self as rfs, Mode};

use crate::paths;
use crate::sys;

/// What to mount at `/sys/fs/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPlan {
    /// One cgroup2 mount.
    V2,
    /// A tmpfs holding these v1 hierarchies.
    V1 {
        /// Directory name and mount data (`cpu,cpuacct`; `name=systemd`).
        hierarchies: Vec<(String, String)>,
        /// Symlinks next to them (`cpu` -> `cpu,cpuacct`).
        links: Vec<(String, String)>,
    },
}

/// Super options of a v1 hierarchy that do not name it (flags, or
/// settings that a mount inside a cgroup namespace may not repeat).
const NOT_NAMING: &[&str] = &[
    "rw",
    "ro",
    "xattr",
    "clone_children",
    "noprefix",
    "cpuset_v2_mode",
    "favordynmods",
    "nofavordynmods",
];

/// Whether a super option names the hierarchy (a controller or `name=`).
fn names_hierarchy(o: &str) -> bool {
    !o.is_empty() && !NOT_NAMING.contains(&o) && (!o.contains('=') || o.starts_with("name="))
}

/// The host's layout from a `mountinfo` text and its `/sys/fs/cgroup`
/// symlinks (`(name, target)`).
pub fn plan_from(mountinfo: &str, links: Vec<(String, String)>) -> CgroupPlan {
    let mut hierarchies = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or("");
        let mut r = right.split(' ');
        let (fstype, _source, opts) = (r.next(), r.next(), r.next().unwrap_or(""));
        if mount_point == "/sys/fs/cgroup" && fstype == Some("cgroup2") {
            return CgroupPlan::V2;
        }
        let Some(name) = mount_point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if fstype != Some("cgroup") || name.contains('/') || name.is_empty() {
            continue;
        }
        let data: Vec<&str> = opts.split(',').filter(|o| names_hierarchy(o)).collect();
        if !hierarchies.iter().any(|(n, _)| n == name) {
            hierarchies.push((name.to_string(), data.join(",")));
        }
    }
    let links = links
        .into_iter()
        .filter(|(n, t)| !n.contains('/') && hierarchies.iter().any(|(h, _)| h == t))
        .collect();
    CgroupPlan::V1 { hierarchies, links }
}

/// The host's layout, as this process sees it.
pub fn plan() -> std::io::Result<CgroupPlan> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut links = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_symlink()) {
                if let Ok(t) = std::fs::read_link(e.path()) {
                    links.push((
                        e.file_name().to_string_lossy().into_owned(),
                        t.to_string_lossy().into_owned(),
                    ));
                }
            }
        }
    }
    Ok(plan_from(&mountinfo, links))
}

fn cs(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn mount(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let t = sys::path_cstr(target)?;
    let (src, fstype) = (
        CString::new(src).expect("no NUL"),
        CString::new(fstype).expect("no NUL"),
    );
    let data = data
        .map(|d| CString::new(d).map_err(std::io::Error::other))
        .transpose()?;
    let dp = data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr());
    // SAFETY: valid NUL-terminated strings that outlive the call.
    sys::check(unsafe { libc::mount(src.as_ptr(), t.as_ptr(), fstype.as_ptr(), flags, dp.cast()) })
        .map(|_| ())
}

/// Mount `plan` at `dest` (resolved inside `root`), with `flags` (nosuid,
/// nodev, noexec, ro...) on every mount. Runs in the container's child,
/// inside its cgroup namespace, before `pivot_root`.
pub(crate) fn mount_at(
    root: BorrowedFd<'_>,
    dest: &Path,
    plan: &CgroupPlan,
    flags: libc::c_ulong,
) -> Result<(), String> {
    let what = |step: &str| format!("mount cgroups on {}: {step}", dest.display());
    let target = paths::create_in_root(root, dest, paths::Create::Dir)
        .map_err(|e| format!("{}: {e}", what("create target")))?;
    let target_path = paths::fd_path(target.as_fd());
    match plan {
        CgroupPlan::V2 => mount("cgroup2", &target_path, "cgroup2", flags, None)
            .map_err(|e| format!("{}: {e}", what("cgroup2"))),
        CgroupPlan::V1 { hierarchies, links } => {
            let tmpfs_flags = flags & !libc::MS_RDONLY;
            mount(
                "tmpfs",
                &target_path,
                "tmpfs",
                tmpfs_flags,
                Some("mode=755,size=64k"),
            )
            .map_err(|e| format!("{}: {e}", what("tmpfs")))?;
            // The fd names the directory under the tmpfs: look again.
            let top = paths::open_in_root(root, dest, rustix::fs::OFlags::PATH)
                .map_err(|e| format!("{}: {e}", what("reopen")))?;
            let dir = paths::reopen_dir(top.as_fd())
                .map_err(|e| format!("{}: {e}", what("open tmpfs")))?;
            for (name, data) in hierarchies {
                rfs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755))
                    .map_err(|e| format!("{}: {e}", what(&format!("mkdir {name}"))))?;
                let sub = paths::fd_path(top.as_fd()).join(name);
                mount("cgroup", &sub, "cgroup", flags, Some(data))
                    .map_err(|e| format!("{}: {e}", what(&format!("cgroup {data}"))))?;
            }
            for (name, target) in links {
                rfs::symlinkat(cs(target)?.as_c_str(), &dir, name.as_str())
                    .map_err(|e| format!("{}: {e}", what(&format!("symlink {name}"))))?;
            }
            if flags & libc::MS_RDONLY != 0 {
                mount(
                    "tmpfs",
                    &paths::fd_path(top.as_fd()),
                    "tmpfs",
                    libc::MS_REMOUNT | flags,
                    None,
                )
                .map_err(|e| format!("{}: {e}", what("make tmpfs read-only")))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/lib/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
99 98 0:38 / /var/lib/other/sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";

    #[test]
    fn v1_and_hybrid_hosts_give_their_v1_hierarchies_and_links() {
        let links = vec![
            ("cpu".to_string(), "cpu,cpuacct".to_string()),
            ("cpuacct".to_string(), "cpu,cpuacct".to_string()),
            ("stray".to_string(), "/etc".to_string()),
        ];
        assert_eq!(
            plan_from(HYBRID, links),
            CgroupPlan::V1 {
                hierarchies: vec![
                    ("cpu,cpuacct".into(), "cpu,cpuacct".into()),
                    ("memory".into(), "memory".into()),
                    ("systemd".into(), "name=systemd".into()),
                ],
                links: vec![
                    ("cpu".into(), "cpu,cpuacct".into()),
                    ("cpuacct".into(), "cpu,cpuacct".into()),
                ],
            }
        );
    }

    #[test]
    fn a_v2_host_gives_one_cgroup2_mount() {
        let v2 = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(plan_from(v2, vec![]), CgroupPlan::V2);
        // No cgroup mounts at all: an empty tmpfs.
        assert_eq!(
            plan_from("", vec![]),
            CgroupPlan::V1 {
                hierarchies: vec![],
                links: vec![]
            }
        );
    }
}
