//! Crash safety of the redb backend, with real processes.
//!
//! The test re-executes its own binary as a child (marked by an environment variable) that
//! applies transactions from several threads and prints each acknowledged one to stdout. The
//! parent kills it with SIGKILL mid-stream, reopens the database, and checks that every
//! acknowledged write is present exactly once and the index agrees with the records. It does
//! this for several rounds on the same file, so later rounds also recover from earlier crashes.
//!
//! Runs without libtest (`harness = false`) so the child is plain code, not a disguised test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use taba_store::{decode, encode, RedbStore, Store, Table, Txn};

const CHILD_ENV: &str = "TABA_STORE_CRASH_CHILD";
const TEST_NAME: &str = "kill9_keeps_every_acknowledged_write";
const WRITERS: u32 = 6;
const ROUNDS: u32 = 4;

fn main() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&path));
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{TEST_NAME}: test");
        return;
    }
    // Honour a name filter like libtest does: run only if the filter matches.
    if let Some(filter) = args.iter().find(|a| !a.starts_with('-')) {
        if !TEST_NAME.contains(filter.as_str()) {
            println!("running 0 tests");
            return;
        }
    }
    println!("running 1 test");
    parent();
    println!("test {TEST_NAME} ... ok");
}

fn job_key(writer: u32, n: u64) -> String {
    format!("w{writer}-{n:07}")
}

fn counter_key(writer: u32) -> String {
    format!("writer-{writer}")
}

/// The child: `WRITERS` threads, each appending jobs `w<t>-<n>` and moving its counter, one
/// transaction per job, printing `<t> <n> <index>` once `apply` returned.
fn child(path: &Path) {
    let store = RedbStore::open(path).expect("child: open store");
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let store = &store;
            scope.spawn(move || {
                let counter = store
                    .get(Table::Meta, &counter_key(writer))
                    .expect("read counter");
                let (mut n, mut counter_index) = match counter {
                    Some(rec) => (
                        decode::<u64>(&rec.value).expect("counter"),
                        Some(rec.mod_index),
                    ),
                    None => (0, None),
                };
                for _ in 0..1_000_000 {
                    n += 1;
                    let key = job_key(writer, n);
                    let txn = Txn::new()
                        .check_absent(Table::Jobs, key.clone())
                        .put(Table::Jobs, key, encode(&(writer, n)))
                        .put(Table::Meta, counter_key(writer), encode(&n));
                    let txn = match counter_index {
                        Some(index) => txn.check_mod_index(Table::Meta, counter_key(writer), index),
                        None => txn.check_absent(Table::Meta, counter_key(writer)),
                    };
                    let index = store.apply(txn).expect("child: apply");
                    counter_index = Some(index);
                    let mut out = std::io::stdout().lock();
                    // The parent closing the pipe ends the child.
                    if writeln!(out, "{writer} {n} {index}")
                        .and_then(|_| out.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
}

struct Ack {
    writer: u32,
    n: u64,
    index: u64,
}

fn run_and_kill(path: &Path, after_acks: usize) -> Vec<Ack> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let mut stdout = BufReader::new(child.stdout.take().expect("child stdout"));
    let mut acks = Vec::new();
    let mut killed = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = stdout
            .read_until(b'\n', &mut line)
            .expect("read child stdout");
        if read == 0 {
            break;
        }
        // A line cut short by the kill was not fully acknowledged; skip it.
        if line.last() != Some(&b'\n') {
            continue;
        }
        let text = std::str::from_utf8(&line).expect("utf-8 line");
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(|f| f.parse().expect("number"))
            .collect();
        assert_eq!(fields.len(), 3, "child line {text:?}");
        acks.push(Ack {
            writer: fields[0] as u32,
            n: fields[1],
            index: fields[2],
        });
        if !killed && acks.len() >= after_acks {
            child.kill().expect("kill -9 child");
            killed = true;
        }
    }
    let status = child.wait().expect("wait child");
    assert!(
        killed,
        "child ended by itself ({status}) before {after_acks} acks"
    );
    assert!(!status.success(), "child was killed, not exited: {status}");
    acks
}

fn parent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.redb");
    let mut all_acked = Vec::new();
    for round in 0..ROUNDS {
        let acks = run_and_kill(&path, 150 + 170 * round as usize);
        let acked_now = acks.len();
        all_acked.extend(acks);
        let committed = verify(&path, &all_acked);
        eprintln!(
            "round {round}: {acked_now} acknowledged before kill -9; {committed} commits in \
             total, {} of them never acknowledged",
            committed - all_acked.len()
        );
    }
}

/// Checks the reopened store against the acknowledgements; returns the number of commits.
fn verify(path: &Path, acked: &[Ack]) -> usize {
    let store = RedbStore::open(path).expect("reopen after kill -9");
    let index = store.index().expect("index");
    let jobs = store.scan(Table::Jobs, "").expect("scan jobs");

    // Every acknowledged write is there, at the index its apply returned.
    let by_key: BTreeMap<&str, _> = jobs.iter().map(|r| (r.key.as_str(), r)).collect();
    for ack in acked {
        let key = job_key(ack.writer, ack.n);
        let rec = by_key
            .get(key.as_str())
            .unwrap_or_else(|| panic!("acknowledged {key} (index {}) is missing", ack.index));
        assert_eq!(
            (rec.create_index, rec.mod_index),
            (ack.index, ack.index),
            "{key}"
        );
        assert_eq!(
            decode::<(u32, u64)>(&rec.value).unwrap(),
            (ack.writer, ack.n)
        );
    }

    // Each writer's jobs are exactly 1..=counter: nothing lost, nothing doubled, no torn txn.
    let mut total = 0;
    for writer in 0..WRITERS {
        let counter = store
            .get(Table::Meta, &counter_key(writer))
            .unwrap()
            .map_or(0, |r| decode::<u64>(&r.value).unwrap());
        let prefix = format!("w{writer}-");
        let mine = store.scan(Table::Jobs, &prefix).unwrap();
        let want: Vec<String> = (1..=counter).map(|n| job_key(writer, n)).collect();
        let got: Vec<&str> = mine.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            got, want,
            "writer {writer}'s jobs against its counter {counter}"
        );
        if let Some(last) = mine.last() {
            let counter_rec = store
                .get(Table::Meta, &counter_key(writer))
                .unwrap()
                .unwrap();
            assert_eq!(
                counter_rec.mod_index, last.mod_index,
                "counter moved with its job"
            );
        }
        total += mine.len();
    }
    assert_eq!(total, jobs.len());

    // One job per committed txn: the index counts them, and each took its own index.
    let indexes: BTreeSet<u64> = jobs.iter().map(|r| r.mod_index).collect();
    assert_eq!(indexes.len(), jobs.len(), "distinct indexes");
    assert_eq!(
        index,
        jobs.len() as u64,
        "index equals the number of commits"
    );
    assert_eq!(
        indexes.last().copied().unwrap_or(0),
        index,
        "index is the newest commit"
    );
    assert!(acked.len() <= jobs.len());
    jobs.len()
}
