//! Images from OCI distribution registries: pulling into taba's image store and pushing out of it with the
//! `oci-client` crate (references, the distribution protocol, basic and bearer auth), this
//! node's platform out of image indexes, credentials (`taba image login`, Docker's
//! `config.json`) and per-registry settings (plain HTTP, extra CA).
//!
//! It owns the network side only: blobs enter the store through [`taba_image::Fetch`], which
//! checks each against its digest and size and unpacks them as an import does. It must not
//! know about jobs or the API.

mod auth;
mod config;
mod error;
mod platform;
mod pull;
mod push;

pub use config::{RegistryConfig, RegistryHost};
pub use error::RegistryError;
pub use platform::Platform;
pub use pull::{Progress, Pulled, Registries};
pub use push::Pushed;
