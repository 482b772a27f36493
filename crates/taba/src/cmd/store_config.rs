//! `[store]` of the server configuration file: which backend holds the state.
//!
//! ```toml
//! [store]
//! backend = "etcd"                      # "redb" (default: embedded, one server) or "etcd" (HA)
//! endpoints = ["http://10.0.0.1:2379"]  # etcd client URLs
//! prefix = "/taba"                      # keys of this taba cluster in etcd
//! lease_ttl = "2s"                      # a dead leader is replaced after about this long
//! cache = "64MiB"                       # redb only: its page cache in the server's memory
//! ```

use anyhow::Context;
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, Instant};
use taba_store::{EtcdConfig, EtcdStore, RedbStore, DEFAULT_CACHE_BYTES};

/// The backend named by `[store] backend`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded store in `<data_dir>/state.redb`: one server.
    #[default]
    Redb,
    /// An etcd cluster shared by several servers, one of them the leader.
    Etcd,
}

/// `[store]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    #[serde(default)]
    backend: Backend,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    lease_ttl: Option<taba_types::DurationSpec>,
    #[serde(default)]
    cache: Option<taba_types::ByteSize>,
}

/// The smallest `[store] cache`: redb needs room for a few pages per table.
const MIN_CACHE_BYTES: u64 = 1 << 20;

/// The opened store.
pub enum OpenedStore {
    /// Embedded.
    Redb(RedbStore),
    /// etcd, with the leader's lease TTL.
    Etcd(Box<EtcdStore>, Duration),
}

/// Default TTL of the leader's lease.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);

impl StoreFile {
    /// Checks the settings against the backend; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.backend {
            Backend::Redb => {
                if !self.endpoints.is_empty() || self.prefix.is_some() || self.lease_ttl.is_some() {
                    anyhow::bail!(
                        "store: endpoints, prefix and lease_ttl apply to backend = \"etcd\" only"
                    );
                }
                if let Some(c) = self.cache {
                    if c.0 < MIN_CACHE_BYTES || usize::try_from(c.0).is_err() {
                        anyhow::bail!("store.cache: must be at least 1MiB, got {} bytes", c.0);
                    }
                }
            }
            Backend::Etcd => {
                if self.cache.is_some() {
                    anyhow::bail!("store.cache: applies to backend = \"redb\" only");
                }
                if self.endpoints.is_empty() {
                    anyhow::bail!("store.endpoints: backend \"etcd\" needs at least one endpoint");
                }
                for e in &self.endpoints {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        anyhow::bail!("store.endpoints: {e:?} is not a URL (http://host:port)");
                    }
                }
                if let Some(ttl) = self.lease_ttl {
                    let ttl = ttl.as_duration();
                    if ttl < Duration::from_secs(1) || ttl.subsec_nanos() != 0 {
                        anyhow::bail!(
                            "store.lease_ttl: must be whole seconds, at least 1s (etcd leases count seconds)"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Opens the store; redb's file lives in `data_dir`.
    pub fn open(&self, data_dir: &Path) -> anyhow::Result<OpenedStore> {
        self.validate()?;
        match self.backend {
            Backend::Redb => {
                let path = data_dir.join("state.redb");
                let cache = self
                    .cache
                    .and_then(|c| usize::try_from(c.0).ok())
                    .unwrap_or(DEFAULT_CACHE_BYTES);
                let store = RedbStore::open_with_cache(&path, cache)
                    .with_context(|| format!("opening the store {}", path.display()))?;
                Ok(OpenedStore::Redb(store))
            }
            Backend::Etcd => {
                let mut config = EtcdConfig::new(self.endpoints.clone());
                if let Some(p) = &self.prefix {
                    config.prefix = p.clone();
                }
                let store = connect_etcd(&config).with_context(|| {
                    format!("connecting to etcd at {}", self.endpoints.join(","))
                })?;
                let ttl = self
                    .lease_ttl
                    .map(|t| t.as_duration())
                    .unwrap_or(DEFAULT_LEASE_TTL);
                Ok(OpenedStore::Etcd(Box::new(store), ttl))
            }
        }
    }
}

/// How long a starting server keeps trying to reach etcd (its members may be electing a
/// leader, or starting with it).
const ETCD_CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Connects to etcd, retrying for [`ETCD_CONNECT_PATIENCE`]: an etcd cluster that is
/// electing ("leader changed") or not up yet is no reason for a server to exit.
fn connect_etcd(config: &EtcdConfig) -> Result<EtcdStore, taba_store::StoreError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match EtcdStore::connect(config) {
            Ok(store) => return Ok(store),
            Err(e) if start.elapsed() < ETCD_CONNECT_PATIENCE => {
                tracing::warn!(error = %taba_types::error_chain(&e), "cannot reach etcd yet; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<StoreFile, String> {
        toml::from_str::<StoreFile>(text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn redb_is_the_default() {
        let f = parse("").unwrap();
        assert_eq!(f.backend, Backend::Redb);
        f.validate().unwrap();
    }

    #[test]
    fn etcd_settings_are_checked_with_their_key() {
        let f = parse("backend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/p\"\nlease_ttl = \"3s\"").unwrap();
        f.validate().unwrap();
        let err = parse("backend = \"etcd\"").unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("store.endpoints"), "{err}");
        let err = parse("backend = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("not a URL"), "{err}");
        let err = parse("backend = \"etcd\"\nendpoints = [\"http://a:1\"]\nlease_ttl = \"500ms\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("store.lease_ttl"), "{err}");
        let err = parse("endpoints = [\"http://a:1\"]")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("etcd"), "{err}");
        assert!(parse("backend = \"zookeeper\"")
            .unwrap_err()
            .contains("unknown variant"));
        assert!(parse("backend = \"etcd\"\nendpoint = []")
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn redb_cache_is_checked_with_its_key() {
        parse("cache = \"256MiB\"").unwrap().validate().unwrap();
        let err = parse("cache = \"4KiB\"").unwrap().validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("store.cache: must be at least 1MiB"),
            "{err}"
        );
        let err = parse("backend = \"etcd\"\nendpoints = [\"http://a:1\"]\ncache = \"64MiB\"")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("store.cache: applies to backend"),
            "{err}"
        );
    }

    #[test]
    fn redb_opens_with_the_configured_cache() {
        let dir = tempfile::tempdir().unwrap();
        let f = parse("cache = \"8MiB\"").unwrap();
        assert!(matches!(f.open(dir.path()).unwrap(), OpenedStore::Redb(_)));
        assert!(dir.path().join("state.redb").exists());
    }
}
