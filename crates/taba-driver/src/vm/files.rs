//! The host files of a VM: kernels, initrds and base disk images named by
//! a job, which must resolve inside the node's VM image directories (QEMU
//! runs as root: a job must never make it read an arbitrary host file), and
//! the VM's own disks, qcow2 files in its task directory made with
//! `qemu-img` (overlays on a base image, which stays untouched, or blank).

use std::path::{Path, PathBuf};
use std::process::Command;
use taba_types::vm::{DiskFormat, VmDisk};

/// Errors about a VM's files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A job's path that does not name a usable file.
    #[error("{field} {path:?}: {reason}")]
    Path {
        /// The task field (`kernel`, `disks[0].image`).
        field: String,
        /// As the job wrote it.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// `qemu-img` could not be run.
    #[error("run {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    /// `qemu-img` refused.
    #[error("{field}: qemu-img {action}: {stderr}")]
    QemuImg {
        /// The task field.
        field: String,
        /// `info`, `create`.
        action: &'static str,
        /// What it said.
        stderr: String,
    },
}

/// Resolve `path` of task field `field` inside one of `dirs` (canonical
/// directories): an absolute path must lie inside one after symlinks are
/// resolved; a relative one is looked up in each in turn. Returns the
/// canonical path of a regular file.
pub fn resolve(dirs: &[PathBuf], field: &str, path: &str) -> Result<PathBuf, FilesError> {
    let err = |reason: String| FilesError::Path {
        field: field.to_string(),
        path: path.to_string(),
        reason,
    };
    let listed = || {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if dirs.is_empty() {
        return Err(err(
            "this node allows no VM image directories (agent option vm.image_dirs)".into(),
        ));
    }
    let p = Path::new(path);
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(err("must not contain \"..\"".into()));
    }
    let candidates: Vec<PathBuf> = if p.is_absolute() {
        vec![p.to_path_buf()]
    } else {
        dirs.iter().map(|d| d.join(p)).collect()
    };
    for c in candidates {
        let real = match c.canonicalize() {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(format!("{}: {e}", c.display()))),
        };
        if !dirs.iter().any(|d| real.starts_with(d)) {
            return Err(err(format!(
                "resolves to {}, outside the VM image directories ({}; agent option vm.image_dirs)",
                real.display(),
                listed()
            )));
        }
        let meta = std::fs::metadata(&real).map_err(|e| err(e.to_string()))?;
        if !meta.is_file() {
            return Err(err("is not a regular file".into()));
        }
        return Ok(real);
    }
    Err(err(format!(
        "not found in the VM image directories ({})",
        listed()
    )))
}

/// What `qemu-img info` says of a base image.
#[derive(Debug, serde::Deserialize)]
struct ImageInfo {
    format: String,
    #[serde(rename = "virtual-size", default)]
    virtual_size: u64,
    #[serde(rename = "backing-filename", default)]
    backing_filename: Option<String>,
}

fn qemu_img(
    exe: &Path,
    field: &str,
    action: &'static str,
    args: &[&str],
) -> Result<Vec<u8>, FilesError> {
    let out = Command::new(exe)
        .args(args)
        .output()
        .map_err(|e| FilesError::Spawn(exe.to_path_buf(), e))?;
    if !out.status.success() {
        return Err(FilesError::QemuImg {
            field: field.to_string(),
            action,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Where a job's base disk images are looked up: the node's VM image
/// directories, then the disk images of the node's image store
/// (`taba image import`, fetched from the servers by the agent).
#[derive(Clone, Copy, Debug)]
pub struct Resolver<'a> {
    /// Canonical VM image directories (agent option `vm.image_dirs`).
    pub dirs: &'a [PathBuf],
    /// The node's image store.
    pub store: Option<&'a taba_image::ImageStore>,
}

impl Resolver<'_> {
    /// The base image `name` of task field `field`: a file, and its format
    /// when the store knows it.
    pub fn base(
        &self,
        field: &str,
        name: &str,
    ) -> Result<(PathBuf, Option<DiskFormat>), FilesError> {
        let not_found = match resolve(self.dirs, field, name) {
            Ok(p) => return Ok((p, None)),
            Err(e @ FilesError::Path { .. }) if self.store.is_some() => e,
            Err(e) => return Err(e),
        };
        let Some(store) = self.store else {
            return Err(not_found);
        };
        match store.resolve_disk(name) {
            Ok(Some(d)) => Ok((d.path, Some(d.format))),
            // Not an image name either: the file's error says what is wrong.
            Ok(None) | Err(taba_image::ImageError::InvalidReference { .. }) => Err(not_found),
            Err(e) => Err(FilesError::Path {
                field: field.to_string(),
                path: name.to_string(),
                reason: format!("image store: {}", taba_types::error_chain(&e)),
            }),
        }
    }

    /// Whether `name` is a file of the VM image directories.
    pub fn is_file(&self, field: &str, name: &str) -> bool {
        resolve(self.dirs, field, name).is_ok()
    }
}

/// The VM's disk `index` in `task_dir` (`disk<index>.qcow2`), bases looked
/// up in `dirs`: see [`ensure_disk_file`].
pub fn ensure_disk(
    qemu_img_exe: &Path,
    dirs: &[PathBuf],
    task_dir: &Path,
    index: usize,
    disk: &VmDisk,
) -> Result<(PathBuf, bool), FilesError> {
    ensure_disk_file(
        qemu_img_exe,
        &Resolver { dirs, store: None },
        &task_dir.join(format!("disk{index}.qcow2")),
        &format!("disks[{index}]"),
        disk,
    )
}

/// The VM's disk `file` (of task field `field`): kept as it is when it
/// exists (the disk outlives restarts of the task on this node), else made
/// now. Returns the file and whether it was made by this call (to remove
/// if the start fails).
pub fn ensure_disk_file(
    qemu_img_exe: &Path,
    resolver: &Resolver<'_>,
    file: &Path,
    field: &str,
    disk: &VmDisk,
) -> Result<(PathBuf, bool), FilesError> {
    if file.exists() {
        return Ok((file.to_path_buf(), false));
    }
    let field = field.to_string();
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = file.with_file_name(format!(".{name}.tmp"));
    let tmp_s = tmp.to_string_lossy().into_owned();
    let size = disk.size.map(|s| s.0.to_string());
    match &disk.image {
        Some(image) => {
            let ifield = format!("{field}.image");
            let (base, stored_format) = resolver.base(&ifield, image)?;
            let base_s = base.to_string_lossy().into_owned();
            // The format is never guessed for a file the job (or the image
            // store) says is raw: a raw disk may hold a qcow2 header naming
            // any backing file.
            let mut info_args = vec!["info", "--output=json"];
            if let Some(f) = disk.format.or(stored_format) {
                info_args.extend(["-f", f.qemu_name()]);
            }
            info_args.push(&base_s);
            let out = qemu_img(qemu_img_exe, &ifield, "info", &info_args)?;
            let info: ImageInfo =
                serde_json::from_slice(&out).map_err(|e| FilesError::QemuImg {
                    field: ifield.clone(),
                    action: "info",
                    stderr: format!("unreadable answer: {e}"),
                })?;
            let format = match info.format.as_str() {
                "qcow2" => DiskFormat::Qcow2,
                "raw" => DiskFormat::Raw,
                other => {
                    return Err(FilesError::Path {
                        field: ifield,
                        path: image.clone(),
                        reason: format!("is a {other} image; taba takes qcow2 and raw"),
                    })
                }
            };
            if let Some(b) = info.backing_filename {
                return Err(FilesError::Path {
                    field: ifield,
                    path: image.clone(),
                    reason: format!(
                        "has a backing file ({b}); flatten it with `qemu-img convert -O qcow2`"
                    ),
                });
            }
            let mut args = vec![
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                &base_s,
                "-F",
                format.qemu_name(),
                &tmp_s,
            ];
            let grow = size
                .as_deref()
                .filter(|_| disk.size.is_some_and(|s| s.0 > info.virtual_size));
            if let Some(s) = grow {
                args.push(s);
            }
            qemu_img(qemu_img_exe, &field, "create", &args)?;
        }
        None => {
            let s = size.as_deref().unwrap_or("0");
            qemu_img(
                qemu_img_exe,
                &field,
                "create",
                &["create", "-q", "-f", "qcow2", &tmp_s, s],
            )?;
        }
    }
    std::fs::rename(&tmp, file).map_err(|e| FilesError::Path {
        field,
        path: file.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok((file.to_path_buf(), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_only_inside_the_image_directories() {
        let t = tempfile::tempdir().unwrap();
        let allowed = t.path().join("images");
        std::fs::create_dir_all(allowed.join("k")).unwrap();
        std::fs::write(allowed.join("k/vmlinuz"), b"k").unwrap();
        std::fs::write(t.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), allowed.join("link")).unwrap();
        let dirs = vec![allowed.canonicalize().unwrap()];
        let k = resolve(&dirs, "kernel", "k/vmlinuz").unwrap();
        assert_eq!(k, dirs[0].join("k/vmlinuz"));
        assert_eq!(
            resolve(&dirs, "kernel", k.to_str().unwrap()).unwrap(),
            k,
            "an absolute path inside is fine"
        );
        let e = resolve(&dirs, "kernel", "link").unwrap_err().to_string();
        assert!(e.contains("outside the VM image directories"), "{e}");
        let secret = t.path().join("secret");
        let e = resolve(&dirs, "initrd", secret.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("initrd") && e.contains("outside"), "{e}");
        let e = resolve(&dirs, "kernel", "../secret")
            .unwrap_err()
            .to_string();
        assert!(e.contains(".."), "{e}");
        let e = resolve(&dirs, "kernel", "nope").unwrap_err().to_string();
        assert!(e.contains("not found in the VM image directories"), "{e}");
        let e = resolve(&dirs, "kernel", "k").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = resolve(&[], "kernel", "k").unwrap_err().to_string();
        assert!(e.contains("vm.image_dirs"), "{e}");
    }
}
