//! The etcd backend against the conformance suite, on a real etcd started per test, plus what
//! only it has: persistence in etcd across reconnects, prefixes that separate clusters, the
//! lease and watch primitives of leader election, and a member lost from a 3-member cluster.

mod common;

use std::time::Duration;

use common::{temp_etcd, EtcdCluster};
use taba_store::{conformance, Created, EtcdStore, KeyChange, Store, StoreError, Table, Txn};

taba_store::store_conformance_tests!(temp_etcd());

#[test]
fn persists_across_reconnect() {
    let etcd = EtcdCluster::single();
    conformance::persists_across_reopen(|| etcd.store("/taba"));
}

#[test]
fn prefixes_separate_clusters() {
    let etcd = EtcdCluster::single();
    let a = etcd.store("/a");
    let b = etcd.store("/b/");
    a.apply(Txn::new().put(Table::Jobs, "web", b"a".to_vec()))
        .unwrap();
    assert_eq!(b.get(Table::Jobs, "web").unwrap(), None);
    assert_eq!(b.scan(Table::Jobs, "").unwrap(), vec![]);
    b.apply(Txn::new().put(Table::Jobs, "web", b"b".to_vec()))
        .unwrap();
    assert_eq!(a.get(Table::Jobs, "web").unwrap().unwrap().value, b"a");
    assert_eq!(b.prefix(), "/b");
}

#[test]
fn connect_fails_clearly_without_etcd() {
    let mut config = taba_store::EtcdConfig::new(vec!["http://127.0.0.1:1".to_owned()]);
    config.connect_timeout = Duration::from_millis(200);
    config.request_timeout = Duration::from_millis(500);
    let err = EtcdStore::connect(&config).unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    let err = EtcdStore::connect(&taba_store::EtcdConfig::new(vec![])).unwrap_err();
    assert!(err.to_string().contains("no endpoints"), "{err}");
}

#[test]
fn scans_read_past_one_page() {
    let store = temp_etcd();
    for chunk in 0..3 {
        let mut txn = Txn::new();
        for n in 0..400 {
            txn = txn.put(Table::Allocs, format!("a/{:04}", chunk * 400 + n), vec![1]);
        }
        store.apply(txn).unwrap();
    }
    let all = store.scan(Table::Allocs, "a/").unwrap();
    assert_eq!(all.len(), 1200);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
}

fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut)
}

#[test]
fn watch_all_streams_each_transaction_once_in_order() {
    let etcd = EtcdCluster::single();
    let store = etcd.store("/w");
    let other = etcd.store("/w2");
    store
        .apply(Txn::new().put(Table::Jobs, "default/old", b"0".to_vec()))
        .unwrap();
    let from = store.index().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let watch = store.watch_all(from, tx).unwrap();
    let first = store
        .apply(
            Txn::new()
                .put(Table::Jobs, "default/web", b"1".to_vec())
                .put(Table::Allocs, "a1", b"x".to_vec()),
        )
        .unwrap();
    // Another taba cluster's prefix that starts with the same letters is not ours.
    other
        .apply(Txn::new().put(Table::Jobs, "default/web", b"no".to_vec()))
        .unwrap();
    let second = store
        .apply(Txn::new().delete(Table::Jobs, "default/old"))
        .unwrap();
    let got = block_on(async {
        let mut got = vec![];
        while got.len() < 2 {
            let b = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a batch within 10 s")
                .expect("the watch runs")
                .expect("no watch error");
            got.push(b);
        }
        got
    });
    assert_eq!(got[0].index, first);
    let keys: Vec<(Table, &str, Option<&[u8]>)> = got[0]
        .changes
        .iter()
        .map(|c| {
            (
                c.table,
                c.key.as_str(),
                c.record.as_ref().map(|r| &r.value[..]),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            (Table::Jobs, "default/web", Some(&b"1"[..])),
            (Table::Allocs, "a1", Some(&b"x"[..]))
        ]
    );
    assert_eq!(got[0].changes[0].record.as_ref().unwrap().mod_index, first);
    assert_eq!(got[1].index, second);
    assert_eq!(got[1].changes.len(), 1);
    assert_eq!(
        (got[1].changes[0].table, got[1].changes[0].key.as_str()),
        (Table::Jobs, "default/old")
    );
    assert!(got[1].changes[0].record.is_none(), "a delete");
    // Closing the receiver ends the watch task.
    drop(rx);
    block_on(async {
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("the watch ends once nobody reads")
            .expect("no panic")
    });
}

#[test]
fn lease_keys_are_exclusive_watched_and_expire() {
    let store = temp_etcd();
    block_on(async {
        let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
        let won = match store
            .create_with_lease(Table::Meta, "leader", b"one".to_vec(), lease)
            .await
            .unwrap()
        {
            Created::Won(index) => index,
            other => panic!("first campaign must win: {other:?}"),
        };
        let other = store.grant_lease(Duration::from_secs(5)).await.unwrap();
        match store
            .create_with_lease(Table::Meta, "leader", b"two".to_vec(), other)
            .await
            .unwrap()
        {
            Created::Held { holder, at } => {
                assert_eq!(holder.value, b"one");
                assert_eq!(holder.mod_index, won);
                assert!(at >= won);
            }
            other => panic!("second campaign must see the holder: {other:?}"),
        }
        // A write fenced on the leader key commits while it is held ...
        store
            .apply(Txn::new().check_mod_index(Table::Meta, "leader", won).put(
                Table::Jobs,
                "j",
                b"x".to_vec(),
            ))
            .unwrap();
        assert!(store.keep_lease_alive(lease).await.unwrap());
        assert_eq!(
            store
                .watch_key(Table::Meta, "leader", won, Duration::from_millis(200))
                .await
                .unwrap(),
            KeyChange::Unchanged
        );
        // ... and the key goes when its lease is not renewed.
        let change = store
            .watch_key(Table::Meta, "leader", won, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(change, KeyChange::Deleted);
        assert!(!store.keep_lease_alive(lease).await.unwrap());
        let err = store
            .apply(Txn::new().check_mod_index(Table::Meta, "leader", won).put(
                Table::Jobs,
                "j",
                b"y".to_vec(),
            ))
            .unwrap_err();
        assert!(err.is_conflict(), "{err:?}");
        assert_eq!(store.get(Table::Jobs, "j").unwrap().unwrap().value, b"x");
        match store
            .create_with_lease(Table::Meta, "leader", b"two".to_vec(), other)
            .await
            .unwrap()
        {
            Created::Won(index) => assert!(index > won),
            other => panic!("the next campaign wins: {other:?}"),
        }
        store.revoke_lease(other).await.unwrap();
        assert_eq!(store.get(Table::Meta, "leader").unwrap(), None);
    });
}

#[test]
fn a_store_is_usable_from_inside_another_runtime() {
    let store = std::sync::Arc::new(temp_etcd());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let index = rt.block_on(async {
        // Called on the caller's only runtime thread: the store's own runtime does the work.
        store
            .apply(Txn::new().put(Table::Meta, "m", b"1".to_vec()))
            .unwrap()
    });
    assert_eq!(store.index().unwrap(), index);
    // Dropped inside an async context: must not panic.
    rt.block_on(async move { drop(store) });
}

#[test]
fn losing_one_member_of_three_keeps_the_store_working() {
    let mut etcd = EtcdCluster::start(3);
    let store = etcd.store("/taba");
    let before = store
        .apply(Txn::new().put(Table::Jobs, "a", b"1".to_vec()))
        .unwrap();
    etcd.kill(0);
    // Requests routed to the dead member fail over to the others; a bounded number of tries.
    // Bounded by time: a request sent to the dead member waits for its connect timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let after = loop {
        match store.apply(Txn::new().put(Table::Jobs, "b", b"2".to_vec())) {
            Ok(index) => break index,
            Err(err) if std::time::Instant::now() > deadline => {
                panic!("no write within 60 s with one member down: {err:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(after > before);
    assert_eq!(store.get(Table::Jobs, "a").unwrap().unwrap().value, b"1");
    etcd.restart(0);
}
