//! End to end: a real `taba server` and two real `taba agent` processes on
//! loopback, real containers on both; `taba node drain n1` follows the drain
//! and exits 0 when it is done, and then every allocation runs on n2.
//! Needs root and the busybox image (`scripts/setup.sh`).

mod common;

use common::{busybox_tar, Cluster};
use std::time::Duration;
use taba_types::{ClientStatus, DesiredStatus};

const JOB: &str = r#"
name = "web"
scoring = "spread"
[[group]]
name = "g"
count = 4
migrate = { max_parallel = 2, min_healthy_time = "1s" }
  [[group.task]]
  name = "sleeper"
  driver = "container"
  image = "busybox"
  command = ["sleep", "1000"]
  resources = { cpu = 100, memory = "32MiB", pids = 16 }
"#;

#[test]
fn root_drain_moves_every_container_to_the_other_node_and_the_cli_waits_for_it() {
    let cluster = Cluster::with_agents(&["n1", "n2"]);
    let c = &cluster.client;
    c.import_image(&busybox_tar()).expect("importing busybox");
    let file = cluster.dir().join("web.toml");
    std::fs::write(&file, JOB).unwrap();
    let out = cluster.cli(&["job", "run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "job run: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let running_on = |node: &str| -> usize {
        c.job_status("web")
            .map(|s| {
                s.allocations
                    .iter()
                    .filter(|a| {
                        a.node == node
                            && a.desired_status == DesiredStatus::Run
                            && a.status == ClientStatus::Running
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    cluster.wait_for("4 running, on both nodes", Duration::from_secs(60), || {
        running_on("n1") + running_on("n2") == 4 && running_on("n1") > 0 && running_on("n2") > 0
    });
    let before = running_on("n1");

    let out = cluster.cli(&["node", "drain", "n1", "--deadline", "3m"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node drain: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert!(stdout.contains("Drain of node n1 complete"), "{stdout}");
    // Not a terminal: one line per change, the first with what is left.
    assert!(stdout.contains(&format!("{before} left")), "{stdout}");

    let st = c.job_status("web").unwrap();
    let live: Vec<_> = st
        .allocations
        .iter()
        .filter(|a| a.desired_status == DesiredStatus::Run && !a.status.is_terminal())
        .collect();
    assert_eq!(live.len(), 4, "{live:?}");
    for a in &live {
        assert_eq!(a.node, "n2", "{a:?}");
        assert_eq!(a.status, ClientStatus::Running, "{a:?}");
    }
    let moved: Vec<_> = st
        .allocations
        .iter()
        .filter(|a| a.node == "n1" && a.desired_status == DesiredStatus::Stop)
        .collect();
    assert_eq!(moved.len(), before);
    for a in &moved {
        let why = c
            .alloc(a.id.as_str())
            .unwrap()
            .allocation
            .desired_description;
        assert!(why.contains("node drain"), "{why}");
    }

    let out = cluster.cli(&["node", "status", "n1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Eligible   = false"), "{text}");
    assert!(text.contains("last drain completed"), "{text}");
    // --disable makes it eligible again.
    let out = cluster.cli(&["node", "drain", "n1", "--disable"]);
    assert!(out.status.success());
    let n = c.node("n1").unwrap();
    assert_eq!(n.node.eligibility, taba_types::Eligibility::Eligible);
}
