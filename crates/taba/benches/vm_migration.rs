//! VM live migration: the `vm` driver (two drivers as a source and a
//! target agent run them: task shim, cgroups, QMP) beside a direct QMP
//! migration of the same guest (the same QEMU command line, the same QMP
//! commands and parameters, no taba), alternating, on loopback, under TCG
//! (QEMU 10). Guests of 256 MiB and 1 GiB, idle and counting (the test
//! guest's `taba.count`: a counter in RAM printed every 100 ms). Reported:
//! medians of QEMU's total time and downtime, and the wall time of the
//! whole migrate call. Targets: driver total <= 1.1 x direct; downtime
//! <= 100 ms idle.
//!
//! Between agents: `taba dev --agents 2` (agents in network namespaces on
//! a bridge) runs the guest as a job and `taba alloc migrate` moves it
//! from one agent to the other and back; beside it the same QEMU command
//! lines run directly inside the same two namespaces and migrate over the
//! bridge with the same QMP steps. Reported: QEMU's total time and
//! downtime, and the wall time: for taba the whole `taba alloc migrate`
//! command (the move asked for, the target placed and prepared, the
//! stream, the switch-over, the CLI's 250 ms polling); for direct from the
//! target's QEMU start (its `-incoming`) to `completed`.
//!
//! Run: `cargo bench -p taba --bench vm_migration` (root; scripts/setup.sh
//! first); `TABA_BENCH_RUNS=N` for N runs per row (default 3);
//! `TABA_BENCH_ONLY=loopback|cluster` for one half. BENCHMARKS.md has the
//! results.

#[path = "../tests/common/mod.rs"]
mod common;

use common::vm::*;
use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taba_driver::migrate::{Migratable, MigrationPolicy};
use taba_driver::vm::{qemu, qmp};
use taba_driver::Driver;

const DEFAULT_RUNS: usize = 3;

#[derive(Debug, Clone, Copy)]
struct Sample {
    total_ms: u64,
    downtime_ms: u64,
    wall_ms: u64,
}

fn main() {
    require_root();
    let runs = std::env::var("TABA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_RUNS);
    let only = std::env::var("TABA_BENCH_ONLY").unwrap_or_default();
    if only != "loopback" {
        cluster_rows(runs);
    }
    if only == "cluster" {
        return;
    }
    let mut rows = Vec::new();
    for (mib, cmdline, what) in [
        (256, "", "256 MiB idle"),
        (256, "taba.count", "256 MiB counting"),
        (1024, "", "1 GiB idle"),
        (1024, "taba.count", "1 GiB counting"),
    ] {
        let mut direct = Vec::new();
        let mut driver = Vec::new();
        for run in 0..runs {
            direct.push(direct_run(mib, cmdline));
            driver.push(driver_run(mib, cmdline));
            eprintln!(
                "{what} run {run}: direct {:?} driver {:?}",
                direct[run], driver[run]
            );
        }
        rows.push((what, median(&direct), median(&driver)));
    }
    print_rows("loopback, the vm driver", &rows);
}

fn print_rows(title: &str, rows: &[(&str, Sample, Sample)]) {
    println!("\n{title}\n");
    println!("| guest | direct total ms | taba total ms | ratio | direct downtime ms | taba downtime ms | direct wall ms | taba wall ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (what, d, t) in rows {
        println!(
            "| {what} | {} | {} | {:.2} | {} | {} | {} | {} |",
            d.total_ms,
            t.total_ms,
            t.total_ms as f64 / d.total_ms.max(1) as f64,
            d.downtime_ms,
            t.downtime_ms,
            d.wall_ms,
            t.wall_ms
        );
    }
}

fn median(v: &[Sample]) -> Sample {
    let pick = |f: fn(&Sample) -> u64| {
        let mut x: Vec<u64> = v.iter().map(f).collect();
        x.sort();
        x[x.len() / 2]
    };
    Sample {
        total_ms: pick(|s| s.total_ms),
        downtime_ms: pick(|s| s.downtime_ms),
        wall_ms: pick(|s| s.wall_ms),
    }
}

fn guest_ready(log: &str, cmdline: &str) -> bool {
    if cmdline.contains("taba.count") {
        counts(log).last().copied().unwrap_or(0) >= 10
    } else {
        log.contains("taba-guest: init ok")
    }
}

/// Through the driver: Pair of drivers, start, prepare_incoming, migrate_out.
fn driver_run(mib: u64, cmdline: &str) -> Sample {
    let p = pair();
    let src_cfg = task(&p.root, &p.cgroups, "source", cmdline, mib);
    let src = p.a.start(&src_cfg).expect("source starts");
    wait_until(
        "the source guest",
        Duration::from_secs(180),
        || guest_ready(&console(&src_cfg), cmdline),
        || console(&src_cfg),
    );
    let info = p.a.source_info(&src).unwrap();
    let dst_cfg = task(&p.root, &p.cgroups, "target", cmdline, mib);
    let (dst, incoming) =
        p.b.prepare_incoming(&dst_cfg, IpAddr::V4(Ipv4Addr::LOCALHOST), &info)
            .unwrap();
    let start = Instant::now();
    let stats =
        p.a.migrate_out(&src, &incoming, &MigrationPolicy::default(), &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let wall_ms = start.elapsed().as_millis() as u64;
    p.b.finish_incoming(&dst, Duration::from_secs(30)).unwrap();
    let _ = p.a.wait(&src);
    let _ = p.a.destroy(&src);
    let _ = p.b.stop(&dst, libc::SIGKILL, Duration::ZERO);
    let _ = p.b.wait(&dst);
    let _ = p.b.destroy(&dst);
    Sample {
        total_ms: stats.total_ms,
        downtime_ms: stats.downtime_ms,
        wall_ms,
    }
}

fn plan(mib: u64, cmdline: &str, incoming: bool) -> qemu::VmPlan {
    direct_plan(mib, Some(cmdline), incoming)
}

/// Where a direct migration runs: loopback, or two network namespaces.
struct Net {
    src_ns: Option<String>,
    dst_ns: Option<String>,
    listen: IpAddr,
}

const LOOPBACK: Net = Net {
    src_ns: None,
    dst_ns: None,
    listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
};

fn spawn(plan: &qemu::VmPlan, dir: &Path, ns: Option<&str>) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
            c
        }
        None => Command::new("qemu-system-x86_64"),
    };
    cmd.args(plan.args())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("console")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The same guest, the same QEMU arguments and QMP steps, without taba.
fn direct_run(mib: u64, cmdline: &str) -> Sample {
    direct_run_on(mib, cmdline, &LOOPBACK)
}

fn direct_run_on(mib: u64, cmdline: &str, net: &Net) -> Sample {
    let tmp = tempfile::tempdir().unwrap();
    let (sd, dd) = (tmp.path().join("s"), tmp.path().join("d"));
    let mut src = spawn(&plan(mib, cmdline, false), &sd, net.src_ns.as_deref());
    let read = |d: &Path| std::fs::read_to_string(d.join("console")).unwrap_or_default();
    wait_until(
        "the direct source guest",
        Duration::from_secs(180),
        || guest_ready(&read(&sd), cmdline),
        || read(&sd),
    );
    let dst_started = Instant::now();
    let mut dst = spawn(&plan(mib, cmdline, true), &dd, net.dst_ns.as_deref());
    let sock = dd.join("qmp.sock");
    wait_until(
        "the direct target's QMP socket",
        Duration::from_secs(30),
        || sock.exists(),
        String::new,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sample = rt.block_on(async {
        let t = Duration::from_secs(10);
        let mut d = qmp::Qmp::connect(&dd.join("qmp.sock"), t).await.unwrap();
        let caps = |ac| qmp::MigrateSetCapabilities {
            capabilities: vec![
                qmp::MigrationCapability {
                    capability: "events".into(),
                    state: true,
                },
                qmp::MigrationCapability {
                    capability: "auto-converge".into(),
                    state: ac,
                },
            ],
        };
        d.execute(&caps(false)).await.unwrap();
        d.execute(&qmp::MigrateIncoming {
            uri: format!("tcp:{}", SocketAddr::new(net.listen, 0)),
        })
        .await
        .unwrap();
        let port: u16 = d.execute(&qmp::QueryMigrate).await.unwrap().socket_address[0]
            .port
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        let mut s = qmp::Qmp::connect(&sd.join("qmp.sock"), t).await.unwrap();
        s.execute(&caps(true)).await.unwrap();
        s.execute(&qmp::MigrateSetParameters {
            downtime_limit: Some(100),
            max_bandwidth: Some(100 << 30),
        })
        .await
        .unwrap();
        let start = Instant::now();
        s.execute(&qmp::Migrate {
            uri: format!("tcp:{}", SocketAddr::new(net.listen, port)),
        })
        .await
        .unwrap();
        loop {
            let m = s.execute(&qmp::QueryMigrate).await.unwrap();
            match m.status.as_deref() {
                Some("completed") => {
                    let wall_ms = if net.dst_ns.is_some() {
                        dst_started.elapsed().as_millis() as u64
                    } else {
                        start.elapsed().as_millis() as u64
                    };
                    let _ = s.execute(&qmp::Quit).await;
                    break Sample {
                        total_ms: m.total_time.unwrap_or(0),
                        downtime_ms: m.downtime.unwrap_or(0),
                        wall_ms,
                    };
                }
                Some("failed") | Some("cancelled") => panic!("direct migration: {m:?}"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let _ = src.wait();
    let _ = dst.kill();
    let _ = dst.wait();
    sample
}

/// `taba alloc migrate` between two agents in network namespaces beside
/// direct QEMU migrations inside the same namespaces.
fn cluster_rows(runs: usize) {
    let guest = vm_guest_dir();
    let c = DevCluster::start(
        2,
        &[
            "--vm-image-dir",
            guest.to_str().unwrap(),
            "--vm-accel",
            "tcg",
            "--no-rebalance",
        ],
    );
    let mut rows = Vec::new();
    for (cmdline, what) in [("", "256 MiB idle"), ("taba.count", "256 MiB counting")] {
        let job = if cmdline.is_empty() {
            "idle"
        } else {
            "counting"
        };
        let id = run_vm_job(&c, job, cmdline);
        let mut direct = Vec::new();
        let mut taba = Vec::new();
        let mut id = id;
        for run in 0..runs {
            let a = c.client.alloc(&id).unwrap().allocation;
            let (from, to) = if a.node_name == "n1" { (1, 2) } else { (2, 1) };
            let net = Net {
                src_ns: Some(format!("{}-n{from}", c.prefix)),
                dst_ns: Some(format!("{}-n{to}", c.prefix)),
                listen: c.agent_ip(to).parse().unwrap(),
            };
            direct.push(direct_run_on(256, cmdline, &net));
            let (sample, next) = taba_migrate(&c, &id, &format!("n{to}"));
            taba.push(sample);
            id = next;
            eprintln!(
                "cluster {what} run {run}: direct {:?} taba {:?}",
                direct[run], taba[run]
            );
        }
        let out = c.cli(&["job", "stop", job]);
        assert!(out.status.success(), "{out:?}");
        rows.push((what, median(&direct), median(&taba)));
    }
    print_rows(
        "between agents in network namespaces: `taba alloc migrate` vs direct QMP",
        &rows,
    );
}

/// Run a one-VM job; its allocation once the guest is ready.
fn run_vm_job(c: &DevCluster, job: &str, cmdline: &str) -> String {
    let toml = format!(
        r#"
name = "{job}"
type = "service"
[[group]]
name = "g"
migrate = {{ min_healthy_time = "1s", rebalance = false }}
  [[group.task]]
  name = "guest"
  driver = "vm"
  kernel = "current/vmlinuz"
  initrd = "current/initramfs.cpio"
  cmdline = "{cmdline}"
  resources = {{ cpu = 500, memory = "256MiB" }}
"#
    );
    let f = job_file(&c.data, job, &toml);
    let out = c.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let mut found = None;
    c.wait_for("the VM ready", Duration::from_secs(180), || {
        let Ok(st) = c.client.job_status(job) else {
            return false;
        };
        found = st.allocations.iter().find_map(|e| {
            let a = c.client.alloc(e.id.as_str()).ok()?.allocation;
            let log = std::fs::read_to_string(
                c.data
                    .join("agents")
                    .join(&a.node_name)
                    .join("allocs")
                    .join(a.id.as_str())
                    .join("logs/guest.stdout.0"),
            )
            .unwrap_or_default();
            (a.client_status.to_string() == "running" && guest_ready(&log, cmdline))
                .then(|| a.id.to_string())
        });
        found.is_some()
    });
    found.unwrap()
}

/// One `taba alloc migrate ID --to NODE`: its figures and the new allocation.
fn taba_migrate(c: &DevCluster, id: &str, to: &str) -> (Sample, String) {
    let start = Instant::now();
    let out = c.cli(&["alloc", "migrate", id, "--to", to]);
    let wall_ms = start.elapsed().as_millis() as u64;
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail());
    let mut st = None;
    c.wait_for(
        "the source's final figures",
        Duration::from_secs(30),
        || {
            st = c.client.alloc(id).unwrap().allocation.migration_status;
            st.as_ref().is_some_and(|s| s.completed.is_some())
        },
    );
    let st = st.unwrap();
    let done = st.completed.clone().unwrap();
    let next = st.target_alloc.to_string();
    c.wait_for("the target running", Duration::from_secs(60), || {
        c.client
            .alloc(&next)
            .is_ok_and(|n| n.allocation.client_status.to_string() == "running")
    });
    (
        Sample {
            total_ms: done.elapsed_ms,
            downtime_ms: done.downtime_ms.unwrap_or(0),
            wall_ms,
        },
        next,
    )
}
