//! Test support shared by the store's integration tests: a real etcd per test.

#![allow(dead_code)]

use std::ops::Deref;

pub use taba_store::etcd_testing::EtcdCluster;
use taba_store::EtcdStore;

/// A store on its own one-member etcd, which lives (and is killed) with the fixture. Each
/// test gets its own etcd so that the revisions it sees are its own transactions only.
pub struct TempEtcd {
    // Field order: the store goes before the etcd it talks to.
    pub store: EtcdStore,
    pub etcd: EtcdCluster,
}

impl Deref for TempEtcd {
    type Target = EtcdStore;
    fn deref(&self) -> &EtcdStore {
        &self.store
    }
}

/// A fresh store on a fresh one-member etcd.
pub fn temp_etcd() -> TempEtcd {
    let etcd = EtcdCluster::single();
    let store = etcd.store("/taba-test");
    TempEtcd { store, etcd }
}
