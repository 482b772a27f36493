//! The API as a client author meets it, from its OpenAPI document alone:
//! schemathesis with every check against a live server, and a Rust client
//! generated from `docs/openapi.json` (progenitor, `taba-openapi-client`)
//! running a job on `taba dev`.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use taba_openapi_client::types;

/// `scripts/schemathesis.sh`: every check of schemathesis, a bounded number
/// of examples per operation, against `taba server` in a network namespace
/// of its own. Fails on any failure (or when schemathesis is not installed:
/// `scripts/setup.sh` installs it).
#[test]
fn root_schemathesis_finds_no_failure() {
    require_root();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/schemathesis.sh");
    let examples = std::env::var("TABA_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "8".into());
    let out = Command::new(script)
        .arg(taba_bin())
        .arg(&examples)
        .output()
        .expect("running scripts/schemathesis.sh");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    assert!(text.contains("Test cases:"), "no test ran:\n{text}");
}

fn generated_client(dev: &Dev) -> taba_openapi_client::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let auth = format!("Bearer {}", dev.token);
    headers.insert(reqwest::header::AUTHORIZATION, auth.parse().unwrap());
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let base = match dev.addr.starts_with("http") {
        true => dev.addr.clone(),
        false => format!("http://{}", dev.addr),
    };
    taba_openapi_client::Client::new_with_client(&base, http)
}

fn index_of<T>(r: &taba_openapi_client::ResponseValue<T>) -> u64 {
    r.headers()
        .get("x-taba-index")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("a read answers with X-Taba-Index")
}

#[test]
fn root_generated_client_runs_a_job() {
    let dev = Dev::start();
    let api = generated_client(&dev);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The generated types read a job as the document describes it.
        let spec: types::JobSpec = serde_json::from_value(serde_json::json!({
            "name": "generated",
            "type": "service",
            "group": [{
                "name": "g",
                "count": 1,
                "task": [{
                    "name": "t",
                    "driver": "exec",
                    "command": ["/bin/sleep", "300"],
                    "resources": {"cpu": 100, "memory": "32MiB"},
                }],
            }],
        }))
        .expect("a JobSpec of the generated types");
        let reg = api.post_jobs(Some(0), &spec).await.unwrap().into_inner();
        assert_eq!((reg.job.as_str(), reg.changed), ("generated", true));

        // Its allocation runs: blocking reads of the status until it does.
        let status = api
            .get_jobs_name_status("generated", None, None, None)
            .await
            .unwrap();
        let mut index = index_of(&status);
        let deadline = Instant::now() + Duration::from_secs(60);
        let wait: types::GetJobsNameStatusWait = serde_json::from_value("5s".into()).unwrap();
        let running = loop {
            let r = api
                .get_jobs_name_status("generated", Some(index), None, Some(&wait))
                .await
                .unwrap();
            index = index_of(&r);
            let st = r.into_inner();
            let running: Vec<_> = st
                .allocations
                .iter()
                .filter(|a| serde_json::to_value(a.status).unwrap() == "running")
                .cloned()
                .collect();
            if !running.is_empty() {
                break running;
            }
            assert!(Instant::now() < deadline, "no running allocation: {st:?}");
        };
        let listed = api
            .get_allocations(None, Some("*"), None, None, None)
            .await
            .unwrap()
            .into_inner();
        assert!(listed.iter().any(|a| a.id == running[0].id));

        // Check-and-set refused with its code, typed.
        match api.post_jobs(Some(0), &spec).await {
            Err(taba_openapi_client::Error::ErrorResponse(e)) => {
                assert_eq!(e.status().as_u16(), 409);
                assert_eq!(
                    e.into_inner().error.code,
                    Some(types::ErrorCode::IndexMismatch)
                );
            }
            other => panic!("expected a 409 index_mismatch, got {other:?}"),
        }
        api.delete_jobs_name("generated", None).await.unwrap();
    });
}
