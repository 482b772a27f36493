//! How the server reaches registries: the `[registry]` table of its configuration file.
//!
//! ```toml
//! [registry]
//! timeout = "30s"                      # a registry silent this long fails the pull
//! parallel = 4                         # layers downloaded at once
//! docker_config = "/root/.docker/config.json"
//! [registry.hosts."localhost:5000"]
//! insecure = true                      # plain HTTP
//! [registry.hosts."registry.example.com"]
//! ca_cert = "/etc/taba/registry-ca.pem"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Settings of registry access (`[registry]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Per registry (`host` or `host:port`, as in references).
    pub hosts: BTreeMap<String, RegistryHost>,
    /// A registry that sends nothing for this long fails the request (connect and every read).
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Layers downloaded at once, per pull.
    pub parallel: usize,
    /// A Docker `config.json` whose `auths` are used for registries taba has no login for.
    /// Default: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`, when present.
    pub docker_config: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            hosts: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            parallel: 4,
            docker_config: None,
        }
    }
}

/// One registry's settings (`[registry.hosts."HOST"]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryHost {
    /// Plain HTTP instead of HTTPS (a registry on a trusted network only).
    pub insecure: bool,
    /// A PEM file of CA certificates trusted for this registry, besides the system's.
    pub ca_cert: Option<PathBuf>,
}

impl RegistryConfig {
    /// The settings of `registry` (defaults when it is not listed).
    pub fn host(&self, registry: &str) -> RegistryHost {
        self.hosts.get(registry).cloned().unwrap_or_default()
    }

    /// The Docker config file to read credentials from, if any.
    pub fn docker_config_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.docker_config {
            return Some(p.clone());
        }
        if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(d).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }
}

mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        taba_types::DurationSpec::parse(&s)
            .map(|d| d.as_duration())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_table_reads_hosts_and_defaults() {
        let c: RegistryConfig = toml_like(
            r#"{"timeout": "5s", "hosts": {"localhost:5000": {"insecure": true},
                "r.example": {"ca_cert": "/ca.pem"}}}"#,
        );
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert!(c.host("localhost:5000").insecure);
        assert_eq!(c.host("r.example").ca_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.host("other"), RegistryHost::default());
        assert_eq!(c.parallel, 4);
        let bad = serde_json::from_str::<RegistryConfig>(r#"{"hosts": {"h": {"insecur": true}}}"#);
        assert!(bad.unwrap_err().to_string().contains("insecur"));
    }

    fn toml_like(json: &str) -> RegistryConfig {
        serde_json::from_str(json).unwrap()
    }
}
