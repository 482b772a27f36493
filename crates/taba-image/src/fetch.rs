//! Assembling an image from blobs fetched from elsewhere (a server): [`ImageStore::fetch`]
//! checks the manifest and says which blobs the store lacks; the caller writes each through a
//! [`BlobWriter`] (size and digest checked before the blob is named); [`Fetch::commit`] then
//! unpacks and commits through the same code as an archive import. Dropping a [`Fetch`] before
//! its commit removes everything it wrote. This module does no networking.

use std::collections::BTreeSet;
use std::io::Read;

use taba_types::wire::{check_protocol, BlobDescriptor, ImageManifest};

use crate::archive::{self, sha256_digest, ImportPlan, LayerSource};
use crate::blobs::{parse_digest, BlobWriter, MAX_BLOB_BYTES};
use crate::error::{io_ctx, ImageError};
use crate::reference::Reference;
use crate::{import, ImageStore, ImageSummary, Staging};

/// The largest image config accepted (as for archives).
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The most layers an image may have.
const MAX_LAYERS: usize = 1000;

/// An image being fetched into the store.
#[derive(Debug)]
pub struct Fetch {
    store: ImageStore,
    staging: Staging,
    manifest: ImageManifest,
    needed: Vec<BlobDescriptor>,
    /// The registry's manifest, kept as a blob so that a push or save gives it back.
    original: Option<Vec<u8>>,
}

fn bad(reason: impl Into<String>) -> ImageError {
    ImageError::InvalidManifest {
        reason: reason.into(),
    }
}

/// Checks everything in a manifest that can be checked before any blob is read.
pub(crate) fn validate(m: &ImageManifest) -> Result<(), ImageError> {
    check_protocol(m.protocol).map_err(|e| bad(format!("protocol: {e}")))?;
    let field = |name: String| move |e: ImageError| bad(format!("{name}: {e}"));
    parse_digest(&m.id).map_err(field("id".into()))?;
    if m.config.digest != m.id {
        return Err(bad(format!(
            "config.digest {:?} is not the image id {:?}",
            m.config.digest, m.id
        )));
    }
    if m.disk.is_some() {
        if !m.layers.is_empty() {
            return Err(bad("a disk image has no layers"));
        }
        if m.config.size == 0 {
            return Err(bad("config.size of a disk image is 0"));
        }
    } else if m.config.size == 0 || m.config.size > MAX_CONFIG_BYTES {
        return Err(bad(format!(
            "config.size {} is not between 1 and {MAX_CONFIG_BYTES}",
            m.config.size
        )));
    }
    if m.layers.len() > MAX_LAYERS {
        return Err(bad(format!(
            "{} layers; at most {MAX_LAYERS}",
            m.layers.len()
        )));
    }
    for (i, l) in m.layers.iter().enumerate() {
        parse_digest(&l.digest).map_err(field(format!("layers[{i}].digest")))?;
        parse_digest(&l.diff_id).map_err(field(format!("layers[{i}].diff_id")))?;
        if l.size > MAX_BLOB_BYTES {
            return Err(bad(format!(
                "layers[{i}].size {} is larger than {MAX_BLOB_BYTES}",
                l.size
            )));
        }
        if !(l.media_type.contains("image.layer") || l.media_type.contains("image.rootfs")) {
            return Err(bad(format!(
                "layers[{i}].media_type {:?} is not a layer type",
                l.media_type
            )));
        }
    }
    for (i, r) in m.refs.iter().enumerate() {
        Reference::parse(r).map_err(field(format!("refs[{i}]")))?;
    }
    Ok(())
}

impl ImageStore {
    /// Starts fetching the image `manifest` describes: checks the manifest and finds the blobs
    /// the store lacks ([`Fetch::needed`]). Layers the store has are not fetched again.
    pub fn fetch(&self, manifest: &ImageManifest) -> Result<Fetch, ImageError> {
        validate(manifest)?;
        let cap = self.limits().max_archive;
        if manifest.disk.is_some() && manifest.config.size > cap {
            return Err(ImageError::LimitExceeded {
                what: format!("disk image {}", manifest.id),
                limit: "max_image_upload",
                reason: format!("{} bytes, more than {cap}", manifest.config.size),
            });
        }
        let staging = self.new_staging()?;
        let blobs = self.blobs_dir();
        let mut seen = BTreeSet::new();
        let mut needed = Vec::new();
        let all = std::iter::once((&manifest.config.digest, manifest.config.size))
            .chain(manifest.layers.iter().map(|l| (&l.digest, l.size)));
        for (digest, size) in all {
            let hex = &digest[7..];
            if seen.insert(hex) && !crate::blobs::blob_path(&blobs, hex).exists() {
                needed.push(BlobDescriptor {
                    digest: digest.clone(),
                    size,
                });
            }
        }
        Ok(Fetch {
            store: self.clone(),
            staging,
            manifest: manifest.clone(),
            needed,
            original: None,
        })
    }
}

impl Fetch {
    /// A disk image: its one blob (written and checked against its digest
    /// by its [`BlobWriter`]) is checked as a disk image again here, as a
    /// local import is (a qcow2 with a backing file is refused on every
    /// node, whatever the server said), then committed.
    fn commit_disk(
        &self,
        d: &taba_types::wire::DiskDescriptor,
    ) -> Result<ImageSummary, ImageError> {
        let m = &self.manifest;
        let hex = parse_digest(&m.id)?;
        let staged = crate::blobs::blob_path(&ImageStore::staged_blobs(&self.staging), hex);
        let file = if staged.exists() {
            staged
        } else {
            crate::blobs::blob_path(&self.store.blobs_dir(), hex)
        };
        let virtual_size = crate::disk::check(&self.store, &file, d.format)?;
        let refs = archive::canonical_refs(&m.refs)?;
        self.store.commit_disk(
            &self.staging,
            hex,
            m.config.size,
            d.format,
            virtual_size,
            &refs,
        )
    }

    /// The image's id.
    pub fn id(&self) -> &str {
        &self.manifest.id
    }

    /// The blobs to fetch (the store has the others), each once.
    pub fn needed(&self) -> &[BlobDescriptor] {
        &self.needed
    }

    /// A writer for one needed blob. It checks size and digest before the blob is used.
    pub fn writer(&self, blob: &BlobDescriptor) -> Result<BlobWriter, ImageError> {
        if !self.needed.contains(blob) {
            return Err(bad(format!(
                "blob {} is not one this fetch needs",
                blob.digest
            )));
        }
        let hex = parse_digest(&blob.digest)?;
        BlobWriter::create(&ImageStore::staged_blobs(&self.staging), hex, blob.size)
    }

    /// Keeps `bytes`, the manifest the image was fetched by (a registry's), with the image:
    /// a later push or save gives it back byte for byte. It must name this image's config and
    /// layer blobs, in order.
    pub fn keep_manifest(&mut self, bytes: Vec<u8>) -> Result<(), ImageError> {
        #[derive(serde::Deserialize)]
        struct Desc {
            digest: String,
            size: u64,
        }
        #[derive(serde::Deserialize)]
        struct Doc {
            config: Desc,
            layers: Vec<Desc>,
        }
        if bytes.len() as u64 > self.store.limits().max_manifest {
            return Err(bad(format!("manifest of {} bytes", bytes.len())));
        }
        let doc: Doc = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not an image manifest: {e}")))?;
        let m = &self.manifest;
        let same = doc.config.digest == m.config.digest
            && doc.config.size == m.config.size
            && doc.layers.len() == m.layers.len()
            && doc
                .layers
                .iter()
                .zip(&m.layers)
                .all(|(a, b)| a.digest == b.digest && a.size == b.size);
        if !same {
            return Err(bad("the manifest kept names other blobs than the image's"));
        }
        self.original = Some(bytes);
        Ok(())
    }

    /// Unpacks and commits the image: every needed blob must have been written. Each layer is
    /// checked again against its digest and diff_id as it is unpacked.
    pub fn commit(self) -> Result<ImageSummary, ImageError> {
        let m = &self.manifest;
        if let Some(d) = &m.disk {
            return self.commit_disk(d);
        }
        let config_hex = parse_digest(&m.id)?;
        let mut config_bytes = Vec::new();
        self.store
            .open_present_blob(&self.staging, config_hex)?
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut config_bytes)
            .map_err(io_ctx(|| format!("read image config {}", m.id)))?;
        let actual = sha256_digest(&config_bytes);
        if actual != m.id {
            return Err(ImageError::DigestMismatch {
                expected: m.id.clone(),
                actual,
            });
        }
        let config = archive::parse_config(&config_bytes, m.layers.len())?;
        for (i, (l, d)) in m.layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
            if l.diff_id != *d {
                return Err(bad(format!(
                    "layers[{i}].diff_id {} is not the image config's {d}",
                    l.diff_id
                )));
            }
        }
        let refs = archive::canonical_refs(&m.refs)?;
        let layers = m
            .layers
            .iter()
            .map(|l| LayerSource {
                member: None,
                blob: Some(l.digest[7..].to_string()),
                media_type: Some(l.media_type.clone()),
                diff_id: l.diff_id[7..].to_string(),
            })
            .collect();
        let plan = ImportPlan {
            config_bytes,
            config,
            refs,
            layers,
            manifest: self.original.clone(),
        };
        self.store
            .commit_import(&self.staging, plan, import::Source::Blobs)
    }
}
