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
//! Run: `cargo bench -p taba --bench vm_migration` (root; scripts/setup.sh
//! first); `TABA_BENCH_RUNS=N` for N runs per row (default 3).
//! BENCHMARKS.md has the results.

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
use taba_types::vm::{VmAccel, VmMachine, VmNetwork};

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
        p.a.migrate_out(&src, &incoming, &MigrationPolicy::default(), &mut |_| {})
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
    let g = vm_guest_dir().join("current");
    qemu::VmPlan {
        name: "direct".into(),
        accel: VmAccel::Tcg,
        machine: VmMachine::Microvm,
        vcpus: 1,
        memory_mib: mib,
        kernel: Some(g.join("vmlinuz")),
        initrd: Some(g.join("initramfs.cpio")),
        cmdline: qemu::kernel_cmdline(Some(cmdline), VmAccel::Tcg, qemu::host_khz()),
        disks: Vec::new(),
        network: VmNetwork::None,
        incoming: incoming.then(|| "defer".into()),
        paused: false,
    }
}

fn spawn(plan: &qemu::VmPlan, dir: &Path) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("qemu-system-x86_64")
        .args(plan.args())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("console")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The same guest, the same QEMU arguments and QMP steps, without taba.
fn direct_run(mib: u64, cmdline: &str) -> Sample {
    let tmp = tempfile::tempdir().unwrap();
    let (sd, dd) = (tmp.path().join("s"), tmp.path().join("d"));
    let mut src = spawn(&plan(mib, cmdline, false), &sd);
    let mut dst = spawn(&plan(mib, cmdline, true), &dd);
    let read = |d: &Path| std::fs::read_to_string(d.join("console")).unwrap_or_default();
    wait_until(
        "the direct source guest",
        Duration::from_secs(180),
        || guest_ready(&read(&sd), cmdline),
        || read(&sd),
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
            uri: "tcp:127.0.0.1:0".into(),
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
            uri: format!("tcp:{}", SocketAddr::from(([127, 0, 0, 1], port))),
        })
        .await
        .unwrap();
        loop {
            let m = s.execute(&qmp::QueryMigrate).await.unwrap();
            match m.status.as_deref() {
                Some("completed") => {
                    let wall_ms = start.elapsed().as_millis() as u64;
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
