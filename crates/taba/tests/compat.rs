//! Compatibility suite: the same small images run under podman (Debian's,
//! `podman load` of the same archive, no registry, `--network none`) and
//! under `taba dev`, and what programs inside see is compared: `id`, the
//! environment, `/etc/hosts` resolution of localhost and the hostname, the
//! hostname, the working directory, the `/sys/fs/cgroup` mounts and the
//! limits read there, writable stdio for a non-root user, the stop signal
//! received, the capability sets, image volumes. Deliberate differences are
//! in docs/compatibility.md; the probes below leave those out or set both
//! sides alike (`--hostname`, `--cap-add` of Docker's set that podman
//! drops).
//!
//! Needs root and podman (`scripts/setup.sh` installs it); fails loudly
//! without them. Podman gets storage, a run root and a cgroup parent of its
//! own under a temporary directory, removed at the end.

mod common;

use common::images::compat_image;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Podman with storage of its own.
struct Podman {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Podman {
    fn new() -> Podman {
        require_root();
        let ok = Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "this test compares taba with podman, which is not installed: run scripts/setup.sh"
        );
        let dir = tempfile::Builder::new()
            .prefix("taba-compat-podman-")
            .tempdir_in("/var/tmp")
            .unwrap();
        Podman {
            cgroup_parent: format!("/taba-compat-{}", std::process::id()),
            dir,
        }
    }

    fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
        c
    }

    fn load(&self, tar: &Path) {
        let out = self.cmd().arg("load").arg("-i").arg(tar).output().unwrap();
        assert!(
            out.status.success(),
            "podman load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `podman run` options every probe gets: no network, taba's default
    /// limits where podman's would fail here (its nofile and nproc are
    /// above this host's hard limits).
    fn run_args(&self) -> Vec<String> {
        let hard = taba_runtime::container::current_hard_limit(libc::RLIMIT_NOFILE);
        vec![
            "--network".into(),
            "none".into(),
            "--cgroup-parent".into(),
            self.cgroup_parent.clone(),
            "--ulimit".into(),
            format!("nofile={}:{}", 1024.min(hard), 524_288.min(hard)),
            "--ulimit".into(),
            "nproc=4096:4096".into(),
            "--memory".into(),
            "64m".into(),
        ]
    }

    /// Run `script` in `image` with extra `podman run` options; stdout.
    fn run(&self, image: &str, extra: &[&str], script: &str) -> String {
        let out = self
            .cmd()
            .arg("run")
            .arg("--rm")
            .args(self.run_args())
            .args(extra)
            .arg(format!("localhost/{image}:latest"))
            .args(["sh", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman run {image}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-af", "-t", "0"]).output();
        let _ = self.cmd().args(["rmi", "-af"]).output();
        // Anything podman left mounted under its directory.
        let me = self.dir.path().to_string_lossy().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&me))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
        // Its cgroup parent, in every hierarchy.
        let name = self.cgroup_parent.trim_start_matches('/');
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in rd.flatten() {
                let p = e.path().join(name);
                if p.is_dir() {
                    let _ = remove_cgroup_tree(&p);
                }
            }
        }
        let p = Path::new("/sys/fs/cgroup").join(name);
        if p.is_dir() {
            let _ = remove_cgroup_tree(&p);
        }
    }
}

fn remove_cgroup_tree(p: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(p)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path())?;
        }
    }
    std::fs::remove_dir(p)
}

/// One probe run under taba: a batch job (or a service, for `stop`).
struct TabaRun<'a> {
    image: &'a str,
    user: Option<&'a str>,
    hostname: Option<&'a str>,
    script: &'a str,
}

fn toml_str(s: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(s).unwrap()
}

fn job_toml(name: &str, job_type: &str, r: &TabaRun<'_>) -> String {
    let mut task = format!(
        "name = \"t\"\n  driver = \"container\"\n  image = {}\n  command = [\"sh\", \"-c\", {}]\n  resources = {{ cpu = 100, memory = \"64MiB\" }}\n",
        toml_str(r.image),
        toml_str(r.script)
    );
    if let Some(u) = r.user {
        task.push_str(&format!("  user = {}\n", toml_str(u)));
    }
    if let Some(h) = r.hostname {
        task.push_str(&format!("  hostname = {}\n", toml_str(h)));
    }
    format!(
        "name = \"{name}\"\ntype = \"{job_type}\"\n[[group]]\nname = \"g\"\n  [[group.task]]\n  {task}"
    )
}

fn alloc_of(dev: &Dev, job: &str, status: &str) -> String {
    let mut id = String::new();
    dev.wait_for(
        &format!("{job} {status}"),
        Duration::from_secs(60),
        || match dev.client.job_status(job) {
            Ok(s) => match s
                .allocations
                .iter()
                .find(|a| a.status.to_string() == status)
            {
                Some(a) => {
                    id = a.id.to_string();
                    true
                }
                None => false,
            },
            Err(_) => false,
        },
    );
    id
}

fn logs(dev: &Dev, alloc: &str) -> String {
    let out = dev.cli(&["alloc", "logs", alloc]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run `r` as a batch job to completion; its stdout.
fn taba_run(dev: &Dev, dir: &Path, name: &str, r: &TabaRun<'_>) -> String {
    let f = job_file(dir, name, &job_toml(name, "batch", r));
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "job run {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = alloc_of(dev, name, "complete");
    logs(dev, &id)
}

/// The probes: one `label: value` line each.
const PROBES: &str = r#"
echo "id: $(id)"
echo "HOME: $HOME"
echo "PATH: $PATH"
echo "HOSTNAME: $HOSTNAME"
echo "hostname: $(hostname)"
echo "/etc/hostname: $(cat /etc/hostname)"
echo "localhost: $(nc localhost 9 </dev/null 2>&1)"
echo "own name: $(nc "$(hostname)" 9 </dev/null 2>&1)"
echo "cwd: $(pwd)"
[ "$(pwd)" = / ] || echo "cwd owner: $(stat -c '%u:%g %a' .)"
for f in CapInh CapPrm CapEff CapAmb; do grep "^$f" /proc/self/status; done
[ "$(id -u)" = 0 ] && grep "^CapBnd" /proc/self/status
if echo "written to /dev/stdout" >/dev/stdout; then echo "stdout: ok"; else echo "stdout: failed"; fi
if echo "written to /dev/stderr" >/dev/stderr; then echo "stderr: ok"; else echo "stderr: failed"; fi
if cat /dev/stdin >/dev/null; then echo "stdin: ok"; else echo "stdin: failed"; fi
awk '{for (i = 7; i <= NF; i++) if ($i == "-") break; if ($5 ~ "^/sys/fs/cgroup/") { split($6, o, ","); print "cgroup mount:", $5, $(i + 1), o[1] } }' /proc/self/mountinfo | sort
echo "memory limit: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)"
if grep -qx 1 /sys/fs/cgroup/pids/cgroup.procs 2>/dev/null || grep -qx 1 /sys/fs/cgroup/cgroup.procs; then echo "own cgroup: holds pid 1"; fi
if echo 1 >/sys/fs/cgroup/pids/pids.max 2>/dev/null; then echo "cgroup write: allowed"; else echo "cgroup write: refused"; fi
env | grep -v -e '^container=' -e '^TERM=' -e '^TABA_' | sort | sed 's/^/env: /'
"#;

/// What the volume image adds.
const VOLUME_PROBES: &str = r#"
echo "volume: $(cat /data/seed) $(stat -c '%u:%g %a' /data)"
if touch /data/new 2>/dev/null; then echo "volume: writable"; else echo "volume: read-only"; fi
"#;

/// A deliberate difference (docs/compatibility.md): the line podman
/// prints and the line taba prints instead.
type Known = (&'static str, &'static str);

/// The lines of `podman` and `taba` must be the same, except for the
/// `known` differences, which must be exactly as stated; a description of
/// what differs otherwise.
fn differences(what: &str, podman: &str, taba: &str, known: &[Known]) -> Option<String> {
    let p: Vec<&str> = podman.lines().collect();
    let t: Vec<&str> = taba.lines().collect();
    let mut only_p: Vec<&str> = p.iter().copied().filter(|l| !t.contains(l)).collect();
    let mut only_t: Vec<&str> = t.iter().copied().filter(|l| !p.contains(l)).collect();
    for (kp, kt) in known {
        match (only_p.iter().position(|l| l == kp), only_t.iter().position(|l| l == kt)) {
            (Some(i), Some(j)) => {
                only_p.remove(i);
                only_t.remove(j);
            }
            _ => {
                return Some(format!(
                    "{what}: the known difference podman {kp:?} / taba {kt:?} is not there\n--- podman:\n{podman}\n--- taba:\n{taba}"
                ))
            }
        }
    }
    if only_p.is_empty() && only_t.is_empty() {
        return None;
    }
    Some(format!(
        "{what}: podman and taba differ\n  only under podman: {only_p:#?}\n  only under taba: {only_t:#?}\n--- podman:\n{podman}\n--- taba:\n{taba}"
    ))
}

/// One comparison: name, image, user, script, known differences.
type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, &'a [Known]);

/// Docker's default capabilities that podman 4 drops from its own default.
const DOCKER_CAPS: &[&str] = &[
    "--cap-add",
    "NET_RAW",
    "--cap-add",
    "MKNOD",
    "--cap-add",
    "AUDIT_WRITE",
];

struct Images {
    dir: tempfile::TempDir,
    root: PathBuf,
    user: PathBuf,
}

/// `compat-root` (no config but `Cmd`, so the default PATH applies) and
/// `compat-user` (user web, a missing WORKDIR, a VOLUME, a STOPSIGNAL and a
/// HEALTHCHECK).
fn build_images() -> Images {
    let dir = tempfile::tempdir().unwrap();
    let root = compat_image(
        dir.path(),
        "compat-root",
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let user = compat_image(
        dir.path(),
        "compat-user",
        serde_json::json!({
            "Cmd": ["sh"],
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"],
            "User": "web",
            "WorkingDir": "/srv/app",
            "StopSignal": "SIGUSR1",
            "Volumes": {"/data": {}},
            "Healthcheck": {"Test": ["CMD-SHELL", "test -e /data/seed"], "Interval": 30_000_000_000u64, "Retries": 3},
        }),
    );
    Images { dir, root, user }
}

#[test]
fn root_compat_what_programs_see_matches_podman() {
    let podman = Podman::new();
    let images = build_images();
    podman.load(&images.root);
    podman.load(&images.user);
    let dev = Dev::start();
    for tar in [&images.root, &images.user] {
        dev.client.import_image(tar).expect("taba image import");
    }
    let jobs = tempfile::tempdir().unwrap();
    let volume_probes = format!("{PROBES}{VOLUME_PROBES}");
    // Podman makes a missing WORKDIR the user's; Docker and taba root's.
    const WORKDIR: Known = ("cwd owner: 1000:1000 755", "cwd owner: 0:0 755");
    let cases: Vec<Case<'_>> = vec![
        // (name, image, user, script, known differences)
        // Podman leaves root's primary group out of its groups, Docker not.
        (
            "root",
            "compat-root",
            None,
            PROBES,
            &[(
                "id: uid=0(root) gid=0(root) groups=10(wheel)",
                "id: uid=0(root) gid=0(root) groups=0(root),10(wheel)",
            )],
        ),
        ("user", "compat-user", None, &volume_probes, &[WORKDIR]),
        // Podman adds a passwd entry for a uid the image lacks; Docker not.
        (
            "uid-only",
            "compat-root",
            Some("4242"),
            PROBES,
            &[(
                "id: uid=4242(4242) gid=0(root) groups=0(root)",
                "id: uid=4242 gid=0(root) groups=0(root)",
            )],
        ),
        ("user-group", "compat-root", Some("web:adm"), PROBES, &[]),
        ("uid-gid", "compat-root", Some("1000:10"), PROBES, &[]),
    ];
    let mut failed = Vec::new();
    for (name, image, user, script, known) in cases {
        // Docker's capability set for root; podman gives a non-root user
        // the added ones as ambient capabilities, Docker none: non-root
        // users run without `--cap-add` (their bounding set is not probed).
        let mut extra: Vec<&str> = match (name, user) {
            ("root", None) => DOCKER_CAPS.to_vec(),
            _ => Vec::new(),
        };
        extra.extend(["--hostname", "compat-box"]);
        if let Some(u) = user {
            extra.extend(["--user", u]);
        }
        let p = podman.run(image, &extra, script);
        let t = taba_run(
            &dev,
            jobs.path(),
            &format!("compat-{name}"),
            &TabaRun {
                image,
                user,
                hostname: Some("compat-box"),
                script,
            },
        );
        failed.extend(differences(name, &p, &t, known));
    }
    drop(images.dir);
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn root_compat_stop_signal_of_the_image_is_sent_and_exec_runs_as_its_user() {
    let podman = Podman::new();
    let images = build_images();
    podman.load(&images.user);
    let dev = Dev::start();
    dev.client.import_image(&images.user).unwrap();
    let script = "trap 'echo got USR1; exit 0' USR1; trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.1; done";

    let name = format!("taba-compat-stop-{}", std::process::id());
    let mut run = podman.cmd();
    run.arg("run")
        .arg("-d")
        .arg("--name")
        .arg(&name)
        .args(podman.run_args())
        .arg("localhost/compat-user:latest")
        .args(["sh", "-c", script]);
    let out = run.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    poll(
        "podman container ready",
        Duration::from_secs(30),
        || {
            let o = podman.cmd().args(["logs", &name]).output().unwrap();
            String::from_utf8_lossy(&o.stdout).contains("ready")
        },
        String::new,
    );
    let out = podman
        .cmd()
        .args(["stop", "-t", "10", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = podman.cmd().args(["logs", &name]).output().unwrap();
    let p = String::from_utf8_lossy(&p.stdout).into_owned();
    let _ = podman.cmd().args(["rm", "-f", &name]).output();

    let jobs = tempfile::tempdir().unwrap();
    let r = TabaRun {
        image: "compat-user",
        user: None,
        hostname: None,
        script,
    };
    let f = job_file(jobs.path(), "stopsig", &job_toml("stopsig", "service", &r));
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = alloc_of(&dev, "stopsig", "running");
    dev.wait_for("taba task ready", Duration::from_secs(30), || {
        logs(&dev, &id).contains("ready")
    });
    // `alloc exec` runs as the image's user, who may write its stdio too.
    let out = dev.cli(&[
        "alloc",
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "id -u; pwd; echo to-stdout >/dev/stdout; echo to-stderr >/dev/stderr",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n/srv/app\nto-stdout\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");
    let out = dev.cli(&["job", "stop", "stopsig"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    alloc_of(&dev, "stopsig", "complete");
    let t = logs(&dev, &id);
    assert_eq!(p.trim(), "ready\ngot USR1", "podman");
    assert_eq!(t.trim(), p.trim(), "taba");
}

/// What taba gives that podman (4.3, `--network none`) does not, each
/// written down in docs/compatibility.md: a `resolv.conf` (the host's,
/// without loopback nameservers), `/etc/hosts` without the host's
/// entries, and a hostname from the allocation id.
#[test]
fn root_compat_taba_only_files_and_default_hostname() {
    let images = build_images();
    let dev = Dev::start();
    dev.client.import_image(&images.root).unwrap();
    let jobs = tempfile::tempdir().unwrap();
    let script = "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; hostname; echo \"$HOSTNAME\"; echo $TABA_ALLOC_ID";
    let out = taba_run(
        &dev,
        jobs.path(),
        "files",
        &TabaRun {
            image: "compat-root",
            user: None,
            hostname: None,
            script,
        },
    );
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let want: String = host_resolv
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            !(w.next() == Some("nameserver")
                && w.next()
                    .is_some_and(|a| a.starts_with("127.") || a == "::1"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(parts[0], want);
    let tail: Vec<&str> = parts[2].lines().collect();
    let (host, env_host, alloc) = (tail[0], tail[1], tail[2]);
    assert_eq!(host, env_host);
    assert_eq!(host, &alloc[..12]);
    assert!(
        parts[1].starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost"),
        "{}",
        parts[1]
    );
    assert!(
        parts[1].contains(&format!("127.0.0.1\t{host}\n")),
        "{}",
        parts[1]
    );

    // With the host's network: the node's hostname and hosts file (plus
    // the hostname if the file lacks it), the host's resolv.conf as is.
    let f = job_file(
        jobs.path(),
        "hostnet",
        &job_toml(
            "hostnet",
            "batch",
            &TabaRun {
                image: "compat-root",
                user: None,
                hostname: None,
                script: "hostname; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf",
            },
        )
        .replace(
            "name = \"g\"\n",
            "name = \"g\"\nnetwork = { mode = \"host\" }\n",
        ),
    );
    let out = dev.cli(&["job", "run", "--detach", f.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = logs(&dev, &alloc_of(&dev, "hostnet", "complete"));
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    let node = node_hostname();
    assert_eq!(parts[0].trim(), node);
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    assert!(parts[1].starts_with(host_hosts.trim_end()), "{}", parts[1]);
    assert_eq!(parts[2], host_resolv);

    // A non-root user's bounding set is Docker's default one.
    let out = taba_run(
        &dev,
        jobs.path(),
        "bounding",
        &TabaRun {
            image: "compat-root",
            user: Some("web"),
            hostname: None,
            script: "grep ^CapBnd /proc/self/status",
        },
    );
    assert_eq!(out.trim(), "CapBnd:\t00000000a80425fb");
}

fn node_hostname() -> String {
    let out = Command::new("uname").arg("-n").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `taba image inspect` shows what the image config says about running it,
/// HEALTHCHECK included (taba keeps it; it does not run it).
#[test]
fn root_compat_image_inspect_shows_the_run_config() {
    let images = build_images();
    let dev = Dev::start();
    dev.client.import_image(&images.user).unwrap();
    let out = dev.cli(&["image", "inspect", "compat-user"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["refs"][0], "compat-user:latest");
    let c = &v["config"];
    assert_eq!(c["user"], "web");
    assert_eq!(c["working_dir"], "/srv/app");
    assert_eq!(c["stop_signal"], "SIGUSR1");
    assert_eq!(c["volumes"], serde_json::json!(["/data"]));
    assert_eq!(
        c["healthcheck"],
        serde_json::json!({"test": ["CMD-SHELL", "test -e /data/seed"], "interval_ns": 30_000_000_000u64, "retries": 3})
    );
    let out = dev.cli(&["image", "inspect", "no-such-image"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
