//! VM start: `taba job run` of a vm job until the guest's init marker is
//! on its serial console, beside the same QEMU command line run directly
//! until the same marker, alternating, under TCG (QEMU 10). The test guest
//! of `scripts/vm-guest.sh` (256 MiB, one vCPU, microvm, direct kernel
//! boot). Target: taba's overhead <= 5 % of the direct start.
//!
//! taba's time starts when the CLI process is spawned (`taba job run
//! --detach`, as a user types it) and ends when the marker is in the
//! allocation's console log on the agent's disk: submission, evaluation,
//! placement, the agent's watch, the task shim, the cgroup, QEMU, the boot.
//! The direct time starts when QEMU is spawned and ends when the marker is
//! in its console file. Both are read every 5 ms.
//!
//! Run: `cargo bench -p taba --bench vm_start` (root; scripts/setup.sh
//! first); `TABA_BENCH_RUNS=N` runs per side (default 7). BENCHMARKS.md has
//! the results.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_RUNS: usize = 7;
const MARKER: &str = "taba-guest: init ok";
const MEMORY_MIB: u64 = 256;
/// Longest a start may take before the bench gives up.
const START_LIMIT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(5);

fn main() {
    require_root();
    let runs = std::env::var("TABA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_RUNS);
    let tmp = tempfile::Builder::new()
        .prefix("taba-vmstart-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let guest = vm_guest_dir();
    let dev = Dev::start_on(
        &tmp.path().join("dev"),
        &[
            "--vm-image-dir",
            guest.to_str().unwrap(),
            "--vm-accel",
            "tcg",
        ],
    );
    let (mut direct, mut taba) = (Vec::new(), Vec::new());
    for run in 0..runs {
        direct.push(direct_start(&tmp.path().join(format!("direct{run}"))));
        taba.push(taba_start(&dev, tmp.path(), run));
        eprintln!(
            "run {run}: direct {} ms, taba {} ms",
            direct[run], taba[run]
        );
    }
    let (d, t) = (median(&direct), median(&taba));
    println!("\nVM start to the guest's init marker, {runs} runs each, medians\n");
    println!("| path | median ms | runs ms |");
    println!("| --- | --- | --- |");
    println!("| QEMU run directly | {d} | {} |", list(&direct));
    println!(
        "| `taba job run` (CLI to console marker) | {t} | {} |",
        list(&taba)
    );
    println!(
        "\ntaba's overhead: {} ms ({:+.1} %)",
        t as i64 - d as i64,
        (t as f64 / d.max(1) as f64 - 1.0) * 100.0
    );
}

fn median(v: &[u64]) -> u64 {
    let mut x = v.to_vec();
    x.sort();
    x[x.len() / 2]
}

fn list(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Spawn QEMU; milliseconds until its console shows the marker.
fn direct_start(dir: &Path) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let console = dir.join("console");
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(common::vm::direct_plan(MEMORY_MIB, None, false).args())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 starts");
    let took = wait_marker(|| Some(console.clone()), started);
    let _ = qemu.kill();
    let _ = qemu.wait();
    took
}

/// `taba job run` a vm job; milliseconds until its console log shows the
/// marker. Then stops it and waits until its QEMU is gone.
fn taba_start(dev: &Dev, tmp: &Path, run: usize) -> u64 {
    let name = format!("vmstart{run}");
    let file = job_file(tmp, &name, &vm_job(&name));
    let allocs = dev.data.join("agent").join("allocs");
    let before: Vec<PathBuf> = dirs(&allocs);
    let started = Instant::now();
    let out = dev.cli(&["job", "run", "--detach", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let new_alloc = || dirs(&allocs).into_iter().find(|d| !before.contains(d));
    let took = wait_marker(
        || new_alloc().map(|d| d.join("logs").join("guest.stdout.0")),
        started,
    );
    let alloc = new_alloc().expect("the allocation's directory");
    let out = dev.cli(&["job", "stop", &name]);
    assert!(out.status.success(), "{out:?}");
    dev.wait_for("the VM stopped", Duration::from_secs(60), || {
        pids_with_cmdline(&alloc.to_string_lossy()).is_empty()
            && dev
                .client
                .job_status(&name)
                .is_ok_and(|s| s.allocations.iter().all(|a| a.status.is_terminal()))
    });
    took
}

fn vm_job(name: &str) -> String {
    format!(
        r#"
name = "{name}"
type = "service"
[[group]]
name = "g"
  [[group.task]]
  name = "guest"
  driver = "vm"
  kernel = "current/vmlinuz"
  initrd = "current/initramfs.cpio"
  vcpus = 1
  resources = {{ cpu = 500, memory = "{MEMORY_MIB}MiB" }}
  kill_timeout = "1s"
"#
    )
}

fn dirs(d: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(d)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Milliseconds from `started` until the file `console()` names holds the
/// marker.
fn wait_marker(console: impl Fn() -> Option<PathBuf>, started: Instant) -> u64 {
    loop {
        if let Some(text) = console().and_then(|p| std::fs::read_to_string(p).ok()) {
            if text.contains(MARKER) {
                return started.elapsed().as_millis() as u64;
            }
        }
        assert!(
            started.elapsed() < START_LIMIT,
            "no guest marker within {START_LIMIT:?}"
        );
        std::thread::sleep(POLL);
    }
}
