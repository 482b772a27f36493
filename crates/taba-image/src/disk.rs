//! Disk images for VMs (qcow2 and raw) in the image store: imported from a
//! file, kept whole as one content-addressed blob (`blobs/sha256/<hex>`,
//! the image id is its digest) with an image record saying its format and
//! virtual size, named in `refs.json` like container images, and handed to
//! agents as a manifest with that one blob ([`crate::Fetch`]).
//!
//! A qcow2 image is checked with `qemu-img` before it is kept, and again
//! when an agent fetches it: `qemu-img check` must find no corruption, and
//! a backing file or an external data file is refused (QEMU, running as
//! root on the node, would open whatever host file it names). Nothing of a
//! refused image is left in the store.
//!
//! ```text
//! import_disk(file, name, format?) -> format: given | qcow2 magic | .raw/.img name
//!   -> size <= limits.max_image_upload -> qcow2: qemu-img info (no backing or data file,
//!      virtual size) + qemu-img check -> copy into staging, sha256 -> commit under the lock
//! ```

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use taba_types::vm::DiskFormat;

use crate::archive::hex;
use crate::blobs::blob_path;
use crate::error::{io_ctx, ImageError};
use crate::{
    reference, to_json, write_atomic, BlobRecord, ImageRecord, ImageStore, ImageSummary, Staging,
    RECORD_VERSION,
};

/// The first bytes of a qcow2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// What the store keeps about a disk image besides its blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DiskRecord {
    pub(crate) format: DiskFormat,
    /// Size of the disk the guest sees, bytes.
    pub(crate) virtual_size: u64,
}

/// A disk image of the store, ready to be the base of a VM's overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    /// `sha256:<hex>` of the file.
    pub id: String,
    /// The file (read only: VMs get overlays on it).
    pub path: PathBuf,
    /// Its format (never guessed again from the content).
    pub format: DiskFormat,
    /// Size of the disk the guest sees, bytes.
    pub virtual_size: u64,
}

fn invalid(reason: impl Into<String>) -> ImageError {
    ImageError::InvalidDisk {
        reason: reason.into(),
    }
}

/// The media type of a disk blob (what `taba image ls` and manifests say).
pub(crate) fn media_type(format: DiskFormat) -> String {
    format!("application/vnd.taba.disk.{}", format.qemu_name())
}

/// The format of `file` (named `name` by the user): the one asked for,
/// else qcow2 by its magic; raw only when asked or named `.raw`/`.img`
/// (any file is a raw image, so it is never assumed).
pub fn detect_format(
    file: &Path,
    name: &str,
    asked: Option<DiskFormat>,
) -> Result<DiskFormat, ImageError> {
    let mut magic = [0u8; 4];
    let n = File::open(file)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(io_ctx(|| format!("read {}", file.display())))?;
    let qcow2 = n == 4 && &magic == QCOW2_MAGIC;
    match asked {
        Some(DiskFormat::Qcow2) if !qcow2 => Err(invalid("not a qcow2 image (no qcow2 header)")),
        Some(f) => Ok(f),
        None if qcow2 => Ok(DiskFormat::Qcow2),
        None if name.ends_with(".raw") || name.ends_with(".img") => Ok(DiskFormat::Raw),
        None => Err(invalid(
            "not a qcow2 image; a raw disk image needs --format raw (or a .raw or .img name)",
        )),
    }
}

/// What `qemu-img info` says of a qcow2 image.
#[derive(Debug, serde::Deserialize)]
struct QemuImgInfo {
    format: String,
    #[serde(rename = "virtual-size", default)]
    virtual_size: u64,
    #[serde(rename = "backing-filename", default)]
    backing_filename: Option<String>,
    #[serde(rename = "full-backing-filename", default)]
    full_backing_filename: Option<String>,
    #[serde(rename = "format-specific", default)]
    format_specific: Option<serde_json::Value>,
}

fn qemu_img(args: &[&str], file: &Path) -> Result<std::process::Output, ImageError> {
    Command::new("qemu-img")
        .args(args)
        .arg(file)
        .output()
        .map_err(|e| {
            invalid(format!(
                "cannot run qemu-img to check the image ({e}; install Debian's qemu-utils)"
            ))
        })
}

/// Checks a qcow2 image: readable, not corrupt, no backing file, no
/// external data file. Returns its virtual size.
pub(crate) fn check_qcow2(file: &Path) -> Result<u64, ImageError> {
    let out = qemu_img(&["info", "--output=json", "-f", "qcow2"], file)?;
    if !out.status.success() {
        return Err(invalid(format!(
            "qemu-img info: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let info: QemuImgInfo = serde_json::from_slice(&out.stdout)
        .map_err(|e| invalid(format!("qemu-img info: unreadable answer: {e}")))?;
    if info.format != "qcow2" {
        return Err(invalid(format!("qemu-img sees a {} image", info.format)));
    }
    if let Some(b) = info.backing_filename.or(info.full_backing_filename) {
        return Err(invalid(format!(
            "has a backing file ({b}); taba keeps self-contained images only: flatten it with `qemu-img convert -O qcow2`"
        )));
    }
    let data_file = info
        .format_specific
        .as_ref()
        .and_then(|f| f.pointer("/data/data-file"))
        .and_then(|d| d.as_str());
    if let Some(d) = data_file {
        return Err(invalid(format!(
            "has an external data file ({d}); flatten it with `qemu-img convert -O qcow2`"
        )));
    }
    let out = qemu_img(&["check", "-q", "-f", "qcow2"], file)?;
    // 0: clean; 3: leaked clusters only (harmless); else corrupt or unreadable.
    match out.status.code() {
        Some(0) | Some(3) => Ok(info.virtual_size),
        _ => Err(invalid(format!(
            "qemu-img check: {}",
            match String::from_utf8_lossy(&out.stderr).trim() {
                "" => "the image is corrupt".to_string(),
                s => s.to_string(),
            }
        ))),
    }
}

/// Checks `file` as a disk image of `format` against `limits`: returns
/// its virtual size.
pub(crate) fn check(
    store: &ImageStore,
    file: &Path,
    format: DiskFormat,
) -> Result<u64, ImageError> {
    let len = fs::metadata(file)
        .map_err(io_ctx(|| format!("stat {}", file.display())))?
        .len();
    let cap = store.limits().max_archive;
    if len > cap {
        return Err(ImageError::LimitExceeded {
            what: "disk image".into(),
            limit: "max_image_upload",
            reason: format!("{len} bytes, more than {cap}"),
        });
    }
    if len == 0 {
        return Err(invalid("empty file"));
    }
    let virtual_size = match format {
        DiskFormat::Qcow2 => check_qcow2(file)?,
        DiskFormat::Raw => len,
    };
    let max = taba_types::vm::MAX_DISK_SIZE.0;
    if virtual_size > max {
        return Err(invalid(format!(
            "virtual size {virtual_size} bytes is more than {max}"
        )));
    }
    Ok(virtual_size)
}

impl ImageStore {
    /// Imports the disk image `file` (qcow2 or raw, see [`detect_format`])
    /// as `name` (a reference: `debian-12`, `debian:12`). The image is
    /// checked first (see the module doc); a refused one leaves nothing.
    pub fn import_disk(
        &self,
        file: &Path,
        name: &str,
        format: Option<DiskFormat>,
    ) -> Result<ImageSummary, ImageError> {
        let canonical = reference::Reference::parse(name)?.canonical();
        if canonical.contains('@') {
            return Err(ImageError::InvalidReference {
                reference: name.to_string(),
                reason: "name a disk image name[:tag]".into(),
            });
        }
        let format = detect_format(file, name_of(file, name), format)?;
        let virtual_size = check(self, file, format)?;
        let staging = self.new_staging()?;
        let (hex, size) = copy_hashed(file, &staging)?;
        self.commit_disk(&staging, &hex, size, format, virtual_size, &[canonical])
    }

    /// Names the staged blob `hex` a disk image: blob, record and `refs`
    /// under the lock.
    pub(crate) fn commit_disk(
        &self,
        staging: &Staging,
        hex: &str,
        size: u64,
        format: DiskFormat,
        virtual_size: u64,
        refs: &[String],
    ) -> Result<ImageSummary, ImageError> {
        let id = format!("sha256:{hex}");
        let staged = blob_path(&Self::staged_blobs(staging), hex);
        let _lock = self.lock(true)?;
        let dest = blob_path(&self.blobs_dir(), hex);
        if !dest.exists() {
            fs::rename(&staged, &dest).map_err(io_ctx(|| {
                format!("move {} to {}", staged.display(), dest.display())
            }))?;
        }
        let record = ImageRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            diff_ids: Vec::new(),
            config: Default::default(),
            created: None,
            size,
            config_size: 0,
            blobs: vec![BlobRecord {
                digest: id.clone(),
                size,
                media_type: media_type(format),
            }],
            manifest: None,
            disk: Some(DiskRecord {
                format,
                virtual_size,
            }),
        };
        write_atomic(&self.image_path(hex), &to_json(&record))?;
        let mut refs_file = self.load_refs()?;
        for r in refs {
            refs_file.refs.insert(r.clone(), id.clone());
        }
        self.save_refs(&refs_file)?;
        Ok(self.summary(&record, &refs_file))
    }

    /// The disk image `reference` names. `None`: no such image, or it is a
    /// container image.
    pub fn resolve_disk(&self, reference: &str) -> Result<Option<DiskImage>, ImageError> {
        let refs = self.load_refs()?;
        let Some((id, _)) = self.find(reference, &refs)? else {
            return Ok(None);
        };
        let Some(record) = self.load_image(&id[7..])? else {
            return Ok(None);
        };
        let Some(disk) = record.disk else {
            return Ok(None);
        };
        Ok(Some(DiskImage {
            path: blob_path(&self.blobs_dir(), &id[7..]),
            id,
            format: disk.format,
            virtual_size: disk.virtual_size,
        }))
    }
}

/// The name the format is guessed from: the file's own, else `name`.
fn name_of<'a>(file: &'a Path, name: &'a str) -> &'a str {
    file.file_name().and_then(|n| n.to_str()).unwrap_or(name)
}

/// Copy `file` into the staging dir's blobs, hashing it; its hex digest
/// and size.
fn copy_hashed(file: &Path, staging: &Staging) -> Result<(String, u64), ImageError> {
    let dir = ImageStore::staged_blobs(staging).join("sha256");
    fs::create_dir_all(&dir).map_err(io_ctx(|| format!("create {}", dir.display())))?;
    let part = dir.join(".disk.part");
    let mut src = File::open(file).map_err(io_ctx(|| format!("open {}", file.display())))?;
    let mut dst = File::create(&part).map_err(io_ctx(|| format!("create {}", part.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = src
            .read(&mut buf)
            .map_err(io_ctx(|| format!("read {}", file.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(io_ctx(|| format!("write {}", part.display())))?;
        size += n as u64;
    }
    dst.sync_all()
        .map_err(io_ctx(|| format!("sync {}", part.display())))?;
    let hex = hex(&hasher.finalize());
    let named = dir.join(&hex);
    fs::rename(&part, &named).map_err(io_ctx(|| format!("name {}", named.display())))?;
    Ok((hex, size))
}
