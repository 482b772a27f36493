//! The container's root filesystem, built in the child inside its new mount
//! namespace: mounts from the spec, default devices and /dev symlinks,
//! pivot_root, masked and read-only paths, sysctls.
//!
//! `plan_*` run in the parent (validation); `setup` runs in the child and
//! returns an error message naming the step and path that failed.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, OFlags};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use super::{container_path, cstring, invalid, Container, ContainerError, DevicePlan, MountPlan};
use crate::{paths, sys};

/// Translate one OCI mount (`mounts[i]`).
pub(crate) fn plan_mount(bundle: &Path, i: usize, m: &Mount) -> Result<MountPlan, ContainerError> {
    let field = format!("mounts[{i}]");
    let destination = container_path(&format!("{field}.destination"), m.destination())?;
    let mut flags: libc::c_ulong = 0;
    let mut propagation: libc::c_ulong = 0;
    let mut data: Vec<&str> = Vec::new();
    for o in m.options().as_deref().unwrap_or_default() {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match o.as_str() {
            "defaults" => (0, 0),
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "atime" => (0, libc::MS_NOATIME),
            "noatime" => (libc::MS_NOATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                propagation = match o.as_str() {
                    "private" => libc::MS_PRIVATE,
                    "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
                    "shared" => libc::MS_SHARED,
                    "rshared" => libc::MS_SHARED | libc::MS_REC,
                    "slave" => libc::MS_SLAVE,
                    "rslave" => libc::MS_SLAVE | libc::MS_REC,
                    "unbindable" => libc::MS_UNBINDABLE,
                    _ => libc::MS_UNBINDABLE | libc::MS_REC,
                };
                (0, 0)
            }
            other => {
                data.push(other);
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    let bind = flags & libc::MS_BIND != 0 || m.typ().as_deref() == Some("bind");
    if bind {
        flags |= libc::MS_BIND;
    }
    let source = m.source().as_ref().map(|s| {
        if bind && s.is_relative() {
            bundle.join(s)
        } else {
            s.clone()
        }
    });
    let file_bind = bind
        && match &source {
            Some(s) => std::fs::metadata(s).map(|md| !md.is_dir()).unwrap_or(false),
            None => {
                return Err(invalid(
                    format!("{field}.source"),
                    "a bind mount needs a source",
                ))
            }
        };
    let source = source
        .map(|s| sys::path_cstr(&s))
        .transpose()
        .map_err(|_| invalid(format!("{field}.source"), "contains a NUL byte"))?;
    let fstype = match m.typ().as_deref() {
        None | Some("bind") | Some("none") if bind => None,
        None => {
            return Err(invalid(
                format!("{field}.type"),
                "missing (and not a bind mount)",
            ))
        }
        Some(t) => Some(cstring(&format!("{field}.type"), t)?),
    };
    let cgroup = if m.typ().as_deref() == Some("cgroup") && !bind {
        Some(super::cgroupfs::plan().map_err(|e| {
            invalid(
                format!("{field}.type"),
                format!("cgroup: cannot read this host's cgroup mounts: {e}"),
            )
        })?)
    } else {
        None
    };
    let data = if data.is_empty() {
        None
    } else {
        Some(cstring(&format!("{field}.options"), &data.join(","))?)
    };
    Ok(MountPlan {
        cgroup,
        destination,
        source,
        fstype,
        flags,
        data,
        propagation,
        bind,
        file_bind,
    })
}

/// Translate one OCI device (`linux.devices[i]`).
pub(crate) fn plan_device(i: usize, d: &LinuxDevice) -> Result<DevicePlan, ContainerError> {
    let field = format!("linux.devices[{i}]");
    let path = container_path(&format!("{field}.path"), d.path())?;
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(invalid(format!("{field}.type"), "'a' is not a device type"))
        }
    };
    let major =
        u32::try_from(d.major()).map_err(|_| invalid(format!("{field}.major"), "out of range"))?;
    let minor =
        u32::try_from(d.minor()).map_err(|_| invalid(format!("{field}.minor"), "out of range"))?;
    Ok(DevicePlan {
        path,
        mode: kind | d.file_mode().unwrap_or(0o666) as libc::mode_t,
        dev: libc::makedev(major, minor),
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// The devices every container gets (OCI "default devices").
const DEFAULT_DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("/proc/kcore", "core"),
    ("pts/ptmx", "ptmx"),
];

fn c(p: &Path) -> Result<CString, String> {
    sys::path_cstr(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn mount(
    src: Option<&CString>,
    target: &Path,
    fstype: Option<&CString>,
    flags: libc::c_ulong,
    data: Option<&CString>,
) -> io::Result<()> {
    let t = sys::path_cstr(target)?;
    let p = |o: Option<&CString>| o.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: all pointers are NULL or valid NUL-terminated strings that outlive the call.
    sys::check(unsafe { libc::mount(p(src), t.as_ptr(), p(fstype), flags, p(data).cast()) })
        .map(|_| ())
}

/// Build the root filesystem and pivot into it. Runs in the child.
pub(crate) fn setup(c: &Container) -> Result<(), String> {
    // In a user namespace: open what lies on host paths first, then become
    // the namespace's root (files made from here on are the range's).
    let (_held, root, sources) = if c.userns.is_some() {
        let h = open_host_paths(c)?;
        become_ns_root()?;
        (h.held, h.root, Some(h.sources))
    } else {
        (Vec::new(), c.rootfs.clone(), None)
    };
    let root = &root;
    // Keep our mounts out of the host's namespace (and make pivot_root legal).
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    let root_c = self::c(root)?;
    mount(
        Some(&root_c),
        root,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(|e| format!("bind rootfs {}: {e}", root.display()))?;
    // Device nodes shipped in the image are never usable (the container's
    // /dev is a tmpfs of its own).
    add_mount_flags(root, libc::MS_NODEV).map_err(|e| format!("make rootfs nodev: {e}"))?;
    // Every target below is resolved inside the root: a symlink in the image
    // never makes a mount or a device land on the host's tree.
    let root_fd = paths::open_root(root).map_err(|e| format!("open rootfs: {e}"))?;
    for (i, m) in c.mounts.iter().enumerate() {
        let source = match &sources {
            Some(s) => s[i].as_ref(),
            None => m.source.as_ref(),
        };
        do_mount(root_fd.as_fd(), m, source)?;
    }
    make_devices(c, root_fd.as_fd())?;
    drop(root_fd);
    pivot_root(root)?;
    make_cwd(&c.cwd)?;
    if c.propagation != libc::MS_PRIVATE | libc::MS_REC {
        mount(None, Path::new("/"), None, c.propagation, None)
            .map_err(|e| format!("set rootfs propagation: {e}"))?;
    }
    for p in &c.masked {
        mask(p)?;
    }
    // Sysctls first: /proc/sys is among the read-only paths.
    for (path, value) in &c.sysctl {
        sys::write_file(path, value.as_bytes())
            .map_err(|e| format!("set sysctl {}: {e}", path.display()))?;
    }
    for p in &c.readonly {
        remount_readonly(p, true)?;
    }
    if c.root_readonly {
        remount_readonly(Path::new("/"), false)?;
    }
    Ok(())
}

/// The rootfs and bind sources of a user namespace container, named through
/// fds opened while the host's paths could still be crossed.
struct HostPaths {
    /// The fds behind the names (kept open until the mounts are made).
    held: Vec<OwnedFd>,
    root: PathBuf,
    /// Per mount of the spec: its source.
    sources: Vec<Option<CString>>,
}

/// Open (O_PATH) the rootfs' parent and every bind source while this process
/// may still cross the host's private directories, and name them through
/// `/proc/self/fd`. The rootfs is named as `<parent fd>/<name>`, so that
/// the bind mount made on it later is what the name finds.
fn open_host_paths(c: &Container) -> Result<HostPaths, String> {
    let open = |p: &Path| {
        rfs::open(p, OFlags::PATH | OFlags::CLOEXEC, rfs::Mode::empty())
            .map_err(|e| format!("open {}: {e}", p.display()))
    };
    let mut held = Vec::new();
    let (Some(parent), Some(name)) = (c.rootfs.parent(), c.rootfs.file_name()) else {
        return Err(format!("rootfs {} has no parent", c.rootfs.display()));
    };
    let pfd = open(parent)?;
    let root = paths::fd_path(pfd.as_fd()).join(name);
    held.push(pfd);
    let mut sources = Vec::new();
    for m in &c.mounts {
        match (&m.source, m.bind) {
            (Some(src), true) => {
                let p = PathBuf::from(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(src.as_bytes()),
                );
                let fd = open(&p)?;
                sources.push(Some(self::c(&paths::fd_path(fd.as_fd()))?));
                held.push(fd);
            }
            (src, _) => sources.push(src.clone()),
        }
    }
    Ok(HostPaths {
        held,
        root,
        sources,
    })
}

/// Become uid and gid 0 of the new user namespace (the range's first ids
/// on the host), keeping the namespace's capabilities.
fn become_ns_root() -> Result<(), String> {
    // SAFETY: plain syscalls with integer arguments.
    sys::check(unsafe { libc::setresgid(0, 0, 0) })
        .map_err(|e| format!("become the user namespace's root group: {e}"))?;
    // SAFETY: as above; the old uid is not the namespace's root, so the
    // capabilities stay.
    sys::check(unsafe { libc::setresuid(0, 0, 0) })
        .map_err(|e| format!("become the user namespace's root: {e}"))?;
    // The uid change made the process non-dumpable, which gives its /proc
    // files to the host's root: take them back (oom_score_adj is written
    // through /proc/self before the exec, which recomputes this anyway).
    // SAFETY: prctl with integer arguments.
    sys::check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) })
        .map_err(|e| format!("set dumpable: {e}"))?;
    Ok(())
}

/// Add `flags` (MS_NODEV, MS_NOSUID...) to the mount at `p`, keeping the
/// flags it has.
fn add_mount_flags(p: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let pc = sys::path_cstr(p)?;
    let mut st: libc::statvfs = unsafe_zeroed_statvfs();
    // SAFETY: valid path and a statvfs struct to fill.
    sys::check(unsafe { libc::statvfs(pc.as_ptr(), &mut st) })?;
    let keep = st.f_flag
        & (libc::ST_RDONLY
            | libc::ST_NOSUID
            | libc::ST_NODEV
            | libc::ST_NOEXEC
            | libc::ST_NOATIME
            | libc::ST_NODIRATIME
            | libc::ST_RELATIME);
    // ST_* and MS_* share their values for these flags.
    mount(
        None,
        p,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | keep as libc::c_ulong | flags,
        None,
    )
}

/// The mount target of `m`, created if missing, resolved inside the root.
fn target(root: BorrowedFd<'_>, m: &MountPlan) -> io::Result<OwnedFd> {
    let what = if m.file_bind {
        paths::Create::File
    } else {
        paths::Create::Dir
    };
    paths::create_in_root(root, &m.destination, what)
}

fn do_mount(root: BorrowedFd<'_>, m: &MountPlan, source: Option<&CString>) -> Result<(), String> {
    if let Some(plan) = &m.cgroup {
        return super::cgroupfs::mount_at(root, &m.destination, plan, m.flags);
    }
    let what = || {
        format!(
            "mount {} on {}",
            m.fstype
                .as_ref()
                .map_or("bind".into(), |t| t.to_string_lossy()),
            m.destination.display()
        )
    };
    let fd = target(root, m).map_err(|e| format!("{}: create target: {e}", what()))?;
    let target = paths::fd_path(fd.as_fd());
    // After a mount, the fd still names the directory underneath: reopen
    // the target (now the root of the new mount) for the calls that follow.
    let reopened = || -> Result<PathBuf, String> {
        let fd = paths::open_in_root(root, &m.destination, OFlags::PATH)
            .map_err(|e| format!("{}: reopen target: {e}", what()))?;
        let p = paths::fd_path(fd.as_fd());
        // The fd must stay open while its /proc path is used: leak it into
        // the child's table; close-on-exec closes it at the exec.
        std::mem::forget(fd);
        Ok(p)
    };
    if m.bind {
        let rec = m.flags & libc::MS_REC;
        mount(source, &target, None, libc::MS_BIND | rec, None)
            .map_err(|e| format!("{}: {e}", what()))?;
        let extra = m.flags & !(libc::MS_BIND | libc::MS_REC);
        if extra != 0 {
            mount(
                None,
                &reopened()?,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | extra,
                None,
            )
            .map_err(|e| format!("{}: remount with options: {e}", what()))?;
        }
    } else {
        let r = mount(source, &target, m.fstype.as_ref(), m.flags, m.data.as_ref());
        if let Err(e) = r {
            // sysfs of a network namespace we do not own (host network): bind the
            // host's /sys instead, read-only like the spec asks.
            let is_sysfs = m.fstype.as_ref().map(|t| t.as_bytes()) == Some(b"sysfs");
            if is_sysfs && e.raw_os_error() == Some(libc::EPERM) {
                let sys_c = CString::new("/sys").expect("no NUL");
                // Not recursive: the host's cgroup, debugfs, securityfs...
                // mounts under /sys stay out (a recursive bind would keep
                // them writable under the read-only top).
                mount(Some(&sys_c), &target, None, libc::MS_BIND, None)
                    .map_err(|e| format!("{} (bind of host /sys): {e}", what()))?;
                mount(
                    None,
                    &reopened()?,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | m.flags,
                    None,
                )
                .map_err(|e| format!("{} (remount of host /sys): {e}", what()))?;
            } else {
                return Err(format!("{}: {e}", what()));
            }
        }
    }
    if m.propagation != 0 {
        mount(None, &reopened()?, None, m.propagation, None)
            .map_err(|e| format!("{}: set propagation: {e}", what()))?;
    }
    Ok(())
}

/// Make a device node `name` in the directory `dir` (an fd resolved inside
/// the root), replacing whatever the image had there.
fn mknod_at(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    let d = paths::reopen_dir(dir)?;
    let kind = rfs::FileType::from_raw_mode(mode);
    let perm = rfs::Mode::from_raw_mode(mode & 0o7777);
    match rfs::mknodat(&d, name, kind, perm, dev) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => {
            // Never follow what the image put there (it may be a symlink).
            rfs::unlinkat(&d, name, rfs::AtFlags::empty())?;
            rfs::mknodat(&d, name, kind, perm, dev)?;
        }
        Err(e) => return Err(e.into()),
    }
    // mknod applies the umask: set the exact mode and owner, on the node
    // itself (a fresh node, not a symlink).
    let node = rfs::openat(
        &d,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rfs::Mode::empty(),
    )?;
    let p = paths::fd_path(node.as_fd());
    rfs::chmod(&p, perm)?;
    rfs::chown(
        &p,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )?;
    Ok(())
}

/// In a user namespace no device node can be made: bind the host's node at
/// the same path onto an empty file in `dir` (resolved inside the root).
fn bind_host_device(dir: BorrowedFd<'_>, host: &Path) -> io::Result<()> {
    let name = host
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let d = paths::reopen_dir(dir)?;
    match rfs::unlinkat(&d, name, rfs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let f = rfs::openat(
        &d,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        rfs::Mode::from_raw_mode(0o666),
    )?;
    let target = paths::fd_path(f.as_fd());
    let src = sys::path_cstr(host)?;
    mount(Some(&src), &target, None, libc::MS_BIND, None)
}

fn make_devices(c: &Container, root: BorrowedFd<'_>) -> Result<(), String> {
    let dev = paths::create_in_root(root, Path::new("/dev"), paths::Create::Dir)
        .map_err(|e| format!("create /dev: {e}"))?;
    for (name, major, minor) in DEFAULT_DEVICES {
        if c.userns.is_some() {
            bind_host_device(dev.as_fd(), &Path::new("/dev").join(name))
                .map_err(|e| format!("bind device /dev/{name}: {e}"))?;
            continue;
        }
        mknod_at(
            dev.as_fd(),
            name.as_ref(),
            libc::S_IFCHR | 0o666,
            libc::makedev(*major, *minor),
            0,
            0,
        )
        .map_err(|e| format!("create device /dev/{name}: {e}"))?;
    }
    for d in &c.devices {
        let (Some(parent), Some(name)) = (d.path.parent(), d.path.file_name()) else {
            return Err(format!("device path {} has no name", d.path.display()));
        };
        let dir = paths::create_in_root(root, parent, paths::Create::Dir)
            .map_err(|e| format!("create {}: {e}", parent.display()))?;
        if c.userns.is_some() {
            bind_host_device(dir.as_fd(), &d.path)
                .map_err(|e| format!("bind device {}: {e}", d.path.display()))?;
            continue;
        }
        mknod_at(dir.as_fd(), name, d.mode, d.dev, d.uid, d.gid)
            .map_err(|e| format!("create device {}: {e}", d.path.display()))?;
    }
    let devd = paths::reopen_dir(dev.as_fd()).map_err(|e| format!("open /dev: {e}"))?;
    for (target, name) in DEV_SYMLINKS {
        match rfs::symlinkat(*target, &devd, *name) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(format!("create /dev/{name}: {e}")),
        }
    }
    Ok(())
}

fn pivot_root(root: &Path) -> Result<(), String> {
    std::env::set_current_dir(root).map_err(|e| format!("chdir to rootfs: {e}"))?;
    let dot = CString::new(".").expect("no NUL");
    // SAFETY: valid C strings; pivot_root(".", ".") stacks the old root on top
    // of the new one, and the umount below detaches it.
    sys::check(unsafe {
        libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int
    })
    .map_err(|e| format!("pivot_root to {}: {e}", root.display()))?;
    // SAFETY: valid C string.
    sys::check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })
        .map_err(|e| format!("detach old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir to /: {e}"))?;
    Ok(())
}

/// Create the working directory if the image lacks it (as runc and Docker
/// do: 0755, owned by the container's root), inside the new root.
fn make_cwd(cwd: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(cwd) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let root = paths::open_root(Path::new("/")).map_err(|e| format!("open /: {e}"))?;
            paths::create_in_root(root.as_fd(), cwd, paths::Create::Dir)
                .map(drop)
                .map_err(|e| format!("create working directory {}: {e}", cwd.display()))
        }
        Err(e) => Err(format!("working directory {}: {e}", cwd.display())),
    }
}

/// Hide a path: a read-only empty tmpfs over a directory, /dev/null over a file.
fn mask(p: &Path) -> Result<(), String> {
    let md = match std::fs::metadata(p) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("mask {}: {e}", p.display())),
    };
    let r = if md.is_dir() {
        let tmpfs = CString::new("tmpfs").expect("no NUL");
        mount(Some(&tmpfs), p, Some(&tmpfs), libc::MS_RDONLY, None)
    } else {
        let null = CString::new("/dev/null").expect("no NUL");
        mount(Some(&null), p, None, libc::MS_BIND, None)
    };
    r.map_err(|e| format!("mask {}: {e}", p.display()))
}

/// Make a path read-only, keeping its other mount flags.
fn remount_readonly(p: &Path, bind_first: bool) -> Result<(), String> {
    if bind_first {
        match std::fs::symlink_metadata(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("make {} read-only: {e}", p.display())),
            Ok(_) => {}
        }
        let pc = c(p)?;
        mount(Some(&pc), p, None, libc::MS_BIND | libc::MS_REC, None)
            .map_err(|e| format!("make {} read-only: bind: {e}", p.display()))?;
    }
    let pc = c(p)?;
    let mut st: libc::statvfs = unsafe_zeroed_statvfs();
    // SAFETY: valid path and a statvfs struct to fill.
    sys::check(unsafe { libc::statvfs(pc.as_ptr(), &mut st) })
        .map_err(|e| format!("make {} read-only: statvfs: {e}", p.display()))?;
    let keep = st.f_flag
        & (libc::ST_NOSUID
            | libc::ST_NODEV
            | libc::ST_NOEXEC
            | libc::ST_NOATIME
            | libc::ST_NODIRATIME
            | libc::ST_RELATIME);
    // ST_* and MS_* share their values for these flags.
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep as libc::c_ulong;
    mount(None, p, None, flags, None)
        .map_err(|e| format!("make {} read-only: {e}", p.display()))?;
    Ok(())
}

fn unsafe_zeroed_statvfs() -> libc::statvfs {
    // SAFETY: statvfs is a plain C struct for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}
