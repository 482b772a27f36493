//! Harness of the HA tests: a real etcd cluster, several `taba server` processes sharing it
//! (`[store] backend = "etcd"`) and `taba agent` processes, all on loopback with random ports
//! and temporary data dirs; everything is killed when the [`HaCluster`] is dropped.

use super::{force_cleanup, require_root, taba_bin};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taba_client::Client;
pub use taba_store::etcd_testing::EtcdCluster;

/// TTL of the leader lease in the tests' servers.
pub const LEASE_TTL: &str = "2s";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local addr").port()
}

fn spawn_logged(args: &[&str], config: &Path, log: &Path) -> Child {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(taba_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env("TABA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(logf.try_clone().expect("log file"))
        .stderr(logf)
        .spawn()
        .expect("starting taba")
}

/// One `taba server` process.
pub struct ServerProc {
    pub url: String,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// Under TLS: the CLI's certificate of the cluster CA.
    pub tls: Option<taba_client::TlsOptions>,
    /// The management token (the cluster's ACLs are bootstrapped at start).
    pub token: Option<String>,
}

impl ServerProc {
    /// A client of this server's API (with the CLI certificate under TLS).
    pub fn client(&self) -> Client {
        self.client_with(self.tls.clone())
    }

    /// A client of this server's API with `tls` (under TLS: the CA, and maybe an identity).
    pub fn client_with(&self, tls: Option<taba_client::TlsOptions>) -> Client {
        Client::with_options(taba_client::ClientOptions {
            addrs: vec![self.url.clone()],
            token: self.token.clone(),
            tls,
        })
        .expect("API client")
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "server already running");
        self.child = Some(spawn_logged(&["server"], &self.config, &self.log));
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` (e.g. SIGSTOP / SIGCONT to freeze and thaw it).
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("server running").id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// The leader this server follows (`GET /v1/status/leader`): its API address.
    pub fn leader_seen(&self) -> Option<String> {
        self.leader_status()?["leader"].as_str().map(str::to_owned)
    }

    /// SIGTERM and wait (a graceful shutdown revokes the leader lease).
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

    /// Whether this server says it leads (`GET /v1/status/leader`).
    pub fn leader_status(&self) -> Option<serde_json::Value> {
        self.child.as_ref()?;
        let resp = self
            .client()
            .raw("GET", "/v1/status/leader", None, b"")
            .ok()?;
        (resp.status == 200).then(|| serde_json::from_slice(&resp.body).ok())?
    }
}

/// One `taba agent` process.
pub struct AgentProc {
    pub name: String,
    pub data: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl AgentProc {
    /// SIGKILL (its workloads keep running until cleanup).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A 3-member etcd, servers on it, agents.
pub struct HaCluster {
    pub etcd: EtcdCluster,
    pub servers: Vec<ServerProc>,
    pub agents: Vec<AgentProc>,
    /// Under TLS: the cluster's CA and certificates (one server certificate for all servers).
    pub pki: Option<taba_tls::dev::DevPki>,
    pub dir: tempfile::TempDir,
}

/// The `[tls]` section for `files`.
fn tls_section(files: &taba_tls::TlsFiles) -> String {
    format!(
        "[tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n",
        files.ca_cert, files.cert, files.key
    )
}

/// What a client needs to present `files` (and trust their CA).
pub fn tls_options(files: &taba_tls::TlsFiles) -> taba_client::TlsOptions {
    let t = taba_tls::ClientTls::from_files(files).expect("TLS files");
    taba_client::TlsOptions {
        ca_pem: t.ca_pem,
        identity_pem: t.identity_pem,
    }
}

impl HaCluster {
    /// Starts a 3-member etcd and `servers` servers; waits until one leads.
    pub fn start(servers: usize) -> HaCluster {
        Self::start_with(servers, &[], false)
    }

    /// Like [`HaCluster::start`], every server and agent over TLS under one dev CA, with
    /// certificates for the agents `agents` and for the CLI.
    pub fn start_tls(servers: usize, agents: &[&str]) -> HaCluster {
        Self::start_with(servers, agents, true)
    }

    fn start_with(servers: usize, agent_names: &[&str], tls: bool) -> HaCluster {
        require_root();
        let etcd = EtcdCluster::start(3);
        let dir = tempfile::Builder::new()
            .prefix("taba-ha-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        let endpoints = etcd
            .endpoints()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let pki = tls.then(|| {
            let names: Vec<String> = agent_names.iter().map(|n| n.to_string()).collect();
            taba_tls::dev::create(&dir.path().join("tls"), &[], &names).expect("dev PKI")
        });
        let mut cluster = HaCluster {
            etcd,
            servers: Vec::new(),
            agents: Vec::new(),
            pki,
            dir,
        };
        let scheme = if tls { "https" } else { "http" };
        let tls_toml = cluster
            .pki
            .as_ref()
            .map(|p| tls_section(&p.server))
            .unwrap_or_default();
        for n in 0..servers {
            let port = free_port();
            let data = cluster.dir.path().join(format!("server{n}"));
            std::fs::create_dir_all(&data).unwrap();
            let config = data.join("server.toml");
            std::fs::write(
                &config,
                format!(
                    "data_dir = {data:?}\nhttp = \"127.0.0.1:{port}\"\n\
                     [rebalance]\nenabled = false\n\
                     [store]\nbackend = \"etcd\"\nendpoints = [{endpoints}]\n\
                     prefix = \"/taba-test\"\nlease_ttl = \"{LEASE_TTL}\"\n{tls_toml}"
                ),
            )
            .unwrap();
            let mut server = ServerProc {
                url: format!("{scheme}://127.0.0.1:{port}"),
                config,
                log: data.join("server.log"),
                child: None,
                tls: cluster.pki.as_ref().map(|p| tls_options(&p.cli)),
                token: None,
            };
            server.start();
            cluster.servers.push(server);
        }
        cluster.wait_leader(Duration::from_secs(60));
        // Bootstrapped through any server: followers forward to the leader.
        let token = cluster.servers[0]
            .client()
            .acl_bootstrap()
            .expect("bootstrapping the cluster's ACLs")
            .secret;
        for s in &mut cluster.servers {
            s.token = Some(token.clone());
        }
        cluster
    }

    /// Starts an agent named `name` talking to server `server`; waits until its node is ready.
    pub fn add_agent(&mut self, name: &str, server: usize) {
        let data = self.dir.path().join(format!("agent-{name}"));
        std::fs::create_dir_all(&data).unwrap();
        let config = data.join("agent.toml");
        let tls_toml = match &self.pki {
            Some(p) => {
                let files = p
                    .agents
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, f)| f)
                    .expect("an agent certificate made at start_tls");
                tls_section(files)
            }
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\nserver = {:?}\nname = {name:?}\nhttp = \"127.0.0.1:{}\"\n{tls_toml}",
                self.servers[server].url,
                free_port()
            ),
        )
        .unwrap();
        let log = data.join("agent.log");
        let child = spawn_logged(&["agent"], &config, &log);
        self.agents.push(AgentProc {
            name: name.to_owned(),
            data,
            log,
            child: Some(child),
        });
        self.wait_for("agent node ready", Duration::from_secs(60), |c| {
            c.servers.iter().filter(|s| s.child.is_some()).any(|s| {
                s.client().list_nodes().ok().is_some_and(|nodes| {
                    nodes
                        .iter()
                        .any(|n| n.name == name && n.status.to_string() == "ready")
                })
            })
        });
    }

    /// The index of the server that leads, waiting up to `timeout` for one.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let start = Instant::now();
        while start.elapsed() < timeout {
            for (n, s) in self.servers.iter().enumerate() {
                if s.leader_status()
                    .is_some_and(|st| st["is_leader"] == serde_json::Value::Bool(true))
                {
                    return n;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no leader within {timeout:?}\n{}", self.logs());
    }

    /// Restarts server `n` after a stop or kill.
    pub fn restart_server(&mut self, n: usize) {
        self.servers[n].stop();
        self.servers[n].start();
    }

    /// Polls `f` (bounded); panics with the logs after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut(&HaCluster) -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}\n{}", self.logs());
    }

    /// Clients of the servers that run.
    pub fn clients(&self) -> Vec<Client> {
        self.servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(ServerProc::client)
            .collect()
    }

    /// The tails of every server's and agent's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let files = self
            .servers
            .iter()
            .map(|s| &s.log)
            .chain(self.agents.iter().map(|a| &a.log));
        for f in files {
            let s = std::fs::read_to_string(f).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            out.push_str(&format!("==> {} <==\n", f.display()));
            out.push_str(&lines[lines.len().saturating_sub(25)..].join("\n"));
            out.push('\n');
        }
        out
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.kill9();
        }
        for a in &self.agents {
            force_cleanup(&a.data);
        }
        for s in &mut self.servers {
            s.kill9();
        }
    }
}
