//! Overlayfs root filesystems for containers, and the leases that keep their images.
//!
//! `mount_rootfs` mounts `container_dir/rootfs` as an overlay of the image's layer dirs (read
//! only, shared by every container of the image) under a per-container `upper` and `work` dir.
//!
//! **Many layers.** The classic `mount(2)` takes all options in one page (4 KiB), which full
//! layer paths fill after ~35 layers, and the usual trick (relative paths after `chdir`) is not
//! possible in a threaded process. So the mount is made with the new mount API, one
//! `fsconfig(lowerdir+)` call per layer (Linux >= 6.8; no length limit beyond overlayfs' own
//! 500 layers). On older kernels it falls back to `mount(2)` with short symlinks
//! `<store>/l/<16 hex>` -> `../layers/<diff_id>/fs`, which fits ~100 layers for a store under
//! `/var/lib/taba/images`; beyond that it fails with a clear error.
//!
//! **Leases.** Each mounted rootfs has a lease file `<store>/leases/<hash of container dir>.json`
//! naming the container dir and the image. `remove` refuses (`InUse`) to delete an image that a
//! live lease names. A lease is live while its `rootfs` is still a mount point, so a host
//! reboot or a container dir removed without `unmount_rootfs` does not pin images forever.
//! Leases are written before the mount and removed after the unmount, under the store lock
//! held shared, while `remove` holds it exclusive.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{self as rmount, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
use serde::{Deserialize, Serialize};

use crate::error::{io_ctx, ImageError};

/// A record of which image a container dir's mounted rootfs uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub version: u32,
    pub container_dir: PathBuf,
    pub image: String,
}

/// The absolute, lexically normalised form of a path (it need not exist).
pub(crate) fn absolute(p: &Path) -> Result<PathBuf, ImageError> {
    let abs = std::path::absolute(p).map_err(io_ctx(|| format!("resolve {}", p.display())))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` (canonical) is a mount point in this mount namespace.
///
/// Asks `statx` for `STATX_ATTR_MOUNT_ROOT` (Linux 5.8+): constant time,
/// where scanning /proc/self/mountinfo costs O(mounts) per call and so
/// O(n^2) when n containers start at once. Older kernels scan.
pub(crate) fn is_mount_point(path: &Path) -> Result<bool, ImageError> {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    match statx(
        CWD,
        path,
        AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::empty(),
    ) {
        Ok(st) if st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) => {
            return Ok(st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
        }
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(false),
        _ => {}
    }
    is_mount_point_by_scan(path)
}

/// [`is_mount_point`] by reading the mount table.
pub(crate) fn is_mount_point_by_scan(path: &Path) -> Result<bool, ImageError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_ctx(|| "read /proc/self/mountinfo".to_string()))?;
    let want = path.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape(mp) == want))
}

/// The rootfs path of a container dir, canonical if it exists.
pub(crate) fn rootfs_of(container_dir: &Path) -> PathBuf {
    let rootfs = container_dir.join("rootfs");
    fs::canonicalize(&rootfs).unwrap_or(rootfs)
}

/// Mounts an overlay of `lowers` (top first) at `target`.
pub(crate) fn mount_overlay(
    lowers: &[PathBuf],
    short_lowers: impl FnOnce() -> Result<Vec<PathBuf>, ImageError>,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), ImageError> {
    match mount_new_api(lowers, upper, work, target) {
        Ok(()) => Ok(()),
        // No new mount API, or an overlayfs without "lowerdir+": use mount(2).
        Err(e) if e == Errno::NOSYS || e == Errno::INVAL => {
            mount_legacy(&short_lowers()?, upper, work, target)
        }
        Err(e) => Err(ImageError::Io {
            context: format!("mount overlay at {}", target.display()),
            source: e.into(),
        }),
    }
}

fn mount_new_api(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), Errno> {
    let fs = rmount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for lower in lowers {
        rmount::fsconfig_set_string(&fs, "lowerdir+", lower)?;
    }
    rmount::fsconfig_set_string(&fs, "upperdir", upper)?;
    rmount::fsconfig_set_string(&fs, "workdir", work)?;
    rmount::fsconfig_create(&fs)?;
    // nodev: device nodes shipped in image layers are never usable.
    let mnt = rmount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    rmount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

/// A detached copy of the mount tree at `dir`, idmapped through the user
/// namespace `userns` (`open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_IDMAP)`,
/// Linux 5.12+; the layer's filesystem must support idmapped mounts). Files
/// owned by id N on disk appear owned by the namespace's mapping of N.
pub(crate) fn idmapped_clone(
    dir: &Path,
    userns: std::os::fd::BorrowedFd<'_>,
) -> Result<std::os::fd::OwnedFd, ImageError> {
    use std::os::fd::AsRawFd;
    let tree = rmount::open_tree(
        rustix::fs::CWD,
        dir,
        rmount::OpenTreeFlags::OPEN_TREE_CLONE | rmount::OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(io_ctx(|| format!("clone mount of {}", dir.display())))?;
    /// `struct mount_attr` of <linux/mount.h>.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: MountAttrFlags::MOUNT_ATTR_IDMAP.bits() as u64,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    #[allow(unsafe_code)]
    // SAFETY: mount_setattr on an fd we own, with a valid empty path and a
    // pointer to a live struct of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(ImageError::Io {
            context: format!(
                "idmap layer {} (needs Linux 5.12+ and a filesystem with idmapped mounts)",
                dir.display()
            ),
            source: io::Error::last_os_error(),
        });
    }
    Ok(tree)
}

/// The classic single-string mount; `lowers` should be short paths.
pub(crate) fn mount_legacy(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), ImageError> {
    let mut all: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    all.extend([upper, work]);
    if let Some(p) = all
        .iter()
        .find(|p| p.to_string_lossy().contains([':', ',', '\\']))
    {
        return Err(ImageError::Io {
            context: format!(
                "mount overlay at {}: path {} has ':', ',' or '\\'",
                target.display(),
                p.display()
            ),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    let lower: Vec<_> = lowers
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if data.len() >= 4096 {
        return Err(ImageError::Io {
            context: format!(
                "mount overlay at {}: {} layers need {} bytes of mount options, over this kernel's 4096",
                target.display(),
                lowers.len(),
                data.len()
            ),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    let data = CString::new(data).map_err(|_| ImageError::Io {
        context: "mount options contain a NUL byte".into(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    rmount::mount(
        "overlay",
        target,
        "overlay",
        rmount::MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(io_ctx(|| format!("mount overlay at {}", target.display())))
}

/// Detaches every mount stacked at `target` (lazily: open files keep working).
pub(crate) fn unmount_all(target: &Path) -> Result<(), ImageError> {
    for _ in 0..16 {
        if !is_mount_point(target)? {
            return Ok(());
        }
        match rmount::unmount(target, rmount::UnmountFlags::DETACH) {
            Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
            Err(e) => {
                return Err(ImageError::Io {
                    context: format!("unmount {}", target.display()),
                    source: e.into(),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\"), "/x\\");
    }

    #[test]
    fn root_is_a_mount_point_and_a_fresh_dir_is_not() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        assert!(is_mount_point_by_scan(Path::new("/")).unwrap());
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        assert!(!is_mount_point(Path::new("/proc/self")).unwrap());
        assert!(!is_mount_point(Path::new("/no/such/dir")).unwrap());
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(&fs::canonicalize(d.path()).unwrap()).unwrap());
    }

    fn overlay_case(mount: impl Fn(&[PathBuf], &Path, &Path, &Path)) {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (overlay mounts)"
        );
        let d = tempfile::tempdir().unwrap();
        let dir = |n: &str| {
            let p = d.path().join(n);
            fs::create_dir(&p).unwrap();
            p
        };
        let (low1, low2, upper, work, target) =
            (dir("l1"), dir("l2"), dir("u"), dir("w"), dir("t"));
        fs::write(low1.join("f"), b"bottom").unwrap();
        fs::write(low1.join("g"), b"g").unwrap();
        fs::write(low2.join("f"), b"top").unwrap();
        mount(&[low2, low1], &upper, &work, &target);
        let target = fs::canonicalize(&target).unwrap();
        assert!(is_mount_point(&target).unwrap());
        assert_eq!(fs::read(target.join("f")).unwrap(), b"top");
        assert_eq!(fs::read(target.join("g")).unwrap(), b"g");
        unmount_all(&target).unwrap();
        assert!(!is_mount_point(&target).unwrap());
        unmount_all(&target).unwrap();
    }

    #[test]
    fn root_legacy_mount_path_works() {
        overlay_case(|lowers, upper, work, target| {
            mount_legacy(lowers, upper, work, target).unwrap()
        });
    }

    #[test]
    fn root_new_mount_api_path_works() {
        overlay_case(|lowers, upper, work, target| {
            mount_new_api(lowers, upper, work, target).unwrap()
        });
    }

    #[test]
    fn legacy_mount_refuses_options_over_a_page() {
        let long: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("/{}/{i}", "x".repeat(60))))
            .collect();
        let e = mount_legacy(&long, Path::new("/u"), Path::new("/w"), Path::new("/t")).unwrap_err();
        assert!(e.to_string().contains("4096"), "{e}");
        let colon = vec![PathBuf::from("/a:b")];
        assert!(mount_legacy(&colon, Path::new("/u"), Path::new("/w"), Path::new("/t")).is_err());
    }

    #[test]
    fn absolute_normalises_lexically() {
        assert_eq!(
            absolute(Path::new("/a/./b/../c")).unwrap(),
            PathBuf::from("/a/c")
        );
    }
}
