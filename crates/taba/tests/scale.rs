//! The scale benchmark's small variant as a behaviour test: one real
//! `taba server` process, 200 simulated agents over the agent API (node
//! secrets, heartbeats every TTL/3, blocking queries, status reports) and
//! 1,000 allocations. It asserts behaviour only: every heartbeat, blocking
//! query and report succeeds, every probe job is placed, every allocation
//! is reported running, and no node is ever marked disconnected or down.
//! The timings it prints are not checked (the full run and its numbers are
//! in BENCHMARKS.md).

mod common;

use std::process::Command;

#[test]
fn two_hundred_agents_stay_ready_while_a_thousand_allocations_run() {
    let out = Command::new(common::taba_bin())
        .args([
            "bench",
            "scale",
            "--agents",
            "200",
            "--jobs",
            "2",
            "--count",
            "500",
            "--steady",
            "3",
            "--probe-every",
            "1",
            "--fill-timeout",
            "120",
            "--strict",
        ])
        .output()
        .expect("run taba bench scale");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench scale --strict failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1000 allocations placed and reported running"),
        "{stdout}"
    );
    assert!(stdout.contains("nodes at the end: ready=200;"), "{stdout}");
}
