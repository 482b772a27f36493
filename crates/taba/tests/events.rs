//! The event stream (`GET /v1/event/stream`, `taba events`) against real
//! processes: a `taba dev` running an exec job, and `taba server` processes
//! (no agent) for ACL filtering, bad input and a subscriber that never reads.
//! Needs root (taba dev; `Server::start`).

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use taba_client::api::{CreateTokenRequest, EventTopic, StreamEvent};
use taba_client::{Client, ClientError};

const JOB: &str = r#"
name = "evented"
[[group]]
name = "g"
count = 1
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "600"]
  resources = { cpu = 20, memory = "16MiB" }
"#;

fn running(e: &StreamEvent, job: &str) -> bool {
    e.kind == "AllocationUpdated"
        && e.payload["job"] == job
        && e.payload["client_status"] == "running"
}

fn ids(events: &[StreamEvent]) -> Vec<(u64, EventTopic, String, String)> {
    events
        .iter()
        .map(|e| (e.index, e.topic, e.kind.clone(), e.key.clone()))
        .collect()
}

/// `taba job run` while a subscriber follows: the job's registration, its
/// evaluation and its allocation running come in index order; a subscriber
/// that left and resumes from the index it had reached gets exactly what it
/// missed; `taba events` prints them.
#[test]
fn job_run_events_in_index_order_and_resume() {
    let dev = Dev::start();
    let live = follow_events(&dev.client, &[], None, None);
    let dir = tempfile::tempdir().unwrap();
    let file = job_file(dir.path(), "evented", JOB);
    let out = dev.cli(&["job", "run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "job run: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = events_until(&live, Duration::from_secs(60), |s| {
        s.iter().any(|e| running(e, "evented"))
    });
    let indexes: Vec<u64> = seen.iter().map(|e| e.index).collect();
    assert!(
        indexes.windows(2).all(|w| w[0] <= w[1]),
        "not in index order: {indexes:?}"
    );
    let at = |what: &dyn Fn(&StreamEvent) -> bool| {
        seen.iter()
            .find(|e| what(e))
            .unwrap_or_else(|| panic!("missing from {:#?}", ids(&seen)))
            .index
    };
    let registered = at(&|e| e.kind == "JobRegistered" && e.key == "default/evented");
    let evaluated = at(&|e| {
        e.topic == EventTopic::Evaluation
            && e.payload["job"] == "evented"
            && e.payload["status"] == "complete"
    });
    let placed = at(&|e| e.kind == "AllocationUpdated" && e.payload["job"] == "evented");
    let run = at(&|e| running(e, "evented"));
    assert!(
        registered <= evaluated && evaluated <= placed && placed < run,
        "registered {registered}, evaluated {evaluated}, placed {placed}, running {run}"
    );
    let job = seen.iter().find(|e| e.kind == "JobRegistered").unwrap();
    assert_eq!(job.namespace.as_deref(), Some("default"));
    assert_eq!(job.payload["spec"]["name"], "evented");

    // A subscriber that had seen up to the registration resumes from there:
    // it gets exactly the events the live one saw after it.
    let resumed = follow_events(&dev.client, &[], None, Some(registered));
    let last = seen.last().unwrap().index;
    let replayed = events_until(&resumed, Duration::from_secs(30), |s| {
        s.last().is_some_and(|e| e.index >= last)
    });
    // Events at `last` may not all have been read by the live one yet: compare before it.
    let between = |e: &&StreamEvent| e.index > registered && e.index < last;
    let missed: Vec<_> = seen.iter().filter(between).cloned().collect();
    assert!(replayed.iter().any(|e| running(e, "evented")));
    let replayed: Vec<_> = replayed.iter().filter(between).cloned().collect();
    assert!(!missed.is_empty());
    assert_eq!(ids(&replayed), ids(&missed));

    // `taba events` from the start of what is kept, one line per event.
    let mut cli = dev.cli_command(&["events", "--index", "0", "--topic", "job"]);
    let mut child = cli
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("taba events");
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 4096];
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text.contains("JobRegistered") && Instant::now() < deadline {
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains("JobRegistered"))
        .unwrap_or_else(|| panic!("taba events printed: {text}"));
    assert!(
        line.contains("default/evented") && line.contains("job evented version 0"),
        "{line}"
    );
    assert!(!text.contains("Allocation"), "only the Job topic: {text}");
}

fn api_error(r: Result<taba_client::EventStream, ClientError>) -> (u16, Option<String>) {
    match r {
        Ok(_) => panic!("the stream was opened"),
        Err(e) => (e.status().unwrap_or(0), e.field().map(str::to_owned)),
    }
}

fn job_in(ns: &str, name: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"{ns}\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  \
         name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/true\"]\n  \
         resources = {{ cpu = 10, memory = \"8MiB\" }}\n"
    )
}

/// A token that may read namespace a sees a's events and none of b's, and no
/// node events; asking for topic Node or namespace b is refused; a bad
/// topic, namespace or index is a 400 naming it.
#[test]
fn events_filtered_by_acl_and_bad_queries_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &dir.path().join("data"), None);
    let admin = &server.client;
    for ns in ["a", "b"] {
        admin
            .apply_namespace(&taba_types::Namespace {
                name: ns.into(),
                ..Default::default()
            })
            .unwrap();
    }
    admin
        .apply_acl_policy_toml("read-a", b"[namespace.a]\ncapabilities = [\"read\"]\n")
        .unwrap();
    let token = admin
        .create_acl_token(&CreateTokenRequest {
            name: "reader of a".into(),
            policies: vec!["read-a".into()],
            management: false,
            ttl: None,
        })
        .unwrap();
    let reader = Client::new(
        server.url.trim_start_matches("http://"),
        Some(token.secret.clone()),
    );
    let mine = follow_events(&reader, &[], None, None);
    let all = follow_events(admin, &[], None, None);
    for (ns, name) in [
        ("a", "first"),
        ("b", "secret"),
        ("b", "secret2"),
        ("a", "last"),
    ] {
        admin
            .register_job_toml(job_in(ns, name).as_bytes())
            .unwrap();
    }
    let is_last = |e: &StreamEvent| e.kind == "JobRegistered" && e.key == "a/last";
    // The management token sees b's jobs (so they did produce events) ...
    let everything = events_until(&all, Duration::from_secs(30), |s| s.iter().any(is_last));
    assert!(everything.iter().any(|e| e.key == "b/secret"));
    // ... the reader of a sees a's and nothing else.
    let seen = events_until(&mine, Duration::from_secs(30), |s| s.iter().any(is_last));
    assert!(seen.iter().any(|e| e.key == "a/first"));
    for e in &seen {
        assert_eq!(e.namespace.as_deref(), Some("a"), "{e:?}");
        assert_ne!(e.topic, EventTopic::Node);
    }

    assert_eq!(
        api_error(reader.events(&[EventTopic::Node], None, None)),
        (403, Some("topic".into()))
    );
    assert_eq!(
        api_error(reader.events(&[], Some("b"), None)),
        (403, Some("namespace".into()))
    );
    for (query, field) in [
        ("topic=Deployment", "topic"),
        ("topic=job", "topic"),
        ("namespace=nope", "namespace"),
        ("index=-3", "index"),
        ("index=soon", "index"),
        ("wait=5s", "wait"),
    ] {
        let r = admin
            .raw("GET", &format!("/v1/event/stream?{query}"), None, b"")
            .unwrap();
        assert_eq!(
            r.status,
            400,
            "{query}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"]["field"], field, "{query}");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A subscriber that never reads while 1,000 jobs are registered: every
/// registration is committed (none waits on it), the server keeps a bounded
/// ring, the subscriber is cut with a last line saying so, and an index older
/// than the ring is a 410 naming `index`.
#[test]
fn slow_subscriber_is_cut_and_commits_go_on() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (proc, url) = start_server(
        dir.path(),
        &data,
        "[events]\nbuffer = 256\nsubscriber_queue = 16\n",
    );
    let mut taba = std::process::Command::new(taba_bin());
    taba.env("TABA_ADDR", &url);
    let token = acl_bootstrap(taba);
    let addr = url.trim_start_matches("http://").to_string();
    let client = Client::new(&addr, Some(token.clone()));
    let pid = proc.child.as_ref().unwrap().id();

    // A subscriber that sends its request and never reads a byte.
    let mut silent = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        silent,
        "GET /v1/event/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    silent.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);

    // Jobs with a 16 KiB environment: far more than the socket buffers hold.
    let env = "x".repeat(16 * 1024);
    for i in 0..1000 {
        let job = format!(
            "name = \"j{i}\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  \
             driver = \"exec\"\n  command = [\"/bin/true\"]\n  env = {{ PAD = \"{env}\" }}\n  \
             resources = {{ cpu = 10, memory = \"8MiB\" }}\n"
        );
        client
            .register_job_toml(job.as_bytes())
            .unwrap_or_else(|e| panic!("registration {i}: {e}"));
    }
    let after = rss_kib(pid);
    eprintln!("server RSS {before} KiB before, {after} KiB after 1000 registrations");
    // Without a bound the server would hold every event for the subscriber.
    assert!(
        after < before + 256 * 1024,
        "server RSS grew from {before} to {after} KiB"
    );
    assert_eq!(
        api_error(client.events(&[], None, Some(1))).0,
        410,
        "index 1 is older than the 256 events kept"
    );

    // Now read: the queued events, then the last line that says why it ended.
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(60);
    let needle = b"\"code\":\"slow_subscriber\"";
    while Instant::now() < deadline && !got.windows(needle.len()).any(|w| w == needle) {
        match silent.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("\"code\":\"slow_subscriber\"") && text.contains("resume with index="),
        "no end line for the slow subscriber in {} bytes: ...{}",
        got.len(),
        &text[text.len().saturating_sub(600)..]
    );
    drop(proc);
}
