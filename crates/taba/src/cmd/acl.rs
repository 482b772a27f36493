//! `taba acl ...`: bootstrap, policies and tokens; and where the CLI finds a
//! token when neither `--token` nor `TABA_TOKEN` gives one.
//!
//! Token files: `taba dev` writes its management token to
//! `<config>/tokens/<host>_<port>` (0600, directory 0700), where `<config>`
//! is `$TABA_CONFIG_DIR`, else `$XDG_CONFIG_HOME/taba`, else
//! `~/.config/taba`, and `<host>_<port>` is the API address. Every client
//! command reads the file for its `--addr` when no token is given.

use super::cli::{print_json, short, table};
use super::GlobalArgs;
use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use taba_client::api::{AclTokenCreated, AclTokenInfo, CreateTokenRequest};
use taba_client::Client;
use taba_types::DurationSpec;

/// `taba acl ...`
#[derive(clap::Subcommand, Debug)]
pub enum AclCommand {
    /// Issue the first management token (once per cluster).
    Bootstrap,
    /// Manage policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `taba acl policy ...`
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create or replace a policy from a TOML file (see docs/acl.md).
    Apply {
        /// Policy name.
        name: String,
        /// The policy file.
        file: PathBuf,
    },
    /// List policies.
    List,
    /// Show one policy.
    Show {
        /// Policy name.
        name: String,
    },
    /// Remove a policy (tokens naming it lose its rights).
    Rm {
        /// Policy name.
        name: String,
    },
}

/// `taba acl token ...`
#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// Policy to apply (repeat for several).
        #[arg(long = "policy", required_unless_present = "management")]
        policies: Vec<String>,
        /// A management token (every right) instead of policies.
        #[arg(long, conflicts_with = "policies")]
        management: bool,
        /// Name shown in lists and audit events.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime, e.g. 24h (none by default).
        #[arg(long, value_parser = DurationSpec::parse)]
        ttl: Option<DurationSpec>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by accessor id (or a unique prefix).
    Revoke {
        /// Accessor id.
        id: String,
    },
    /// Show the token this command sends.
    #[command(name = "self")]
    Whoami,
}

/// Run an ACL command.
pub fn run(g: &GlobalArgs, c: AclCommand) -> anyhow::Result<ExitCode> {
    let api = super::cli::client(g)?;
    match c {
        AclCommand::Bootstrap => {
            let t = api.acl_bootstrap()?;
            print_created(g, &t)
        }
        AclCommand::Policy(PolicyCommand::Apply { name, file }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let p = api
                .apply_acl_policy_toml(&name, &bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if g.json {
                return print_json(&p);
            }
            println!("Policy {:?} applied", p.name);
            Ok(ExitCode::SUCCESS)
        }
        AclCommand::Policy(PolicyCommand::List) => {
            let list = api.acl_policies()?;
            if g.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.description.lines().next().unwrap_or("").into(),
                    ]
                })
                .collect();
            table(&["NAME", "DESCRIPTION"], &rows);
            Ok(ExitCode::SUCCESS)
        }
        AclCommand::Policy(PolicyCommand::Show { name }) => {
            let p = api.acl_policy(&name)?;
            if g.json {
                return print_json(&p);
            }
            print!("{}", toml::to_string(&p).context("formatting the policy")?);
            Ok(ExitCode::SUCCESS)
        }
        AclCommand::Policy(PolicyCommand::Rm { name }) => {
            let r = api.delete_acl_policy(&name)?;
            if g.json {
                return print_json(&r);
            }
            println!("Policy {name:?} removed");
            Ok(ExitCode::SUCCESS)
        }
        AclCommand::Token(t) => token(g, &api, t),
    }
}

fn token(g: &GlobalArgs, api: &taba_client::Client, c: TokenCommand) -> anyhow::Result<ExitCode> {
    match c {
        TokenCommand::Create {
            policies,
            management,
            name,
            ttl,
        } => {
            let t = api.create_acl_token(&CreateTokenRequest {
                name,
                policies,
                management,
                ttl,
            })?;
            print_created(g, &t)
        }
        TokenCommand::List => {
            let list = api.acl_tokens()?;
            if g.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list.iter().map(token_row).collect();
            table(&["ACCESSOR", "NAME", "TYPE", "POLICIES", "EXPIRES"], &rows);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id } => {
            let r = api.revoke_acl_token(&token_accessor(api, &id)?)?;
            if g.json {
                return print_json(&r);
            }
            println!("Token {} revoked", r.name);
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Whoami => {
            let t = api.acl_token_self()?;
            if g.json {
                return print_json(&t);
            }
            print_info(&t);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn expires(t: &AclTokenInfo) -> String {
    match t.expire_time {
        None => "never".into(),
        Some(_) if t.expired => "expired".into(),
        Some(at) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            format!("in {}", human(at.saturating_sub(now) / 1000))
        }
    }
}

/// `1d2h`, `5h3m`, `4m10s`, `9s`: the two largest units.
fn human(secs: u64) -> String {
    let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut parts = vec![];
    let mut rest = secs;
    for (size, name) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join("")
}

fn token_row(t: &AclTokenInfo) -> Vec<String> {
    vec![
        short(&t.accessor_id),
        if t.name.is_empty() {
            "-".into()
        } else {
            t.name.clone()
        },
        t.token_type.to_string(),
        if t.policies.is_empty() {
            "-".into()
        } else {
            t.policies.join(",")
        },
        expires(t),
    ]
}

fn print_info(t: &AclTokenInfo) {
    println!("Accessor = {}", t.accessor_id);
    println!("Name     = {}", t.name);
    println!("Type     = {}", t.token_type);
    println!("Policies = {}", t.policies.join(", "));
    println!("Expires  = {}", expires(t));
}

fn print_created(g: &GlobalArgs, t: &AclTokenCreated) -> anyhow::Result<ExitCode> {
    if g.json {
        return print_json(t);
    }
    print_info(&t.token);
    println!("Secret   = {}", t.secret);
    eprintln!("(the secret is shown only this once; pass it with --token or TABA_TOKEN)");
    Ok(ExitCode::SUCCESS)
}

/// The directory of the CLI's own files.
fn config_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TABA_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("taba"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".config").join("taba"))
}

/// `host_port` of an API address (`http://127.0.0.1:4646/` -> `127.0.0.1_4646`).
fn addr_key(addr: &str) -> String {
    let a = addr.trim();
    let a = a.split_once("://").map(|(_, r)| r).unwrap_or(a);
    let a = a.split('/').next().unwrap_or(a).to_ascii_lowercase();
    a.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The token file of the API at `addr`.
pub fn token_file(addr: &str) -> Option<PathBuf> {
    config_dir().map(|d| d.join("tokens").join(addr_key(addr)))
}

/// The token a client command sends: `--token`/`TABA_TOKEN`, else the
/// token file for its address.
pub fn resolve_token(g: &GlobalArgs) -> Option<String> {
    if let Some(t) = g.token.as_ref().filter(|t| !t.is_empty()) {
        return Some(t.clone());
    }
    let path = token_file(g.addr.split(',').next().unwrap_or_default())?;
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Write `secret` to `path`, readable by its owner only (0600; parent 0700).
pub fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    // A name of its own per process: token files are named for addresses
    // (`127.0.0.1_4646`), and `with_extension` made every one of them
    // `127.0.0.tmp`, so two `taba dev`s starting at once renamed each
    // other's file away.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(format!("{secret}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Write the token file the CLI finds for the API at `addr` (and, for an
/// unspecified address, for its loopback names).
pub fn write_token_files(addr: std::net::SocketAddr, secret: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut names = vec![addr.to_string()];
    if addr.ip().is_unspecified() {
        names.push(format!("127.0.0.1:{}", addr.port()));
        names.push(format!("localhost:{}", addr.port()));
    }
    let mut out = vec![];
    for n in names {
        if let Some(p) = token_file(&n) {
            write_secret(&p, secret)?;
            out.push(p);
        }
    }
    Ok(out)
}

/// The management token of `taba dev`: the one kept in `path` while it is
/// still valid, else a new one (bootstrapping ACLs on a fresh data dir),
/// written to `path` (0600).
pub async fn dev_management_token(
    state: &taba_server::ServerState,
    path: &Path,
) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if state
            .acl
            .authenticate(Some(s), now)
            .is_ok_and(|c| c.rights.management())
        {
            return Ok(s.to_string());
        }
    }
    let (_, secret) = state
        .issue_management_token("taba dev")
        .await
        .context("issuing the management token of taba dev")?;
    write_secret(path, &secret)?;
    Ok(secret)
}

/// The full accessor id of a token named by its accessor id or a unique
/// prefix of it (revoking takes full ids only).
fn token_accessor(api: &Client, id: &str) -> anyhow::Result<String> {
    let m: Vec<String> = api
        .acl_tokens()?
        .into_iter()
        .map(|t| t.accessor_id)
        .filter(|a| !id.is_empty() && a.starts_with(id))
        .collect();
    if m.iter().any(|a| a == id) {
        return Ok(id.to_owned());
    }
    match m.as_slice() {
        [one] => Ok(one.clone()),
        [] => anyhow::bail!("token {id:?} not found"),
        _ => anyhow::bail!(
            "token prefix {id:?} matches {} tokens; give more characters",
            m.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_shown_in_two_units() {
        assert_eq!(human(86_399), "23h59m");
        assert_eq!(human(90_061), "1d1h");
        assert_eq!(human(61), "1m1s");
        assert_eq!(human(0), "0s");
    }

    #[test]
    fn addresses_map_to_one_file_name() {
        assert_eq!(addr_key("http://127.0.0.1:4646/"), "127.0.0.1_4646");
        assert_eq!(addr_key("127.0.0.1:4646"), "127.0.0.1_4646");
        assert_eq!(addr_key("https://Node-1.example:443"), "node-1.example_443");
        assert_eq!(addr_key("http://[::1]:4646"), "___1__4646");
    }

    #[test]
    fn token_files_of_two_addresses_do_not_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("127.0.0.1_4646");
        let b = dir.path().join("127.0.0.1_4747");
        // What two `taba dev`s starting at once do: each opens its
        // temporary file before the other renames its own.
        std::thread::scope(|s| {
            for (p, t) in [(&a, "taba_a"), (&b, "taba_b")] {
                s.spawn(move || {
                    for _ in 0..200 {
                        write_secret(p, t).unwrap();
                    }
                });
            }
        });
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "taba_a\n");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "taba_b\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn secrets_are_written_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens").join("x");
        write_secret(&p, "taba_abc").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "taba_abc\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }
}
