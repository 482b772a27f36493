//! The cgroup v2 tests, for real: builds the test binaries that hold them
//! (`taba-cgroups`' `root_v2`, `taba-runtime`'s `root_v2_container`), boots
//! a QEMU guest with only cgroup2 mounted (`scripts/guest.sh`: Debian's
//! kernel, the host's root read-only over 9p) and runs their `#[ignore]`d
//! tests inside; passes only when every one of them reports `ok` there.
//! Needs root, QEMU and the kernel, which `scripts/guest.sh setup` (called
//! by `scripts/setup.sh`) installs; fails loudly when they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The test binaries run in the guest: (package, integration test target).
const SUITES: &[(&str, &str)] = &[
    ("taba-cgroups", "root_v2"),
    ("taba-runtime", "root_v2_container"),
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

/// The `#[ignore]`d tests a binary holds.
fn ignored_tests(bin: &Path) -> Vec<String> {
    let out = Command::new(bin)
        .args(["--list", "--ignored", "--format=terse"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{} --list", bin.display());
    let names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "{} holds no ignored tests", bin.display());
    names
}

#[test]
fn root_v2_guest_runs_the_cgroup_v2_tests_on_a_v2_only_kernel() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (QEMU exports / to the guest)"
    );
    let bins: Vec<PathBuf> = SUITES.iter().map(|(p, t)| build(p, t)).collect();
    let expected: Vec<String> = bins.iter().flat_map(|b| ignored_tests(b)).collect();
    // One boot for all binaries; each runs its tests one at a time.
    let script = r#"set -u
rc=0
grep -q ' /sys/fs/cgroup cgroup2 ' /proc/self/mounts && ! grep -q ' cgroup ' /proc/self/mounts || { echo "guest: not cgroup v2-only"; exit 3; }
for bin; do
  echo "== $bin"
  "$bin" --ignored --test-threads=1 || rc=1
done
exit $rc"#;
    let out = Command::new(repo().join("scripts/guest.sh"))
        .args(["run", "--timeout", "900", "--mem", "1024"])
        .args(["--", "bash", "-c", script, "guest"])
        .args(&bins)
        .output()
        .expect("run scripts/guest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
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
