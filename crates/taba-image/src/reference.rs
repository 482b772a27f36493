//! Image reference normalisation: `busybox`, `busybox:latest`, `library/busybox:latest` and
//! `docker.io/library/busybox:latest` all name the same image. The store keys references by
//! their canonical form and shows them in the short ("familiar") form Docker prints. A
//! reference may name a digest instead of a tag (`busybox@sha256:<hex>`, what a pull by digest
//! records); `name:tag@sha256:<hex>` is kept as `name@sha256:<hex>`, as Docker does.

use crate::error::ImageError;

const DEFAULT_DOMAIN: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
/// Longest `registry/path` (Docker's `NameTotalLengthMax`).
const MAX_NAME: usize = 255;
/// Longest reference read at all: a name, `:` and a 128-character tag fit.
const MAX_REFERENCE: usize = 512;

/// A parsed `[domain/]path[:tag]` or `[domain/]path@sha256:<hex>` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    domain: String,
    path: String,
    /// `:tag`, or `@sha256:<hex>` for a digest reference.
    suffix: String,
}

/// What a user's string asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// `sha256:<hex prefix>`: an image id.
    Id(String),
    /// A name; if it is also plain hex, an id prefix is tried after the name.
    Name {
        canonical: String,
        id_prefix: Option<String>,
    },
}

fn invalid(reference: &str, reason: &str) -> ImageError {
    ImageError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.to_string(),
    }
}

pub(crate) fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_digit() || c.is_ascii_lowercase() || matches!(c, b'_' | b'.' | b'-')
        })
}

/// Whether the first component of a name is a registry rather than a user.
fn looks_like_domain(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

impl Reference {
    /// Parses and normalises a reference.
    pub(crate) fn parse(s: &str) -> Result<Reference, ImageError> {
        if s.is_empty() {
            return Err(invalid(s, "must not be empty"));
        }
        if s.len() > MAX_REFERENCE {
            return Err(invalid(s, "longer than 512 characters"));
        }
        let (named, digest) = match s.split_once('@') {
            Some((n, d)) => {
                crate::blobs::parse_digest(d).map_err(|_| {
                    invalid(
                        s,
                        "a digest reference is name@sha256:<64 lower-case hex digits>",
                    )
                })?;
                (n, Some(d))
            }
            None => (s, None),
        };
        let last_slash = named.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match named[last_slash..].rfind(':') {
            Some(i) => (&named[..last_slash + i], &named[last_slash + i + 1..]),
            None => (named, DEFAULT_TAG),
        };
        if !valid_tag(tag) {
            return Err(invalid(
                s,
                "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let domain = if parts.len() > 1 && looks_like_domain(parts[0]) {
            let d = parts.remove(0);
            if d == "index.docker.io" || d == "registry-1.docker.io" {
                DEFAULT_DOMAIN.to_string()
            } else {
                d.to_string()
            }
        } else {
            DEFAULT_DOMAIN.to_string()
        };
        if parts.iter().any(|p| !valid_path_component(p)) {
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(invalid(s, "repository name must be lower-case"));
            }
            return Err(invalid(
                s,
                "repository name components must be [a-z0-9._-], starting and ending with a letter or digit",
            ));
        }
        if domain == DEFAULT_DOMAIN && parts.len() == 1 {
            parts.insert(0, "library");
        }
        // Docker's limit, on the full name: a short name that fits must also fit once
        // `docker.io/library/` is added, or its canonical form would not parse again.
        let name_len = domain.len() + 1 + parts.iter().map(|p| p.len() + 1).sum::<usize>() - 1;
        if name_len > MAX_NAME {
            return Err(invalid(
                s,
                "repository name (with its registry) longer than 255 characters",
            ));
        }
        Ok(Reference {
            domain,
            path: parts.join("/"),
            suffix: match digest {
                Some(d) => format!("@{d}"),
                None => format!(":{tag}"),
            },
        })
    }

    /// `docker.io/library/busybox:latest`.
    pub(crate) fn canonical(&self) -> String {
        format!("{}/{}{}", self.domain, self.path, self.suffix)
    }

    /// `busybox:latest`, `example.com/app:1`. Docker Hub's domain is left out only where
    /// the rest would not read as a registry (`docker.io/libr.ry/app` stays whole).
    pub(crate) fn familiar(&self) -> String {
        let first = self.path.split('/').next().unwrap_or_default();
        if self.domain == DEFAULT_DOMAIN && !looks_like_domain(first) {
            match self.path.strip_prefix("library/") {
                Some(short) if !short.contains('/') => format!("{short}{}", self.suffix),
                _ => format!("{}{}", self.path, self.suffix),
            }
        } else {
            self.canonical()
        }
    }
}

/// The short form of a canonical reference (falls back to the input if it does not parse).
pub(crate) fn familiar(canonical: &str) -> String {
    Reference::parse(canonical).map_or_else(|_| canonical.to_string(), |r| r.familiar())
}

/// Decides how to look a user's string up.
pub(crate) fn lookup(s: &str) -> Result<Lookup, ImageError> {
    if let Some(hex) = s.strip_prefix("sha256:") {
        if !is_hex(hex) || hex.len() > 64 {
            return Err(invalid(
                s,
                "an image id is sha256: and up to 64 lower-case hex digits",
            ));
        }
        return Ok(Lookup::Id(hex.to_string()));
    }
    let canonical = Reference::parse(s)?.canonical();
    let id_prefix = (is_hex(s) && s.len() >= 4 && s.len() <= 64).then(|| s.to_string());
    Ok(Lookup::Name {
        canonical,
        id_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        Reference::parse(s).unwrap().canonical()
    }

    #[test]
    fn short_forms_of_busybox_are_one_reference() {
        let want = "docker.io/library/busybox:latest";
        for s in [
            "busybox",
            "busybox:latest",
            "library/busybox",
            "library/busybox:latest",
            "docker.io/library/busybox:latest",
            "docker.io/busybox",
            "index.docker.io/library/busybox:latest",
        ] {
            assert_eq!(canon(s), want, "{s}");
        }
        assert_eq!(Reference::parse(want).unwrap().familiar(), "busybox:latest");
    }

    #[test]
    fn other_registries_and_users_keep_their_names() {
        assert_eq!(canon("alice/app:v1"), "docker.io/alice/app:v1");
        assert_eq!(familiar("docker.io/alice/app:v1"), "alice/app:v1");
        assert_eq!(canon("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(
            familiar("localhost:5000/app:latest"),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            canon("example.com/a/b/c:1.2-rc_3"),
            "example.com/a/b/c:1.2-rc_3"
        );
        assert_eq!(canon("localhost/app"), "localhost/app:latest");
        // A first component without '.', ':' or "localhost" is a user, not a registry.
        assert_eq!(canon("registry/app"), "docker.io/registry/app:latest");
        // ... and one with them keeps Docker Hub's domain in the short form (fuzz finding).
        assert_eq!(
            familiar("docker.io/libr.ry/busybox:latest"),
            "docker.io/libr.ry/busybox:latest"
        );
        assert_eq!(
            familiar("docker.io/localhost/app:1"),
            "docker.io/localhost/app:1"
        );
        // A name that fits only without `docker.io/library/` is refused (fuzz finding).
        let long = "a".repeat(250);
        assert!(Reference::parse(&long).is_err());
        let fits = "a".repeat(255 - "docker.io/library/".len());
        assert_eq!(canon(&canon(&fits)), canon(&fits));
    }

    #[test]
    fn bad_references_are_rejected_with_a_reason() {
        for s in [
            "",
            "Busybox",
            "busy box",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abcd",
            "busybox@sha512:abcd",
            "busybox@",
            "/busybox",
            "busybox/",
            "a//b",
            "-a",
        ] {
            match Reference::parse(s) {
                Err(ImageError::InvalidReference { reference, reason }) => {
                    assert_eq!(reference, s);
                    assert!(!reason.is_empty());
                }
                other => panic!("{s:?} gave {other:?}"),
            }
        }
        assert!(matches!(
            Reference::parse("Busybox"),
            Err(ImageError::InvalidReference { reason, .. }) if reason.contains("lower-case")
        ));
    }

    #[test]
    fn digest_references_keep_the_digest_and_drop_a_tag() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            canon(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            canon(&format!("localhost:5000/app:v1@{d}")),
            format!("localhost:5000/app@{d}")
        );
        assert_eq!(
            familiar(&format!("docker.io/library/busybox@{d}")),
            format!("busybox@{d}")
        );
    }

    #[test]
    fn ids_and_hex_prefixes() {
        assert_eq!(lookup("sha256:abc1").unwrap(), Lookup::Id("abc1".into()));
        assert!(lookup("sha256:XYZ").is_err());
        assert!(lookup(&format!("sha256:{}", "a".repeat(65))).is_err());
        assert_eq!(
            lookup("abcd12").unwrap(),
            Lookup::Name {
                canonical: "docker.io/library/abcd12:latest".into(),
                id_prefix: Some("abcd12".into())
            }
        );
        assert_eq!(
            lookup("abc").unwrap(),
            Lookup::Name {
                canonical: "docker.io/library/abc:latest".into(),
                id_prefix: None
            }
        );
    }
}
