//! What the root cgroup tests share (`root_v1` on this host, `root_v2` in
//! the cgroup v2 guest): a per-test top cgroup removed on drop, starting a
//! process inside a cgroup the way the task shim does, and waiting.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taba_cgroups::{AnyCgroup, CgroupVersion, Layout};

/// The host's layout; fails loudly unless we are root and the host runs
/// one of `versions`.
pub fn layout_of(versions: &[CgroupVersion]) -> Layout {
    assert!(
        rustix::process::geteuid().is_root(),
        "root_* tests need root (they create real cgroups)"
    );
    let layout = Layout::detect().expect("detect cgroups");
    assert!(
        versions.contains(&layout.version()),
        "these tests need a {versions:?} host, found {}",
        layout.version_name()
    );
    layout
}

/// One test's top cgroup `taba-test-<pid>-<name>`, removed (with what is
/// left in it) when dropped, even when the test fails.
pub struct Scope {
    pub layout: Layout,
    pub top: String,
}

impl Scope {
    pub fn new(layout: Layout, name: &str) -> Scope {
        let top = format!("taba-test-{}-{name}", std::process::id());
        layout.destroy(&top).unwrap();
        Scope { layout, top }
    }

    pub fn rel(&self, sub: &str) -> String {
        format!("{}/{sub}", self.top)
    }

    pub fn create(&self, sub: &str) -> AnyCgroup {
        self.layout.create(&self.rel(sub)).unwrap()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Err(e) = self.layout.destroy(&self.top) {
            eprintln!("cleanup of {} failed: {e}", self.top);
        }
    }
}

/// A cgroup file's content, trimmed.
pub fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// Starts `script` the way the task shim does: the shell writes its own pid
/// into every `cgroup.procs` first, then execs the workload.
pub fn spawn_joined(cg: &AnyCgroup, script: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(r#"for f; do echo $$ > "$f" || exit 99; done; exec sh -c "$TABA_TEST_SCRIPT""#)
        .arg("sh")
        .args(cg.procs_files())
        .env("TABA_TEST_SCRIPT", script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `done` every 10 ms for up to 60 s (generous: the v2 tests run
/// under QEMU's TCG, 10-30x slower than the host).
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True when the pid no longer runs (gone, or a zombie nobody reaped).
pub fn dead(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
            matches!(state, Some(Some('Z' | 'X')))
        }
    }
}
