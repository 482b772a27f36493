//! User namespaces: a container's root is an unprivileged host id range.
//!
//! With `linux.namespaces` holding a `user` namespace (no path) and
//! `linux.uidMappings` / `linux.gidMappings`, [`super::Container::start`]
//! clones the process into a new user namespace and, from the parent,
//! writes its id maps and joins it to its cgroups (the child, no longer
//! privileged on the host, could not) before letting it go on. Inside, the
//! process holds the task's capability set relative to its own namespace:
//! it can mount in its mount namespace, but owns nothing on the host.
//! Device nodes cannot be made there, so the default devices are bind
//! mounts of the host's.
//!
//! [`userns_fd`] makes a user namespace with given maps and returns its fd,
//! for idmapped mounts (`mount_setattr(MOUNT_ATTR_IDMAP)`) of image layers.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use oci_spec::runtime::LinuxIdMapping;

use super::{invalid, ContainerError};
use crate::sys;

/// One contiguous range: container ids `0..size` are host ids
/// `host_uid..host_uid+size` (and the same for groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    /// Host uid of the container's uid 0.
    pub host_uid: u32,
    /// Host gid of the container's gid 0.
    pub host_gid: u32,
    /// How many ids are mapped.
    pub size: u32,
}

impl IdRange {
    /// `/proc/PID/uid_map` content.
    pub fn uid_map(&self) -> String {
        format!("0 {} {}\n", self.host_uid, self.size)
    }

    /// `/proc/PID/gid_map` content.
    pub fn gid_map(&self) -> String {
        format!("0 {} {}\n", self.host_gid, self.size)
    }
}

/// The id maps of a spec's new user namespace, as written to /proc.
#[derive(Debug, Clone)]
pub(crate) struct IdMaps {
    pub uid_map: String,
    pub gid_map: String,
}

impl IdMaps {
    /// The maps of the running process `pid` (its user namespace's).
    pub(crate) fn of_process(pid: i32) -> io::Result<IdMaps> {
        Ok(IdMaps {
            uid_map: std::fs::read_to_string(format!("/proc/{pid}/uid_map"))?,
            gid_map: std::fs::read_to_string(format!("/proc/{pid}/gid_map"))?,
        })
    }

    /// The host uid of the namespace's `uid`, if mapped.
    pub(crate) fn host_uid(&self, uid: u32) -> Option<u32> {
        self.uid_map.lines().find_map(|l| {
            let mut f = l.split_whitespace().map(|n| n.parse::<u64>().ok());
            let (inside, outside, size) = (f.next()??, f.next()??, f.next()??);
            let uid = u64::from(uid);
            (uid >= inside && uid < inside + size)
                .then(|| u32::try_from(outside + uid - inside).ok())
                .flatten()
        })
    }
}

fn map_text(field: &str, maps: &[LinuxIdMapping]) -> Result<String, ContainerError> {
    if maps.is_empty() {
        return Err(invalid(
            field,
            "a new user namespace needs at least one mapping",
        ));
    }
    if maps.len() > 340 {
        return Err(invalid(field, "more than 340 mappings"));
    }
    let mut out = String::new();
    for (i, m) in maps.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if m.size() == 0 {
            return Err(invalid(format!("{f}.size"), "must not be 0"));
        }
        for (name, start) in [("hostID", m.host_id()), ("containerID", m.container_id())] {
            if u64::from(start) + u64::from(m.size()) > u64::from(u32::MAX) {
                return Err(invalid(format!("{f}.{name}"), "range past 2^32-1"));
            }
        }
        if m.host_id() == 0 {
            return Err(invalid(
                format!("{f}.hostID"),
                "must not map the host's root (0) into the container",
            ));
        }
        out.push_str(&format!(
            "{} {} {}\n",
            m.container_id(),
            m.host_id(),
            m.size()
        ));
    }
    Ok(out)
}

/// Check the spec's mappings for a new user namespace.
pub(crate) fn plan(
    uid: Option<&Vec<LinuxIdMapping>>,
    gid: Option<&Vec<LinuxIdMapping>>,
) -> Result<IdMaps, ContainerError> {
    Ok(IdMaps {
        uid_map: map_text("linux.uidMappings", uid.map_or(&[][..], |v| v))?,
        gid_map: map_text("linux.gidMappings", gid.map_or(&[][..], |v| v))?,
    })
}

/// Write the id maps of the process `pid` (which is in a new user namespace).
pub(crate) fn write_maps(pid: libc::pid_t, maps: &IdMaps) -> io::Result<()> {
    let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("write {what}: {e}"));
    sys::write_file(
        format!("/proc/{pid}/uid_map").as_ref(),
        maps.uid_map.as_bytes(),
    )
    .map_err(|e| ctx("uid_map", e))?;
    sys::write_file(
        format!("/proc/{pid}/gid_map").as_ref(),
        maps.gid_map.as_bytes(),
    )
    .map_err(|e| ctx("gid_map", e))
}

/// A user namespace with `range` as its uid and gid maps, as an fd (for
/// `mount_setattr(MOUNT_ATTR_IDMAP)`). Safe to call from a threaded
/// process: the helper child only blocks in `read` and exits.
pub fn userns_fd(range: &IdRange) -> io::Result<OwnedFd> {
    let maps = IdMaps {
        uid_map: range.uid_map(),
        gid_map: range.gid_map(),
    };
    let (r, w) = sys::pipe()?;
    let rfd: RawFd = std::os::fd::AsRawFd::as_raw_fd(&r);
    // SAFETY: a fork-like clone; the child runs only async-signal-safe calls
    // (read, _exit) on values prepared before the clone, so it is sound in a
    // threaded process.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let mut b = [0u8; 1];
        // SAFETY: read into a valid buffer, then exit without unwinding.
        unsafe {
            libc::read(rfd, b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
    }
    let pid = pid as libc::pid_t;
    drop(r);
    let result = write_maps(pid, &maps).and_then(|()| {
        let path = sys::path_cstr(format!("/proc/{pid}/ns/user").as_ref())?;
        // SAFETY: a valid C string; the fd is owned below.
        let fd =
            sys::check(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
        // SAFETY: open returned a new fd that nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    });
    drop(w);
    // SAFETY: reaping our own child (it exits as the pipe closes).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
    }
    result
}

/// Whether this kernel lets a user namespace be made at all.
pub fn user_namespaces_available() -> Result<(), String> {
    match std::fs::read_to_string("/proc/sys/user/max_user_namespaces") {
        Ok(s) if s.trim() == "0" => {
            Err("user namespaces are disabled (user.max_user_namespaces = 0)".into())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "user namespaces are not available: /proc/sys/user/max_user_namespaces: {e}"
        )),
    }
}
