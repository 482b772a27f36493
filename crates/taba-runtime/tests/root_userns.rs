//! Containers in their own user namespace (`user_namespace = "auto"` in a
//! job): uid 0 inside is an unprivileged host uid, files it makes on a
//! volume belong to that uid, a host file only root may read stays
//! unreadable through a bind mount, and `shim exec` enters the namespace.
//! These tests need root, the v1 cgroup hierarchies and /bin/busybox, and
//! fail loudly without them.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;
use taba_runtime::container::default_spec;
use taba_runtime::oci_spec::runtime::{Mount, Spec};
use taba_runtime::shim::{self, exec::ExecSpec, Workload};

fn bind(dest: &str, source: &std::path::Path) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.into())
        .set_typ(Some("bind".into()))
        .set_source(Some(source.into()))
        .set_options(Some(vec!["rbind".into(), "rw".into()]));
    m
}

fn with_mount(spec: &mut Spec, m: Mount) {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(m);
    spec.set_mounts(Some(mounts));
}

/// A userns spec in `dir` running `args`, its rootfs owned by the range.
fn userns_spec(
    dir: &std::path::Path,
    slot: u32,
    args: &[&str],
) -> (Spec, taba_runtime::container::userns::IdRange) {
    require_root_and_busybox();
    let range = test_id_range(slot);
    let rootfs = dir.join("bundle/rootfs");
    attack_rootfs(&rootfs);
    chown_to_range(&rootfs, &range);
    let mut o = spec_options(dir, args);
    o.user_namespace = Some(range);
    (default_spec(&o), range)
}

#[test]
fn root_userns_container_root_is_the_mapped_host_uid() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, range) = userns_spec(
        dir.path(),
        0,
        &["sh", "-c", "id -u; cat /proc/self/uid_map; exec sleep 60"],
    );
    let bundle = dir.path().join("bundle");
    spec.save(bundle.join("config.json")).unwrap();
    let cg = TestCgroup::new("userns-map");
    let task = make_task(
        dir.path(),
        Workload::Container {
            bundle: bundle.clone(),
        },
        vec![cg.procs()],
        1 << 20,
        2,
    );
    let s = shim::spawn(&shim_exe(), &task).unwrap();
    // Seen from the host, the workload is the range's first uid, not root.
    let uids = proc_uids(s.pid);
    // The cgroup still holds it: the parent joined it before the maps.
    let procs = std::fs::read_to_string(cg.procs()).unwrap();
    // `shim exec` enters its user namespace: root inside, the range outside.
    let exec = ExecSpec::for_container(
        &bundle,
        vec![
            "sh".into(),
            "-c".into(),
            "id -u; cat /proc/self/uid_map; grep CapEff /proc/self/status".into(),
        ],
        vec![cg.procs()],
    )
    .unwrap();
    let spec_path = dir.path().join("exec.json");
    exec.write(&spec_path).unwrap();
    let out = shim::exec::exec_command(&shim_exe(), s.pid, &spec_path)
        .output()
        .unwrap();
    let state = shim::read_state(&task).unwrap().unwrap();
    shim::signal(&state, libc::SIGKILL).unwrap();
    shim::wait_exit(&task, s.shim_pid).unwrap();
    let log = log(dir.path(), "stdout");
    assert_eq!(uids, vec![range.host_uid; 4], "{log}");
    assert!(procs.lines().any(|l| l == s.pid.to_string()), "{procs}");
    let map = format!("0 {} 65536", range.host_uid);
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(squash(&log).starts_with(&format!("0 {map}")), "{log}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        squash(&stdout).starts_with(&format!("0 {map} CapEff:")),
        "{stdout}"
    );
    // The task's capability set, relative to its own namespace.
    assert!(
        stdout.contains(&format!("CapEff:\t{DEFAULT_CAP_EFF}")),
        "{stdout}"
    );
}

#[test]
fn root_userns_files_on_a_volume_belong_to_the_mapped_uid() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spec, range) = userns_spec(
        dir.path(),
        1,
        &["sh", "-c", "echo hi > /data/made && ls -ln /data/made"],
    );
    let vol = dir.path().join("volume");
    std::fs::create_dir(&vol).unwrap();
    chown_to_range(&vol, &range);
    with_mount(&mut spec, bind("/data", &vol));
    let (code, out) = run_spec(dir.path(), &spec, vec![]);
    assert_eq!(code, Some(0), "{out}");
    let md = std::fs::metadata(vol.join("made")).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (range.host_uid, range.host_gid),
        "{out}"
    );
    // Inside, the same file is root's.
    assert!(out.contains(" 0 "), "{out}");
}

#[test]
fn root_userns_root_cannot_read_a_host_root_only_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spec, _) = userns_spec(dir.path(), 2, &["/bin/attack", "read", "/host/secret"]);
    let host = dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(host.join("secret"), "host secret\n").unwrap();
    std::fs::set_permissions(host.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    with_mount(&mut spec, bind("/host", &host));
    let (code, out) = run_spec(dir.path(), &spec, vec![]);
    assert_eq!((code, out.trim()), (Some(1), "err EACCES"), "{out}");
    // The same read as a container root without a user namespace works:
    // the attacker, not the setup, is what fails above.
    let d2 = tempfile::tempdir().unwrap();
    attack_rootfs(&d2.path().join("bundle/rootfs"));
    let mut spec = default_spec(&spec_options(
        d2.path(),
        &["/bin/attack", "read", "/host/secret"],
    ));
    with_mount(&mut spec, bind("/host", &host));
    let (code, out) = run_spec(d2.path(), &spec, vec![]);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn root_userns_rejects_a_mapping_of_host_root() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spec, _) = userns_spec(dir.path(), 3, &["true"]);
    let mut linux = spec.linux().clone().unwrap();
    let root = taba_runtime::oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(0u32)
        .size(65536u32)
        .build()
        .unwrap();
    linux.set_uid_mappings(Some(vec![root]));
    spec.set_linux(Some(linux));
    let e = taba_runtime::container::Container::from_spec(&dir.path().join("bundle"), &spec)
        .unwrap_err();
    assert!(e.to_string().contains("linux.uidMappings[0].hostID"), "{e}");
}
