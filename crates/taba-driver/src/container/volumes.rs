//! The image's `VOLUME` paths: each gets a writable directory of its own
//! under `<task_dir>/volumes/`, bind-mounted at that path, which lives as
//! long as the allocation (a restarted task finds what it wrote). As
//! Docker does for anonymous volumes, a new volume starts as a copy of what
//! the image has at the path (files, directories and symlinks with their
//! owners and modes; device nodes and FIFOs are not copied), resolved
//! inside the image's root and never following a symlink out of it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

use crate::DriverError;

/// Deepest directory nesting copied from an image into a volume.
const MAX_DEPTH: usize = 128;

/// `/var/lib/data` -> `var%2Flib%2Fdata`: one directory name per path,
/// distinct for distinct paths.
fn volume_name(path: &Path) -> String {
    let s = path.to_string_lossy();
    s.trim_start_matches('/')
        .replace('%', "%25")
        .replace('/', "%2F")
}

/// An image's volume path, normalised; `..` and relative paths refused.
fn volume_path(p: &str) -> Result<PathBuf, DriverError> {
    let err = |why: &str| DriverError::Start(format!("image VOLUME {p:?}: {why}"));
    if !p.starts_with('/') {
        return Err(err("not an absolute path"));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => return Err(err("must not contain '..'")),
        }
    }
    if out == Path::new("/") {
        return Err(err("a volume cannot be the root"));
    }
    Ok(out)
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> DriverError + '_ {
    move |source| DriverError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Make (once per allocation) the volumes of `paths` under `task_dir`,
/// copying the image's content from `rootfs`; ids are shifted by
/// `id_offset` (a user namespace's host range). Returns their mounts.
pub fn prepare(
    task_dir: &Path,
    rootfs: &Path,
    paths: &[String],
    id_offset: (u32, u32),
) -> Result<Vec<Mount>, DriverError> {
    let mut mounts = Vec::new();
    if paths.is_empty() {
        return Ok(mounts);
    }
    let base = task_dir.join("volumes");
    std::fs::create_dir_all(&base).map_err(io_err(&base))?;
    let root = taba_runtime::paths::open_root(rootfs).map_err(io_err(rootfs))?;
    for p in paths {
        let path = volume_path(p)?;
        let dir = base.join(volume_name(&path));
        if !dir.exists() {
            let tmp = base.join(format!(".{}.tmp", volume_name(&path)));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
            }
            populate(root.as_fd(), &path, &tmp, id_offset).map_err(|e| {
                DriverError::Start(format!(
                    "image VOLUME {p:?}: copy the image's content: {}",
                    taba_types::error_chain(&e)
                ))
            })?;
            std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
        }
        let mut m = Mount::default();
        m.set_destination(path)
            .set_typ(Some("bind".into()))
            .set_source(Some(dir))
            .set_options(Some(vec!["rbind".into(), "rprivate".into()]));
        mounts.push(m);
    }
    Ok(mounts)
}

/// Create `dest` as a copy of the directory at `path` inside `root`, or an
/// empty root-owned 0755 directory when the image has none there.
fn populate(root: BorrowedFd<'_>, path: &Path, dest: &Path, off: (u32, u32)) -> io::Result<()> {
    let src =
        match taba_runtime::paths::open_in_root(root, path, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => Some(fd),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => None,
            Err(e) => return Err(e),
        };
    rfs::mkdir(dest, Mode::from_raw_mode(0o755))?;
    let dst = rfs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match src {
        None => {
            rfs::fchown(&dst, Some(uid(off.0)), Some(gid(off.1)))?;
            rfs::fchmod(&dst, Mode::from_raw_mode(0o755))?;
        }
        Some(src) => {
            let st = rfs::fstat(&src)?;
            copy_dir(src.as_fd(), dst.as_fd(), off, 0)?;
            rfs::fchown(
                &dst,
                Some(uid(off.0 + st.st_uid)),
                Some(gid(off.1 + st.st_gid)),
            )?;
            rfs::fchmod(&dst, Mode::from_raw_mode(st.st_mode & 0o7777))?;
        }
    }
    Ok(())
}

fn uid(n: u32) -> rfs::Uid {
    rfs::Uid::from_raw(n)
}
fn gid(n: u32) -> rfs::Gid {
    rfs::Gid::from_raw(n)
}

/// Copy the entries of the directory `src` into `dst`, never following a
/// symlink.
fn copy_dir(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    off: (u32, u32),
    depth: usize,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(io::Error::other(format!(
            "nested deeper than {MAX_DEPTH} directories"
        )));
    }
    for entry in rfs::Dir::read_from(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let st = rfs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                rfs::mkdirat(dst, name, Mode::from_raw_mode(0o700))?;
                let s = rfs::openat(
                    src,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let d = rfs::openat(
                    dst,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                copy_dir(s.as_fd(), d.as_fd(), off, depth + 1)?;
                set_owner_mode(&d, &st, off, mode)?;
            }
            FileType::RegularFile => {
                let s: OwnedFd = rfs::openat(
                    src,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let d: OwnedFd = rfs::openat(
                    dst,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                let mut s = std::fs::File::from(s);
                let mut d = std::fs::File::from(d);
                io::copy(&mut s, &mut d)?;
                set_owner_mode(&d, &st, off, mode)?;
            }
            FileType::Symlink => {
                let target = rfs::readlinkat(src, name, Vec::new())?;
                rfs::symlinkat(target.as_c_str(), dst, name)?;
                rfs::chownat(
                    dst,
                    name,
                    Some(uid(off.0 + st.st_uid)),
                    Some(gid(off.1 + st.st_gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn set_owner_mode(fd: impl AsFd, st: &rfs::Stat, off: (u32, u32), mode: Mode) -> io::Result<()> {
    // Owner first: a chown clears setuid and setgid bits.
    rfs::fchown(
        &fd,
        Some(uid(off.0 + st.st_uid)),
        Some(gid(off.1 + st.st_gid)),
    )?;
    rfs::fchmod(&fd, mode)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn names_are_distinct_and_bad_paths_refused() {
        assert_eq!(volume_name(Path::new("/var/lib/data")), "var%2Flib%2Fdata");
        assert_ne!(
            volume_name(Path::new("/a-b")),
            volume_name(Path::new("/a/b"))
        );
        assert_ne!(
            volume_name(Path::new("/a%2Fb")),
            volume_name(Path::new("/a/b"))
        );
        assert!(volume_path("data").is_err());
        assert!(volume_path("/data/../..").is_err());
        assert!(volume_path("/").is_err());
        assert_eq!(volume_path("/data/./x/").unwrap(), PathBuf::from("/data/x"));
    }

    #[test]
    fn root_volume_starts_as_a_copy_and_symlinks_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "host").unwrap();
        std::fs::write(root.join("data/sub/file"), "image content").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("data/link")).unwrap();
        std::os::unix::fs::chown(root.join("data/sub/file"), Some(1000), Some(1001)).unwrap();
        std::fs::set_permissions(
            root.join("data/sub"),
            std::os::unix::fs::PermissionsExt::from_mode(0o750),
        )
        .unwrap();
        // A volume path that is a symlink out of the root: resolved inside.
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let task = d.path().join("task");
        let mounts = prepare(
            &task,
            &root,
            &["/data".into(), "/escape".into(), "/new/dir".into()],
            (0, 0),
        )
        .unwrap();
        assert_eq!(mounts.len(), 3);
        let vol = task.join("volumes/data");
        assert_eq!(
            std::fs::read_to_string(vol.join("sub/file")).unwrap(),
            "image content"
        );
        let md = std::fs::metadata(vol.join("sub/file")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
        assert_eq!(
            std::fs::metadata(vol.join("sub")).unwrap().mode() & 0o777,
            0o750
        );
        assert_eq!(
            std::fs::read_link(vol.join("link")).unwrap(),
            PathBuf::from("/etc")
        );
        // Nothing of the host's directory was copied.
        let escaped = task.join("volumes/escape");
        assert!(std::fs::read_dir(&escaped).unwrap().next().is_none());
        assert!(task.join("volumes/new%2Fdir").is_dir());
        // Made once: a second start keeps what the volume holds.
        std::fs::write(vol.join("written"), "by the task").unwrap();
        prepare(&task, &root, &["/data".into()], (0, 0)).unwrap();
        assert!(vol.join("written").exists());
    }
}
