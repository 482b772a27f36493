//! `taba server --config F`: the control plane on its own, with the
//! embedded store under `data_dir`. The configuration file is documented in
//! docs/configuration.md.

use super::daemon::{
    init_logging, read_config, run_async, shutdown_signal, yes, ImageLimitsFile, TlsFile,
};
use super::store_config::OpenedStore;
use super::GlobalArgs;
use anyhow::Context;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use taba_image::ImageStore;
use taba_server::{Server, ServerConfig};

/// Arguments of `taba server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Configuration file (TOML); see docs/configuration.md.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `taba server` configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    #[serde(default = "default_server_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_http")]
    http: SocketAddr,
    /// More addresses the API listens on; port 0 takes `http`'s port.
    #[serde(default)]
    extra_http: Vec<SocketAddr>,
    #[serde(default)]
    heartbeat_ttl: Option<taba_types::DurationSpec>,
    #[serde(default)]
    heartbeat_grace: Option<taba_types::DurationSpec>,
    #[serde(default)]
    node_gc_after: Option<taba_types::DurationSpec>,
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    scheduler: SchedulerFile,
    #[serde(default)]
    rebalance: Option<RebalanceFile>,
    /// Longest wait of a blocking query (`wait`), default 5m.
    #[serde(default)]
    max_blocking_wait: Option<taba_types::DurationSpec>,
    /// Longest wait for an agent's `alloc exec` answer.
    #[serde(default)]
    exec_timeout: Option<taba_types::DurationSpec>,
    /// Largest `alloc exec` output relayed, per stream.
    #[serde(default)]
    exec_max_output: Option<taba_types::ByteSize>,
    #[serde(default)]
    acl: AclFile,
    #[serde(default)]
    limits: LimitsFile,
    /// The API address other servers forward to (HA); default: `http(s)://<http>`.
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default)]
    store: super::store_config::StoreFile,
    #[serde(default)]
    tls: Option<TlsFile>,
    /// How images are pulled from registries (docs/images.md).
    #[serde(default)]
    registry: taba_registry::RegistryConfig,
    /// The event stream's bounds (docs/events.md).
    #[serde(default)]
    events: EventsFile,
}

/// `[events]` of the server configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsFile {
    /// Events kept for subscribers that resume from an index.
    buffer: Option<usize>,
    /// Events queued per subscriber before a slow one is cut.
    subscriber_queue: Option<usize>,
    /// Most subscribers at once.
    max_subscribers: Option<usize>,
    /// A keep-alive line after this long without an event.
    heartbeat: Option<taba_types::DurationSpec>,
}

impl EventsFile {
    fn apply(&self, e: &mut taba_server::EventSettings) -> anyhow::Result<()> {
        let range = |key: &str, v: Option<usize>, max: usize, into: &mut usize| {
            if let Some(v) = v {
                anyhow::ensure!(
                    (1..=max).contains(&v),
                    "events.{key}: must be between 1 and {max}"
                );
                *into = v;
            }
            Ok(())
        };
        range("buffer", self.buffer, 1 << 20, &mut e.buffer)?;
        range(
            "subscriber_queue",
            self.subscriber_queue,
            1 << 16,
            &mut e.subscriber_queue,
        )?;
        range(
            "max_subscribers",
            self.max_subscribers,
            1 << 16,
            &mut e.max_subscribers,
        )?;
        if let Some(h) = self.heartbeat {
            let d = h.as_duration();
            anyhow::ensure!(
                d >= std::time::Duration::from_millis(100)
                    && d <= std::time::Duration::from_secs(300),
                "events.heartbeat: must be between 100ms and 5m"
            );
            e.heartbeat = d;
        }
        Ok(())
    }
}

/// `[limits]` of the server's configuration file: caps on request bodies
/// and on images (docs/configuration.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    /// Largest JSON body of ordinary routes.
    #[serde(default)]
    max_request_body: Option<taba_types::ByteSize>,
    /// Largest image upload (and a `.tar.gz` upload once decompressed).
    #[serde(default)]
    max_image_upload: Option<taba_types::ByteSize>,
    // The agent's keys too (`ImageLimitsFile`): serde's flatten does not
    // combine with deny_unknown_fields.
    #[serde(default)]
    max_manifest: Option<taba_types::ByteSize>,
    #[serde(default)]
    max_layer_unpacked: Option<taba_types::ByteSize>,
    #[serde(default)]
    max_layer_ratio: Option<u64>,
    #[serde(default)]
    max_layer_entries: Option<u64>,
}

impl LimitsFile {
    /// The request caps and the image store's; errors name the key.
    fn limits(&self) -> anyhow::Result<(taba_server::InputLimits, taba_image::ImageLimits)> {
        let images = ImageLimitsFile {
            max_manifest: self.max_manifest,
            max_layer_unpacked: self.max_layer_unpacked,
            max_layer_ratio: self.max_layer_ratio,
            max_layer_entries: self.max_layer_entries,
        }
        .image_limits(self.max_image_upload)?;
        let mut input = taba_server::InputLimits {
            max_image_upload: images.max_archive,
            ..Default::default()
        };
        if let Some(b) = self.max_request_body {
            anyhow::ensure!(
                (4096..=1 << 30).contains(&b.0),
                "limits.max_request_body: must be between 4KiB and 1GiB"
            );
            input.max_request_body = b.0 as usize;
        }
        Ok((input, images))
    }
}

/// `[acl]` of the server's configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    /// Enforce tokens (on by default).
    #[serde(default = "yes")]
    enabled: bool,
}

impl Default for AclFile {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[scheduler]` of the server configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerFile {
    /// `preemption = { service = true, batch = false, system = true }`.
    #[serde(default)]
    preemption: PreemptionFile,
}

/// Which job types may preempt; an omitted one keeps its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreemptionFile {
    service: Option<bool>,
    batch: Option<bool>,
    system: Option<bool>,
}

impl PreemptionFile {
    fn config(&self) -> taba_scheduler::PreemptionConfig {
        let d = taba_scheduler::PreemptionConfig::default();
        taba_scheduler::PreemptionConfig {
            service: self.service.unwrap_or(d.service),
            batch: self.batch.unwrap_or(d.batch),
            system: self.system.unwrap_or(d.system),
        }
    }
}

/// `[rebalance]` of the server's configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebalanceFile {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    interval: Option<taba_types::DurationSpec>,
    #[serde(default)]
    high_water: Option<f64>,
    #[serde(default)]
    target: Option<f64>,
    #[serde(default)]
    max_moves: Option<usize>,
    #[serde(default)]
    cooldown: Option<taba_types::DurationSpec>,
}

impl RebalanceFile {
    /// Apply to `s`, checking ranges; errors name the key.
    fn apply(&self, s: &mut taba_server::RebalanceSettings) -> anyhow::Result<()> {
        if let Some(e) = self.enabled {
            s.enabled = e;
        }
        if let Some(i) = self.interval {
            anyhow::ensure!(i.0 >= 1000, "rebalance.interval: must be at least 1s");
            s.interval = i.as_duration();
        }
        if let Some(h) = self.high_water {
            s.plan.high_water = h;
        }
        if let Some(t) = self.target {
            s.plan.target = t;
        }
        anyhow::ensure!(
            s.plan.high_water > 0.0 && s.plan.high_water <= 1.0,
            "rebalance.high_water: must be a share in (0, 1], e.g. 0.85"
        );
        anyhow::ensure!(
            s.plan.target > 0.0 && s.plan.target < s.plan.high_water,
            "rebalance.target: must be a share above 0 and below high_water ({})",
            s.plan.high_water
        );
        if let Some(m) = self.max_moves {
            anyhow::ensure!(
                (1..=10_000).contains(&m),
                "rebalance.max_moves: must be between 1 and 10000"
            );
            s.plan.max_moves = m;
        }
        if let Some(c) = self.cooldown {
            s.plan.cooldown_ms = c.0;
        }
        Ok(())
    }
}

impl ServerFile {
    /// Heartbeat TTL, grace and node garbage collection; errors name the key.
    fn apply_liveness(&self, sc: &mut ServerConfig) -> anyhow::Result<()> {
        if let Some(w) = self.max_blocking_wait {
            sc.max_blocking_wait = w.as_duration();
        }
        if let Some(t) = self.heartbeat_ttl {
            anyhow::ensure!(t.0 >= 100, "heartbeat_ttl: must be at least 100ms");
            sc.heartbeat_ttl = t.as_duration();
        }
        if let Some(g) = self.heartbeat_grace {
            sc.heartbeat_grace = g.as_duration();
        }
        if let Some(g) = self.node_gc_after {
            anyhow::ensure!(g.0 >= 1000, "node_gc_after: must be at least 1s");
            sc.node_gc_after = g.as_duration();
        }
        Ok(())
    }

    /// The scheme the server serves on `a` (see `Server::start`).
    fn scheme(&self, a: SocketAddr) -> &'static str {
        match &self.tls {
            Some(t) if !(t.plain_loopback && a.ip().is_loopback()) => "https",
            _ => "http",
        }
    }
}

fn default_server_dir() -> PathBuf {
    "/var/lib/taba/server".into()
}
fn default_http() -> SocketAddr {
    "127.0.0.1:4646".parse().expect("static address")
}

/// Run `taba server`.
pub fn run_server(_g: &GlobalArgs, a: ServerArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let mut cfg: ServerFile = read_config(a.config.as_deref())?;
    let in_file = |e: String| {
        anyhow::anyhow!(
            "configuration {}: {e}",
            a.config
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    };
    cfg.store.validate().map_err(|e| in_file(e.to_string()))?;
    let (_, image_limits) = cfg.limits.limits().map_err(|e| in_file(e.to_string()))?;
    run_async(async move {
        taba_agent::state::private_dir(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        let data_dir = cfg.data_dir.clone();
        let store_file = std::mem::take(&mut cfg.store);
        let opened = tokio::task::spawn_blocking(move || store_file.open(&data_dir)).await??;
        let images =
            Arc::new(ImageStore::open(&cfg.data_dir.join("images"))?.with_limits(image_limits));
        let sc = cfg.server_config()?;
        match opened {
            OpenedStore::Redb(store) => {
                let server = Server::start(sc, Arc::new(store), images).await?;
                cfg.announce(server.addr(), "");
                let acl = &server.state().acl;
                if !acl.enabled() {
                    tracing::warn!(
                        "ACLs are off ([acl] enabled = false): anyone who reaches the API may do anything"
                    );
                } else if !acl.bootstrapped() {
                    eprintln!("taba server: ACLs are not bootstrapped; only `taba acl bootstrap` is answered until then");
                }
                shutdown_signal().await;
                server.shutdown().await;
            }
            OpenedStore::Etcd(store, lease_ttl) => {
                let ha = taba_server::HaConfig {
                    lease_ttl,
                    advertise: cfg.advertise.clone().unwrap_or_default(),
                };
                let server = Server::start_ha(sc, ha, Arc::new(*store), images).await?;
                cfg.announce(server.addr(), " (HA on etcd)");
                shutdown_signal().await;
                server.shutdown().await;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

impl ServerFile {
    /// The server's configuration from the file; errors name the key.
    fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let mut sc = ServerConfig::new(self.data_dir.clone(), self.http);
        sc.extra_http = self.extra_http.clone();
        self.apply_liveness(&mut sc)?;
        if let Some(w) = self.workers {
            sc.num_workers = w.max(1);
        }
        if let Some(t) = self.exec_timeout {
            sc.exec_timeout = t.as_duration();
        }
        if let Some(m) = self.exec_max_output {
            sc.exec_max_output = m.0;
        }
        sc.preemption = self.scheduler.preemption.config();
        if let Some(r) = &self.rebalance {
            r.apply(&mut sc.rebalance)?;
        }
        sc.acl.enabled = self.acl.enabled;
        sc.limits = self.limits.limits()?.0;
        sc.registry = self.registry.clone();
        self.events.apply(&mut sc.events)?;
        if let Some(t) = &self.tls {
            sc.tls = Some(taba_server::ServerTls {
                files: t.files(None)?,
                ca_key: t.ca_key.clone(),
            });
            sc.plain_loopback = t.plain_loopback;
        }
        Ok(sc)
    }

    /// `taba server: API on URL (also URL, ...)SUFFIX` on stderr: what
    /// `taba dev --agents` and the tests wait for.
    fn announce(&self, addr: SocketAddr, suffix: &str) {
        let urls: Vec<String> = std::iter::once(addr)
            .chain(self.extra_http.iter().map(|a| {
                let mut a = *a;
                if a.port() == 0 {
                    a.set_port(addr.port());
                }
                a
            }))
            .map(|a| format!("{}://{a}", self.scheme(a)))
            .collect();
        if urls.len() == 1 {
            eprintln!("taba server: API on {}{suffix}", urls[0]);
        } else {
            eprintln!(
                "taba server: API on {} (also {}){suffix}",
                urls[0],
                urls[1..].join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_file_reads_tls() {
        // A server needs its certificate named.
        let cfg: ServerFile = toml::from_str("[tls]\nca_cert = \"/ca.pem\"\n").unwrap();
        let e = cfg.tls.as_ref().unwrap().files(None).unwrap_err();
        assert!(e.to_string().contains("tls.cert: required"), "{e}");
        let cfg: ServerFile = toml::from_str(
            "http = \"127.0.0.1:4646\"\nextra_http = [\"10.0.0.1:0\"]\n[tls]\n\
             ca_cert = \"/ca.pem\"\ncert = \"/s.pem\"\nkey = \"/s-key.pem\"\nplain_loopback = true\n",
        )
        .unwrap();
        assert_eq!(cfg.scheme("127.0.0.1:4646".parse().unwrap()), "http");
        assert_eq!(cfg.scheme("10.0.0.1:4646".parse().unwrap()), "https");
        let cfg: ServerFile = toml::from_str(
            "[tls]\nca_cert = \"/ca.pem\"\ncert = \"/s.pem\"\nkey = \"/s-key.pem\"\n",
        )
        .unwrap();
        assert_eq!(cfg.scheme("127.0.0.1:4646".parse().unwrap()), "https");
    }

    #[test]
    fn server_file_reads_preemption_settings() {
        let cfg: ServerFile = toml::from_str("").unwrap();
        assert_eq!(
            cfg.scheduler.preemption.config(),
            taba_scheduler::PreemptionConfig::default()
        );
        let cfg: ServerFile =
            toml::from_str("[scheduler]\npreemption = { batch = true, system = false }\n").unwrap();
        let p = cfg.scheduler.preemption.config();
        assert!(p.service && p.batch && !p.system);
        let err = toml::from_str::<ServerFile>("[scheduler]\npreemption = { services = true }\n")
            .unwrap_err();
        assert!(err.message().contains("unknown field `services`"), "{err}");
    }

    #[test]
    fn server_file_reads_liveness_settings() {
        let mut sc = ServerConfig::new("/tmp/x", "127.0.0.1:0".parse().unwrap());
        let cfg: ServerFile = toml::from_str(
            "heartbeat_ttl = \"3s\"\nheartbeat_grace = \"1s\"\nnode_gc_after = \"1h\"\n",
        )
        .unwrap();
        cfg.apply_liveness(&mut sc).unwrap();
        assert_eq!(sc.heartbeat_ttl, std::time::Duration::from_secs(3));
        assert_eq!(sc.heartbeat_grace, std::time::Duration::from_secs(1));
        assert_eq!(sc.node_gc_after, std::time::Duration::from_secs(3600));
        let cfg: ServerFile = toml::from_str("heartbeat_ttl = \"10ms\"\n").unwrap();
        let err = cfg.apply_liveness(&mut sc).unwrap_err();
        assert!(err.to_string().starts_with("heartbeat_ttl:"), "{err}");
        let cfg: ServerFile = toml::from_str("[acl]\nenabled = false\n").unwrap();
        assert!(!cfg.acl.enabled);
        assert!(toml::from_str::<ServerFile>("").unwrap().acl.enabled);
    }

    #[test]
    fn server_file_reads_and_checks_limits() {
        let cfg: ServerFile = toml::from_str(
            "[limits]\nmax_request_body = \"64KiB\"\nmax_image_upload = \"2GiB\"\n\
             max_manifest = \"1MiB\"\nmax_layer_unpacked = \"10GiB\"\n\
             max_layer_ratio = 50\nmax_layer_entries = 1000\n",
        )
        .unwrap();
        let (input, images) = cfg.limits.limits().unwrap();
        assert_eq!(input.max_request_body, 64 << 10);
        assert_eq!(input.max_image_upload, 2 << 30);
        assert_eq!(
            images,
            taba_image::ImageLimits {
                max_archive: 2 << 30,
                max_manifest: 1 << 20,
                max_layer_unpacked: 10 << 30,
                max_layer_ratio: 50,
                max_layer_entries: 1000,
            }
        );
        let defaults = toml::from_str::<ServerFile>("")
            .unwrap()
            .limits
            .limits()
            .unwrap();
        assert_eq!(defaults.1, taba_image::ImageLimits::default());
        for (toml, key) in [
            ("max_request_body = \"1KiB\"", "limits.max_request_body:"),
            ("max_layer_ratio = 0", "limits.max_layer_ratio:"),
            ("max_image_upload = \"1KiB\"", "limits.max_image_upload:"),
            ("max_layer_entries = 0", "limits.max_layer_entries:"),
        ] {
            let cfg: ServerFile = toml::from_str(&format!("[limits]\n{toml}\n")).unwrap();
            let err = cfg.limits.limits().unwrap_err().to_string();
            assert!(err.starts_with(key), "{toml}: {err}");
        }
        let err = toml::from_str::<ServerFile>("[limits]\nmax_layers = 3\n").unwrap_err();
        assert!(
            err.message().contains("unknown field `max_layers`"),
            "{err}"
        );
    }
}
