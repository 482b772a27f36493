//! Images this node lacks, fetched from the servers into the node's own image store
//! (container images, and VM disk images: a manifest whose one blob is the disk).
//!
//! ```text
//! runner: task needs image R          servers (image store with blobs)
//!   store.resolve(R) -> present? ----- yes: start the task
//!   GET /v1/agent/images/manifests/R ->  id, config + layer blobs (digest, size)
//!   lock(id)      one fetch per image at a time on this node; a second allocation
//!                 waits here, then finds everything present and downloads nothing
//!   store.fetch(manifest)             -> the blobs the store lacks
//!   GET /v1/agent/images/blobs/D  x N -> streamed into a BlobWriter each (at most
//!                 `parallel` at once); size and digest checked before the blob is named
//!   Fetch::commit                     -> unpack + verify + commit, as a local import
//! ```
//!
//! A failure (servers unreachable, unknown image, a blob that is not what its digest says)
//! is returned with its reason for the task's events; the store keeps nothing of it (the
//! fetch's staging dir goes when the [`taba_image::Fetch`] is dropped).

use crate::client::{ClientError, ServerClient};
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taba_image::{BlobWriter, Fetch, ImageError, ImageStore};
use taba_types::wire::BlobDescriptor;
use taba_types::NodeId;

/// How long a blob download may stall between two chunks.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an image could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The servers did not give the image's manifest.
    #[error("cannot get the manifest of {reference} from the servers")]
    Manifest {
        /// The reference asked for.
        reference: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// A blob download failed.
    #[error("cannot download blob {digest}")]
    Download {
        /// The blob.
        digest: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// A blob download stalled.
    #[error("download of blob {digest} stalled for {}s", CHUNK_TIMEOUT.as_secs())]
    Stalled {
        /// The blob.
        digest: String,
    },
    /// The node's image store refused or failed (bad manifest, digest mismatch, disk).
    #[error("image store")]
    Image(#[from] ImageError),
    /// A blocking store task panicked or was cancelled.
    #[error("image store task failed")]
    Task,
}

/// What a fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The image id.
    pub id: String,
    /// Blobs downloaded (0: another allocation of this node fetched the image first).
    pub blobs: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// From asking for the manifest to the image committed.
    pub elapsed: Duration,
}

/// Fetches images into the node's store; one per agent, shared by all allocations.
pub struct ImageFetcher {
    store: Arc<ImageStore>,
    client: ServerClient,
    node_id: NodeId,
    parallel: usize,
    /// One lock per image id being fetched.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| FetchError::Task)?
        .map_err(FetchError::Image)
}

impl ImageFetcher {
    /// Fetch into `store` from the servers `client` talks to, as node `node_id`, at most
    /// `parallel` blobs at once.
    pub fn new(
        store: Arc<ImageStore>,
        client: ServerClient,
        node_id: NodeId,
        parallel: usize,
    ) -> Self {
        Self {
            store,
            client,
            node_id,
            parallel: parallel.max(1),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the node's store has the image (container or VM disk) `reference` names.
    pub async fn is_present(&self, reference: &str) -> Result<bool, FetchError> {
        let store = self.store.clone();
        let r = reference.to_string();
        blocking(move || Ok(store.resolve(&r)?.is_some() || store.resolve_disk(&r)?.is_some()))
            .await
    }

    /// Fetches the image `reference` names from the servers; layers the store has are not
    /// fetched again, and concurrent calls for one image download it once.
    pub async fn fetch(&self, reference: &str) -> Result<Fetched, FetchError> {
        let started = std::time::Instant::now();
        let manifest = self
            .client
            .image_manifest(&self.node_id, reference)
            .await
            .map_err(|source| FetchError::Manifest {
                reference: reference.to_string(),
                source,
            })?;
        let lock = self
            .inflight
            .lock()
            .unwrap()
            .entry(manifest.id.clone())
            .or_default()
            .clone();
        let result = {
            let _one_at_a_time = lock.lock().await;
            let store = self.store.clone();
            let fetch = blocking(move || store.fetch(&manifest)).await?;
            self.download_and_commit(fetch).await
        }
        .map(|f| Fetched {
            elapsed: started.elapsed(),
            ..f
        });
        drop(lock);
        self.inflight
            .lock()
            .unwrap()
            .retain(|_, l| Arc::strong_count(l) > 1);
        result
    }

    async fn download_and_commit(&self, fetch: Fetch) -> Result<Fetched, FetchError> {
        let needed: Vec<BlobDescriptor> = fetch.needed().to_vec();
        let jobs = needed
            .iter()
            .map(|b| Ok((fetch.writer(b)?, b.digest.clone())))
            .collect::<Result<Vec<_>, ImageError>>()?;
        let client = self.client.clone();
        let node = self.node_id.clone();
        let bytes: Vec<u64> = futures_util::stream::iter(jobs)
            .map(|(writer, digest)| download(client.clone(), node.clone(), writer, digest))
            .buffer_unordered(self.parallel)
            .try_collect()
            .await?;
        let id = fetch.id().to_string();
        blocking(move || fetch.commit()).await?;
        Ok(Fetched {
            id,
            blobs: needed.len(),
            bytes: bytes.iter().sum(),
            elapsed: Duration::ZERO,
        })
    }
}

/// Streams one blob into its writer; the disk writes run on a blocking thread.
async fn download(
    client: ServerClient,
    node: NodeId,
    mut writer: BlobWriter,
    digest: String,
) -> Result<u64, FetchError> {
    let mut resp =
        client
            .image_blob(&node, &digest)
            .await
            .map_err(|source| FetchError::Download {
                digest: digest.clone(),
                source,
            })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let d = digest.clone();
    let disk = tokio::task::spawn_blocking(move || -> Result<u64, ImageError> {
        while let Some(chunk) = rx.blocking_recv() {
            writer.write_all(&chunk).map_err(|source| ImageError::Io {
                context: format!("write blob {d}"),
                source,
            })?;
        }
        let n = writer.written();
        writer.finish()?;
        Ok(n)
    });
    let mut net: Result<(), FetchError> = Ok(());
    loop {
        match tokio::time::timeout(CHUNK_TIMEOUT, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                if tx.send(chunk).await.is_err() {
                    break; // the writer refused (too long): its error says why
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(source)) => {
                net = Err(FetchError::Download {
                    digest: digest.clone(),
                    source: ClientError::Http {
                        url: digest.clone(),
                        source,
                    },
                });
                break;
            }
            Err(_) => {
                net = Err(FetchError::Stalled {
                    digest: digest.clone(),
                });
                break;
            }
        }
    }
    drop(tx);
    let written = disk.await.map_err(|_| FetchError::Task)?;
    net?;
    Ok(written?)
}
