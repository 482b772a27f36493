//! Running tests of a test binary inside the QEMU guest of
//! `scripts/guest.sh` (Debian's 6.1 kernel with only cgroup v2 mounted, and
//! the modules this machine's kernel lacks: dm-mod, dm-flakey; the host's
//! root read-only over 9p under a tmpfs, so the test binaries and the
//! `taba` binary run there as they are).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Guest memory (MiB): the tmpfs under `/var/tmp` holds the tests' loop
/// images and data dirs.
const GUEST_MEM_MIB: &str = "1536";
/// The guest is killed after this long (TCG, one CPU).
const GUEST_TIMEOUT_SECS: &str = "1200";

/// Run `tests` (exact names, `#[ignore]`d ones included) of the test binary
/// `bin` in one guest boot, one at a time with their output shown,
/// passing the host's values of `envs` in; prints the guest's output and
/// how long the boot took; panics unless the run passed and each test ran
/// and passed.
pub fn run_tests(bin: &Path, tests: &[&str], envs: &[&str]) {
    super::require_root();
    let script = super::manifest_dir().join("../../scripts/guest.sh");
    let mut cmd = Command::new(&script);
    cmd.args([
        "run",
        "--timeout",
        GUEST_TIMEOUT_SECS,
        "--mem",
        GUEST_MEM_MIB,
    ]);
    for e in envs {
        cmd.args(["--env", e]);
    }
    cmd.arg("--").arg(bin).args([
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd.args(tests);
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!(
        "guest run of {tests:?}: {:.1} s ({})",
        start.elapsed().as_secs_f64(),
        out.status
    );
    assert!(
        out.status.success(),
        "the guest run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // With --nocapture a test's own output comes between its name and its
    // `ok`: check each ran, and the summary.
    for name in tests {
        let line = format!("test {name} ... ");
        assert!(stdout.contains(&line), "{line:?} missing from:\n{stdout}");
    }
    let summary = format!("test result: ok. {} passed; 0 failed", tests.len());
    assert!(
        stdout.contains(&summary),
        "{summary:?} missing from:\n{stdout}"
    );
}
