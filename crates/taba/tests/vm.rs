//! The `vm` driver end to end: `taba dev` runs the test guest of
//! `scripts/vm-guest.sh` (Debian's cloud kernel, a busybox initramfs) under
//! TCG with QEMU 10. Needs root and QEMU; fails loudly without them.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// `taba dev` allowing the test guest's directory for VM files.
fn dev_for_vms(data: &Path, accel: &str) -> Dev {
    let guest = vm_guest_dir();
    Dev::start_on(
        data,
        &[
            "--vm-image-dir",
            guest.to_str().unwrap(),
            "--vm-accel",
            accel,
        ],
    )
}

fn vm_job(name: &str, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
type = "service"
[[group]]
name = "g"
restart = {{ attempts = 0, interval = "1m", delay = "1s", mode = "fail" }}
reschedule = {{ attempts = 0 }}
  [[group.task]]
  name = "guest"
  driver = "vm"
  kernel = "current/vmlinuz"
  initrd = "current/initramfs.cpio"
  resources = {{ cpu = 500, memory = "256MiB" }}
  kill_timeout = "30s"
{extra}
"#
    )
}

/// The one allocation of `job` once `f` holds for it.
fn wait_alloc(
    dev: &Dev,
    job: &str,
    what: &str,
    mut f: impl FnMut(&taba_types::Allocation) -> bool,
) -> taba_types::Allocation {
    let mut found = None;
    dev.wait_for(what, Duration::from_secs(120), || {
        let Ok(st) = dev.client.job_status(job) else {
            return false;
        };
        for e in &st.allocations {
            if let Ok(a) = dev.client.alloc(e.id.as_str()) {
                if f(&a.allocation) {
                    found = Some(a.allocation);
                    return true;
                }
            }
        }
        false
    });
    found.unwrap()
}

fn running(a: &taba_types::Allocation) -> bool {
    a.client_status.to_string() == "running"
}

/// `/proc/PID/stat` field 22: the process's start time (against pid reuse).
fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The highest `taba-count N` in `log`.
fn last_count(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("taba-count "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn root_vm_boots_logs_survives_agent_kill_and_powers_down() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let dev = dev_for_vms(tmp.path(), "tcg");
    let f = job_file(
        tmp.path(),
        "vm1",
        &vm_job("vm1", "  cmdline = \"taba.count\"\n  vcpus = 1\n"),
    );
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let a = wait_alloc(&dev, "vm1", "the VM running", running);
    let id = a.id.to_string();
    dev.wait_for(
        "the guest's init marker in alloc logs",
        Duration::from_secs(120),
        || alloc_stdout(&dev, &id).contains("taba-guest: init ok"),
    );
    let pid = a.task_states["guest"]
        .pid
        .expect("a running task has a pid");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains("qemu-system-x86_64"), "{cmdline}");
    assert!(cmdline.contains("tcg"), "{cmdline}");
    assert!(
        cmdline.contains("tsc_early_khz="),
        "TCG direct boots get the host's TSC kHz: {cmdline}"
    );
    let started = start_time(pid).unwrap();
    // QEMU runs in the task's cgroup, limited to the guest's RAM + overhead.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroup.contains(&format!("/{id}/guest")), "{cgroup}");
    // Its QMP socket is in the task dir, which only root enters.
    let task_dir = tmp.path().join("agent/allocs").join(&id).join("guest");
    assert!(task_dir.join("qmp.sock").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&task_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "task dir mode {mode:o}");

    // kill -9 the agent (and server): the VM keeps running, and the
    // restarted agent re-adopts the same QEMU.
    let before = last_count(&alloc_stdout(&dev, &id));
    let mut dev = dev;
    dev.kill9();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(start_time(pid), Some(started), "QEMU died with the agent");
    let dev2 = dev_for_vms(tmp.path(), "tcg");
    let a2 = wait_alloc(&dev2, "vm1", "the VM re-adopted", |a| {
        running(a) && a.task_states["guest"].pid == Some(pid)
    });
    assert_eq!(a2.task_states["guest"].restarts, 0);
    assert_eq!(start_time(pid), Some(started), "QEMU was restarted");
    dev2.wait_for("the guest still counting", Duration::from_secs(60), || {
        last_count(&alloc_stdout(&dev2, &id)) > before + 5
    });
    let log = alloc_stdout(&dev2, &id);
    assert_eq!(
        log.matches("taba-guest: init ok").count(),
        1,
        "the guest booted again"
    );
    assert!(
        std::fs::read_to_string(&dev2.log)
            .unwrap()
            .contains("re-attached over QMP"),
        "{}",
        dev2.log_tail()
    );
    // Stats come from QEMU's cgroup (the guest's RAM it touched, and QEMU).
    dev2.wait_for(
        "memory usage of the VM reported",
        Duration::from_secs(30),
        || {
            dev2.client
                .alloc(&id)
                .ok()
                .and_then(|a| a.usage)
                .is_some_and(|u| u.memory.0 > 16 << 20)
        },
    );

    // `alloc stop` presses the power button: the guest powers itself off.
    let out = dev2.cli(&["alloc", "stop", &id]);
    assert!(out.status.success(), "{out:?}");
    dev2.wait_for("QEMU gone", Duration::from_secs(60), || {
        start_time(pid) != Some(started)
    });
    let log = alloc_stdout(&dev2, &id);
    assert!(
        log.contains("taba-guest: power button"),
        "the guest saw no ACPI power-down: {}",
        &log[log.len().saturating_sub(2000)..]
    );
    // The agent reports the exit after QEMU has gone.
    let mut exit = None;
    dev2.wait_for("the exit reported", Duration::from_secs(30), || {
        exit = dev2
            .client
            .alloc(&id)
            .ok()
            .and_then(|a| a.allocation.task_states.get("guest")?.exit_code);
        exit.is_some()
    });
    assert_eq!(exit, Some(0));
    drop(dev2);
    drop(dev);
}

#[test]
fn root_vm_bad_files_fail_the_start_with_the_field_and_leave_nothing() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    // auto: no probe kernel is given, so KVM is not proven and VMs get TCG.
    let dev = dev_for_vms(tmp.path(), "auto");
    // A host file outside the VM image directories is never read.
    let job = vm_job("bad", "").replace("current/vmlinuz", "/etc/shadow");
    let f = job_file(tmp.path(), "bad", &job);
    assert!(dev
        .cli(&["job", "run", "--detach", f.to_str().unwrap()])
        .status
        .success());
    let a = wait_alloc(&dev, "bad", "the start failed", |a| {
        a.client_status.to_string() == "failed"
    });
    let events = format!("{:?}", a.task_states["guest"].events);
    assert!(
        events.contains("kernel \\\"/etc/shadow\\\"")
            && events.contains("outside the VM image directories"),
        "{events}"
    );
    // A corrupt base image: qemu-img's refusal, naming the disk.
    // (the kernel file read as a qcow2 base)
    let job = vm_job(
        "baddisk",
        "  disks = [{ image = \"current/vmlinuz\", format = \"qcow2\" }]\n",
    );
    let f = job_file(tmp.path(), "baddisk", &job);
    assert!(dev
        .cli(&["job", "run", "--detach", f.to_str().unwrap()])
        .status
        .success());
    let a = wait_alloc(&dev, "baddisk", "the start failed", |a| {
        a.client_status.to_string() == "failed"
    });
    let events = format!("{:?}", a.task_states["guest"].events);
    assert!(events.contains("disks[0].image: qemu-img info"), "{events}");
    // Nothing left: no overlay, no socket, no cgroup, no QEMU.
    let task_dir = tmp
        .path()
        .join("agent/allocs")
        .join(a.id.as_str())
        .join("guest");
    let left: Vec<_> = std::fs::read_dir(&task_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n| {
            let n = n.to_string_lossy();
            n.contains("disk") || n.contains("qmp")
        }),
        "{left:?}"
    );
    assert!(shims_under(&tmp.path().join("agent")).is_empty());

    // Validation at submission names the field.
    let job = vm_job("badspec", "  vcpus = 0\n  image = \"busybox\"\n");
    let f = job_file(tmp.path(), "badspec", &job);
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("group[0].task[0].vcpus"), "{err}");
    assert!(err.contains("group[0].task[0].image"), "{err}");

    // Node fingerprint: the vm driver is there and says why KVM is not used.
    let node = dev.client.node("n1").unwrap();
    let vm = &node.node.drivers["vm"];
    assert!(vm.healthy, "{vm:?}");
    assert!(
        vm.description.contains("QEMU emulator version 10"),
        "{vm:?}"
    );
}

#[test]
fn root_vm_disk_is_kept_across_restarts_of_the_task() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let dev = dev_for_vms(tmp.path(), "tcg");
    let job = vm_job(
        "disk",
        "  cmdline = \"taba.disk\"\n  disks = [{ size = \"16MiB\" }]\n",
    )
    .replace(
        "restart = { attempts = 0, interval = \"1m\", delay = \"1s\", mode = \"fail\" }",
        "restart = { attempts = 1, interval = \"10m\", delay = \"1s\", mode = \"fail\" }",
    );
    let f = job_file(tmp.path(), "disk", &job);
    assert!(dev
        .cli(&["job", "run", "--detach", f.to_str().unwrap()])
        .status
        .success());
    let a = wait_alloc(&dev, "disk", "the VM running", running);
    let id = a.id.to_string();
    // The guest made a file system on its blank disk and wrote to it.
    dev.wait_for(
        "the guest's first boot on its disk",
        Duration::from_secs(120),
        || alloc_stdout(&dev, &id).contains("taba-disk: 1 boots"),
    );
    let disk = tmp
        .path()
        .join("agent/allocs")
        .join(&id)
        .join("guest/disk0.qcow2");
    assert!(disk.exists());
    // QEMU dies; the task restarts on the same disk.
    let pid = a.task_states["guest"].pid.unwrap();
    // SAFETY: kill(2) of the QEMU this test's job started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    dev.wait_for(
        "the guest's second boot on the same disk",
        Duration::from_secs(120),
        || alloc_stdout(&dev, &id).contains("taba-disk: 2 boots"),
    );
    let a = dev.client.alloc(&id).unwrap();
    assert_eq!(a.allocation.task_states["guest"].restarts, 1);
}

/// A console session's events on a channel (waits on it are bounded).
fn console(
    dev: &Dev,
    id: &str,
) -> (
    taba_client::SessionInput,
    std::sync::mpsc::Receiver<taba_client::SessionEvent>,
) {
    // Right after an agent restart the server may say "running" before the
    // new agent has re-adopted the task: attach once it has.
    let mut session = None;
    let mut last = String::new();
    dev.wait_for("a console session", Duration::from_secs(60), || {
        match dev.client.console_session(id, None) {
            Ok(s) => session = Some(s),
            Err(e) => last = e.to_string(),
        }
        session.is_some()
    });
    let mut s = session.unwrap_or_else(|| panic!("no console: {last}"));
    let input = s.input();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Some(e) = s.recv() {
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    (input, rx)
}

/// Type `line` (and Enter) into the console and wait until the guest's
/// echo of it arrives.
fn type_and_read_echo(
    c: &(
        taba_client::SessionInput,
        std::sync::mpsc::Receiver<taba_client::SessionEvent>,
    ),
    line: &str,
) {
    use taba_client::SessionEvent;
    assert!(c.0.send_stdin(format!("{line}\r").as_bytes()));
    let want = format!("taba-echo: {line}");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(&want) {
        match c.1.recv_timeout(Duration::from_secs(120)) {
            Ok(SessionEvent::Stdout(d)) => seen.extend(d),
            other => panic!(
                "console ended ({other:?}) before the echo of {line:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
    }
}

#[test]
fn root_vm_console_is_attachable_logged_and_survives_an_agent_restart() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let dev = dev_for_vms(tmp.path(), "tcg");
    let f = job_file(
        tmp.path(),
        "con",
        &vm_job("con", "  cmdline = \"taba.console\"\n  vcpus = 1\n"),
    );
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let a = wait_alloc(&dev, "con", "the VM running", running);
    let id = a.id.to_string();
    dev.wait_for("the guest's console loop", Duration::from_secs(120), || {
        alloc_stdout(&dev, &id).contains("taba-console: ready")
    });
    // The console socket is the shim's, in the root-only task dir, 0600.
    let sock = tmp
        .path()
        .join("agent/allocs")
        .join(&id)
        .join("guest/console.sock");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "console socket mode {mode:o}");

    // Typed into the guest's serial console, answered by the guest.
    let c = console(&dev, &id);
    type_and_read_echo(&c, "hello-console");
    drop(c);
    // ...and logged as well.
    dev.wait_for("the echo in alloc logs", Duration::from_secs(30), || {
        alloc_stdout(&dev, &id).contains("taba-echo: hello-console")
    });
    // The attach is in the allocation's events.
    let out = dev.cli(&["alloc", "status", &id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("console attached"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A task without a console is refused with a 4xx.
    let e = dev
        .client
        .exec_session(
            &id,
            &taba_client::ExecSessionOptions {
                command: vec!["true".into()],
                ..Default::default()
            },
        )
        .err()
        .expect("no exec into a VM");
    assert_eq!(e.status(), Some(400), "{e}");

    // kill -9 the agent: the shim keeps the console; the restarted agent
    // attaches to the same one (the VM did not reboot).
    let mut dev = dev;
    dev.kill9();
    let dev2 = dev_for_vms(tmp.path(), "tcg");
    wait_alloc(&dev2, "con", "the VM re-adopted", running);
    let c = console(&dev2, &id);
    type_and_read_echo(&c, "after-restart");
    drop(c);
    let log = alloc_stdout(&dev2, &id);
    assert_eq!(
        log.matches("taba-guest: init ok").count(),
        1,
        "the guest rebooted"
    );

    // The session ends when the VM stops.
    let c = console(&dev2, &id);
    let out = dev2.cli(&["alloc", "stop", &id]);
    assert!(out.status.success(), "{out:?}");
    let end = loop {
        match c.1.recv_timeout(Duration::from_secs(120)) {
            Ok(taba_client::SessionEvent::Stdout(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(end, Ok(taba_client::SessionEvent::Exit(0)));
    drop(dev2);
    drop(dev);
}

/// [`vm_job`] booting `boot_disk` (a TOML value) through firmware instead
/// of the test guest's kernel.
fn boot_disk_job(name: &str, boot_disk: &str, extra: &str) -> String {
    vm_job(name, &format!("  boot_disk = {boot_disk}\n{extra}")).replace(
        "  kernel = \"current/vmlinuz\"\n  initrd = \"current/initramfs.cpio\"\n",
        "",
    )
}

/// Directories named `id` in the memory cgroup hierarchy (at most 4 deep):
/// an allocation's cgroup left behind.
fn cgroups_named(id: &str) -> Vec<std::path::PathBuf> {
    fn walk(d: &Path, id: &str, depth: u32, out: &mut Vec<std::path::PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else {
            return;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy() == id {
                out.push(e.path());
            } else if depth > 0 {
                walk(&e.path(), id, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup/memory"), id, 4, &mut out);
    out
}

/// The files in a task directory (none when it does not exist).
fn task_files(data: &Path, alloc: &str) -> Vec<String> {
    std::fs::read_dir(data.join("agent/allocs").join(alloc).join("guest"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Run `job`'s file and wait until its allocation failed; its task events.
fn failed_start(dev: &Dev, dir: &Path, name: &str, job: &str) -> (taba_types::Allocation, String) {
    let f = job_file(dir, name, job);
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let a = wait_alloc(dev, name, "the start failed", |a| {
        a.client_status.to_string() == "failed"
    });
    let events = format!("{:?}", a.task_states["guest"].events);
    (a, events)
}

#[test]
fn root_vm_boots_its_boot_disk_through_bios_on_q35() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let dev = dev_for_vms(tmp.path(), "tcg");
    let base = vm_guest_dir().join("current/boot.raw");
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let base_before = mtime(&base);
    let f = job_file(
        tmp.path(),
        "bd",
        &boot_disk_job("bd", "\"current/boot.raw\"", ""),
    );
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let a = wait_alloc(&dev, "bd", "the VM running", running);
    let id = a.id.to_string();
    // SeaBIOS -> syslinux (the disk's MBR and FAT partition) -> the kernel
    // and initramfs on the disk -> the guest's init.
    dev.wait_for(
        "the guest booted from its disk",
        Duration::from_secs(180),
        || alloc_stdout(&dev, &id).contains("taba-guest: booted from its disk"),
    );
    let log = alloc_stdout(&dev, &id);
    assert!(log.contains("SYSLINUX"), "{log}");
    let pid = a.task_states["guest"].pid.unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .replace('\0', " ");
    assert!(cmdline.contains("-machine q35"), "{cmdline}");
    assert!(!cmdline.contains("-kernel"), "{cmdline}");
    assert!(
        !cmdline.contains("pflash"),
        "SeaBIOS is the default: {cmdline}"
    );
    assert!(
        cmdline.contains("virtio-blk-pci,drive=disk0,id=vd0,bootindex=0"),
        "{cmdline}"
    );
    // The allocation's overlay on the base, which stays untouched.
    let overlay = tmp
        .path()
        .join("agent/allocs")
        .join(&id)
        .join("guest/boot.qcow2");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"backing-filename\""), "{info}");
    assert!(info.contains("boot.raw"), "{info}");
    let out = dev.cli(&["alloc", "stop", &id]);
    assert!(out.status.success(), "{out:?}");
    dev.wait_for("the VM stopped", Duration::from_secs(60), || {
        dev.client
            .alloc(&id)
            .is_ok_and(|a| a.allocation.task_states["guest"].exit_code.is_some())
    });
    assert_eq!(mtime(&base), base_before, "the base image was written");

    // UEFI needs OVMF on the node: without it the start fails, saying so,
    // and leaves nothing (no variable store, no overlay, no QEMU).
    if std::path::Path::new("/usr/share/OVMF").exists() {
        eprintln!("OVMF installed: the missing-OVMF refusal is not exercised");
    } else {
        let (a, events) = failed_start(
            &dev,
            tmp.path(),
            "uefi",
            &boot_disk_job("uefi", "\"current/boot.raw\"", "  firmware = \"uefi\"\n"),
        );
        assert!(
            events.contains("firmware = \\\"uefi\\\": no OVMF firmware on this node")
                && events.contains("ovmf package"),
            "{events}"
        );
        let left = task_files(tmp.path(), a.id.as_str());
        assert!(
            !left
                .iter()
                .any(|n| n.contains("efivars") || n.contains("boot.qcow2")),
            "{left:?}"
        );
        assert!(cgroups_named(a.id.as_str()).is_empty());
    }
    // (the stopped allocation of the service was replaced: stop the job)
    let out = dev.cli(&["job", "stop", "bd"]);
    assert!(out.status.success(), "{out:?}");
    dev.wait_for("no shim left", Duration::from_secs(90), || {
        shims_under(&tmp.path().join("agent")).is_empty()
    });
}

#[test]
fn root_vm_user_data_reaches_the_guest_on_a_cidata_seed_disk() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let dev = dev_for_vms(tmp.path(), "tcg");
    let job = vm_job(
        "seed",
        "  user_data = \"\"\"\n#cloud-config\ntaba-marker from-user-data\n\"\"\"\n  meta_data = \"region: test\"\n",
    );
    let f = job_file(tmp.path(), "seed", &job);
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let a = wait_alloc(&dev, "seed", "the VM running", running);
    let id = a.id.to_string();
    // The guest's init finds the disk labelled cidata, mounts it and prints
    // what it holds.
    dev.wait_for(
        "user-data's marker on the console",
        Duration::from_secs(120),
        || alloc_stdout(&dev, &id).contains("taba-seed: taba-marker from-user-data"),
    );
    let log = alloc_stdout(&dev, &id);
    assert!(
        log.contains(&format!("taba-seed: instance-id: {id}")),
        "meta-data's instance-id is the allocation id: {log}"
    );
    // Attached read-only; in the task directory.
    let pid = a.task_states["guest"].pid.unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .replace('\0', " ");
    assert!(
        cmdline.contains("filename=seed.img,node-name=seedfile,read-only=on")
            || cmdline.contains("seed.img,node-name=seedfile,read-only=on"),
        "{cmdline}"
    );
    assert!(task_files(tmp.path(), &id).contains(&"seed.img".to_string()));
}

#[test]
fn root_vm_bad_input_is_refused_and_leaves_nothing_behind() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let dev = dev_for_vms(tmp.path(), "tcg");
    // A kernel file that is not there.
    let (a, events) = failed_start(
        &dev,
        tmp.path(),
        "nokernel",
        &vm_job("nokernel", "").replace("current/vmlinuz", "current/no-such-vmlinuz"),
    );
    assert!(
        events.contains(
            "kernel \\\"current/no-such-vmlinuz\\\": not found in the VM image directories"
        ),
        "{events}"
    );
    assert!(task_files(tmp.path(), a.id.as_str())
        .iter()
        .all(|n| !n.contains("qmp") && !n.contains("disk")));
    assert!(cgroups_named(a.id.as_str()).is_empty());
    // A corrupt qcow2 as the boot disk: qemu-img's refusal names the field.
    let bad = vm_guest_dir().join("current/modules/virtio.ko");
    let (a, events) = failed_start(
        &dev,
        tmp.path(),
        "corrupt",
        &boot_disk_job(
            "corrupt",
            &format!(
                "{{ image = {:?}, format = \"qcow2\" }}",
                bad.to_str().unwrap()
            ),
            "",
        ),
    );
    assert!(
        events.contains("boot_disk.image: qemu-img info"),
        "{events}"
    );
    let left = task_files(tmp.path(), a.id.as_str());
    assert!(
        !left.iter().any(|n| n.contains("boot") || n.contains("qmp")),
        "{left:?}"
    );
    assert!(cgroups_named(a.id.as_str()).is_empty());
    assert!(shims_under(&tmp.path().join("agent")).is_empty());
    // More memory than any node has: refused at submission, nothing made.
    let f = job_file(
        tmp.path(),
        "huge",
        &vm_job("huge", "").replace("memory = \"256MiB\"", "memory = \"100TiB\""),
    );
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("group[0].task[0].resources.memory: 102400GiB is more than any node has"),
        "{err}"
    );
    assert!(dev.client.job_status("huge").is_err());
    // kernel and boot_disk together: refused at submission, by field.
    let f = job_file(
        tmp.path(),
        "both",
        &vm_job("both", "  boot_disk = \"current/boot.raw\"\n"),
    );
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("group[0].task[0].boot_disk: kernel and boot_disk exclude each other"),
        "{err}"
    );
    assert!(dev.client.job_status("both").is_err());
}

#[test]
fn root_vm_disk_images_are_imported_refused_when_bad_and_booted_by_name() {
    let tmp = tempfile::Builder::new()
        .prefix("taba-vm-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _cleanup = CleanupGuard(tmp.path().to_path_buf());
    let dev = dev_for_vms(tmp.path(), "tcg");
    let guest = vm_guest_dir().join("current");
    // The test guest's bootable raw disk, by its .raw name.
    let out = dev.cli(&[
        "image",
        "import",
        guest.join("boot.raw").to_str().unwrap(),
        "--name",
        "guest-boot",
    ]);
    assert!(out.status.success(), "{out:?}");
    // A qcow2 of it too (format from its header).
    let q = tmp.path().join("guest-boot.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(guest.join("boot.raw"))
        .arg(&q)
        .status()
        .unwrap();
    assert!(st.success());
    let out = dev.cli(&["image", "import", q.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let out = dev.cli(&["image", "ls"]);
    let ls = String::from_utf8_lossy(&out.stdout);
    assert!(
        ls.contains("guest-boot:latest") && ls.contains("disk (raw)"),
        "{ls}"
    );
    assert!(ls.contains("disk (qcow2)"), "{ls}");
    let before = dev.client.list_images().unwrap();

    // Bad ones: refused with the reason, the store unchanged.
    let corrupt = tmp.path().join("corrupt.qcow2");
    let mut bytes = std::fs::read(&q).unwrap();
    for b in bytes.iter_mut().skip(8).take(400) {
        *b = 0xff;
    }
    std::fs::write(&corrupt, &bytes).unwrap();
    let chained = tmp.path().join("chained.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/shadow",
            "-F",
            "raw",
        ])
        .arg(&chained)
        .status()
        .unwrap();
    assert!(st.success());
    let plain = tmp.path().join("plain.bin");
    std::fs::write(&plain, vec![0u8; 1 << 20]).unwrap();
    for (file, want) in [
        (&corrupt, "qemu-img"),
        (&chained, "backing file (/etc/shadow)"),
        (&plain, "--format raw"),
    ] {
        let mut args = vec!["image", "import", file.to_str().unwrap()];
        if file == &plain {
            args.extend(["--name", "plain"]);
        }
        let out = dev.cli(&args);
        assert!(!out.status.success(), "{file:?} was imported");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{file:?}: {err}");
    }
    assert_eq!(dev.client.list_images().unwrap(), before);
    // Nothing staged is left in the store.
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("images/tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Booted by name: the overlay's base is the store's blob.
    let f = job_file(
        tmp.path(),
        "byname",
        &boot_disk_job("byname", "\"guest-boot\"", ""),
    );
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let a = wait_alloc(&dev, "byname", "the VM running", running);
    let id = a.id.to_string();
    dev.wait_for(
        "the guest booted from the imported disk",
        Duration::from_secs(180),
        || alloc_stdout(&dev, &id).contains("taba-guest: booted from its disk"),
    );
    // Pruning keeps an image a job names.
    let out = dev.cli(&["image", "prune"]);
    assert!(out.status.success(), "{out:?}");
    let after: Vec<String> = dev
        .client
        .list_images()
        .unwrap()
        .into_iter()
        .flat_map(|i| i.refs)
        .collect();
    assert!(
        after.contains(&"guest-boot:latest".to_string()),
        "{after:?}"
    );
    let out = dev.cli(&["job", "stop", "byname"]);
    assert!(out.status.success(), "{out:?}");
}
