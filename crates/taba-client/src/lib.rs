//! A typed, blocking HTTP client for taba's `/v1/` API, used by the CLI and by
//! end-to-end tests, plus the API's request and response types ([`api`]),
//! which the server shares.
//!
//! Every method maps to one route. Errors carry the server's message and the
//! field it blames ([`ClientError::Api`]).

pub mod api;

#[cfg(feature = "http")]
mod http;

#[cfg(feature = "http")]
pub use http::{Client, ClientError, LogStream, RawResponse};
