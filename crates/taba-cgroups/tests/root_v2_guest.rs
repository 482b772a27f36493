//! The cgroup v2 tests, for real: builds the test binaries that hold them
//! (`taba-cgroups`' `root_v2`, `taba-runtime`'s `root_v2_container`,
//! `root_attacks` and `root_shim`, and `taba`'s `e2e` with the `taba`
//! binary), boots a QEMU guest with only cgroup2 mounted
//! (`scripts/guest.sh`: Debian's kernel, the host's root read-only over 9p)
//! and runs inside the `#[ignore]`d v2 tests, the whole attack suite and
//! the shim's tests (device nodes refused by the eBPF device program
//! instead of v1's devices controller), and end-to-end tests of `taba dev`
//! (a container and an exec job with limits, logs, exec and stop; an OOM
//! kill; exit codes and restarts; an agent killed mid-start leaving no mount
//! or cgroup); passes only when every one of them reports `ok` there.
//! The guest has one CPU under TCG: the guest run took 141 s on a quiet
//! machine (the attack suite 41 s of it, the end-to-end tests 56 s) and
//! about 6 minutes while other builds ran; the guest is killed after 25
//! minutes.
//! Needs root, QEMU and the kernel, which `scripts/guest.sh setup` (called
//! by `scripts/setup.sh`) installs; fails loudly when they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which tests of a binary run in the guest.
enum Tests {
    /// Its `#[ignore]`d tests (those that need a v2-only host).
    Ignored,
    /// All its tests that are not `#[ignore]`d (those that run on v1 here
    /// and on v2 there).
    All,
    /// These, by exact name.
    Named(&'static [&'static str]),
}

/// The test binaries run in the guest: package, integration test target,
/// which of its tests.
const SUITES: &[(&str, &str, Tests)] = &[
    ("taba-cgroups", "root_v2", Tests::Ignored),
    ("taba-runtime", "root_v2_container", Tests::Ignored),
    // The attack suite and the shim's tests, with the eBPF device program
    // in place of v1's devices controller.
    ("taba-runtime", "root_attacks", Tests::All),
    ("taba-runtime", "root_shim", Tests::All),
    (
        "taba",
        "e2e",
        Tests::Named(&[
            "root_container_and_exec_jobs_run_log_exec_and_stop",
            "root_memory_hog_is_reported_oom_killed",
            "root_batch_exit_codes_and_restart_policy",
            "root_kill9_mid_start_leaves_no_mount_or_cgroup",
            "root_kill9_mid_start_unknown_allocation_is_swept_at_start",
        ]),
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds one integration test target and returns its executable.
fn build(package: &str, target: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args(["test", "--no-run", "--message-format=json", "-p", package])
        .args(["--test", target])
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building {package} --test {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == target && m["profile"]["test"] == true)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("no executable for {package} --test {target}"))
}

/// The `#[ignore]`d tests a binary holds (`ignored`), or the others.
fn listed_tests(bin: &Path, ignored: bool) -> Vec<String> {
    let mut cmd = Command::new(bin);
    cmd.args(["--list", "--format=terse"]);
    if ignored {
        cmd.arg("--ignored");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{} --list", bin.display());
    let names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect();
    assert!(
        !names.is_empty(),
        "{} holds no such tests (ignored: {ignored})",
        bin.display()
    );
    names
}

/// The shell line running `tests` of `bin` in the guest, and their names.
fn command(bin: &Path, tests: &Tests) -> (String, Vec<String>) {
    let quoted = format!("'{}'", bin.display());
    assert!(!quoted[1..quoted.len() - 1].contains('\''), "{quoted}");
    match tests {
        Tests::Ignored => (
            format!("{quoted} --ignored --test-threads=1"),
            listed_tests(bin, true),
        ),
        Tests::All => (
            format!("{quoted} --test-threads=1"),
            listed_tests(bin, false),
        ),
        Tests::Named(names) => (
            format!("{quoted} --exact --test-threads=1 {}", names.join(" ")),
            names.iter().map(|n| n.to_string()).collect(),
        ),
    }
}

#[test]
fn root_v2_guest_runs_the_cgroup_v2_tests_on_a_v2_only_kernel() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (QEMU exports / to the guest)"
    );
    let mut script = String::from(
        "set -u\nrc=0\n\
         grep -q ' /sys/fs/cgroup cgroup2 ' /proc/self/mounts && ! grep -q ' cgroup ' /proc/self/mounts \
         || { echo 'guest: not cgroup v2-only'; exit 3; }\n",
    );
    let mut expected = Vec::new();
    for (package, target, tests) in SUITES {
        let (line, names) = command(&build(package, target), tests);
        script.push_str(&format!("echo '== {package} {target}'\n{line} || rc=1\n"));
        expected.extend(names);
    }
    script.push_str("exit $rc\n");
    // The end-to-end tests import the busybox image from here.
    let images = std::env::var("TABA_IMAGE_DIR").unwrap_or("/var/cache/taba/images".into());
    // One boot for all binaries; each runs its tests one at a time.
    let start = std::time::Instant::now();
    let out = Command::new(repo().join("scripts/guest.sh"))
        .env("TABA_IMAGE_DIR", images)
        .args([
            "run",
            "--timeout",
            "1500",
            "--mem",
            "1536",
            "--env",
            "TABA_IMAGE_DIR",
        ])
        .args(["--", "bash", "-c", &script])
        .output()
        .expect("run scripts/guest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!(
        "the guest run took {:.1} s ({})",
        start.elapsed().as_secs_f64(),
        out.status
    );
    assert!(
        out.status.success(),
        "the guest run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for name in &expected {
        let line = format!("test {name} ... ok");
        assert!(stdout.contains(&line), "{line:?} missing from:\n{stdout}");
    }
}
