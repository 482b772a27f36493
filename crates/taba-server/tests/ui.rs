//! The web UI over HTTP (the browser test is `crates/taba/tests/ui.rs`):
//! sign-in and its cookie, CSRF and origin checks on every form, what a
//! token of another namespace sees and may do, a revoked token ending the
//! session, a TOML error at its line with nothing registered, and the live
//! region alone when the script asks for it.

mod common;

use common::*;
use reqwest::blocking::{Client as Http, Response};
use reqwest::redirect::Policy;
use std::time::Duration;
use taba_client::api::CreateTokenRequest;
use taba_types::Namespace;

const B_ALL: &str = "[namespace.team-b]\ncapabilities = [\"read\", \"write\"]\n";

fn job_in(ns: &str, name: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"{ns}\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/sleep\", \"60\"]\n  resources = {{ cpu = 100, memory = \"64MiB\" }}\n"
    )
}

/// A browser's side: one cookie, redirects not followed.
struct Browser {
    http: Http,
    base: String,
    cookie: String,
    csrf: String,
}

impl Browser {
    /// Sign in with `token`; a refusal is its status and page.
    fn sign_in(srv: &TestServer, token: &str) -> Result<Browser, (u16, String)> {
        let http = Http::builder().redirect(Policy::none()).build().unwrap();
        let base = format!("http://{}", srv.addr);
        let r = http
            .post(format!("{base}/ui/login"))
            .form(&[("token", token)])
            .send()
            .unwrap();
        if r.status() != 303 {
            return Err((r.status().as_u16(), r.text().unwrap_or_default()));
        }
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
            assert!(set.contains(flag), "cookie without {flag}: {set}");
        }
        let cookie = set.split(';').next().unwrap().to_string();
        let mut b = Browser {
            http,
            base,
            cookie,
            csrf: String::new(),
        };
        let page = b.get("/ui/jobs/run").text().unwrap();
        let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
        b.csrf = page[at..at + 64].to_string();
        Ok(b)
    }

    fn get(&self, path: &str) -> Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .unwrap()
    }

    fn post(&self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Response {
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send().unwrap()
    }
}

#[test]
fn ui_sessions_csrf_and_rights() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(30));
    let c = srv.client();
    for ns in ["team-a", "team-b"] {
        c.apply_namespace(&Namespace {
            name: ns.into(),
            ..Namespace::default()
        })
        .unwrap();
    }
    c.apply_acl_policy_toml("b-all", B_ALL.as_bytes()).unwrap();
    let agent = FakeAgent::register(c.clone(), node("n1", 4096));
    c.register_job_toml(job_in("team-a", "secret-a").as_bytes())
        .unwrap();
    let bob = c
        .create_acl_token(&CreateTokenRequest {
            name: "bob".into(),
            policies: vec!["b-all".into()],
            management: false,
            ttl: None,
        })
        .unwrap();

    // Nothing without a session; a wrong token does not start one.
    let anon = Http::builder().redirect(Policy::none()).build().unwrap();
    let r = anon
        .get(format!("http://{}/ui/jobs", srv.addr))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/ui/login"));
    let (status, page) = Browser::sign_in(&srv, "taba_wrong").err().expect("refused");
    assert_eq!(status, 401);
    assert!(page.contains("token not found"), "{page}");

    let admin = Browser::sign_in(&srv, &srv.token).unwrap();
    let origin = format!("http://{}", srv.addr);

    // Forms need the session's CSRF token and this origin; nothing is registered otherwise.
    let toml = job_in("default", "from-ui");
    for (csrf, org) in [
        ("", Some(origin.as_str())),
        ("0000", Some(origin.as_str())),
        (admin.csrf.as_str(), Some("http://evil.example")),
        (admin.csrf.as_str(), Some("null")),
    ] {
        let r = admin.post("/ui/jobs/run", &[("csrf", csrf), ("toml", &toml)], org);
        assert_eq!(r.status(), 403, "csrf {csrf:?} origin {org:?}");
        assert!(c.job_status("from-ui").is_err());
    }
    let r = admin.post(
        "/ui/jobs/run",
        &[("csrf", &admin.csrf), ("toml", &toml)],
        Some(&origin),
    );
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/jobs/default/from-ui");
    assert!(c.job_status("from-ui").is_ok());

    // A syntax error at its line (CRLF from a textarea), nothing registered.
    let bad = "name = \"bad\"\r\ntype = \"service\"\r\n[[group]\r\nname = \"g\"\r\n";
    let r = admin.post(
        "/ui/jobs/run",
        &[("csrf", &admin.csrf), ("toml", bad)],
        None,
    );
    assert_eq!(r.status(), 400);
    let page = r.text().unwrap();
    assert!(page.contains("line 3"), "{page}");
    assert!(
        page.contains("<span class=\"bad\">   3 | [[group]</span>"),
        "{page}"
    );
    assert!(c.job_status("bad").is_err());
    // A validation error names its field.
    let invalid = job_in("default", "x").replace("cpu = 100", "cpu = 0");
    let r = admin.post(
        "/ui/jobs/run",
        &[("csrf", &admin.csrf), ("toml", &invalid)],
        None,
    );
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("resources.cpu"));

    // The live region alone for the script.
    let full = admin.get("/ui/jobs").text().unwrap();
    assert!(full.contains("<!DOCTYPE html>") && full.contains("secret-a"));
    let frag = admin
        .http
        .get(format!("{}/ui/jobs", admin.base))
        .header("cookie", &admin.cookie)
        .header("x-taba-fragment", "1")
        .send()
        .unwrap();
    assert!(frag.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let frag = frag.text().unwrap();
    assert!(frag.starts_with("<h1>") && frag.contains("secret-a") && !frag.contains("<nav>"));

    // Bob (team-b) sees nothing of team-a, and may not drain.
    let b = Browser::sign_in(&srv, &bob.secret).unwrap();
    let jobs = b.get("/ui/jobs").text().unwrap();
    assert!(!jobs.contains("secret-a"), "{jobs}");
    assert_eq!(b.get("/ui/jobs/team-a/secret-a").status(), 403);
    assert_eq!(b.get("/ui/jobs?namespace=team-a").status(), 403);
    assert_eq!(b.get("/ui/nodes").status(), 403);
    let node = agent.node.id.to_string();
    assert_eq!(b.get(&format!("/ui/nodes/{node}")).status(), 403);
    let overview = b.get("/ui/").text().unwrap();
    assert!(overview.contains("lacks node read") && !overview.contains("n1"));
    let ns = b.get("/ui/namespaces").text().unwrap();
    assert!(ns.contains("team-b") && !ns.contains("team-a"), "{ns}");
    let r = b.post(
        &format!("/ui/nodes/{node}/drain"),
        &[("csrf", &b.csrf), ("action", "start"), ("deadline", "1h")],
        None,
    );
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("node write"));
    let r = b.post("/ui/jobs/team-a/secret-a/stop", &[("csrf", &b.csrf)], None);
    assert_eq!(r.status(), 403);
    assert!(!c.job_status_in("team-a", "secret-a").unwrap().stopped);
    // Bob's CSRF token is not the admin's.
    let r = admin.post("/ui/jobs/default/from-ui/stop", &[("csrf", &b.csrf)], None);
    assert_eq!(r.status(), 403);

    // The admin marks the node ineligible, then eligible again.
    for (eligible, want) in [("false", false), ("true", true)] {
        let r = admin.post(
            &format!("/ui/nodes/{node}/eligibility"),
            &[("csrf", &admin.csrf), ("eligible", eligible)],
            None,
        );
        assert_eq!(r.status(), 303);
        assert!(c.list_nodes().unwrap().iter().all(|n| n.eligible == want));
    }
    // The admin drains; revoking Bob's token ends his session.
    let r = admin.post(
        &format!("/ui/nodes/{node}/drain"),
        &[
            ("csrf", &admin.csrf),
            ("action", "start"),
            ("deadline", "1h"),
        ],
        None,
    );
    assert_eq!(r.status(), 303);
    assert!(c.list_nodes().unwrap().iter().all(|n| n.drain));
    c.revoke_acl_token(&bob.token.accessor_id).unwrap();
    let r = b.get("/ui/jobs");
    assert_eq!(r.status(), 303);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .contains("revoked"));
}
