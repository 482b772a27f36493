//! Harness of the end-to-end tests: a real `taba dev` process on a random
//! port with a temporary data dir, driven through the real API client and the
//! real CLI. `taba dev` starts with ACLs bootstrapped: the harness reads its
//! management token from `<data>/dev-token` for the API client, and the CLI
//! finds it by itself in the token file `taba dev` wrote under
//! `TABA_CONFIG_DIR=<data>/config` (as it does under `~/.config/taba`
//! outside tests). Needs root (cgroups, namespaces, overlayfs) and the busybox image
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
    /// The management token `taba dev` wrote.
    pub token: String,
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
            .env("TABA_CONFIG_DIR", data.join("config"))
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

    /// The CLI against this server, finding the token on its own.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(taba_bin());
        c.args(args)
            .env("TABA_ADDR", &self.addr)
            .env("TABA_CONFIG_DIR", self.data.join("config"))
            .env_remove("TABA_TOKEN");
        c
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

/// A real `taba server` and real `taba agent` processes on loopback, each
/// with its own data dir under one temporary dir (the agents share the
/// server's image store until agents fetch images from the servers).
pub struct ProcCluster {
    pub dir: PathBuf,
    pub addr: String,
    /// The management token `taba acl bootstrap` printed.
    pub token: String,
    pub client: Client,
    pub agents: Vec<Proc>,
    pub server: Proc,
    _tmp: tempfile::TempDir,
}

impl ProcCluster {
    /// Start the server, then agents named `names`; wait until all are ready.
    pub fn start(names: &[&str]) -> ProcCluster {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("taba-e2e-cluster-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let server_dir = dir.join("server");
        let cfg = dir.join("server.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nhttp = \"127.0.0.1:0\"\n[rebalance]\nenabled = false\n",
                server_dir
            ),
        )
        .unwrap();
        let (server, addr) = Proc::start(
            &["server", "--config", cfg.to_str().unwrap()],
            &dir.join("server.log"),
            "API on ",
        );
        let mut agents = Vec::new();
        for name in names {
            let cfg = dir.join(format!("{name}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "data_dir = {:?}\nserver = {addr:?}\nname = {name:?}\nhttp = \"127.0.0.1:0\"\nimages_dir = {:?}\n",
                    dir.join(name).join("agent"),
                    server_dir.join("images"),
                ),
            )
            .unwrap();
            let (agent, _) = Proc::start(
                &["agent", "--config", cfg.to_str().unwrap()],
                &dir.join(format!("{name}.log")),
                "taba agent: node ",
            );
            agents.push(agent);
        }
        let mut taba = Command::new(taba_bin());
        taba.env("TABA_ADDR", &addr);
        let token = acl_bootstrap(taba);
        let client = Client::new(&addr, Some(token.clone()));
        let c = ProcCluster {
            dir,
            addr,
            token,
            client,
            agents,
            server,
            _tmp: tmp,
        };
        c.wait_for("every node ready", Duration::from_secs(30), || {
            c.client.list_nodes().ok().is_some_and(|n| {
                n.len() == names.len() && n.iter().all(|n| n.status.to_string() == "ready")
            })
        });
        c
    }

    /// Poll `f` until true; panic with the logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; logs:\n{}", self.logs());
    }

    /// The last lines of every process's log.
    pub fn logs(&self) -> String {
        let mut s = format!("--- server\n{}\n", self.server.log_tail());
        for (i, a) in self.agents.iter().enumerate() {
            s.push_str(&format!("--- agent {i}\n{}\n", a.log_tail()));
        }
        s
    }

    /// Run the CLI against the server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(taba_bin())
            .args(args)
            .env("TABA_ADDR", &self.addr)
            .env("TABA_TOKEN", &self.token)
            .output()
            .expect("running taba")
    }

    /// Stop every job, wait until nothing runs, stop the processes, and
    /// clean up whatever is left of the agents' workloads.
    pub fn shutdown(&mut self) {
        if let Ok(jobs) = self.client.list_jobs() {
            for j in jobs.iter().filter(|j| !j.stopped) {
                let _ = self.client.stop_job(&j.name);
            }
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let busy = self
                .client
                .list_allocs()
                .map(|v| v.iter().any(|a| !a.status.is_terminal()))
                .unwrap_or(false);
            if !busy {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for a in &mut self.agents {
            a.stop();
        }
        self.server.stop();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.path().join("agent").is_dir() {
                force_cleanup(&e.path());
            }
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
