//! The etcd backend: the store's tables as key ranges of an etcd cluster, for several servers
//! sharing one state (high availability).
//!
//! # Layout and indexes
//!
//! A record `table/key` is the etcd key `{prefix}/{table}/{key}` holding the value bytes as
//! they are. The store's global index is etcd's revision: a record's `create_index` and
//! `mod_index` are its etcd `create_revision` and `mod_revision`, and [`Store::apply`] returns
//! the revision of its etcd transaction. Every store transaction also puts the key
//! `{prefix}/_index`, so it always advances the revision by exactly one, even when all it does
//! is delete absent keys. Other writers of the same etcd cluster (the servers' leader key)
//! advance the revision too: indexes are increasing, not consecutive, in a shared cluster.
//!
//! # Transactions
//!
//! A [`Txn`] becomes one etcd `Txn`: each [`Check::Absent`] is `create_revision(k) == 0`, each
//! [`Check::ModIndex`] is `mod_revision(k) == index`; the operations become puts and deletes,
//! collapsed to the last operation per key (etcd refuses two operations on one key in a
//! transaction; the outcome is the same). When a compare fails, the `else` branch reads every
//! checked key in the same etcd transaction, so the reported [`StoreError::Conflict`] names the
//! first failing check exactly as the other backends do. Durability is etcd's: an
//! acknowledged transaction is in the WAL of a quorum of members.
//!
//! # Limits
//!
//! taba's limits ([`MAX_TXN_OPS`](crate::MAX_TXN_OPS), [`MAX_VALUE_BYTES`](crate::MAX_VALUE_BYTES),
//! [`MAX_TXN_BYTES`](crate::MAX_TXN_BYTES)) exceed etcd's defaults (128 operations, 1.5 MiB
//! per request); etcd must run with `--max-txn-ops=100000 --max-request-bytes=69206016` (see
//! `docs/ha.md`). A transaction etcd refuses for its size is reported as
//! [`StoreError::TooLarge`] naming the etcd flag.
//!
//! # Threads
//!
//! [`Store`] is synchronous; the etcd client is async. An `EtcdStore` owns a small tokio
//! runtime of its own: every call is spawned onto it and the caller waits on a channel, so a
//! caller on another runtime's worker thread never needs that runtime to make progress (no
//! deadlock), and a caller outside any runtime works the same. The async methods used for
//! leader election ([`EtcdStore::grant_lease`] and the rest) run on that runtime too.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient, PutOptions, TxnOp,
    TxnOpResponse, WatchOptions,
};

use crate::error::StoreError;
use crate::record::{Record, Table};
use crate::txn::{Check, Op, Txn, MAX_TXN_BYTES};
use crate::Store;

/// Key of the marker every transaction puts, under the prefix.
const INDEX_MARKER: &str = "_index";
/// Records read per range request of a scan.
const SCAN_PAGE: i64 = 256;
/// How long a read keeps retrying while etcd is unavailable.
const READ_RETRY: Duration = Duration::from_secs(5);
/// Largest response accepted from etcd: a scan page of large records.
const MAX_RESPONSE_BYTES: usize = 4 * MAX_TXN_BYTES;

/// How to reach an etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the members, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of this taba cluster's records (several taba clusters may share one etcd).
    pub prefix: String,
    /// Longest wait for a connection to a member.
    pub connect_timeout: Duration,
    /// Longest wait for one request.
    pub request_timeout: Duration,
}

impl EtcdConfig {
    /// Defaults (prefix `/taba`, 5 s to connect, 10 s per request) for `endpoints`.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: "/taba".to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`EtcdStore::create_with_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The key was absent and is now ours, created at this index.
    Won(u64),
    /// The key exists (held by someone else, or by us under an older lease).
    Held {
        /// The record that holds it.
        holder: Record,
        /// The store's index when it was read: watch for changes after this one.
        at: u64,
    },
}

/// What [`EtcdStore::watch_key`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// The key was put (its new record).
    Put(Record),
    /// The key was deleted (or its lease expired).
    Deleted,
    /// Nothing changed within the wait.
    Unchanged,
}

/// One record change seen by [`EtcdStore::watch_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The record's table.
    pub table: Table,
    /// The record's key.
    pub key: String,
    /// The record after the change; `None` when it was deleted.
    pub record: Option<Record>,
}

/// The changes one transaction made, at the store index it committed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeBatch {
    /// The index the changes committed at.
    pub index: u64,
    /// What changed (the index marker left out).
    pub changes: Vec<Change>,
}

/// A [`Store`] on an etcd cluster.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |err| StoreError::backend(what, err)
}

fn normalise_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.starts_with('/') || trimmed.is_empty() {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers (one read).
    pub fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Corrupt {
                what: "etcd configuration".to_owned(),
                reason: "no endpoints".to_owned(),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("taba-etcd")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                what: "start etcd client runtime".to_owned(),
                source,
            })?;
        let endpoints = config.endpoints.clone();
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let what = format!("connect to etcd at {}", endpoints.join(","));
        let client = wait_on(&runtime, async move {
            Client::connect(endpoints, Some(options))
                .await
                .map_err(etcd(what))
        })?;
        let store = Self {
            client,
            prefix: normalise_prefix(&config.prefix),
            runtime: Some(runtime),
        };
        store.index()?;
        Ok(store)
    }

    /// The key prefix of this store's records.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, StoreError> {
        self.runtime.as_ref().ok_or(StoreError::Closed)
    }

    /// Runs `fut` on the store's runtime and blocks the calling thread until it is done.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        wait_on(self.runtime()?, fut)
    }

    /// [`Self::block`] for a read made by `make`, retried for [`READ_RETRY`] while etcd is
    /// unavailable (a member just died and the client still routes to it, or the members are
    /// electing): reads have no effect, so trying again is always safe.
    fn block_read<T, F, Fut>(&self, make: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.block(async move {
            let deadline = tokio::time::Instant::now() + READ_RETRY;
            let mut pause = Duration::from_millis(50);
            loop {
                match make().await {
                    Err(e) if unavailable(&e) && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                    other => return other,
                }
            }
        })
    }

    /// Runs `fut` on the store's runtime and awaits it from any runtime.
    async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.runtime()?
            .spawn(fut)
            .await
            .map_err(|_| StoreError::Closed)?
    }

    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES)
    }

    fn table_prefix(&self, table: Table) -> String {
        format!("{}/{}/", self.prefix, table.name())
    }

    fn full_key(&self, table: Table, key: &str) -> String {
        format!("{}/{}/{key}", self.prefix, table.name())
    }

    // ---- leader election primitives (async; used by the server's leader module) ----

    /// Grants a lease of `ttl` (whole seconds, at least one); returns its id.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let mut lease = self.client.lease_client();
        let secs = ttl.as_secs().max(1) as i64;
        self.run(async move {
            let resp = lease
                .grant(secs, None)
                .await
                .map_err(etcd("grant etcd lease"))?;
            Ok(resp.id())
        })
        .await
    }

    /// Renews lease `id` once; false when it has already expired.
    pub async fn keep_lease_alive(&self, id: i64) -> Result<bool, StoreError> {
        let mut lease = self.client.lease_client();
        self.run(async move {
            let what = "renew etcd lease";
            let renewed = async {
                let (mut keeper, mut stream) = lease.keep_alive(id).await?;
                keeper.keep_alive().await?;
                stream.message().await
            };
            match renewed.await {
                Ok(resp) => Ok(resp.is_some_and(|r| r.ttl() > 0)),
                Err(etcd_client::Error::LeaseKeepAliveError(msg)) if msg.contains("not found") => {
                    Ok(false)
                }
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.message().contains("not found") =>
                {
                    Ok(false)
                }
                Err(err) => Err(etcd(what)(err)),
            }
        })
        .await
    }

    /// Revokes lease `id`: every key put with it is deleted.
    pub async fn revoke_lease(&self, id: i64) -> Result<(), StoreError> {
        let mut lease = self.client.lease_client();
        self.run(async move {
            lease.revoke(id).await.map_err(etcd("revoke etcd lease"))?;
            Ok(())
        })
        .await
    }

    /// Creates `table/key` with `value`, bound to lease `lease`, if it is absent; otherwise
    /// returns the record that holds it.
    pub async fn create_with_lease(
        &self,
        table: Table,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<Created, StoreError> {
        let full = self.full_key(table, key);
        let strip = self.table_prefix(table);
        let mut kv = self.kv();
        self.run(async move {
            let what = format!("create {full} in etcd");
            // Bounded: the else branch finds the key unless it vanished in between.
            for _ in 0..16 {
                let txn = etcd_client::Txn::new()
                    .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        full.clone(),
                        value.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(full.clone(), None)]);
                let resp = kv.txn(txn).await.map_err(etcd(what.clone()))?;
                if resp.succeeded() {
                    return Ok(Created::Won(revision(resp.header())?));
                }
                let at = revision(resp.header())?;
                if let Some(TxnOpResponse::Get(get)) = resp.op_responses().into_iter().next() {
                    if let Some(kv) = get.kvs().first() {
                        let holder = to_record(&strip, kv)?;
                        return Ok(Created::Held { holder, at });
                    }
                }
            }
            Err(StoreError::Corrupt {
                what,
                reason: "the key kept vanishing between compare and read".to_owned(),
            })
        })
        .await
    }

    /// Waits up to `wait` for the first change of `table/key` after index `after`.
    pub async fn watch_key(
        &self,
        table: Table,
        key: &str,
        after: u64,
        wait: Duration,
    ) -> Result<KeyChange, StoreError> {
        let full = self.full_key(table, key);
        let strip = self.table_prefix(table);
        let mut watch = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        self.run(async move {
            let what = format!("watch {full} in etcd");
            let options = WatchOptions::new().with_start_revision(after as i64 + 1);
            let (mut watcher, mut stream) = watch
                .watch(full.clone(), Some(options))
                .await
                .map_err(etcd(what.clone()))?;
            let seen = tokio::time::timeout(wait, async {
                loop {
                    let Some(resp) = stream.message().await.map_err(etcd(what.clone()))? else {
                        return Err(StoreError::Closed);
                    };
                    if resp.canceled() {
                        return Err(StoreError::Corrupt {
                            what: what.clone(),
                            reason: format!("watch canceled: {}", resp.cancel_reason()),
                        });
                    }
                    if let Some(event) = resp.events().first() {
                        return match (event.event_type(), event.kv()) {
                            (etcd_client::EventType::Put, Some(kv)) => {
                                Ok(KeyChange::Put(to_record(&strip, kv)?))
                            }
                            _ => Ok(KeyChange::Deleted),
                        };
                    }
                }
            })
            .await;
            let _ = watcher.cancel().await;
            seen.unwrap_or(Ok(KeyChange::Unchanged))
        })
        .await
    }
}

impl EtcdStore {
    /// Streams every change of this store's records after index `after`, one batch per
    /// committed transaction, into `tx` until `tx` is closed or the watch fails (the error is
    /// sent last: e.g. `after` was compacted away, and the reader must load anew).
    pub fn watch_all(
        &self,
        after: u64,
        tx: tokio::sync::mpsc::Sender<Result<ChangeBatch, StoreError>>,
    ) -> Result<tokio::task::JoinHandle<()>, StoreError> {
        let root = format!("{}/", self.prefix);
        let mut watch = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(self.runtime()?.spawn(async move {
            let what = format!("watch {root} in etcd");
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(after as i64 + 1);
            let (mut watcher, mut stream) = match watch.watch(root.clone(), Some(options)).await {
                Ok(w) => w,
                Err(e) => {
                    let _ = tx.send(Err(etcd(what)(e))).await;
                    return;
                }
            };
            let failed = loop {
                let resp = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => break None,
                };
                let resp = match resp {
                    Ok(Some(r)) => r,
                    Ok(None) => break Some(StoreError::Closed),
                    Err(e) => break Some(etcd(what.clone())(e)),
                };
                if resp.canceled() {
                    break Some(StoreError::Corrupt {
                        what: what.clone(),
                        reason: format!(
                            "watch canceled (compacted at {}): {}",
                            resp.compact_revision(),
                            resp.cancel_reason()
                        ),
                    });
                }
                match batches(&root, resp.events()) {
                    Ok(batches) => {
                        for b in batches {
                            if tx.send(Ok(b)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => break Some(e),
                }
            };
            let _ = watcher.cancel().await;
            if let Some(e) = failed {
                let _ = tx.send(Err(e)).await;
            }
        }))
    }
}

/// Groups watch events into one batch per revision, keys parsed as `<root><table>/<key>`.
fn batches(root: &str, events: &[etcd_client::Event]) -> Result<Vec<ChangeBatch>, StoreError> {
    let mut out: Vec<ChangeBatch> = Vec::new();
    for event in events {
        let Some(kv) = event.kv() else { continue };
        let index = kv.mod_revision().max(0) as u64;
        let full = std::str::from_utf8(kv.key()).map_err(|e| StoreError::Corrupt {
            what: format!("etcd key {:?}", String::from_utf8_lossy(kv.key())),
            reason: e.to_string(),
        })?;
        let Some((table, key)) = full
            .strip_prefix(root)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue; // the index marker, or another cluster's key
        };
        let Some(table) = Table::from_name(table) else {
            continue;
        };
        let record = match event.event_type() {
            etcd_client::EventType::Put => {
                Some(to_record(&format!("{root}{}/", table.name()), kv)?)
            }
            etcd_client::EventType::Delete => None,
        };
        let change = Change {
            table,
            key: key.to_owned(),
            record,
        };
        match out.last_mut() {
            Some(b) if b.index == index => b.changes.push(change),
            _ => out.push(ChangeBatch {
                index,
                changes: vec![change],
            }),
        }
    }
    Ok(out)
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Never blocks (a store may be dropped inside an async task); in-flight calls end
        // with `Closed`.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn wait_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = reply.send(fut.await);
    });
    answer.recv().map_err(|_| StoreError::Closed)?
}

/// Whether `e` says etcd could not serve the request now (gRPC `Unavailable`: a member that
/// died, a leader election), rather than refusing it.
fn unavailable(e: &StoreError) -> bool {
    let StoreError::Backend { source, .. } = e else {
        return false;
    };
    matches!(
        source.downcast_ref::<etcd_client::Error>(),
        // gRPC code 14 is UNAVAILABLE.
        Some(etcd_client::Error::GRpcStatus(status)) if status.code() as i32 == 14
    )
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> Result<u64, StoreError> {
    let rev = header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Corrupt {
            what: "etcd response".to_owned(),
            reason: "no header".to_owned(),
        })?;
    Ok(rev.max(0) as u64)
}

fn to_record(table_prefix: &str, kv: &KeyValue) -> Result<Record, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: format!("etcd key {:?}", String::from_utf8_lossy(kv.key())),
        reason,
    };
    let full = std::str::from_utf8(kv.key()).map_err(|e| corrupt(e.to_string()))?;
    let key = full
        .strip_prefix(table_prefix)
        .ok_or_else(|| corrupt(format!("outside {table_prefix}")))?;
    Ok(Record {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_index: kv.create_revision().max(0) as u64,
        mod_index: kv.mod_revision().max(0) as u64,
    })
}

/// Maps etcd's refusals of a request's size to [`StoreError::TooLarge`]; `count` and `bytes`
/// are the transaction's operation count and size.
fn txn_error(count: usize, bytes: usize, err: etcd_client::Error) -> StoreError {
    if let etcd_client::Error::GRpcStatus(status) = &err {
        let message = status.message();
        if message.contains("too many operations") {
            return StoreError::TooLarge {
                what: "transaction for etcd (raise etcd's --max-txn-ops)".to_owned(),
                size: count,
                limit: crate::MAX_TXN_OPS,
            };
        }
        if message.contains("too large") || message.contains("larger than max") {
            return StoreError::TooLarge {
                what: "transaction for etcd (raise etcd's --max-request-bytes)".to_owned(),
                size: bytes,
                limit: MAX_TXN_BYTES,
            };
        }
    }
    StoreError::backend("etcd transaction", err)
}

impl Store for EtcdStore {
    fn apply(&self, txn: Txn) -> Result<u64, StoreError> {
        txn.validate()?;
        let compares: Vec<Compare> = txn
            .checks
            .iter()
            .map(|check| {
                let (table, key) = check.target();
                let full = self.full_key(table, key);
                match check {
                    Check::Absent { .. } => Compare::create_revision(full, CompareOp::Equal, 0),
                    Check::ModIndex { index, .. } => {
                        Compare::mod_revision(full, CompareOp::Equal, *index as i64)
                    }
                }
            })
            .collect();
        // The last operation on each key decides its outcome.
        let mut last: HashMap<String, usize> = HashMap::new();
        for (at, op) in txn.ops.iter().enumerate() {
            let (table, key) = op.target();
            last.insert(self.full_key(table, key), at);
        }
        let mut chosen: Vec<(String, usize)> = last.into_iter().collect();
        chosen.sort_by_key(|(_, at)| *at);
        let mut ops: Vec<TxnOp> = chosen
            .into_iter()
            .map(|(full, at)| match &txn.ops[at] {
                Op::Put { value, .. } => TxnOp::put(full, value.clone(), None),
                Op::Delete { .. } => TxnOp::delete(full, None),
            })
            .collect();
        ops.push(TxnOp::put(
            format!("{}/{INDEX_MARKER}", self.prefix),
            Vec::new(),
            None,
        ));
        let reads: Vec<TxnOp> = txn
            .checks
            .iter()
            .map(|check| {
                let (table, key) = check.target();
                TxnOp::get(self.full_key(table, key), None)
            })
            .collect();
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else(reads);
        let (count, bytes) = (txn.ops.len() + txn.checks.len(), txn.size_bytes());
        let mut kv = self.kv();
        let response = self.block(async move {
            kv.txn(request)
                .await
                .map_err(|err| txn_error(count, bytes, err))
        })?;
        if response.succeeded() {
            return revision(response.header());
        }
        let current: Vec<Option<u64>> = response
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision() as u64),
                _ => None,
            })
            .collect();
        for (check, current) in txn.checks.iter().zip(current) {
            check.evaluate(current)?;
        }
        Err(StoreError::Corrupt {
            what: "etcd transaction".to_owned(),
            reason: "etcd refused a compare that holds on the keys it returned".to_owned(),
        })
    }

    fn get(&self, table: Table, key: &str) -> Result<Option<Record>, StoreError> {
        let full = self.full_key(table, key);
        let strip = self.table_prefix(table);
        let kv = self.kv();
        self.block_read(move || {
            let (mut kv, full, strip) = (kv.clone(), full.clone(), strip.clone());
            async move {
                let resp = kv
                    .get(full.clone(), None)
                    .await
                    .map_err(etcd(format!("read {full} from etcd")))?;
                resp.kvs()
                    .first()
                    .map(|kv| to_record(&strip, kv))
                    .transpose()
            }
        })
    }

    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<Record>, StoreError> {
        let strip = self.table_prefix(table);
        let start = format!("{strip}{prefix}");
        let end = prefix_end(start.as_bytes());
        let kv = self.kv();
        self.block_read(move || {
            let (mut kv, start, end, strip) =
                (kv.clone(), start.clone(), end.clone(), strip.clone());
            async move {
                let what = format!("scan {start} in etcd");
                let mut records = Vec::new();
                let mut from = start.clone().into_bytes();
                let mut at_revision = 0;
                // Pages read at the revision of the first, so the scan is one consistent view.
                loop {
                    let options = GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(SCAN_PAGE)
                        .with_revision(at_revision);
                    let resp = kv
                        .get(from.clone(), Some(options))
                        .await
                        .map_err(etcd(what.clone()))?;
                    if at_revision == 0 {
                        at_revision = revision(resp.header())? as i64;
                    }
                    for kv in resp.kvs() {
                        records.push(to_record(&strip, kv)?);
                    }
                    match resp.kvs().last() {
                        Some(last) if resp.more() => {
                            from = last.key().to_vec();
                            from.push(0);
                        }
                        _ => return Ok(records),
                    }
                }
            }
        })
    }

    fn index(&self) -> Result<u64, StoreError> {
        let marker = format!("{}/{INDEX_MARKER}", self.prefix);
        let kv = self.kv();
        self.block_read(move || {
            let (mut kv, marker) = (kv.clone(), marker.clone());
            async move {
                let resp = kv
                    .get(marker, Some(GetOptions::new().with_count_only()))
                    .await
                    .map_err(etcd("read the etcd revision"))?;
                revision(resp.header())
            }
        })
    }
}

/// The smallest key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/taba/jobs/"), b"/taba/jobs0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn prefixes_are_absolute_without_trailing_slash() {
        assert_eq!(normalise_prefix("/taba/"), "/taba");
        assert_eq!(normalise_prefix("prod"), "/prod");
        assert_eq!(normalise_prefix("/a/b"), "/a/b");
    }
}
