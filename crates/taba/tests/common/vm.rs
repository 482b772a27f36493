//! The `vm` driver's end-to-end fixtures: drivers of this `taba` binary on
//! the test guest, task configurations, the guest's console.

use super::{poll, require_root, taba_bin, vm_guest_dir};
use std::path::{Path, PathBuf};
use std::time::Duration;
use taba_driver::vm::{qemu, AccelPolicy, VmConfig, VmDriver};
use taba_driver::TaskConfig;
use taba_types::vm::{VmAccel, VmMachine, VmNetwork};

/// A cgroup subtree of this test run, removed when dropped.
pub struct Cgroups(pub String);

impl Drop for Cgroups {
    fn drop(&mut self) {
        if let Ok(l) = taba_cgroups::Layout::detect() {
            let _ = l.destroy(&self.0);
        }
    }
}

/// A `vm` driver of this `taba` binary, TCG, the test guest's directory allowed.
pub fn driver() -> VmDriver {
    VmDriver::new(
        taba_bin(),
        VmConfig {
            image_dirs: vec![vm_guest_dir()],
            accel: AccelPolicy::Force(VmAccel::Tcg),
            ..VmConfig::default()
        },
    )
}

/// The test guest's task with `cmdline` and `memory_mib` of RAM, `side` of
/// the move, under `root`.
pub fn task(
    root: &Path,
    cgroups: &Cgroups,
    side: &str,
    cmdline: &str,
    memory_mib: u64,
) -> TaskConfig {
    let task = serde_json::from_value(serde_json::json!({
        "name": "guest",
        "driver": "vm",
        "kernel": "current/vmlinuz",
        "initrd": "current/initramfs.cpio",
        "cmdline": cmdline,
        "resources": { "cpu": 500, "memory": format!("{memory_mib}MiB") },
    }))
    .unwrap();
    TaskConfig {
        alloc_id: taba_types::AllocId(format!("{side}-{}", std::process::id())),
        job: "vm".into(),
        group: "g".into(),
        task,
        network_mode: taba_types::NetworkMode::None,
        task_dir: root.join(side).join("guest"),
        log_dir: root.join(side).join("logs"),
        log_max_bytes: 16 << 20,
        log_max_files: 2,
        cgroup: format!("{}/{side}/guest", cgroups.0),
        env: Vec::new(),
    }
}

/// The serial console so far.
pub fn console(cfg: &TaskConfig) -> String {
    std::fs::read_to_string(cfg.log_dir.join("guest.stdout.0")).unwrap_or_default()
}

/// The `taba-count N` numbers of a console.
pub fn counts(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("taba-count "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// [`poll`] with a mutable closure.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) {
    poll(what, timeout, &mut f, logs);
}

/// Two `vm` drivers (a source and a target node) and their scratch space.
pub struct Pair {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub cgroups: Cgroups,
    pub a: VmDriver,
    pub b: VmDriver,
}

/// A fresh [`Pair`].
pub fn pair() -> Pair {
    require_root();
    let tmp = tempfile::Builder::new()
        .prefix("taba-vm-mig-")
        .tempdir_in("/var/tmp")
        .unwrap();
    Pair {
        root: tmp.path().to_path_buf(),
        _tmp: tmp,
        cgroups: Cgroups(format!(
            "taba-test-vm-mig-{}-{}",
            std::process::id(),
            rand_suffix()
        )),
        a: driver(),
        b: driver(),
    }
}

pub fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// The test guest's QEMU command line as the driver builds it (microvm,
/// TCG, one vCPU, direct kernel boot), for running QEMU directly beside
/// taba in the benches; `incoming`: waiting for a migration (`defer`).
pub fn direct_plan(mib: u64, cmdline: Option<&str>, incoming: bool) -> qemu::VmPlan {
    let g = vm_guest_dir().join("current");
    qemu::VmPlan {
        name: "direct".into(),
        accel: VmAccel::Tcg,
        machine: VmMachine::Microvm,
        vcpus: 1,
        memory_mib: mib,
        kernel: Some(g.join("vmlinuz")),
        initrd: Some(g.join("initramfs.cpio")),
        cmdline: qemu::kernel_cmdline(cmdline, VmAccel::Tcg, qemu::host_khz()),
        disks: Vec::new(),
        network: VmNetwork::None,
        incoming: incoming.then(|| "defer".into()),
        paused: false,
        uefi: None,
        seed: None,
    }
}
