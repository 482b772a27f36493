//! Pushing an image from an [`ImageStore`] to a registry, with the bytes it was imported or
//! pulled with, so the registry gives it the same digests.
//!
//! ```text
//! ImageStore::export(source) -> manifest bytes (kept, or written once for a docker-save import),
//!                               config and layer blobs as stored
//! reference (target), credentials, client: as for a pull (same insecure / ca_cert / timeout)
//! token for push (and pull) on the target repository
//! per blob, `parallel` at once:
//!   in the target repository already?  (GET of its first byte)         -> "exists", not sent
//!   in another repository of the same registry the image came from?
//!     POST uploads/?mount=<digest>&from=<repo>  201                     -> "mounted", not sent
//!   else: read from the store, one monolithic upload (POST + PUT ?digest) -> "uploaded"
//! PUT manifest (its media type); the registry's digest is the manifest's sha256
//! ```
//!
//! A blob is read into memory for its upload (`oci-client` takes a slice): a push holds at most
//! `parallel` blobs at once.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::manifest::OciDescriptor;
use oci_client::{Reference, RegistryOperation};
use taba_image::{ImageError, ImageExport, ImageStore};
use taba_types::api::{LayerStatus, PullEvent};

use crate::pull::{blocking, Session};
use crate::{Progress, Registries, RegistryError};

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The target, normalised.
    pub reference: String,
    /// Digest of the manifest pushed (as the registry names it).
    pub digest: String,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry had (in the repository, or mounted from another).
    pub skipped: usize,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// What happened to one blob.
enum Sent {
    Exists,
    Mounted,
    Uploaded(u64),
}

impl Registries {
    /// Pushes the stored image `source` to `target` (`host[:port]/repo[:tag]`). Blobs the
    /// repository has are not sent; blobs another repository of the same registry has (one
    /// the image was pulled from) are mounted. The registry refusing the push is
    /// [`RegistryError::PushDenied`], naming the registry and the repository.
    pub async fn push(
        &self,
        store: Arc<ImageStore>,
        source: &str,
        target: &str,
        progress: Progress<'_>,
    ) -> Result<Pushed, RegistryError> {
        let s = self.session(target)?;
        if s.reference.digest().is_some() {
            return Err(RegistryError::InvalidReference {
                reference: target.chars().take(200).collect(),
                reason: "push to a tag (repo:tag), not a digest".into(),
            });
        }
        let st = store.clone();
        let src = source.to_string();
        let image = blocking(move || st.export(&src)?.ok_or(ImageError::NotFound(src))).await?;
        self.authorize(&s).await?;
        progress(PullEvent::Resolved {
            reference: s.reference.whole(),
            digest: image.manifest_digest(),
            platform: None,
            id: image.id.clone(),
            layers: image.layers.len(),
            needed: 0,
        });
        let mounts = mount_sources(&s, &image);
        let mut seen = BTreeSet::new();
        let blobs: Vec<(String, u64)> =
            std::iter::once((image.config.digest.clone(), image.config.size))
                .chain(image.layers.iter().map(|l| (l.digest.clone(), l.size)))
                .filter(|(d, _)| seen.insert(d.clone()))
                .collect();
        let results: Vec<Sent> = futures_util::stream::iter(blobs)
            .map(|(digest, size)| self.push_blob(&s, &store, &mounts, digest, size, progress))
            .buffer_unordered(self.config.parallel.max(1))
            .try_collect()
            .await?;
        let content_type = image
            .media_type
            .parse()
            .map_err(|_| RegistryError::Unsupported {
                reference: s.reference.whole(),
                reason: format!("manifest media type {:?}", image.media_type),
            })?;
        let digest = image.manifest_digest();
        s.client
            .push_manifest_raw(&s.reference, image.manifest.clone(), content_type)
            .await
            .map_err(|e| self.push_error(&s, e))?;
        let mut pushed = Pushed {
            reference: s.reference.whole(),
            digest,
            uploaded: 0,
            skipped: 0,
            bytes: 0,
        };
        for r in results {
            match r {
                Sent::Uploaded(n) => {
                    pushed.uploaded += 1;
                    pushed.bytes += n;
                }
                Sent::Exists | Sent::Mounted => pushed.skipped += 1,
            }
        }
        Ok(pushed)
    }

    /// Gets the client tokens for pushing to (and reading) the target repository; credentials
    /// refused, or no push right, fail here, before anything is sent.
    async fn authorize(&self, s: &Session) -> Result<(), RegistryError> {
        for op in [RegistryOperation::Push, RegistryOperation::Pull] {
            s.client
                .auth(&s.reference, &s.auth, op)
                .await
                .map_err(|e| self.push_error(s, e))?;
        }
        Ok(())
    }

    /// A refusal names the registry and the repository.
    fn push_error(
        &self,
        s: &Session,
        e: oci_client::errors::OciDistributionError,
    ) -> RegistryError {
        match Self::oci(s, e) {
            RegistryError::Unauthorized { registry, reason } => RegistryError::PushDenied {
                registry,
                repository: s.reference.repository().to_string(),
                reason,
            },
            e => e,
        }
    }

    /// One blob: present, mounted or uploaded.
    async fn push_blob(
        &self,
        s: &Session,
        store: &Arc<ImageStore>,
        mounts: &[Reference],
        digest: String,
        size: u64,
        progress: Progress<'_>,
    ) -> Result<Sent, RegistryError> {
        let layer = |status| PullEvent::Layer {
            digest: digest.clone(),
            size,
            status,
        };
        if self.blob_exists(s, &digest, size).await {
            progress(layer(LayerStatus::Exists));
            return Ok(Sent::Exists);
        }
        for from in mounts {
            if s.client
                .mount_blob(&s.reference, from, &digest)
                .await
                .is_ok()
            {
                progress(layer(LayerStatus::Mounted));
                return Ok(Sent::Mounted);
            }
        }
        progress(layer(LayerStatus::Uploading));
        let st = store.clone();
        let d = digest.clone();
        let data = blocking(move || {
            let f = st.open_export_blob(&d, size)?;
            let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            f.take(size)
                .read_to_end(&mut buf)
                .map_err(|source| ImageError::Io {
                    context: format!("read blob {d}"),
                    source,
                })?;
            Ok(buf)
        })
        .await?;
        s.client
            .push_blob(&s.reference, &data, &digest)
            .await
            .map_err(|e| self.push_error(s, e))?;
        progress(layer(LayerStatus::Uploaded));
        Ok(Sent::Uploaded(size))
    }

    /// Whether the target repository has the blob: a GET of its first byte answers (the
    /// client library has no HEAD for blobs). Any failure counts as "no": it is then sent.
    async fn blob_exists(&self, s: &Session, digest: &str, size: u64) -> bool {
        let desc = OciDescriptor {
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let probe = s
            .client
            .pull_blob_stream_partial(&s.reference, &desc, 0, Some(1));
        matches!(
            tokio::time::timeout(self.config.timeout, probe).await,
            Ok(Ok(_))
        )
    }
}

/// Repositories of the target's registry the image is known by (other than the target's):
/// where its blobs can be mounted from.
fn mount_sources(s: &Session, image: &ImageExport) -> Vec<Reference> {
    let mut out: Vec<Reference> = Vec::new();
    for r in &image.refs {
        let Ok(r) = r.parse::<Reference>() else {
            continue;
        };
        if r.registry() == s.reference.registry()
            && r.repository() != s.reference.repository()
            && !out.iter().any(|o| o.repository() == r.repository())
        {
            out.push(r);
        }
    }
    out
}
