//! Where the cgroup filesystems of this host are, and which version they are.
//!
//! [`Layout`] is read once from `/proc/self/mountinfo` (or built over a fake
//! tree for tests) and then makes and opens cgroups by their path relative to
//! every hierarchy root, e.g. `taba/<alloc>/<task>`. It never mounts or
//! unmounts anything.

use crate::fs;
use crate::v1::{V1Cgroup, V1Dir};
use crate::v2::V2Cgroup;
use crate::{AnyCgroup, CgroupError, CgroupInfo};
use std::path::{Component, Path, PathBuf};

/// The mount table read by [`Layout::detect`].
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// v1 controllers taba places its cgroups in, in the order their directories
/// are made and joined. `cpu`, `cpuacct`, `memory` and `pids` are required;
/// the others are used when mounted.
pub const V1_CONTROLLERS: [&str; 8] = [
    "cpuset", "cpu", "cpuacct", "memory", "pids", "freezer", "blkio", "devices",
];

/// v1 controllers without which a cgroup cannot be made.
const V1_REQUIRED: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];

/// v2 controllers enabled down to every taba cgroup.
pub(crate) const V2_REQUIRED: [&str; 3] = ["cpu", "memory", "pids"];

/// Which cgroup setup a host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    /// Only v1 hierarchies.
    V1,
    /// v1 hierarchies for the controllers, plus a v2 mount (usually
    /// `/sys/fs/cgroup/unified`) that taba does not use for limits.
    Hybrid,
    /// One v2 hierarchy with every controller.
    V2,
}

impl CgroupVersion {
    /// `"v1"`, `"hybrid"` or `"v2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::Hybrid => "hybrid",
            CgroupVersion::V2 => "v2",
        }
    }
}

impl std::fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One mounted v1 hierarchy: its controllers (several when co-mounted, e.g.
/// `cpu,cpuacct`) and its mount point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    pub(crate) controllers: Vec<&'static str>,
    pub(crate) mount: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    V1 {
        hierarchies: Vec<Hierarchy>,
        /// The v2 mount of a hybrid host.
        unified: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
}

/// The cgroup filesystems of a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    kind: Kind,
    /// Where this layout came from (mount table or fake root), for errors.
    source: PathBuf,
}

impl Layout {
    /// Reads the host's layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Layout, CgroupError> {
        let path = Path::new(MOUNTINFO);
        let text = fs::read(path)?;
        parse_mountinfo(path, &text)
    }

    /// The layout described by a mount table in `/proc/self/mountinfo`
    /// format (for tests on captured samples).
    pub fn from_mountinfo(text: &str) -> Result<Layout, CgroupError> {
        parse_mountinfo(Path::new(MOUNTINFO), text)
    }

    /// A layout over a directory tree laid out like `/sys/fs/cgroup`:
    /// for v1 and hybrid, one directory per controller named after it (or a
    /// co-mounted `cpu,cpuacct` with symlinks `cpu` and `cpuacct`), plus
    /// `unified/` for hybrid; for v2, `root` itself is the hierarchy.
    /// Used by tests on fake trees, and by hosts with an unusual mount point.
    pub fn from_root(
        root: impl AsRef<Path>,
        version: CgroupVersion,
    ) -> Result<Layout, CgroupError> {
        let root = root.as_ref();
        if !root.is_dir() {
            return Err(CgroupError::NotMounted {
                path: root.to_owned(),
            });
        }
        let kind = match version {
            CgroupVersion::V2 => Kind::V2 {
                root: root.to_owned(),
            },
            CgroupVersion::V1 | CgroupVersion::Hybrid => {
                let mut hierarchies: Vec<Hierarchy> = Vec::new();
                for controller in V1_CONTROLLERS {
                    let dir = root.join(controller);
                    if !dir.is_dir() {
                        continue;
                    }
                    let mount = dir.canonicalize().unwrap_or(dir);
                    match hierarchies.iter_mut().find(|h| h.mount == mount) {
                        Some(h) => h.controllers.push(controller),
                        None => hierarchies.push(Hierarchy {
                            controllers: vec![controller],
                            mount,
                        }),
                    }
                }
                if hierarchies.is_empty() {
                    return Err(CgroupError::NotMounted {
                        path: root.to_owned(),
                    });
                }
                let unified = if version == CgroupVersion::Hybrid {
                    let u = root.join("unified");
                    if !u.is_dir() {
                        return Err(CgroupError::NotMounted { path: u });
                    }
                    Some(u)
                } else {
                    None
                };
                Kind::V1 {
                    hierarchies,
                    unified,
                }
            }
        };
        Ok(Layout {
            kind,
            source: root.to_owned(),
        })
    }

    /// v1, hybrid or v2.
    pub fn version(&self) -> CgroupVersion {
        match &self.kind {
            Kind::V1 { unified: None, .. } => CgroupVersion::V1,
            Kind::V1 {
                unified: Some(_), ..
            } => CgroupVersion::Hybrid,
            Kind::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// `"v1"`, `"hybrid"` or `"v2"` (the `cgroup.version` node attribute).
    pub fn version_name(&self) -> &'static str {
        self.version().as_str()
    }

    /// The mount point of each hierarchy taba uses: one per v1 hierarchy,
    /// or the single v2 root. (The unused v2 mount of a hybrid host is not
    /// listed.)
    pub fn roots(&self) -> Vec<PathBuf> {
        match &self.kind {
            Kind::V1 { hierarchies, .. } => hierarchies.iter().map(|h| h.mount.clone()).collect(),
            Kind::V2 { root } => vec![root.clone()],
        }
    }

    /// The controllers available to taba's cgroups, sorted: the mounted v1
    /// controllers taba knows (plus, on a hybrid host, those of the v2
    /// mount), or the v2 root's `cgroup.controllers`.
    pub fn controllers(&self) -> Result<Vec<String>, CgroupError> {
        let mut out: Vec<String> = Vec::new();
        let read_v2 = |root: &Path, out: &mut Vec<String>| -> Result<(), CgroupError> {
            let text = fs::read(&root.join("cgroup.controllers"))?;
            out.extend(text.split_whitespace().map(str::to_owned));
            Ok(())
        };
        match &self.kind {
            Kind::V1 {
                hierarchies,
                unified,
            } => {
                for h in hierarchies {
                    out.extend(h.controllers.iter().map(|c| c.to_string()));
                }
                if let Some(u) = unified {
                    // The hybrid v2 mount may be empty or lack the file in a
                    // container; it adds information, it is not required.
                    if u.join("cgroup.controllers").exists() {
                        read_v2(u, &mut out)?;
                    }
                }
            }
            Kind::V2 { root } => read_v2(root, &mut out)?,
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// What the agent reports about cgroups in its node attributes.
    pub fn info(&self) -> Result<CgroupInfo, CgroupError> {
        Ok(CgroupInfo {
            version: self.version_name().to_owned(),
            controllers: self.controllers()?,
        })
    }

    /// Creates the cgroup `rel` (e.g. `taba/<alloc>/<task>`) in every
    /// hierarchy taba uses, with its missing parents; an existing one is
    /// reused. v1: a new cpuset cgroup gets its parent's `cpuset.cpus` and
    /// `cpuset.mems` so processes can join it. v2: the controllers taba needs
    /// are enabled in every ancestor's `cgroup.subtree_control`.
    pub fn create(&self, rel: &str) -> Result<AnyCgroup, CgroupError> {
        let rel = check_rel(rel)?;
        match &self.kind {
            Kind::V1 { hierarchies, .. } => {
                self.check_v1_required(hierarchies)?;
                let cg = V1Cgroup::new(rel, v1_dirs(hierarchies, rel));
                cg.make()?;
                Ok(AnyCgroup::V1(cg))
            }
            Kind::V2 { root } => {
                let cg = V2Cgroup::new(rel, root.clone());
                cg.make()?;
                Ok(AnyCgroup::V2(cg))
            }
        }
    }

    /// Opens the existing cgroup `rel` (after an agent restart); it must
    /// exist in every hierarchy taba uses.
    pub fn open(&self, rel: &str) -> Result<AnyCgroup, CgroupError> {
        let cg = self.handle(rel)?;
        for dir in cg.dirs() {
            if !dir.is_dir() {
                return Err(CgroupError::NotFound { path: dir });
            }
        }
        Ok(cg)
    }

    /// Destroys the cgroup `rel` wherever parts of it exist (see
    /// [`AnyCgroup::destroy`]); for cleaning up after a create that failed
    /// halfway or a cgroup found on disk without a record. Nothing there is
    /// fine.
    pub fn destroy(&self, rel: &str) -> Result<(), CgroupError> {
        self.handle(rel)?.destroy()
    }

    /// A handle on `rel` without checking that it exists.
    fn handle(&self, rel: &str) -> Result<AnyCgroup, CgroupError> {
        let rel = check_rel(rel)?;
        Ok(match &self.kind {
            Kind::V1 { hierarchies, .. } => {
                self.check_v1_required(hierarchies)?;
                AnyCgroup::V1(V1Cgroup::new(rel, v1_dirs(hierarchies, rel)))
            }
            Kind::V2 { root } => AnyCgroup::V2(V2Cgroup::new(rel, root.clone())),
        })
    }

    fn check_v1_required(&self, hierarchies: &[Hierarchy]) -> Result<(), CgroupError> {
        for c in V1_REQUIRED {
            if !hierarchies.iter().any(|h| h.controllers.contains(&c)) {
                return Err(CgroupError::MissingController {
                    controller: c,
                    path: self.source.clone(),
                });
            }
        }
        Ok(())
    }
}

fn v1_dirs(hierarchies: &[Hierarchy], rel: &str) -> Vec<V1Dir> {
    hierarchies
        .iter()
        .map(|h| V1Dir {
            controllers: h.controllers.clone(),
            mount: h.mount.clone(),
            path: h.mount.join(rel),
        })
        .collect()
}

/// A cgroup path must be relative, non-empty, and stay below the root: the
/// root itself holds every process of the host and is never touched.
fn check_rel(rel: &str) -> Result<&str, CgroupError> {
    let bad = |reason| CgroupError::InvalidPath {
        rel: rel.to_owned(),
        reason,
    };
    let trimmed = rel.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(bad("must name a cgroup below the root"));
    }
    if trimmed.starts_with('/') {
        return Err(bad("must be relative to the cgroup root"));
    }
    for c in Path::new(trimmed).components() {
        match c {
            Component::Normal(_) => {}
            _ => return Err(bad("must not contain '.' or '..'")),
        }
    }
    if trimmed.contains("//") || trimmed.contains('\n') || trimmed.contains('\0') {
        return Err(bad(
            "must not contain empty components or control characters",
        ));
    }
    Ok(trimmed)
}

/// One line of the mount table, the fields we use.
struct Mount {
    mount_point: PathBuf,
    fstype: String,
    super_options: String,
}

fn parse_mountinfo(path: &Path, text: &str) -> Result<Layout, CgroupError> {
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    let mut unified: Option<PathBuf> = None;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m = parse_mount_line(line).ok_or_else(|| CgroupError::Parse {
            path: path.to_owned(),
            reason: format!("line {} is not a mountinfo entry: {line:?}", n + 1),
        })?;
        match m.fstype.as_str() {
            "cgroup" => {
                let controllers: Vec<&'static str> = m
                    .super_options
                    .split(',')
                    .filter_map(|o| V1_CONTROLLERS.iter().copied().find(|c| *c == o))
                    .collect();
                if controllers.is_empty() {
                    continue; // name=systemd and other named hierarchies
                }
                // The same hierarchy may be mounted twice; the first wins.
                let known = controllers
                    .iter()
                    .any(|c| hierarchies.iter().any(|h| h.controllers.contains(c)));
                if !known {
                    hierarchies.push(Hierarchy {
                        controllers,
                        mount: m.mount_point,
                    });
                }
            }
            "cgroup2" if unified.is_none() => unified = Some(m.mount_point),
            _ => {}
        }
    }
    let kind = match (hierarchies.is_empty(), unified) {
        (false, unified) => Kind::V1 {
            hierarchies,
            unified,
        },
        (true, Some(root)) => Kind::V2 { root },
        (true, None) => {
            return Err(CgroupError::NotMounted {
                path: path.to_owned(),
            })
        }
    };
    Ok(Layout {
        kind,
        source: path.to_owned(),
    })
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_mount_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let _source = right.next()?;
    let super_options = right.next().unwrap_or("");
    Some(Mount {
        mount_point: PathBuf::from(unescape(mount_point)),
        fstype: fstype.to_owned(),
        super_options: super_options.to_owned(),
    })
}

/// Undoes the kernel's octal escapes in mount points (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's table (hybrid: v1 controllers + hugetlb-only v2 mount).
    const HYBRID: &str = "\
23 1 253:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd v1 host: co-mounted cpu,cpuacct, optional fields, no v2.
    const V1_SYSTEMD: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
35 33 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
38 33 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
39 33 0:34 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
40 33 0:35 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
41 33 0:36 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,freezer
42 33 0:37 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,net_cls,net_prio
";

    /// A modern systemd host: one cgroup2 mount.
    const V2: &str = "\
22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_sample_is_hybrid_with_v1_controllers() {
        let l = Layout::from_mountinfo(HYBRID).unwrap();
        assert_eq!(l.version(), CgroupVersion::Hybrid);
        assert_eq!(l.version_name(), "hybrid");
        let roots = l.roots();
        assert_eq!(roots.len(), 8, "{roots:?}");
        assert!(roots.contains(&PathBuf::from("/sys/fs/cgroup/memory")));
        assert!(!roots.contains(&PathBuf::from("/sys/fs/cgroup/systemd")));
        assert!(!roots.contains(&PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn comounted_v1_is_one_hierarchy() {
        let l = Layout::from_mountinfo(V1_SYSTEMD).unwrap();
        assert_eq!(l.version_name(), "v1");
        let Kind::V1 { hierarchies, .. } = &l.kind else {
            panic!("not v1: {l:?}")
        };
        let cpu = hierarchies
            .iter()
            .find(|h| h.controllers.contains(&"cpu"))
            .unwrap();
        assert_eq!(cpu.controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(cpu.mount, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        // net_cls is not a controller taba uses, systemd is named only.
        assert_eq!(hierarchies.len(), 4);
        assert_eq!(
            l.controllers().unwrap(),
            vec!["cpu", "cpuacct", "freezer", "memory", "pids"]
        );
        // cpuset is optional, but a create here would fail for none of the
        // required ones: check that the requirement check passes.
        l.check_v1_required(hierarchies).unwrap();
    }

    #[test]
    fn v2_sample_is_v2() {
        let l = Layout::from_mountinfo(V2).unwrap();
        assert_eq!(l.version_name(), "v2");
        assert_eq!(l.roots(), vec![PathBuf::from("/sys/fs/cgroup")]);
    }

    #[test]
    fn no_cgroups_and_garbage_are_errors() {
        let none = "26 1 259:2 / / rw,relatime shared:1 - ext4 /dev/sda rw\n";
        assert!(matches!(
            Layout::from_mountinfo(none),
            Err(CgroupError::NotMounted { .. })
        ));
        let err = Layout::from_mountinfo("this is not a mount table\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 1") && msg.contains("mountinfo"), "{msg}");
    }

    #[test]
    fn missing_required_controller_is_named() {
        let only_memory = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let l = Layout::from_mountinfo(only_memory).unwrap();
        let err = l.create("taba/x").unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::MissingController {
                    controller: "cpu",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        assert_eq!(unescape(r"/mnt/my\040cgroups"), "/mnt/my cgroups");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn relative_paths_are_checked() {
        for bad in [
            "",
            "/",
            "/taba/x",
            "taba/../etc",
            "./taba",
            "taba//x",
            "a\nb",
        ] {
            assert!(
                matches!(check_rel(bad), Err(CgroupError::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
        assert_eq!(check_rel("taba/a/t/").unwrap(), "taba/a/t");
    }

    #[test]
    fn v1_from_root_groups_symlinked_comounts() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("cpu,cpuacct")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", r.join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", r.join("cpuacct")).unwrap();
        for c in ["memory", "pids", "unified"] {
            std::fs::create_dir(r.join(c)).unwrap();
        }
        let l = Layout::from_root(r, CgroupVersion::Hybrid).unwrap();
        assert_eq!(l.version_name(), "hybrid");
        assert_eq!(l.roots().len(), 3);
        assert_eq!(
            l.controllers().unwrap(),
            vec!["cpu", "cpuacct", "memory", "pids"]
        );
        assert!(matches!(
            Layout::from_root(r.join("nope"), CgroupVersion::V2),
            Err(CgroupError::NotMounted { .. })
        ));
    }
}
