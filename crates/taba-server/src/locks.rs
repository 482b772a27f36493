//! Per-key write locks. A change reads records from memory, writes them
//! through the store and then applies them to memory; holding the locks of
//! the jobs and nodes it touches for that whole sequence keeps memory and store
//! identical while unrelated changes still commit concurrently (and share the
//! store's group commit).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// A set of named async locks.
#[derive(Default)]
pub struct KeyLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held locks; released on drop.
pub struct Held(#[allow(dead_code)] Vec<OwnedMutexGuard<()>>);

/// The lock key of a job.
pub fn job_key(namespace: &str, job: &str) -> String {
    format!("job/{namespace}/{job}")
}

/// The lock key of a node.
pub fn node_key(node: &str) -> String {
    format!("node/{node}")
}

/// Lock key of a node name (registrations under one name are serialised,
/// so two nodes can never both take it).
pub fn node_name_key(name: &str) -> String {
    format!("node-name/{name}")
}

impl KeyLocks {
    /// Take the locks of `keys`, in a fixed order so two callers never deadlock.
    pub async fn lock(&self, mut keys: Vec<String>) -> Held {
        keys.sort();
        keys.dedup();
        let mut guards = Vec::with_capacity(keys.len());
        for k in keys {
            let m = {
                let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
                map.entry(k).or_default().clone()
            };
            guards.push(m.lock_owned().await);
        }
        Held(guards)
    }
}
