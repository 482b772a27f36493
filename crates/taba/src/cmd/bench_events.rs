//! `taba bench events`: the event stream's fan-out and what subscribers cost
//! commits, in one run.
//!
//! One server in this process (redb store in a temporary directory, ACLs
//! off, default `[events]` bounds). Jobs are registered one after the other
//! (each a commit of job + version + evaluation, followed by the scheduler's
//! commit of the evaluation: the job's constraint matches no node, so no
//! agent is needed). Rounds alternate: no subscriber, then `subscribers`
//! subscribers over HTTP (`GET /v1/event/stream`, each on a thread of the
//! blocking client, as `taba events` reads it). Per round: the latency of
//! `POST /v1/jobs` (the commit plus HTTP), and with subscribers the events
//! delivered per second (all subscribers together, until each has the last
//! job's events) and how many were cut for falling behind.

use anyhow::{bail, Context};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taba_client::api::StreamLine;
use taba_client::Client;
use taba_server::{Server, ServerConfig, ServerHandle};

fn job(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[[group]]\nname = \"g\"\nconstraint = [{{ attribute = \"${{node.name}}\", value = \"nowhere\" }}]\n  \
         [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/true\"]\n"
    )
}

async fn start(dir: &std::path::Path) -> anyhow::Result<ServerHandle> {
    std::fs::create_dir_all(dir)?;
    let store: Arc<dyn taba_store::Store> =
        Arc::new(taba_store::RedbStore::open(&dir.join("state.redb")).context("opening a store")?);
    let images = Arc::new(taba_image::ImageStore::open(&dir.join("images"))?);
    let mut sc = ServerConfig::new(dir.join("server"), "127.0.0.1:0".parse()?);
    sc.acl.enabled = false;
    sc.rebalance.enabled = false;
    Ok(Server::start(sc, store, images).await?)
}

/// What one round measured.
struct Round {
    latencies_ms: Vec<f64>,
    events: u64,
    delivery_s: f64,
    cut: u64,
}

/// Subscribers counting events until each has seen `last`'s evaluation done.
struct Subscribers {
    events: Arc<AtomicU64>,
    cut: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Option<Instant>>>,
}

impl Subscribers {
    fn start(client: &Client, n: usize, last: &str) -> anyhow::Result<Subscribers> {
        let events = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for _ in 0..n {
            let stream = client.events(&[], None, None)?;
            let (events, cut, last) = (events.clone(), cut.clone(), last.to_owned());
            threads.push(std::thread::spawn(move || {
                for line in stream {
                    match line {
                        Ok(StreamLine::Event(e)) => {
                            events.fetch_add(1, Ordering::Relaxed);
                            if e.payload["job"] == last.as_str() && e.payload["status"] == "blocked"
                            {
                                return Some(Instant::now());
                            }
                        }
                        Ok(StreamLine::Heartbeat { .. }) => {}
                        Ok(StreamLine::End { .. }) | Err(_) => {
                            cut.fetch_add(1, Ordering::Relaxed);
                            return None;
                        }
                    }
                }
                None
            }));
        }
        Ok(Subscribers {
            events,
            cut,
            threads,
        })
    }
}

fn round(client: &Client, prefix: &str, jobs: usize, subscribers: usize) -> anyhow::Result<Round> {
    let last = format!("{prefix}-{}", jobs - 1);
    let subs = if subscribers > 0 {
        Some(Subscribers::start(client, subscribers, &last)?)
    } else {
        None
    };
    let started = Instant::now();
    let mut latencies_ms = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let t = Instant::now();
        client
            .register_job_toml(job(&format!("{prefix}-{i}")).as_bytes())
            .context("POST /v1/jobs")?;
        latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (mut events, mut delivery_s, mut cut) = (0, 0.0, 0);
    if let Some(s) = subs {
        let mut end = started;
        for t in s.threads {
            if let Some(at) = t
                .join()
                .map_err(|_| anyhow::anyhow!("a subscriber panicked"))?
            {
                end = end.max(at);
            }
        }
        events = s.events.load(Ordering::Relaxed);
        cut = s.cut.load(Ordering::Relaxed);
        delivery_s = (end - started).as_secs_f64();
    }
    Ok(Round {
        latencies_ms,
        events,
        delivery_s,
        cut,
    })
}

/// Every round's latencies without and with subscribers, and the deliveries.
struct Totals {
    without: Vec<f64>,
    with: Vec<f64>,
    events: u64,
    secs: f64,
    cut: u64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Run the benchmark.
pub fn events(jobs: usize, rounds: usize, subscribers: usize) -> anyhow::Result<ExitCode> {
    if jobs == 0 || rounds == 0 || subscribers == 0 {
        bail!("--jobs, --rounds and --subscribers must be positive");
    }
    let dir = std::env::temp_dir().join(format!("taba-bench-events-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = (|| -> anyhow::Result<Totals> {
        let server = rt.block_on(start(&dir))?;
        let client = Client::new(&server.addr().to_string(), None);
        round(&client, "warm", jobs / 10 + 1, 0)?;
        let (mut without, mut with) = (Vec::new(), Vec::new());
        let (mut events, mut secs, mut cut) = (0, 0.0, 0);
        for r in 0..rounds {
            let a = round(&client, &format!("a{r}"), jobs, 0)?;
            let b = round(&client, &format!("b{r}"), jobs, subscribers)?;
            without.extend(a.latencies_ms);
            with.extend(b.latencies_ms);
            events += b.events;
            secs += b.delivery_s;
            cut += b.cut;
        }
        rt.block_on(server.shutdown());
        Ok(Totals {
            without,
            with,
            events,
            secs,
            cut,
        })
    })();
    rt.shutdown_timeout(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    let Totals {
        mut without,
        mut with,
        events,
        secs,
        cut,
    } = result?;
    println!(
        "event stream: {jobs} job registrations per round, {rounds} rounds each, alternating 0 and {subscribers} subscribers"
    );
    println!(
        "{:<32} {:>10} {:>10}",
        "POST /v1/jobs latency", "p50 ms", "p99 ms"
    );
    println!(
        "{:<32} {:>10.2} {:>10.2}",
        "no subscriber",
        percentile(&mut without, 0.5),
        percentile(&mut without, 0.99)
    );
    println!(
        "{:<32} {:>10.2} {:>10.2}",
        format!("{subscribers} subscribers"),
        percentile(&mut with, 0.5),
        percentile(&mut with, 0.99)
    );
    println!(
        "delivered: {events} events to {subscribers} subscribers in {secs:.2} s = {:.0} events/s ({:.0} per subscriber); subscribers cut for falling behind: {cut}",
        events as f64 / secs,
        events as f64 / secs / subscribers as f64
    );
    Ok(ExitCode::SUCCESS)
}
