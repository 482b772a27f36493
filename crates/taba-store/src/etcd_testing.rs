//! Real etcd processes for tests (feature `testing`): one member or a cluster of several, on
//! loopback with random ports, each in its own temporary data directory, killed when the
//! [`EtcdCluster`] is dropped. Tests of every crate that need etcd start it through here.
//!
//! Needs Debian's `etcd-server` (`scripts/setup.sh` installs it); without it, starting panics
//! with a message saying so (tests that need etcd fail, never skip).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{EtcdConfig, EtcdStore, Store};

/// The flags every member gets: fast elections (loopback), and the request limits taba's store
/// needs (see the etcd backend's docs).
pub const MEMBER_FLAGS: &[&str] = &[
    "--heartbeat-interval=50",
    "--election-timeout=250",
    "--max-txn-ops=100000",
    "--max-request-bytes=69206016",
];

/// Longest wait for a cluster to answer after start.
const START_WAIT: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster; dropping it kills every member and removes their data.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .finish_non_exhaustive()
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("local addr").port()
}

impl EtcdCluster {
    /// Starts a one-member cluster and waits until it answers.
    pub fn single() -> Self {
        Self::start(1)
    }

    /// Starts a cluster of `size` members and waits until it answers.
    pub fn start(size: usize) -> Self {
        assert!(size > 0, "an etcd cluster needs a member");
        let dir = tempfile::Builder::new()
            .prefix("taba-etcd-")
            .tempdir()
            .expect("temp dir for etcd");
        let members: Vec<Member> = (0..size)
            .map(|n| Member {
                name: format!("m{n}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            dir,
            members,
            initial_cluster,
        };
        for n in 0..size {
            cluster.spawn(n, "new");
        }
        cluster.wait_ready();
        cluster
    }

    fn data_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(&self.members[n].name)
    }

    fn spawn(&mut self, n: usize, state: &str) {
        let data = self.data_dir(n);
        std::fs::create_dir_all(&data).expect("etcd data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.members[n].name)),
            )
            .expect("etcd log file");
        let m = &self.members[n];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new("etcd")
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--initial-cluster-token=taba-test")
            .args(MEMBER_FLAGS)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start etcd ({err}): install it with scripts/setup.sh (Debian etcd-server)")
            });
        self.members[n].child = Some(child);
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_WAIT;
        let mut config = self.config("/taba-ready");
        config.connect_timeout = Duration::from_millis(500);
        config.request_timeout = Duration::from_secs(2);
        loop {
            let answer = EtcdStore::connect(&config).and_then(|s| s.index());
            match answer {
                Ok(_) => return,
                Err(err) if Instant::now() > deadline => {
                    panic!(
                        "etcd did not answer within {START_WAIT:?}: {err}; logs in {}",
                        self.dir.path().display()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Client URLs of the members that run (all of them unless some were killed).
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// A store configuration for every member's endpoint and `prefix`.
    pub fn config(&self, prefix: &str) -> EtcdConfig {
        let mut config = EtcdConfig::new(self.endpoints());
        config.prefix = prefix.to_owned();
        config
    }

    /// Connects a store under `prefix`.
    pub fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(&self.config(prefix)).expect("connect to the test etcd")
    }

    /// Kills member `n` with SIGKILL (its data stays for [`EtcdCluster::restart`]).
    pub fn kill(&mut self, n: usize) {
        if let Some(mut child) = self.members[n].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `n` again on its data (after [`EtcdCluster::kill`]).
    pub fn restart(&mut self, n: usize) {
        self.kill(n);
        self.spawn(n, "existing");
    }

    /// The pids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for n in 0..self.members.len() {
            self.kill(n);
        }
    }
}
