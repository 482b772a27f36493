//! The files a container finds in its `/etc` whatever its image holds:
//! `hosts`, `hostname` and `resolv.conf`, written per task under
//! `<task_dir>/etc/` and bind-mounted over the image's (targets resolved
//! inside the root by the runtime), as Docker and podman provide them.
//!
//! - `hosts`: with its own network (mode `none`), localhost (IPv4 and IPv6,
//!   Docker's lines) and the container's hostname on its only address,
//!   127.0.0.1; with the host's network, the host's `/etc/hosts`, plus the
//!   hostname on 127.0.0.1 if the host's file does not name it.
//! - `resolv.conf`: the host's; in a network namespace of its own, without
//!   loopback nameservers (a resolver on the host's 127.0.0.53 is not
//!   reachable from there), as Docker filters it.
//! - `hostname`: the hostname and a newline.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount;

use crate::DriverError;

/// Largest host `/etc/hosts` or `/etc/resolv.conf` copied into a container.
pub const MAX_HOST_FILE_BYTES: u64 = 1 << 20;

/// Docker's localhost lines.
const LOCALHOST: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// Where the host's files are read (tests point elsewhere).
#[derive(Debug, Clone)]
pub struct HostFiles {
    /// The host's hosts file.
    pub hosts: PathBuf,
    /// The host's resolver configuration.
    pub resolv_conf: PathBuf,
}

impl Default for HostFiles {
    fn default() -> Self {
        Self {
            hosts: "/etc/hosts".into(),
            resolv_conf: "/etc/resolv.conf".into(),
        }
    }
}

fn read_host(path: &Path) -> Result<String, DriverError> {
    let io = |source| DriverError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(md) if md.len() > MAX_HOST_FILE_BYTES => Err(io(std::io::Error::other(format!(
            "larger than {MAX_HOST_FILE_BYTES} bytes"
        )))),
        Ok(_) => std::fs::read_to_string(path).map_err(io),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io(e)),
    }
}

/// Whether a hosts file maps `name`.
fn names(hosts: &str, name: &str) -> bool {
    hosts.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("");
        l.split_whitespace().skip(1).any(|n| n == name)
    })
}

/// The container's `/etc/hosts`.
pub fn hosts_file(hostname: &str, host_network: bool, host_hosts: &str) -> String {
    if host_network {
        let mut s = host_hosts.to_string();
        if !names(&s, hostname) {
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(&format!("127.0.0.1\t{hostname}\n"));
        }
        return s;
    }
    format!("{LOCALHOST}127.0.0.1\t{hostname}\n")
}

/// The container's `/etc/resolv.conf` from the host's.
pub fn resolv_conf(host_network: bool, host_resolv: &str) -> String {
    if host_network {
        return host_resolv.to_string();
    }
    let mut out = String::new();
    for l in host_resolv.lines() {
        let mut w = l.split_whitespace();
        if w.next() == Some("nameserver") {
            let addr = w.next().unwrap_or("");
            if addr.starts_with("127.") || addr == "::1" {
                continue;
            }
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn bind(dest: &str, source: &Path) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into())
        .set_typ(Some("bind".into()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(vec!["rbind".into(), "rprivate".into()]));
    m
}

/// Write the three files under `dir` (owned by `owner`, the container's
/// root on the host, mode 0644) and return their mounts.
pub fn write(
    dir: &Path,
    hostname: &str,
    host_network: bool,
    host: &HostFiles,
    owner: Option<(u32, u32)>,
) -> Result<Vec<Mount>, DriverError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DriverError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let files = [
        (
            "hosts",
            "/etc/hosts",
            hosts_file(hostname, host_network, &read_host(&host.hosts)?),
        ),
        ("hostname", "/etc/hostname", format!("{hostname}\n")),
        (
            "resolv.conf",
            "/etc/resolv.conf",
            resolv_conf(host_network, &read_host(&host.resolv_conf)?),
        ),
    ];
    let mut mounts = Vec::new();
    for (name, dest, content) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).map_err(io(&tmp))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(io(&tmp))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        mounts.push(bind(dest, &path));
    }
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_network_hosts_has_localhost_and_the_hostname() {
        let h = hosts_file("web-1", false, "10.0.0.1 ignored\n");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost"), "{h}");
        assert!(h.ends_with("127.0.0.1\tweb-1\n"), "{h}");
        assert!(!h.contains("ignored"));
    }

    #[test]
    fn host_network_hosts_is_the_hosts_plus_a_missing_hostname() {
        let host = "127.0.0.1 localhost\n10.1.2.3 node7 # the node\n";
        assert_eq!(hosts_file("node7", true, host), host);
        assert_eq!(
            hosts_file("other", true, "127.0.0.1 localhost"),
            "127.0.0.1 localhost\n127.0.0.1\tother\n"
        );
    }

    #[test]
    fn loopback_nameservers_are_dropped_only_in_a_private_network() {
        let host = "search example.org\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\noptions edns0\n";
        assert_eq!(
            resolv_conf(false, host),
            "search example.org\nnameserver 10.0.0.2\noptions edns0\n"
        );
        assert_eq!(resolv_conf(true, host), host);
    }

    #[test]
    fn files_are_written_0644_and_mounted_at_their_etc_paths() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("h"), "127.0.0.1 localhost\n").unwrap();
        std::fs::write(d.path().join("r"), "nameserver 10.9.9.9\n").unwrap();
        let host = HostFiles {
            hosts: d.path().join("h"),
            resolv_conf: d.path().join("r"),
        };
        let etc = d.path().join("task/etc");
        let mounts = write(&etc, "box", false, &host, None).unwrap();
        let dests: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(
            dests,
            ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"].map(PathBuf::from)
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("hostname")).unwrap(),
            "box\n"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("resolv.conf")).unwrap(),
            "nameserver 10.9.9.9\n"
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(etc.join("hosts")).unwrap().mode() & 0o777,
            0o644
        );
        // A host without the files: empty ones, no error.
        let none = HostFiles {
            hosts: d.path().join("missing"),
            resolv_conf: d.path().join("missing"),
        };
        write(&etc, "box", true, &none, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(etc.join("hosts")).unwrap(),
            "127.0.0.1\tbox\n"
        );
    }
}
