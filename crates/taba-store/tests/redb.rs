//! The redb backend against the conformance suite, plus what only a file-backed store has:
//! persistence across reopen, exclusive opening, layout versions.

use std::ops::Deref;
use std::path::PathBuf;

use taba_store::{conformance, RedbStore, Store, StoreError, Table, Txn};

/// A store in a temporary directory that lives as long as the store.
struct TempRedb {
    store: RedbStore,
    _dir: tempfile::TempDir,
}

impl Deref for TempRedb {
    type Target = RedbStore;
    fn deref(&self) -> &RedbStore {
        &self.store
    }
}

fn temp_redb() -> TempRedb {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(&dir.path().join("state.redb")).expect("open store");
    TempRedb { store, _dir: dir }
}

taba_store::store_conformance_tests!(temp_redb());

#[test]
fn persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    conformance::persists_across_reopen(|| RedbStore::open(&path).expect("open store"));
}

#[test]
fn open_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("a/b/state.redb");
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.index().unwrap(), 0);
    assert!(path.exists());
    assert_eq!(store.path(), path);
}

#[test]
fn second_open_of_the_same_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let _first = RedbStore::open(&path).unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("open database"), "{err}");
}

#[test]
fn open_fails_clearly_on_a_file_that_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(
        &path,
        b"this is not a redb file, just some text".repeat(200),
    )
    .unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    assert!(err.to_string().contains("open database"), "{err}");
}

#[test]
fn open_fails_when_the_directory_cannot_be_made() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = RedbStore::open(&file.join("sub/state.redb")).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("create data directory"), "{err}");
}

#[test]
fn newer_store_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    drop(RedbStore::open(&path).unwrap());
    {
        let db = redb::Database::open(&path).unwrap();
        let wtx = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("_taba_store");
            let mut meta = wtx.open_table(def).unwrap();
            meta.insert("layout", 99).unwrap();
        }
        wtx.commit().unwrap();
    }
    let err = RedbStore::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnsupportedVersion {
                what: "store layout",
                version: 99,
                supported: 1
            }
        ),
        "{err:?}"
    );
}

#[test]
fn corrupt_rows_are_reported_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        store
            .apply(Txn::new().put(Table::Jobs, "ok", b"v".to_vec()))
            .unwrap();
    }
    {
        let db = redb::Database::open(&path).unwrap();
        let wtx = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("jobs");
            let mut jobs = wtx.open_table(def).unwrap();
            jobs.insert("short", b"abc".as_slice()).unwrap();
            let mut future = vec![7u8];
            future.extend_from_slice(&[0; 16]);
            jobs.insert("future", future.as_slice()).unwrap();
        }
        wtx.commit().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    for key in ["short", "future"] {
        let err = store.get(Table::Jobs, key).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{key}: {err:?}");
        assert!(err.to_string().contains(&format!("jobs/{key}")), "{err}");
    }
    assert!(matches!(
        store.scan(Table::Jobs, ""),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(store.get(Table::Jobs, "ok").unwrap().unwrap().value, b"v");
    // A write whose check reads a corrupt row fails; the store keeps working.
    let err = store
        .apply(
            Txn::new()
                .check_absent(Table::Jobs, "short")
                .put(Table::Jobs, "x", b"".to_vec()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("commit batch"), "{err}");
    assert!(store
        .apply(Txn::new().put(Table::Jobs, "y", b"".to_vec()))
        .is_ok());
}

#[test]
fn database_file_and_new_directories_are_private() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("data/state.redb");
    let _store = RedbStore::open(&path).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
}

/// A database whose pages (everything after the header) were overwritten with garbage: redb
/// panics on some such pages; opening or reading must give an error naming the file instead.
#[test]
fn damaged_pages_give_an_error_naming_the_file_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = RedbStore::open(&path).unwrap();
        for i in 0..50 {
            store
                .apply(Txn::new().put(Table::Jobs, format!("job-{i:03}"), vec![b'x'; 300]))
                .unwrap();
        }
    }
    let good = std::fs::read(&path).unwrap();
    let mut errors = 0;
    for seed in 1..=20u64 {
        // Deterministic garbage (xorshift), different per seed.
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut bad = good.clone();
        for b in bad.iter_mut().skip(4096) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(&path, &bad).unwrap();
        let outcome = std::panic::catch_unwind(|| match RedbStore::open(&path) {
            Err(e) => Err(e.to_string()),
            Ok(store) => store
                .scan(Table::Jobs, "")
                .and(store.index())
                .and(store.apply(Txn::new().put(Table::Jobs, "new", b"v".to_vec())))
                .map_err(|e| e.to_string()),
        });
        match outcome {
            Err(_) => panic!("seed {seed}: the store panicked on a damaged file"),
            Ok(Err(message)) => {
                errors += 1;
                assert!(
                    message.contains(&path.display().to_string()),
                    "seed {seed}: {message:?} does not name the file"
                );
            }
            Ok(Ok(_)) => {}
        }
    }
    assert!(
        errors > 0,
        "no damaged file was refused: the test proves nothing"
    );
}
