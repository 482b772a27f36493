//! The node's image store for container workloads, and for the disk images
//! of VMs (qcow2, raw: [`ImageStore::import_disk`], module `disk`).
//!
//! It imports `docker save` tars and OCI image-layout tars, unpacks every layer once into a
//! content-addressed directory shared by all images that use it, resolves references, and
//! mounts overlayfs root filesystems for containers. It knows nothing of jobs or runtimes.
//!
//! # On disk
//!
//! ```text
//! <root>/lock                      flock: exclusive for commits and removals, shared for mounts
//! <root>/refs.json                 canonical reference -> image id (replaced atomically)
//! <root>/images/<id>.json          image record: config, diff_ids, blobs, size (one per image)
//! <root>/blobs/sha256/<hex>         original blobs: image configs, OCI manifests, layers as stored
//! <root>/layers/<diff_id>/fs/      an unpacked layer, keyed by the sha256 of its tar
//! <root>/layers/<diff_id>/layer.json
//! <root>/l/<16 hex>                short symlinks to layers, for mount(2) on old kernels
//! <root>/leases/<hash>.json        which container dir has which image mounted
//! <root>/tmp/<n>/ + <n>.lock       staging of an import in progress (flock'd while alive)
//! ```
//!
//! An import unpacks into its own staging dir without holding the store lock, keeping each
//! layer's original (compressed) blob as it reads it, then commits under the exclusive lock
//! with renames: blobs and layers first, then the image record, then `refs.json`. An image can
//! also be assembled from its blobs fetched from elsewhere ([`Fetch`]): each blob is checked
//! against its digest and size as it is written, then the same unpack and commit run. A failed or killed import leaves only a staging dir, which the next
//! [`ImageStore::open`] deletes (its lock is free); a crash between renames leaves at most
//! unreferenced layers, which the next `open` or `remove` collects. Two processes may share a
//! store: all mutations take the lock file.
//!
//! The image id is the sha256 of the image config, as Docker computes it, so the same image
//! has the same id whichever format it came in.

mod archive;
mod blobs;
mod disk;
mod error;
mod export;
mod fetch;
#[doc(hidden)]
pub mod fuzzing;
mod import;
mod limits;
mod mount;
mod reference;
mod unpack;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

pub use archive::sha256_digest;
pub use blobs::{parse_digest, BlobWriter, MAX_BLOB_BYTES};
pub use disk::{detect_format, DiskImage};
pub use error::ImageError;
pub use export::{ImageExport, SaveFormat, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST};
pub use fetch::Fetch;
pub use limits::ImageLimits;

use archive::{OuterArchive, RunConfig};
use error::io_ctx;
use mount::Lease;
use reference::Lookup;
use taba_types::wire::{BlobDescriptor, ImageManifest, LayerDescriptor};

/// The canonical form the store keys a reference by (`docker.io/library/busybox:latest`,
/// `localhost:5000/app@sha256:<hex>`), or why the store would refuse it.
pub fn canonical_reference(reference: &str) -> Result<String, ImageError> {
    reference::Reference::parse(reference).map(|r| r.canonical())
}

/// A short description of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    /// `sha256:<hex>` of the image config.
    pub id: String,
    /// References to it, in short form (`busybox:latest`).
    pub refs: Vec<String>,
    /// Bytes of file content in its layers, unpacked.
    pub size: u64,
    /// Number of layers.
    pub layers: usize,
    /// When the image was built, as its config says (RFC 3339).
    pub created: Option<String>,
    /// `container`, or `disk` for a VM disk image.
    pub kind: &'static str,
    /// A disk image's format (`qcow2`, `raw`).
    pub format: Option<&'static str>,
}

/// How to run the image, from its config. Empty lists mean "not set".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, `uid:gid`, ...).
    pub user: Option<String>,
    /// `ExposedPorts` keys (`80/tcp`).
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// `StopSignal` (`SIGQUIT`, `15`...), as the image names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `Volumes` keys: paths that get a writable volume per allocation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `Healthcheck`, kept as the image states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
}

/// An image's `HEALTHCHECK` (Docker's `Healthcheck` of the image config).
/// Durations are nanoseconds, as in the config; `None`: not set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    #[serde(default)]
    pub test: Vec<String>,
    /// Time between checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ns: Option<u64>,
    /// Time a check may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ns: Option<u64>,
    /// Time before failures count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_ns: Option<u64>,
    /// Time between checks during the start period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval_ns: Option<u64>,
    /// Consecutive failures before unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
}

impl ImageConfig {
    fn from_run(run: RunConfig) -> Self {
        let healthcheck = run.healthcheck.map(|h| Healthcheck {
            test: h.test.unwrap_or_default(),
            interval_ns: h.interval,
            timeout_ns: h.timeout,
            start_period_ns: h.start_period,
            start_interval_ns: h.start_interval,
            retries: h.retries,
        });
        ImageConfig {
            stop_signal: run.stop_signal.filter(|s| !s.is_empty()),
            volumes: run.volumes.unwrap_or_default().into_keys().collect(),
            healthcheck,
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.filter(|w| !w.is_empty()),
            user: run.user.filter(|u| !u.is_empty()),
            exposed_ports: run.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: run.labels.unwrap_or_default(),
        }
    }
}

/// A stored image, ready to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>` of the image config.
    pub id: String,
    /// References to it, in short form.
    pub refs: Vec<String>,
    /// How to run it.
    pub config: ImageConfig,
    /// The unpacked layer directories, bottom to top.
    pub layers: Vec<PathBuf>,
}

/// Version 2 added the blobs; version 1 records (no blobs) are still read.
const RECORD_VERSION: u32 = 2;

/// `images/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    version: u32,
    id: String,
    /// Hex diff_ids, bottom to top.
    diff_ids: Vec<String>,
    config: ImageConfig,
    created: Option<String>,
    size: u64,
    /// Bytes of the config blob (its digest is the id); 0 in version 1 records.
    #[serde(default)]
    config_size: u64,
    /// The layer blobs as stored, bottom to top; empty in version 1 records.
    #[serde(default)]
    blobs: Vec<BlobRecord>,
    /// The OCI manifest the image came with, if any.
    #[serde(default)]
    manifest: Option<BlobRecord>,
    /// Set for a VM disk image (one blob: the disk file, whose digest is the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disk: Option<disk::DiskRecord>,
}

impl ImageRecord {
    /// Whether every blob of the image is recorded (not a version 1 record).
    fn has_blobs(&self) -> bool {
        if self.disk.is_some() {
            return self.blobs.len() == 1;
        }
        self.blobs.len() == self.diff_ids.len() && self.config_size > 0
    }
}

/// A blob an image record names (`blobs/sha256/<hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BlobRecord {
    /// `sha256:<hex>`.
    digest: String,
    size: u64,
    media_type: String,
}

/// `layers/<diff_id>/layer.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRecord {
    version: u32,
    diff_id: String,
    size: u64,
}

/// `refs.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RefsFile {
    version: u32,
    refs: BTreeMap<String, String>,
}

/// The image store under one root directory. Cheap to share between threads (`Send + Sync`)
/// and to clone; several processes may open the same root.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    limits: ImageLimits,
}

/// A held flock on `<root>/lock` (released on drop).
struct StoreLock {
    _file: File,
}

/// A staging dir of an import in progress, removed on drop.
#[derive(Debug)]
struct Staging {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(&self.lock_path);
    }
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` by rename; `durable` also fsyncs the file and its directory.
fn write_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), ImageError> {
    let dir = path.parent().expect("store paths have a parent");
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_ctx(|| format!("create {}", tmp.display())))?;
        f.write_all(bytes)
            .and_then(|()| if durable { f.sync_all() } else { Ok(()) })
            .map_err(io_ctx(|| format!("write {}", tmp.display())))?;
        fs::rename(&tmp, path).map_err(io_ctx(|| format!("rename to {}", path.display())))?;
        if !durable {
            return Ok(());
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_ctx(|| format!("sync {}", dir.display())))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    write_file(path, bytes, true)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ImageError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ImageError::Io {
                context: format!("parse {}", path.display()),
                source: e.into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_ctx(|| format!("read {}", path.display()))(e)),
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("store records serialise")
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, and cleans up what crashed imports left.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for sub in ["", "images", "layers", "blobs/sha256", "l", "leases", "tmp"] {
            let d = root.join(sub);
            fs::create_dir_all(&d).map_err(io_ctx(|| format!("create {}", d.display())))?;
        }
        // 0700: no local user may reach the layers (setuid binaries, device
        // nodes of images) through the store.
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(io_ctx(|| format!("make {} private", root.display())))?;
        }
        let root =
            fs::canonicalize(root).map_err(io_ctx(|| format!("resolve {}", root.display())))?;
        let store = ImageStore {
            root,
            limits: ImageLimits::default(),
        };
        {
            let _lock = store.lock(true)?;
            store.clean_staging()?;
            store.collect_layers()?;
        }
        Ok(store)
    }

    /// The root directory of the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store with these caps on what it imports, fetches and unpacks
    /// (the defaults until then).
    pub fn with_limits(mut self, limits: ImageLimits) -> ImageStore {
        self.limits = limits;
        self
    }

    /// The caps in force.
    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    fn lock(&self, exclusive: bool) -> Result<StoreLock, ImageError> {
        let path = self.root.join("lock");
        // A new open file description per acquisition: flock then excludes other threads of
        // this process as well as other processes.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_ctx(|| format!("open {}", path.display())))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        rustix::fs::flock(file.as_fd(), op)
            .map_err(io_ctx(|| format!("lock {}", path.display())))?;
        Ok(StoreLock { _file: file })
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(diff_id)
    }

    fn image_path(&self, id_hex: &str) -> PathBuf {
        self.root.join("images").join(format!("{id_hex}.json"))
    }

    /// Removes staging dirs whose import is no longer alive (their lock file is free).
    fn clean_staging(&self) -> Result<(), ImageError> {
        let tmp = self.root.join("tmp");
        let entries = fs::read_dir(&tmp).map_err(io_ctx(|| format!("list {}", tmp.display())))?;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "lock") {
                continue;
            }
            let lock_path = path.with_extension("lock");
            let alive = match File::open(&lock_path) {
                Ok(f) => {
                    rustix::fs::flock(f.as_fd(), FlockOperation::NonBlockingLockExclusive).is_err()
                }
                Err(_) => false,
            };
            if !alive {
                if path.is_dir() {
                    fs::remove_dir_all(&path)
                        .map_err(io_ctx(|| format!("remove {}", path.display())))?;
                } else {
                    let _ = fs::remove_file(&path);
                }
                let _ = fs::remove_file(&lock_path);
            }
        }
        Ok(())
    }

    fn new_staging(&self) -> Result<Staging, ImageError> {
        let tmp = self.root.join("tmp");
        loop {
            let n = format!(
                "{}-{}-{}",
                std::process::id(),
                STAGING_SEQ.fetch_add(1, Ordering::Relaxed),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos())
            );
            let lock_path = tmp.join(format!("{n}.lock"));
            let lock = File::create(&lock_path)
                .map_err(io_ctx(|| format!("create {}", lock_path.display())))?;
            rustix::fs::flock(lock.as_fd(), FlockOperation::LockExclusive)
                .map_err(io_ctx(|| format!("lock {}", lock_path.display())))?;
            let dir = tmp.join(&n);
            match fs::create_dir(&dir) {
                Ok(()) => {
                    return Ok(Staging {
                        dir,
                        lock_path,
                        _lock: lock,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_ctx(|| format!("create {}", dir.display()))(e)),
            }
        }
    }

    fn load_refs(&self) -> Result<RefsFile, ImageError> {
        Ok(
            read_json(&self.root.join("refs.json"))?.unwrap_or(RefsFile {
                version: RECORD_VERSION,
                refs: BTreeMap::new(),
            }),
        )
    }

    fn save_refs(&self, refs: &RefsFile) -> Result<(), ImageError> {
        write_atomic(&self.root.join("refs.json"), &to_json(refs))
    }

    fn load_images(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_ctx(|| format!("list {}", dir.display())))? {
            let path = e
                .map_err(io_ctx(|| format!("list {}", dir.display())))?
                .path();
            if path.extension().is_some_and(|x| x == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                if let Some(r) = read_json::<ImageRecord>(&path)? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    fn load_image(&self, id_hex: &str) -> Result<Option<ImageRecord>, ImageError> {
        read_json(&self.image_path(id_hex))
    }

    /// Deletes the blobs no image names. Call under the lock.
    fn collect_blobs(&self, images: &[ImageRecord]) -> Result<(), ImageError> {
        let used: BTreeSet<&str> = images
            .iter()
            .flat_map(|r| {
                let blobs = r.blobs.iter().chain(&r.manifest).map(|b| &b.digest[7..]);
                std::iter::once(&r.id[7..]).chain(blobs)
            })
            .collect();
        let dir = self.blobs_dir().join("sha256");
        for e in fs::read_dir(&dir).map_err(io_ctx(|| format!("list {}", dir.display())))? {
            let e = e.map_err(io_ctx(|| format!("list {}", dir.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !used.contains(name.as_str()) {
                fs::remove_file(e.path())
                    .map_err(io_ctx(|| format!("remove {}", e.path().display())))?;
            }
        }
        Ok(())
    }

    /// Moves layer dirs that no image uses into tmp/ and deletes them, and deletes unused
    /// blobs. Call under the lock.
    fn collect_layers(&self) -> Result<(), ImageError> {
        let images = self.load_images()?;
        self.collect_blobs(&images)?;
        let used: BTreeSet<String> = images.into_iter().flat_map(|r| r.diff_ids).collect();
        let dir = self.root.join("layers");
        for e in fs::read_dir(&dir).map_err(io_ctx(|| format!("list {}", dir.display())))? {
            let e = e.map_err(io_ctx(|| format!("list {}", dir.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if used.contains(&name) {
                continue;
            }
            let _ = fs::remove_file(self.short_link(&name));
            let trash = self.root.join("tmp").join(format!("gc-{name}"));
            let _ = fs::remove_dir_all(&trash);
            fs::rename(e.path(), &trash).map_err(io_ctx(|| {
                format!("move {} to {}", e.path().display(), trash.display())
            }))?;
            fs::remove_dir_all(&trash).map_err(io_ctx(|| format!("remove {}", trash.display())))?;
        }
        Ok(())
    }

    fn short_link(&self, diff_id: &str) -> PathBuf {
        self.root.join("l").join(&diff_id[..16])
    }

    /// Imports an image from a `docker save` tar or an OCI image-layout tar (plain or gzip).
    /// Layers already in the store are not read again; the references in the archive are
    /// pointed at the image (moved from another image if they named one). An archive with
    /// several images imports them all ([`ImageStore::import_all`]); this returns the first.
    pub fn import(&self, tar: &Path) -> Result<ImageSummary, ImageError> {
        Ok(self
            .import_all(tar)?
            .into_iter()
            .next()
            .expect("an archive has at least one image"))
    }

    /// Imports every image of an archive (`docker save` of several, `podman save -m`, an OCI
    /// layout with several manifests), each tagged with its names, in the archive's order.
    /// Every manifest and config is read and checked before the first image is committed;
    /// each image is then committed whole, so a later image whose layer is refused leaves
    /// the earlier ones imported and nothing of itself.
    pub fn import_all(&self, tar: &Path) -> Result<Vec<ImageSummary>, ImageError> {
        let staging = self.new_staging()?;
        let outer = OuterArchive::open(tar, &staging.dir, &self.limits)?;
        let plans = archive::plans(&outer)?;
        let mut out = Vec::with_capacity(plans.len());
        for plan in plans {
            out.push(self.commit_import(&staging, plan, import::Source::Archive(&outer))?);
        }
        Ok(out)
    }

    /// What the image a reference names is made of, for a node that lacks it: config and
    /// layer blobs with their digests and sizes. `None`: no such image.
    pub fn manifest(&self, reference: &str) -> Result<Option<ImageManifest>, ImageError> {
        let Some((id, record, refs)) = self.find_with_blobs(reference)? else {
            return Ok(None);
        };
        let (config_size, disk) = match &record.disk {
            Some(d) => (
                record.size,
                Some(taba_types::wire::DiskDescriptor {
                    format: d.format,
                    virtual_size: d.virtual_size,
                }),
            ),
            None => (record.config_size, None),
        };
        Ok(Some(ImageManifest {
            protocol: taba_types::wire::PROTOCOL,
            refs: Self::refs_of(&refs, &id),
            config: BlobDescriptor {
                digest: id.clone(),
                size: config_size,
            },
            layers: layer_descriptors(&record),
            id,
            disk,
        }))
    }

    /// Opens a blob by digest (`sha256:<hex>`, checked strictly) with its size. `None`: the
    /// store does not have it.
    pub fn open_blob(&self, digest: &str) -> Result<Option<(File, u64)>, ImageError> {
        let hex = parse_digest(digest)?;
        let path = blobs::blob_path(&self.blobs_dir(), hex);
        match File::open(&path) {
            Ok(f) => {
                let len = f
                    .metadata()
                    .map_err(io_ctx(|| format!("stat {}", path.display())))?
                    .len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_ctx(|| format!("open {}", path.display()))(e)),
        }
    }

    /// The image `reference` names: its id, its record and the refs file it was found in.
    /// `None`: no such image; an error when the blobs it came with were not kept.
    fn find_with_blobs(
        &self,
        reference: &str,
    ) -> Result<Option<(String, ImageRecord, RefsFile)>, ImageError> {
        let refs = self.load_refs()?;
        let Some((id, _)) = self.find(reference, &refs)? else {
            return Ok(None);
        };
        let Some(record) = self.load_image(&id[7..])? else {
            return Ok(None);
        };
        if !record.has_blobs() {
            return Err(ImageError::NoBlobs(id));
        }
        Ok(Some((id, record, refs)))
    }

    fn refs_of(refs: &RefsFile, id: &str) -> Vec<String> {
        refs.refs
            .iter()
            .filter(|(_, v)| v.as_str() == id)
            .map(|(k, _)| reference::familiar(k))
            .collect()
    }

    fn summary(&self, r: &ImageRecord, refs: &RefsFile) -> ImageSummary {
        ImageSummary {
            id: r.id.clone(),
            refs: Self::refs_of(refs, &r.id),
            size: r.size,
            layers: r.diff_ids.len(),
            created: r.created.clone(),
            kind: if r.disk.is_some() {
                "disk"
            } else {
                "container"
            },
            format: r.disk.as_ref().map(|d| d.format.qemu_name()),
        }
    }

    /// All images, sorted by their first reference (untagged ones last, by id).
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let refs = self.load_refs()?;
        let mut out: Vec<ImageSummary> = self
            .load_images()?
            .iter()
            .map(|r| self.summary(r, &refs))
            .collect();
        out.sort_by(|a, b| {
            (a.refs.is_empty(), a.refs.first(), &a.id).cmp(&(
                b.refs.is_empty(),
                b.refs.first(),
                &b.id,
            ))
        });
        Ok(out)
    }

    /// Finds the image id a reference names: a reference, `sha256:<id or prefix>`, or a bare
    /// hex id prefix of at least 4 digits when no reference has that name.
    fn find(
        &self,
        reference: &str,
        refs: &RefsFile,
    ) -> Result<Option<(String, Option<String>)>, ImageError> {
        let by_prefix = |prefix: &str| -> Result<Option<String>, ImageError> {
            let ids: Vec<String> = self
                .load_images()?
                .into_iter()
                .map(|r| r.id)
                .filter(|id| id[7..].starts_with(prefix))
                .collect();
            match ids.len() {
                0 => Ok(None),
                1 => Ok(ids.into_iter().next()),
                n => Err(ImageError::InvalidReference {
                    reference: reference.to_string(),
                    reason: format!("id prefix matches {n} images; give more digits"),
                }),
            }
        };
        match reference::lookup(reference)? {
            Lookup::Id(prefix) => Ok(by_prefix(&prefix)?.map(|id| (id, None))),
            Lookup::Name {
                canonical,
                id_prefix,
            } => {
                if let Some(id) = refs.refs.get(&canonical) {
                    return Ok(Some((id.clone(), Some(canonical))));
                }
                match id_prefix {
                    Some(p) => Ok(by_prefix(&p)?.map(|id| (id, None))),
                    None => Ok(None),
                }
            }
        }
    }

    /// Looks a container image up by reference (`busybox`, `busybox:latest`,
    /// `docker.io/library/busybox:latest`), `sha256:<id>` or an id prefix.
    /// `None` for a disk image ([`ImageStore::resolve_disk`]).
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let refs = self.load_refs()?;
        let Some((id, _)) = self.find(reference, &refs)? else {
            return Ok(None);
        };
        let Some(record) = self.load_image(&id[7..])? else {
            return Ok(None);
        };
        if record.disk.is_some() {
            return Ok(None);
        }
        Ok(Some(Image {
            refs: Self::refs_of(&refs, &id),
            layers: record
                .diff_ids
                .iter()
                .map(|d| self.layer_dir(d).join("fs"))
                .collect(),
            id,
            config: record.config,
        }))
    }

    /// The reference a job version should record for `reference`: pinned to the registry
    /// digest the store has for the image when it was pulled (`repo:tag@sha256:<manifest>`),
    /// so a later pull that moves the tag does not change what the version runs; as given
    /// for an id, a digest reference or an imported image. `None`: no such image here.
    pub fn pinned(&self, reference: &str) -> Result<Option<String>, ImageError> {
        let refs = self.load_refs()?;
        let Some((id, canonical)) = self.find(reference, &refs)? else {
            return Ok(None);
        };
        let Some(canonical) = canonical.filter(|c| !c.contains('@')) else {
            return Ok(Some(reference.to_string()));
        };
        let repo = canonical
            .rsplit_once(':')
            .map_or(canonical.as_str(), |(r, _)| r);
        let prefix = format!("{repo}@");
        let digest = refs
            .refs
            .iter()
            .find(|(k, v)| **v == id && k.starts_with(&prefix))
            .map(|(k, _)| k[prefix.len()..].to_string());
        Ok(Some(match digest {
            Some(d) => format!("{reference}@{d}"),
            None => reference.to_string(),
        }))
    }

    /// Names the image `source` resolves to `target` too (a `name[:tag]`; a digest reference
    /// is what a pull records, not a name to give). An existing `target` is moved.
    pub fn tag(&self, source: &str, target: &str) -> Result<ImageSummary, ImageError> {
        let canonical = reference::Reference::parse(target)?.canonical();
        if canonical.contains('@') {
            return Err(ImageError::InvalidReference {
                reference: target.to_string(),
                reason: "a tag is name[:tag]; digests are given by pulls".into(),
            });
        }
        let _lock = self.lock(true)?;
        let mut refs = self.load_refs()?;
        let Some((id, _)) = self.find(source, &refs)? else {
            return Err(ImageError::NotFound(source.to_string()));
        };
        let record = self
            .load_image(&id[7..])?
            .ok_or_else(|| ImageError::NotFound(source.to_string()))?;
        refs.refs.insert(canonical, id);
        self.save_refs(&refs)?;
        Ok(self.summary(&record, &refs))
    }

    /// Removes every image whose id is not in `keep` (the images jobs and allocations use)
    /// and that no mounted container uses, with all its references; then the layers and
    /// blobs no remaining image uses. Returns what was removed.
    pub fn prune(&self, keep: &BTreeSet<String>) -> Result<Vec<ImageSummary>, ImageError> {
        let _lock = self.lock(true)?;
        let mut refs = self.load_refs()?;
        let leased: BTreeSet<String> = self.live_leases()?.into_iter().map(|l| l.image).collect();
        let mut removed = Vec::new();
        for record in self.load_images()? {
            if keep.contains(&record.id) || leased.contains(&record.id) {
                continue;
            }
            removed.push(self.summary(&record, &refs));
            refs.refs.retain(|_, v| *v != record.id);
        }
        if removed.is_empty() {
            return Ok(removed);
        }
        self.save_refs(&refs)?;
        for s in &removed {
            let path = self.image_path(&s.id[7..]);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_ctx(|| format!("remove {}", path.display()))(e)),
            }
        }
        self.collect_layers()?;
        Ok(removed)
    }

    /// The id of the image `reference` names, if the store has it.
    pub fn id_of(&self, reference: &str) -> Result<Option<String>, ImageError> {
        let refs = self.load_refs()?;
        Ok(self.find(reference, &refs)?.map(|(id, _)| id))
    }

    /// Removes a reference; an image left without references is deleted, and so are the
    /// layers no other image uses. An id (`sha256:...`) removes the image and all its
    /// references. Fails with [`ImageError::InUse`] (changing nothing) if the image would be
    /// deleted while a mounted container rootfs uses it.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let _lock = self.lock(true)?;
        let mut refs = self.load_refs()?;
        let Some((id, canonical)) = self.find(reference, &refs)? else {
            return Err(ImageError::NotFound(reference.to_string()));
        };
        match &canonical {
            Some(c) => {
                refs.refs.remove(c);
            }
            None => refs.refs.retain(|_, v| *v != id),
        }
        let delete = !refs.refs.values().any(|v| *v == id);
        if delete {
            if let Some(lease) = self.live_leases()?.into_iter().find(|l| l.image == id) {
                return Err(ImageError::InUse {
                    image: id,
                    container_dir: lease.container_dir,
                });
            }
        }
        self.save_refs(&refs)?;
        if delete {
            let path = self.image_path(&id[7..]);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_ctx(|| format!("remove {}", path.display()))(e)),
            }
            self.collect_layers()?;
        }
        Ok(())
    }

    fn lease_path(&self, container_dir: &Path) -> Result<PathBuf, ImageError> {
        let abs = mount::absolute(container_dir)?;
        let h = sha256_digest(abs.as_os_str().as_encoded_bytes());
        Ok(self.root.join("leases").join(format!("{}.json", &h[7..39])))
    }

    /// Leases whose rootfs is still mounted; stale ones are deleted. Call under the lock.
    fn live_leases(&self) -> Result<Vec<Lease>, ImageError> {
        let dir = self.root.join("leases");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_ctx(|| format!("list {}", dir.display())))? {
            let path = e
                .map_err(io_ctx(|| format!("list {}", dir.display())))?
                .path();
            let Ok(Some(lease)) = read_json::<Lease>(&path) else {
                continue;
            };
            if mount::is_mount_point(&mount::rootfs_of(&lease.container_dir))? {
                out.push(lease);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(out)
    }

    /// Mounts the image's root filesystem at `container_dir/rootfs` (an overlay with its
    /// writable `upper` and `work` dirs in `container_dir`) and records a lease that keeps the
    /// image from being removed. Already mounted with this image: returns the path as is
    /// (as after an agent restart).
    pub fn mount_rootfs(&self, image: &Image, container_dir: &Path) -> Result<PathBuf, ImageError> {
        self.mount_rootfs_with(image, container_dir, None)
    }

    /// [`mount_rootfs`](Self::mount_rootfs) for a container in a user
    /// namespace: each layer is an idmapped mount through `idmap.userns`
    /// (a file of uid N on disk appears as the range's N), and the upper
    /// and work dirs belong to the range's root (`idmap.uid`, `idmap.gid`),
    /// so what the container writes is the range's on the host. The shared
    /// layers on disk are not changed.
    pub fn mount_rootfs_idmapped(
        &self,
        image: &Image,
        container_dir: &Path,
        idmap: IdMap<'_>,
    ) -> Result<PathBuf, ImageError> {
        self.mount_rootfs_with(image, container_dir, Some(idmap))
    }

    fn mount_rootfs_with(
        &self,
        image: &Image,
        container_dir: &Path,
        idmap: Option<IdMap<'_>>,
    ) -> Result<PathBuf, ImageError> {
        let _lock = self.lock(false)?;
        let id_hex = image.id.strip_prefix("sha256:").unwrap_or(&image.id);
        let record = self
            .load_image(id_hex)?
            .ok_or_else(|| ImageError::NotFound(image.id.clone()))?;
        for sub in ["rootfs", "upper", "work"] {
            let d = container_dir.join(sub);
            fs::create_dir_all(&d).map_err(io_ctx(|| format!("create {}", d.display())))?;
        }
        let container_dir = fs::canonicalize(container_dir)
            .map_err(io_ctx(|| format!("resolve {}", container_dir.display())))?;
        let rootfs = container_dir.join("rootfs");
        let lease_path = self.lease_path(&container_dir)?;
        let lease = Lease {
            version: RECORD_VERSION,
            container_dir: container_dir.clone(),
            image: record.id.clone(),
        };
        if mount::is_mount_point(&rootfs)? {
            match read_json::<Lease>(&lease_path)? {
                Some(l) if l.image != record.id => {
                    return Err(ImageError::RootfsConflict {
                        container_dir,
                        mounted: l.image,
                        requested: record.id,
                    })
                }
                Some(_) => {}
                None => write_file(&lease_path, &to_json(&lease), false)?,
            }
            return Ok(rootfs);
        }
        let lowers: Vec<PathBuf> = record
            .diff_ids
            .iter()
            .rev()
            .map(|d| self.layer_dir(d).join("fs"))
            .collect();
        if let Some(missing) = lowers.iter().find(|l| !l.is_dir()) {
            return Err(ImageError::NotFound(format!(
                "{} (layer {})",
                record.id,
                missing.display()
            )));
        }
        // Idmapped: detached idmapped copies of the layers, named through /proc/self/fd
        // (held open until the overlay is made), and the writable dirs the range's.
        let mut held = Vec::new();
        let lowers = match &idmap {
            None => lowers,
            Some(m) => {
                for sub in ["upper", "work"] {
                    let d = container_dir.join(sub);
                    rustix::fs::chown(
                        &d,
                        Some(rustix::fs::Uid::from_raw(m.uid)),
                        Some(rustix::fs::Gid::from_raw(m.gid)),
                    )
                    .map_err(io_ctx(|| format!("chown {}", d.display())))?;
                }
                let mut out = Vec::new();
                for l in &lowers {
                    let fd = mount::idmapped_clone(l, m.userns)?;
                    out.push(PathBuf::from(format!(
                        "/proc/self/fd/{}",
                        std::os::fd::AsRawFd::as_raw_fd(&fd)
                    )));
                    held.push(fd);
                }
                out
            }
        };
        // Not fsync'd: a lease only matters while its mount exists, and no mount outlives a
        // crash of the host.
        write_file(&lease_path, &to_json(&lease), false)?;
        let idmapped = idmap.is_some();
        let proc_lowers = lowers.clone();
        let short = || {
            if idmapped {
                return Ok(proc_lowers);
            }
            Ok(record
                .diff_ids
                .iter()
                .rev()
                .map(|d| self.short_link(d))
                .collect())
        };
        let mounted = mount::mount_overlay(
            &lowers,
            short,
            &container_dir.join("upper"),
            &container_dir.join("work"),
            &rootfs,
        );
        drop(held);
        if let Err(e) = mounted {
            let _ = fs::remove_file(&lease_path);
            return Err(e);
        }
        Ok(rootfs)
    }

    /// Unmounts `container_dir/rootfs` (detached: lazily, open files keep working) and drops
    /// its lease. Not mounted: nothing to do. The upper dir is kept; deleting the container dir
    /// is the caller's.
    pub fn unmount_rootfs(&self, container_dir: &Path) -> Result<(), ImageError> {
        let _lock = self.lock(false)?;
        mount::unmount_all(&mount::rootfs_of(container_dir))?;
        let lease = self
            .lease_path(&fs::canonicalize(container_dir).unwrap_or(container_dir.to_path_buf()))?;
        match fs::remove_file(&lease) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_ctx(|| format!("remove {}", lease.display()))(e)),
        }
    }
}

/// How [`ImageStore::mount_rootfs_idmapped`] maps a container's ids.
#[derive(Debug, Clone, Copy)]
pub struct IdMap<'a> {
    /// A user namespace whose maps the layers take.
    pub userns: std::os::fd::BorrowedFd<'a>,
    /// Host uid of the container's root.
    pub uid: u32,
    /// Host gid of the container's root.
    pub gid: u32,
}

/// An image's layers as a manifest describes them, with their diff ids.
fn layer_descriptors(record: &ImageRecord) -> Vec<LayerDescriptor> {
    record
        .blobs
        .iter()
        .zip(&record.diff_ids)
        .map(|(b, d)| LayerDescriptor {
            media_type: b.media_type.clone(),
            digest: b.digest.clone(),
            size: b.size,
            diff_id: format!("sha256:{d}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ImageStore>();
    }

    #[test]
    fn ids_and_refs_resolve_on_an_empty_store() {
        let d = tempfile::tempdir().unwrap();
        let s = ImageStore::open(d.path()).unwrap();
        assert!(s.resolve("busybox").unwrap().is_none());
        assert!(s.resolve("sha256:abcd").unwrap().is_none());
        assert!(matches!(s.remove("busybox"), Err(ImageError::NotFound(r)) if r == "busybox"));
        assert!(matches!(
            s.resolve("Bad Ref"),
            Err(ImageError::InvalidReference { .. })
        ));
        assert!(s.list().unwrap().is_empty());
    }
}
