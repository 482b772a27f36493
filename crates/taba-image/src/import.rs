//! Importing an image: staging its layers and blobs, then the commit. Both ways in, an archive
//! ([`ImageStore::import`]) and blobs fetched from a server ([`crate::Fetch::commit`]), end in
//! [`ImageStore::commit_import`], so a fetched image is unpacked and checked exactly as an
//! imported one.
//!
//! Per layer, whatever the store lacks is made in the staging dir: the unpacked layer (unpacked
//! while its blob is copied aside, in one read) and the original blob. A layer already unpacked
//! whose blob is missing is read once more only to check and copy the blob; a layer whose
//! unpacked tree and blob are both present is not read at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::archive::{self, sha256_digest, ImportPlan, LayerSource, OuterArchive};
use crate::blobs::{blob_path, Tee};
use crate::error::{io_ctx, ImageError};
use crate::unpack::{self, Compression};
use crate::{
    read_json, to_json, write_file, BlobRecord, ImageConfig, ImageRecord, ImageStore, ImageSummary,
    LayerRecord, Staging, RECORD_VERSION,
};

/// Where the bytes of the layers come from.
pub(crate) enum Source<'a> {
    /// Members of an image archive.
    Archive(&'a OuterArchive),
    /// Blob files: staged by a fetch, or already in the store.
    Blobs,
}

/// What an import has staged or found so far.
struct Progress {
    /// diff_id -> unpacked size, of layers in the store or staged.
    sizes: BTreeMap<String, u64>,
    /// Layers unpacked into the staging dir.
    staged_layers: BTreeSet<String>,
    /// The blob of each layer of the plan, by position, once known to be present.
    blobs: Vec<Option<BlobRecord>>,
}

impl ImageStore {
    /// The blob dir of a staging dir.
    pub(crate) fn staged_blobs(staging: &Staging) -> PathBuf {
        staging.dir.join("blobs")
    }

    /// The size of blob `hex` if it is staged or in the store.
    fn present_blob(&self, staging: &Staging, hex: &str) -> Option<u64> {
        [
            blob_path(&Self::staged_blobs(staging), hex),
            blob_path(&self.blobs_dir(), hex),
        ]
        .iter()
        .find_map(|p| fs::metadata(p).ok().map(|m| m.len()))
    }

    /// Opens blob `hex`, staged or in the store.
    pub(crate) fn open_present_blob(
        &self,
        staging: &Staging,
        hex: &str,
    ) -> Result<File, ImageError> {
        for p in [
            blob_path(&Self::staged_blobs(staging), hex),
            blob_path(&self.blobs_dir(), hex),
        ] {
            match File::open(&p) {
                Ok(f) => return Ok(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_ctx(|| format!("open {}", p.display()))(e)),
            }
        }
        Err(ImageError::NotFound(format!(
            "blob sha256:{hex} (removed while the import ran; try again)"
        )))
    }

    /// Stages a small blob (config, manifest) unless it is present.
    fn stage_small(&self, staging: &Staging, bytes: &[u8]) -> Result<String, ImageError> {
        let digest = sha256_digest(bytes);
        if self.present_blob(staging, &digest[7..]).is_none() {
            let dir = Self::staged_blobs(staging).join("sha256");
            fs::create_dir_all(&dir).map_err(io_ctx(|| format!("create {}", dir.display())))?;
            write_file(&dir.join(&digest[7..]), bytes, false)?;
        }
        Ok(digest)
    }

    /// Opens the bytes of a layer as its source has them.
    fn open_layer(
        &self,
        staging: &Staging,
        source: &Source<'_>,
        layer: &LayerSource,
    ) -> Result<Box<dyn Read>, ImageError> {
        match (source, &layer.member, &layer.blob) {
            (Source::Archive(outer), Some(member), _) => Ok(Box::new(outer.open_member(member)?)),
            (Source::Blobs, _, Some(hex)) => Ok(Box::new(self.open_present_blob(staging, hex)?)),
            _ => Err(ImageError::archive(format!(
                "layer sha256:{} has no source",
                layer.diff_id
            ))),
        }
    }

    /// The blob digest (hex) a layer must have and its media type, as far as they are known
    /// before it is read: stated by the format, or, for a plain tar, its diff_id.
    fn expected_blob(
        &self,
        staging: &Staging,
        source: &Source<'_>,
        layer: &LayerSource,
    ) -> Result<(Option<String>, Option<String>), ImageError> {
        if let (Some(h), Some(m)) = (&layer.blob, &layer.media_type) {
            return Ok((Some(h.clone()), Some(m.clone())));
        }
        let mut head = [0u8; 4];
        let mut r = self.open_layer(staging, source, layer)?;
        let mut n = 0;
        while n < head.len() {
            match r.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(ImageError::archive(format!("read layer: {e}"))),
            }
        }
        let compression = Compression::detect(&head[..n]);
        let blob = match (&layer.blob, compression) {
            (Some(h), _) => Some(h.clone()),
            (None, Compression::None) => Some(layer.diff_id.clone()),
            (None, _) => None,
        };
        Ok((blob, Some(compression.media_type().to_string())))
    }

    /// Makes layer `i` of the plan present: unpacked and its blob kept, staging what is missing.
    fn stage_layer(
        &self,
        staging: &Staging,
        source: &Source<'_>,
        layer: &LayerSource,
        p: &mut Progress,
        i: usize,
    ) -> Result<(), ImageError> {
        let diff = &layer.diff_id;
        if !p.sizes.contains_key(diff) {
            if let Some(rec) = read_json::<LayerRecord>(&self.layer_dir(diff).join("layer.json"))? {
                p.sizes.insert(diff.clone(), rec.size);
            }
        }
        let layer_known = p.sizes.contains_key(diff);
        let (expected, media) = self.expected_blob(staging, source, layer)?;
        let blob_size = expected
            .as_deref()
            .and_then(|h| self.present_blob(staging, h));
        if let (true, Some(size), Some(h)) = (layer_known, blob_size, &expected) {
            p.blobs[i] = Some(BlobRecord {
                digest: format!("sha256:{h}"),
                size,
                media_type: media.unwrap_or_default(),
            });
            return Ok(());
        }
        let staged_blobs = Self::staged_blobs(staging);
        let copy_to = blob_size.is_none().then(|| {
            staged_blobs
                .join("sha256")
                .join(format!(".{diff}.{i}.part"))
        });
        let mut tee = Tee::new(self.open_layer(staging, source, layer)?, copy_to)?;
        let dest = staging.dir.join("layers").join(diff);
        let result = if layer_known {
            unpack::verify_layer(&mut tee, expected.as_deref(), diff, &self.limits)
                .map(|f| (None, f))
        } else {
            fs::create_dir(&dest).map_err(io_ctx(|| format!("create {}", dest.display())))?;
            unpack::unpack_layer(
                &mut tee,
                &dest.join("fs"),
                expected.as_deref(),
                diff,
                &self.limits,
            )
            .map(|(u, f)| (Some(u), f))
        };
        if let Some(e) = tee.write_error() {
            tee.discard();
            return Err(e);
        }
        let (unpacked, facts) = match result {
            Ok(x) => x,
            // A tampered compressed blob usually fails to decode before its digest is known;
            // when the format states one, report the mismatch.
            Err(ImageError::InvalidArchive { reason }) if expected.is_some() => {
                tee.discard();
                let want = expected.expect("checked");
                let actual = self
                    .open_layer(staging, source, layer)
                    .and_then(|r| archive::reader_digest(r, diff));
                return Err(match actual {
                    Ok(actual) if actual != want => ImageError::DigestMismatch {
                        expected: format!("sha256:{want}"),
                        actual: format!("sha256:{actual}"),
                    },
                    _ => ImageError::InvalidArchive { reason },
                });
            }
            Err(e) => {
                tee.discard();
                return Err(e);
            }
        };
        tee.finish(&blob_path(&staged_blobs, &facts.digest))?;
        if let Some(u) = unpacked {
            // Synced with the whole staging dir (syncfs) before the commit.
            write_file(
                &dest.join("layer.json"),
                &to_json(&LayerRecord {
                    version: RECORD_VERSION,
                    diff_id: diff.clone(),
                    size: u.size,
                }),
                false,
            )?;
            p.sizes.insert(diff.clone(), u.size);
            p.staged_layers.insert(diff.clone());
        }
        p.blobs[i] = Some(BlobRecord {
            digest: format!("sha256:{}", facts.digest),
            size: facts.size,
            media_type: media.unwrap_or_else(|| facts.compression.media_type().to_string()),
        });
        Ok(())
    }

    /// Under the exclusive lock: forgets what a concurrent removal took since it was staged or
    /// found; `true` if anything was.
    fn forget_vanished(
        &self,
        staging: &Staging,
        plan: &ImportPlan,
        p: &mut Progress,
        small: &[&str],
    ) -> bool {
        let mut vanished = small
            .iter()
            .any(|h| self.present_blob(staging, h).is_none());
        for (i, layer) in plan.layers.iter().enumerate() {
            let d = &layer.diff_id;
            let layer_here =
                p.staged_layers.contains(d) || self.layer_dir(d).join("layer.json").exists();
            let blob_here = p.blobs[i]
                .as_ref()
                .is_some_and(|b| self.present_blob(staging, &b.digest[7..]).is_some());
            if !layer_here {
                p.sizes.remove(d);
            }
            if !layer_here || !blob_here {
                p.blobs[i] = None;
                vanished = true;
            }
        }
        vanished
    }

    /// Moves staged blobs and layers into the store. Call under the exclusive lock.
    fn move_staged(
        &self,
        staging: &Staging,
        plan: &ImportPlan,
        p: &Progress,
    ) -> Result<(), ImageError> {
        let staged = Self::staged_blobs(staging).join("sha256");
        if let Ok(entries) = fs::read_dir(&staged) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let to = blob_path(&self.blobs_dir(), &name);
                if !to.exists() {
                    fs::rename(e.path(), &to).map_err(io_ctx(|| {
                        format!("move {} to {}", e.path().display(), to.display())
                    }))?;
                }
            }
        }
        for d in &p.staged_layers {
            let to = self.layer_dir(d);
            if to.exists() {
                continue; // a concurrent import committed the same layer first
            }
            let from = staging.dir.join("layers").join(d);
            fs::rename(&from, &to).map_err(io_ctx(|| {
                format!("move {} to {}", from.display(), to.display())
            }))?;
        }
        for layer in &plan.layers {
            let link = self.short_link(&layer.diff_id);
            if fs::symlink_metadata(&link).is_err() {
                let target = Path::new("../layers").join(&layer.diff_id).join("fs");
                std::os::unix::fs::symlink(&target, &link)
                    .map_err(io_ctx(|| format!("symlink {}", link.display())))?;
            }
        }
        Ok(())
    }

    /// Stages what the store lacks of the image `plan` describes, then commits it: blobs and
    /// layers first, then the image record, then the references.
    pub(crate) fn commit_import(
        &self,
        staging: &Staging,
        mut plan: ImportPlan,
        source: Source<'_>,
    ) -> Result<ImageSummary, ImageError> {
        let id = sha256_digest(&plan.config_bytes);
        let config = ImageConfig::from_run(plan.config.config.take().unwrap_or_default());
        let staged_layers = staging.dir.join("layers");
        fs::create_dir_all(&staged_layers)
            .map_err(io_ctx(|| format!("create {}", staged_layers.display())))?;
        let manifest = plan.manifest.as_ref().map(|m| BlobRecord {
            digest: sha256_digest(m),
            size: m.len() as u64,
            media_type: crate::export::manifest_media_type(m),
        });
        let mut p = Progress {
            sizes: BTreeMap::new(),
            staged_layers: BTreeSet::new(),
            blobs: vec![None; plan.layers.len()],
        };
        // A layer or blob that was in the store when we looked may be collected by a
        // concurrent remove before we commit; then stage it and try again.
        for _attempt in 0..3 {
            self.stage_small(staging, &plan.config_bytes)?;
            if let Some(m) = &plan.manifest {
                self.stage_small(staging, m)?;
            }
            for (i, layer) in plan.layers.iter().enumerate() {
                if p.blobs[i].is_none() {
                    self.stage_layer(staging, &source, layer, &mut p, i)?;
                }
            }
            let blobs_staged = fs::read_dir(Self::staged_blobs(staging).join("sha256"))
                .is_ok_and(|mut d| d.next().is_some());
            if blobs_staged || !p.staged_layers.is_empty() {
                let d = File::open(&staging.dir)
                    .map_err(io_ctx(|| format!("open {}", staging.dir.display())))?;
                rustix::fs::syncfs(&d)
                    .map_err(io_ctx(|| format!("sync {}", staging.dir.display())))?;
            }
            let _lock = self.lock(true)?;
            let mut small = vec![&id[7..]];
            if let Some(m) = &manifest {
                small.push(&m.digest[7..]);
            }
            if self.forget_vanished(staging, &plan, &mut p, &small) {
                continue;
            }
            self.move_staged(staging, &plan, &p)?;
            let diff_ids: Vec<String> = plan.layers.iter().map(|l| l.diff_id.clone()).collect();
            let record = ImageRecord {
                version: RECORD_VERSION,
                id: id.clone(),
                size: diff_ids.iter().map(|d| p.sizes[d]).sum(),
                diff_ids,
                config,
                created: plan.config.created.clone(),
                config_size: plan.config_bytes.len() as u64,
                blobs: p.blobs.into_iter().map(|b| b.expect("staged")).collect(),
                manifest,
                disk: None,
            };
            let image_path = self.image_path(&id[7..]);
            // A record from before blobs were kept is replaced by one that names them.
            let keep = self
                .load_image(&id[7..])?
                .is_some_and(|r| r.blobs.len() == r.diff_ids.len());
            if !keep {
                crate::write_atomic(&image_path, &to_json(&record))?;
            }
            let mut refs = self.load_refs()?;
            let mut changed = false;
            for r in &plan.refs {
                changed |= refs.refs.insert(r.clone(), id.clone()).as_ref() != Some(&id);
            }
            if changed {
                self.save_refs(&refs)?;
            }
            return Ok(self.summary(&record, &refs));
        }
        Err(ImageError::Io {
            context: "import: layers kept disappearing under concurrent removals".into(),
            source: std::io::Error::from(std::io::ErrorKind::Interrupted),
        })
    }
}
