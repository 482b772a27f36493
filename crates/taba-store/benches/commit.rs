//! Durable applies per second of the redb backend with 1, 8 and 64 concurrent writers.
//!
//! Target (BRIEF.md): >= 2,000 durable job registrations per second on the embedded store.
//! Each apply is shaped like a job registration: a check that the job is new, then puts of the
//! job, its first version and an evaluation (about 1.5 KiB in all), fsync'd before `apply`
//! returns. Group commit lets concurrent writers share fsyncs; one writer pays one per apply.
//!
//! Run: `cargo bench -p taba-store --bench commit`
//! Environment: `TABA_BENCH_SECS` (seconds per writer count, default 3), `TABA_BENCH_DIR`
//! (where the temporary database goes, default the system temp dir; put it on the disk you
//! want to measure, not a tmpfs).

use std::time::{Duration, Instant};

use taba_store::{encode, RedbStore, Store, Table, Txn};

fn registration(writer: usize, n: usize) -> Txn {
    let job = format!("bench-{writer}-{n}");
    let spec = serde_json::json!({
        "name": job,
        "type": "service",
        "priority": 50,
        "group": [{
            "name": "web",
            "count": 3,
            "task": [{
                "name": "httpd",
                "driver": "container",
                "image": "busybox:latest",
                "command": ["httpd", "-f", "-p", "8080"],
                "resources": { "cpu": 100, "memory": 67108864 },
                "env": { "GREETING": "hello from a benchmark job spec that is not tiny" },
            }],
        }],
        "constraint": [{ "attribute": "${node.name}", "operator": "!=", "value": "n1" }],
    });
    let eval = serde_json::json!({
        "id": format!("eval-{writer}-{n}"),
        "job": job,
        "trigger": "job-register",
        "status": "pending",
    });
    Txn::new()
        .check_absent(Table::Jobs, job.clone())
        .put(Table::Jobs, job.clone(), encode(&spec))
        .put(Table::JobVersions, format!("{job}/1"), encode(&spec))
        .put(Table::Evals, format!("eval-{writer}-{n}"), encode(&eval))
}

const WARMUP: usize = 20;

struct Outcome {
    applies: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn run(writers: usize, duration: Duration) -> Outcome {
    let dir = match std::env::var_os("TABA_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let store = RedbStore::open(&dir.path().join("bench.redb")).expect("open store");
    // Warm up: create the file's first pages outside the measurement.
    for n in 0..WARMUP {
        store
            .apply(registration(usize::MAX, n))
            .expect("warm-up apply");
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut latencies = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                let store = &store;
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    let mut n = 0;
                    while Instant::now() < deadline {
                        let txn = registration(writer, n);
                        let t0 = Instant::now();
                        store.apply(txn).expect("apply");
                        mine.push(t0.elapsed());
                        n += 1;
                    }
                    mine
                })
            })
            .collect();
        for handle in handles {
            latencies.extend(handle.join().expect("writer thread"));
        }
    });
    let elapsed = start.elapsed();
    let applies = latencies.len();
    assert_eq!(
        store.scan(Table::Jobs, "bench-").expect("scan").len(),
        applies + WARMUP,
        "every acknowledged registration is stored"
    );
    latencies.sort();
    Outcome {
        applies,
        elapsed,
        latencies,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

fn main() {
    let secs: u64 = std::env::var("TABA_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!("redb group commit: durable registration applies (check + 3 puts, ~1.5 KiB)");
    println!(
        "{:>8} {:>9} {:>8} {:>10} {:>10} {:>10}",
        "writers", "applies", "secs", "applies/s", "p50 ms", "p99 ms"
    );
    for writers in [1, 8, 64] {
        let out = run(writers, Duration::from_secs(secs));
        let rate = out.applies as f64 / out.elapsed.as_secs_f64();
        println!(
            "{:>8} {:>9} {:>8.2} {:>10.0} {:>10.2} {:>10.2}",
            writers,
            out.applies,
            out.elapsed.as_secs_f64(),
            rate,
            percentile(&out.latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&out.latencies, 0.99).as_secs_f64() * 1e3,
        );
    }
    println!("target: >= 2000 applies/s");
}
