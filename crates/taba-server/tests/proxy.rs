//! `alloc logs` and `alloc exec` are proxied to the agent API at the node's
//! `http_addr`. The agent here is a small real HTTP server that implements
//! the agent's side of the contract.

mod common;

use axum::extract::{Path, Query};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::*;
use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;
use taba_client::api::{b64, ExecRequest, ExecResponse};

fn start_agent_api() -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route(
                    "/v1/client/allocations/{id}/logs",
                    get(
                        |Path(id): Path<String>, Query(q): Query<HashMap<String, String>>| async move {
                            format!(
                                "logs of {} task={} type={} follow={} offset={}\n",
                                id, q["task"], q["type"], q["follow"], q["offset"]
                            )
                        },
                    ),
                )
                .route(
                    "/v1/client/allocations/{id}/exec",
                    post(
                        |Query(q): Query<HashMap<String, String>>, Json(req): Json<ExecRequest>| async move {
                            use axum::response::IntoResponse;
                            // Commands that make this agent misbehave for the limit tests.
                            match req.command[0].as_str() {
                                "huge" => {
                                    return Json(ExecResponse {
                                        exit_code: 0,
                                        stdout_b64: b64::encode(&vec![b'x'; 1 << 20]),
                                        stderr_b64: String::new(),
                                    })
                                    .into_response()
                                }
                                "slow" => tokio::time::sleep(Duration::from_secs(10)).await,
                                "capped" => {
                                    return (
                                        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                                        Json(serde_json::json!({"error": {"message": "exec output is larger than 5 bytes (agent option exec_max_output); the command was killed", "field": null}})),
                                    )
                                        .into_response()
                                }
                                _ => {}
                            }
                            let mut stdin = b64::decode(&req.stdin_b64).unwrap();
                            stdin.reverse();
                            Json(ExecResponse {
                                exit_code: 3,
                                stdout_b64: b64::encode(&stdin),
                                stderr_b64: b64::encode(
                                    format!("{} in {}", req.command.join(" "), q["task"]).as_bytes(),
                                ),
                            })
                            .into_response()
                        },
                    ),
                );
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

#[test]
fn logs_and_exec_are_proxied_to_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(30));
    let c = srv.client();
    let agent_api = start_agent_api();
    let mut n = node("n1", 4096);
    n.http_addr = agent_api.to_string();
    let agent = FakeAgent::register(c.clone(), n);
    c.register_job_toml(exec_job("p", 1, "1", "64MiB").as_bytes())
        .unwrap();
    let a = eventually("placement", || agent.allocs(0).1.into_iter().next());

    let mut logs = String::new();
    c.alloc_logs(&a.id.as_str()[..8], None, true, false, 5)
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert_eq!(
        logs,
        format!(
            "logs of {} task=t type=stderr follow=false offset=5\n",
            a.id
        )
    );

    let out = c
        .alloc_exec(a.id.as_str(), Some("t"), &["cat".into()], b"abc")
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(b64::decode(&out.stdout_b64).unwrap(), b"cba");
    assert_eq!(b64::decode(&out.stderr_b64).unwrap(), b"cat in t");

    // The exec is audited in the allocation's events: who, what, when.
    let events = c.alloc(a.id.as_str()).unwrap().allocation.events;
    let e = events.last().expect("an audit event");
    assert_eq!(e.kind, "Exec");
    assert!(e.actor.contains("\"test\""), "{e:?}");
    assert_eq!(e.message, "task t: [\"cat\"]");
    assert!(e.time > 0);
    // A token without `exec` is refused, and nothing is recorded.
    c.apply_acl_policy_toml(
        "reader",
        b"[namespace.default]\ncapabilities = [\"read\"]\n",
    )
    .unwrap();
    let reader = c
        .create_acl_token(&taba_client::api::CreateTokenRequest {
            name: "reader".into(),
            policies: vec!["reader".into()],
            ..Default::default()
        })
        .unwrap();
    let err = c
        .with_token(Some(reader.secret))
        .alloc_exec(a.id.as_str(), Some("t"), &["id".into()], b"")
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(err.to_string().contains("lacks \"exec\""), "{err}");
    assert_eq!(
        c.alloc(a.id.as_str()).unwrap().allocation.events.len(),
        events.len()
    );
}

#[test]
fn unreachable_agent_is_a_bad_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(dir.path(), Duration::from_secs(30));
    let c = srv.client();
    let mut n = node("n1", 4096);
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    n.http_addr = l.local_addr().unwrap().to_string();
    drop(l);
    let agent = FakeAgent::register(c.clone(), n);
    c.register_job_toml(exec_job("p", 1, "1", "64MiB").as_bytes())
        .unwrap();
    let a = eventually("placement", || agent.allocs(0).1.into_iter().next());
    let err = c
        .alloc_exec(a.id.as_str(), None, &["ls".into()], b"")
        .unwrap_err();
    assert_eq!(err.status(), Some(502));
}

/// `alloc exec` caps on the server side: an oversized reply is refused
/// without being held, a silent agent is timed out, and the agent's own cap
/// errors keep their status.
#[test]
fn exec_output_and_duration_are_capped_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start_configured(
        dir.path(),
        std::sync::Arc::new(taba_store::MemoryStore::new()),
        |c| {
            c.exec_timeout = Duration::from_millis(500);
            c.exec_max_output = 64 << 10;
        },
    );
    let c = srv.client();
    let mut n = node("n1", 4096);
    n.http_addr = start_agent_api().to_string();
    let agent = FakeAgent::register(c.clone(), n);
    c.register_job_toml(exec_job("p", 1, "1", "64MiB").as_bytes())
        .unwrap();
    let a = eventually("placement", || agent.allocs(0).1.into_iter().next());
    let exec = |cmd: &str| {
        c.alloc_exec(a.id.as_str(), None, &[cmd.into()], b"")
            .unwrap_err()
    };
    let e = exec("huge");
    assert_eq!(e.status(), Some(502), "{e}");
    assert!(
        e.to_string().contains("server option exec_max_output"),
        "{e}"
    );
    let e = exec("slow");
    assert_eq!(e.status(), Some(504), "{e}");
    assert!(e.to_string().contains("server option exec_timeout"), "{e}");
    let e = exec("capped");
    assert_eq!(e.status(), Some(413), "{e}");
    assert!(
        e.to_string().contains("agent option exec_max_output"),
        "{e}"
    );
}
