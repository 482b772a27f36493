//! Whether an accelerator really runs a guest here: boot a Linux kernel
//! under it and wait (bounded) for the kernel to start its init.
//!
//! `/dev/kvm` opening, or even `KVM_CREATE_VM` succeeding, proves little:
//! on a host with a paravirtual `kvm_pvm` module VMs are created, a boot
//! sector runs, yet a normal Linux guest never boots. So the probe boots the
//! kernel the agent names (`vm.probe_kernel`) to the line Linux prints when
//! it runs init (`Run /init as init process`).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use taba_types::vm::VmAccel;

/// The line Linux prints when it starts userspace.
pub const INIT_MARKER: &str = "as init process";

/// Boot `kernel` (and `initrd`) under `accel` with `qemu`; `Ok(elapsed)`
/// once the kernel runs its init within `timeout`, else why not.
pub fn boot_probe(
    qemu: &Path,
    accel: VmAccel,
    kernel: &Path,
    initrd: Option<&Path>,
    timeout: Duration,
) -> Result<Duration, String> {
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", accel.qemu_name()])
        .args(["-machine", "microvm", "-m", "128M", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel);
    if let Some(i) = initrd {
        cmd.arg("-initrd").arg(i);
    }
    let mut append = String::from("console=ttyS0 loglevel=7 panic=-1");
    if accel == VmAccel::Tcg {
        if let Some(khz) = super::qemu::host_khz() {
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    cmd.args(["-append", &append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("run {}: {e}", qemu.display()))?;
    let (tx, rx) = mpsc::channel::<()>();
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => return seen,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    let tail_from = seen.len().saturating_sub(n + INIT_MARKER.len());
                    if String::from_utf8_lossy(&seen[tail_from..]).contains(INIT_MARKER) {
                        let _ = tx.send(());
                    }
                    // Keep only a tail: the console can be long.
                    if seen.len() > 64 * 1024 {
                        seen.drain(..seen.len() - 16 * 1024);
                    }
                }
            }
        }
    });
    let result = rx.recv_timeout(timeout);
    let elapsed = started.elapsed();
    let _ = child.kill();
    let status = child.wait();
    let console = reader.join().unwrap_or_default();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    match result {
        Ok(()) => Ok(elapsed),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "no guest reached its init in {}s under {}",
            timeout.as_secs(),
            accel.qemu_name()
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let last = String::from_utf8_lossy(&console)
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            let why = err.lines().last().unwrap_or(&last).to_string();
            Err(format!(
                "QEMU ended ({}) before the guest reached its init: {why}",
                status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string())
            ))
        }
    }
}
