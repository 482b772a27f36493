//! taba's shared domain model.
//!
//! Everything the server, the agent, the scheduler, the CLI and the tests agree
//! on lives here: job specs as users write them, the records the control plane
//! keeps (jobs, allocations, nodes, evaluations, plans, namespaces with
//! quotas), the agent<->server wire messages, the HTTP API's request and response
//! bodies ([`api`]), and validation of user input
//! with field paths.
//!
//! This crate performs no I/O and has almost no dependencies, so every other
//! crate can use it (kube-rs's `kube-core` is the model).
#![forbid(unsafe_code)]

pub mod acl;
pub mod alloc;
pub mod api;
pub mod eval;
pub mod ids;
pub mod job;
pub mod namespace;
pub mod node;
pub mod parse;
pub mod placement;
pub mod plan;
pub mod ports;
#[cfg(feature = "schema")]
mod schema;
pub mod security;
pub mod units;
pub mod validate;
pub mod vm;
pub mod wire;

pub use alloc::*;
pub use eval::*;
pub use ids::*;
pub use job::*;
pub use namespace::{Namespace, NamespaceUsage, Quota, DEFAULT_NAMESPACE};
pub use node::*;
pub use placement::*;
pub use plan::*;
pub use ports::{AllocatedPort, PortRange, PortRanges, PortSpec};
pub use units::{ByteSize, DurationSpec};
pub use validate::{FieldError, ValidationErrors};

/// Milliseconds since the Unix epoch, the one time representation on the wire.
pub type UnixMillis = u64;

/// The time now, ms since the Unix epoch (0 for a clock before it).
pub fn now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An error and its causes on one line, `outer: cause: root cause` (TLS
/// and I/O failures hide in the sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
