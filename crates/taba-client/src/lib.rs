//! A typed, blocking HTTP client for taba's `/v1/` API, used by the CLI and by
//! end-to-end tests.
//!
//! Every method maps to one route. Errors carry the server's message and the
//! field it blames ([`ClientError::Api`]). The request and response types
//! live in `taba_types::api` (shared with the server and the agent); [`api`]
//! re-exports them.

pub use taba_types::api;

mod http;
mod session;

pub use http::{
    Client, ClientError, ClientOptions, EventStream, LogStream, Page, RawResponse, TlsOptions,
    INDEX_HEADER, NEXT_TOKEN_HEADER,
};
pub use session::{ExecSession, ExecSessionOptions, SessionEvent, SessionInput};
