//! The embedded backend: one redb database file, written through a group-committing
//! committer thread, read directly with redb read transactions.
//!
//! # Layout
//!
//! Each [`Table`] is a redb table of the same name mapping the key (`&str`, byte order) to a row:
//! a layout byte ([`ROW_LAYOUT`]), the create index and the mod index (little-endian `u64`),
//! then the value bytes. A private table `_taba_store` holds the global index and the layout
//! version of the whole file.
//!
//! # Group commit
//!
//! ```text
//!  apply() ─┐                      committer thread
//!  apply() ─┼─> queue ─> take everything queued ─> one redb write txn:
//!  apply() ─┘               │                        for each txn in arrival order:
//!     ^                     │                          checks (see earlier txns of the batch)
//!     │                     │                          fail -> Conflict for that txn only
//!     │                     │                          pass -> ops, index += 1
//!     │                     │                        store the index; commit (two-phase: 2 fsyncs)
//!     └──── each caller gets its own index (or error) after the fsyncs
//! ```
//!
//! While one batch is being fsync'd the next one queues up, so the number of fsyncs per second
//! stays about constant and the throughput grows with the number of concurrent writers. A
//! single writer still pays one fsync per transaction. If the write transaction fails as a
//! whole (I/O error, a corrupt row), every transaction of the batch fails with that error and
//! none is applied.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::StoreError;
use crate::record::{Record, Table};
use crate::txn::{Op, Txn, MAX_TXN_BYTES};
use crate::Store;

/// Layout version of a row (header + value); the first byte of every row.
pub(crate) const ROW_LAYOUT: u8 = 1;
const ROW_HEADER: usize = 17;

/// Layout version of the database file as a whole.
const STORE_LAYOUT: u64 = 1;
const STORE_TABLE: TableDefinition<'static, &'static str, u64> =
    TableDefinition::new("_taba_store");
const INDEX_KEY: &str = "index";
const LAYOUT_KEY: &str = "layout";

/// Most transactions committed together.
const MAX_BATCH_TXNS: usize = 4096;
/// A batch stops taking transactions once it holds this many bytes.
const MAX_BATCH_BYTES: usize = MAX_TXN_BYTES;

type RowTable<'txn> = redb::Table<'txn, &'static str, &'static [u8]>;

fn definition(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.name())
}

fn engine<E: Into<redb::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> StoreError {
    move |err| StoreError::backend(what, err.into())
}

struct Row<'a> {
    create_index: u64,
    mod_index: u64,
    value: &'a [u8],
}

fn encode_row(create_index: u64, mod_index: u64, value: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(ROW_HEADER + value.len());
    row.push(ROW_LAYOUT);
    row.extend_from_slice(&create_index.to_le_bytes());
    row.extend_from_slice(&mod_index.to_le_bytes());
    row.extend_from_slice(value);
    row
}

fn decode_row<'a>(table: Table, key: &str, row: &'a [u8]) -> Result<Row<'a>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("row {table}/{key}"),
        reason,
    };
    if row.len() < ROW_HEADER {
        return Err(corrupt(format!(
            "{} bytes, shorter than the {ROW_HEADER}-byte header",
            row.len()
        )));
    }
    if row[0] != ROW_LAYOUT {
        return Err(corrupt(format!("unknown row layout {}", row[0])));
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&row[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    Ok(Row {
        create_index: u64_at(1),
        mod_index: u64_at(9),
        value: &row[ROW_HEADER..],
    })
}

fn to_record(table: Table, key: &str, row: &[u8]) -> Result<Record, StoreError> {
    let row = decode_row(table, key, row)?;
    Ok(Record {
        key: key.to_owned(),
        value: row.value.to_vec(),
        create_index: row.create_index,
        mod_index: row.mod_index,
    })
}

/// Runs `f`, turning a panic of the database engine into [`StoreError::Corrupt`] naming the
/// file. redb panics (`unreachable!`, failed assertions) on some damaged pages instead of
/// returning an error; a damaged file must give the operator an error that says which file,
/// not take the server down with a panic.
fn unless_engine_panics<T>(
    path: &Path,
    doing: &str,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Err(StoreError::Corrupt {
            what: format!("{doing} {}", path.display()),
            reason: format!("the database engine failed on damaged data ({message})"),
        })
    })
}

/// One queued `apply`, answered by the committer.
struct Request {
    txn: Txn,
    reply: mpsc::SyncSender<Result<u64, StoreError>>,
}

/// redb's page cache of [`RedbStore::open`]: 64 MiB, against redb's own default of 1 GiB,
/// which a server fills with pages as its state grows.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// The embedded [`Store`]: a redb file with group commit.
///
/// Only one `RedbStore` (in any process) may have a file open at a time; a second open fails.
/// Dropping the store finishes the batch in flight, stops the committer and closes the file.
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    queue: Option<mpsc::Sender<Request>>,
    committer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the database file at `path` with [`DEFAULT_CACHE_BYTES`] of page cache,
    /// creating it (and its parent directories) if needed. After a crash, opening repairs
    /// the file to its last committed state.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`RedbStore::open`] with `cache_bytes` of redb's page cache. The cache is held in
    /// the server's memory and fills up to this size as the state grows; pages beyond it
    /// are read from the file (usually the kernel's page cache).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| StoreError::Io {
                    what: format!("create data directory {}", parent.display()),
                    source,
                })?;
        }
        let what = format!("open database {}", path.display());
        let db = unless_engine_panics(path, "open", || {
            Database::builder()
                .set_cache_size(cache_bytes)
                .create(path)
                .map_err(engine(what.clone()))
        })?;
        // Jobs hold secrets in their environments: the file is the owner's only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| StoreError::Io {
                    what: format!("make {} private", path.display()),
                    source,
                },
            )?;
        }
        let index =
            unless_engine_panics(path, "open", || initialise(&db)).map_err(|err| match err {
                StoreError::Backend { source, .. } => StoreError::Backend {
                    what: what.clone(),
                    source,
                },
                other => other,
            })?;
        let db = Arc::new(db);
        let (queue, requests) = mpsc::channel();
        let committer = std::thread::Builder::new()
            .name("taba-store-commit".to_owned())
            .spawn({
                let db = Arc::clone(&db);
                let path = path.to_owned();
                move || run_committer(&db, &path, &requests, index)
            })
            .map_err(|source| StoreError::Io {
                what: "start committer thread".to_owned(),
                source,
            })?;
        Ok(Self {
            db,
            path: path.to_owned(),
            queue: Some(queue),
            committer: Some(committer),
        })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db
            .begin_read()
            .map_err(engine("begin read transaction"))
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue ends the committer's loop once it has answered what it holds.
        drop(self.queue.take());
        if let Some(committer) = self.committer.take() {
            // A panicked committer already failed its callers with `Closed`; nothing to add.
            let _ = committer.join();
        }
    }
}

/// Creates the tables, checks the layout version and returns the stored index.
fn initialise(db: &Database) -> Result<u64, StoreError> {
    let wtx = db.begin_write().map_err(engine("begin write"))?;
    let index = {
        let mut meta = wtx.open_table(STORE_TABLE).map_err(engine("open table"))?;
        let layout = meta.get(LAYOUT_KEY).map_err(engine("read layout"))?;
        match layout.map(|g| g.value()) {
            None => {
                meta.insert(LAYOUT_KEY, STORE_LAYOUT)
                    .map_err(engine("write layout"))?;
            }
            Some(STORE_LAYOUT) => {}
            Some(version) => {
                return Err(StoreError::UnsupportedVersion {
                    what: "store layout",
                    version,
                    supported: STORE_LAYOUT,
                })
            }
        }
        for table in Table::ALL {
            wtx.open_table(definition(table))
                .map_err(engine(format!("open table {table}")))?;
        }
        let index = meta.get(INDEX_KEY).map_err(engine("read index"))?;
        index.map_or(0, |g| g.value())
    };
    wtx.commit().map_err(engine("commit"))?;
    Ok(index)
}

fn run_committer(db: &Database, path: &Path, requests: &mpsc::Receiver<Request>, mut index: u64) {
    let mut batch = Vec::new();
    while let Ok(first) = requests.recv() {
        let mut bytes = first.txn.size_bytes();
        batch.push(first);
        while batch.len() < MAX_BATCH_TXNS && bytes < MAX_BATCH_BYTES {
            match requests.try_recv() {
                Ok(request) => {
                    bytes += request.txn.size_bytes();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        match unless_engine_panics(path, "write", || commit_batch(db, &batch, index)) {
            Ok((results, last)) => {
                index = last;
                for (request, result) in batch.drain(..).zip(results) {
                    // A caller that went away (its thread panicked) needs no answer.
                    let _ = request.reply.send(result);
                }
            }
            Err(err) => {
                let err = Arc::new(err);
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(StoreError::Backend {
                        what: "commit batch".to_owned(),
                        source: Box::new(Arc::clone(&err)),
                    }));
                }
            }
        }
    }
}

type BatchResults = Vec<Result<u64, StoreError>>;

/// Applies every transaction of `batch` in one write transaction. The outer error fails the
/// whole batch; the inner results are per transaction (conflicts).
fn commit_batch(
    db: &Database,
    batch: &[Request],
    index: u64,
) -> Result<(BatchResults, u64), StoreError> {
    let mut wtx = db.begin_write().map_err(engine("begin write"))?;
    wtx.set_durability(Durability::Immediate)
        .map_err(engine("set durability"))?;
    // Two-phase commit: the data, then the header that makes it the primary, each fsync'd.
    // redb's default one-phase commit trusts checksums to tell a torn commit on recovery;
    // under a power cut in the middle of the next batch (tests/durability.rs in the taba
    // crate) that recovery dropped an already acknowledged batch in about 1 trial in 5.
    wtx.set_two_phase_commit(true);
    let mut results = Vec::with_capacity(batch.len());
    let mut next = index;
    {
        let mut tables = Vec::with_capacity(Table::ALL.len());
        for table in Table::ALL {
            tables.push(
                wtx.open_table(definition(table))
                    .map_err(engine(format!("open table {table}")))?,
            );
        }
        for request in batch {
            if let Err(conflict) = check_all(&tables, &request.txn) {
                if !conflict.is_conflict() {
                    return Err(conflict);
                }
                results.push(Err(conflict));
                continue;
            }
            next += 1;
            for op in &request.txn.ops {
                apply_op(&mut tables, op, next)?;
            }
            results.push(Ok(next));
        }
        let mut meta = wtx.open_table(STORE_TABLE).map_err(engine("open table"))?;
        meta.insert(INDEX_KEY, next)
            .map_err(engine("write index"))?;
    }
    wtx.commit().map_err(engine("commit"))?;
    Ok((results, next))
}

fn current_mod_index(
    tables: &[RowTable<'_>],
    table: Table,
    key: &str,
) -> Result<Option<u64>, StoreError> {
    let row = tables[table.ordinal()]
        .get(key)
        .map_err(engine(format!("read {table}/{key}")))?;
    match row {
        None => Ok(None),
        Some(row) => Ok(Some(decode_row(table, key, row.value())?.mod_index)),
    }
}

fn check_all(tables: &[RowTable<'_>], txn: &Txn) -> Result<(), StoreError> {
    for check in &txn.checks {
        let (table, key) = check.target();
        check.evaluate(current_mod_index(tables, table, key)?)?;
    }
    Ok(())
}

fn apply_op(tables: &mut [RowTable<'_>], op: &Op, index: u64) -> Result<(), StoreError> {
    match op {
        Op::Put { table, key, value } => {
            let existing = tables[table.ordinal()]
                .get(key.as_str())
                .map_err(engine(format!("read {table}/{key}")))?
                .map(|row| decode_row(*table, key, row.value()).map(|r| r.create_index))
                .transpose()?;
            let row = encode_row(existing.unwrap_or(index), index, value);
            tables[table.ordinal()]
                .insert(key.as_str(), row.as_slice())
                .map_err(engine(format!("write {table}/{key}")))?;
        }
        Op::Delete { table, key } => {
            tables[table.ordinal()]
                .remove(key.as_str())
                .map_err(engine(format!("delete {table}/{key}")))?;
        }
    }
    Ok(())
}

impl Store for RedbStore {
    fn apply(&self, txn: Txn) -> Result<u64, StoreError> {
        txn.validate()?;
        let queue = self.queue.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = mpsc::sync_channel(1);
        queue
            .send(Request { txn, reply })
            .map_err(|_| StoreError::Closed)?;
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Record>, StoreError> {
        unless_engine_panics(&self.path, "read", || self.get_row(table, key))
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        unless_engine_panics(&self.path, "read", || self.scan_rows(table, prefix))
    }

    fn index(&self) -> Result<u64, StoreError> {
        unless_engine_panics(&self.path, "read", || self.read_index())
    }
}

impl RedbStore {
    fn get_row(&self, table: Table, key: &str) -> Result<Option<Record>, StoreError> {
        let rtx = self.read_txn()?;
        let rows = rtx
            .open_table(definition(table))
            .map_err(engine(format!("open table {table}")))?;
        let row = rows
            .get(key)
            .map_err(engine(format!("read {table}/{key}")))?;
        row.map(|row| to_record(table, key, row.value()))
            .transpose()
    }

    fn scan_rows(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        let rtx = self.read_txn()?;
        let rows = rtx
            .open_table(definition(table))
            .map_err(engine(format!("open table {table}")))?;
        let range = rows
            .range(prefix..)
            .map_err(engine(format!("scan {table}/{prefix}")))?;
        let mut records = Vec::new();
        for entry in range {
            let (key, row) = entry.map_err(engine(format!("scan {table}/{prefix}")))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            records.push(to_record(table, key, row.value())?);
        }
        Ok(records)
    }

    fn read_index(&self) -> Result<u64, StoreError> {
        let rtx = self.read_txn()?;
        let meta = rtx
            .open_table(STORE_TABLE)
            .map_err(engine("open table _taba_store"))?;
        let index = meta.get(INDEX_KEY).map_err(engine("read index"))?;
        Ok(index.map_or(0, |g| g.value()))
    }
}
