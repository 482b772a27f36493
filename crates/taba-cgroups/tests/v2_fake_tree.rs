//! The v2 backend against a fake `/sys/fs/cgroup` in a temp dir: which
//! values land in which files, and how the kernel's files are parsed.
//! (This host is hybrid, so real v2 cgroups cannot be made here.)

use std::fs;
use std::path::{Path, PathBuf};
use taba_cgroups::{AnyCgroup, CgroupError, CgroupVersion, Layout, Limits};

const REL: &str = "taba/alloc1/web";

/// Files of a fresh v2 leaf, as the kernel would show them.
const LEAF_FILES: [(&str, &str); 14] = [
    ("cgroup.procs", ""),
    ("cgroup.kill", ""),
    ("cgroup.subtree_control", ""),
    ("cpu.weight", "100\n"),
    ("cpu.max", "max 100000\n"),
    ("memory.max", "max\n"),
    ("memory.swap.max", "max\n"),
    ("pids.max", "max\n"),
    (
        "cpu.stat",
        "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
    ),
    ("memory.current", "10000000\n"),
    (
        "memory.stat",
        "anon 7000000\nfile 3000000\nactive_file 2000000\ninactive_file 1000000\n",
    ),
    ("memory.peak", "12345678\n"),
    (
        "memory.events",
        "low 0\nhigh 0\nmax 17\noom 2\noom_kill 2\noom_group_kill 0\n",
    ),
    ("pids.current", "3\n"),
];

struct Fake {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Fake {
    /// A root with `controllers`, the ancestors of `REL` and its leaf files.
    fn new(controllers: &str, leaf_files: &[(&str, &str)]) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        fs::write(root.join("cgroup.controllers"), controllers).unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        for level in ["taba", "taba/alloc1"] {
            fs::create_dir_all(root.join(level)).unwrap();
            fs::write(root.join(level).join("cgroup.subtree_control"), "").unwrap();
        }
        let leaf = root.join(REL);
        fs::create_dir_all(&leaf).unwrap();
        for (name, content) in leaf_files {
            fs::write(leaf.join(name), content).unwrap();
        }
        Fake { _dir: dir, root }
    }

    fn layout(&self) -> Layout {
        Layout::from_root(&self.root, CgroupVersion::V2).unwrap()
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root.join(rel)).unwrap()
    }

    fn leaf(&self, file: &str) -> String {
        self.read(&format!("{REL}/{file}"))
    }
}

fn limits() -> Limits {
    Limits {
        cpu_mhz: 2048,
        cpu_max_cores: Some(1.5),
        memory_bytes: 64 << 20,
        pids_max: 64,
    }
}

#[test]
fn create_enables_controllers_in_every_ancestor() {
    let fake = Fake::new("cpuset cpu io memory hugetlb pids rdma misc\n", &LEAF_FILES);
    let layout = fake.layout();
    assert_eq!(layout.version_name(), "v2");
    let cg = layout.create(REL).unwrap();
    assert!(matches!(cg, AnyCgroup::V2(_)));
    for level in ["", "taba/", "taba/alloc1/"] {
        assert_eq!(
            fake.read(&format!("{level}cgroup.subtree_control")),
            "+cpu +memory +pids",
            "level {level:?}"
        );
    }
    // The leaf holds processes, so nothing is enabled below it.
    assert_eq!(fake.leaf("cgroup.subtree_control"), "");
    assert_eq!(cg.dirs(), vec![fake.root.join(REL)]);
    assert_eq!(
        cg.procs_files(),
        vec![fake.root.join(REL).join("cgroup.procs")]
    );
}

#[test]
fn create_writes_only_controllers_not_yet_enabled() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    // As the kernel shows it once enabled: names without '+'.
    fs::write(
        fake.root.join("cgroup.subtree_control"),
        "cpu memory pids\n",
    )
    .unwrap();
    fs::write(fake.root.join("taba/cgroup.subtree_control"), "memory\n").unwrap();
    fake.layout().create(REL).unwrap();
    assert_eq!(fake.read("cgroup.subtree_control"), "cpu memory pids\n");
    assert_eq!(fake.read("taba/cgroup.subtree_control"), "+cpu +pids");
    assert_eq!(
        fake.read("taba/alloc1/cgroup.subtree_control"),
        "+cpu +memory +pids"
    );
}

#[test]
fn create_makes_missing_directories() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    // The new levels have no cgroup.subtree_control in a fake tree, so
    // enabling fails there, and says where.
    let err = fake.layout().create("taba/alloc2/web").unwrap_err();
    assert!(fake.root.join("taba/alloc2/web").is_dir());
    match err {
        CgroupError::Read { path, .. } => {
            assert_eq!(path, fake.root.join("taba/alloc2/cgroup.subtree_control"))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn create_needs_cpu_memory_and_pids() {
    let fake = Fake::new("cpuset io pids\n", &LEAF_FILES);
    let err = fake.layout().create(REL).unwrap_err();
    assert!(
        matches!(err, CgroupError::MissingController { controller: "cpu", ref path }
            if path.ends_with("cgroup.controllers")),
        "{err:?}"
    );
    assert!(err.to_string().contains("cgroup.controllers"), "{err}");
}

#[test]
fn apply_writes_each_limit_to_its_file() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    let cg = fake.layout().create(REL).unwrap();
    let applied = cg.apply(&limits()).unwrap();
    assert_eq!(fake.leaf("cpu.weight"), "200");
    assert_eq!(fake.leaf("cpu.max"), "150000 100000");
    assert_eq!(fake.leaf("memory.max"), "67108864");
    assert_eq!(fake.leaf("memory.swap.max"), "0");
    assert_eq!(fake.leaf("pids.max"), "64");
    assert_eq!(applied.cpu_weight, Some(200));
    assert_eq!(applied.cpu_shares, None);
    assert_eq!(applied.cpu_quota_us, Some(150_000));
    assert_eq!(applied.cpu_period_us, 100_000);
    assert_eq!(applied.memory_max, Some(64 << 20));
    assert_eq!(applied.swap_max, Some(0));
    assert_eq!(applied.pids_max, Some(64));

    // Lifting the optional limits writes "max" back.
    let lifted = Limits {
        cpu_mhz: 100,
        cpu_max_cores: None,
        memory_bytes: 1 << 30,
        pids_max: 0,
    };
    let applied = cg.apply(&lifted).unwrap();
    assert_eq!(fake.leaf("cpu.weight"), "10");
    assert_eq!(fake.leaf("cpu.max"), "max 100000");
    assert_eq!(fake.leaf("pids.max"), "max");
    assert_eq!(applied.cpu_quota_us, None);
    assert_eq!(applied.pids_max, None);
    assert_eq!(applied.memory_max, Some(1 << 30));
}

#[test]
fn apply_without_swap_accounting_skips_swap() {
    let files: Vec<_> = LEAF_FILES
        .iter()
        .copied()
        .filter(|(n, _)| *n != "memory.swap.max")
        .collect();
    let fake = Fake::new("cpu memory pids\n", &files);
    let cg = fake.layout().create(REL).unwrap();
    let applied = cg.apply(&limits()).unwrap();
    assert_eq!(applied.swap_max, None);
    assert!(!fake.root.join(REL).join("memory.swap.max").exists());
}

#[test]
fn apply_reports_the_file_it_could_not_write() {
    let files: Vec<_> = LEAF_FILES
        .iter()
        .copied()
        .filter(|(n, _)| *n != "pids.max")
        .collect();
    let fake = Fake::new("cpu memory pids\n", &files);
    let cg = fake.layout().create(REL).unwrap();
    let err = cg.apply(&limits()).unwrap_err();
    match &err {
        CgroupError::Write { path, value, .. } => {
            assert_eq!(path, &fake.root.join(REL).join("pids.max"));
            assert_eq!(value, "64");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("pids.max"), "{err}");
}

#[test]
fn apply_refuses_bad_limits_before_writing() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    let cg = fake.layout().create(REL).unwrap();
    let bad = Limits {
        cpu_max_cores: Some(-2.0),
        ..limits()
    };
    let err = cg.apply(&bad).unwrap_err();
    assert!(err.to_string().contains("cpu_max_cores"), "{err}");
    assert_eq!(fake.leaf("cpu.weight"), "100\n", "nothing written");
}

#[test]
fn stats_parse_the_kernel_files() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    let cg = fake.layout().open(REL).unwrap();
    let s = cg.stats().unwrap();
    assert_eq!(s.cpu_usage_ns, 2_500_000);
    assert_eq!(s.memory_usage, 9_000_000, "current minus inactive_file");
    assert_eq!(s.memory_max_usage, 12_345_678);
    assert_eq!(s.oom_kills, 2);
    assert_eq!(s.pids_current, 3);
    assert!(cg.oom_killed());

    fs::write(
        fake.root.join(REL).join("memory.events"),
        "oom 0\noom_kill 0\n",
    )
    .unwrap();
    assert!(!cg.oom_killed());
}

#[test]
fn stats_without_memory_peak_fall_back_to_current() {
    let files: Vec<_> = LEAF_FILES
        .iter()
        .copied()
        .filter(|(n, _)| *n != "memory.peak")
        .collect();
    let fake = Fake::new("cpu memory pids\n", &files);
    let s = fake.layout().open(REL).unwrap().stats().unwrap();
    assert_eq!(s.memory_max_usage, 10_000_000);
}

#[test]
fn stats_name_the_file_with_bad_content() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    fs::write(fake.root.join(REL).join("cpu.stat"), "user_usec 3\n").unwrap();
    let cg = fake.layout().open(REL).unwrap();
    let err = cg.stats().unwrap_err();
    assert!(
        matches!(err, CgroupError::Parse { ref path, .. } if path.ends_with("cpu.stat")),
        "{err:?}"
    );
    fs::write(fake.root.join(REL).join("cpu.stat"), "usage_usec 1\n").unwrap();
    fs::write(fake.root.join(REL).join("pids.current"), "many\n").unwrap();
    let err = cg.stats().unwrap_err();
    assert!(err.to_string().contains("pids.current"), "{err}");
}

#[test]
fn add_pid_and_pids_use_cgroup_procs() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    let cg = fake.layout().create(REL).unwrap();
    cg.add_pid(4242).unwrap();
    assert_eq!(fake.leaf("cgroup.procs"), "4242");
    // A nested cgroup's processes count too.
    let inner = fake.root.join(REL).join("inner");
    fs::create_dir(&inner).unwrap();
    fs::write(inner.join("cgroup.procs"), "7\n4242\n").unwrap();
    assert_eq!(cg.pids(), vec![7, 4242]);
}

#[test]
fn kill_all_uses_cgroup_kill() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    let cg = fake.layout().create(REL).unwrap();
    cg.kill_all().unwrap();
    assert_eq!(fake.leaf("cgroup.kill"), "1");
}

#[test]
fn kill_all_without_cgroup_kill_freezes_and_thaws() {
    let files: Vec<_> = LEAF_FILES
        .iter()
        .copied()
        .filter(|(n, _)| *n != "cgroup.kill")
        .chain([
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 0\nfrozen 1\n"),
        ])
        .collect();
    let fake = Fake::new("cpu memory pids\n", &files);
    let cg = fake.layout().create(REL).unwrap();
    cg.kill_all().unwrap();
    assert_eq!(fake.leaf("cgroup.freeze"), "0", "thawed at the end");
}

#[test]
fn open_of_a_missing_cgroup_is_not_found() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    let err = fake.layout().open("taba/alloc1/other").unwrap_err();
    assert!(
        matches!(err, CgroupError::NotFound { ref path } if path == &fake.root.join("taba/alloc1/other")),
        "{err:?}"
    );
}

#[test]
fn fingerprint_of_a_v2_tree_lists_its_controllers() {
    let fake = Fake::new("cpuset cpu io memory pids\n", &LEAF_FILES);
    let info = fake.layout().info().unwrap();
    assert_eq!(info.version, "v2");
    assert_eq!(
        info.controllers,
        vec!["cpu", "cpuset", "io", "memory", "pids"]
    );
}

#[test]
fn destroy_of_a_gone_cgroup_is_fine() {
    let fake = Fake::new("cpu memory pids\n", &LEAF_FILES);
    let layout = fake.layout();
    layout.destroy("taba/never/made").unwrap();
    assert!(!Path::new(&fake.root.join("taba/never")).exists());
}

#[test]
fn memory_limit_below_usage_asks_for_reclaim_then_is_refused_before_any_write() {
    // v2's memory.max takes a limit below usage and OOM-kills the workload;
    // taba refuses it with EBUSY as v1 does (found on a real v2 kernel by
    // root_v2::root_v2_memory_limit_below_usage_is_a_clear_error_and_kills_nothing).
    let mut files = LEAF_FILES.to_vec();
    files.push(("memory.reclaim", ""));
    let fake = Fake::new("cpu memory pids\n", &files);
    let cg = fake.layout().create(REL).unwrap();
    let err = cg
        .apply(&Limits {
            memory_bytes: 4 << 20,
            ..limits()
        })
        .unwrap_err();
    match &err {
        CgroupError::Write {
            path,
            value,
            source,
        } => {
            assert!(path.ends_with("memory.max"), "{err}");
            assert_eq!(value, "4194304");
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY));
        }
        other => panic!("unexpected {other:?}"),
    }
    // It asked the kernel to reclaim the difference first (10000000 used).
    assert_eq!(
        fake.leaf("memory.reclaim"),
        (10_000_000 - (4 << 20)).to_string()
    );
    // Nothing else was written.
    assert_eq!(fake.leaf("memory.max"), "max\n");
    assert_eq!(fake.leaf("cpu.weight"), "100\n");
    assert_eq!(fake.leaf("cpu.max"), "max 100000\n");
    // Above usage it applies.
    cg.apply(&Limits {
        memory_bytes: 16 << 20,
        ..limits()
    })
    .unwrap();
    assert_eq!(fake.leaf("memory.max"), "16777216");
}
