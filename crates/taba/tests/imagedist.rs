//! Image distribution end to end: a real `taba server` and a real `taba agent` as separate
//! processes on loopback, each with its own data dir and image store. The image is imported
//! into the server only; the agent fetches it when a container needs it, once, and a blob
//! that is not what its digest says is refused with a task event and leaves nothing behind.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use taba_client::Client;
use taba_types::TaskEvent;

fn job(name: &str, count: u32) -> String {
    format!(
        r#"name = "{name}"
type = "service"
[[group]]
name = "g"
count = {count}
restart = {{ attempts = 0, interval = "1m", delay = "1s", mode = "fail" }}
reschedule = {{ attempts = 0, interval = "1h", delay = "30s" }}
  [[group.task]]
  name = "t"
  driver = "container"
  image = "busybox:latest"
  command = ["sleep", "3600"]
  resources = {{ cpu = 50, memory = "32MiB" }}
"#
    )
}

/// Polls `f` for up to 60 s; panics with both logs.
fn wait(what: &str, procs: &[&Proc], mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs: Vec<String> = procs.iter().map(|p| p.log_tail()).collect();
    panic!(
        "timed out waiting for {what}; logs:\n{}",
        logs.join("\n-----\n")
    );
}

/// The events of the one task of every allocation of `job`.
fn events(c: &Client, job: &str) -> Vec<Vec<TaskEvent>> {
    c.job_status(job)
        .unwrap()
        .allocations
        .iter()
        .map(|a| {
            let d = c.alloc(a.id.as_str()).unwrap();
            d.allocation
                .task_states
                .get("t")
                .map(|t| t.events.clone())
                .unwrap_or_default()
        })
        .collect()
}

fn running(c: &Client, job: &str, n: usize) -> bool {
    c.job_status(job).is_ok_and(|s| {
        s.allocations
            .iter()
            .filter(|a| a.status.to_string() == "running")
            .count()
            == n
    })
}

fn all_terminal(c: &Client, job: &str) -> bool {
    c.job_status(job)
        .is_ok_and(|s| s.allocations.iter().all(|a| a.status.is_terminal()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn root_agent_fetches_images_from_the_server_once_and_refuses_corrupt_blobs() {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("taba-e2e-imagedist-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = tmp.path();
    let _cleanup = CleanupGuard(root.to_path_buf());
    let server_dir = root.join("server");
    let agent_dir = root.join("agent");
    std::fs::create_dir_all(&server_dir).unwrap();
    std::fs::create_dir_all(&agent_dir).unwrap();

    let server_cfg = root.join("server.toml");
    std::fs::write(
        &server_cfg,
        format!(
            "data_dir = \"{}\"\nhttp = \"127.0.0.1:0\"\n",
            server_dir.display()
        ),
    )
    .unwrap();
    let (server, addr) = Proc::start(
        &["server", "--config", server_cfg.to_str().unwrap()],
        &root.join("server.log"),
        "API on http://",
    );
    let addr = addr.trim().to_string();
    let agent_cfg = root.join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "data_dir = \"{}\"\nserver = \"http://{addr}\"\nhttp = \"127.0.0.1:0\"\nname = \"imagedist-n1\"\n",
            agent_dir.display()
        ),
    )
    .unwrap();
    let (agent, _) = Proc::start(
        &["agent", "--config", agent_cfg.to_str().unwrap()],
        &root.join("agent.log"),
        "taba agent: node",
    );
    let mut taba = Command::new(taba_bin());
    taba.env("TABA_ADDR", &addr);
    let c = Client::new(&addr, Some(acl_bootstrap(taba)));
    wait("the agent's node is ready", &[&server, &agent], || {
        c.list_nodes()
            .is_ok_and(|n| n.iter().any(|n| n.status.to_string() == "ready"))
    });

    // The image is on the server only.
    let info = c.import_image(&busybox_tar()).unwrap();
    let agent_images = agent_dir.join("images");
    let agent_store = taba_image::ImageStore::open(&agent_images).unwrap();
    assert!(agent_store.list().unwrap().is_empty());

    // Two allocations that need it at once: one download between them.
    c.register_job_toml(job("first", 2).as_bytes()).unwrap();
    wait(
        "2 containers running on the agent",
        &[&server, &agent],
        || running(&c, "first", 2),
    );
    let ev = events(&c, "first");
    let fetched: Vec<&TaskEvent> = ev
        .iter()
        .flatten()
        .filter(|e| e.kind == "Image Fetched")
        .collect();
    let downloads: Vec<&&TaskEvent> = fetched
        .iter()
        .filter(|e| e.message.contains("from the servers: "))
        .collect();
    assert_eq!(downloads.len(), 1, "exactly one download: {ev:#?}");
    assert!(
        downloads[0].message.contains("2 blobs"),
        "config and the one layer: {}",
        downloads[0].message
    );
    let img = agent_store
        .resolve("busybox")
        .unwrap()
        .expect("on the agent");
    assert_eq!(img.id, info.id, "the same image, by digest");
    let server_store = taba_image::ImageStore::open(&server_dir.join("images")).unwrap();
    let server_manifest = server_store.manifest("busybox").unwrap().unwrap();
    assert_eq!(
        agent_store.manifest("busybox").unwrap().as_ref(),
        Some(&server_manifest),
        "the agent holds the server's blobs"
    );

    // A second job with the same image: nothing is fetched.
    c.register_job_toml(job("second", 1).as_bytes()).unwrap();
    wait("the second job running", &[&server, &agent], || {
        running(&c, "second", 1)
    });
    let ev = events(&c, "second");
    assert!(
        ev.iter()
            .flatten()
            .all(|e| e.kind != "Image Fetched" && e.kind != "Downloading Image"),
        "no fetch for an image the node has: {ev:#?}"
    );
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert_eq!(
        log.matches("fetched image busybox:latest").count(),
        1,
        "{log}"
    );

    // Stop everything; drop the agent's copy; corrupt the server's layer blob.
    c.stop_job("first").unwrap();
    c.stop_job("second").unwrap();
    wait("the jobs stopped", &[&server, &agent], || {
        all_terminal(&c, "first") && all_terminal(&c, "second")
    });
    wait("the agent's copy removed", &[&server, &agent], || {
        agent_store.remove("busybox").is_ok()
    });
    assert!(names(&agent_images.join("blobs/sha256")).is_empty());
    let m = agent_store.manifest("busybox").unwrap();
    assert!(m.is_none());
    let layer = server_dir
        .join("images/blobs/sha256")
        .join(&server_manifest.layers[0].digest[7..]);
    let good = std::fs::read(&layer).unwrap();
    let mut bad = good.clone();
    bad[1000] ^= 0xff;
    std::fs::write(&layer, &bad).unwrap();

    c.register_job_toml(job("third", 1).as_bytes()).unwrap();
    wait("the third job failed", &[&server, &agent], || {
        c.job_status("third").is_ok_and(|s| {
            s.allocations
                .iter()
                .any(|a| a.status.to_string() == "failed")
        })
    });
    let ev = events(&c, "third");
    let failure = ev
        .iter()
        .flatten()
        .find(|e| e.kind == "Image Fetch Failed")
        .unwrap_or_else(|| panic!("a fetch failure event: {ev:#?}"));
    assert!(
        failure.message.contains("digest mismatch")
            && failure.message.contains(&server_manifest.layers[0].digest),
        "{}",
        failure.message
    );
    // Nothing of it in the agent's store.
    assert!(agent_store.list().unwrap().is_empty());
    for sub in ["blobs/sha256", "layers", "images", "tmp"] {
        assert!(
            names(&agent_images.join(sub)).is_empty(),
            "{sub}: {:?}",
            names(&agent_images.join(sub))
        );
    }

    // With the blob repaired, the same image is fetched and runs.
    std::fs::write(&layer, &good).unwrap();
    c.register_job_toml(job("fourth", 1).as_bytes()).unwrap();
    wait("the fourth job running", &[&server, &agent], || {
        running(&c, "fourth", 1)
    });
    for j in ["third", "fourth"] {
        let _ = c.stop_job(j);
    }
    wait("the jobs stopped", &[&server, &agent], || {
        all_terminal(&c, "third") && all_terminal(&c, "fourth")
    });
}
