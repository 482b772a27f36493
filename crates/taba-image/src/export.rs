//! Images going out of the store as they came in: [`ImageStore::export`] describes an image
//! as a registry holds it (its manifest bytes, config and layer blobs exactly as imported or
//! pulled, so every digest is the original's), and [`ImageStore::save`] writes it as an OCI
//! image-layout tar or a `docker save` tar.
//!
//! The manifest an image came with (an OCI layout's, a registry's) is kept as a blob and given
//! back byte for byte. An image without one (a `docker save` import) gets an OCI manifest
//! written from its config and layer blobs, the same bytes every time.
//!
//! This module only reads the store (under no lock: blobs are immutable once named; an image
//! removed meanwhile fails the read with a clear error) and writes only to the writer it is
//! given and to a staging dir of its own.

use std::fs::File;
use std::io::{self, Read, Write};

use serde::Serialize;
use taba_types::wire::{BlobDescriptor, LayerDescriptor};

use crate::archive::{hex, sha256_digest};
use crate::error::{io_ctx, ImageError};
use crate::reference;
use crate::unpack::Compression;
use crate::{BlobRecord, ImageStore};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image manifest (schema 2) media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// An image as a registry holds it: the manifest and the blobs it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageExport {
    /// The image id (the config's digest).
    pub id: String,
    /// The references the store gives the image, canonical (`docker.io/library/busybox:latest`).
    pub refs: Vec<String>,
    /// The manifest, byte for byte as it will be pushed or saved.
    pub manifest: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// The config blob.
    pub config: BlobDescriptor,
    /// The layer blobs, bottom to top.
    pub layers: Vec<LayerDescriptor>,
}

impl ImageExport {
    /// `sha256:<hex>` of the manifest: the digest a registry will give it.
    pub fn manifest_digest(&self) -> String {
        sha256_digest(&self.manifest)
    }
}

/// The archive format of [`ImageStore::save`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    /// An OCI image layout in a tar (`skopeo copy ... oci-archive:`), blobs as stored.
    OciArchive,
    /// What `docker save` writes: `manifest.json`, the config, uncompressed layer tars.
    DockerArchive,
}

impl std::str::FromStr for SaveFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "oci-archive" | "oci" => Ok(SaveFormat::OciArchive),
            "docker-archive" | "docker" => Ok(SaveFormat::DockerArchive),
            other => Err(format!(
                "unknown format {other:?}: oci-archive or docker-archive"
            )),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<std::collections::BTreeMap<&'a str, String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

/// The OCI layer media type of a stored layer blob (Docker's names mapped by compression).
fn oci_layer_type(media_type: &str) -> &'static str {
    let c = if media_type.ends_with("gzip") {
        Compression::Gzip
    } else if media_type.ends_with("zstd") {
        Compression::Zstd
    } else {
        Compression::None
    };
    c.media_type()
}

/// The `mediaType` a manifest states, OCI's when it states none.
pub(crate) fn manifest_media_type(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        #[serde(default)]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Head>(bytes)
        .ok()
        .and_then(|h| h.media_type)
        .unwrap_or_else(|| OCI_MANIFEST.to_string())
}

impl ImageStore {
    /// The image `reference` names as a registry would hold it. `None`: no such image.
    pub fn export(&self, reference: &str) -> Result<Option<ImageExport>, ImageError> {
        let Some((id, record, refs)) = self.find_with_blobs(reference)? else {
            return Ok(None);
        };
        let config = BlobDescriptor {
            digest: id.clone(),
            size: record.config_size,
        };
        let layers = crate::layer_descriptors(&record);
        let (manifest, media_type) = match &record.manifest {
            Some(m) => {
                let bytes = self.read_small_blob(m)?;
                (bytes.clone(), manifest_media_type(&bytes))
            }
            None => (
                synthesized_manifest(&config, &record.blobs),
                OCI_MANIFEST.into(),
            ),
        };
        Ok(Some(ImageExport {
            refs: refs
                .refs
                .iter()
                .filter(|(_, v)| **v == id)
                .map(|(k, _)| k.clone())
                .collect(),
            id,
            manifest,
            media_type,
            config,
            layers,
        }))
    }

    /// Reads a small blob (manifest, config) whole and checks its digest.
    fn read_small_blob(&self, b: &BlobRecord) -> Result<Vec<u8>, ImageError> {
        let (f, _) = self
            .open_blob(&b.digest)?
            .ok_or_else(|| ImageError::NotFound(format!("blob {}", b.digest)))?;
        let mut bytes = Vec::new();
        f.take(self.limits.max_manifest + 1)
            .read_to_end(&mut bytes)
            .map_err(io_ctx(|| format!("read blob {}", b.digest)))?;
        let actual = sha256_digest(&bytes);
        if actual != b.digest {
            return Err(ImageError::DigestMismatch {
                expected: b.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Opens a blob the export names, checking it is there with the size it states.
    pub fn open_export_blob(&self, digest: &str, size: u64) -> Result<File, ImageError> {
        let (f, len) = self
            .open_blob(digest)?
            .ok_or_else(|| ImageError::NotFound(format!("blob {digest} (image removed?)")))?;
        if len != size {
            return Err(ImageError::SizeMismatch {
                digest: digest.to_string(),
                expected: size,
                actual: len,
            });
        }
        Ok(f)
    }

    /// Writes the image `reference` names to `out` as a tar in `format`, named `names`
    /// (none: `reference` if it is a name, else every tag of the image).
    pub fn save(
        &self,
        reference: &str,
        names: &[String],
        format: SaveFormat,
        out: impl Write,
    ) -> Result<ImageExport, ImageError> {
        let image = self
            .export(reference)?
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))?;
        let named = self
            .find(reference, &self.load_refs()?)?
            .and_then(|(_, c)| c);
        let names: Vec<String> = if !names.is_empty() {
            names
                .iter()
                .map(|n| {
                    reference::Reference::parse(n).map(|r| reference::familiar(&r.canonical()))
                })
                .collect::<Result<_, _>>()?
        } else if let Some(c) = named.filter(|c| !c.contains('@')) {
            vec![reference::familiar(&c)]
        } else {
            image
                .refs
                .iter()
                .filter(|r| !r.contains('@'))
                .map(|r| reference::familiar(r))
                .collect()
        };
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        match format {
            SaveFormat::OciArchive => self.write_oci(&mut tar, &image, &names)?,
            SaveFormat::DockerArchive => self.write_docker(&mut tar, &image, &names)?,
        }
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(io_ctx(|| "write the archive".to_string()))?;
        Ok(image)
    }

    fn write_oci<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        image: &ImageExport,
        names: &[String],
    ) -> Result<(), ImageError> {
        append_bytes(tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let digest = image.manifest_digest();
        let entry = |name: Option<&String>| Descriptor {
            media_type: &image.media_type,
            digest: &digest,
            size: image.manifest.len() as u64,
            annotations: name.map(|n| {
                [("org.opencontainers.image.ref.name", n.clone())]
                    .into_iter()
                    .collect()
            }),
        };
        let manifests: Vec<Descriptor<'_>> = if names.is_empty() {
            vec![entry(None)]
        } else {
            names.iter().map(|n| entry(Some(n))).collect()
        };
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        append_bytes(tar, "index.json", index.to_string().as_bytes())?;
        append_bytes(tar, &blob_member(&digest), &image.manifest)?;
        let blobs = std::iter::once((&image.config.digest, image.config.size))
            .chain(image.layers.iter().map(|l| (&l.digest, l.size)));
        let mut seen = std::collections::BTreeSet::new();
        for (d, size) in blobs {
            if seen.insert(d.clone()) {
                let f = self.open_export_blob(d, size)?;
                append_reader(tar, &blob_member(d), size, f)?;
            }
        }
        Ok(())
    }

    fn write_docker<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        image: &ImageExport,
        names: &[String],
    ) -> Result<(), ImageError> {
        let config_name = format!("{}.json", &image.id[7..]);
        let config = self.open_export_blob(&image.config.digest, image.config.size)?;
        append_reader(tar, &config_name, image.config.size, config)?;
        let mut members = Vec::new();
        let staging = self.new_staging()?;
        for l in &image.layers {
            let member = format!("{}/layer.tar", &l.diff_id[7..]);
            if members.contains(&member) {
                continue;
            }
            // The uncompressed tar, checked against its diff_id before it is written.
            let plain = staging.dir.join("layer.tar");
            let size = self.decompress_layer(l, &plain)?;
            let f = File::open(&plain).map_err(io_ctx(|| format!("open {}", plain.display())))?;
            append_reader(tar, &member, size, f)?;
            std::fs::remove_file(&plain)
                .map_err(io_ctx(|| format!("remove {}", plain.display())))?;
            members.push(member);
        }
        let layers: Vec<String> = image
            .layers
            .iter()
            .map(|l| format!("{}/layer.tar", &l.diff_id[7..]))
            .collect();
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": names,
            "Layers": layers,
        }]);
        append_bytes(tar, "manifest.json", manifest.to_string().as_bytes())
    }

    /// Writes layer `l`'s uncompressed tar to `dest`; returns its size. Fails if its sha256
    /// is not the layer's diff_id.
    fn decompress_layer(
        &self,
        l: &LayerDescriptor,
        dest: &std::path::Path,
    ) -> Result<u64, ImageError> {
        let blob = self.open_export_blob(&l.digest, l.size)?;
        let mut src = io::BufReader::with_capacity(256 * 1024, blob);
        let head = io::BufRead::fill_buf(&mut src)
            .map_err(io_ctx(|| format!("read blob {}", l.digest)))?;
        let mut reader: Box<dyn Read> = match Compression::detect(head) {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(src)),
            Compression::Zstd => {
                Box::new(ruzstd::decoding::StreamingDecoder::new(src).map_err(|e| {
                    ImageError::archive(format!("layer {}: bad zstd stream: {e}", l.digest))
                })?)
            }
            Compression::None => Box::new(src),
        };
        let mut out = io::BufWriter::new(
            File::create(dest).map_err(io_ctx(|| format!("create {}", dest.display())))?,
        );
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::archive(format!("layer {}: {e}", l.digest))),
            };
            sha2::Digest::update(&mut hasher, &buf[..n]);
            out.write_all(&buf[..n])
                .map_err(io_ctx(|| format!("write {}", dest.display())))?;
            total += n as u64;
        }
        out.flush()
            .map_err(io_ctx(|| format!("write {}", dest.display())))?;
        let actual = format!("sha256:{}", hex(&sha2::Digest::finalize(hasher)));
        if actual != l.diff_id {
            return Err(ImageError::DigestMismatch {
                expected: l.diff_id.clone(),
                actual,
            });
        }
        Ok(total)
    }
}

/// The OCI manifest of an image that came without one: the same bytes for the same blobs.
fn synthesized_manifest(config: &BlobDescriptor, blobs: &[BlobRecord]) -> Vec<u8> {
    let m = OciManifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: Descriptor {
            media_type: OCI_CONFIG,
            digest: &config.digest,
            size: config.size,
            annotations: None,
        },
        layers: blobs
            .iter()
            .map(|b| Descriptor {
                media_type: oci_layer_type(&b.media_type),
                digest: &b.digest,
                size: b.size,
                annotations: None,
            })
            .collect(),
    };
    serde_json::to_vec(&m).expect("manifests serialise")
}

fn blob_member(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(0);
    h
}

fn append_bytes<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> Result<(), ImageError> {
    append_reader(tar, name, bytes.len() as u64, bytes)
}

fn append_reader<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    r: impl Read,
) -> Result<(), ImageError> {
    let mut h = header(size);
    // A reader shorter than `size` would make tar pad silently: take exactly `size` and check.
    let mut counted = CountingReader {
        inner: r.take(size),
        n: 0,
    };
    tar.append_data(&mut h, name, &mut counted)
        .map_err(io_ctx(|| format!("write {name} to the archive")))?;
    if counted.n != size {
        return Err(ImageError::SizeMismatch {
            digest: name.to_string(),
            expected: size,
            actual: counted.n,
        });
    }
    Ok(())
}

struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthesized_manifest_is_stable_and_uses_oci_types() {
        let config = BlobDescriptor {
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 10,
        };
        let blobs = vec![BlobRecord {
            digest: format!("sha256:{}", "b".repeat(64)),
            size: 20,
            media_type: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
        }];
        let a = synthesized_manifest(&config, &blobs);
        assert_eq!(a, synthesized_manifest(&config, &blobs));
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(
            v["layers"][0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(v["config"]["mediaType"], OCI_CONFIG);
        assert_eq!(manifest_media_type(&a), OCI_MANIFEST);
        assert_eq!(manifest_media_type(br#"{"schemaVersion":2}"#), OCI_MANIFEST);
        assert_eq!("docker-archive".parse(), Ok(SaveFormat::DockerArchive));
        assert!("zip".parse::<SaveFormat>().is_err());
    }
}
