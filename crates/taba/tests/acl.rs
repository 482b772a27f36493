//! ACLs end to end, as an operator and an attacker use them: the real
//! `taba dev` (bootstrapped at start, its token found by the CLI), the real
//! CLI, a real exec workload. A token of another namespace can neither see,
//! stop nor exec into a job; the management token can, and its exec is in
//! the allocation's audit events.

mod common;

use common::*;
use std::time::Duration;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn root_acl_cli_another_namespaces_token_and_exec_audit() {
    let dev = Dev::start();
    let tmp = tempfile::tempdir().unwrap();
    // The CLI finds taba dev's management token by itself.
    let me = dev.cli(&["acl", "token", "self"]);
    assert!(me.status.success(), "{}", stderr(&me));
    assert!(stdout(&me).contains("management"), "{}", stdout(&me));
    // Bootstrapping again is refused.
    let again = dev.cli(&["acl", "bootstrap"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already bootstrapped"),
        "{}",
        stderr(&again)
    );
    // A token from elsewhere is refused, never ignored.
    let bogus = dev
        .cli_command(&["job", "list"])
        .env("TABA_TOKEN", "taba_not-a-token")
        .output()
        .unwrap();
    assert_eq!(bogus.status.code(), Some(1));
    assert!(
        stderr(&bogus).contains("token not found"),
        "{}",
        stderr(&bogus)
    );

    for ns in ["team-a", "team-b"] {
        assert!(dev.cli(&["namespace", "apply", ns]).status.success());
    }
    let policy = job_file(
        tmp.path(),
        "team-b",
        "[namespace.team-b]\ncapabilities = [\"read\", \"write\", \"exec\", \"host\"]\n",
    );
    let out = dev.cli(&["acl", "policy", "apply", "team-b", policy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = dev.cli(&[
        "--json", "acl", "token", "create", "--policy", "team-b", "--name", "bob", "--ttl", "1h",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bob = created["secret"].as_str().unwrap().to_string();
    assert!(dev.cli(&["acl", "token", "list"]).status.success());

    let job = job_file(
        tmp.path(),
        "secret",
        "name = \"secret\"\nnamespace = \"team-a\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/sleep\", \"300\"]\n  resources = { cpu = 100, memory = \"64MiB\" }\n",
    );
    let out = dev.cli(&["job", "run", job.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut alloc = String::new();
    dev.wait_for(
        "team-a's allocation running",
        Duration::from_secs(60),
        || {
            dev.client
                .job_status_in("team-a", "secret")
                .ok()
                .and_then(|s| {
                    s.allocations
                        .into_iter()
                        .find(|a| a.status.to_string() == "running")
                })
                .map(|a| alloc = a.id.to_string())
                .is_some()
        },
    );

    // Bob (team-b) can do nothing to team-a's job.
    let as_bob = |args: &[&str]| {
        dev.cli_command(args)
            .env("TABA_TOKEN", &bob)
            .output()
            .unwrap()
    };
    for args in [
        vec!["alloc", "exec", alloc.as_str(), "--", "/bin/id"],
        vec!["alloc", "status", alloc.as_str()],
        vec!["alloc", "stop", alloc.as_str()],
        vec!["job", "status", "-n", "team-a", "secret"],
        vec!["job", "stop", "-n", "team-a", "secret"],
        vec!["job", "run", job.to_str().unwrap()],
    ] {
        let out = as_bob(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("permission denied") && stderr(&out).contains("team-a"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Lists show Bob nothing of team-a.
    let out = as_bob(&["--json", "job", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("secret"), "{}", stdout(&out));
    let out = as_bob(&["--json", "namespace", "list"]);
    assert!(!stdout(&out).contains("team-a"), "{}", stdout(&out));

    // The management token may exec; the exec is audited.
    let out = dev.cli(&[
        "alloc",
        "exec",
        alloc.as_str(),
        "--",
        "/bin/echo",
        "audited",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "audited\n");
    let out = dev.cli(&["alloc", "status", alloc.as_str()]);
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == "Events"), "{text}");
    assert!(
        text.contains("Exec") && text.contains("\"taba dev\""),
        "{text}"
    );
    assert!(
        text.contains(r#"task t: ["/bin/echo", "audited"]"#),
        "{text}"
    );
    // Bob's failed tries left no event.
    assert_eq!(text.matches("Exec ").count(), 1, "{text}");

    // Revoked: refused from the next request on.
    let accessor = created["token"]["accessor_id"].as_str().unwrap();
    assert!(dev
        .cli(&["acl", "token", "revoke", accessor])
        .status
        .success());
    let out = as_bob(&["job", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("token not found"), "{}", stderr(&out));

    assert!(dev
        .cli(&["job", "stop", "-n", "team-a", "secret"])
        .status
        .success());
    dev.wait_for(
        "team-a's allocation stopped",
        Duration::from_secs(30),
        || {
            dev.client
                .job_status_in("team-a", "secret")
                .is_ok_and(|s| s.allocations.iter().all(|a| a.status.is_terminal()))
        },
    );
}
