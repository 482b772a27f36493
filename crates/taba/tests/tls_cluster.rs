//! A real `taba server` and real `taba agent`s over mutual TLS on loopback:
//! certificates made with `taba tls`, a container job runs on the agent,
//! `alloc logs` and `alloc exec` go CLI -> server -> agent over TLS, an agent
//! joins with a one-time token, and a client without a certificate is
//! refused. Needs root (containers) and the busybox image.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn taba(args: &[&str]) -> std::process::Output {
    Command::new(taba_bin())
        .args(args)
        .env_remove("TABA_ADDR")
        .output()
        .expect("running taba")
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn wait(what: &str, logs: &[&Proc], mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tails: Vec<String> = logs.iter().map(|p| p.log_tail()).collect();
    panic!(
        "timed out waiting for {what}; logs:\n{}",
        tails.join("\n----\n")
    );
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn root_server_and_agents_over_mutual_tls_run_log_exec_and_join() {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("taba-tls-e2e-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = tmp.path();
    let tls = d.join("tls");
    let t = tls.to_str().unwrap();
    ok(taba(&["tls", "ca", "create", "--dir", t]), "tls ca create");
    ok(
        taba(&["tls", "cert", "create", "--server", "s1", "--dir", t]),
        "server cert",
    );
    ok(
        taba(&["tls", "cert", "create", "--agent", "n1", "--dir", t]),
        "agent cert",
    );
    ok(
        taba(&["tls", "cert", "create", "--cli", "--dir", t]),
        "cli cert",
    );
    let mode = |f: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(tls.join(f)).unwrap().permissions().mode() & 0o777
    };
    for key in [
        "taba-ca-key.pem",
        "server-s1-key.pem",
        "agent-n1-key.pem",
        "cli-key.pem",
    ] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    // Creating the same certificate again refuses to overwrite it.
    assert!(!taba(&["tls", "cert", "create", "--cli", "--dir", t])
        .status
        .success());

    let server_dir = d.join("server");
    write(
        &d.join("server.toml"),
        &format!(
            "data_dir = \"{sd}\"\nhttp = \"127.0.0.1:0\"\n[tls]\nca_cert = \"{t}/taba-ca.pem\"\n\
             cert = \"{t}/server-s1.pem\"\nkey = \"{t}/server-s1-key.pem\"\nca_key = \"{t}/taba-ca-key.pem\"\n",
            sd = server_dir.display()
        ),
    );
    let (server, api) = Proc::start(
        &[
            "server",
            "--config",
            d.join("server.toml").to_str().unwrap(),
        ],
        &d.join("server.log"),
        "API on ",
    );
    assert!(api.starts_with("https://"), "{api}");
    // A second address that refuses connections comes first: the CLI and
    // the agents fail over to the real one.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        format!("https://{a}")
    };
    let addrs = format!("{dead},{api}");
    let agent_toml = |name: &str, extra: &str| {
        format!(
            "data_dir = \"{}\"\nservers = [\"{dead}\", \"{api}\"]\nname = \"{name}\"\nhttp = \"127.0.0.1:0\"\n\
             images_dir = \"{}\"\n{extra}",
            d.join(name).display(),
            server_dir.join("images").display()
        )
    };
    write(
        &d.join("n1.toml"),
        &agent_toml(
            "n1",
            &format!(
                "[tls]\nca_cert = \"{t}/taba-ca.pem\"\ncert = \"{t}/agent-n1.pem\"\nkey = \"{t}/agent-n1-key.pem\"\n"
            ),
        ),
    );
    let (agent1, _) = Proc::start(
        &["agent", "--config", d.join("n1.toml").to_str().unwrap()],
        &d.join("n1.log"),
        "taba agent: node",
    );

    let taba_cli = || {
        let mut c = Command::new(taba_bin());
        c.env("TABA_ADDR", &addrs)
            .env("TABA_CA_CERT", tls.join("taba-ca.pem"))
            .env("TABA_CLIENT_CERT", tls.join("cli.pem"))
            .env("TABA_CLIENT_KEY", tls.join("cli-key.pem"));
        c
    };
    let mgmt = acl_bootstrap(taba_cli());
    let cli = |args: &[&str]| {
        taba_cli()
            .args(args)
            .env("TABA_TOKEN", &mgmt)
            .output()
            .expect("running taba")
    };
    let procs = [&server, &agent1];
    wait("n1 ready", &procs, || {
        let out = cli(&["node", "list"]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ready")
    });

    // A client without a certificate is refused, and says why.
    let anon = Command::new(taba_bin())
        .args(["job", "list", "--addr", &api, "--ca-cert"])
        .arg(tls.join("taba-ca.pem"))
        .env_remove("TABA_CLIENT_CERT")
        .env_remove("TABA_CLIENT_KEY")
        .env("HOME", d)
        .output()
        .unwrap();
    assert!(!anon.status.success());
    assert!(
        String::from_utf8_lossy(&anon.stderr).contains("client certificate"),
        "{}",
        String::from_utf8_lossy(&anon.stderr)
    );

    // A second agent joins with a one-time token: it has only the CA.
    let token = ok(
        cli(&["node", "token", "create", "--ttl", "10m"]),
        "token create",
    );
    let token = token.trim();
    assert_eq!(token.len(), 64);
    write(
        &d.join("n2.toml"),
        &agent_toml(
            "n2",
            &format!("join_token = \"{token}\"\n[tls]\nca_cert = \"{t}/taba-ca.pem\"\n"),
        ),
    );
    let (agent2, _) = Proc::start(
        &["agent", "--config", d.join("n2.toml").to_str().unwrap()],
        &d.join("n2.log"),
        "taba agent: node",
    );
    let procs = [&server, &agent1, &agent2];
    wait("n2 ready", &procs, || {
        let out = cli(&["node", "list"]);
        String::from_utf8_lossy(&out.stdout)
            .matches("ready")
            .count()
            == 2
    });
    assert_eq!(mode("../n2/tls/agent-key.pem"), 0o600);

    ok(
        cli(&["image", "import", busybox_tar().to_str().unwrap()]),
        "image import",
    );
    let job = job_file(
        d,
        "hello",
        r#"
name = "hello"
[[group]]
name = "g"
constraint = [{ attribute = "${node.name}", value = "n1" }]
  [[group.task]]
  name = "sh"
  driver = "container"
  image = "busybox"
  command = ["/bin/sh", "-c", "echo hello-over-tls; exec sleep 1000"]
  resources = { cpu = 50, memory = "32MiB" }
"#,
    );
    ok(
        cli(&["job", "run", "--detach", job.to_str().unwrap()]),
        "job run",
    );
    let mut alloc = String::new();
    wait("hello running", &procs, || {
        let out = cli(&["job", "status", "hello", "--json"]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        let Some(a) = v["allocations"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["status"] == "running"))
        else {
            return false;
        };
        alloc = a["id"].as_str().unwrap().to_string();
        true
    });
    wait("logs over TLS", &procs, || {
        String::from_utf8_lossy(&cli(&["alloc", "logs", &alloc]).stdout).contains("hello-over-tls")
    });
    let out = ok(
        cli(&["alloc", "exec", &alloc, "--", "echo", "exec-over-tls"]),
        "alloc exec",
    );
    assert!(out.contains("exec-over-tls"), "{out}");

    ok(cli(&["job", "stop", "hello"]), "job stop");
    wait("hello stopped", &procs, || {
        let out = cli(&["job", "status", "hello", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v["allocations"].as_array().cloned())
            .is_some_and(|a| {
                a.iter()
                    .all(|a| a["status"] != "running" && a["status"] != "pending")
            })
    });
    drop(agent2);
    drop(agent1);
    drop(server);
    force_cleanup(&d.join("n1"));
    force_cleanup(&d.join("n2"));
}
