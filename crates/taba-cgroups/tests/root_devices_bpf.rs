//! The cgroup v2 device filter (an eBPF program), for real: this host's
//! cgroup v2 mount (`/sys/fs/cgroup/unified`, hybrid layout) accepts device
//! programs, and the kernel runs them for processes in the cgroup whatever
//! the v1 devices controller says. Needs root and a cgroup2 mount there.

use std::process::Command;

#[test]
fn root_v2_device_program_allows_only_its_rules() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_eq!(uid, 0, "this test needs root");
    let unified = std::path::Path::new("/sys/fs/cgroup/unified");
    assert!(
        unified.join("cgroup.procs").exists(),
        "this test needs a cgroup2 mount at {}",
        unified.display()
    );
    let dir = unified.join(format!("taba-test-devbpf-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let result = std::panic::catch_unwind(|| {
        taba_cgroups::devices_bpf::attach(&dir, &["c 1:3 rwm", "c 1:9 r"]).unwrap();
        let script = format!(
            "echo $$ > {}/cgroup.procs || exit 9; \
             head -c 1 /dev/null && echo null-ok; \
             head -c 1 /dev/urandom >/dev/null && echo urandom-read-ok; \
             echo x > /dev/urandom || echo urandom-write-denied; \
             head -c 1 /dev/zero >/dev/null || echo zero-denied",
            dir.display()
        );
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        for want in [
            "null-ok",
            "urandom-read-ok",
            "urandom-write-denied",
            "zero-denied",
        ] {
            assert!(stdout.contains(want), "{want}: {stdout} {stderr}");
        }
        assert!(stderr.contains("Operation not permitted"), "{stderr}");
    });
    for _ in 0..50 {
        if std::fs::remove_dir(&dir).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    result.unwrap();
}
