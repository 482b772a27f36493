//! The `vm` driver's QEMU command line, accelerator probe and disks against
//! real QEMU and the test guest of `scripts/vm-guest.sh` (TCG). Needs QEMU
//! and the guest (scripts/setup.sh); fails loudly without them.

mod common;

use common::{qemu_bin, vm_guest};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use taba_driver::vm::{files, probe, qemu};
use taba_types::vm::{VmAccel, VmDisk, VmMachine, VmNetwork};

/// What the driver would start for the test guest, in `dir`.
fn guest_plan(machine: VmMachine) -> qemu::VmPlan {
    let g = vm_guest();
    qemu::VmPlan {
        name: "taba-test".into(),
        accel: VmAccel::Tcg,
        machine,
        vcpus: 1,
        memory_mib: 256,
        kernel: Some(g.join("vmlinuz")),
        initrd: Some(g.join("initramfs.cpio")),
        cmdline: qemu::kernel_cmdline(None, VmAccel::Tcg, qemu::host_khz()),
        disks: Vec::new(),
        network: VmNetwork::None,
        incoming: None,
        paused: false,
        uefi: None,
        seed: None,
    }
}

/// Run QEMU with `plan` in `dir` until the guest prints `marker` (true) or
/// `timeout` passes (false); QEMU is killed either way.
fn boots_to(plan: &qemu::VmPlan, dir: &Path, marker: &str, timeout: Duration) -> (bool, String) {
    let mut child = Command::new(qemu_bin())
        .args(plan.args())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let marker_owned = marker.to_string();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(&marker_owned) {
                let _ = tx.send(());
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let ok = rx.recv_timeout(timeout).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    let console = reader.join().unwrap_or_default();
    (ok, console)
}

/// About one TCG boot in ten hangs calibrating the TSC without
/// `tsc_early_khz`; the driver's command line has it. Ten boots in a row,
/// each bounded (generously: the machine is shared), must all reach init.
#[test]
fn qemu_direct_kernel_tcg_boots_do_not_hang_ten_in_a_row() {
    let plan = guest_plan(VmMachine::Microvm);
    assert!(plan.cmdline.contains("tsc_early_khz="), "{}", plan.cmdline);
    let dir = tempfile::tempdir().unwrap();
    let mut times = Vec::new();
    for i in 0..10 {
        let start = Instant::now();
        let (ok, console) = boots_to(
            &plan,
            dir.path(),
            "taba-guest: init ok",
            Duration::from_secs(90),
        );
        assert!(
            ok,
            "boot {i} did not reach init in 90 s; console tail: {}",
            &console[console.len().saturating_sub(3000)..]
        );
        times.push(start.elapsed());
    }
    eprintln!("boot times: {times:?}");
}

#[test]
fn qemu_q35_direct_kernel_boot() {
    let plan = guest_plan(VmMachine::Q35);
    let dir = tempfile::tempdir().unwrap();
    let (ok, console) = boots_to(
        &plan,
        dir.path(),
        "taba-guest: init ok",
        Duration::from_secs(120),
    );
    assert!(ok, "{}", &console[console.len().saturating_sub(3000)..]);
}

#[test]
fn qemu_probe_boots_the_guest_under_tcg_and_is_bounded() {
    let g = vm_guest();
    let q = qemu_bin();
    // The probe's machinery works: TCG boots the guest to its init.
    let t = probe::boot_probe(
        &q,
        VmAccel::Tcg,
        &g.join("vmlinuz"),
        Some(&g.join("initramfs.cpio")),
        Duration::from_secs(90),
    )
    .expect("the guest boots under TCG");
    assert!(t < Duration::from_secs(90));
    // A kernel that is no kernel never reaches init: an error, in bounded time.
    let start = Instant::now();
    let e = probe::boot_probe(
        &q,
        VmAccel::Tcg,
        &g.join("initramfs.cpio"),
        None,
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(30), "{e}");
    assert!(e.contains("init"), "{e}");
}

/// A disk of the VM over a base image: a qcow2 overlay (the base stays
/// untouched); kept across restarts; bad bases refused naming the field.
#[test]
fn qemu_img_overlays_on_base_images() {
    let t = tempfile::tempdir().unwrap();
    let images = t.path().join("images");
    let task = t.path().join("task");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&task).unwrap();
    let img = |args: &[&str]| {
        let st = Command::new("qemu-img").args(args).status().unwrap();
        assert!(st.success(), "qemu-img {args:?}");
    };
    let raw = images.join("base.raw");
    std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
    let base = images.join("base.qcow2");
    img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "8M"]);
    let chained = images.join("chained.qcow2");
    img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        "-F",
        "qcow2",
        chained.to_str().unwrap(),
    ]);
    std::fs::write(images.join("corrupt.qcow2"), b"QFI\xfbnot really").unwrap();
    let dirs = vec![images.canonicalize().unwrap()];
    let disk = |image: Option<&str>, size: Option<u64>| VmDisk {
        image: image.map(str::to_string),
        format: None,
        size: size.map(taba_types::ByteSize),
    };
    let qi = PathBuf::from("qemu-img");

    let (f0, new) =
        files::ensure_disk(&qi, &dirs, &task, 0, &disk(Some("base.qcow2"), None)).unwrap();
    assert!(new && f0.ends_with("disk0.qcow2"));
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", f0.to_str().unwrap()])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(
        info["backing-filename"],
        dirs[0].join("base.qcow2").to_str().unwrap()
    );
    // Kept, not remade, when the task starts again.
    let (again, new) =
        files::ensure_disk(&qi, &dirs, &task, 0, &disk(Some("base.qcow2"), None)).unwrap();
    assert!(!new && again == f0);

    // A raw base, grown to 4 MiB by its overlay.
    let mut d = disk(Some("base.raw"), Some(4 << 20));
    d.format = Some(taba_types::vm::DiskFormat::Raw);
    let (f1, _) = files::ensure_disk(&qi, &dirs, &task, 1, &d).unwrap();
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", f1.to_str().unwrap()])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backing-filename-format"], "raw");
    assert_eq!(info["virtual-size"], 4 << 20);

    // A blank disk.
    let (f2, _) = files::ensure_disk(&qi, &dirs, &task, 2, &disk(None, Some(16 << 20))).unwrap();
    assert!(f2.exists());

    // Refused: a base with a backing file of its own, a corrupt one, one outside.
    let e = files::ensure_disk(&qi, &dirs, &task, 3, &disk(Some("chained.qcow2"), None))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("disks[3].image") && e.contains("has a backing file"),
        "{e}"
    );
    let e = files::ensure_disk(&qi, &dirs, &task, 4, &disk(Some("corrupt.qcow2"), None))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("disks[4].image: qemu-img info"), "{e}");
    let e = files::ensure_disk(&qi, &dirs, &task, 5, &disk(Some("/etc/passwd"), None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the VM image directories"), "{e}");
    for i in 3..6 {
        assert!(!task.join(format!("disk{i}.qcow2")).exists());
        assert!(!task.join(format!(".disk{i}.qcow2.tmp")).exists());
    }
}
