//! The conformance suite: the behaviour every [`Store`] backend must have.
//!
//! Each function takes a fresh, empty store (its index need not be 0) and panics with a
//! message when the backend misbehaves. A backend runs all of them from its tests with
//! [`store_conformance_tests!`](crate::store_conformance_tests), and durable backends also run
//! [`persists_across_reopen`]:
//!
//! ```text
//! taba_store::store_conformance_tests!(Box::new(taba_store::MemoryStore::new()));
//! ```
//!
//! The argument is an expression evaluated once per test that yields something dereferencing to
//! the store (a `Box`, or a fixture that also owns a temporary directory).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::{
    ConflictReason, Record, Store, StoreError, Table, Txn, MAX_KEY_BYTES, MAX_TXN_BYTES,
    MAX_VALUE_BYTES,
};

/// Expands to one `#[test]` per conformance function, each running it on `$fresh`.
#[macro_export]
macro_rules! store_conformance_tests {
    ($fresh:expr) => {
        $crate::store_conformance_tests!(@each $fresh;
            put_get_delete,
            put_keeps_create_index_and_advances_mod_index,
            scan_is_sorted_and_filtered_by_prefix,
            tables_are_separate,
            check_absent,
            check_mod_index,
            failed_check_applies_nothing,
            checks_see_the_state_before_the_txn,
            multi_op_txn_is_atomic,
            delete_of_absent_key_commits,
            index_is_monotonic,
            invalid_txns_are_rejected_without_an_index,
            large_values,
            unicode_keys,
            concurrent_applies_land_exactly_once,
            concurrent_compare_and_set_loses_no_update,
            racing_creates_have_one_winner,
        );
    };
    (@each $fresh:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let fixture = $fresh;
                $crate::conformance::$name(&*fixture);
            }
        )*
    };
}

fn must<T>(result: Result<T, StoreError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{what}: unexpected error: {err} ({err:?})"),
    }
}

fn get(store: &(impl Store + ?Sized), table: Table, key: &str) -> Option<Record> {
    must(store.get(table, key), &format!("get {table}/{key}"))
}

fn keys(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.key.as_str()).collect()
}

fn assert_conflict(result: Result<u64, StoreError>, table: Table, key: &str) -> ConflictReason {
    match result {
        Err(StoreError::Conflict {
            table: t,
            key: k,
            reason,
        }) if t == table && k == key => reason,
        other => panic!("expected a conflict on {table}/{key}, got {other:?}"),
    }
}

/// Put, get, overwrite and delete single records.
pub fn put_get_delete<S: Store + ?Sized>(store: &S) {
    assert_eq!(
        get(store, Table::Jobs, "web"),
        None,
        "fresh store has no records"
    );
    let i1 = must(
        store.apply(Txn::new().put(Table::Jobs, "web", b"v1".to_vec())),
        "put",
    );
    let rec = get(store, Table::Jobs, "web").expect("record after put");
    assert_eq!(
        rec,
        Record {
            key: "web".into(),
            value: b"v1".to_vec(),
            create_index: i1,
            mod_index: i1
        }
    );
    let i2 = must(
        store.apply(Txn::new().put(Table::Jobs, "web", b"v2".to_vec())),
        "overwrite",
    );
    assert_eq!(get(store, Table::Jobs, "web").unwrap().value, b"v2");
    let i3 = must(store.apply(Txn::new().delete(Table::Jobs, "web")), "delete");
    assert!(i1 < i2 && i2 < i3, "indexes {i1} {i2} {i3} must increase");
    assert_eq!(
        get(store, Table::Jobs, "web"),
        None,
        "deleted record is gone"
    );
    assert_eq!(must(store.scan(Table::Jobs, ""), "scan"), vec![]);
    // An empty value is a value, not an absence.
    must(
        store.apply(Txn::new().put(Table::Jobs, "empty", Vec::new())),
        "put empty",
    );
    assert_eq!(get(store, Table::Jobs, "empty").unwrap().value, b"");
}

/// `create_index` stays when a record is replaced; `mod_index` moves to the new commit; a record
/// re-created after a delete gets a new `create_index`.
pub fn put_keeps_create_index_and_advances_mod_index<S: Store + ?Sized>(store: &S) {
    let created = must(
        store.apply(Txn::new().put(Table::Nodes, "n1", b"a".to_vec())),
        "put",
    );
    must(
        store.apply(Txn::new().put(Table::Nodes, "other", b"x".to_vec())),
        "put other",
    );
    let updated = must(
        store.apply(Txn::new().put(Table::Nodes, "n1", b"b".to_vec())),
        "put",
    );
    let rec = get(store, Table::Nodes, "n1").unwrap();
    assert_eq!((rec.create_index, rec.mod_index), (created, updated));
    assert_eq!(
        get(store, Table::Nodes, "other").unwrap().mod_index,
        created + 1
    );
    must(store.apply(Txn::new().delete(Table::Nodes, "n1")), "delete");
    let recreated = must(
        store.apply(Txn::new().put(Table::Nodes, "n1", b"c".to_vec())),
        "put",
    );
    let rec = get(store, Table::Nodes, "n1").unwrap();
    assert_eq!((rec.create_index, rec.mod_index), (recreated, recreated));
}

/// Scans return records sorted by key (byte order) and only those under the prefix.
pub fn scan_is_sorted_and_filtered_by_prefix<S: Store + ?Sized>(store: &S) {
    let mut txn = Txn::new();
    for key in ["b/2", "a/1", "b/10", "b/1", "c", "b", "b0", "a/", "ba/1"] {
        txn = txn.put(Table::Allocs, key, key.as_bytes().to_vec());
    }
    let index = must(store.apply(txn), "put keys");
    let all = must(store.scan(Table::Allocs, ""), "scan all");
    assert_eq!(
        keys(&all),
        ["a/", "a/1", "b", "b/1", "b/10", "b/2", "b0", "ba/1", "c"]
    );
    for rec in &all {
        assert_eq!(rec.value, rec.key.as_bytes(), "value of {}", rec.key);
        assert_eq!((rec.create_index, rec.mod_index), (index, index));
    }
    let cases: [(&str, &[&str]); 6] = [
        ("b/", &["b/1", "b/10", "b/2"]),
        ("b", &["b", "b/1", "b/10", "b/2", "b0", "ba/1"]),
        ("b/1", &["b/1", "b/10"]),
        ("a/1", &["a/1"]),
        ("d", &[]),
        ("0", &[]),
    ];
    for (prefix, want) in cases {
        let got = must(store.scan(Table::Allocs, prefix), "scan prefix");
        assert_eq!(keys(&got), want, "scan of prefix {prefix:?}");
    }
}

/// The same key in two tables is two records; scans see one table only.
pub fn tables_are_separate<S: Store + ?Sized>(store: &S) {
    let mut txn = Txn::new();
    for table in Table::ALL {
        txn = txn.put(table, "k", table.name().as_bytes().to_vec());
    }
    must(store.apply(txn), "put in every table");
    for table in Table::ALL {
        let rec = get(store, table, "k").expect("record in every table");
        assert_eq!(rec.value, table.name().as_bytes());
        assert_eq!(keys(&must(store.scan(table, ""), "scan")), ["k"]);
    }
    must(store.apply(Txn::new().delete(Table::Jobs, "k")), "delete");
    assert_eq!(get(store, Table::Jobs, "k"), None);
    assert!(
        get(store, Table::JobVersions, "k").is_some(),
        "other table untouched"
    );
    let names: BTreeSet<&str> = Table::ALL.iter().map(Table::name).collect();
    assert_eq!(names.len(), Table::ALL.len(), "table names are distinct");
    for table in Table::ALL {
        assert_eq!(Table::from_name(table.name()), Some(table));
    }
}

/// `Check::Absent` passes for a missing key and fails with `Exists` for a present one.
pub fn check_absent<S: Store + ?Sized>(store: &S) {
    let i = must(
        store.apply(Txn::new().check_absent(Table::Jobs, "web").put(
            Table::Jobs,
            "web",
            b"1".to_vec(),
        )),
        "create if absent",
    );
    let reason = assert_conflict(
        store.apply(Txn::new().check_absent(Table::Jobs, "web").put(
            Table::Jobs,
            "web",
            b"2".to_vec(),
        )),
        Table::Jobs,
        "web",
    );
    assert_eq!(reason, ConflictReason::Exists { mod_index: i });
    assert_eq!(get(store, Table::Jobs, "web").unwrap().value, b"1");
    // The check looks at its own table only.
    must(
        store.apply(Txn::new().check_absent(Table::Nodes, "web").put(
            Table::Nodes,
            "web",
            b"n".to_vec(),
        )),
        "absent in another table",
    );
}

/// `Check::ModIndex` passes at the record's mod index and fails otherwise, also when absent.
pub fn check_mod_index<S: Store + ?Sized>(store: &S) {
    let i1 = must(
        store.apply(Txn::new().put(Table::Evals, "e", b"1".to_vec())),
        "put",
    );
    let i2 = must(
        store.apply(Txn::new().check_mod_index(Table::Evals, "e", i1).put(
            Table::Evals,
            "e",
            b"2".to_vec(),
        )),
        "compare and set",
    );
    let reason = assert_conflict(
        store.apply(Txn::new().check_mod_index(Table::Evals, "e", i1).put(
            Table::Evals,
            "e",
            b"3".to_vec(),
        )),
        Table::Evals,
        "e",
    );
    assert_eq!(
        reason,
        ConflictReason::ModIndex {
            expected: i1,
            actual: i2
        }
    );
    let reason = assert_conflict(
        store.apply(Txn::new().check_mod_index(Table::Evals, "missing", i2).put(
            Table::Evals,
            "x",
            b"".to_vec(),
        )),
        Table::Evals,
        "missing",
    );
    assert_eq!(reason, ConflictReason::Missing { expected: i2 });
    assert_eq!(get(store, Table::Evals, "e").unwrap().value, b"2");
    assert_eq!(get(store, Table::Evals, "x"), None);
    // A delete guarded by the mod index.
    must(
        store.apply(
            Txn::new()
                .check_mod_index(Table::Evals, "e", i2)
                .delete(Table::Evals, "e"),
        ),
        "compare and delete",
    );
    assert_eq!(get(store, Table::Evals, "e"), None);
}

/// A transaction with one failing check among several applies none of its operations and does
/// not consume an index.
pub fn failed_check_applies_nothing<S: Store + ?Sized>(store: &S) {
    let base = must(
        store.apply(Txn::new().put(Table::Jobs, "a", b"a".to_vec()).put(
            Table::Jobs,
            "b",
            b"b".to_vec(),
        )),
        "setup",
    );
    let result = store.apply(
        Txn::new()
            .check_mod_index(Table::Jobs, "a", base)
            .check_absent(Table::Jobs, "new")
            .check_absent(Table::Jobs, "b")
            .put(Table::Jobs, "a", b"changed".to_vec())
            .put(Table::Jobs, "new", b"new".to_vec())
            .delete(Table::Jobs, "b")
            .put(Table::Allocs, "x", b"x".to_vec()),
    );
    assert_conflict(result, Table::Jobs, "b");
    assert_eq!(
        must(store.index(), "index"),
        base,
        "a failed txn takes no index"
    );
    assert_eq!(get(store, Table::Jobs, "a").unwrap().value, b"a");
    assert_eq!(get(store, Table::Jobs, "a").unwrap().mod_index, base);
    assert_eq!(get(store, Table::Jobs, "b").unwrap().value, b"b");
    assert_eq!(get(store, Table::Jobs, "new"), None);
    assert_eq!(get(store, Table::Allocs, "x"), None);
    let next = must(
        store.apply(Txn::new().put(Table::Meta, "m", b"m".to_vec())),
        "next",
    );
    assert_eq!(next, base + 1, "the next commit takes the next index");
}

/// Checks are evaluated against the state before the transaction, not after its own ops.
pub fn checks_see_the_state_before_the_txn<S: Store + ?Sized>(store: &S) {
    // Put and check-absent of the same key in one txn: the check sees "absent".
    let i = must(
        store.apply(
            Txn::new()
                .put(Table::Jobs, "k", b"1".to_vec())
                .check_absent(Table::Jobs, "k"),
        ),
        "check before own put",
    );
    // Delete and check-mod-index of the same key in one txn: the check sees the record.
    must(
        store.apply(
            Txn::new()
                .delete(Table::Jobs, "k")
                .check_mod_index(Table::Jobs, "k", i),
        ),
        "check before own delete",
    );
    assert_eq!(get(store, Table::Jobs, "k"), None);
}

/// All operations of a transaction land together with one index; a later op on the same key
/// wins.
pub fn multi_op_txn_is_atomic<S: Store + ?Sized>(store: &S) {
    must(
        store.apply(Txn::new().put(Table::Allocs, "old", b"o".to_vec())),
        "setup",
    );
    let i = must(
        store.apply(
            Txn::new()
                .put(Table::Jobs, "web", b"job".to_vec())
                .put(Table::JobVersions, "web/1", b"v1".to_vec())
                .put(Table::Evals, "e1", b"eval".to_vec())
                .delete(Table::Allocs, "old")
                .put(Table::Meta, "twice", b"first".to_vec())
                .put(Table::Meta, "twice", b"second".to_vec())
                .put(Table::Meta, "gone", b"x".to_vec())
                .delete(Table::Meta, "gone"),
        ),
        "multi-op txn",
    );
    for (table, key) in [
        (Table::Jobs, "web"),
        (Table::JobVersions, "web/1"),
        (Table::Evals, "e1"),
        (Table::Meta, "twice"),
    ] {
        let rec = get(store, table, key).unwrap_or_else(|| panic!("{table}/{key} missing"));
        assert_eq!((rec.create_index, rec.mod_index), (i, i), "{table}/{key}");
    }
    assert_eq!(get(store, Table::Meta, "twice").unwrap().value, b"second");
    assert_eq!(get(store, Table::Meta, "gone"), None);
    assert_eq!(get(store, Table::Allocs, "old"), None);
    assert_eq!(must(store.index(), "index"), i);
}

/// Deleting an absent key is not an error and still commits (takes an index).
pub fn delete_of_absent_key_commits<S: Store + ?Sized>(store: &S) {
    let before = must(store.index(), "index");
    let i = must(
        store.apply(Txn::new().delete(Table::Nodes, "nope")),
        "delete absent",
    );
    assert_eq!(i, before + 1);
    assert_eq!(get(store, Table::Nodes, "nope"), None);
}

/// Every commit takes exactly the next index; `index()` reports the last one.
pub fn index_is_monotonic<S: Store + ?Sized>(store: &S) {
    let mut last = must(store.index(), "index");
    for n in 0..50 {
        let i = must(
            store.apply(Txn::new().put(Table::Meta, format!("k{}", n % 7), vec![n as u8])),
            "put",
        );
        assert_eq!(i, last + 1, "commit {n} must take the next index");
        assert_eq!(must(store.index(), "index"), i);
        last = i;
    }
}

/// Empty transactions, bad keys and oversized values or transactions are refused with a
/// clear error before they touch the store.
pub fn invalid_txns_are_rejected_without_an_index<S: Store + ?Sized>(store: &S) {
    let before = must(store.index(), "index");
    assert!(matches!(store.apply(Txn::new()), Err(StoreError::EmptyTxn)));
    assert!(matches!(
        store.apply(Txn::new().check_absent(Table::Jobs, "a")),
        Err(StoreError::EmptyTxn)
    ));
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    for (key, bad_txn) in [
        ("", Txn::new().put(Table::Jobs, "", b"v".to_vec())),
        ("", Txn::new().delete(Table::Jobs, "")),
        (
            "",
            Txn::new()
                .check_absent(Table::Jobs, "")
                .put(Table::Jobs, "ok", b"v".to_vec()),
        ),
        (
            "long",
            Txn::new().put(Table::Jobs, "ok", b"v".to_vec()).put(
                Table::Jobs,
                long.clone(),
                b"v".to_vec(),
            ),
        ),
    ] {
        match store.apply(bad_txn) {
            Err(StoreError::InvalidKey { table, reason, .. }) => {
                assert_eq!(table, Table::Jobs);
                assert!(!reason.is_empty());
            }
            other => panic!("key {key:?}: expected InvalidKey, got {other:?}"),
        }
    }
    let at_limit = "k".repeat(MAX_KEY_BYTES);
    must(
        store.apply(Txn::new().put(Table::Jobs, at_limit.clone(), b"v".to_vec())),
        "key at the length limit",
    );
    must(
        store.apply(Txn::new().delete(Table::Jobs, at_limit)),
        "delete it",
    );
    let before = before + 2;

    match store.apply(Txn::new().put(Table::Jobs, "big", vec![0u8; MAX_VALUE_BYTES + 1])) {
        Err(StoreError::TooLarge { size, limit, what }) => {
            assert_eq!((size, limit), (MAX_VALUE_BYTES + 1, MAX_VALUE_BYTES));
            assert!(what.contains("jobs/big"), "{what}");
        }
        other => panic!("expected TooLarge for the value, got {other:?}"),
    }
    let chunk = vec![1u8; MAX_VALUE_BYTES];
    let mut txn = Txn::new();
    for n in 0..=(MAX_TXN_BYTES / MAX_VALUE_BYTES) {
        txn = txn.put(Table::Jobs, format!("part{n}"), chunk.clone());
    }
    assert!(
        matches!(store.apply(txn), Err(StoreError::TooLarge { .. })),
        "a transaction over MAX_TXN_BYTES is refused"
    );
    assert_eq!(
        must(store.index(), "index"),
        before,
        "refused txns take no index"
    );
    assert_eq!(must(store.scan(Table::Jobs, ""), "scan"), vec![]);
}

/// Values up to the limit are stored and read back intact.
pub fn large_values<S: Store + ?Sized>(store: &S) {
    let pattern = |len: usize, seed: u64| -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let one_mib = pattern(1 << 20, 1);
    let max = pattern(MAX_VALUE_BYTES, 2);
    must(
        store.apply(Txn::new().put(Table::Allocs, "one", one_mib.clone()).put(
            Table::Allocs,
            "small",
            b"s".to_vec(),
        )),
        "put 1 MiB",
    );
    must(
        store.apply(Txn::new().put(Table::Allocs, "max", max.clone())),
        "put max",
    );
    assert!(
        get(store, Table::Allocs, "one").unwrap().value == one_mib,
        "1 MiB value"
    );
    assert!(
        get(store, Table::Allocs, "max").unwrap().value == max,
        "max-size value"
    );
    let scanned = must(store.scan(Table::Allocs, ""), "scan");
    assert_eq!(keys(&scanned), ["max", "one", "small"]);
    assert!(scanned[0].value == max && scanned[1].value == one_mib);
    let replacement = pattern(3 << 20, 3);
    must(
        store.apply(Txn::new().put(Table::Allocs, "max", replacement.clone())),
        "shrink",
    );
    assert!(get(store, Table::Allocs, "max").unwrap().value == replacement);
}

/// Keys are arbitrary UTF-8; scans order them by bytes and prefixes may end mid-word.
pub fn unicode_keys<S: Store + ?Sized>(store: &S) {
    let keys_in = [
        "ジョブ/ウェブ",
        "ジョブ/バッチ",
        "ジョ",
        "jobs/zürich",
        "jobs/zurich",
        "🚀/launch",
        "束",
        "with space/and\ttab",
        "é",
        "e\u{301}",
    ];
    let mut txn = Txn::new();
    for key in keys_in {
        txn = txn.put(Table::Jobs, key, key.as_bytes().to_vec());
    }
    must(store.apply(txn), "put unicode keys");
    for key in keys_in {
        let rec = get(store, Table::Jobs, key).unwrap_or_else(|| panic!("{key:?} missing"));
        assert_eq!(rec.key, key);
        assert_eq!(rec.value, key.as_bytes());
    }
    let mut want: Vec<&str> = keys_in.to_vec();
    want.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(keys(&must(store.scan(Table::Jobs, ""), "scan")), want);
    assert_eq!(
        keys(&must(store.scan(Table::Jobs, "ジョブ/"), "scan")),
        ["ジョブ/ウェブ", "ジョブ/バッチ"]
    );
    assert_eq!(
        keys(&must(store.scan(Table::Jobs, "ジョ"), "scan")),
        ["ジョ", "ジョブ/ウェブ", "ジョブ/バッチ"]
    );
    assert_eq!(
        keys(&must(store.scan(Table::Jobs, "e"), "scan")),
        ["e\u{301}"]
    );
    assert_eq!(
        keys(&must(store.scan(Table::Jobs, "🚀"), "scan")),
        ["🚀/launch"]
    );
    assert_eq!(get(store, Table::Jobs, "ジョブ"), None);
}

const THREADS: usize = 16;
const PER_THREAD: usize = 40;

/// Many threads applying at once: every transaction lands exactly once, with distinct
/// consecutive indexes, and each record carries the index its apply returned.
pub fn concurrent_applies_land_exactly_once<S: Store + ?Sized>(store: &S) {
    let before = must(store.index(), "index");
    let returned = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let returned = &returned;
            scope.spawn(move || {
                for n in 0..PER_THREAD {
                    let key = format!("t{t:02}/{n:03}");
                    let index = must(
                        store.apply(
                            Txn::new()
                                .check_absent(Table::Allocs, key.clone())
                                .put(Table::Allocs, key.clone(), key.as_bytes().to_vec())
                                .put(Table::Evals, key.clone(), b"e".to_vec()),
                        ),
                        "concurrent apply",
                    );
                    let mut map = returned.lock().unwrap_or_else(|e| e.into_inner());
                    assert!(map.insert(key, index).is_none());
                }
            });
        }
    });
    let returned = returned.into_inner().unwrap_or_else(|e| e.into_inner());
    let total = THREADS * PER_THREAD;
    assert_eq!(returned.len(), total);
    let indexes: BTreeSet<u64> = returned.values().copied().collect();
    assert_eq!(indexes.len(), total, "every commit got its own index");
    let want: BTreeSet<u64> = (before + 1..=before + total as u64).collect();
    assert_eq!(indexes, want, "indexes are consecutive");
    assert_eq!(must(store.index(), "index"), before + total as u64);
    let allocs = must(store.scan(Table::Allocs, ""), "scan");
    assert_eq!(allocs.len(), total);
    for rec in &allocs {
        assert_eq!(
            rec.mod_index, returned[&rec.key],
            "mod index of {}",
            rec.key
        );
        assert_eq!(
            get(store, Table::Evals, &rec.key).unwrap().mod_index,
            rec.mod_index
        );
    }
}

/// Threads incrementing one counter with read / compare-and-set / retry lose no increment.
pub fn concurrent_compare_and_set_loses_no_update<S: Store + ?Sized>(store: &S) {
    const WRITERS: usize = 8;
    const INCREMENTS: u64 = 25;
    must(
        store.apply(Txn::new().put(Table::Meta, "counter", b"0".to_vec())),
        "setup",
    );
    std::thread::scope(|scope| {
        for _ in 0..WRITERS {
            scope.spawn(|| {
                let mut done = 0;
                while done < INCREMENTS {
                    let rec = get(store, Table::Meta, "counter").expect("counter");
                    let value: u64 = std::str::from_utf8(&rec.value).unwrap().parse().unwrap();
                    let txn = Txn::new()
                        .check_mod_index(Table::Meta, "counter", rec.mod_index)
                        .put(Table::Meta, "counter", (value + 1).to_string().into_bytes());
                    match store.apply(txn) {
                        Ok(_) => done += 1,
                        Err(err) if err.is_conflict() => {}
                        Err(err) => panic!("increment: {err:?}"),
                    }
                }
            });
        }
    });
    let rec = get(store, Table::Meta, "counter").unwrap();
    assert_eq!(
        rec.value,
        (WRITERS as u64 * INCREMENTS).to_string().as_bytes()
    );
}

/// Threads racing to create the same key: exactly one wins, the others get a conflict.
pub fn racing_creates_have_one_winner<S: Store + ?Sized>(store: &S) {
    for round in 0..5 {
        let key = format!("leader-{round}");
        let winners = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (key, winners) = (&key, &winners);
                scope.spawn(move || {
                    let txn = Txn::new().check_absent(Table::Meta, key.clone()).put(
                        Table::Meta,
                        key.clone(),
                        vec![t as u8],
                    );
                    match store.apply(txn) {
                        Ok(index) => winners.lock().unwrap().push((t, index)),
                        Err(err) if err.is_conflict() => {}
                        Err(err) => panic!("create: {err:?}"),
                    }
                });
            }
        });
        let winners = winners.into_inner().unwrap();
        assert_eq!(winners.len(), 1, "round {round}: exactly one creator wins");
        let rec = get(store, Table::Meta, &key).unwrap();
        assert_eq!(rec.value, vec![winners[0].0 as u8]);
        assert_eq!(rec.mod_index, winners[0].1);
    }
}

/// For durable backends: records, their indexes and the global index survive closing and
/// reopening; the next commit continues from the persisted index. `open` opens the same
/// store each time it is called; the previous handle is dropped before the next open.
pub fn persists_across_reopen<S: Store>(mut open: impl FnMut() -> S) {
    let (index, records) = {
        let store = open();
        let base = must(store.index(), "index");
        for n in 0..10u8 {
            must(
                store.apply(Txn::new().put(Table::Jobs, format!("j{n}"), vec![n])),
                "put",
            );
        }
        must(store.apply(Txn::new().delete(Table::Jobs, "j3")), "delete");
        let index = must(store.index(), "index");
        assert_eq!(index, base + 11);
        (index, must(store.scan(Table::Jobs, ""), "scan"))
    };
    for round in 0..3u64 {
        let store = open();
        assert_eq!(must(store.index(), "index after reopen"), index + round);
        let now = must(store.scan(Table::Jobs, ""), "scan after reopen");
        assert_eq!(now, records, "records after reopen {round}");
        let next = must(
            store.apply(Txn::new().put(Table::Meta, "reopened", vec![round as u8])),
            "apply after reopen",
        );
        assert_eq!(next, index + round + 1, "index continues after reopen");
    }
}
