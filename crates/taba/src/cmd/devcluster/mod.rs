//! `taba dev --agents N`: one server and N agents as separate processes of
//! this same binary (`taba server --config`, `taba agent --config`), each
//! agent `nK` in its own network namespace `taba-nK` on a bridge that joins
//! it to the server, with an equal share of the host's CPU and memory and
//! its use measured from its own allocations' cgroups.
//!
//! ```text
//! <data-dir>/server.toml, server/        the server's configuration, store and images
//! <data-dir>/serverK.toml, serverK/      with --servers M: server K (1..M-1) of an HA cluster
//! <data-dir>/agents/nK.toml, agents/nK/  agent nK's configuration and state
//! <data-dir>/logs/server.log, nK.log     what each process writes
//! <data-dir>/tls/                        the dev PKI (taba_tls::dev), made anew each start
//! ```
//!
//! Agents and the server talk over mutual TLS on the bridge (the server's
//! certificate names the bridge address and 127.0.0.1; agent nK holds
//! `nK.agent.taba`). The server also listens on `--http` (loopback) in
//! plain HTTP (`[tls] plain_loopback`), so the CLI works without flags.
//!
//! With `--servers M --etcd URLS` it runs M servers that share the etcd cluster at URLS (one
//! leader, the others follow; docs/ha.md); each listens on the bridge, the agents list all
//! of them, and the CLI talks to the first through its loopback listener.
//!
//! Stopping it (SIGINT, SIGTERM) stops the agents, their workloads and the
//! server, and removes every namespace, bridge, veth, cgroup and mount it
//! made; the configurations, the store and the agents' data stay. It must
//! not hold cluster logic: the processes it starts are the real server and
//! agents.

mod net;
mod teardown;

use super::dev::DevArgs;
use anyhow::{bail, Context};
use net::{Made, NetPlan};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use taba_types::ByteSize;

/// A running dev cluster; dropping it stops and removes everything.
struct Cluster {
    plan: NetPlan,
    data: PathBuf,
    made: Vec<Made>,
    /// The servers, the first one's loopback listener the CLI's.
    servers: Vec<Child>,
    agents: Vec<(u32, Child)>,
    /// The dev PKI under `<data-dir>/tls` (made in `start`).
    pki: Option<taba_tls::dev::DevPki>,
}

/// Run `taba dev --agents N` until SIGINT or SIGTERM.
pub fn run(a: &DevArgs, agents: u32) -> anyhow::Result<ExitCode> {
    if !rustix::process::geteuid().is_root() {
        bail!("taba dev --agents needs root (network namespaces, cgroups)");
    }
    if !(1..=64).contains(&agents) {
        bail!("--agents {agents}: must be between 1 and 64");
    }
    if !(1..=7).contains(&a.servers) {
        bail!("--servers {}: must be between 1 and 7", a.servers);
    }
    if a.servers > 1 && a.etcd.is_empty() {
        bail!(
            "--servers {}: several servers share a store: give --etcd URLS",
            a.servers
        );
    }
    let plan = NetPlan::new(&a.net_prefix, &a.subnet, agents)?;
    plan.check_free(agents)?;
    let (cpu, memory) = agent_share(a, agents)?;
    for d in ["server", "agents", "logs"] {
        create_private_dir(&a.data_dir.join(d))?;
    }
    // Signals are caught from here on, so a Ctrl-C during start-up still
    // tears down what was made.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut signals = rt.block_on(async { Signals::new() })?;
    let mut cluster = Cluster {
        plan,
        data: a.data_dir.clone(),
        made: Vec::new(),
        servers: Vec::new(),
        agents: Vec::new(),
        pki: None,
    };
    let api = cluster.start(a, agents, cpu, memory)?;
    eprintln!(
        "taba dev: API on http://{api}; {} ready; agents n1..n{agents} ready ({} MHz, {:.1}GiB each; namespaces {}..{}, bridge {} {} over TLS, certificates in {}, logs in {})",
        match a.servers {
            1 => "server".to_string(),
            m => format!("{m} servers on etcd"),
        },
        cpu,
        memory.0 as f64 / f64::from(1u32 << 30),
        cluster.plan.netns(1),
        cluster.plan.netns(agents),
        cluster.plan.bridge(),
        cluster.plan.subnet(),
        a.data_dir.join("tls").display(),
        a.data_dir.join("logs").display()
    );
    rt.block_on(async {
        let mut exited = std::collections::BTreeSet::new();
        loop {
            tokio::select! {
                _ = signals.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            cluster.report_exits(&mut exited);
        }
    });
    eprintln!("taba dev: stopping the agents, their workloads and the servers");
    let errors = cluster.stop();
    if !errors.is_empty() {
        bail!("stopping the dev cluster left:\n{}", errors.join("\n"));
    }
    eprintln!("taba dev: stopped; namespaces, bridge, veths, cgroups and mounts removed");
    Ok(ExitCode::SUCCESS)
}

/// The agents' `[vm]` table from `--vm-image-dir` and `--vm-accel` (the
/// same for every agent, so a VM can move live between them).
fn vm_table(a: &DevArgs) -> anyhow::Result<String> {
    let mut t = format!("[vm]\naccel = {:?}\n", a.vm_accel);
    if !a.vm_image_dir.is_empty() {
        let dirs = a
            .vm_image_dir
            .iter()
            .map(|d| std::path::absolute(d).map(|d| toml_str(&d)))
            .collect::<Result<Vec<_>, _>>()
            .context("--vm-image-dir")?;
        t.push_str(&format!("image_dirs = [{}]\n", dirs.join(", ")));
    }
    Ok(t)
}

/// Each agent's CPU (MHz) and memory: the flags, else an equal share of
/// the host.
fn agent_share(a: &DevArgs, agents: u32) -> anyhow::Result<(u64, ByteSize)> {
    let fp = taba_agent::fingerprint::fingerprint(&a.data_dir);
    let cpu = a.agent_cpu.unwrap_or(fp.resources.cpu / u64::from(agents));
    let memory = match &a.agent_memory {
        Some(m) => ByteSize::parse(m).map_err(|e| anyhow::anyhow!("--agent-memory {m:?}: {e}"))?,
        None => ByteSize(fp.resources.memory.0 / u64::from(agents)),
    };
    if cpu == 0 {
        bail!("--agent-cpu: must be above 0 MHz");
    }
    if memory.0 < 64 << 20 {
        bail!("--agent-memory: {memory} is too little for an agent (at least 64MiB)");
    }
    Ok((cpu, memory))
}

impl Cluster {
    /// Make the network, start the server and the agents, wait until every
    /// agent is a ready node. Returns the API's loopback address.
    fn start(
        &mut self,
        a: &DevArgs,
        agents: u32,
        cpu: u64,
        memory: ByteSize,
    ) -> anyhow::Result<std::net::SocketAddr> {
        self.plan.make_bridge(&mut self.made)?;
        self.make_pki(agents)?;
        let mut apis = Vec::new();
        for i in 0..a.servers {
            apis.push(self.start_server(a, i)?);
        }
        let api = apis[0];
        let token = self.management_token(api)?;
        let server_urls: Vec<String> = apis
            .iter()
            .map(|s| format!("https://{}:{}", self.plan.bridge_ip(), s.port()))
            .collect();
        let vm = vm_table(a)?;
        for k in 1..=agents {
            self.plan.make_agent_net(k, &mut self.made)?;
            self.start_agent(k, &server_urls, cpu, memory, &vm)?;
        }
        self.wait_ready(&format!("http://{api}"), &token, agents)?;
        Ok(api)
    }

    /// The management token: bootstrap the ACLs on a fresh data dir and keep
    /// the token in `<data-dir>/dev-token` (0600), or reuse the one kept
    /// there; either way it is written where the CLI looks for the token of
    /// the API's address, so the CLI needs no flag.
    fn management_token(&self, api: std::net::SocketAddr) -> anyhow::Result<String> {
        let path = self.data.join("dev-token");
        let kept = std::fs::read_to_string(&path)
            .ok()
            .map(|s| s.trim().to_string());
        let client = taba_client::Client::new(&format!("http://{api}"), None);
        // Several servers: the first answers 503 until a leader is elected.
        let start = Instant::now();
        let answer = loop {
            match client.acl_bootstrap() {
                Err(e) if e.status() == Some(503) && start.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => break other,
            }
        };
        let secret = match answer {
            Ok(t) => {
                super::acl::write_secret(&path, &t.secret)?;
                t.secret
            }
            Err(e) if e.status() == Some(409) => kept.with_context(|| {
                format!(
                    "the server's ACLs are bootstrapped but {} is gone: remove {} to start afresh",
                    path.display(),
                    self.data.join("server").display()
                )
            })?,
            Err(e) => return Err(e).context("bootstrapping the ACLs"),
        };
        for f in super::acl::write_token_files(api, &secret)? {
            eprintln!("taba dev: management token in {}", f.display());
        }
        Ok(secret)
    }

    /// A fresh dev PKI in `<data-dir>/tls` (keys 0600): a CA, the server's
    /// certificate for the bridge address and 127.0.0.1, one certificate per
    /// agent, one for the CLI. The previous run's is replaced.
    fn make_pki(&mut self, agents: u32) -> anyhow::Result<()> {
        let dir = self.data.join("tls");
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
        let names: Vec<String> = (1..=agents).map(|k| format!("n{k}")).collect();
        let ips = [
            std::net::IpAddr::V4(self.plan.bridge_ip()),
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        ];
        let pki = taba_tls::dev::create(&dir, &ips, &names)
            .with_context(|| format!("creating the dev PKI in {}", dir.display()))?;
        self.pki = Some(pki);
        Ok(())
    }

    /// `[tls]` of a generated configuration file.
    fn tls_table(files: &taba_tls::TlsFiles, extra: &str) -> String {
        format!(
            "[tls]\nca_cert = {}\ncert = {}\nkey = {}\n{extra}",
            toml_str(&files.ca_cert),
            toml_str(&files.cert),
            toml_str(&files.key)
        )
    }

    /// Server `i`: the first on `--http`, the others on free loopback ports; each also on
    /// the bridge (TLS), with `--etcd` as their shared store when given.
    fn start_server(&mut self, a: &DevArgs, i: u32) -> anyhow::Result<std::net::SocketAddr> {
        let name = match i {
            0 => "server".to_string(),
            i => format!("server{i}"),
        };
        // Port 0 is fine for one server; several need their ports up front, as each
        // advertises its bridge address to the others.
        let http = if i == 0 && (a.servers == 1 || a.http.port() != 0) {
            a.http
        } else {
            free_loopback()?
        };
        let mut cfg = format!(
            "data_dir = {}\nhttp = \"{http}\"\nextra_http = [\"{}:0\"]\nheartbeat_ttl = \"{}ms\"\n\
             heartbeat_grace = \"{}ms\"\n",
            toml_str(&self.data.join(&name)),
            self.plan.bridge_ip(),
            a.heartbeat_ttl.as_millis(),
            a.heartbeat_grace.as_millis()
        );
        if !a.etcd.is_empty() {
            cfg.push_str(&format!(
                "advertise = \"https://{}:{}\"\n",
                self.plan.bridge_ip(),
                http.port()
            ));
        }
        cfg.push_str(&format!("[rebalance]\nenabled = {}\n", !a.no_rebalance));
        if let Some(i) = a.rebalance_interval {
            cfg.push_str(&format!("interval = \"{}ms\"\n", i.as_millis()));
        }
        if !a.etcd.is_empty() {
            let endpoints: Vec<String> = a.etcd.iter().map(|e| format!("{e:?}")).collect();
            cfg.push_str(&format!(
                "[store]\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"/taba-dev/{}\"\n",
                endpoints.join(", "),
                a.net_prefix
            ));
        }
        // TLS on the bridge; plain HTTP for local callers on loopback.
        let pki = self.pki.as_ref().context("the dev PKI is made first")?;
        cfg.push_str(&Self::tls_table(
            &pki.server,
            &format!(
                "ca_key = {}\nplain_loopback = true\n",
                toml_str(&pki.ca_key)
            ),
        ));
        let path = self.data.join(format!("{name}.toml"));
        write_private(&path, &cfg)?;
        let log = self.data.join("logs").join(format!("{name}.log"));
        let mut child = Command::new(std::env::current_exe().context("locating taba")?)
            .arg("server")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting taba server ({name})"))?;
        let stderr = child.stderr.take().expect("piped");
        self.servers.push(child);
        let logf = append(&log)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut logf = logf;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(logf, "{line}");
                if let Some(rest) = line.strip_prefix("taba server: API on http://") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("the server did not start; see {}", log.display()))?;
        addr.parse()
            .with_context(|| format!("the server's address {addr:?}"))
    }

    fn start_agent(
        &mut self,
        k: u32,
        server_urls: &[String],
        cpu: u64,
        memory: ByteSize,
        vm: &str,
    ) -> anyhow::Result<()> {
        let dir = self.data.join("agents").join(format!("n{k}"));
        let name = format!("n{k}");
        let files = self
            .pki
            .as_ref()
            .and_then(|p| p.agents.iter().find(|(n, _)| *n == name))
            .map(|(_, f)| f.clone())
            .with_context(|| format!("no dev certificate for agent {name}"))?;
        let cfg = format!(
            "data_dir = {}\nservers = [{}]\nname = \"{name}\"\nhttp = \"{}:4647\"\n\
             usage = \"allocations\"\ncgroup_parent = \"{}\"\n\
             [resources]\ncpu = {cpu}\nmemory = \"{}B\"\n{vm}{}",
            toml_str(&dir),
            server_urls
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.plan.agent_ip(k),
            self.plan.cgroup_parent(k),
            memory.0,
            Self::tls_table(&files, ""),
        );
        let path = self.data.join("agents").join(format!("n{k}.toml"));
        write_private(&path, &cfg)?;
        let log = append(&self.data.join("logs").join(format!("n{k}.log")))?;
        let netns = std::fs::File::open(self.plan.netns_path(k))
            .with_context(|| format!("opening {}", self.plan.netns_path(k).display()))?;
        let mut cmd = Command::new(std::env::current_exe().context("locating taba")?);
        cmd.arg("agent")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Enter only the network namespace: `ip netns exec` would also
        // remount /sys, and the agent would find no cgroups there.
        #[allow(unsafe_code)]
        // SAFETY: between fork and exec the closure only calls setns(2) on
        // a descriptor opened before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                rustix::thread::move_into_link_name_space(
                    netns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting agent n{k}"))?;
        self.agents.push((k, child));
        Ok(())
    }

    /// Wait until nodes n1..nN are ready (at most a minute).
    fn wait_ready(&mut self, api: &str, token: &str, agents: u32) -> anyhow::Result<()> {
        let client = taba_client::Client::new(api, Some(token.to_string()));
        let start = Instant::now();
        let want: Vec<String> = (1..=agents).map(|k| format!("n{k}")).collect();
        loop {
            let ready: Vec<String> = client
                .list_nodes()
                .map(|ns| {
                    ns.into_iter()
                        .filter(|n| n.status == taba_types::NodeStatus::Ready)
                        .map(|n| n.name)
                        .collect()
                })
                .unwrap_or_default();
            if want.iter().all(|w| ready.contains(w)) {
                return Ok(());
            }
            for (k, c) in &mut self.agents {
                if let Ok(Some(st)) = c.try_wait() {
                    bail!(
                        "agent n{k} exited ({st}); see {}",
                        self.data.join("logs").join(format!("n{k}.log")).display()
                    );
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "agents not ready after 60 s (ready: {ready:?}); see {}",
                    self.data.join("logs").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Say once when an agent or the server ended on its own.
    fn report_exits(&mut self, seen: &mut std::collections::BTreeSet<u32>) {
        for (k, c) in &mut self.agents {
            if !seen.contains(k) {
                if let Ok(Some(st)) = c.try_wait() {
                    eprintln!("taba dev: agent n{k} exited ({st})");
                    seen.insert(*k);
                }
            }
        }
        for (i, s) in self.servers.iter_mut().enumerate() {
            let key = 1000 + i as u32;
            if !seen.contains(&key) {
                if let Ok(Some(st)) = s.try_wait() {
                    eprintln!("taba dev: server {i} exited ({st})");
                    seen.insert(key);
                }
            }
        }
    }

    /// Stop the agents, remove their workloads, mounts and cgroups, the
    /// network, then stop the server. Returns what could not be removed.
    fn stop(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for (_, c) in &mut self.agents {
            terminate(c);
        }
        for (k, _) in std::mem::take(&mut self.agents) {
            let dir = self.data.join("agents").join(format!("n{k}"));
            errors.extend(teardown::agent_leftovers(&self.plan.cgroup_parent(k), &dir));
        }
        errors.extend(net::remove(&std::mem::take(&mut self.made)));
        for mut s in std::mem::take(&mut self.servers) {
            terminate(&mut s);
        }
        errors
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for e in self.stop() {
            eprintln!("taba dev: {e}");
        }
    }
}

/// A free port on loopback (bound and released: the server binds it a moment later).
fn free_loopback() -> anyhow::Result<std::net::SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    l.local_addr().context("finding a free port")
}

/// SIGTERM, then SIGKILL after 10 s.
fn terminate(c: &mut Child) {
    if matches!(c.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if matches!(c.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            term: signal(SignalKind::terminate()).context("catching SIGTERM")?,
        })
    }
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

fn toml_str(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

fn create_private_dir(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))
}

fn write_private(p: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("writing {}", p.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", p.display()))
}

fn append(p: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("opening {}", p.display()))
}
