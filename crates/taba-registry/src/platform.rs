//! The platform this node runs, and picking its image from an image index.

use oci_client::manifest::ImageIndexEntry;

/// An OCI platform: `os/architecture[/variant]`, in Go's names as indexes write them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8` for arm64, `v7` for arm; none elsewhere.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the running program (the architecture it was built for, which is
    /// what this host runs it as).
    pub fn current() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// Picks this platform's entry of an index: os and architecture must match; an entry
    /// with the same variant wins over one without a variant.
    pub fn pick<'a>(&self, entries: &'a [ImageIndexEntry]) -> Option<&'a ImageIndexEntry> {
        let candidates = entries.iter().filter(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == self.os && p.architecture == self.architecture)
        });
        let mut fallback = None;
        for e in candidates {
            let v = e.platform.as_ref().and_then(|p| p.variant.as_deref());
            match (v, self.variant.as_deref()) {
                (Some(a), Some(b)) if a == b => return Some(e),
                (None, _) | (_, None) => {
                    fallback.get_or_insert(e);
                }
                _ => {}
            }
        }
        fallback
    }

    /// The platforms an index offers, for an error message.
    pub fn list(entries: &[ImageIndexEntry]) -> String {
        let v: Vec<String> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        if v.is_empty() {
            "no platforms".into()
        } else {
            v.join(", ")
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, os: &str, arch: &str, variant: Option<&str>) -> ImageIndexEntry {
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": 1,
            "platform": {"os": os, "architecture": arch, "variant": variant},
        }))
        .unwrap()
    }

    #[test]
    fn the_nodes_platform_is_picked_not_the_first() {
        let idx = vec![
            entry("sha256:arm", "linux", "arm64", Some("v8")),
            entry("sha256:win", "windows", "amd64", None),
            entry("sha256:amd", "linux", "amd64", None),
        ];
        let amd = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert_eq!(amd.pick(&idx).unwrap().digest, "sha256:amd");
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(arm.pick(&idx).unwrap().digest, "sha256:arm");
        let riscv = Platform {
            os: "linux".into(),
            architecture: "riscv64".into(),
            variant: None,
        };
        assert!(riscv.pick(&idx).is_none());
        assert_eq!(
            Platform::list(&idx),
            "linux/arm64/v8, windows/amd64, linux/amd64"
        );
        let arm7 = vec![
            entry("sha256:v6", "linux", "arm", Some("v6")),
            entry("sha256:v7", "linux", "arm", Some("v7")),
        ];
        let me = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        };
        assert_eq!(me.pick(&arm7).unwrap().digest, "sha256:v7");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Platform::current().to_string(), "linux/amd64");
        }
    }
}
