//! Test harness: a real server on 127.0.0.1:0 with a redb store in a temp dir,
//! ACLs on and bootstrapped, driven through the real blocking client with a
//! management token (`TestServer::client`), and a fake agent that speaks the
//! agent protocol over real HTTP (register, heartbeat, blocking query, alloc
//! status updates) without running workloads.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taba_client::Client;
use taba_image::ImageStore;
use taba_server::{Server, ServerConfig};
use taba_store::{RedbStore, Store};
use taba_types::wire::{
    AllocUpdate, AllocUpdateRequest, HeartbeatRequest, RegisterRequest, PROTOCOL,
};
use taba_types::{
    Allocation, ByteSize, ClientStatus, DriverInfo, Node, NodeId, NodeResources, NodeUsage,
    PortRange, PortRanges, TaskState, TaskStatus,
};

/// A server running on its own runtime thread.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    /// The server's state, for looking inside (in process).
    pub state: Arc<taba_server::state::ServerState>,
    pub store: Arc<dyn Store>,
    pub dir: PathBuf,
    /// A management token.
    pub token: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(dir: &Path, ttl: Duration) -> Self {
        let store: Arc<dyn Store> =
            Arc::new(RedbStore::open(&dir.join("state.redb")).expect("open store"));
        Self::start_with(dir, ttl, store)
    }

    pub fn start_with(dir: &Path, ttl: Duration, store: Arc<dyn Store>) -> Self {
        Self::start_configured(dir, store, |c| {
            c.heartbeat_ttl = ttl;
            c.heartbeat_grace = ttl / 2;
        })
    }

    /// A server whose configuration `setup` adjusts.
    pub fn start_configured(
        dir: &Path,
        store: Arc<dyn Store>,
        setup: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        Self::start_inner(dir, store, setup, true)
    }

    /// A server as `taba server` starts: ACLs not bootstrapped unless the
    /// store says so; `token` is empty.
    pub fn start_unbootstrapped(dir: &Path, store: Arc<dyn Store>) -> Self {
        Self::start_inner(dir, store, |_| {}, false)
    }

    fn start_inner(
        dir: &Path,
        store: Arc<dyn Store>,
        setup: impl FnOnce(&mut ServerConfig),
        bootstrap: bool,
    ) -> Self {
        let images = Arc::new(ImageStore::open(&dir.join("images")).expect("open image store"));
        let mut config = ServerConfig::new(dir.join("server"), "127.0.0.1:0".parse().unwrap());
        // Event streams read to their first keep-alive line do not wait long.
        config.events.heartbeat = Duration::from_millis(200);
        setup(&mut config);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let st = store.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let handle = Server::start(config, st, images)
                    .await
                    .expect("server starts");
                let token = if bootstrap {
                    let (_, token) = handle
                        .state()
                        .issue_management_token("test")
                        .await
                        .expect("management token");
                    token
                } else {
                    String::new()
                };
                addr_tx
                    .send((handle.addr(), token, handle.state().clone()))
                    .unwrap();
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                handle.shutdown().await;
            });
        });
        let (addr, token, state) = addr_rx.recv().expect("server address");
        Self {
            addr,
            token,
            state,
            store,
            dir: dir.to_path_buf(),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// A client with the management token.
    pub fn client(&self) -> Client {
        Client::new(&self.addr.to_string(), Some(self.token.clone()))
    }

    /// A client without a token (what agents send today).
    pub fn anonymous(&self) -> Client {
        Client::new(&self.addr.to_string(), None)
    }

    pub fn index(&self) -> u64 {
        self.store.index().unwrap()
    }

    /// Shut down and wait; returns the store so a restart can reuse it.
    pub fn stop(mut self) -> Arc<dyn Store> {
        self.stop.take().unwrap().send(()).unwrap();
        self.thread.take().unwrap().join().unwrap();
        self.store.clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn node(name: &str, memory_mib: u64) -> Node {
    let mut drivers = BTreeMap::new();
    for d in ["exec", "container"] {
        drivers.insert(
            d.to_string(),
            DriverInfo {
                detected: true,
                healthy: true,
                description: String::new(),
            },
        );
    }
    Node {
        id: NodeId::generate(),
        name: name.into(),
        datacenter: "dc1".into(),
        status: Default::default(),
        eligibility: Default::default(),
        drain: None,
        drained_at: None,
        http_addr: String::new(),
        attributes: BTreeMap::new(),
        meta: BTreeMap::new(),
        resources: NodeResources {
            cores: 4,
            cpu: 8000,
            memory: ByteSize::mib(memory_mib),
            disk: ByteSize::mib(100_000),
        },
        reserved: NodeResources::default(),
        reserved_ports: PortRanges::default(),
        dynamic_ports: PortRange::default(),
        drivers,
        last_heartbeat: 0,
        usage: Default::default(),
        unusable_reason: String::new(),
        create_index: 0,
        modify_index: 0,
    }
}

/// [`node`] that also runs the `vm` driver.
pub fn vm_node(name: &str, memory_mib: u64) -> Node {
    let mut n = node(name, memory_mib);
    n.drivers.insert(
        "vm".into(),
        DriverInfo {
            detected: true,
            healthy: true,
            description: String::new(),
        },
    );
    n
}

/// An agent over real HTTP that reports what the test tells it to.
pub struct FakeAgent {
    pub client: Client,
    pub node: Node,
    /// The node secret the server issued at first registration.
    secret: Option<String>,
    /// What the heartbeats report as the node's use.
    usage: Arc<std::sync::Mutex<NodeUsage>>,
    beating: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAgent {
    /// Register over `client`'s server as an agent (user tokens are
    /// refused on agent routes, so none is sent).
    pub fn register(client: Client, node: Node) -> Self {
        Self::register_with_secret(client, node, None)
    }

    /// Register again as a node that registered before (after a server
    /// restart), proving the id with the secret it was issued then.
    pub fn reregister(client: Client, before: FakeAgent) -> Self {
        let secret = before.secret.clone();
        let node = before.node.clone();
        drop(before);
        Self::register_with_secret(client, node, secret)
    }

    fn register_with_secret(client: Client, node: Node, secret: Option<String>) -> Self {
        let client = client.with_token(None).with_node_secret(secret.clone());
        let resp = client
            .agent_register(&RegisterRequest {
                protocol: PROTOCOL,
                node: node.clone(),
            })
            .expect("register");
        // From now on the node id is bound to the secret issued to it.
        let secret = resp.node_secret.or(secret);
        let client = client.with_node_secret(secret.clone());
        let mut agent = Self {
            client,
            node,
            secret,
            usage: Arc::new(std::sync::Mutex::new(NodeUsage::default())),
            beating: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        agent.start_heartbeats();
        agent
    }

    /// Heartbeat every 50 ms until [`Self::stop_heartbeats`] (again, after
    /// a stop: the agent is back).
    pub fn start_heartbeats(&mut self) {
        if self.thread.is_some() {
            return;
        }
        self.beating.store(true, Ordering::SeqCst);
        let b = self.beating.clone();
        let c = self.client.clone();
        let id = self.node.id.clone();
        let u = self.usage.clone();
        self.thread = Some(std::thread::spawn(move || {
            while b.load(Ordering::SeqCst) {
                let usage = u.lock().unwrap().clone();
                let _ = c.agent_heartbeat(&HeartbeatRequest {
                    protocol: PROTOCOL,
                    node_id: id.clone(),
                    usage,
                });
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }

    pub fn stop_heartbeats(&mut self) {
        self.beating.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// The node's allocations via the blocking query.
    pub fn allocs(&self, index: u64) -> (u64, Vec<Allocation>) {
        let r = self
            .client
            .agent_allocations(&self.node.id, index, Duration::from_secs(2))
            .expect("blocking query");
        (r.index, r.allocs)
    }

    /// Report the node's use in the following heartbeats.
    pub fn set_usage(&self, cpu_mhz: u64, memory: ByteSize) {
        *self.usage.lock().unwrap() = NodeUsage {
            cpu_mhz,
            memory,
            at: 0,
        };
    }

    pub fn report(&self, alloc: &Allocation, status: ClientStatus) {
        self.report_with_usage(alloc, status, None);
    }

    /// [`Self::report`] with the allocation's measured use.
    pub fn report_with_usage(
        &self,
        alloc: &Allocation,
        status: ClientStatus,
        usage: Option<taba_types::AllocUsage>,
    ) {
        self.send(vec![Self::update(alloc, status, usage)]);
    }

    fn update(
        alloc: &Allocation,
        status: ClientStatus,
        usage: Option<taba_types::AllocUsage>,
    ) -> AllocUpdate {
        let state = match status {
            ClientStatus::Running => TaskStatus::Running,
            ClientStatus::Pending => TaskStatus::Pending,
            _ => TaskStatus::Dead,
        };
        let task_states = alloc
            .group_spec
            .tasks
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TaskState {
                        state,
                        failed: status == ClientStatus::Failed,
                        ..Default::default()
                    },
                )
            })
            .collect();
        AllocUpdate {
            id: alloc.id.clone(),
            client_status: status,
            client_description: String::new(),
            task_states,
            usage,
            migration: None,
        }
    }

    fn send(&self, updates: Vec<AllocUpdate>) {
        self.client
            .agent_update_allocs(&AllocUpdateRequest {
                protocol: PROTOCOL,
                node_id: self.node.id.clone(),
                updates,
            })
            .expect("alloc update");
    }

    /// Like an agent: report every allocation it should run as running and
    /// every one it should stop as complete, in one coalesced update (as
    /// the real agent sends what changed together).
    pub fn converge(&self) {
        let (_, allocs) = self.allocs(0);
        let mut updates = Vec::new();
        for a in allocs {
            if a.client_status.is_terminal() {
                continue;
            }
            if a.desired_status == taba_types::DesiredStatus::Run {
                if a.client_status != ClientStatus::Running {
                    updates.push(Self::update(&a, ClientStatus::Running, None));
                }
            } else {
                updates.push(Self::update(&a, ClientStatus::Complete, None));
            }
        }
        if !updates.is_empty() {
            self.send(updates);
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop_heartbeats();
    }
}

/// Poll `f` until it returns `Some`, for at most 30 s.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn exec_job(name: &str, count: u32, arg: &str, memory: &str) -> String {
    format!(
        r#"
name = "{name}"
type = "service"
[update]
max_parallel = 1
min_healthy_time = "0s"
[[group]]
name = "g"
count = {count}
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "{arg}"]
  resources = {{ cpu = 100, memory = "{memory}" }}
"#
    )
}

/// Fails the test unless it runs as root (`why` says what needs it).
pub fn require_root(why: &str) {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .expect("run id -u");
    assert_eq!(uid, "0", "this test needs root ({why}); run it as root");
}

/// Builds the busybox image as an OCI-layout tar (gzip layer) at `out` with the project's
/// script (needs Debian's busybox-static, which `scripts/setup.sh` installs).
pub fn busybox_oci_tar(out: &Path) {
    let script = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../../scripts/build-busybox-image.sh");
    let res = std::process::Command::new("bash")
        .arg(&script)
        .arg(out)
        .arg("--oci")
        .output()
        .expect("run build-busybox-image.sh");
    assert!(
        res.status.success(),
        "build-busybox-image.sh failed (it needs Debian's busybox-static): {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// A development PKI (CA, server, agents `names`, CLI) in `dir/tls`.
pub fn test_pki(dir: &Path, names: &[&str]) -> taba_tls::dev::DevPki {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    taba_tls::dev::create(&dir.join("tls"), &[], &names).expect("dev PKI")
}

/// A server with TLS from `pki` (and its CA key when `ca_key`).
pub fn start_tls_server(dir: &Path, pki: &taba_tls::dev::DevPki, ca_key: bool) -> TestServer {
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&dir.join("state.redb")).expect("open store"));
    let files = pki.server.clone();
    let key = ca_key.then(|| pki.ca_key.clone());
    TestServer::start_configured(dir, store, move |c| {
        c.tls = Some(taba_server::ServerTls { files, ca_key: key })
    })
}

/// A client of a TLS server trusting `ca` and presenting `identity`.
pub fn tls_client(srv: &TestServer, ca: &Path, identity: Option<(&Path, &Path)>) -> Client {
    let t = taba_tls::ClientTls::load(ca, identity).expect("TLS files");
    Client::with_options(taba_client::ClientOptions {
        addrs: vec![format!("https://127.0.0.1:{}", srv.addr.port())],
        token: None,
        tls: Some(taba_client::TlsOptions {
            ca_pem: t.ca_pem,
            identity_pem: t.identity_pem,
        }),
    })
    .expect("client")
}

/// A client presenting `files`' certificate.
pub fn tls_client_as(srv: &TestServer, files: &taba_tls::TlsFiles) -> Client {
    tls_client(srv, &files.ca_cert, Some((&files.cert, &files.key)))
}

/// The CLI of a TLS server: the CLI certificate and the management token.
pub fn tls_cli(srv: &TestServer, pki: &taba_tls::dev::DevPki) -> Client {
    tls_client_as(srv, &pki.cli).with_token(Some(srv.token.clone()))
}
