//! The one error type of registry operations, and how the client library's errors map to it.

use oci_client::errors::{OciDistributionError, OciErrorCode};

/// What went wrong talking to a registry or storing what it sent.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// As given.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The registry refused the credentials (or asked for some and none are known).
    #[error(
        "registry {registry} refused access: {reason}; log in with `taba image login {registry}`"
    )]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// What it said.
        reason: String,
    },
    /// The registry refused a push to the repository (no right to push there, or no login).
    #[error(
        "registry {registry} refused a push to repository {repository}: {reason}; check the \
         login (`taba image login {registry}`) and its rights on {repository}"
    )]
    PushDenied {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// What it said.
        reason: String,
    },
    /// The registry does not have the repository, tag or digest.
    #[error("{reference} not found in registry {registry}: {reason}")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry host.
        registry: String,
        /// What it said.
        reason: String,
    },
    /// An image index has no image for this node's platform.
    #[error("{reference} has no image for {wanted} (it has: {available})")]
    NoPlatform {
        /// The reference.
        reference: String,
        /// This node's platform (`linux/amd64`).
        wanted: String,
        /// The index's platforms.
        available: String,
    },
    /// The registry sent something taba cannot run (media type, schema, a broken document).
    #[error("{reference}: {reason}")]
    Unsupported {
        /// The reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry could not be reached, failed, or sent a bad answer.
    #[error("registry {registry}")]
    Registry {
        /// The registry host.
        registry: String,
        /// Why.
        #[source]
        source: OciDistributionError,
    },
    /// A blob download stalled or failed part way.
    #[error("download of {digest} from {registry} failed")]
    Download {
        /// The registry host.
        registry: String,
        /// The blob.
        digest: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A registry setting is unusable (an unreadable CA file, a bad credentials file).
    #[error("registry settings: {0}")]
    Settings(String),
    /// The image store refused what the registry sent (digest or size mismatch) or failed.
    #[error("image store")]
    Image(#[from] taba_image::ImageError),
    /// A blocking store task panicked or was cancelled.
    #[error("image store task failed")]
    Task,
}

impl RegistryError {
    /// Maps an error of the client library: refusals and unknown names get their own kinds.
    pub(crate) fn from_oci(registry: &str, reference: &str, e: OciDistributionError) -> Self {
        let unauthorized = |reason: String| RegistryError::Unauthorized {
            registry: registry.to_string(),
            reason,
        };
        let not_found = |reason: String| RegistryError::NotFound {
            reference: reference.to_string(),
            registry: registry.to_string(),
            reason,
        };
        match e {
            OciDistributionError::UnauthorizedError { .. } => {
                unauthorized("401 unauthorized".into())
            }
            OciDistributionError::AuthenticationFailure(reason) => {
                unauthorized(reason.trim().chars().take(300).collect())
            }
            OciDistributionError::RegistryError { envelope, url } => {
                let first = envelope.errors.first();
                let text = envelope.to_string();
                match first.map(|e| &e.code) {
                    Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => unauthorized(text),
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound,
                    ) => not_found(text),
                    _ => RegistryError::Registry {
                        registry: registry.to_string(),
                        source: OciDistributionError::RegistryError { envelope, url },
                    },
                }
            }
            OciDistributionError::ServerError {
                code: 401 | 403,
                message,
                ..
            } => unauthorized(message.trim().chars().take(300).collect()),
            OciDistributionError::ServerError {
                code: 404, message, ..
            } => not_found(message.trim().chars().take(300).collect()),
            OciDistributionError::ImageManifestNotFoundError(m) => not_found(m),
            e => RegistryError::Registry {
                registry: registry.to_string(),
                source: e,
            },
        }
    }
}
