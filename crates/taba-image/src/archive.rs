//! Reading an image archive: the outer tar (indexed once, members read in place by offset),
//! format detection, and the `docker save` and OCI image-layout formats down to one
//! [`ImportPlan`]: the config bytes, the references, and where each layer's bytes are.
//! This module only reads the archive; it never writes outside the staging dir it is given.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{io_ctx, ImageError};
use crate::limits::{exceeded, Bounded, Counting, ImageLimits};
use crate::reference::{is_hex, Reference};

/// Where a member's bytes are in the outer tar.
#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
    Dir,
}

/// An indexed outer tar.
pub(crate) struct OuterArchive {
    file: Arc<File>,
    members: HashMap<String, Member>,
    /// The largest JSON document (manifest, index, config) read into memory.
    max_json: u64,
}

/// A reader over one member, by offset (several can be open at once).
pub(crate) struct MemberReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for MemberReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member is truncated",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Normalises an archive member name: strips `./` and leading or doubled slashes; rejects `..`.
fn member_name(raw: &[u8]) -> Result<String, ImageError> {
    let s =
        std::str::from_utf8(raw).map_err(|_| ImageError::archive("member name is not UTF-8"))?;
    let mut out: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(ImageError::archive(format!(
                        "member {s:?} escapes the archive"
                    )));
                }
            }
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

impl OuterArchive {
    /// Indexes the tar at `path`. A gzip-compressed tar is first decompressed into `scratch`,
    /// bounded by `max_archive` and `max_layer_ratio` as it is decompressed.
    pub(crate) fn open(
        path: &Path,
        scratch: &Path,
        limits: &ImageLimits,
    ) -> Result<OuterArchive, ImageError> {
        let mut file = File::open(path).map_err(io_ctx(|| format!("open {}", path.display())))?;
        let mut magic = [0u8; 2];
        let n = file
            .read(&mut magic)
            .map_err(io_ctx(|| format!("read {}", path.display())))?;
        let file = if n == 2 && magic == [0x1f, 0x8b] {
            let plain = scratch.join("archive.tar");
            let mut out =
                File::create(&plain).map_err(io_ctx(|| format!("create {}", plain.display())))?;
            let src = File::open(path).map_err(io_ctx(|| format!("open {}", path.display())))?;
            let src = Counting::new(src);
            let compressed = src.n.clone();
            let mut gz = Bounded::new(
                flate2::read::MultiGzDecoder::new(src),
                limits.max_archive,
                "max_image_upload",
                limits.max_layer_ratio,
                Some(compressed),
            );
            let tripped = gz.tripped();
            copy_split(&mut gz, &mut out, || plain.display().to_string()).map_err(|e| {
                exceeded("the image archive", &tripped).unwrap_or(match e {
                    CopyError::Read(e) => ImageError::archive(format!("bad gzip: {e}")),
                    CopyError::Write(e) => e,
                })
            })?;
            File::open(&plain).map_err(io_ctx(|| format!("open {}", plain.display())))?
        } else {
            file.seek(io::SeekFrom::Start(0))
                .map_err(io_ctx(|| format!("seek {}", path.display())))?;
            file
        };
        let len = file
            .metadata()
            .map_err(io_ctx(|| format!("stat {}", path.display())))?
            .len();
        let bad = |e: io::Error| ImageError::archive(format!("not a readable tar: {e}"));
        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(&file);
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let name = member_name(&entry.path_bytes())?;
            let header = entry.header();
            let member = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let (offset, size) = (entry.raw_file_position(), entry.size());
                    if offset.saturating_add(size) > len {
                        return Err(ImageError::archive(format!("member {name} is truncated")));
                    }
                    Member::File { offset, size }
                }
                tar::EntryType::Symlink => {
                    let target = entry.link_name_bytes().unwrap_or_default();
                    let target = std::str::from_utf8(&target)
                        .map_err(|_| ImageError::archive("link target is not UTF-8"))?;
                    let base = name.rsplit_once('/').map_or("", |(d, _)| d);
                    Member::Link(member_name(format!("{base}/{target}").as_bytes())?)
                }
                tar::EntryType::Link => {
                    let target = entry.link_name_bytes().unwrap_or_default();
                    Member::Link(member_name(&target)?)
                }
                tar::EntryType::Directory => Member::Dir,
                _ => continue,
            };
            members.insert(name, member);
        }
        if members.is_empty() {
            return Err(ImageError::archive("the tar is empty"));
        }
        Ok(OuterArchive {
            file: Arc::new(file),
            members,
            max_json: limits.max_manifest,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// Opens a member by name, following links inside the archive.
    pub(crate) fn open_member(&self, name: &str) -> Result<MemberReader, ImageError> {
        let mut cur = member_name(name.as_bytes())?;
        for _ in 0..16 {
            match self.members.get(&cur) {
                Some(Member::File { offset, size }) => {
                    return Ok(MemberReader {
                        file: self.file.clone(),
                        pos: *offset,
                        end: offset + size,
                    })
                }
                Some(Member::Link(target)) => cur = target.clone(),
                Some(Member::Dir) => {
                    return Err(ImageError::archive(format!("{name} is a directory")))
                }
                None => return Err(ImageError::archive(format!("{name} is missing"))),
            }
        }
        Err(ImageError::archive(format!(
            "{name}: too many levels of links"
        )))
    }

    /// Reads a small member whole (JSON documents).
    fn read_small(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut buf = Vec::new();
        self.open_member(name)?
            .take(self.max_json + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::archive(format!("read {name}: {e}")))?;
        if buf.len() as u64 > self.max_json {
            return Err(ImageError::LimitExceeded {
                what: name.to_string(),
                limit: "max_manifest",
                reason: format!("larger than {} bytes", self.max_json),
            });
        }
        Ok(buf)
    }
}

pub(crate) enum CopyError {
    Read(io::Error),
    Write(ImageError),
}

/// Copies `src` to `dst`, telling read (archive) errors from write (disk) errors.
pub(crate) fn copy_split(
    src: &mut dyn Read,
    dst: &mut dyn io::Write,
    what: impl Fn() -> String,
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        dst.write_all(&buf[..n])
            .map_err(|e| CopyError::Write(io_ctx(|| format!("write {}", what()))(e)))?;
        total += n as u64;
    }
}

/// Hex sha256 of all a reader gives (`name` says what it is, for errors).
pub(crate) fn reader_digest(mut r: impl Read, name: &str) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(hex(&hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) => return Err(ImageError::archive(format!("read {name}: {e}"))),
        }
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a `sha256:<64 hex>` digest and returns the hex part.
pub(crate) fn digest_hex(d: &str, what: &str) -> Result<String, ImageError> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && is_hex(h) => Ok(h.to_string()),
        _ if d.contains(':') && !d.starts_with("sha256:") => Err(ImageError::archive(format!(
            "{what}: unsupported digest algorithm in {d:?} (only sha256)"
        ))),
        _ => Err(ImageError::archive(format!(
            "{what}: malformed digest {d:?}"
        ))),
    }
}

/// One layer to import: where its bytes are and the digests that must match.
#[derive(Debug, Clone)]
pub(crate) struct LayerSource {
    /// The member name inside the outer tar; `None`: the blob itself (a fetched image).
    pub member: Option<String>,
    /// Hex sha256 of the blob as stored, when the format states it.
    pub blob: Option<String>,
    /// The OCI media type, when the format states it.
    pub media_type: Option<String>,
    /// Hex sha256 of the uncompressed layer tar (`diff_id`).
    pub diff_id: String,
}

/// Everything needed to import one image.
#[derive(Debug)]
pub(crate) struct ImportPlan {
    /// The image config JSON as stored (its sha256 is the image id).
    pub config_bytes: Vec<u8>,
    /// The parsed config.
    pub config: ConfigFile,
    /// Canonical references to point at the image.
    pub refs: Vec<String>,
    /// Layers, bottom to top.
    pub layers: Vec<LayerSource>,
    /// The OCI image manifest as stored, when the archive has one.
    pub manifest: Option<Vec<u8>>,
}

/// The parts of an image config (docker and OCI share the shape) the store keeps.
#[derive(Debug, Deserialize, Default)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RunConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<String>,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    pub healthcheck: Option<RunHealthcheck>,
}

/// `Healthcheck` of an image config (durations in nanoseconds).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RunHealthcheck {
    pub test: Option<Vec<String>>,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub start_period: Option<u64>,
    pub start_interval: Option<u64>,
    pub retries: Option<u64>,
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|e| ImageError::archive(format!("{what}: {e}")))
}

pub(crate) fn parse_config(bytes: &[u8], layer_count: usize) -> Result<ConfigFile, ImageError> {
    let config: ConfigFile = parse_json(bytes, "image config")?;
    if config.rootfs.diff_ids.len() != layer_count {
        return Err(ImageError::archive(format!(
            "image config lists {} diff_ids but the manifest has {} layers",
            config.rootfs.diff_ids.len(),
            layer_count
        )));
    }
    Ok(config)
}

fn check_digest(bytes: &[u8], expected_hex: &str) -> Result<(), ImageError> {
    let actual = sha256_digest(bytes);
    if actual[7..] != *expected_hex {
        return Err(ImageError::DigestMismatch {
            expected: format!("sha256:{expected_hex}"),
            actual,
        });
    }
    Ok(())
}

/// `blobs/sha256/<hex>` or `<hex>.json` names state the digest of their content.
fn digest_in_name(name: &str) -> Option<String> {
    let h = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    (h.len() == 64 && is_hex(h)).then(|| h.to_string())
}

/// The most images one archive may hold.
pub(crate) const MAX_IMAGES: usize = 256;

/// Reads the archive at hand into one import plan per image, detecting its format.
pub(crate) fn plans(archive: &OuterArchive) -> Result<Vec<ImportPlan>, ImageError> {
    if archive.has("manifest.json") {
        plan_docker(archive)
    } else if archive.has("index.json") {
        plan_oci(archive)
    } else {
        Err(ImageError::archive(
            "no manifest.json (docker save) or index.json (OCI image layout) in the tar",
        ))
    }
}

fn too_many(what: &str, n: usize) -> Result<(), ImageError> {
    if n > MAX_IMAGES {
        return Err(ImageError::archive(format!(
            "{what} lists {n} images; at most {MAX_IMAGES} per archive"
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub(crate) fn canonical_refs(tags: &[String]) -> Result<Vec<String>, ImageError> {
    tags.iter()
        .map(|t| {
            Reference::parse(t)
                .map(|r| r.canonical())
                .map_err(|e| ImageError::archive(format!("bad image name in archive: {e}")))
        })
        .collect()
}

fn plan_docker(archive: &OuterArchive) -> Result<Vec<ImportPlan>, ImageError> {
    let manifests: Vec<DockerManifest> =
        parse_json(&archive.read_small("manifest.json")?, "manifest.json")?;
    if manifests.is_empty() {
        return Err(ImageError::archive("manifest.json lists no image"));
    }
    too_many("manifest.json", manifests.len())?;
    manifests
        .into_iter()
        .map(|m| plan_docker_image(archive, m))
        .collect()
}

fn plan_docker_image(
    archive: &OuterArchive,
    manifest: DockerManifest,
) -> Result<ImportPlan, ImageError> {
    let config_bytes = archive.read_small(&manifest.config)?;
    if let Some(h) = digest_in_name(&member_name(manifest.config.as_bytes())?) {
        check_digest(&config_bytes, &h)?;
    }
    let config = parse_config(&config_bytes, manifest.layers.len())?;
    let layers = manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(member, diff_id)| {
            let member = member_name(member.as_bytes())?;
            Ok(LayerSource {
                blob: member
                    .strip_prefix("blobs/sha256/")
                    .and_then(|_| digest_in_name(&member)),
                member: Some(member),
                media_type: None,
                diff_id: digest_hex(diff_id, "image config rootfs.diff_ids")?,
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    Ok(ImportPlan {
        refs: canonical_refs(manifest.repo_tags.as_deref().unwrap_or_default())?,
        config_bytes,
        config,
        layers,
        manifest: None,
    })
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize, Clone)]
struct Platform {
    os: String,
    architecture: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexOrManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Reads a blob named by a descriptor and checks its size and sha256.
fn read_blob(archive: &OuterArchive, d: &Descriptor, what: &str) -> Result<Vec<u8>, ImageError> {
    let h = digest_hex(&d.digest, what)?;
    let bytes = archive.read_small(&format!("blobs/sha256/{h}"))?;
    if let Some(size) = d.size {
        if size != bytes.len() as u64 {
            return Err(ImageError::archive(format!(
                "{what} {}: descriptor says {size} bytes, blob has {}",
                d.digest,
                bytes.len()
            )));
        }
    }
    check_digest(&bytes, &h)?;
    Ok(bytes)
}

/// The reference a top-level index entry names, if any: a full `org.opencontainers.image.ref.name`,
/// or containerd's `io.containerd.image.name` when the former is only a tag.
fn oci_ref(d: &Descriptor) -> Option<&str> {
    if let Some(name) = d.annotations.get(CONTAINERD_NAME) {
        return Some(name);
    }
    d.annotations
        .get(REF_NAME)
        .map(String::as_str)
        .filter(|n| n.contains(':') || n.contains('/'))
}

/// Follows a descriptor down through image indexes to one image manifest (linux/amd64).
fn resolve_manifest(
    archive: &OuterArchive,
    d: &Descriptor,
    depth: usize,
) -> Result<(String, IndexOrManifest, Vec<u8>), ImageError> {
    if depth > 4 {
        return Err(ImageError::archive("image indexes nest too deep"));
    }
    let bytes = read_blob(archive, d, "manifest")?;
    let doc: IndexOrManifest = parse_json(&bytes, &format!("manifest {}", d.digest))?;
    let is_index = doc.manifests.is_some()
        || doc
            .media_type
            .as_deref()
            .or(d.media_type.as_deref())
            .is_some_and(|m| m.contains("index") || m.contains("manifest.list"));
    if !is_index {
        return Ok((d.digest.clone(), doc, bytes));
    }
    let manifests = doc.manifests.unwrap_or_default();
    let pick = manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| {
            manifests
                .iter()
                .find(|m| m.platform.is_none())
                .filter(|_| manifests.len() == 1)
        })
        .ok_or_else(|| ImageError::archive("image index has no linux/amd64 manifest"))?;
    resolve_manifest(archive, pick, depth + 1)
}

fn plan_oci(archive: &OuterArchive) -> Result<Vec<ImportPlan>, ImageError> {
    if archive.has("oci-layout") {
        let layout: serde_json::Value =
            parse_json(&archive.read_small("oci-layout")?, "oci-layout")?;
        if layout
            .get("imageLayoutVersion")
            .and_then(|v| v.as_str())
            .is_none()
        {
            return Err(ImageError::archive("oci-layout has no imageLayoutVersion"));
        }
    } else {
        return Err(ImageError::archive("index.json without an oci-layout file"));
    }
    let index: IndexOrManifest = parse_json(&archive.read_small("index.json")?, "index.json")?;
    let entries = index.manifests.unwrap_or_default();
    if entries.is_empty() {
        return Err(ImageError::archive("index.json lists no manifest"));
    }
    too_many("index.json", entries.len())?;
    // One image per manifest digest, in the index's order, with every name that points to it.
    let mut images: Vec<(String, IndexOrManifest, Vec<u8>, Vec<String>)> = Vec::new();
    for entry in &entries {
        let (digest, manifest, bytes) = resolve_manifest(archive, entry, 0)?;
        let at = match images.iter().position(|(d, ..)| *d == digest) {
            Some(i) => i,
            None => {
                images.push((digest, manifest, bytes, Vec::new()));
                images.len() - 1
            }
        };
        if let Some(name) = oci_ref(entry) {
            images[at].3.push(name.to_string());
        }
    }
    images
        .into_iter()
        .map(|(_, manifest, bytes, names)| plan_oci_image(archive, manifest, bytes, names))
        .collect()
}

fn plan_oci_image(
    archive: &OuterArchive,
    manifest: IndexOrManifest,
    manifest_bytes: Vec<u8>,
    mut names: Vec<String>,
) -> Result<ImportPlan, ImageError> {
    let config_desc = manifest
        .config
        .ok_or_else(|| ImageError::archive("image manifest has no config"))?;
    let layer_descs = manifest
        .layers
        .ok_or_else(|| ImageError::archive("image manifest has no layers list"))?;
    let config_bytes = read_blob(archive, &config_desc, "image config")?;
    let config = parse_config(&config_bytes, layer_descs.len())?;
    let layers = layer_descs
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(d, diff_id)| {
            let media = d.media_type.as_deref().unwrap_or("");
            if !(media.contains("image.layer") || media.contains("image.rootfs")) {
                return Err(ImageError::archive(format!(
                    "layer {} has unsupported media type {media:?}",
                    d.digest
                )));
            }
            let h = digest_hex(&d.digest, "layer")?;
            Ok(LayerSource {
                member: Some(format!("blobs/sha256/{h}")),
                blob: Some(h),
                media_type: Some(media.to_string()),
                diff_id: digest_hex(diff_id, "image config rootfs.diff_ids")?,
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    names.sort();
    names.dedup();
    Ok(ImportPlan {
        refs: canonical_refs(&names)?,
        config_bytes,
        config,
        layers,
        manifest: Some(manifest_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_normalised() {
        assert_eq!(member_name(b"./a//b/./c").unwrap(), "a/b/c");
        assert_eq!(member_name(b"/manifest.json").unwrap(), "manifest.json");
        assert_eq!(member_name(b"a/../b").unwrap(), "b");
        assert!(member_name(b"../x").is_err());
    }

    #[test]
    fn digests_in_names() {
        let h = "a".repeat(64);
        assert_eq!(digest_in_name(&format!("{h}.json")), Some(h.clone()));
        assert_eq!(
            digest_in_name(&format!("blobs/sha256/{h}")),
            Some(h.clone())
        );
        assert_eq!(digest_in_name("config.json"), None);
        assert!(digest_hex("sha512:abc", "x").is_err());
        assert!(digest_hex("sha256:ABC", "x").is_err());
    }
}
