//! Harness of the end-to-end tests: a real `taba dev` process on a random
//! port with a temporary data dir, driven through the real API client and the
//! real CLI. `taba dev` starts with ACLs bootstrapped: the harness reads its
//! management token from `<data>/dev-token` for the API client, and the CLI
//! finds it by itself in the token file `taba dev` wrote under
//! `TABA_CONFIG_DIR=<data>/config` (as it does under `~/.config/taba`
//! outside tests). Needs root (cgroups, namespaces, overlayfs) and the busybox image
//! that `scripts/setup.sh` builds; fails loudly when either is missing.
#![allow(dead_code)]

pub mod browser;
pub mod disk;
pub mod guest;
pub mod ha;
pub mod images;
pub mod registry;
pub mod token;
pub mod vm;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taba_client::Client;

/// The `taba` binary under test.
pub fn taba_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taba"))
}

/// Fail unless we are root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "this test needs root (cgroups, namespaces, mounts); run scripts/test.sh as root"
    );
}

/// The busybox image tar, built by `scripts/setup.sh`.
pub fn busybox_tar() -> PathBuf {
    let dir = std::env::var("TABA_IMAGE_DIR").unwrap_or_else(|_| "/var/cache/taba/images".into());
    let p = Path::new(&dir).join("busybox.tar");
    if !p.exists() {
        let script = manifest_dir().join("../../scripts/build-busybox-image.sh");
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("bash")
            .arg(script)
            .arg(&p)
            .status()
            .expect("running build-busybox-image.sh");
        assert!(
            st.success(),
            "building the busybox image failed; run scripts/setup.sh"
        );
    }
    p
}

/// Polls `f` every 100 ms until it is true; after `timeout`, panics saying what was awaited,
/// with `logs()` to show why.
pub fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> bool, logs: impl Fn() -> String) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; {}", logs());
}

/// A running `taba dev`.
pub struct Dev {
    pub child: Option<Child>,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub addr: String,
    pub client: Client,
    pub log: PathBuf,
    /// The management token `taba dev` wrote.
    pub token: String,
}

impl Dev {
    /// Start `taba dev` on a fresh temporary data dir.
    pub fn start() -> Dev {
        Dev::start_with(&[])
    }

    /// [`Dev::start`] with extra arguments.
    pub fn start_with(extra: &[&str]) -> Dev {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("taba-e2e-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let data = tmp.path().to_path_buf();
        let mut d = Dev::start_on(&data, extra);
        d._tmp = Some(tmp);
        d
    }

    /// Start `taba dev` on `data` with extra args.
    pub fn start_on(data: &Path, extra: &[&str]) -> Dev {
        Dev::start_with_env(data, extra, &[])
    }

    /// [`Dev::start_on`] with extra environment variables (test hooks).
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Dev {
        require_root();
        let log = data.join("taba-dev.log");
        std::fs::create_dir_all(data).unwrap();
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(taba_bin())
            .arg("dev")
            .arg("--data-dir")
            .arg(data)
            .arg("--http")
            .arg("127.0.0.1:0")
            .arg("--node-name")
            .arg("n1")
            .args(extra)
            .env("TABA_LOG", "info")
            .env("TABA_CONFIG_DIR", data.join("config"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting taba dev");
        // The first stderr line naming the API tells the port.
        let rx = tee_stderr(&mut child, logf, "API on ");
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "taba dev did not start; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let token = std::fs::read_to_string(data.join("dev-token"))
            .expect("taba dev writes its management token before it prints its address")
            .trim()
            .to_string();
        let client = Client::new(&addr, Some(token.clone()));
        let d = Dev {
            child: Some(child),
            data: data.to_path_buf(),
            _tmp: None,
            addr,
            client,
            log,
            token,
        };
        d.wait_for("node ready", Duration::from_secs(30), || {
            d.client
                .list_nodes()
                .ok()
                .is_some_and(|n| n.iter().any(|n| n.status.to_string() == "ready"))
        });
        d
    }

    /// Poll `f` until true; panic with the log after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
        poll(what, timeout, f, || {
            format!("taba dev log:\n{}", self.log_tail())
        });
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The CLI against this server, finding the token on its own.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(taba_bin());
        c.args(args)
            .env("TABA_ADDR", &self.addr)
            .env("TABA_CONFIG_DIR", self.data.join("config"))
            .env_remove("TABA_TOKEN");
        c
    }

    /// Run the CLI against this server on a terminal (a pty from util-linux `script`):
    /// what a user at a terminal sees, escape sequences included.
    pub fn cli_on_terminal(&self, args: &[&str]) -> std::process::Output {
        let line = std::iter::once(taba_bin().display().to_string())
            .chain(
                args.iter()
                    .map(|a| format!("'{}'", a.replace('\'', "'\\''"))),
            )
            .collect::<Vec<_>>()
            .join(" ");
        Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("TABA_ADDR", &self.addr)
            .env("TABA_CONFIG_DIR", self.data.join("config"))
            .env_remove("TABA_TOKEN")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running taba under script")
    }

    /// Run the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.cli_command(args).output().expect("running taba")
    }

    /// Import the busybox image.
    pub fn import_busybox(&self) {
        self.client
            .import_image(&busybox_tar())
            .expect("importing busybox");
    }

    /// kill -9 the process (workloads keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop every job and wait until nothing runs, then stop the process.
    pub fn shutdown(&mut self) {
        if self.child.is_none() {
            return;
        }
        if let Ok(jobs) = self.client.list_jobs() {
            for j in jobs.iter().filter(|j| !j.stopped) {
                let _ = self.client.stop_job(&j.name);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                let busy = self.client.list_jobs().ok().is_some_and(|jobs| {
                    jobs.iter().any(|j| {
                        self.client
                            .job_status(&j.name)
                            .ok()
                            .is_some_and(|s| s.allocations.iter().any(|a| !a.status.is_terminal()))
                    })
                });
                if !busy {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.shutdown();
        // Whatever a failed test left: workloads, mounts and cgroups.
        if self._tmp.is_some() {
            force_cleanup(&self.data);
        }
    }
}

/// Kill every shim and workload of the data dir `data`, unmount what is
/// mounted under it and remove its allocations' cgroups. Used when a test
/// fails before its jobs were stopped.
pub fn force_cleanup(data: &Path) {
    let data_s = data.to_string_lossy().to_string();
    let allocs = data.join("agent").join("allocs");
    // Shims name their task dir on the command line; their workloads are in state.json.
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("shim run") && cmd.contains(&data_s) {
                // SAFETY: kill(2) with a pid read from /proc.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
    let ids: Vec<String> = std::fs::read_dir(&allocs)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    for id in &ids {
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = entry.path().join("taba").join(id);
            if !dir.exists() {
                continue;
            }
            for procs in walk_dirs(&dir).iter().map(|d| d.join("cgroup.procs")) {
                for pid in std::fs::read_to_string(procs).unwrap_or_default().lines() {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        // SAFETY: kill(2) with a pid read from the task's cgroup.
                        #[allow(unsafe_code)]
                        unsafe {
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&data_s))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").arg("-l").arg(m).status();
    }
    for id in &ids {
        for entry in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = entry.path().join("taba").join(id);
            let mut dirs = walk_dirs(&dir);
            dirs.reverse();
            for d in dirs {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// Runs [`force_cleanup`] on a data dir when dropped, even after a panic.
pub struct CleanupGuard(pub PathBuf);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        force_cleanup(&self.0);
    }
}

/// `dir` and every directory below it, parents first.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if dir.is_dir() {
        out.push(dir.to_path_buf());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk_dirs(&e.path()));
            }
        }
    }
    out
}

/// Write a job file into a temp dir and return its path.
pub fn job_file(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, toml).unwrap();
    p
}

/// This package's directory, read when the test runs (cargo sets it for
/// test processes): a test binary reused from a build in another checkout
/// must not run that checkout's scripts.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A `taba server` and `taba agent`s as separate processes on loopback,
/// each with its own data dir under one temporary dir (`<tmp>/server`,
/// `<tmp>/<node>/agent`). Dropping it stops every job, kills the
/// processes and cleans up what the agents left.
pub struct Cluster {
    tmp: tempfile::TempDir,
    server: Proc,
    /// `http://127.0.0.1:PORT` of the server.
    pub url: String,
    /// The management token `taba acl bootstrap` printed.
    pub token: String,
    /// API client with the management token.
    pub client: Client,
    agents: std::collections::BTreeMap<String, Proc>,
}

impl Cluster {
    /// A server with `server_toml` added to its configuration file.
    pub fn start(server_toml: &str) -> Cluster {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("taba-cluster-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().join("server");
        let (server, url) = start_server(&dir, &dir.join("data"), server_toml);
        let mut taba = Command::new(taba_bin());
        taba.env("TABA_ADDR", &url);
        let token = acl_bootstrap(taba);
        let client = Client::new(url.trim_start_matches("http://"), Some(token.clone()));
        Cluster {
            tmp,
            server,
            url,
            token,
            client,
            agents: Default::default(),
        }
    }

    /// A server and agents `names`, all ready.
    pub fn with_agents(names: &[&str]) -> Cluster {
        let mut c = Cluster::start("");
        let url = c.url.clone();
        for name in names {
            c.start_agent(name, &url);
        }
        c
    }

    /// The cluster's temporary dir (for job files and the like).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The agent of node `name`'s data dir parent (what [`force_cleanup`] takes).
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Start (or restart, on the same data dir) the agent of node `name`,
    /// talking to `server_url` (the server's, unless a test puts a proxy
    /// between them); waits until the node is ready.
    pub fn start_agent(&mut self, name: &str, server_url: &str) {
        self.spawn_agent(name, server_url, &[]);
        self.wait_for(
            &format!("node {name} ready"),
            Duration::from_secs(30),
            || {
                self.client
                    .node(name)
                    .is_ok_and(|n| n.status == taba_types::NodeStatus::Ready)
            },
        );
    }

    /// Start the agent of node `name` through `wrapper` (see
    /// [`spawn_wrapped`]) and return once it logged its start.
    pub fn spawn_agent(&mut self, name: &str, server_url: &str, wrapper: &[&str]) {
        let dir = self.node_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nserver = {server_url:?}\nname = {name:?}\nhttp = \"127.0.0.1:0\"\n",
                dir.join("agent")
            ),
        )
        .unwrap();
        let (agent, _) = Proc::start_wrapped(
            wrapper,
            &["agent", "--config", cfg.to_str().unwrap()],
            &dir.join(format!("agent-{}.log", self.agents.len())),
            "taba agent: node ",
        );
        self.agents.insert(name.to_string(), agent);
    }

    /// kill -9 the agent of `name` (its workloads keep running).
    pub fn kill_agent(&mut self, name: &str) {
        if let Some(mut a) = self.agents.remove(name) {
            a.kill();
        }
    }

    /// Run the CLI against the server with the management token.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(taba_bin())
            .args(args)
            .env("TABA_ADDR", &self.url)
            .env("TABA_TOKEN", &self.token)
            .output()
            .expect("running taba")
    }

    /// Poll `f` until true; panic with the logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
        poll(what, timeout, f, || format!("logs:\n{}", self.logs()));
    }

    /// The last lines of every log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for e in walk_dirs(self.tmp.path()) {
            for f in std::fs::read_dir(&e).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().is_some_and(|x| x == "log") {
                    let s = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = s.lines().collect();
                    out.push_str(&format!("==> {}\n", p.display()));
                    out.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Allocation ids whose task shims run now under node `name`'s data
    /// dir: what really runs there, whatever the servers think.
    pub fn running_allocs(&self, name: &str) -> Vec<String> {
        shims_under(&self.node_dir(name).join("agent"))
    }
}

/// Allocation ids whose task shims run now under the agent data dir
/// `agent_dir` (their bundles are in `<agent_dir>/allocs/<id>/...`): what
/// really runs on that node, whatever the servers think.
pub fn shims_under(agent_dir: &Path) -> Vec<String> {
    let allocs = agent_dir.join("allocs");
    let prefix = allocs.to_string_lossy().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if !args.iter().any(|a| a == "shim") {
            continue;
        }
        if let Some(dir) = args.iter().find(|a| a.starts_with(&prefix)) {
            let rel = dir[prefix.len()..].trim_start_matches('/');
            if let Some(id) = rel.split('/').next() {
                out.push(id.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Cluster {
    /// The job's allocations whose task shims really run on `node`.
    pub fn job_running_on(&self, job: &str, node: &str) -> Vec<String> {
        let Ok(st) = self.client.job_status(job) else {
            return vec![];
        };
        let mine: std::collections::BTreeSet<String> =
            st.allocations.iter().map(|a| a.id.to_string()).collect();
        self.running_allocs(node)
            .into_iter()
            .filter(|id| mine.contains(id))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(jobs) = self.client.list_jobs() {
            for j in jobs.iter().filter(|j| !j.stopped) {
                let _ = self.client.stop_job(&j.name);
            }
        }
        let names: Vec<String> = std::fs::read_dir(self.tmp.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n != "server")
            .collect();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15)
            && names.iter().any(|n| !self.running_allocs(n).is_empty())
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        for (_, mut a) in std::mem::take(&mut self.agents) {
            a.kill();
        }
        self.server.kill();
        for n in &names {
            force_cleanup(&self.node_dir(n));
        }
    }
}

/// Start `taba server` with its configuration file and log in `dir`, its
/// store in `data_dir` (which may be elsewhere, e.g. on a test filesystem),
/// the API on a random loopback port, and `extra_toml` added to the
/// configuration. Returns the process and `http://127.0.0.1:PORT`.
pub fn start_server(dir: &Path, data_dir: &Path, extra_toml: &str) -> (Proc, String) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!("data_dir = {data_dir:?}\nhttp = \"127.0.0.1:0\"\n{extra_toml}\n"),
    )
    .unwrap();
    Proc::start(
        &["server", "--config", cfg.to_str().unwrap()],
        &dir.join("server.log"),
        "API on ",
    )
}

/// One `taba server` (embedded store, no agents) that a test kills and
/// restarts on the same data dir: the durability tests' server.
pub struct Server {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The management token (bootstrapped by the first start).
    pub token: String,
    pub client: Client,
}

impl Server {
    /// Start on `data_dir` (config and log in `dir`). `token` is the
    /// management token of an earlier start on the same data dir; `None`
    /// bootstraps the ACLs.
    pub fn start(dir: &Path, data_dir: &Path, token: Option<&str>) -> Server {
        require_root();
        let (proc, url) = start_server(dir, data_dir, "");
        let token = match token {
            Some(t) => t.to_string(),
            None => {
                let mut taba = Command::new(taba_bin());
                taba.env("TABA_ADDR", &url);
                acl_bootstrap(taba)
            }
        };
        let client = Client::new(url.trim_start_matches("http://"), Some(token.clone()));
        Server {
            proc,
            url,
            token,
            client,
        }
    }

    /// kill -9 the server and wait for it.
    pub fn kill9(&mut self) {
        self.proc.kill();
    }
}

/// A seeded random number generator (splitmix64) for tests that pick random
/// moments: the seed comes from `TABA_TEST_SEED` or is fresh, and is printed
/// so that a failure can be replayed.
pub struct TestRng(u64);

impl TestRng {
    /// Seeded from `TABA_TEST_SEED` if set, else from the clock; prints the
    /// seed under `what`.
    pub fn from_env(what: &str) -> TestRng {
        let seed = match std::env::var("TABA_TEST_SEED") {
            Ok(s) => s.parse().expect("TABA_TEST_SEED is a u64"),
            Err(_) => unique_seed(0),
        };
        eprintln!("{what}: seed {seed} (replay with TABA_TEST_SEED={seed})");
        TestRng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
        x ^ (x >> 31)
    }

    /// A number in `range` (which must not be empty).
    pub fn below(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next_u64() % (range.end - range.start)
    }
}

/// A TCP proxy on loopback between an agent and the server, so a test can
/// cut that one agent's link (`cut`: open connections are closed, new ones
/// are accepted and never answered, like a black-holed route) and restore it.
pub struct LinkProxy {
    /// `http://127.0.0.1:PORT` for the agent's `server` setting.
    pub url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LinkProxy {
    /// Forward to `upstream` (`http://host:port`).
    pub fn start(upstream: &str) -> LinkProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (c, s, k) = (cut.clone(), stop.clone(), conns.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = down.set_nonblocking(false);
                if c.load(Ordering::SeqCst) {
                    k.lock().unwrap().push(down); // black hole
                    continue;
                }
                let Ok(up) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                for (from, to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up.try_clone().unwrap(), down.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let (mut from, mut to) = (from, to);
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
                let mut held = k.lock().unwrap();
                held.push(down);
                held.push(up);
            }
        });
        LinkProxy {
            url,
            cut,
            conns,
            stop,
        }
    }

    /// Cut the link: nothing passes until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Restore the link (black-holed connections are closed).
    pub fn restore(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.restore();
    }
}

/// Copies `child`'s stderr line by line into `log` (on a thread) and sends the
/// text after `marker` (up to a `;`, trimmed) of the first line that has it.
pub fn tee_stderr(
    child: &mut Child,
    log: std::fs::File,
    marker: &str,
) -> std::sync::mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_string();
    std::thread::spawn(move || {
        let mut log = log;
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(log, "{line}");
            if !sent {
                if let Some(rest) = line.split(marker.as_str()).nth(1) {
                    let _ = tx.send(rest.split(';').next().unwrap_or("").trim().to_string());
                    sent = true;
                }
            }
        }
    });
    rx
}

/// A `taba` process (server or agent) whose stderr goes to `log`.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Start `taba ARGS`; wait for the stderr line containing `marker` and
    /// return the text after it (up to `;` or the end).
    pub fn start(args: &[&str], log: &Path, marker: &str) -> (Proc, String) {
        Self::start_wrapped(&[], args, log, marker)
    }

    /// [`Proc::start`] with `taba` run through `wrapper` (a command and its
    /// arguments that end with the program to run, e.g. `unshare ... --`).
    pub fn start_wrapped(
        wrapper: &[&str],
        args: &[&str],
        log: &Path,
        marker: &str,
    ) -> (Proc, String) {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let bin = taba_bin();
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = cmd
            .args(args)
            .env("TABA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting taba");
        let rx = tee_stderr(&mut child, logf, marker);
        let proc = Proc {
            child: Some(child),
            log: log.to_path_buf(),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(found) => (proc, found),
            Err(_) => panic!(
                "taba {args:?} did not start; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// kill -9 and wait (an agent's workloads keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Bootstrap the ACLs of a server as an operator does (`taba acl
/// bootstrap`, run by `taba`: the CLI with its address and TLS settings)
/// and return the management token's secret.
pub fn acl_bootstrap(mut taba: Command) -> String {
    let out = taba
        .args(["acl", "bootstrap"])
        .env_remove("TABA_TOKEN")
        .output()
        .expect("running taba acl bootstrap");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "taba acl bootstrap failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Secret   = "))
        .unwrap_or_else(|| panic!("no secret in `taba acl bootstrap`'s output: {stdout}"))
        .trim()
        .to_string()
}

/// A running `taba dev --agents N`: a server and N agent processes, agent
/// `nK` in network namespace `<prefix>-nK`. The prefix and subnet are unique
/// per cluster so that tests can run side by side.
pub struct DevCluster {
    pub child: Option<Child>,
    pub data: PathBuf,
    _tmp: tempfile::TempDir,
    pub addr: String,
    /// The management token `taba dev` bootstrapped ACLs with.
    pub token: String,
    /// API client with that token.
    pub client: Client,
    /// Dev's own log (its stderr).
    pub log: PathBuf,
    /// Names of the namespaces, bridge and veths start with this.
    pub prefix: String,
    /// The bridge's subnet, `10.X.Y.0/24`.
    pub subnet: String,
    pub agents: u32,
    /// Agents started again by [`DevCluster::restart_agent`] (killed first on drop).
    pub restarted: Vec<Child>,
}

impl DevCluster {
    /// Start `taba dev --agents N` with `extra` arguments on a fresh data dir.
    pub fn start(agents: u32, extra: &[&str]) -> DevCluster {
        require_root();
        let mut last = String::new();
        // A random subnet may be in use (by another test's cluster): try a few.
        for attempt in 0..4 {
            let tmp = tempfile::Builder::new()
                .prefix("taba-devcluster-")
                .tempdir_in("/var/tmp")
                .unwrap();
            let seed = unique_seed(attempt);
            let prefix = format!("t{:05x}", seed & 0xfffff);
            let subnet = format!("10.{}.{}.0/24", 200 + (seed >> 20) % 50, (seed >> 8) % 256);
            match DevCluster::try_start(tmp, &prefix, &subnet, agents, extra) {
                Ok(c) => return c,
                Err(e) if e.contains("already used") || e.contains("exists") => last = e,
                Err(e) => panic!("taba dev --agents {agents} did not start:\n{e}"),
            }
        }
        panic!("taba dev --agents did not start:\n{last}");
    }

    fn try_start(
        tmp: tempfile::TempDir,
        prefix: &str,
        subnet: &str,
        agents: u32,
        extra: &[&str],
    ) -> Result<DevCluster, String> {
        let data = tmp.path().to_path_buf();
        let log = data.join("taba-dev.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(taba_bin())
            .arg("dev")
            .arg("--agents")
            .arg(agents.to_string())
            .arg("--data-dir")
            .arg(&data)
            .arg("--http")
            .arg("127.0.0.1:0")
            .arg("--subnet")
            .arg(subnet)
            .args(extra)
            .env("TABA_DEV_NET_PREFIX", prefix)
            .env("TABA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting taba dev --agents");
        let rx = tee_stderr(&mut child, logf, "API on ");
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a,
            Err(_) => {
                // It exits on a start-up error; kill it if it hangs.
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    signal(&child, libc::SIGTERM);
                }
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        let token = std::fs::read_to_string(data.join("dev-token"))
            .expect("taba dev --agents writes its management token before it prints its address")
            .trim()
            .to_string();
        let client = Client::new(&addr, Some(token.clone()));
        Ok(DevCluster {
            child: Some(child),
            data,
            _tmp: tmp,
            addr,
            token,
            client,
            log,
            prefix: prefix.to_string(),
            subnet: subnet.to_string(),
            agents,
            restarted: Vec::new(),
        })
    }

    /// Poll `f` until true; panic with the logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
        poll(what, timeout, f, || format!("logs:\n{}", self.log_tail()));
    }

    /// The last lines of dev's, the server's and each agent's log.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        let mut files = vec![self.log.clone(), self.data.join("logs/server.log")];
        files.extend((1..=self.agents).map(|k| self.data.join(format!("logs/n{k}.log"))));
        for f in files {
            let s = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            out.push_str(&format!("==> {} <==\n", f.display()));
            out.push_str(&lines[lines.len().saturating_sub(30)..].join("\n"));
            out.push('\n');
        }
        out
    }

    /// Run the CLI against this cluster's server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(taba_bin())
            .args(args)
            .env("TABA_ADDR", &self.addr)
            .env("TABA_TOKEN", &self.token)
            .output()
            .expect("running taba")
    }

    /// Import the busybox image into the server (agents fetch it from there).
    pub fn import_busybox(&self) {
        self.client
            .import_image(&busybox_tar())
            .expect("importing busybox");
    }

    /// The server's API on the bridge (TLS), where the agents reach it.
    pub fn bridge_url(&self) -> String {
        let base = self.subnet.strip_suffix("0/24").expect("a /24 subnet");
        let port = self.addr.rsplit(':').next().expect("a port");
        format!("https://{base}1:{port}")
    }

    /// Run the CLI against the server's bridge listener over TLS, with the
    /// dev PKI's CLI certificate.
    pub fn cli_tls(&self, args: &[&str]) -> std::process::Output {
        let tls = self.data.join("tls");
        Command::new(taba_bin())
            .arg("--addr")
            .arg(self.bridge_url())
            .arg("--ca-cert")
            .arg(tls.join("taba-ca.pem"))
            .arg("--client-cert")
            .arg(tls.join("cli.pem"))
            .arg("--client-key")
            .arg(tls.join("cli-key.pem"))
            .args(args)
            .env_remove("TABA_ADDR")
            .env("TABA_TOKEN", &self.token)
            .output()
            .expect("running taba")
    }

    /// Agent `k`'s address on the bridge.
    pub fn agent_ip(&self, k: u32) -> String {
        let base = self.subnet.strip_suffix("0/24").expect("a /24 subnet");
        format!("{base}{}", k + 1)
    }

    /// The pid of agent `k`'s process.
    pub fn agent_pid(&self, k: u32) -> Option<i32> {
        let cfg = self.data.join(format!("agents/n{k}.toml"));
        let want = format!("agent --config {}", cfg.display());
        pids_with_cmdline(&want).into_iter().next()
    }

    /// Allocation ids whose task shims really run on agent `k`.
    pub fn running_allocs(&self, k: u32) -> Vec<String> {
        shims_under(&self.data.join(format!("agents/n{k}")))
    }

    /// With `--servers M`: server `i`'s configuration file (`server.toml`, `server1.toml` ...).
    pub fn server_config(&self, i: u32) -> PathBuf {
        match i {
            0 => self.data.join("server.toml"),
            i => self.data.join(format!("server{i}.toml")),
        }
    }

    /// The pid of server `i`'s process.
    pub fn server_pid(&self, i: u32) -> Option<i32> {
        let want = format!("server --config {}", self.server_config(i).display());
        pids_with_cmdline(&want).into_iter().next()
    }

    /// With `--servers M`: every server's bridge URL (their `advertise`).
    pub fn server_urls(&self, servers: u32) -> Vec<String> {
        (0..servers)
            .map(|i| {
                let cfg = std::fs::read_to_string(self.server_config(i)).unwrap();
                cfg.lines()
                    .find_map(|l| l.strip_prefix("advertise = "))
                    .expect("an HA server advertises its bridge address")
                    .trim_matches('"')
                    .to_string()
            })
            .collect()
    }

    /// A client of every server in `urls` over the bridge (TLS, the dev PKI's CLI
    /// certificate, the management token); it fails over between them.
    pub fn tls_client(&self, urls: Vec<String>) -> Client {
        let tls = self.data.join("tls");
        let t = taba_tls::ClientTls::load(
            &tls.join("taba-ca.pem"),
            Some((&tls.join("cli.pem"), &tls.join("cli-key.pem"))),
        )
        .expect("the dev PKI's CLI files");
        Client::with_options(taba_client::ClientOptions {
            addrs: urls,
            token: Some(self.token.clone()),
            tls: Some(taba_client::TlsOptions {
                ca_pem: t.ca_pem,
                identity_pem: t.identity_pem,
            }),
        })
        .expect("client")
    }

    /// kill -9 agent `k`'s process (its workloads run on under their shims).
    pub fn kill_agent(&self, k: u32) {
        let pid = self.agent_pid(k).expect("the agent's process");
        // SAFETY: kill(2) on an agent process this test's cluster started.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        poll(
            "the killed agent gone",
            Duration::from_secs(10),
            || self.agent_pid(k).is_none(),
            String::new,
        );
    }

    /// Start agent `k` again (after [`Self::kill_agent`]) with its
    /// configuration, in its network namespace (only that one: the agent
    /// must see the host's /sys), its log appended to `logs/nK.log`.
    pub fn restart_agent(&mut self, k: u32) {
        assert!(self.agent_pid(k).is_none(), "agent n{k} still runs");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join(format!("logs/n{k}.log")))
            .expect("the agent's log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}-n{k}", self.prefix))
            .arg("--")
            .arg(taba_bin())
            .arg("agent")
            .arg("--config")
            .arg(self.data.join(format!("agents/n{k}.toml")))
            .env("TABA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the agent again");
        self.restarted.push(child);
    }

    /// Sets agent `k`'s link (the host end of its veth) up or down.
    pub fn link(&self, k: u32, up: bool) {
        let dev = format!("{}-v{k}", self.prefix);
        let st = Command::new("ip")
            .args(["link", "set", &dev, if up { "up" } else { "down" }])
            .status()
            .expect("ip link set");
        assert!(st.success(), "ip link set {dev}");
    }

    /// Everything on the host that carries this cluster's names: network
    /// namespaces, links, mounts (under the data dir or of its namespaces)
    /// and cgroups.
    pub fn host_footprint(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(&format!("{}-", self.prefix)) {
                out.push(format!("netns {n}"));
            }
        }
        for e in std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(&format!("{}-", self.prefix)) {
                out.push(format!("link {n}"));
            }
        }
        let data_s = self.data.to_string_lossy().to_string();
        let netns = format!("/run/netns/{}-", self.prefix);
        for l in std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
        {
            if let Some(m) = l.split(' ').nth(4) {
                if m.starts_with(&data_s) || m.starts_with(&netns) {
                    out.push(format!("mount {m}"));
                }
            }
        }
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for c in std::fs::read_dir(e.path().join("taba"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let n = c.file_name().to_string_lossy().to_string();
                if n.starts_with(&format!("{}-", self.prefix)) {
                    out.push(format!("cgroup {}", c.path().display()));
                }
            }
        }
        for pid in pids_with_cmdline(&data_s) {
            out.push(format!("process {pid}"));
        }
        out
    }

    /// SIGTERM `taba dev` and wait (at most two minutes) until it exits.
    /// Returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        signal(&c, libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
        }
        for c in &mut self.restarted {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stop();
        // Whatever a failed stop left.
        for pid in pids_with_cmdline(&self.data.to_string_lossy()) {
            // SAFETY: kill(2) with a pid read from /proc.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        for thing in self.host_footprint() {
            let (kind, name) = thing.split_once(' ').unwrap();
            match kind {
                "netns" => {
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
                "link" => {
                    let _ = Command::new("ip").args(["link", "del", name]).status();
                }
                "mount" => {
                    let _ = Command::new("umount").arg("-l").arg(name).status();
                }
                "cgroup" => {
                    let mut dirs = walk_dirs(Path::new(name));
                    dirs.reverse();
                    for d in dirs {
                        for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                            .unwrap_or_default()
                            .lines()
                            .filter_map(|p| p.trim().parse::<i32>().ok())
                        {
                            // SAFETY: kill(2) with a pid read from our cgroup.
                            #[allow(unsafe_code)]
                            unsafe {
                                libc::kill(pid, libc::SIGKILL);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(50));
                        let _ = std::fs::remove_dir(d);
                    }
                }
                _ => {}
            }
        }
    }
}

impl DevCluster {
    /// The warnings and errors of every process of the cluster (its logs are
    /// deleted with it), so a failed test says what the cluster saw.
    fn print_log_tails(&self) {
        let mut logs = vec![self.log.clone()];
        let mut dir: Vec<PathBuf> = std::fs::read_dir(self.data.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        dir.sort();
        logs.extend(dir);
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            eprintln!(
                "---- {} ({} warnings and errors, last 40) ----",
                log.display(),
                lines.len()
            );
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// Pids of processes whose command line contains `needle`.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if pid != me && cmd.contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn signal(c: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(c.id() as i32, sig);
    }
}

/// A number that differs between clusters started by concurrent tests.
fn unique_seed(attempt: u32) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut x = t ^ (u64::from(std::process::id()) << 32) ^ (n << 48) ^ u64::from(attempt);
    // splitmix64
    x = x.wrapping_add(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// The `vm` driver's test guest (`<dir>/current/{vmlinuz,initramfs.cpio}`),
/// built by `scripts/vm-guest.sh setup` (run here when missing, or older
/// than the scripts that write its init). Returns the directory to give
/// `taba dev --vm-image-dir`.
pub fn vm_guest_dir() -> PathBuf {
    let dir =
        std::env::var("TABA_VM_GUEST_DIR").unwrap_or_else(|_| "/var/cache/taba/vm-guest".into());
    let dir = PathBuf::from(dir);
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built = mtime(&dir.join("current/initramfs.cpio"));
    let scripts =
        ["vm-guest.sh", "guest.sh"].map(|f| mtime(&manifest_dir().join("../../scripts").join(f)));
    // boot.raw: a guest built before the boot disk was added.
    let boot_disk = dir.join("current/boot.raw").is_file();
    if built.is_none() || !boot_disk || scripts.iter().any(|s| *s > built) {
        let script = manifest_dir().join("../../scripts/vm-guest.sh");
        let st = Command::new("bash")
            .arg(script)
            .arg("setup")
            .status()
            .expect("running scripts/vm-guest.sh");
        assert!(
            st.success(),
            "building the VM test guest failed; run scripts/setup.sh"
        );
    }
    dir
}

/// The whole stdout of allocation `id` (`taba alloc logs`).
pub fn alloc_stdout(dev: &Dev, id: &str) -> String {
    let out = dev.cli(&["alloc", "logs", id]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Follows `GET /v1/event/stream` (`Client::events`) on a thread of its
/// own; the lines come through the receiver until the stream ends.
pub fn follow_events(
    client: &Client,
    topics: &[taba_client::api::EventTopic],
    namespace: Option<&str>,
    index: Option<u64>,
) -> std::sync::mpsc::Receiver<taba_client::api::StreamLine> {
    let stream = client
        .events(topics, namespace, index)
        .expect("opening the event stream");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stream {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// The events from `rx` until `done` holds for those seen so far; panics
/// after `timeout` (or when the stream ends first) with what was seen.
pub fn events_until(
    rx: &std::sync::mpsc::Receiver<taba_client::api::StreamLine>,
    timeout: Duration,
    mut done: impl FnMut(&[taba_client::api::StreamEvent]) -> bool,
) -> Vec<taba_client::api::StreamEvent> {
    use taba_client::api::StreamLine;
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(StreamLine::Event(e)) => seen.push(e),
            Ok(StreamLine::Heartbeat { .. }) => {}
            Ok(StreamLine::End { end }) => panic!("the stream ended: {end:?}; seen {seen:#?}"),
            Err(e) => panic!("no more events ({e}); seen {seen:#?}"),
        }
    }
    seen
}
