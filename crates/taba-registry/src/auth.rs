//! Registry credentials: taba's own login file (written by `taba image login`, 0600) and,
//! for registries it has no login for, a Docker `config.json`. Both use Docker's format:
//!
//! ```json
//! {"auths": {"localhost:5000": {"auth": "<base64 of user:password>"}}}
//! ```
//!
//! Docker Hub's key is `https://index.docker.io/v1/` (as `docker login` writes it) or
//! `docker.io`. Credential helpers (`credsStore`, `credHelpers`) are not run.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// A Docker-format credentials file (only the parts taba reads and writes).
#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// Everything else of a Docker config, kept as it was.
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identitytoken: Option<String>,
}

/// The keys a registry may be filed under.
fn keys(registry: &str) -> Vec<String> {
    let mut k = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        k.push("https://index.docker.io/v1/".into());
        k.push("index.docker.io".into());
        k.push("docker.io".into());
    }
    k
}

fn read(path: &Path) -> Result<Option<AuthFile>, RegistryError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            RegistryError::Settings(format!("cannot parse credentials {}: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RegistryError::Settings(format!(
            "cannot read credentials {}: {e}",
            path.display()
        ))),
    }
}

impl AuthEntry {
    fn to_auth(&self, path: &Path, key: &str) -> Result<Option<RegistryAuth>, RegistryError> {
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            return Ok(Some(RegistryAuth::Basic(u.clone(), p.clone())));
        }
        let Some(b64) = self.auth.as_deref().filter(|a| !a.is_empty()) else {
            return Ok(None);
        };
        let bad = |why: &str| {
            RegistryError::Settings(format!(
                "credentials {} for {key}: `auth` {why}",
                path.display()
            ))
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad("is not base64"))?;
        let text = String::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| bad("is not user:password"))?;
        Ok(Some(RegistryAuth::Basic(u.to_string(), p.to_string())))
    }
}

/// The credentials for `registry`: taba's login file first, then the Docker config;
/// anonymous when neither has any.
pub(crate) fn lookup(
    registry: &str,
    login_file: &Path,
    docker_config: Option<&Path>,
) -> Result<RegistryAuth, RegistryError> {
    for path in std::iter::once(login_file).chain(docker_config) {
        let Some(file) = read(path)? else { continue };
        for k in keys(registry) {
            if let Some(entry) = file.auths.get(&k) {
                if let Some(a) = entry.to_auth(path, &k)? {
                    return Ok(a);
                }
            }
        }
    }
    Ok(RegistryAuth::Anonymous)
}

/// Records `user`/`password` for `registry` in the login file (0600, replaced atomically).
pub(crate) fn save(
    login_file: &Path,
    registry: &str,
    user: &str,
    password: &str,
) -> Result<(), RegistryError> {
    let mut file = read(login_file)?.unwrap_or_default();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    file.auths.insert(
        registry.to_string(),
        AuthEntry {
            auth: Some(auth),
            ..AuthEntry::default()
        },
    );
    write_private(
        login_file,
        &serde_json::to_vec_pretty(&file).expect("serialises"),
    )
}

/// Forgets `registry`'s login; `false` if there was none.
pub(crate) fn remove(login_file: &Path, registry: &str) -> Result<bool, RegistryError> {
    let Some(mut file) = read(login_file)? else {
        return Ok(false);
    };
    if file.auths.remove(registry).is_none() {
        return Ok(false);
    }
    write_private(
        login_file,
        &serde_json::to_vec_pretty(&file).expect("serialises"),
    )?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let fail = |e: std::io::Error| {
        RegistryError::Settings(format!("cannot write credentials {}: {e}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("auth"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(a: RegistryAuth) -> (String, String) {
        match a {
            RegistryAuth::Basic(u, p) => (u, p),
            other => panic!("not basic: {other:?}"),
        }
    }

    #[test]
    fn logins_are_private_and_win_over_the_docker_config() {
        let d = tempfile::tempdir().unwrap();
        let login = d.path().join("auth.json");
        let docker = d.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("dockeruser:dockerpw");
        std::fs::write(
            &docker,
            format!(
                r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{b64}"}},
                    "r.example:5000": {{"auth": "{b64}"}}}}, "credsStore": "x"}}"#
            ),
        )
        .unwrap();
        assert!(matches!(
            lookup("other.example", &login, Some(&docker)).unwrap(),
            RegistryAuth::Anonymous
        ));
        assert_eq!(
            basic(lookup("docker.io", &login, Some(&docker)).unwrap()),
            ("dockeruser".into(), "dockerpw".into())
        );
        save(&login, "r.example:5000", "me", "pa:ss").unwrap();
        let mode = std::fs::metadata(&login).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            basic(lookup("r.example:5000", &login, Some(&docker)).unwrap()),
            ("me".into(), "pa:ss".into())
        );
        assert!(remove(&login, "r.example:5000").unwrap());
        assert!(!remove(&login, "r.example:5000").unwrap());
        assert_eq!(
            basic(lookup("r.example:5000", &login, Some(&docker)).unwrap()).0,
            "dockeruser"
        );
        std::fs::write(&docker, r#"{"auths": {"h": {"auth": "%%%"}}}"#).unwrap();
        let e = lookup("h", &login, Some(&docker)).unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
    }
}
