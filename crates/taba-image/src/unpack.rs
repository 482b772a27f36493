//! Unpacking one layer tar into a directory, safely and with everything a root filesystem needs.
//!
//! Every path is resolved one component at a time from an fd of the layer root with
//! `O_NOFOLLOW`, so no entry can be written outside the layer or through a symlink (an earlier
//! entry may create a symlink named `a`; a later `a/x` is rejected as [`ImageError::UnsafePath`]).
//! Names with `..` or a leading `/` are rejected the same way. GNU sparse entries are refused
//! (their stated size is not bounded by the bytes in the layer). Hard links must point at an
//! earlier entry of the same layer. Ownership, permissions (set after chown, so set-id bits
//! stay), xattrs (PAX `SCHILY.xattr.*`) and mtimes are applied; directory mtimes last.
//! OCI whiteouts become what overlayfs reads: `.wh.name` a 0:0 character device `name`,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory. Xattrs in the
//! `trusted.overlay.` namespace from the archive itself are dropped: they would steer overlayfs.
//!
//! The whole compressed stream is hashed as it is read (blob digest) and so is the
//! decompressed stream (`diff_id`); both are compared after the tar is read to the end.
//! The decompressed stream is bounded as it comes out of the decompressor
//! ([`crate::limits::Bounded`]: `max_layer_unpacked`, `max_layer_ratio`), and the entries by
//! `max_layer_entries`, so a decompression bomb stops at a cap instead of filling the disk.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::archive::{copy_split, hex, CopyError};
use crate::error::{io_ctx, ImageError};
use crate::limits::{exceeded, Bounded, Counting, ImageLimits, Tripped};

/// Hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

type Raw<R> = BufReader<Hashing<Counting<R>>>;

enum Decoder<R: Read> {
    Plain(Raw<R>),
    Gzip(flate2::read::MultiGzDecoder<Raw<R>>),
    Zstd(Box<ruzstd::decoding::StreamingDecoder<Raw<R>, ruzstd::decoding::FrameDecoder>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

impl<R: Read> Decoder<R> {
    fn into_raw(self) -> Raw<R> {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(r) => r.into_inner(),
            Decoder::Zstd(r) => r.into_inner(),
        }
    }
}

/// What unpacking a layer found.
#[derive(Debug, Clone)]
pub(crate) struct Unpacked {
    /// Bytes of regular file content.
    pub size: u64,
}

fn bad_layer(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::archive(format!("layer {what}: {e}"))
}

/// Splits an entry name into components; `..` and absolute names are unsafe.
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, ImageError> {
    let unsafe_path = || ImageError::UnsafePath(String::from_utf8_lossy(raw).into_owned());
    if raw.first() == Some(&b'/') {
        return Err(unsafe_path());
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_path()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn os(c: &[u8]) -> &OsStr {
    OsStr::from_bytes(c)
}

fn display(comps: &[Vec<u8>]) -> String {
    let v: Vec<_> = comps.iter().map(|c| String::from_utf8_lossy(c)).collect();
    format!("/{}", v.join("/"))
}

/// The layer being written: its root fd and a cache of the last parent directory opened.
struct Layer {
    root: PathBuf,
    root_fd: OwnedFd,
    cached: Option<(Vec<Vec<u8>>, OwnedFd)>,
    dir_times: Vec<(Vec<Vec<u8>>, u64)>,
}

impl Layer {
    fn io(&self, what: &str, comps: &[Vec<u8>]) -> impl FnOnce(Errno) -> ImageError {
        let ctx = format!("{what} {}{}", self.root.display(), display(comps));
        move |e| ImageError::Io {
            context: ctx,
            source: e.into(),
        }
    }

    /// Opens directory `comps` under the root without following any symlink; creates missing
    /// directories (mode 0755, root-owned) when `create`.
    fn open_dir(
        &self,
        comps: &[Vec<u8>],
        create: bool,
        final_flags: OFlags,
    ) -> Result<OwnedFd, ImageError> {
        let first = if comps.is_empty() {
            final_flags
        } else {
            OFlags::PATH
        };
        let mut cur = rfs::openat(
            &self.root_fd,
            ".",
            first | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.io("open", &[]))?;
        for (i, c) in comps.iter().enumerate() {
            let flags = if i + 1 == comps.len() {
                final_flags
            } else {
                OFlags::PATH
            } | OFlags::DIRECTORY
                | OFlags::NOFOLLOW
                | OFlags::CLOEXEC;
            let mut created = false;
            cur = loop {
                match rfs::openat(&cur, os(c), flags, Mode::empty()) {
                    Ok(fd) => break fd,
                    Err(Errno::NOENT) if create && !created => {
                        match rfs::mkdirat(&cur, os(c), Mode::from_raw_mode(0o755)) {
                            Ok(()) | Err(Errno::EXIST) => created = true,
                            Err(e) => return Err(self.io("mkdir", &comps[..=i])(e)),
                        }
                    }
                    Err(Errno::NOENT) => {
                        return Err(ImageError::archive(format!(
                            "layer: {} does not exist",
                            display(&comps[..=i])
                        )))
                    }
                    Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                        let st = rfs::statat(&cur, os(c), AtFlags::SYMLINK_NOFOLLOW)
                            .map_err(self.io("stat", &comps[..=i]))?;
                        return Err(
                            if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                                ImageError::UnsafePath(format!(
                                    "{} (through a symlink)",
                                    display(comps)
                                ))
                            } else {
                                ImageError::archive(format!(
                                    "layer: {} is not a directory",
                                    display(&comps[..=i])
                                ))
                            },
                        );
                    }
                    Err(e) => return Err(self.io("open", &comps[..=i])(e)),
                }
            };
        }
        Ok(cur)
    }

    /// Opens the parent directory of an entry, creating it if missing; [`Layer::pfd`] is its
    /// fd afterwards (cached: tars list a directory's entries together).
    fn enter_parent(&mut self, comps: &[Vec<u8>]) -> Result<(), ImageError> {
        let parent = &comps[..comps.len() - 1];
        let hit = matches!(&self.cached, Some((p, _)) if p.as_slice() == parent);
        if !hit {
            self.cached = None;
            let fd = self.open_dir(parent, true, OFlags::PATH)?;
            self.cached = Some((parent.to_vec(), fd));
        }
        Ok(())
    }

    /// The fd of the directory last entered with [`Layer::enter_parent`].
    fn pfd(&self) -> &OwnedFd {
        &self.cached.as_ref().expect("parent entered").1
    }

    /// Makes room for a new entry: a directory stays if a directory comes again, anything else
    /// that is in the way is removed (a later tar entry replaces an earlier one).
    fn clear(&mut self, comps: &[Vec<u8>], keep_dir: bool) -> Result<bool, ImageError> {
        let name = os(comps.last().expect("non-empty"));
        self.enter_parent(comps)?;
        let parent = self.pfd();
        let st = match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io("stat", comps)(e)),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && keep_dir {
            return Ok(true);
        }
        if is_dir {
            // Parents were checked symlink-free above; remove_dir_all does not follow links.
            self.cached = None;
            let path = self.root.join(display(comps).trim_start_matches('/'));
            std::fs::remove_dir_all(&path)
                .map_err(io_ctx(|| format!("remove {}", path.display())))?;
        } else {
            rfs::unlinkat(self.pfd(), name, AtFlags::empty()).map_err(self.io("unlink", comps))?;
        }
        Ok(false)
    }
}

/// Metadata of one entry, with PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, what: &str) -> Result<Meta, ImageError> {
    let h = entry.header();
    let id = |v: io::Result<u64>, field: &str| -> Result<u32, ImageError> {
        let v = v.map_err(|e| bad_layer(what, format!("bad {field}: {e}")))?;
        u32::try_from(v).map_err(|_| bad_layer(what, format!("{field} {v} out of range")))
    };
    let mut meta = Meta {
        mode: h
            .mode()
            .map_err(|e| bad_layer(what, format!("bad mode: {e}")))?
            & 0o7777,
        uid: id(h.uid(), "uid")?,
        gid: id(h.gid(), "gid")?,
        mtime: h.mtime().unwrap_or(0),
        xattrs: Vec::new(),
    };
    if let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| bad_layer(what, format!("bad pax header: {e}")))?
    {
        for ext in exts {
            let ext = ext.map_err(|e| bad_layer(what, format!("bad pax header: {e}")))?;
            let key = ext.key_bytes();
            let num = || {
                std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(|v| v.split('.').next()?.parse::<u64>().ok())
            };
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                meta.xattrs
                    .push((name.to_vec(), ext.value_bytes().to_vec()));
            } else if key == b"uid" {
                meta.uid = num()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(meta.uid);
            } else if key == b"gid" {
                meta.gid = num()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(meta.gid);
            } else if key == b"mtime" {
                meta.mtime = num().unwrap_or(meta.mtime);
            }
        }
    }
    meta.xattrs
        .retain(|(name, _)| !name.starts_with(b"trusted.overlay."));
    Ok(meta)
}

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";

/// The raw and decompressed streams of a layer, each hashed as it is read,
/// the decompressed one bounded.
struct Streams<R: Read> {
    diff: Hashing<Bounded<Decoder<R>>>,
    compression: Compression,
    /// Which cap the decompressed stream hit, if any.
    tripped: Tripped,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Detects the compression from the first bytes of a blob.
    pub(crate) fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI media type of a layer blob compressed this way.
    pub(crate) fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

fn open_streams<R: Read>(
    src: R,
    what: &str,
    limits: &ImageLimits,
) -> Result<Streams<R>, ImageError> {
    let counting = Counting::new(src);
    let compressed = counting.n.clone();
    let mut raw = BufReader::with_capacity(
        256 * 1024,
        Hashing {
            inner: counting,
            hasher: Sha256::new(),
        },
    );
    let head = raw.fill_buf().map_err(|e| bad_layer(what, e))?;
    let compression = Compression::detect(head);
    let decoder = match compression {
        Compression::Gzip => Decoder::Gzip(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Zstd => Decoder::Zstd(Box::new(
            ruzstd::decoding::StreamingDecoder::new(raw)
                .map_err(|e| bad_layer(what, format!("bad zstd stream: {e}")))?,
        )),
        Compression::None => Decoder::Plain(raw),
    };
    let ratio_of = (compression != Compression::None).then_some(compressed);
    let bounded = Bounded::new(
        decoder,
        limits.max_layer_unpacked,
        "max_layer_unpacked",
        limits.max_layer_ratio,
        ratio_of,
    );
    let tripped = bounded.tripped();
    Ok(Streams {
        diff: Hashing {
            inner: bounded,
            hasher: Sha256::new(),
        },
        compression,
        tripped,
    })
}

/// What a layer blob turned out to be, once read to its end and checked.
#[derive(Debug, Clone)]
pub(crate) struct BlobFacts {
    /// Hex sha256 of the blob as stored.
    pub digest: String,
    /// Bytes of the blob as stored.
    pub size: u64,
    /// How it is compressed.
    pub compression: Compression,
}

/// Reads both streams to their ends (the digests cover every byte, padding included) and
/// checks them against the blob digest (`blob`, hex, when known) and the `diff_id` (hex).
fn finish_streams<R: Read>(
    mut diff: Hashing<Bounded<Decoder<R>>>,
    compression: Compression,
    blob: Option<&str>,
    diff_id: &str,
    what: &str,
) -> Result<BlobFacts, ImageError> {
    io::copy(&mut diff, &mut io::sink()).map_err(|e| bad_layer(what, e))?;
    let diff_actual = hex(&diff.hasher.finalize());
    let mut raw = diff.inner.inner.into_raw();
    io::copy(&mut raw, &mut io::sink()).map_err(|e| bad_layer(what, e))?;
    let raw = raw.into_inner();
    let blob_actual = hex(&raw.hasher.finalize());
    if let Some(blob) = blob {
        if blob != blob_actual {
            return Err(ImageError::DigestMismatch {
                expected: format!("sha256:{blob}"),
                actual: format!("sha256:{blob_actual}"),
            });
        }
    }
    if diff_id != diff_actual {
        return Err(ImageError::DigestMismatch {
            expected: format!("sha256:{diff_id}"),
            actual: format!("sha256:{diff_actual}"),
        });
    }
    Ok(BlobFacts {
        digest: blob_actual,
        size: raw.inner.n.get(),
        compression,
    })
}

/// Checks a layer blob without unpacking it: decompresses and hashes it, nothing written.
pub(crate) fn verify_layer<R: Read>(
    src: R,
    blob: Option<&str>,
    diff_id: &str,
    limits: &ImageLimits,
) -> Result<BlobFacts, ImageError> {
    let what = format!("sha256:{diff_id}");
    let s = open_streams(src, &what, limits)?;
    let tripped = s.tripped.clone();
    finish_streams(s.diff, s.compression, blob, diff_id, &what)
        .map_err(|e| exceeded(&format!("layer {what}"), &tripped).unwrap_or(e))
}

/// Unpacks a (possibly compressed) layer from `src` into the new directory `dest`, checking the
/// blob digest (`blob`, hex, of the bytes as stored) and the `diff_id` (hex, uncompressed).
pub(crate) fn unpack_layer<R: Read>(
    src: R,
    dest: &Path,
    blob: Option<&str>,
    diff_id: &str,
    limits: &ImageLimits,
) -> Result<(Unpacked, BlobFacts), ImageError> {
    let what = format!("sha256:{diff_id}");
    let mut tripped = None;
    unpack_bounded(src, dest, blob, diff_id, limits, &mut tripped).map_err(|e| {
        tripped
            .and_then(|t| exceeded(&format!("layer {what}"), &t))
            .unwrap_or(e)
    })
}

/// [`unpack_layer`], leaving the decompressed stream's cap report in `tripped`.
fn unpack_bounded<R: Read>(
    src: R,
    dest: &Path,
    blob: Option<&str>,
    diff_id: &str,
    limits: &ImageLimits,
    tripped: &mut Option<Tripped>,
) -> Result<(Unpacked, BlobFacts), ImageError> {
    let what = format!("sha256:{diff_id}");
    std::fs::create_dir(dest).map_err(io_ctx(|| format!("create {}", dest.display())))?;
    let root_fd = rfs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_ctx(|| format!("open {}", dest.display())))?;
    let streams = open_streams(src, &what, limits)?;
    *tripped = Some(streams.tripped.clone());
    let compression = streams.compression;
    let mut archive = tar::Archive::new(streams.diff);
    let mut layer = Layer {
        root: dest.to_path_buf(),
        root_fd,
        cached: None,
        dir_times: Vec::new(),
    };
    let mut size = 0u64;
    for (n, entry) in archive
        .entries()
        .map_err(|e| bad_layer(&what, e))?
        .enumerate()
    {
        let mut entry = entry.map_err(|e| bad_layer(&what, e))?;
        check_bounds(n, size, &entry, &what, limits)?;
        size += unpack_entry(&mut layer, &mut entry, &what)?;
    }
    // Directory mtimes last, deepest first, so creating their children does not change them.
    for (comps, mtime) in layer.dir_times.iter().rev() {
        let (parent, name) = match comps.split_last() {
            Some((name, parent)) => (layer.open_dir(parent, false, OFlags::PATH)?, os(name)),
            None => (layer.open_dir(&[], false, OFlags::PATH)?, OsStr::new(".")),
        };
        rfs::utimensat(&parent, name, &times(*mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(layer.io("set times of", comps))?;
    }
    let facts = finish_streams(archive.into_inner(), compression, blob, diff_id, &what)?;
    Ok((Unpacked { size }, facts))
}

/// Refuses the `n`th entry (0-based) when the layer would exceed its bounds with it: more
/// entries than `max_layer_entries` (each is at least an inode), or file contents declared
/// past `max_layer_unpacked` (refused before the entry is written; the decompressed stream
/// is bounded as well, whatever the headers say).
fn check_bounds<R: Read>(
    n: usize,
    written: u64,
    entry: &tar::Entry<'_, R>,
    what: &str,
    limits: &ImageLimits,
) -> Result<(), ImageError> {
    let too_large = |limit, reason| ImageError::LimitExceeded {
        what: format!("layer {what}"),
        limit,
        reason,
    };
    if n as u64 >= limits.max_layer_entries {
        return Err(too_large(
            "max_layer_entries",
            format!("more than {} entries", limits.max_layer_entries),
        ));
    }
    let declared = entry.header().size().unwrap_or(0);
    if written.saturating_add(declared) > limits.max_layer_unpacked {
        return Err(too_large(
            "max_layer_unpacked",
            format!(
                "unpacks to more than {} bytes (a decompression bomb?)",
                limits.max_layer_unpacked
            ),
        ));
    }
    Ok(())
}

/// Writes one entry; returns the bytes of file content written.
fn unpack_entry<R: Read>(
    layer: &mut Layer,
    entry: &mut tar::Entry<'_, R>,
    what: &str,
) -> Result<u64, ImageError> {
    let comps = components(&entry.path_bytes())?;
    let kind = entry.header().entry_type();
    let meta = read_meta(entry, what)?;
    let Some(name) = comps.last().cloned() else {
        // The layer root itself ("./"): only its metadata.
        if kind.is_dir() {
            let root = layer.open_dir(&[], false, OFlags::RDONLY)?;
            apply_fd_meta(layer, &root, &meta, &comps)?;
            layer.dir_times.push((comps, meta.mtime));
        }
        return Ok(0);
    };
    if name == OPAQUE {
        let parent = &comps[..comps.len() - 1];
        let dir = layer.open_dir(parent, true, OFlags::RDONLY)?;
        rfs::fsetxattr(
            &dir,
            "trusted.overlay.opaque",
            b"y",
            rfs::XattrFlags::empty(),
        )
        .map_err(layer.io("set trusted.overlay.opaque on", parent))?;
        return Ok(0);
    }
    if name.starts_with(b".wh..wh.") {
        return Ok(0); // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): nothing to write
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT) {
        if hidden.is_empty() {
            return Err(bad_layer(
                what,
                format!("empty whiteout name {}", display(&comps)),
            ));
        }
        let mut target = comps.clone();
        *target.last_mut().expect("non-empty") = hidden.to_vec();
        layer.clear(&target, false)?;
        layer.enter_parent(&target)?;
        let parent = layer.pfd();
        rfs::mknodat(
            parent,
            os(hidden),
            FileType::CharacterDevice,
            Mode::empty(),
            rfs::makedev(0, 0),
        )
        .map_err(layer.io("create whiteout", &target))?;
        return Ok(0);
    }
    let name = os(&name).to_os_string();
    let mode = Mode::from_raw_mode(meta.mode);
    let owner = (
        Some(rfs::Uid::from_raw(meta.uid)),
        Some(rfs::Gid::from_raw(meta.gid)),
    );
    match kind {
        tar::EntryType::Directory => {
            if !layer.clear(&comps, true)? {
                layer.enter_parent(&comps)?;
                let parent = layer.pfd();
                rfs::mkdirat(parent, &name, Mode::from_raw_mode(0o700))
                    .map_err(layer.io("mkdir", &comps))?;
            }
            let dir = layer.open_dir(&comps, false, OFlags::RDONLY)?;
            apply_fd_meta(layer, &dir, &meta, &comps)?;
            layer.dir_times.push((comps, meta.mtime));
            Ok(0)
        }
        // A GNU sparse entry states its size apart from the bytes it carries: a 1.5 KiB layer
        // can ask for a 1 TiB file of zeros, which would be written out in full (fuzz finding).
        // The OCI layer format says sparse files SHOULD NOT be used; they are refused.
        tar::EntryType::GNUSparse => Err(bad_layer(
            what,
            format!(
                "{} is a sparse file; sparse files are not supported in layers",
                display(&comps)
            ),
        )),
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            layer.clear(&comps, false)?;
            layer.enter_parent(&comps)?;
            let parent = layer.pfd();
            let fd = rfs::openat(
                parent,
                &name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(layer.io("create", &comps))?;
            let mut file = File::from(fd);
            let ctx = || format!("{}{}", layer.root.display(), display(&comps));
            let n = copy_split(entry, &mut file, ctx).map_err(|e| match e {
                CopyError::Read(e) => bad_layer(what, format!("{}: {e}", display(&comps))),
                CopyError::Write(e) => e,
            })?;
            apply_fd_meta(layer, &file, &meta, &comps)?;
            rfs::futimens(&file, &times(meta.mtime)).map_err(layer.io("set times of", &comps))?;
            Ok(n)
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    bad_layer(what, format!("symlink {} has no target", display(&comps)))
                })?
                .into_owned();
            layer.clear(&comps, false)?;
            layer.enter_parent(&comps)?;
            let parent = layer.pfd();
            rfs::symlinkat(os(&target), parent, &name).map_err(layer.io("symlink", &comps))?;
            rfs::chownat(parent, &name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(layer.io("chown", &comps))?;
            if !meta.xattrs.is_empty() {
                // Parents are symlink-free (checked when the link was made); lsetxattr does
                // not follow the link itself.
                let path = layer.root.join(display(&comps).trim_start_matches('/'));
                for (k, v) in &meta.xattrs {
                    rfs::lsetxattr(&path, os(k), v, rfs::XattrFlags::empty())
                        .map_err(layer.io("set xattr on", &comps))?;
                }
            }
            rfs::utimensat(parent, &name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(layer.io("set times of", &comps))?;
            Ok(0)
        }
        tar::EntryType::Link => {
            let target = entry.link_name_bytes().ok_or_else(|| {
                bad_layer(what, format!("hard link {} has no target", display(&comps)))
            })?;
            let tcomps = components(&target)?;
            let Some((tname, tparent)) = tcomps.split_last() else {
                return Err(bad_layer(
                    what,
                    format!("hard link {} to the root", display(&comps)),
                ));
            };
            layer.clear(&comps, false)?;
            let src_dir = layer.open_dir(tparent, false, OFlags::PATH)?;
            layer.enter_parent(&comps)?;
            let parent = layer.pfd();
            match rfs::linkat(&src_dir, os(tname), parent, &name, AtFlags::empty()) {
                Ok(()) => Ok(0),
                Err(Errno::NOENT) => Err(bad_layer(
                    what,
                    format!(
                        "hard link {} to {} which is not in the layer",
                        display(&comps),
                        display(&tcomps)
                    ),
                )),
                Err(e) => Err(layer.io("link", &comps)(e)),
            }
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let h = entry.header();
            let dev = |v: io::Result<Option<u32>>| v.ok().flatten().unwrap_or(0);
            let (major, minor) = (dev(h.device_major()), dev(h.device_minor()));
            let ftype = match kind {
                tar::EntryType::Char => FileType::CharacterDevice,
                tar::EntryType::Block => FileType::BlockDevice,
                _ => FileType::Fifo,
            };
            layer.clear(&comps, false)?;
            layer.enter_parent(&comps)?;
            let parent = layer.pfd();
            rfs::mknodat(
                parent,
                &name,
                ftype,
                Mode::empty(),
                rfs::makedev(major, minor),
            )
            .map_err(layer.io("mknod", &comps))?;
            rfs::chownat(parent, &name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(layer.io("chown", &comps))?;
            rfs::chmodat(parent, &name, mode, AtFlags::empty())
                .map_err(layer.io("chmod", &comps))?;
            rfs::utimensat(parent, &name, &times(meta.mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(layer.io("set times of", &comps))?;
            Ok(0)
        }
        // PAX and GNU long-name headers are folded into the next entry by the tar reader;
        // anything else (volume labels, multi-volume parts) carries no file.
        _ => Ok(0),
    }
}

/// Owner, then mode (chown clears set-id bits), then xattrs, on an open fd.
fn apply_fd_meta(
    layer: &Layer,
    fd: impl AsFd,
    meta: &Meta,
    comps: &[Vec<u8>],
) -> Result<(), ImageError> {
    rfs::fchown(
        &fd,
        Some(rfs::Uid::from_raw(meta.uid)),
        Some(rfs::Gid::from_raw(meta.gid)),
    )
    .map_err(layer.io("chown", comps))?;
    rfs::fchmod(&fd, Mode::from_raw_mode(meta.mode)).map_err(layer.io("chmod", comps))?;
    for (k, v) in &meta.xattrs {
        rfs::fsetxattr(&fd, os(k), v, rfs::XattrFlags::empty())
            .map_err(layer.io("set xattr on", comps))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_larger_than_the_bound_is_refused_before_the_entry_is_written() {
        // A tar header declaring one file just over the bound (the data never comes).
        let mut h = tar::Header::new_gnu();
        h.set_path("big").unwrap();
        h.set_size(ImageLimits::default().max_layer_unpacked + 1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut blob = h.as_bytes().to_vec();
        blob.extend_from_slice(&[0u8; 1024]);
        let tmp = std::env::temp_dir().join(format!("taba-bomb-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let err = unpack_layer(
            &blob[..],
            &tmp,
            None,
            &"0".repeat(64),
            &ImageLimits::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        assert!(!tmp.join("big").exists(), "the file was created");
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn sparse_entries_are_refused_before_anything_is_written() {
        // A GNU sparse header asking for a 1 TiB hole, in 1.5 KiB (found by the fuzzer).
        let blob = include_bytes!("../../../fuzz/corpus/layer_unpack/crash-sparse-hole-1tib.tar");
        let tmp = std::env::temp_dir().join(format!("taba-sparse-{}", std::process::id()));
        let err = unpack_layer(
            &blob[..],
            &tmp,
            None,
            &"0".repeat(64),
            &ImageLimits::default(),
        )
        .unwrap_err();
        let holes = tmp.join("holes").exists();
        std::fs::remove_dir_all(&tmp).unwrap();
        assert!(
            err.to_string().contains("sparse files are not supported"),
            "{err}"
        );
        assert!(!holes, "the sparse file was created");
    }

    #[test]
    fn entry_names_split_safely() {
        assert_eq!(
            components(b"./a//b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(components(b"").unwrap().is_empty());
        assert!(matches!(
            components(b"/etc/passwd"),
            Err(ImageError::UnsafePath(_))
        ));
        assert!(matches!(
            components(b"a/../../x"),
            Err(ImageError::UnsafePath(_))
        ));
    }
}
