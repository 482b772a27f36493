//! The API as client authors use it, over HTTP: error codes, pages,
//! `namespace=*`, blocking queries, check-and-set, the unknown-parameter
//! rule on every route, full ids on routes that change state, and the
//! evaluations list.

mod common;

use common::*;
use std::time::Duration;
use taba_client::api::{ErrorCode, JobListEntry};
use taba_types::{DesiredStatus, Evaluation, Namespace};

fn code(r: &taba_client::RawResponse) -> ErrorCode {
    r.error()
        .unwrap_or_else(|| panic!("not an error body: {}", String::from_utf8_lossy(&r.body)))
        .code
}

#[test]
fn errors_carry_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let r = c.raw("GET", "/v1/jobs/nope", None, b"").unwrap();
    assert_eq!((r.status, code(&r)), (404, ErrorCode::NotFound));
    let r = c.raw("GET", "/v1/nope", None, b"").unwrap();
    assert_eq!((r.status, code(&r)), (404, ErrorCode::NoRoute));
    let r = c.raw("PUT", "/v1/jobs", None, b"").unwrap();
    assert_eq!((r.status, code(&r)), (405, ErrorCode::MethodNotAllowed));
    let r = c
        .raw("POST", "/v1/jobs", Some("application/json"), b"{")
        .unwrap();
    assert_eq!((r.status, code(&r)), (400, ErrorCode::BadRequest));
    let r = c
        .raw(
            "POST",
            "/v1/jobs",
            Some("application/toml"),
            exec_job("x", 1, "1", "-3").as_bytes(),
        )
        .unwrap();
    assert_eq!(code(&r), ErrorCode::BadRequest, "{:?}", r.error());
    let r = c.raw("POST", "/v1/jobs", Some("text/plain"), b"x").unwrap();
    assert_eq!((r.status, code(&r)), (415, ErrorCode::UnsupportedMediaType));
    let e = c.job("nope").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
}

/// Every route refuses a query parameter it does not declare, the same
/// way, naming it.
#[test]
fn unknown_query_parameters_are_refused_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let agent = srv.anonymous();
    for rt in taba_server::api::routes() {
        // Agent routes refuse user tokens before anything else.
        let c = match rt.auth {
            taba_server::acl::AuthClass::Agent => &agent,
            _ => &c,
        };
        if rt.path == "/v1/acl/bootstrap" {
            // Refused (409) by its guard before any query is read: bootstrapped.
            continue;
        }
        let path: String = taba_server::api::openapi_path(rt.path)
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let r = c
            .raw(rt.method, &format!("{path}?bogus=1"), None, b"")
            .unwrap();
        let what = format!("{} {}", rt.method, rt.path);
        assert_eq!(
            r.status,
            400,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let e = r.error().unwrap();
        assert_eq!(e.code, ErrorCode::UnknownParameter, "{what}");
        assert_eq!(e.field.as_deref(), Some("bogus"), "{what}");
    }
    // Blocking parameters are typed.
    let r = c.raw("GET", "/v1/jobs?index=x", None, b"").unwrap();
    assert_eq!(
        (r.status, r.error().unwrap().field),
        (400, Some("index".into()))
    );
    let r = c.raw("GET", "/v1/jobs?wait=forever", None, b"").unwrap();
    assert_eq!(
        (r.status, r.error().unwrap().field),
        (400, Some("wait".into()))
    );
    let r = c.raw("GET", "/v1/jobs?per_page=0", None, b"").unwrap();
    assert_eq!(
        (r.status, r.error().unwrap().field),
        (400, Some("per_page".into()))
    );
}

#[test]
fn lists_page_and_span_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let _agent = FakeAgent::register(c.clone(), node("n1", 8192));
    c.apply_namespace(&Namespace {
        name: "other".into(),
        ..Default::default()
    })
    .unwrap();
    for name in ["a", "b", "c", "d", "e"] {
        c.register_job_toml(exec_job(name, 1, "100", "32MiB").as_bytes())
            .unwrap();
    }
    let other = exec_job("z", 1, "100", "32MiB")
        .replace("name = \"z\"", "name = \"z\"\nnamespace = \"other\"");
    c.register_job_toml(other.as_bytes()).unwrap();

    // Pages of two walk every job once, in order, the last without a token.
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let p = c
            .page::<JobListEntry>("/v1/jobs", &[("namespace", "*")], 2, token.as_deref())
            .unwrap();
        assert!(p.items.len() <= 2);
        assert!(p.index > 0);
        names.extend(p.items.into_iter().map(|j| j.name));
        token = p.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(names, ["a", "b", "c", "d", "e", "z"]);
    let only = c
        .page::<JobListEntry>("/v1/jobs", &[("namespace", "other")], 10, None)
        .unwrap();
    assert_eq!(only.items.len(), 1);
    assert_eq!(only.next_token, None);

    // Allocations and evaluations page the same way, newest first.
    eventually("six allocations", || {
        (c.list_allocs().unwrap().len() == 6).then_some(())
    });
    let all = c.list_allocs().unwrap();
    let p1 = c
        .page::<taba_client::api::AllocListEntry>("/v1/allocations", &[], 4, None)
        .unwrap();
    let p2 = c
        .page::<taba_client::api::AllocListEntry>(
            "/v1/allocations",
            &[],
            4,
            p1.next_token.as_deref(),
        )
        .unwrap();
    let paged: Vec<_> = p1
        .items
        .iter()
        .chain(&p2.items)
        .map(|a| a.id.clone())
        .collect();
    assert_eq!(paged, all.iter().map(|a| a.id.clone()).collect::<Vec<_>>());
    assert_eq!(p2.next_token, None);
    let evals = c.list_evals().unwrap();
    assert!(evals.len() >= 6, "{}", evals.len());
    assert!(evals
        .windows(2)
        .all(|w| w[0].create_time >= w[1].create_time));
    let in_other = c
        .page::<Evaluation>("/v1/evaluations", &[("namespace", "other")], 100, None)
        .unwrap();
    assert!(!in_other.items.is_empty());
    assert!(in_other.items.iter().all(|e| e.namespace == "other"));
}

#[test]
fn reads_block_until_the_state_moves() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    c.register_job_toml(exec_job("a", 1, "100", "32MiB").as_bytes())
        .unwrap();
    let (_, index) = c
        .blocking_get::<Vec<JobListEntry>>("/v1/jobs", 0, Duration::from_secs(1))
        .unwrap();
    assert!(index > 0);
    // A wait that runs out answers with what there is.
    let (jobs, index) = c
        .blocking_get::<Vec<JobListEntry>>("/v1/jobs", index, Duration::from_millis(300))
        .unwrap();
    assert_eq!(jobs.len(), 1);
    // A change while waiting ends the wait with it in the reply.
    let writer = {
        let c = c.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c.register_job_toml(exec_job("b", 1, "100", "32MiB").as_bytes())
                .unwrap();
        })
    };
    // Each reply comes when the state passed the index asked for (other
    // commits, the scheduler's, may end a wait first); one of them has b.
    let mut after = index;
    for _ in 0..50 {
        let (jobs, i) = c
            .blocking_get::<Vec<JobListEntry>>("/v1/jobs", after, Duration::from_secs(60))
            .unwrap();
        assert!(i > after, "a reply before the wait was over must be newer");
        after = i;
        if jobs.iter().any(|j| j.name == "b") {
            break;
        }
    }
    writer.join().unwrap();
    assert!(c.list_jobs().unwrap().iter().any(|j| j.name == "b"));
    // Reads take it too, with the index in the reply.
    let r = c
        .raw(
            "GET",
            &format!("/v1/jobs/a?index={after}&wait=1ms"),
            None,
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.index.unwrap() >= after);
}

#[test]
fn job_run_check_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let v1 = exec_job("cas", 1, "100", "32MiB");
    c.register_job_toml_if(v1.as_bytes(), Some(0)).unwrap();
    let e = c.register_job_toml_if(v1.as_bytes(), Some(0)).unwrap_err();
    assert_eq!(
        (e.status(), e.code(), e.field()),
        (
            Some(409),
            Some(ErrorCode::IndexMismatch),
            Some("check_index")
        )
    );
    let job = c.job("cas").unwrap();
    let v2 = exec_job("cas", 1, "200", "32MiB");
    let e = c
        .register_job_toml_if(v2.as_bytes(), Some(job.modify_index + 1))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::IndexMismatch));
    assert_eq!(
        c.job("cas").unwrap().version,
        job.version,
        "nothing changed"
    );
    let r = c
        .register_job_toml_if(v2.as_bytes(), Some(job.modify_index))
        .unwrap();
    assert_eq!((r.version, r.changed), (job.version + 1, true));
}

/// `POST /v1/allocations/<prefix>/stop` never stops what the prefix matches.
#[test]
fn state_changing_routes_take_full_ids() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(10));
    let c = srv.client();
    let agent = FakeAgent::register(c.clone(), node("n1", 4096));
    c.register_job_toml(exec_job("web", 1, "100", "32MiB").as_bytes())
        .unwrap();
    let a = eventually("a placement", || agent.allocs(0).1.into_iter().next());
    let id = a.id.as_str().to_owned();
    for prefix in [&id[..1], &id[..8]] {
        for (method, path, body) in [
            ("POST", format!("/v1/allocations/{prefix}/stop"), ""),
            ("POST", format!("/v1/allocations/{prefix}/migrate"), "{}"),
            (
                "POST",
                format!("/v1/allocations/{prefix}/exec"),
                r#"{"command":["true"]}"#,
            ),
        ] {
            let r = c
                .raw(method, &path, Some("application/json"), body.as_bytes())
                .unwrap();
            assert_eq!((r.status, code(&r)), (404, ErrorCode::NotFound), "{path}");
        }
    }
    let node_id = agent.node.id.as_str();
    let r = c
        .raw("DELETE", &format!("/v1/nodes/{}", &node_id[..6]), None, b"")
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(
        c.alloc(&id).unwrap().allocation.desired_status,
        DesiredStatus::Run
    );
    // Reads still resolve a prefix; the full id stops it.
    assert_eq!(c.alloc(&id[..8]).unwrap().id.as_str(), id);
    c.stop_alloc(&id).unwrap();
    assert_eq!(
        c.alloc(&id).unwrap().allocation.desired_status,
        DesiredStatus::Stop
    );
}
