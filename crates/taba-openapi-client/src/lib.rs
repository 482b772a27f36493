//! taba's API client as a generator makes it from `docs/openapi.json`
//! (progenitor, at build time): the test that the document alone is enough
//! for a client author. taba's own CLI uses `taba-client`.
#![allow(missing_docs, clippy::all, unused)]

include!(concat!(env!("OUT_DIR"), "/client.rs"));
