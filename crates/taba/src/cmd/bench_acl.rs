//! `taba bench api-acl`: API requests per second with ACLs on vs off, in
//! one run (target: on is at most 5% slower).
//!
//! Two servers in this process, each on 127.0.0.1:0 with its own redb store
//! in a temporary directory and the same job: one with ACLs on, called with
//! a client token whose policy grants `read` in `default` (so every request
//! is authenticated and its policy checked), one with ACLs off. Client
//! threads send `GET /v1/jobs/web` (a cheap handler: the ACL check is as
//! large a share of the request as it gets) over keep-alive connections, a
//! bounded number of requests per round; rounds alternate between the two
//! servers so drift on a shared machine hits both alike.

use anyhow::{bail, Context};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taba_client::api::CreateTokenRequest;
use taba_client::Client;
use taba_server::{Server, ServerConfig, ServerHandle};
use taba_types::acl::Capability;

const JOB: &str = r#"
name = "web"
[[group]]
name = "g"
constraint = [{ attribute = "${node.name}", value = "nowhere" }]
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/true"]
"#;

const READ_DEFAULT: &str = "[namespace.default]\ncapabilities = [\"read\"]\n";

async fn start(dir: &Path, acl: bool) -> anyhow::Result<ServerHandle> {
    std::fs::create_dir_all(dir)?;
    let store: Arc<dyn taba_store::Store> =
        Arc::new(taba_store::RedbStore::open(&dir.join("state.redb")).context("opening a store")?);
    let images = Arc::new(taba_image::ImageStore::open(&dir.join("images"))?);
    let mut sc = ServerConfig::new(dir.join("server"), "127.0.0.1:0".parse()?);
    sc.acl.enabled = acl;
    sc.rebalance.enabled = false;
    Ok(Server::start(sc, store, images).await?)
}

/// A client of `server` with a read-only token (ACLs on) or none (off),
/// and the job registered.
async fn prepare(server: &ServerHandle, acl: bool) -> anyhow::Result<Client> {
    let addr = server.addr().to_string();
    let token = if acl {
        let (_, m) = server.state().issue_management_token("bench").await?;
        let admin = Client::new(&addr, Some(m));
        let t = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            admin.apply_acl_policy_toml("reader", READ_DEFAULT.as_bytes())?;
            admin.register_job_toml(JOB.as_bytes())?;
            let t = admin.create_acl_token(&CreateTokenRequest {
                name: "bench".into(),
                policies: vec!["reader".into()],
                ..Default::default()
            })?;
            Ok(t.secret)
        })
        .await??;
        Some(t)
    } else {
        let c = Client::new(&addr, None);
        tokio::task::spawn_blocking(move || c.register_job_toml(JOB.as_bytes())).await??;
        None
    };
    Ok(Client::new(&addr, token))
}

/// The guard's own work per request, in process: authenticate the token
/// (SHA-256 and lookup) and check a namespace capability; ns per call.
fn check_cost(server: &ServerHandle, secret: &str) -> anyhow::Result<f64> {
    const N: u32 = 200_000;
    let acl = &server.state().acl;
    let now = taba_server::broker::now_ms();
    let start = Instant::now();
    for _ in 0..N {
        let c = acl
            .authenticate(Some(std::hint::black_box(secret)), now)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        std::hint::black_box(c.rights.allows("default", Capability::Read));
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(N))
}

/// Send `requests` GETs from `clients` threads; requests per second.
fn round(client: &Client, requests: usize, clients: usize) -> anyhow::Result<f64> {
    let per = requests / clients;
    let start = Instant::now();
    let mut threads = vec![];
    for _ in 0..clients {
        let c = client.clone();
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            for _ in 0..per {
                c.job("web").context("GET /v1/jobs/web")?;
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    Ok((per * clients) as f64 / start.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run the benchmark.
pub fn api_acl(requests: usize, rounds: usize, clients: usize) -> anyhow::Result<ExitCode> {
    if requests == 0 || rounds == 0 || clients == 0 || requests < clients {
        bail!("--requests, --rounds and --clients must be positive, --requests >= --clients");
    }
    let dir = std::env::temp_dir().join(format!("taba-bench-acl-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = (|| -> anyhow::Result<(Vec<f64>, Vec<f64>, f64)> {
        let (on, off) = rt.block_on(async {
            let on = start(&dir.join("on"), true).await?;
            let off = start(&dir.join("off"), false).await?;
            anyhow::Ok((on, off))
        })?;
        let (c_on, c_off) = rt.block_on(async {
            let a = prepare(&on, true).await?;
            let b = prepare(&off, false).await?;
            anyhow::Ok((a, b))
        })?;
        // Warm up connections and caches.
        round(&c_on, requests / 10 + clients, clients)?;
        round(&c_off, requests / 10 + clients, clients)?;
        let (mut r_on, mut r_off) = (vec![], vec![]);
        for i in 0..rounds {
            if i % 2 == 0 {
                r_on.push(round(&c_on, requests, clients)?);
                r_off.push(round(&c_off, requests, clients)?);
            } else {
                r_off.push(round(&c_off, requests, clients)?);
                r_on.push(round(&c_on, requests, clients)?);
            }
        }
        let secret = c_on.token().unwrap_or_default().to_string();
        let cost = check_cost(&on, &secret)?;
        rt.block_on(async {
            on.shutdown().await;
            off.shutdown().await;
        });
        Ok((r_on, r_off, cost))
    })();
    rt.shutdown_timeout(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut on, mut off, cost) = result?;
    let (m_on, m_off) = (median(&mut on), median(&mut off));
    println!(
        "API requests per second, GET /v1/jobs/web, {clients} client threads, {requests} requests per round, {rounds} rounds each, interleaved"
    );
    println!("{:<44} {:>12}", "", "median req/s");
    println!("{:<44} {:>12.0}", "ACLs off", m_off);
    println!(
        "{:<44} {:>12.0}",
        "ACLs on (client token, policy: read default)", m_on
    );
    let slower = (1.0 - m_on / m_off) * 100.0;
    println!("ACLs on vs off: {slower:+.1}% slower (target <= 5%)");
    // The machine's CPU time per request at the ACLs-off rate, its 2 cores
    // shared by client and server: an upper bound on what a request costs.
    let budget = 2e9 / m_off;
    println!(
        "the ACL check itself, in process: {cost:.0} ns per request ({:.2}% of the {budget:.0} ns of CPU a request gets at the ACLs-off rate on 2 cores)",
        cost / budget * 100.0
    );
    Ok(ExitCode::SUCCESS)
}
