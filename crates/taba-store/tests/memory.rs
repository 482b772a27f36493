//! The in-memory backend against the conformance suite.

taba_store::store_conformance_tests!(Box::new(taba_store::MemoryStore::new()));
