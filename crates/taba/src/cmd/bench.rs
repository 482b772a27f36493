//! `taba bench ...`: benchmarks that need the real binary and the real host.
//!
//! `taba bench container-start` times full lifecycles of `/bin/true` in one
//! busybox bundle (one `config.json`, made by `taba_runtime::container::default_spec`),
//! side by side and interleaved:
//! - `crun run --bundle B ID`: crun creates the container's cgroups from
//!   `linux.cgroupsPath` (one per v1 hierarchy), runs, waits, deletes.
//! - taba: what the agent does per task run: make the task's cgroups (one per
//!   v1 hierarchy, like crun), write `shim.json`, `taba_runtime::shim::spawn`
//!   (which returns once the process runs: the "create -> running" time), then
//!   `wait_exit`, then remove the cgroups.
//!
//! Same profile on both sides, the full one the container driver gives:
//! namespaces (pid, ipc, uts, mount, network), mounts, masked and read-only
//! paths, Docker's capabilities and the seccomp profile for them,
//! no_new_privs, rlimits and oom_score_adj, and the device rules of the
//! container driver (deny all, allow the standard devices) in the devices
//! cgroup: crun applies them from `linux.resources.devices`, taba's side
//! writes them as the agent does. Differences: crun also writes its state
//! under /run/crun; taba's shim also copies the (empty) output into log
//! files, writes state.json/exit.json, and mounts the rootfs nodev and
//! resolves every mount target inside it. crun refuses this host's hybrid cgroup layout
//! unless hugetlb is mounted as a v1 hierarchy: the bench mounts it
//! (idempotently) and says so.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use taba_driver::container::CONTAINER_DEVICES;
use taba_runtime::container::{default_spec, DefaultSpecOptions};
use taba_runtime::oci_spec;
use taba_runtime::shim::{self, ShimConfig, Workload, SHIM_FILES_VERSION};

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Container start: taba's shim + embedded runtime vs `crun run`, same bundle.
    ContainerStart {
        /// Lifecycles per runtime.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Keep the bundle and task directories (their path is printed).
        #[arg(long)]
        keep: bool,
    },
    /// API requests per second with ACLs on vs off, same run, on loopback.
    ApiAcl {
        /// Requests per round.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Rounds per server (alternating).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Client threads.
        #[arg(long, default_value_t = 4)]
        clients: usize,
    },
    /// Event stream: events/s delivered to N subscribers while jobs are
    /// registered, and the registration latency with and without them.
    Events {
        /// Job registrations per round.
        #[arg(long, default_value_t = 500)]
        jobs: usize,
        /// Rounds of each kind (alternating).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Subscribers in the rounds with subscribers.
        #[arg(long, default_value_t = 10)]
        subscribers: usize,
    },
    /// One real server process with many simulated agents (heartbeats, a
    /// blocking query and status reports each) and many allocations:
    /// heartbeats/s, server RSS, job-run -> placed latency.
    Scale(super::bench_scale::ScaleArgs),
}

/// Run a benchmark.
pub fn run(c: BenchCommand) -> anyhow::Result<ExitCode> {
    match c {
        BenchCommand::ContainerStart { runs, keep } => container_start(runs, keep),
        BenchCommand::ApiAcl {
            requests,
            rounds,
            clients,
        } => super::bench_acl::api_acl(requests, rounds, clients),
        BenchCommand::Events {
            jobs,
            rounds,
            subscribers,
        } => super::bench_events::events(jobs, rounds, subscribers),
        BenchCommand::Scale(args) => super::bench_scale::scale(args),
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// v1 cgroup hierarchies mounted under /sys/fs/cgroup (directory names).
fn v1_hierarchies() -> anyhow::Result<Vec<String>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.get(dash + 1) != Some(&"cgroup") {
            continue;
        }
        if let Some(name) = fields[4].strip_prefix("/sys/fs/cgroup/") {
            out.push(name.to_owned());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// crun needs hugetlb as a v1 hierarchy on this hybrid host.
fn ensure_hugetlb_v1() -> anyhow::Result<()> {
    if v1_hierarchies()?.iter().any(|h| h == "hugetlb") {
        return Ok(());
    }
    let dir = Path::new(CGROUP_ROOT).join("hugetlb");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let st = Command::new("mount")
        .args(["-t", "cgroup", "-o", "hugetlb", "cgroup"])
        .arg(&dir)
        .status()
        .context("run mount")?;
    if !st.success() {
        bail!(
            "mount hugetlb v1 hierarchy at {} failed ({st})",
            dir.display()
        );
    }
    println!(
        "note: mounted the hugetlb cgroup v1 hierarchy at {} (crun refuses hybrid mode without it)",
        dir.display()
    );
    Ok(())
}

fn busybox_rootfs(rootfs: &Path) -> anyhow::Result<()> {
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .context("copy /bin/busybox (apt-get install busybox-static)")?;
    let out = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("busybox --list")?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
    }
    Ok(())
}

/// The task's cgroups, one per hierarchy, made like the agent makes them.
struct TaskCgroups(Vec<PathBuf>);

impl TaskCgroups {
    fn create(hierarchies: &[String], name: &str) -> anyhow::Result<TaskCgroups> {
        let mut dirs = Vec::new();
        for h in hierarchies {
            let dir = Path::new(CGROUP_ROOT).join(h).join(name);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            if h == "devices" {
                // As the container driver: deny all, allow the standard set.
                std::fs::write(dir.join("devices.deny"), "a")?;
                for rule in CONTAINER_DEVICES {
                    std::fs::write(dir.join("devices.allow"), rule)?;
                }
            }
            if h == "cpuset" {
                // A v1 cpuset starts empty: copy the parent's cpus and mems.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = std::fs::read(Path::new(CGROUP_ROOT).join(h).join(f))?;
                    std::fs::write(dir.join(f), v)?;
                }
            }
            dirs.push(dir);
        }
        Ok(TaskCgroups(dirs))
    }

    fn procs(&self) -> Vec<PathBuf> {
        self.0.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    fn remove(self) -> anyhow::Result<()> {
        for d in &self.0 {
            std::fs::remove_dir(d).with_context(|| format!("remove {}", d.display()))?;
        }
        Ok(())
    }
}

fn crun_once(bundle: &Path, id: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let st = Command::new("crun")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("run crun (apt-get install crun)")?;
    let d = t.elapsed();
    if !st.status.success() {
        let _ = Command::new("crun").args(["delete", "-f", id]).output();
        bail!(
            "crun run failed ({}): {}",
            st.status,
            String::from_utf8_lossy(&st.stderr).trim()
        );
    }
    Ok(d)
}

/// One taba lifecycle: (total, create -> running).
fn taba_once(
    exe: &Path,
    bundle: &Path,
    work: &Path,
    hierarchies: &[String],
    i: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let task_dir = work.join(format!("task-{i}"));
    let t = Instant::now();
    let cgroups = TaskCgroups::create(
        hierarchies,
        &format!("taba-bench-{}-{i}", std::process::id()),
    )?;
    std::fs::create_dir_all(&task_dir)?;
    let config = ShimConfig {
        version: SHIM_FILES_VERSION,
        workload: Workload::Container {
            bundle: bundle.to_owned(),
        },
        cgroup_procs: cgroups.procs(),
        log_dir: task_dir.join("logs"),
        log_name: "true".into(),
        log_max_bytes: 1 << 20,
        log_max_files: 2,
        console: false,
    };
    shim::write_config(&task_dir, &config)?;
    let started = shim::spawn(exe, &task_dir)?;
    let running = t.elapsed();
    let exit = shim::wait_exit(&task_dir, started.shim_pid)?;
    cgroups.remove()?;
    let total = t.elapsed();
    if exit.exit_code != Some(0) {
        bail!("taba run {i}: /bin/true ended with {exit:?}");
    }
    Ok((total, running))
}

/// The container driver's device rules as OCI `linux.resources.devices`
/// (for crun): deny all, then allow each.
fn device_rules() -> anyhow::Result<Vec<oci_spec::runtime::LinuxDeviceCgroup>> {
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    let mut out = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?];
    for rule in CONTAINER_DEVICES {
        let mut parts = rule.split_whitespace();
        let (Some(kind), Some(nums), Some(access)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("bad device rule {rule:?}");
        };
        let typ = if kind == "b" {
            LinuxDeviceType::B
        } else {
            LinuxDeviceType::C
        };
        let (major, minor) = nums.split_once(':').context("device rule without ':'")?;
        let num = |s: &str| -> anyhow::Result<Option<i64>> {
            Ok(if s == "*" { None } else { Some(s.parse()?) })
        };
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(typ)
            .access(access);
        if let Some(m) = num(major)? {
            b = b.major(m);
        }
        if let Some(m) = num(minor)? {
            b = b.minor(m);
        }
        out.push(b.build()?);
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn container_start(runs: usize, keep: bool) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    ensure_hugetlb_v1()?;
    let hierarchies = v1_hierarchies()?;
    let exe = std::env::current_exe().context("find the taba executable")?;
    let work = std::env::temp_dir().join(format!("taba-bench-{}", std::process::id()));
    let bundle = work.join("bundle");
    busybox_rootfs(&bundle.join("rootfs"))?;
    let mut spec = default_spec(&DefaultSpecOptions {
        rootfs: "rootfs".into(),
        args: vec!["/bin/true".into()],
        hostname: Some("bench".into()),
        no_new_privileges: true,
        user_namespace: None,
        ..Default::default()
    });
    let devices = device_rules()?;
    // For crun only: taba's shim ignores cgroupsPath (the agent makes the cgroups).
    if let Some(linux) = spec.linux_mut().as_mut() {
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "/taba-bench-crun-{}",
            std::process::id()
        ))));
        let mut res = oci_spec::runtime::LinuxResources::default();
        res.set_devices(Some(devices));
        linux.set_resources(Some(res));
    }
    spec.save(bundle.join("config.json"))
        .context("write config.json")?;

    // One warm-up each (page cache, first cgroup writes), not counted.
    crun_once(&bundle, &format!("taba-bench-warm-{}", std::process::id()))?;
    taba_once(&exe, &bundle, &work, &hierarchies, usize::MAX)?;

    let mut crun = Vec::with_capacity(runs);
    let mut taba = Vec::with_capacity(runs);
    let mut taba_running = Vec::with_capacity(runs);
    for i in 0..runs {
        // Alternate who goes first, so neither always follows the other.
        let id = format!("taba-bench-{}-{i}", std::process::id());
        if i % 2 == 0 {
            crun.push(crun_once(&bundle, &id)?);
            let (t, r) = taba_once(&exe, &bundle, &work, &hierarchies, i)?;
            taba.push(t);
            taba_running.push(r);
        } else {
            let (t, r) = taba_once(&exe, &bundle, &work, &hierarchies, i)?;
            taba.push(t);
            taba_running.push(r);
            crun.push(crun_once(&bundle, &id)?);
        }
    }
    for v in [&mut crun, &mut taba, &mut taba_running] {
        v.sort();
    }
    let (c50, c90) = (percentile(&crun, 0.5), percentile(&crun, 0.9));
    let (t50, t90) = (percentile(&taba, 0.5), percentile(&taba, 0.9));
    let (r50, r90) = (
        percentile(&taba_running, 0.5),
        percentile(&taba_running, 0.9),
    );
    println!("container start, full lifecycle of /bin/true, {runs} runs each, interleaved");
    println!("profile (both): Docker's capabilities and seccomp, no_new_privs, rlimits, oom_score_adj, device rules");
    println!(
        "cgroup hierarchies per container: {}",
        hierarchies.join(",")
    );
    println!("{:<34} {:>10} {:>10}", "", "median ms", "p90 ms");
    println!("{:<34} {:>10.2} {:>10.2}", "crun run", ms(c50), ms(c90));
    println!(
        "{:<34} {:>10.2} {:>10.2}",
        "taba shim (spawn + wait_exit)",
        ms(t50),
        ms(t90)
    );
    println!(
        "{:<34} {:>10.2} {:>10.2}",
        "taba create -> running (spawn)",
        ms(r50),
        ms(r90)
    );
    println!(
        "ratio taba/crun (median): {:.2}x (target <= 1.00x)",
        ms(t50) / ms(c50)
    );
    if keep {
        println!("kept: {}", work.display());
    } else {
        std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
