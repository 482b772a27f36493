//! Harness of the end-to-end tests: a real `taba dev` process on a random
//! port with a temporary data dir, driven through the real API client and the
//! real CLI. Needs root (cgroups, namespaces, overlayfs) and the busybox image
//! that `scripts/setup.sh` builds; fails loudly when either is missing.
#![allow(dead_code)]

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

/// A running `taba dev`.
pub struct Dev {
    pub child: Option<Child>,
    pub data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub addr: String,
    pub client: Client,
    pub log: PathBuf,
}

impl Dev {
    /// Start `taba dev` on a fresh temporary data dir.
    pub fn start() -> Dev {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("taba-e2e-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let data = tmp.path().to_path_buf();
        let mut d = Dev::start_on(&data, &[]);
        d._tmp = Some(tmp);
        d
    }

    /// Start `taba dev` on `data` with extra args.
    pub fn start_on(data: &Path, extra: &[&str]) -> Dev {
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting taba dev");
        // The first stderr line naming the API tells the port.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut logf = logf;
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(logf, "{line}");
                if !sent {
                    if let Some(rest) = line.split("API on ").nth(1) {
                        let addr = rest.split(';').next().unwrap().trim().to_string();
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
            }
        });
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
        let client = Client::new(&addr, None);
        let d = Dev {
            child: Some(child),
            data: data.to_path_buf(),
            _tmp: None,
            addr,
            client,
            log,
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
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}; taba dev log:\n{}",
            self.log_tail()
        );
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Run the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(taba_bin())
            .args(args)
            .env("TABA_ADDR", &self.addr)
            .output()
            .expect("running taba")
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

/// A running `taba dev --agents N`: a server and N agent processes, agent
/// `nK` in network namespace `<prefix>-nK`. The prefix and subnet are unique
/// per cluster so that tests can run side by side.
pub struct Cluster {
    pub child: Option<Child>,
    pub data: PathBuf,
    _tmp: tempfile::TempDir,
    pub addr: String,
    pub client: Client,
    /// Dev's own log (its stderr).
    pub log: PathBuf,
    /// Names of the namespaces, bridge and veths start with this.
    pub prefix: String,
    /// The bridge's subnet, `10.X.Y.0/24`.
    pub subnet: String,
    pub agents: u32,
}

impl Cluster {
    /// Start `taba dev --agents N` with `extra` arguments on a fresh data dir.
    pub fn start(agents: u32, extra: &[&str]) -> Cluster {
        require_root();
        let mut last = String::new();
        // A random subnet may be in use (by another test's cluster): try a few.
        for attempt in 0..4 {
            let tmp = tempfile::Builder::new()
                .prefix("taba-cluster-")
                .tempdir_in("/var/tmp")
                .unwrap();
            let seed = unique_seed(attempt);
            let prefix = format!("t{:05x}", seed & 0xfffff);
            let subnet = format!("10.{}.{}.0/24", 200 + (seed >> 20) % 50, (seed >> 8) % 256);
            match Cluster::try_start(tmp, &prefix, &subnet, agents, extra) {
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
    ) -> Result<Cluster, String> {
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
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut logf = logf;
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(logf, "{line}");
                if !sent {
                    if let Some(rest) = line.split("API on ").nth(1) {
                        let _ = tx.send(rest.split(';').next().unwrap().trim().to_string());
                        sent = true;
                    }
                }
            }
        });
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
        let client = Client::new(&addr, None);
        Ok(Cluster {
            child: Some(child),
            data,
            _tmp: tmp,
            addr,
            client,
            log,
            prefix: prefix.to_string(),
            subnet: subnet.to_string(),
            agents,
        })
    }

    /// Poll `f` until true; panic with the logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}; logs:\n{}", self.log_tail());
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
            .output()
            .expect("running taba")
    }

    /// Import the busybox image (agents read the server's image store).
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

impl Drop for Cluster {
    fn drop(&mut self) {
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

/// A `taba` process (server or agent) whose stderr goes to `log`.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Start `taba ARGS`; wait for the stderr line containing `marker` and
    /// return the text after it (up to `;` or the end).
    pub fn start(args: &[&str], log: &Path, marker: &str) -> (Proc, String) {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(taba_bin())
            .args(args)
            .env("TABA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting taba");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let marker = marker.to_string();
        std::thread::spawn(move || {
            let mut logf = logf;
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(logf, "{line}");
                if !sent {
                    if let Some(rest) = line.split(marker.as_str()).nth(1) {
                        let _ = tx.send(rest.split(';').next().unwrap().trim().to_string());
                        sent = true;
                    }
                }
            }
        });
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
