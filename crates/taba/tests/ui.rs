//! The web UI in a real browser: Debian's chromium (headless) driven through
//! chromedriver by fantoccini, against a real `taba dev` with real
//! workloads. Signs in with a token, runs a job from pasted TOML, sees it
//! running, follows its logs, sees a TOML error at its line and a placement
//! failure explained, watches a page change live (from the event stream,
//! without a reload), checks that another namespace's token sees nothing of
//! the job, drains the node, and fits a phone's width.
//!
//! `TABA_UI_SCREENSHOTS=1` also writes PNGs of the main views into
//! `docs/ui/` (docs/ui.md shows them).

mod common;

use common::browser::Browser;
use common::*;
use std::path::PathBuf;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_secs(20);

const JOB: &str = "name = \"web-ui\"\n\
type = \"service\"\n\
[[group]]\n\
name = \"g\"\n\
count = 1\n\
[[group.task]]\n\
name = \"t\"\n\
driver = \"exec\"\n\
command = [\"/bin/sh\", \"-c\", \"while true; do echo hello-from-ui; sleep 1; done\"]\n\
resources = { cpu = 100, memory = \"32MiB\" }\n";

/// Line 3 is a broken table header.
const BAD: &str = "name = \"broken\"\ntype = \"service\"\n[[group]\nname = \"g\"\n";

/// More memory than any node has.
const HUGE: &str = "name = \"too-big\"\n\
[[group]]\n\
name = \"g\"\n\
[[group.task]]\n\
name = \"t\"\n\
driver = \"exec\"\n\
command = [\"/bin/sleep\", \"300\"]\n\
resources = { cpu = 100, memory = \"64TiB\" }\n";

/// Run `f` (the blocking API client) on a thread of its own, outside the
/// browser's runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the client call panicked"))
}

fn screenshot_dir() -> Option<PathBuf> {
    (std::env::var("TABA_UI_SCREENSHOTS").as_deref() == Ok("1"))
        .then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/ui"))
}

async fn shot(b: &Browser, name: &str) {
    if let Some(dir) = screenshot_dir() {
        b.screenshot(&dir, name).await;
    }
}

/// Sign in as `token` (after signing out whoever was).
async fn sign_in(b: &Browser, dev: &Dev, token: &str) {
    b.client.delete_all_cookies().await.unwrap();
    b.goto(&format!("{}/ui/", dev.addr)).await;
    b.wait_in("h1", "Sign in", SHORT).await;
    b.fill("#token", token).await;
    b.click("#signin").await;
    b.wait_in("h1", "Cluster", SHORT).await;
}

/// Paste `toml` into the run form and submit it.
async fn run_job(b: &Browser, dev: &Dev, toml: &str) {
    b.goto(&format!("{}/ui/jobs/run", dev.addr)).await;
    b.fill("#job-toml", toml).await;
    b.click("#run-job").await;
}

/// team-a's job (the one team-b's token must not see) and team-b's token.
fn another_namespace(dev: &Dev) -> String {
    let tmp = tempfile::tempdir().unwrap();
    for ns in ["team-a", "team-b"] {
        let out = dev.cli(&["namespace", "apply", ns]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let policy = job_file(
        tmp.path(),
        "team-b",
        "[namespace.team-b]\ncapabilities = [\"read\", \"write\"]\n",
    );
    let out = dev.cli(&["acl", "policy", "apply", "team-b", policy.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dev.cli(&[
        "--json", "acl", "token", "create", "--policy", "team-b", "--name", "bob",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = job_file(
        tmp.path(),
        "secret",
        "name = \"secret-job\"\nnamespace = \"team-a\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/sleep\", \"300\"]\n  resources = { cpu = 100, memory = \"32MiB\" }\n",
    );
    let out = dev.cli(&["job", "run", "--detach", job.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    created["secret"].as_str().unwrap().to_string()
}

#[test]
fn root_ui_in_chromium() {
    let dev = Dev::start();
    let bob = another_namespace(&dev);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(browse(&dev, &bob));
}

async fn browse(dev: &Dev, bob: &str) {
    let b = Browser::start(1280, 900).await;
    let ui = format!("{}/ui", dev.addr);

    // A wrong token is refused with the reason; the right one signs in.
    b.goto(&format!("{ui}/")).await;
    b.wait_in("h1", "Sign in", SHORT).await;
    shot(&b, "login").await;
    b.fill("#token", "taba_not-a-token").await;
    b.click("#signin").await;
    b.wait_text("token not found", SHORT).await;
    sign_in(&b, dev, &dev.token).await;

    // Run a job from TOML; see it running.
    run_job(&b, dev, JOB).await;
    b.wait_in("h1", "Job web-ui", SHORT).await;
    b.wait_in("#live", "1 of 1 running", LONG).await;
    shot(&b, "job").await;

    // Its allocation's logs, followed live.
    b.click("table.allocs td a").await;
    b.wait_in("h1", "Allocation", SHORT).await;
    b.wait_in("#logs", "hello-from-ui", LONG).await;
    let first = b.text_of("#logs").await.matches("hello-from-ui").count();
    let start = std::time::Instant::now();
    while b.text_of("#logs").await.matches("hello-from-ui").count() <= first {
        assert!(
            start.elapsed() < LONG,
            "the log did not grow while followed"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shot(&b, "allocation").await;

    // A TOML error is shown at its line, and nothing is registered.
    run_job(&b, dev, BAD).await;
    b.wait_in("#run-error", "line 3", SHORT).await;
    let excerpt = b.text_of("pre.excerpt .bad").await;
    assert!(excerpt.contains("[[group]"), "{excerpt}");
    assert!(off_runtime(|| dev.client.job_status("broken")).is_err());

    // A placement failure, explained.
    run_job(&b, dev, HUGE).await;
    b.wait_in("h1", "Job too-big", SHORT).await;
    b.wait_in("#placement-failures", "memory", LONG).await;
    b.wait_in("#placement-failures", "No node has that much memory", SHORT)
        .await;
    shot(&b, "placement-failure").await;

    // The overview, jobs, namespaces, evaluations.
    b.goto(&format!("{ui}/")).await;
    b.wait_in("h1", "Cluster", SHORT).await;
    b.wait_in(".heat", "", SHORT).await;
    shot(&b, "overview").await;
    b.goto(&format!("{ui}/jobs")).await;
    b.wait_in("table.jobs", "web-ui", SHORT).await;
    b.wait_in("table.jobs", "secret-job", SHORT).await;
    shot(&b, "jobs").await;
    b.goto(&format!("{ui}/namespaces")).await;
    b.wait_in("table.namespaces", "team-a", SHORT).await;
    b.goto(&format!("{ui}/evaluations")).await;
    b.wait_in("table.evals", "too-big", SHORT).await;

    // Live: the job page changes when the job is stopped elsewhere (the CLI),
    // with no reload (the page's marker stays).
    b.goto(&format!("{ui}/jobs/default/web-ui")).await;
    b.wait_in("h1", "running", SHORT).await;
    b.client
        .execute("window.tabaMarker = 42; return 1", vec![])
        .await
        .unwrap();
    let out = dev.cli(&["job", "stop", "web-ui"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.wait_in("h1", "dead", LONG).await;
    let marker = b
        .client
        .execute("return window.tabaMarker", vec![])
        .await
        .unwrap();
    assert_eq!(
        marker,
        serde_json::json!(42),
        "the page was reloaded, not updated"
    );

    // Another namespace's token sees nothing of team-a's job.
    sign_in(&b, dev, bob).await;
    b.goto(&format!("{ui}/jobs")).await;
    b.wait_in("h1", "Jobs", SHORT).await;
    let jobs = b.text_of("table.jobs").await;
    assert!(
        !jobs.contains("secret-job"),
        "bob sees team-a's job: {jobs}"
    );
    b.goto(&format!("{ui}/jobs/team-a/secret-job")).await;
    b.wait_text("permission denied", SHORT).await;
    b.goto(&format!("{ui}/nodes")).await;
    b.wait_text("lacks node read", SHORT).await;
    b.goto(&format!("{ui}/namespaces")).await;
    b.wait_in("h1", "Namespaces", SHORT).await;
    let ns = b.text_of("table.namespaces").await;
    assert!(!ns.contains("team-a") && ns.contains("team-b"), "{ns}");

    // Drain the node (as the management token).
    sign_in(&b, dev, &dev.token).await;
    b.goto(&format!("{ui}/nodes")).await;
    b.click("table.nodes td a").await;
    b.wait_in("h1", "Node n1", SHORT).await;
    b.click("#drain").await;
    b.wait_in("h1", "draining", SHORT).await;
    let nodes = off_runtime(|| dev.client.list_nodes()).unwrap();
    assert!(
        nodes.iter().all(|n| n.drain),
        "the API does not show the drain"
    );
    shot(&b, "node").await;

    // A phone's width: the page fits, nothing scrolls sideways.
    b.resize(390, 844).await;
    b.goto(&format!("{ui}/")).await;
    b.wait_in("h1", "Cluster", SHORT).await;
    let wide = b
        .client
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        wide,
        serde_json::json!(true),
        "the overview scrolls sideways on a phone"
    );
    shot(&b, "overview-phone").await;
    b.close().await;
}
