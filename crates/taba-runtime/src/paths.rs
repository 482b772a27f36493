//! Paths inside a container's root, resolved the way the container would
//! see them: `openat2(RESOLVE_IN_ROOT)` treats the root as `/`, so a symlink
//! in an image (`/etc/passwd -> /dev/zero`, `/data -> /`) or a `..` never
//! lands on the host. Used for mount targets and device nodes (before
//! `pivot_root`, while the host's tree is still reachable) and for reading
//! an image's `/etc/passwd` and `/etc/group` on the host.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Errors reading a file inside a root.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path could not be opened or read inside the root.
    #[error("{path} in {root}")]
    Io {
        /// The path inside the root.
        path: String,
        /// The root.
        root: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file (a device, a FIFO, a directory).
    #[error("{path} in {root} is a {kind}, not a regular file")]
    NotRegular {
        /// The path inside the root.
        path: String,
        /// The root.
        root: String,
        /// What it is.
        kind: &'static str,
    },
    /// The file is larger than the cap.
    #[error("{path} in {root} is larger than {max} bytes")]
    TooLarge {
        /// The path inside the root.
        path: String,
        /// The root.
        root: String,
        /// The cap.
        max: u64,
    },
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Open the root directory itself (`O_PATH`).
pub fn open_root(root: &Path) -> std::io::Result<OwnedFd> {
    Ok(rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The path relative to the root (`/a/b` -> `a/b`, `/` -> `.`).
fn relative(path: &Path) -> std::path::PathBuf {
    let rel: std::path::PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel
    }
}

/// Open `path` inside `root` with `flags` (plus close-on-exec), resolving
/// every symlink and `..` as if `root` were `/`.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    Ok(rfs::openat2(
        root,
        relative(path),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )?)
}

/// What [`create_in_root`] makes when the path is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// A directory (0755), and any missing parent directory.
    Dir,
    /// An empty file (0644), and any missing parent directory.
    File,
}

/// Open (`O_PATH`) `path` inside `root`, creating it and its missing
/// parents first; every component is resolved inside the root.
pub fn create_in_root(root: BorrowedFd<'_>, path: &Path, what: Create) -> std::io::Result<OwnedFd> {
    let rel = relative(path);
    match open_in_root(root, &rel, OFlags::PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
        Err(_) => {}
    }
    let mut parent = rfs::openat(root, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let prefix: std::path::PathBuf = comps[..=i].iter().collect();
        match open_in_root(root, &prefix, OFlags::PATH) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            Err(_) => {}
        }
        // The parent was resolved inside the root; create the name in it
        // (neither call follows a symlink at the name itself).
        let dir = reopen_dir(parent.as_fd())?;
        let made = if last && what == Create::File {
            rfs::openat(
                &dir,
                c.as_os_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rfs::mkdirat(&dir, c.as_os_str(), Mode::from_raw_mode(0o755))
        };
        match made {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        parent = open_in_root(root, &prefix, OFlags::PATH)?;
    }
    Ok(parent)
}

/// A real directory fd for an `O_PATH` one (the `*at` calls that create
/// need one).
pub fn reopen_dir(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    Ok(rfs::openat(
        fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `/proc/self/fd/N` for an fd: a path the mount calls accept that means
/// exactly the file the fd holds.
pub fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    format!("/proc/self/fd/{}", fd.as_raw_fd()).into()
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Directory => "directory",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::Symlink => "symlink",
        _ => "special file",
    }
}

/// Read the regular file `path` inside `root` (at most `max` bytes).
/// `Ok(None)` when it does not exist. A device, a FIFO or a directory is an
/// error, and is never opened for reading (no hang, no host device read).
pub fn read_file_in_root(root: &Path, path: &Path, max: u64) -> Result<Option<Vec<u8>>, PathError> {
    let io = |source: std::io::Error| PathError::Io {
        path: path.display().to_string(),
        root: root.display().to_string(),
        source,
    };
    let root_fd = open_root(root).map_err(io)?;
    let fd = match open_in_root(root_fd.as_fd(), path, OFlags::PATH) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let st = rfs::fstat(&fd).map_err(|e| io(e.into()))?;
    let t = FileType::from_raw_mode(st.st_mode);
    if t != FileType::RegularFile {
        return Err(PathError::NotRegular {
            path: path.display().to_string(),
            root: root.display().to_string(),
            kind: kind_name(t),
        });
    }
    if st.st_size as u64 > max {
        return Err(PathError::TooLarge {
            path: path.display().to_string(),
            root: root.display().to_string(),
            max,
        });
    }
    // Reopen the very file checked above for reading.
    let file = std::fs::File::open(fd_path(fd.as_fd())).map_err(io)?;
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > max {
        return Err(PathError::TooLarge {
            path: path.display().to_string(),
            root: root.display().to_string(),
            max,
        });
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(d.path().join("host-passwd"), "host\n").unwrap();
        std::fs::write(root.join("host-passwd"), "inside\n").unwrap();
        // Absolute and relative escapes both stay inside.
        std::os::unix::fs::symlink("/host-passwd", root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../host-passwd", root.join("etc/group")).unwrap();
        for f in ["etc/passwd", "etc/group"] {
            let got = read_file_in_root(&root, Path::new(f), 1024)
                .unwrap()
                .unwrap();
            assert_eq!(got, b"inside\n", "{f}");
        }
        assert!(read_file_in_root(&root, Path::new("etc/shadow"), 1024)
            .unwrap()
            .is_none());
    }

    #[test]
    fn devices_fifos_and_large_files_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("etc/passwd")).unwrap();
        // /dev/zero inside this root is whatever the root holds: make it a FIFO.
        rfs::mknodat(
            rfs::CWD,
            root.join("dev/zero"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let e = read_file_in_root(&root, Path::new("/etc/passwd"), 1024).unwrap_err();
        assert!(
            e.to_string().ends_with("is a FIFO, not a regular file"),
            "{e}"
        );
        std::fs::write(root.join("etc/group"), vec![b'x'; 2048]).unwrap();
        let e = read_file_in_root(&root, Path::new("/etc/group"), 1024).unwrap_err();
        assert!(e.to_string().ends_with("is larger than 1024 bytes"), "{e}");
        let e = read_file_in_root(&root, Path::new("/etc"), 1024).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }

    #[test]
    fn create_in_root_never_creates_outside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("data")).unwrap();
        let root_fd = open_root(&root).unwrap();
        // The symlink's target is resolved inside the root, where it does
        // not exist: an error, and nothing is made on the host.
        let e =
            create_in_root(root_fd.as_fd(), Path::new("/data/sub/file"), Create::File).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing created through the symlink"
        );
        create_in_root(root_fd.as_fd(), Path::new("/a/b/c"), Create::Dir).unwrap();
        assert!(root.join("a/b/c").is_dir());
    }
}
