//! The one error type of the image store.

use std::io;
use std::path::PathBuf;

/// What went wrong in an image store operation.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image or reference with this name in the store.
    #[error("image not found: {0}")]
    NotFound(String),
    /// The reference is not a valid image reference.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The archive is not a readable docker-save or OCI-layout image.
    #[error("invalid image archive: {reason}")]
    InvalidArchive {
        /// What is wrong with it.
        reason: String,
    },
    /// A blob or layer does not hash to the digest its archive states.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the archive states (`sha256:<hex>`).
        expected: String,
        /// The digest of the bytes read.
        actual: String,
    },
    /// A blob has another length than its descriptor states.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob's digest.
        digest: String,
        /// The size its descriptor states.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// A digest is not `sha256:<64 lower-case hex digits>`.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The digest as given (cut to 100 characters).
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// An image manifest (from a server) is not one this store can import.
    #[error("invalid image manifest: {reason}")]
    InvalidManifest {
        /// What is wrong with it.
        reason: String,
    },
    /// The image was imported before the store kept layer blobs, so it cannot be handed on.
    #[error("image {0} has no stored layer blobs (imported by an older taba); import it again")]
    NoBlobs(String),
    /// A disk image (qcow2, raw) the store does not take.
    #[error("invalid disk image: {reason}")]
    InvalidDisk {
        /// What is wrong with it.
        reason: String,
    },
    /// A layer entry would be written outside the layer or through a symlink.
    #[error("unsafe path in layer: {0}")]
    UnsafePath(String),
    /// The image is used by a mounted container root filesystem.
    #[error("image {image} is in use by the container at {container_dir}")]
    InUse {
        /// The image id.
        image: String,
        /// The container dir whose mounted rootfs uses it.
        container_dir: PathBuf,
    },
    /// The container dir already has a rootfs of another image mounted.
    #[error("{container_dir} already has image {mounted} mounted, not {requested}")]
    RootfsConflict {
        /// The container dir.
        container_dir: PathBuf,
        /// The image whose rootfs is mounted there.
        mounted: String,
        /// The image that was asked for.
        requested: String,
    },
    /// An image goes past one of the store's caps (`[limits]` of the
    /// configuration, [`crate::ImageLimits`]); nothing of it is kept.
    #[error("{what}: {reason} (limits.{limit})")]
    LimitExceeded {
        /// What went past the cap (`layer sha256:...`, `manifest.json`).
        what: String,
        /// The configuration key of the cap.
        limit: &'static str,
        /// By how much.
        reason: String,
    },
    /// An operating system call failed.
    #[error("{context}")]
    Io {
        /// What was being done, naming the file.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    pub(crate) fn archive(reason: impl Into<String>) -> Self {
        ImageError::InvalidArchive {
            reason: reason.into(),
        }
    }
}

/// Wraps an OS error with what was being done: `.map_err(io_ctx(|| format!("read {path}")))`.
pub(crate) fn io_ctx<E: Into<io::Error>>(
    context: impl FnOnce() -> String,
) -> impl FnOnce(E) -> ImageError {
    move |e| ImageError::Io {
        context: context(),
        source: e.into(),
    }
}
