//! ACLs: every route the router serves, taken from the route table itself
//! (`taba_server::api::routes`), refuses a request without a token, with a
//! revoked token, with an expired token, and with a token of another
//! namespace; a new route without a check fails here. Plus the token and
//! policy lifecycle, the `host` capability, durability across a restart,
//! and ACLs turned off.

mod common;

use common::*;
use std::time::Duration;
use taba_client::api::CreateTokenRequest;
use taba_client::Client;
use taba_server::acl::AuthClass;
use taba_server::api::{routes, BodyKind, Reply, Route};
use taba_types::{DurationSpec, Namespace};

const A_ALL: &str = r#"
description = "everything in team-a"
[namespace.team-a]
capabilities = ["read", "write", "exec", "host"]
"#;

const B_ALL: &str = r#"
[namespace.team-b]
capabilities = ["read", "write", "exec", "host"]
"#;

fn job_in(ns: &str, name: &str, user: Option<&str>) -> String {
    let user = user
        .map(|u| format!("  user = \"{u}\"\n"))
        .unwrap_or_default();
    format!(
        "name = \"{name}\"\nnamespace = \"{ns}\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/sleep\", \"60\"]\n{user}  resources = {{ cpu = 100, memory = \"64MiB\" }}\n"
    )
}

fn token(c: &Client, policy: &str, ttl: Option<DurationSpec>) -> (String, String) {
    let t = c
        .create_acl_token(&CreateTokenRequest {
            name: format!("{policy}-token"),
            policies: vec![policy.into()],
            management: false,
            ttl,
        })
        .unwrap();
    (t.token.accessor_id, t.secret)
}

/// What namespace team-a holds, for filling paths and spotting leaks.
struct World {
    alloc: String,
    eval: String,
    node: String,
    a_accessor: String,
}

impl World {
    /// The path of `rt` with every parameter filled with one of team-a's
    /// resources; an unknown parameter fails the test.
    fn path(&self, rt: &Route) -> String {
        let mut out = String::new();
        for seg in rt.path.split('/').filter(|s| !s.is_empty()) {
            out.push('/');
            let Some(param) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
                out.push_str(seg);
                continue;
            };
            let value = match (param, rt.path) {
                ("name", p) if p.starts_with("/v1/jobs/") => "secret-a",
                ("name", p) if p.starts_with("/v1/namespaces/") => "team-a",
                ("name", p) if p.starts_with("/v1/acl/policies/") => "a-all",
                ("id", p) if p.starts_with("/v1/allocations/") => &self.alloc,
                ("id", p) if p.starts_with("/v1/evaluations/") => &self.eval,
                ("node" | "node_id", _) => &self.node,
                ("*reference", _) => "busybox:latest",
                ("digest", _) => "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                ("accessor", _) => &self.a_accessor,
                _ => panic!(
                    "route {} {} has a parameter {{{param}}} this test cannot fill: teach World::path about it",
                    rt.method, rt.path
                ),
            };
            out.push_str(value);
        }
        if matches!(rt.auth, AuthClass::Namespace(_)) {
            out.push_str("?namespace=team-a");
        }
        out
    }

    fn leaks(&self, body: &[u8]) -> Option<&'static str> {
        let text = String::from_utf8_lossy(body);
        if text.contains("secret-a") {
            return Some("the job's name");
        }
        if text.contains(&self.alloc) {
            return Some("the allocation's id");
        }
        if text.contains(&self.eval) {
            return Some("the evaluation's id");
        }
        None
    }
}

/// A request body that gets past parsing, acting on team-a.
fn body(rt: &Route) -> (Option<&'static str>, Vec<u8>) {
    match rt.body {
        BodyKind::None => (None, vec![]),
        BodyKind::Job => (
            Some("application/toml"),
            job_in("team-a", "secret-a", Some("root")).into_bytes(),
        ),
        BodyKind::Policy => (Some("application/toml"), A_ALL.as_bytes().to_vec()),
        BodyKind::Tar => (Some("application/x-tar"), b"not a tar".to_vec()),
        BodyKind::Json(_) if rt.path.ends_with("/exec") => (
            Some("application/json"),
            br#"{"command":["id"],"stdin_b64":""}"#.to_vec(),
        ),
        BodyKind::Json(_) if rt.path == "/v1/acl/tokens" => (
            Some("application/json"),
            br#"{"policies":["a-all"]}"#.to_vec(),
        ),
        BodyKind::Json(_) | BodyKind::OptionalJson(_) => (Some("application/json"), b"{}".to_vec()),
    }
}

#[test]
fn every_route_refuses_missing_revoked_expired_and_foreign_tokens() {
    // The image routes' sample reference, busybox:latest, is imported for real.
    require_root("image import chowns");
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(30));
    let c = srv.client();
    let tar = dir.path().join("busybox-oci.tar");
    busybox_oci_tar(&tar);
    c.import_image(&tar).unwrap();
    for ns in ["team-a", "team-b"] {
        c.apply_namespace(&Namespace {
            name: ns.into(),
            ..Namespace::default()
        })
        .unwrap();
    }
    c.apply_acl_policy_toml("a-all", A_ALL.as_bytes()).unwrap();
    c.apply_acl_policy_toml("b-all", B_ALL.as_bytes()).unwrap();
    let agent = FakeAgent::register(c.clone(), node("n1", 4096));
    let reg = c
        .register_job_toml(job_in("team-a", "secret-a", None).as_bytes())
        .unwrap();
    let alloc = eventually("placement", || agent.allocs(0).1.into_iter().next());

    let (a_accessor, a_secret) = token(&c, "a-all", None);
    let (_, b_secret) = token(&c, "b-all", None);
    let (revoked_accessor, revoked) = token(&c, "a-all", None);
    c.revoke_acl_token(&revoked_accessor).unwrap();
    let (_, expired) = token(&c, "a-all", Some(DurationSpec::secs(1)));
    let expired_client = c.with_token(Some(expired.clone()));
    eventually("the 1s token to expire", || {
        (expired_client.acl_token_self().err()?.status() == Some(401)).then_some(())
    });

    let world = World {
        alloc: alloc.id.to_string(),
        eval: reg.eval_id.to_string(),
        node: agent.node.id.to_string(),
        a_accessor,
    };
    let table = routes();
    assert!(
        table.len() >= 30,
        "the route table has {} routes",
        table.len()
    );
    let mut failures = Vec::new();
    for rt in &table {
        let path = world.path(rt);
        let (ct, bytes) = body(rt);
        let send = |secret: Option<&str>| {
            let client = c.with_token(secret.map(str::to_string));
            if matches!(rt.reply, Reply::Raw("application/x-ndjson")) && rt.method == "GET" {
                return stream_prefix(&client);
            }
            client
                .raw(rt.method, &path, ct, &bytes)
                .unwrap_or_else(|e| panic!("{} {path}: {e}", rt.method))
        };
        let cases: [(&str, Option<&str>); 4] = [
            ("no token", None),
            ("revoked token", Some(&revoked)),
            ("expired token", Some(&expired)),
            ("team-b's token", Some(&b_secret)),
        ];
        for (case, secret) in cases {
            let r = send(secret);
            let msg = r.error().map(|e| e.message).unwrap_or_default();
            let ok = match (rt.auth, case) {
                (AuthClass::Bootstrap, _) => r.status == 409,
                // Without a token the handler checks the node credential
                // (api::peer::verify_agent, tested in credentials.rs).
                (AuthClass::Agent, "no token") => continue,
                (AuthClass::Agent, _) => r.status == 403,
                (_, "team-b's token") if rt.method == "GET" => {
                    r.status == 403 || (r.status == 200 && world.leaks(&r.body).is_none())
                }
                (_, "team-b's token") => r.status == 403,
                _ => r.status == 401,
            };
            if !ok || (r.status >= 400 && msg.is_empty()) {
                failures.push(format!(
                    "{} {path} ({:?}) with {case}: {} {msg} {}",
                    rt.method,
                    rt.auth,
                    r.status,
                    world
                        .leaks(&r.body)
                        .map(|l| format!("(leaks {l})"))
                        .unwrap_or_default()
                ));
            }
        }
        // The same request with rights is not refused, so the refusals
        // above are about the token, not a bad sample request.
        if rt.method == "GET" && !matches!(rt.auth, AuthClass::Agent | AuthClass::Bootstrap) {
            let with_rights = match rt.auth {
                AuthClass::Namespace(_) | AuthClass::Scoped(_) | AuthClass::AnyToken => &a_secret,
                _ => &srv.token,
            };
            let r = send(Some(with_rights));
            if matches!(r.status, 401 | 403 | 404 | 400) {
                failures.push(format!(
                    "{} {path} with rights: {} {:?}",
                    rt.method,
                    r.status,
                    r.error()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing of team-a changed.
    assert!(!c.job_status_in("team-a", "secret-a").unwrap().stopped);
    assert_eq!(c.acl_policies().unwrap().len(), 2);
}

/// The event stream (which never ends by itself) as a [`RawResponse`]: every
/// kept event (from index 0) up to the first keep-alive line (the test
/// servers send one after 200 ms of quiet), or the error reply.
fn stream_prefix(client: &Client) -> taba_client::RawResponse {
    use taba_client::api::StreamLine;
    match client.events(&[], None, Some(0)) {
        Ok(stream) => {
            let mut body = Vec::new();
            for line in stream {
                match line.expect("a stream line") {
                    StreamLine::Heartbeat { .. } => break,
                    l => body.extend(serde_json::to_vec(&l).unwrap()),
                }
            }
            taba_client::RawResponse {
                status: 200,
                content_type: "application/x-ndjson".into(),
                body,
                index: None,
                next_token: None,
            }
        }
        Err(taba_client::ClientError::Api {
            status,
            message,
            field,
            code,
        }) => taba_client::RawResponse {
            status,
            content_type: "application/json".into(),
            body: serde_json::to_vec(
                &serde_json::json!({"error": {"message": message, "field": field, "code": code}}),
            )
            .unwrap(),
            index: None,
            next_token: None,
        },
        Err(e) => panic!("GET /v1/event/stream: {e}"),
    }
}

#[test]
fn bootstrap_once_policies_tokens_host_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn taba_store::Store> =
        std::sync::Arc::new(taba_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let srv = TestServer::start_unbootstrapped(dir.path(), store);
    let anon = srv.anonymous();
    let e = anon.list_jobs().unwrap_err();
    assert_eq!(e.status(), Some(401));
    assert!(e.to_string().contains("taba acl bootstrap"), "{e}");

    let boot = anon.acl_bootstrap().unwrap();
    let again = anon.acl_bootstrap().unwrap_err();
    assert_eq!(again.status(), Some(409));
    assert!(
        again.to_string().contains("already bootstrapped"),
        "{again}"
    );
    let m = anon.with_token(Some(boot.secret.clone()));
    assert_eq!(
        m.acl_token_self().unwrap().accessor_id,
        boot.token.accessor_id
    );

    // A bad policy names the field and the line.
    let bad = m
        .apply_acl_policy_toml("dev", b"[namespace.default]\ncapabilities = [\"root\"]\n")
        .unwrap_err();
    assert_eq!(bad.status(), Some(400));
    assert_eq!(bad.field(), Some("namespace.default.capabilities[0]"));
    assert!(bad.to_string().contains("line 2"), "{bad}");
    let unknown = m
        .create_acl_token(&CreateTokenRequest {
            policies: vec!["nope".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(unknown.field(), Some("policies[0]"));

    m.apply_acl_policy_toml(
        "dev",
        b"[namespace.default]\ncapabilities = [\"read\", \"write\"]\n",
    )
    .unwrap();
    let (dev_accessor, dev_secret) = token(&m, "dev", None);
    let dev = anon.with_token(Some(dev_secret.clone()));
    let _agent = FakeAgent::register(m.clone(), node("n1", 4096));
    dev.register_job_toml(job_in("default", "web", None).as_bytes())
        .unwrap();
    // A user for an exec task needs `host`.
    let e = dev
        .register_job_toml(job_in("default", "rooty", Some("root")).as_bytes())
        .unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert_eq!(e.field(), Some("group[0].task[0].user"));
    assert!(e.to_string().contains("host"), "{e}");
    // No node or operator rights, no ACL administration.
    assert_eq!(dev.list_nodes().unwrap_err().status(), Some(403));
    assert_eq!(dev.acl_tokens().unwrap_err().status(), Some(403));
    let ns = dev
        .apply_namespace(&Namespace {
            name: "x".into(),
            ..Namespace::default()
        })
        .unwrap_err();
    assert_eq!(ns.status(), Some(403));
    assert!(ns.to_string().contains("operator write"), "{ns}");

    // Granting `host` takes effect at once for the same token.
    m.apply_acl_policy_toml(
        "dev",
        b"[namespace.default]\ncapabilities = [\"read\", \"write\", \"host\"]\n",
    )
    .unwrap();
    dev.register_job_toml(job_in("default", "rooty", Some("root")).as_bytes())
        .unwrap();

    // Restart on the same store: tokens and policies are durable,
    // bootstrap stays done, a revoke sticks.
    let (gone_accessor, gone_secret) = token(&m, "dev", None);
    // Revoking takes a full accessor id: a prefix names nothing.
    let e = m.revoke_acl_token(&gone_accessor[..8]).unwrap_err();
    assert_eq!(e.code(), Some(taba_client::api::ErrorCode::NotFound), "{e}");
    m.revoke_acl_token(&gone_accessor).unwrap();
    let store = srv.stop();
    let srv = TestServer::start_unbootstrapped(dir.path(), store);
    let anon = srv.anonymous();
    assert_eq!(anon.acl_bootstrap().unwrap_err().status(), Some(409));
    let dev = anon.with_token(Some(dev_secret.clone()));
    assert_eq!(dev.job_status("rooty").unwrap().name, "rooty");
    let gone = anon.with_token(Some(gone_secret));
    assert_eq!(gone.list_jobs().unwrap_err().status(), Some(401));
    let m = anon.with_token(Some(boot.secret.clone()));
    let listed = m.acl_tokens().unwrap();
    assert!(listed.iter().any(|t| t.accessor_id == dev_accessor));
    assert!(!listed.iter().any(|t| t.accessor_id == gone_accessor));
    // Only hashes of secrets are stored.
    let raw = std::fs::read(dir.path().join("state.redb")).unwrap();
    let contains = |s: &str| raw.windows(s.len()).any(|w| w == s.as_bytes());
    assert!(contains(&dev_accessor), "the store file holds the tokens");
    assert!(
        !contains(&boot.secret) && !contains(&dev_secret),
        "the store holds a secret"
    );
}

#[test]
fn with_acls_off_every_user_route_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn taba_store::Store> =
        std::sync::Arc::new(taba_store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let srv = TestServer::start_configured(dir.path(), store, |c| c.acl.enabled = false);
    let anon = srv.anonymous();
    assert!(anon.list_jobs().unwrap().is_empty());
    assert!(anon
        .list_namespaces()
        .unwrap()
        .iter()
        .any(|n| n.name == "default"));
}
