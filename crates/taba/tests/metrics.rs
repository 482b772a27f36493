//! Prometheus metrics, scraped by a real Prometheus (Debian's `prometheus`, installed by
//! scripts/setup.sh): `taba dev` runs a job, Prometheus scrapes `/v1/metrics` with the
//! management token, and the series are queried through Prometheus' own HTTP API. Needs
//! root (taba dev).

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const JOB: &str = r#"
name = "counted"
[[group]]
name = "g"
count = 2
  [[group.task]]
  name = "t"
  driver = "exec"
  command = ["/bin/sleep", "600"]
  resources = { cpu = 20, memory = "16MiB" }
"#;

/// Prometheus on a free loopback port, scraping `target` every second; killed on drop.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str, token: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: taba\n    \
                 metrics_path: /v1/metrics\n    authorization:\n      credentials_file: {}\n    \
                 static_configs:\n      - targets: ['{target}']\n",
                token_file.display()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian's prometheus package; run scripts/setup.sh)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of the instant query `q`'s first series, if it has one.
    fn query(&self, q: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-G"])
            .arg(format!("{}/api/v1/query", self.url))
            .arg("--data-urlencode")
            .arg(format!("query={q}"))
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    fn wait_for(&self, what: &str, mut f: impl FnMut(&Prometheus) -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(90) {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log =
            std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default();
        panic!("timed out waiting for {what}; prometheus log:\n{log}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn root_prometheus_scrapes_the_server_and_queries_its_series() {
    let dev = Dev::start();
    // Without a token the route refuses, like every route.
    let anon = taba_client::Client::new(&dev.addr, None);
    let r = anon.raw("GET", "/v1/metrics", None, b"").unwrap();
    assert_eq!(r.status, 401);
    let file = job_file(&dev.data, "counted", JOB);
    let out = dev.cli(&["job", "run", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let target = dev.addr.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(&target, &dev.token);
    prom.wait_for("the target up", |p| {
        p.query("up{job=\"taba\"}") == Some(1.0)
    });
    prom.wait_for("heartbeats counted", |p| {
        p.query("taba_heartbeats_total").is_some_and(|v| v >= 1.0)
    });
    prom.wait_for("2 allocations running", |p| {
        p.query("taba_allocations{status=\"running\"}") == Some(2.0)
    });
    prom.wait_for("the node ready", |p| {
        p.query("taba_nodes{status=\"ready\"}") == Some(1.0)
    });
    prom.wait_for("placements and commits", |p| {
        p.query("taba_placements_total").is_some_and(|v| v >= 2.0)
            && p.query("taba_store_commit_duration_seconds_count")
                .is_some_and(|v| v >= 1.0)
            && p.query("sum(taba_evaluations_total)")
                .is_some_and(|v| v >= 1.0)
    });
    prom.wait_for("each running allocation's use and its task's counts", |p| {
        p.query("count(taba_allocation_memory_bytes{job_name=\"counted\"})") == Some(2.0)
            && p.query("count(taba_task_restarts{job_name=\"counted\",task=\"t\"})") == Some(2.0)
            && p.query("sum(taba_task_oom_kills{job_name=\"counted\"})") == Some(0.0)
    });
    let _ = dev.cli(&["job", "stop", "counted"]);
}
