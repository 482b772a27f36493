//! Who a workload runs as: a `user` string (`name`, `uid`, `name:group`,
//! `uid:gid`) resolved against the passwd and group files under a root (an
//! image's, or "/" for host processes), the way Docker (runc's
//! `GetExecUser`) resolves it:
//!
//! - no user: uid 0, looked up like any other (its home and supplementary
//!   groups come from the files, if they list it);
//! - a name must be in passwd; a number may be absent (then gid 0 for
//!   containers, and HOME `/`); a number also matches a user *named* so;
//! - `:group` by name or number overrides the primary group, and then no
//!   supplementary groups are added; without it, every group of the group
//!   file that lists the user's name is a supplementary group;
//! - missing files are empty files;
//! - the primary group is also the first supplementary group, as Docker
//!   (since the fix of CVE-2022-36109) and containerd set it: dropping a
//!   supplementary group never bypasses a restriction on the primary one.
//!
//! The files are read inside the root (an image's symlink never reaches the
//! host), must be regular files and at most [`MAX_ACCOUNT_FILE_BYTES`].

use std::path::Path;

use crate::DriverError;

/// Largest `/etc/passwd` or `/etc/group` read from an image.
pub const MAX_ACCOUNT_FILE_BYTES: u64 = 4 << 20;

/// Highest uid or gid a user string may name (as runc: 2^31 - 1).
pub const MAX_ID: u32 = i32::MAX as u32;

/// The primary group of a numeric uid the passwd file does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownUid {
    /// Group 0, as Docker runs containers.
    GidZero,
    /// The group with the uid's number: host processes never get the
    /// host's root group by accident.
    GidOfSameNumber,
}

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (the primary group first).
    pub additional_gids: Vec<u32>,
    /// Home directory (`/` when the passwd file does not say).
    pub home: String,
}

/// One line of passwd or group, split on ':' (comments and blank lines skipped).
fn entries(file: &str) -> impl Iterator<Item = Vec<&str>> {
    file.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
}

fn number(s: &str) -> Option<u32> {
    s.parse::<u32>().ok()
}

/// Resolve `user` (None or "": the default user, uid 0) with the contents
/// of the passwd and group files.
pub fn resolve_in(
    passwd: &str,
    group: &str,
    user: Option<&str>,
    unknown: UnknownUid,
) -> Result<ExecUser, DriverError> {
    let spec = user.unwrap_or("");
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let err = |m: String| DriverError::Start(format!("user {spec:?}: {m}"));
    let uid_arg = number(user_arg);
    if user_arg.is_empty() && group_arg.is_some() {
        return Err(err("names a group but no user".into()));
    }
    if uid_arg.is_some_and(|n| n > MAX_ID) {
        return Err(err(format!("uid is above {MAX_ID}")));
    }
    let matched = entries(passwd).find(|f| {
        let uid = f.get(2).and_then(|s| number(s));
        if user_arg.is_empty() {
            uid == Some(0)
        } else {
            f[0] == user_arg || (uid_arg.is_some() && uid == uid_arg)
        }
    });
    let (mut out, name) = match matched {
        Some(f) => {
            let uid = f.get(2).and_then(|s| number(s)).unwrap_or(0);
            let home = f.get(5).copied().filter(|h| !h.is_empty()).unwrap_or("/");
            let out = ExecUser {
                uid,
                gid: f.get(3).and_then(|s| number(s)).unwrap_or(0),
                additional_gids: Vec::new(),
                home: home.to_string(),
            };
            (out, Some(f[0].to_string()))
        }
        None => {
            let uid = match (user_arg, uid_arg) {
                ("", _) => 0,
                (_, Some(n)) => n,
                (name, None) => {
                    return Err(err(format!("no user {name:?} in the image's /etc/passwd")))
                }
            };
            let gid = match unknown {
                UnknownUid::GidZero => 0,
                UnknownUid::GidOfSameNumber => uid,
            };
            let out = ExecUser {
                uid,
                gid,
                additional_gids: Vec::new(),
                home: "/".into(),
            };
            (out, None)
        }
    };
    match group_arg {
        Some(g) => {
            let gid_arg = number(g);
            if gid_arg.is_some_and(|n| n > MAX_ID) {
                return Err(err(format!("gid is above {MAX_ID}")));
            }
            let found = entries(group).find(|f| {
                f[0] == g || (gid_arg.is_some() && f.get(2).and_then(|s| number(s)) == gid_arg)
            });
            out.gid = match (
                found.and_then(|f| f.get(2).and_then(|s| number(s))),
                gid_arg,
            ) {
                (Some(n), _) => n,
                (None, Some(n)) => n,
                (None, None) => {
                    return Err(err(format!("no group {g:?} in the image's /etc/group")))
                }
            };
        }
        None => {
            if let Some(name) = name {
                out.additional_gids = entries(group)
                    .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|m| m == name)))
                    .filter_map(|f| f.get(2).and_then(|s| number(s)))
                    .collect();
            }
        }
    }
    let mut gids = vec![out.gid];
    for g in out.additional_gids {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    out.additional_gids = gids;
    Ok(out)
}

/// Read `etc/passwd` or `etc/group` inside `root` ("" when missing).
fn read_account_file(root: &Path, file: &str, user: &str) -> Result<String, DriverError> {
    let bytes =
        taba_runtime::paths::read_file_in_root(root, Path::new(file), MAX_ACCOUNT_FILE_BYTES)
            .map_err(|e| {
                DriverError::Start(format!(
                    "resolve user {user:?}: {}",
                    taba_types::error_chain(&e)
                ))
            })?;
    Ok(String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned())
}

/// Resolve `user` against the passwd and group files under `root`.
pub fn resolve(
    root: &Path,
    user: Option<&str>,
    unknown: UnknownUid,
) -> Result<ExecUser, DriverError> {
    let shown = user.unwrap_or("");
    let passwd = read_account_file(root, "etc/passwd", shown)?;
    let group = read_account_file(root, "etc/group", shown)?;
    resolve_in(&passwd, &group, user, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        nobody:x:65534:65534::/nonexistent:/bin/false\n\
        web:x:1000:1000::/home/web:/bin/sh\n\
        2000:x:3000:3000::/home/odd:/bin/sh\n\
        nohome:x:1001:1001:::/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root,web\nnogroup:x:65534:\nweb:x:1000:\nadm:x:4:web\n500:x:501:\n";

    fn r(user: Option<&str>) -> Result<ExecUser, DriverError> {
        resolve_in(PASSWD, GROUP, user, UnknownUid::GidZero)
    }
    fn ids(user: Option<&str>) -> (u32, u32, Vec<u32>, String) {
        let u = r(user).unwrap_or_else(|e| panic!("{user:?}: {e}"));
        (u.uid, u.gid, u.additional_gids, u.home)
    }

    #[test]
    fn no_user_is_root_with_its_groups_and_home() {
        assert_eq!(ids(None), (0, 0, vec![0, 10], "/root".into()));
        assert_eq!(ids(Some("")), (0, 0, vec![0, 10], "/root".into()));
        // No files at all: uid 0, gid 0, HOME /.
        let u = resolve_in("", "", None, UnknownUid::GidZero).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/"));
    }

    #[test]
    fn names_and_numbers_resolve_with_supplementary_groups() {
        assert_eq!(
            ids(Some("web")),
            (1000, 1000, vec![1000, 10, 4], "/home/web".into())
        );
        assert_eq!(
            ids(Some("1000")),
            (1000, 1000, vec![1000, 10, 4], "/home/web".into())
        );
        // A number matches a user named so (first match in file order).
        assert_eq!(ids(Some("2000")).0, 3000);
        // An empty home field is /.
        assert_eq!(ids(Some("nohome")).3, "/");
    }

    #[test]
    fn a_numeric_uid_missing_from_passwd_runs_with_gid_0_and_home_slash() {
        assert_eq!(ids(Some("4242")), (4242, 0, vec![0], "/".into()));
        let host = resolve_in(PASSWD, GROUP, Some("4242"), UnknownUid::GidOfSameNumber).unwrap();
        assert_eq!((host.uid, host.gid), (4242, 4242));
    }

    #[test]
    fn an_explicit_group_replaces_the_primary_and_is_the_only_group() {
        assert_eq!(ids(Some("web:adm")), (1000, 4, vec![4], "/home/web".into()));
        assert_eq!(
            ids(Some("web:10")),
            (1000, 10, vec![10], "/home/web".into())
        );
        // A number absent from the group file is taken as is.
        assert_eq!(ids(Some("web:777")).1, 777);
        // A number matches a group named so first.
        assert_eq!(ids(Some("4242:500")).1, 501);
        assert_eq!(
            ids(Some("4242:nogroup")),
            (4242, 65534, vec![65534], "/".into())
        );
    }

    #[test]
    fn unknown_names_and_out_of_range_ids_are_errors_naming_the_user() {
        for (u, why) in [
            ("ghost", "no user \"ghost\""),
            ("web:ghosts", "no group \"ghosts\""),
            ("3000000000", "uid is above"),
            ("web:3000000000", "gid is above"),
            (":web", "names a group but no user"),
        ] {
            let e = r(Some(u)).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(&format!("{u:?}")), "{u}: {e}");
        }
    }

    #[test]
    fn passwd_linked_to_a_device_or_fifo_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", d.path().join("etc/passwd")).unwrap();
        // Inside the root, /dev/zero does not exist: nothing to read, so a
        // name cannot be found, and the host's /dev/zero is never opened.
        let e = resolve(d.path(), Some("web"), UnknownUid::GidZero).unwrap_err();
        assert!(e.to_string().contains("no user \"web\""), "{e}");
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        let fifo = std::ffi::CString::new(d.path().join("dev/zero").to_str().unwrap()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: a valid C string path.
        let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
        assert_eq!(rc, 0);
        let e = resolve(d.path(), Some("web"), UnknownUid::GidZero).unwrap_err();
        assert!(
            e.to_string().contains("etc/passwd in") && e.to_string().contains("is a FIFO"),
            "{e}"
        );
        std::fs::remove_file(d.path().join("etc/passwd")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            vec![b'x'; MAX_ACCOUNT_FILE_BYTES as usize + 1],
        )
        .unwrap();
        let e = resolve(d.path(), Some("web"), UnknownUid::GidZero).unwrap_err();
        assert!(e.to_string().contains("is larger than"), "{e}");
    }

    #[test]
    fn files_are_read_from_the_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(d.path().join("etc/group"), GROUP).unwrap();
        let u = resolve(d.path(), Some("web"), UnknownUid::GidZero).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids),
            (1000, 1000, vec![1000, 10, 4])
        );
    }
}
