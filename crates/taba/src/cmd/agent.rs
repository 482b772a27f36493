//! `taba agent --config F`: one node. The configuration file is documented
//! in docs/configuration.md.

use super::daemon::{
    drivers, init_logging, read_config, run_async, shutdown_signal, yes, ImageLimitsFile, TlsFile,
    VmFile,
};
use super::GlobalArgs;
use anyhow::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use taba_agent::AgentConfig;
use taba_driver::IsolationPolicy;
use taba_image::ImageStore;

/// Arguments of `taba agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Configuration file (TOML); see docs/configuration.md.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `taba agent` configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    #[serde(default = "default_agent_dir")]
    data_dir: PathBuf,
    /// One server (the older key); `servers` lists several.
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default)]
    join_token: Option<String>,
    #[serde(default)]
    tls: Option<TlsFile>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    datacenter: Option<String>,
    #[serde(default = "default_agent_http")]
    http: SocketAddr,
    /// `"10.0.0.5"` or `"10.0.0.5:4647"`.
    #[serde(default)]
    advertise: Option<String>,
    /// `"host"` or `"allocations"`.
    #[serde(default)]
    usage: Option<String>,
    #[serde(default)]
    cgroup_parent: Option<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    images_dir: Option<PathBuf>,
    #[serde(default)]
    resources: ResourcesFile,
    #[serde(default)]
    reserved: ReservedFile,
    #[serde(default)]
    ports: PortsFile,
    #[serde(default)]
    isolation: IsolationFile,
    #[serde(default)]
    vm: VmFile,
    /// Longest `alloc exec` run.
    #[serde(default)]
    exec_timeout: Option<taba_types::DurationSpec>,
    /// Largest `alloc exec` output kept, per stream.
    #[serde(default)]
    exec_max_output: Option<taba_types::ByteSize>,
    /// Interactive `alloc exec` sessions open at once per allocation.
    #[serde(default)]
    exec_max_sessions: Option<usize>,
    /// An interactive `alloc exec` session quiet this long is ended.
    #[serde(default)]
    exec_idle_timeout: Option<taba_types::DurationSpec>,
    /// Caps on the images this node fetches and unpacks.
    #[serde(default)]
    limits: ImageLimitsFile,
}

/// `[isolation]` of the agent file: what this node grants workloads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IsolationFile {
    /// Capabilities tasks may add (`cap_add`); Docker's default set if unset.
    #[serde(default)]
    cap_add_allowed: Option<Vec<String>>,
    /// Whether `exec` tasks may run as root.
    #[serde(default = "yes")]
    allow_root_exec: bool,
    /// First host id of the ranges given to `user_namespace = "auto"` tasks.
    #[serde(default)]
    userns_base: Option<u32>,
    /// How many such ranges (65536 ids each) this node hands out.
    #[serde(default)]
    userns_ranges: Option<u32>,
}

impl Default for IsolationFile {
    fn default() -> Self {
        Self {
            cap_add_allowed: None,
            allow_root_exec: true,
            userns_base: None,
            userns_ranges: None,
        }
    }
}

impl IsolationFile {
    /// The policy; unknown capability names are an error naming the key.
    fn policy(&self, file: Option<&Path>) -> anyhow::Result<IsolationPolicy> {
        let mut p = IsolationPolicy {
            allow_root_exec: self.allow_root_exec,
            ..IsolationPolicy::default()
        };
        p.userns.base = self.userns_base.unwrap_or(p.userns.base);
        p.userns.ranges = self.userns_ranges.unwrap_or(p.userns.ranges);
        p.userns.check().map_err(|e| {
            anyhow::anyhow!(
                "configuration {}: isolation.userns_base/userns_ranges: {e}",
                file.map(|p| p.display().to_string()).unwrap_or_default()
            )
        })?;
        if let Some(list) = &self.cap_add_allowed {
            p.cap_add_allowed = Vec::new();
            for (i, c) in list.iter().enumerate() {
                if c.eq_ignore_ascii_case("ALL") {
                    p.cap_add_allowed.push("ALL".into());
                    continue;
                }
                let name = taba_types::security::capability(c).with_context(|| {
                    format!(
                        "configuration {}: isolation.cap_add_allowed[{i}]: unknown capability {c:?}",
                        file.map(|p| p.display().to_string()).unwrap_or_default()
                    )
                })?;
                p.cap_add_allowed.push(name.to_string());
            }
        }
        Ok(p)
    }
}

/// `[resources]` of the agent file: what the node offers, when not the
/// whole host.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourcesFile {
    /// MHz.
    #[serde(default)]
    cpu: Option<u64>,
    #[serde(default)]
    memory: Option<taba_types::ByteSize>,
}

/// `[reserved]` of the agent file: what the host keeps for itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservedFile {
    #[serde(default)]
    cpu: u64,
    #[serde(default)]
    memory: taba_types::ByteSize,
    #[serde(default)]
    disk: taba_types::ByteSize,
    /// `"22,80,8000-8100"`.
    #[serde(default)]
    ports: String,
}

/// `[ports]` of the agent file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortsFile {
    /// `"20000-32000"`.
    #[serde(default)]
    dynamic: Option<String>,
}

impl AgentFile {
    /// The agent's configuration; errors name the file and the key.
    fn agent_config(&self, file: Option<&Path>) -> anyhow::Result<AgentConfig> {
        let file = file.map(|p| p.display().to_string()).unwrap_or_default();
        let key = |k: &str| format!("configuration {file}: {k}");
        let mut ac = AgentConfig::new(self.data_dir.clone(), String::new());
        ac.servers = self.server_list();
        ac.join_token = self.join_token.clone();
        if let Some(t) = &self.tls {
            anyhow::ensure!(
                t.ca_key.is_none(),
                "{}: only servers hold the CA key",
                key("tls.ca_key")
            );
            anyhow::ensure!(
                !t.plain_loopback,
                "{}: only servers have it",
                key("tls.plain_loopback")
            );
            let dir = self.data_dir.join("tls");
            ac.tls = Some(t.files(Some(&dir))?);
        }
        ac.name = self.name.clone();
        if let Some(dc) = self.datacenter.clone() {
            ac.datacenter = dc;
        }
        ac.http_addr = self.http;
        ac.meta = self.meta.clone();
        if let Some(a) = &self.advertise {
            ac.advertise = Some(parse_advertise(a).with_context(|| key("advertise"))?);
        }
        if let Some(u) = &self.usage {
            ac.usage_source = u
                .parse()
                .map_err(anyhow::Error::msg)
                .with_context(|| key("usage"))?;
        }
        if let Some(p) = &self.cgroup_parent {
            anyhow::ensure!(
                !p.is_empty()
                    && p.split('/').all(|c| {
                        !c.is_empty()
                            && c != "."
                            && c != ".."
                            && c.chars()
                                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
                    }),
                "{}: {p:?} is not a relative cgroup path of letters, digits, '-', '_', '.'",
                key("cgroup_parent")
            );
            ac.cgroup_parent = p.clone();
        }
        ac.reserved.cpu = self.reserved.cpu;
        ac.reserved.memory = self.reserved.memory;
        ac.reserved.disk = self.reserved.disk;
        if let Some(cpu) = self.resources.cpu {
            anyhow::ensure!(
                cpu > self.reserved.cpu,
                "{}: {cpu} MHz leaves nothing above reserved.cpu ({} MHz)",
                key("resources.cpu"),
                self.reserved.cpu
            );
        }
        if let Some(m) = self.resources.memory {
            anyhow::ensure!(
                m.0 > self.reserved.memory.0,
                "{}: {m} leaves nothing above reserved.memory ({})",
                key("resources.memory"),
                self.reserved.memory
            );
        }
        ac.capacity = taba_agent::Capacity {
            cpu: self.resources.cpu,
            memory: self.resources.memory,
        };
        ac.reserved_ports = taba_types::PortRanges::parse(&self.reserved.ports)
            .with_context(|| key("reserved.ports"))?;
        if let Some(d) = &self.ports.dynamic {
            ac.dynamic_ports =
                taba_types::PortRange::parse(d).with_context(|| key("ports.dynamic"))?;
        }
        if let Some(t) = self.exec_timeout {
            ac.exec_limits.timeout = t.as_duration();
        }
        if let Some(n) = self.exec_max_sessions {
            anyhow::ensure!(n > 0, "{}: must be at least 1", key("exec_max_sessions"));
            ac.exec_limits.max_sessions = n;
        }
        if let Some(t) = self.exec_idle_timeout {
            ac.exec_limits.idle_timeout = t.as_duration();
        }
        if let Some(m) = self.exec_max_output {
            ac.exec_limits.max_output = m.0;
        }
        Ok(ac)
    }
}

impl AgentFile {
    /// `server` and `servers`, else the local default.
    fn server_list(&self) -> Vec<String> {
        let mut v: Vec<String> = self.server.iter().cloned().collect();
        v.extend(self.servers.iter().cloned());
        if v.is_empty() {
            v.push(default_server_url());
        }
        v
    }
}

/// `"10.0.0.5"` (the API's port) or `"10.0.0.5:4647"`; never unspecified.
fn parse_advertise(s: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = match s.parse::<std::net::IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, 0),
        Err(_) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("{s:?} is not an IP address or IP:port"))?,
    };
    anyhow::ensure!(
        !addr.ip().is_unspecified(),
        "{s:?} is no address others can reach; give this node's own address"
    );
    Ok(addr)
}

fn default_agent_dir() -> PathBuf {
    "/var/lib/taba/agent".into()
}
fn default_agent_http() -> SocketAddr {
    // A free port: agents sharing a host never collide; the server learns the
    // port when the agent registers.
    "127.0.0.1:0".parse().expect("static address")
}
fn default_server_url() -> String {
    "http://127.0.0.1:4646".into()
}

/// Run `taba agent`.
pub fn run_agent(_g: &GlobalArgs, a: AgentArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let cfg: AgentFile = read_config(a.config.as_deref())?;
    let mut ac = cfg.agent_config(a.config.as_deref())?;
    let policy = cfg.isolation.policy(a.config.as_deref())?;
    let config_name = || {
        a.config
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let vm = cfg
        .vm
        .config(&cfg.data_dir)
        .with_context(|| format!("configuration {}", config_name()))?;
    let image_limits = cfg
        .limits
        .image_limits(None)
        .map_err(|e| anyhow::anyhow!("configuration {}: {e}", config_name()))?;
    run_async(async move {
        let images_dir = cfg
            .images_dir
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("images"));
        let images = Arc::new(
            ImageStore::open(&images_dir)
                .with_context(|| format!("opening the image store {}", images_dir.display()))?
                .with_limits(image_limits),
        );
        ac.images = Some(images.clone());
        let data_dir = ac.data_dir.clone();
        let agent = taba_agent::start(ac, drivers(images, policy, vm, &data_dir)?).await?;
        eprintln!(
            "taba agent: node {} (API {}, advertised as {})",
            agent.node_id, agent.http_addr, agent.advertise
        );
        shutdown_signal().await;
        agent.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> anyhow::Result<AgentConfig> {
        let f: AgentFile = toml::from_str(text)?;
        f.agent_config(Some(Path::new("agent.toml")))
    }

    #[test]
    fn agent_file_reads_user_namespace_ranges() {
        let cfg: AgentFile =
            toml::from_str("[isolation]\nuserns_base = 300000\nuserns_ranges = 8\n").unwrap();
        let p = cfg.isolation.policy(None).unwrap();
        assert_eq!((p.userns.base, p.userns.ranges), (300_000, 8));
        let cfg: AgentFile =
            toml::from_str("[isolation]\nuserns_base = 4000000000\nuserns_ranges = 8192\n")
                .unwrap();
        let e = cfg.isolation.policy(None).unwrap_err().to_string();
        assert!(e.contains("isolation.userns_base/userns_ranges"), "{e}");
        assert!(e.contains("past the last id"), "{e}");
    }

    #[test]
    fn agent_file_reads_the_vm_section() {
        let f: AgentFile = toml::from_str(
            "data_dir = \"/d\"\n[vm]\nimage_dirs = [\"/srv/vm\"]\naccel = \"tcg\"\noverhead = \"128MiB\"\n",
        )
        .unwrap();
        let c = f.vm.config(&f.data_dir).unwrap();
        assert_eq!(c.image_dirs, vec![PathBuf::from("/srv/vm")]);
        assert_eq!(
            c.accel,
            taba_driver::vm::AccelPolicy::Force(taba_types::vm::VmAccel::Tcg)
        );
        assert_eq!(c.overhead, taba_types::ByteSize::mib(128));
        let f: AgentFile = toml::from_str("data_dir = \"/d\"\n").unwrap();
        let c = f.vm.config(&f.data_dir).unwrap();
        assert_eq!(c.image_dirs, vec![PathBuf::from("/d/vm-images")]);
        assert_eq!(c.accel, taba_driver::vm::AccelPolicy::Auto);
        let f: AgentFile = toml::from_str("[vm]\naccel = \"warp\"\n").unwrap();
        let e = format!("{:#}", f.vm.config(&f.data_dir).unwrap_err());
        assert!(e.contains("vm.accel") && e.contains("\"warp\""), "{e}");
        let f: AgentFile = toml::from_str("[vm]\nimage_dirs = [\"rel\"]\n").unwrap();
        let e = format!("{:#}", f.vm.config(&f.data_dir).unwrap_err());
        assert!(e.contains("vm.image_dirs[0]"), "{e}");
        assert!(toml::from_str::<AgentFile>("[vm]\nimage_dir = \"/x\"\n").is_err());
    }

    #[test]
    fn agent_file_reads_isolation_policy_and_exec_limits() {
        let cfg: AgentFile = toml::from_str(
            "[isolation]\ncap_add_allowed = [\"net_admin\", \"CAP_SYS_PTRACE\"]\nallow_root_exec = false\n",
        )
        .unwrap();
        let p = cfg.isolation.policy(None).unwrap();
        assert_eq!(p.cap_add_allowed, vec!["NET_ADMIN", "SYS_PTRACE"]);
        assert!(!p.allow_root_exec);
        let cfg: AgentFile = toml::from_str("").unwrap();
        assert_eq!(
            cfg.isolation.policy(None).unwrap(),
            IsolationPolicy::default()
        );
        let cfg: AgentFile = toml::from_str("[isolation]\ncap_add_allowed = [\"FLY\"]\n").unwrap();
        let e = cfg.isolation.policy(None).unwrap_err().to_string();
        assert!(
            e.contains("isolation.cap_add_allowed[0]: unknown capability"),
            "{e}"
        );
        let c = config("exec_timeout = \"7s\"\nexec_max_output = \"1MiB\"\n").unwrap();
        assert_eq!(c.exec_limits.timeout, std::time::Duration::from_secs(7));
        assert_eq!(c.exec_limits.max_output, 1 << 20);
    }

    #[test]
    fn agent_file_reads_servers_tls_and_join_token() {
        let cfg: AgentFile = toml::from_str("").unwrap();
        assert_eq!(cfg.server_list(), vec!["http://127.0.0.1:4646".to_string()]);
        let cfg: AgentFile = toml::from_str(
            "data_dir = \"/d\"\nservers = [\"https://a:1\", \"https://b:2\"]\njoin_token = \"t\"\n\
             [tls]\nca_cert = \"/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(cfg.server_list(), vec!["https://a:1", "https://b:2"]);
        let files = cfg
            .tls
            .as_ref()
            .unwrap()
            .files(Some(Path::new("/d/tls")))
            .unwrap();
        assert_eq!(files.cert, Path::new("/d/tls/agent.pem"));
        assert_eq!(files.key, Path::new("/d/tls/agent-key.pem"));
        let ac = cfg.agent_config(None).unwrap();
        assert_eq!(ac.servers, vec!["https://a:1", "https://b:2"]);
        assert_eq!(ac.join_token.as_deref(), Some("t"));
        assert_eq!(ac.tls.unwrap().cert, Path::new("/d/tls/agent.pem"));
        // Server-only keys are refused by name.
        for (text, want) in [
            ("[tls]\nca_cert = \"/c\"\nca_key = \"/k\"", "tls.ca_key"),
            (
                "[tls]\nca_cert = \"/c\"\nplain_loopback = true",
                "tls.plain_loopback",
            ),
        ] {
            let e = format!("{:#}", config(text).unwrap_err());
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = toml::from_str::<AgentFile>("[tls]\nca_cert = \"/c\"\ncert_file = \"/x\"\n")
            .unwrap_err();
        assert!(e.message().contains("unknown field `cert_file`"), "{e}");
    }

    #[test]
    fn agent_file_reads_advertise_capacity_and_usage() {
        let c = config(
            "http = \"0.0.0.0:4700\"\nadvertise = \"10.0.0.5\"\nusage = \"allocations\"\n\
             cgroup_parent = \"taba/dev-n1\"\n[resources]\ncpu = 1500\nmemory = \"2GiB\"\n",
        )
        .unwrap();
        assert_eq!(c.advertise, Some("10.0.0.5:0".parse().unwrap()));
        assert_eq!(c.usage_source, taba_agent::UsageSource::Allocations);
        assert_eq!(c.capacity.cpu, Some(1500));
        assert_eq!(c.capacity.memory, Some(taba_types::ByteSize(2 << 30)));
        assert_eq!(c.cgroup_parent, "taba/dev-n1");
        // Defaults: a free port on loopback, the whole host, measured from the host.
        let d = config("").unwrap();
        assert_eq!(d.http_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(d.capacity, taba_agent::Capacity::default());
        assert_eq!(d.usage_source, taba_agent::UsageSource::Host);
        assert_eq!(d.cgroup_parent, "taba");
    }

    #[test]
    fn agent_file_errors_name_the_key() {
        for (text, want) in [
            (
                "advertise = \"0.0.0.0\"",
                "advertise: \"0.0.0.0\" is no address",
            ),
            (
                "advertise = \"node-1\"",
                "advertise: \"node-1\" is not an IP address",
            ),
            ("usage = \"hosts\"", "usage: \"hosts\" is not"),
            ("cgroup_parent = \"../x\"", "cgroup_parent: \"../x\""),
            (
                "[resources]\ncpu = 0",
                "resources.cpu: 0 MHz leaves nothing",
            ),
            (
                "[reserved]\nmemory = \"1GiB\"\n[resources]\nmemory = \"512MiB\"",
                "resources.memory: 512MiB leaves nothing above reserved.memory",
            ),
        ] {
            let e = format!("{:#}", config(text).unwrap_err());
            assert!(
                e.contains("configuration agent.toml: ") && e.contains(want),
                "{text}: {e}"
            );
        }
    }
}
