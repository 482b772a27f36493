//! Pulling an image from a registry into an [`ImageStore`].
//!
//! ```text
//! reference (oci-client's parser: `busybox` -> docker.io/library/busybox:latest)
//!   credentials: login file, else Docker config.json, else anonymous
//!   GET manifest (tag or digest; oci-client checks the body against the digest)
//!     an index? -> this node's platform's entry -> GET that manifest (by digest)
//!   config blob: from the store if it has it, else GET (<= 16 MiB, digest checked)
//!   -> taba's ImageManifest (config + layers with diff_ids) -> ImageStore::fetch
//!      (the blobs the store lacks; the others are not requested at all)
//!   GET blob x needed, `parallel` at once, each streamed into a BlobWriter
//!      (size checked per write, sha256 at the end) with a timeout per read
//!   Fetch::commit: unpack, check diff_ids, commit under the store lock
//! any failure: the Fetch is dropped, its staging dir with it: nothing enters the store
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::{
    OciDescriptor, OciImageManifest, OciManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use taba_image::{BlobWriter, Fetch, ImageError, ImageStore, ImageSummary};
use taba_types::api::{LayerStatus, PullEvent};
use taba_types::wire::{BlobDescriptor, ImageManifest, LayerDescriptor, PROTOCOL};

use crate::platform::Platform;
use crate::{auth, RegistryConfig, RegistryError};

/// The largest manifest or index read.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The largest image config read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// Bytes between two progress events of one layer.
const PROGRESS_STEP: u64 = 1 << 20;
/// Where Debian keeps the system's CA certificates.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
const ACCEPT: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Where pull progress goes.
pub type Progress<'a> = &'a (dyn Fn(PullEvent) + Send + Sync);

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image as stored.
    pub image: ImageSummary,
    /// Digest of the manifest (or index) the reference named.
    pub digest: String,
    /// Blobs downloaded.
    pub blobs: usize,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Access to registries with the server's settings and credentials.
pub struct Registries {
    pub(crate) config: RegistryConfig,
    login_file: PathBuf,
    system_roots: Vec<Certificate>,
    host_roots: BTreeMap<String, Vec<Certificate>>,
    platform: Platform,
    /// One lock per image id being pulled: a second pull of the same image waits, then
    /// finds its blobs in the store and downloads nothing.
    inflight: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// One registry conversation: its client (fresh, so a changed login takes effect), the
/// parsed reference and its credentials.
pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) reference: Reference,
    pub(crate) registry: String,
    pub(crate) auth: RegistryAuth,
}

/// The image manifest a reference leads to.
struct Resolved {
    /// Digest of what the reference names (an index or a manifest).
    digest: String,
    manifest: OciImageManifest,
    /// The image manifest's bytes as the registry sent them (kept with the image).
    bytes: Vec<u8>,
    platform: Option<String>,
}

/// The certificates of a PEM file, one by one.
fn pem_certs(path: &std::path::Path) -> Result<Vec<Certificate>, std::io::Error> {
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let block = &rest[start..start + end + END.len()];
        out.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data: format!("{block}\n").into_bytes(),
        });
        rest = &rest[start + end + END.len()..];
    }
    Ok(out)
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| RegistryError::Task)?
        .map_err(RegistryError::Image)
}

impl Registries {
    /// Registry access with `config`; logins are kept in `login_file` (0600). Reads every
    /// configured CA file now, so a bad one fails the server's start, not a pull.
    pub fn new(config: RegistryConfig, login_file: PathBuf) -> Result<Self, RegistryError> {
        let system_roots = pem_certs(std::path::Path::new(SYSTEM_ROOTS)).unwrap_or_default();
        let mut host_roots = BTreeMap::new();
        for (host, h) in &config.hosts {
            if let Some(ca) = &h.ca_cert {
                let certs = pem_certs(ca).map_err(|e| {
                    RegistryError::Settings(format!(
                        "registry.hosts.{host:?}.ca_cert: cannot read {}: {e}",
                        ca.display()
                    ))
                })?;
                if certs.is_empty() {
                    return Err(RegistryError::Settings(format!(
                        "registry.hosts.{host:?}.ca_cert: {} has no PEM certificate",
                        ca.display()
                    )));
                }
                host_roots.insert(host.clone(), certs);
            }
        }
        Ok(Self {
            config,
            login_file,
            system_roots,
            host_roots,
            platform: Platform::current(),
            inflight: std::sync::Mutex::default(),
        })
    }

    /// The platform images are picked for.
    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    pub(crate) fn client(&self, registry: &str) -> Result<Client, RegistryError> {
        let host = self.config.host(registry);
        let mut roots = self.system_roots.clone();
        roots.extend(self.host_roots.get(registry).cloned().unwrap_or_default());
        let cfg = ClientConfig {
            protocol: if host.insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates: roots,
            platform_resolver: None,
            read_timeout: Some(self.config.timeout),
            connect_timeout: Some(self.config.timeout),
            max_concurrent_download: self.config.parallel.max(1),
            // A push sends each blob in one PUT (no 4 MiB PATCH round trips).
            use_monolithic_push: true,
            user_agent: concat!("taba/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        Client::try_from(cfg).map_err(|e| {
            RegistryError::Settings(format!("cannot set up a client for {registry}: {e}"))
        })
    }

    /// Parses a reference as registries do, and checks the image store would keep it.
    pub fn parse(reference: &str) -> Result<Reference, RegistryError> {
        let invalid = |reason: String| RegistryError::InvalidReference {
            reference: reference.chars().take(200).collect(),
            reason,
        };
        let r: Reference = reference.parse().map_err(|e| invalid(format!("{e}")))?;
        taba_image::canonical_reference(&r.whole()).map_err(|e| invalid(e.to_string()))?;
        Ok(r)
    }

    pub(crate) fn session(&self, reference: &str) -> Result<Session, RegistryError> {
        let reference = Self::parse(reference)?;
        let registry = reference.registry().to_string();
        let auth = auth::lookup(
            &registry,
            &self.login_file,
            self.config.docker_config_path().as_deref(),
        )?;
        Ok(Session {
            client: self.client(&registry)?,
            reference,
            registry,
            auth,
        })
    }

    pub(crate) fn oci(s: &Session, e: oci_client::errors::OciDistributionError) -> RegistryError {
        RegistryError::from_oci(&s.registry, &s.reference.whole(), e)
    }

    async fn raw_manifest(
        &self,
        s: &Session,
        r: &Reference,
    ) -> Result<(OciManifest, String, Vec<u8>), RegistryError> {
        let (bytes, digest) = s
            .client
            .pull_manifest_raw(r, &s.auth, ACCEPT)
            .await
            .map_err(|e| Self::oci(s, e))?;
        let unsupported = |reason: String| RegistryError::Unsupported {
            reference: r.whole(),
            reason,
        };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(unsupported(format!(
                "manifest of {} bytes; at most {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        let m = serde_json::from_slice(&bytes)
            .map_err(|e| unsupported(format!("not an image manifest or index: {e}")))?;
        Ok((m, digest, bytes.to_vec()))
    }

    /// The image manifest `s.reference` leads to, through an index to this node's platform.
    async fn resolve_manifest(&self, s: &Session) -> Result<Resolved, RegistryError> {
        let (m, digest, bytes) = self.raw_manifest(s, &s.reference).await?;
        let index = match m {
            OciManifest::Image(manifest) => {
                return Ok(Resolved {
                    digest,
                    manifest,
                    bytes,
                    platform: None,
                })
            }
            OciManifest::ImageIndex(i) => i,
        };
        let Some(entry) = self.platform.pick(&index.manifests) else {
            return Err(RegistryError::NoPlatform {
                reference: s.reference.whole(),
                wanted: self.platform.to_string(),
                available: Platform::list(&index.manifests),
            });
        };
        let by_digest = s.reference.clone_with_digest(entry.digest.clone());
        match self.raw_manifest(s, &by_digest).await? {
            (OciManifest::Image(manifest), _, bytes) => Ok(Resolved {
                digest,
                manifest,
                bytes,
                platform: entry.platform.as_ref().map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                }),
            }),
            (OciManifest::ImageIndex(_), _, _) => Err(RegistryError::Unsupported {
                reference: by_digest.whole(),
                reason: "an index whose platform entry is another index".into(),
            }),
        }
    }

    /// The digest of the manifest (or index) `reference` names now, without pulling.
    pub async fn resolve_digest(&self, reference: &str) -> Result<String, RegistryError> {
        let s = self.session(reference)?;
        s.client
            .fetch_manifest_digest(&s.reference, &s.auth)
            .await
            .map_err(|e| Self::oci(&s, e))
    }

    /// The image config's bytes: from the store when it has them, else from the registry.
    async fn config_bytes(
        &self,
        s: &Session,
        store: &Arc<ImageStore>,
        desc: &OciDescriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let size = u64::try_from(desc.size).unwrap_or(u64::MAX);
        if size == 0 || size > MAX_CONFIG_BYTES {
            return Err(RegistryError::Unsupported {
                reference: s.reference.whole(),
                reason: format!("config of {} bytes; at most {MAX_CONFIG_BYTES}", desc.size),
            });
        }
        let st = store.clone();
        let digest = desc.digest.clone();
        let local = blocking(move || {
            let Some((f, _)) = st.open_blob(&digest)? else {
                return Ok(None);
            };
            let mut buf = Vec::new();
            f.take(MAX_CONFIG_BYTES + 1)
                .read_to_end(&mut buf)
                .map_err(|e| ImageError::Io {
                    context: format!("read blob {digest}"),
                    source: e,
                })?;
            Ok(Some(buf))
        })
        .await?;
        let bytes = match local {
            Some(b) => b,
            None => {
                let mut stream = s
                    .client
                    .pull_blob_stream(&s.reference, &plain(desc))
                    .await
                    .map_err(|e| Self::oci(s, e))?;
                let mut buf = Vec::new();
                while let Some(chunk) = self.next_chunk(s, &desc.digest, &mut stream).await? {
                    buf.extend_from_slice(&chunk);
                    if buf.len() as u64 > size {
                        break;
                    }
                }
                buf
            }
        };
        if bytes.len() as u64 != size {
            return Err(ImageError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: size,
                actual: bytes.len() as u64,
            }
            .into());
        }
        let actual = taba_image::sha256_digest(&bytes);
        if actual != desc.digest {
            return Err(ImageError::DigestMismatch {
                expected: desc.digest.clone(),
                actual,
            }
            .into());
        }
        Ok(bytes)
    }

    async fn next_chunk(
        &self,
        s: &Session,
        digest: &str,
        stream: &mut oci_client::client::SizedStream,
    ) -> Result<Option<bytes::Bytes>, RegistryError> {
        let fail = |source: std::io::Error| RegistryError::Download {
            registry: s.registry.clone(),
            digest: digest.to_string(),
            source,
        };
        match tokio::time::timeout(self.config.timeout, stream.next()).await {
            Ok(Some(Ok(b))) => Ok(Some(b)),
            Ok(Some(Err(e))) => Err(fail(e)),
            Ok(None) => Ok(None),
            Err(_) => Err(fail(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no data for {}s", self.config.timeout.as_secs()),
            ))),
        }
    }

    /// Pulls `reference` into `store`. Layers the store has are not requested; every blob is
    /// checked against its digest and size before it is used; on any failure the store keeps
    /// nothing of this pull.
    pub async fn pull(
        &self,
        store: Arc<ImageStore>,
        reference: &str,
        progress: Progress<'_>,
    ) -> Result<Pulled, RegistryError> {
        let s = self.session(reference)?;
        let resolved = self.resolve_manifest(&s).await?;
        let config = self
            .config_bytes(&s, &store, &resolved.manifest.config)
            .await?;
        let wire = wire_manifest(&s, &resolved, &config)?;
        let lock = self
            .inflight
            .lock()
            .expect("not poisoned")
            .entry(wire.id.clone())
            .or_default()
            .clone();
        let result = {
            let _one_at_a_time = lock.lock().await;
            self.pull_locked(&s, store, resolved, wire, &config, progress)
                .await
        };
        drop(lock);
        self.inflight
            .lock()
            .expect("not poisoned")
            .retain(|_, l| Arc::strong_count(l) > 1);
        result
    }

    /// The part of a pull that holds the image's lock: what the store lacks, downloaded and
    /// committed.
    async fn pull_locked(
        &self,
        s: &Session,
        store: Arc<ImageStore>,
        resolved: Resolved,
        wire: ImageManifest,
        config: &[u8],
        progress: Progress<'_>,
    ) -> Result<Pulled, RegistryError> {
        let st = store.clone();
        let w = wire.clone();
        let mut fetch = blocking(move || st.fetch(&w)).await?;
        fetch.keep_manifest(resolved.bytes.clone())?;
        progress(PullEvent::Resolved {
            reference: s.reference.whole(),
            digest: resolved.digest.clone(),
            platform: resolved.platform.clone(),
            id: wire.id.clone(),
            layers: wire.layers.len(),
            needed: fetch.needed().len(),
        });
        for l in &wire.layers {
            if !fetch.needed().iter().any(|b| b.digest == l.digest) {
                progress(PullEvent::Layer {
                    digest: l.digest.clone(),
                    size: l.size,
                    status: LayerStatus::Present,
                });
            }
        }
        let (blobs, bytes) = self.download(s, &wire, &fetch, config, progress).await?;
        let image = blocking(move || fetch.commit()).await?;
        Ok(Pulled {
            image,
            digest: resolved.digest,
            blobs,
            bytes,
        })
    }

    /// Downloads every blob `fetch` needs, `parallel` at once; the config is written from
    /// `config`. Returns blobs and bytes downloaded.
    async fn download(
        &self,
        s: &Session,
        wire: &ImageManifest,
        fetch: &Fetch,
        config: &[u8],
        progress: Progress<'_>,
    ) -> Result<(usize, u64), RegistryError> {
        let mut layers = Vec::new();
        for b in fetch.needed() {
            let mut w = fetch.writer(b)?;
            if b.digest == wire.config.digest {
                let bytes = config.to_vec();
                blocking(move || {
                    w.write_all(&bytes).map_err(|e| ImageError::Io {
                        context: "write image config".into(),
                        source: e,
                    })?;
                    w.finish()
                })
                .await?;
                continue;
            }
            let media_type = wire
                .layers
                .iter()
                .find(|l| l.digest == b.digest)
                .map(|l| l.media_type.clone())
                .unwrap_or_default();
            layers.push((w, b.clone(), media_type));
        }
        let n = layers.len();
        let sizes: Vec<u64> = futures_util::stream::iter(layers)
            .map(|(w, b, mt)| self.download_layer(s, w, b, mt, progress))
            .buffer_unordered(self.config.parallel.max(1))
            .try_collect()
            .await?;
        Ok((n, sizes.iter().sum()))
    }

    /// Streams one layer into its writer; the disk writes run on a blocking thread.
    async fn download_layer(
        &self,
        s: &Session,
        mut writer: BlobWriter,
        blob: BlobDescriptor,
        media_type: String,
        progress: Progress<'_>,
    ) -> Result<u64, RegistryError> {
        progress(PullEvent::Layer {
            digest: blob.digest.clone(),
            size: blob.size,
            status: LayerStatus::Downloading,
        });
        let desc = OciDescriptor {
            media_type,
            digest: blob.digest.clone(),
            size: blob.size as i64,
            ..OciDescriptor::default()
        };
        let mut stream = s
            .client
            .pull_blob_stream(&s.reference, &desc)
            .await
            .map_err(|e| Self::oci(s, e))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
        let d = blob.digest.clone();
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
        let mut net = Ok(());
        let (mut done, mut told) = (0u64, 0u64);
        loop {
            match self.next_chunk(s, &blob.digest, &mut stream).await {
                Ok(Some(chunk)) => {
                    done += chunk.len() as u64;
                    if done - told >= PROGRESS_STEP {
                        told = done;
                        progress(PullEvent::Progress {
                            digest: blob.digest.clone(),
                            done,
                        });
                    }
                    if tx.send(chunk).await.is_err() {
                        break; // the writer refused (too long): its error says why
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    net = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        let written = disk.await.map_err(|_| RegistryError::Task)?;
        net?;
        let n = written?;
        progress(PullEvent::Layer {
            digest: blob.digest,
            size: blob.size,
            status: LayerStatus::Downloaded,
        });
        Ok(n)
    }

    /// Checks `username`/`password` with `registry` and keeps them for later pulls.
    pub async fn login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let probe = self.registry_probe(registry)?;
        let client = self.client(registry)?;
        let creds = RegistryAuth::Basic(username.to_string(), password.to_string());
        let from_oci = |e| RegistryError::from_oci(registry, &probe.whole(), e);
        // A token service checks the credentials when it issues a token; a registry with
        // basic auth checks them on a request: a manifest that does not exist answers 404
        // to good credentials and 401 to bad ones.
        let token = client
            .auth(&probe, &creds, RegistryOperation::Pull)
            .await
            .map_err(from_oci)?;
        if token.is_none() {
            match client.fetch_manifest_digest(&probe, &creds).await {
                Ok(_) => {}
                Err(e) => match from_oci(e) {
                    RegistryError::NotFound { .. } => {}
                    e => return Err(e),
                },
            }
        }
        auth::save(&self.login_file, registry, username, password)
    }

    /// Forgets the login for `registry`; `false` if there was none.
    pub fn logout(&self, registry: &str) -> Result<bool, RegistryError> {
        self.registry_probe(registry)?;
        auth::remove(&self.login_file, registry)
    }

    /// A reference in `registry` used to try credentials; fails if `registry` is not a host.
    fn registry_probe(&self, registry: &str) -> Result<Reference, RegistryError> {
        let bad = || RegistryError::InvalidReference {
            reference: registry.chars().take(200).collect(),
            reason: "not a registry host (host or host:port, e.g. localhost:5000)".into(),
        };
        if registry.is_empty() || registry.contains('/') {
            return Err(bad());
        }
        let r: Reference = format!("{registry}/taba/login-check:latest")
            .parse()
            .map_err(|_| bad())?;
        if r.registry() != registry {
            return Err(bad());
        }
        Ok(r)
    }
}

/// A descriptor without `urls` (never follow a manifest to other hosts).
fn plain(desc: &OciDescriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.clone(),
        size: desc.size,
        ..OciDescriptor::default()
    }
}

/// taba's description of the image: config and layers with their diff_ids (from the config),
/// and the references to record (as asked, and by the manifest's digest).
fn wire_manifest(s: &Session, r: &Resolved, config: &[u8]) -> Result<ImageManifest, RegistryError> {
    let unsupported = |reason: String| RegistryError::Unsupported {
        reference: s.reference.whole(),
        reason,
    };
    #[derive(serde::Deserialize)]
    struct Rootfs {
        diff_ids: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        rootfs: Rootfs,
    }
    let c: Config =
        serde_json::from_slice(config).map_err(|e| unsupported(format!("image config: {e}")))?;
    let m = &r.manifest;
    if c.rootfs.diff_ids.len() != m.layers.len() {
        return Err(unsupported(format!(
            "the manifest has {} layers, its config {} diff_ids",
            m.layers.len(),
            c.rootfs.diff_ids.len()
        )));
    }
    let size = |d: &OciDescriptor| {
        u64::try_from(d.size).map_err(|_| unsupported(format!("negative size of {}", d.digest)))
    };
    let mut layers = Vec::new();
    for (l, diff_id) in m.layers.iter().zip(c.rootfs.diff_ids) {
        layers.push(LayerDescriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: size(l)?,
            diff_id,
        });
    }
    let whole = s.reference.whole();
    let by_digest = format!(
        "{}/{}@{}",
        s.reference.registry(),
        s.reference.repository(),
        r.digest
    );
    let mut refs = Vec::new();
    if s.reference.digest().is_none() {
        refs.push(whole);
    }
    refs.push(by_digest);
    Ok(ImageManifest {
        protocol: PROTOCOL,
        id: m.config.digest.clone(),
        refs,
        config: BlobDescriptor {
            digest: m.config.digest.clone(),
            size: size(&m.config)?,
        },
        layers,
        disk: None,
    })
}
