//! Durability of the single server's embedded store, with a real `taba
//! server` process: every job registration the API acknowledged (2xx) is
//! still there, exactly as sent and never half-written, after
//!
//! - `kill -9` of the server at a random moment during 1,000 registrations
//!   sent 32 at a time (`TABA_KILL9_TRIALS` trials, 100 by default), and
//! - a power cut under the server: its data dir on an ext4 filesystem on a
//!   loop device that stops writing to the device at a random moment
//!   (`common::disk`), then a fresh device, `e2fsck` and a remount. Two
//!   ways: `dm-flakey` switched to dropping or failing every write
//!   (`TABA_DM_FLAKEY_TRIALS` trials, 3 by default, 15 to 110 s each under
//!   TCG; device-mapper is missing from this machine's kernel, so
//!   `root_dm_flakey_power_cut_in_a_guest` runs them in the QEMU guest of
//!   `scripts/guest.sh`), and ext4's shutdown ioctl, which runs here
//!   (`TABA_POWER_CUT_TRIALS` trials, 10 by default).
//!
//! Each run prints its seed; `TABA_TEST_SEED=N` replays it. Needs root.

mod common;

use common::disk::{Flakey, LoopFs};
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taba_client::Client;
use taba_store::{RedbStore, Store, Table};
use taba_types::{Job, JobSpec};

/// Registrations per trial.
const REGISTRATIONS: usize = 1000;
/// Requests in flight at once.
const IN_FLIGHT: usize = 32;

fn trials(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{var} is a number")))
        .unwrap_or(default)
}

fn job_name(i: usize) -> String {
    format!("reg-{i:04}")
}

/// Registration `i`: a job with a unique name and a payload of its own,
/// constrained to no node (stored, never placed).
fn job_toml(i: usize) -> String {
    let name = job_name(i);
    let payload: String = (0..64).map(|k| format!("{:08x}", i * 7919 + k)).collect();
    format!(
        "name = \"{name}\"\n[[group]]\nname = \"g\"\nconstraint = [{{ attribute = \"${{node.name}}\", value = \"nowhere\" }}]\n  [[group.task]]\n  name = \"t\"\n  driver = \"exec\"\n  command = [\"/bin/echo\", \"{name}\", \"{payload}\"]\n"
    )
}

fn job_spec(i: usize) -> JobSpec {
    taba_types::parse::parse_job_toml(job_toml(i).as_bytes()).expect("the test's job parses")
}

/// 1,000 registrations sent by `IN_FLIGHT` threads; each thread takes the
/// next number until none is left, and records what got a 2xx.
struct Registrations {
    acked: Arc<Mutex<Vec<(usize, Instant)>>>,
    failed: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Registrations {
    fn start(client: &Client) -> Registrations {
        let acked = Arc::new(Mutex::new(Vec::with_capacity(REGISTRATIONS)));
        let failed = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let threads = (0..IN_FLIGHT)
            .map(|_| {
                let (client, acked, failed, next) =
                    (client.clone(), acked.clone(), failed.clone(), next.clone());
                std::thread::spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= REGISTRATIONS {
                        return;
                    }
                    match client.register_job_toml(job_toml(i).as_bytes()) {
                        Ok(r) => {
                            assert!(r.changed && r.version == 0, "registration {i}: {r:?}");
                            acked.lock().unwrap().push((i, Instant::now()));
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        Registrations {
            acked,
            failed,
            threads,
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// What was acknowledged before `t`.
    fn acked_before(&self, t: Instant) -> BTreeSet<usize> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, at)| *at < t)
            .map(|(i, _)| *i)
            .collect()
    }

    /// Wait until at least `n` registrations were acknowledged (or all are
    /// done), then a random few hundred microseconds more.
    fn wait_acked(&self, n: usize, rng: &mut TestRng, log: &dyn Fn() -> String) {
        let start = Instant::now();
        while self.acked_count() < n && self.threads.iter().any(|t| !t.is_finished()) {
            // Generous: the dm-flakey trials run under TCG emulation.
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "no {n} registrations in 600 s; log:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(rng.below(0..1000)));
    }

    /// Wait for every thread; the acknowledged registrations and the number
    /// that failed.
    fn finish(self) -> (BTreeSet<usize>, usize) {
        for t in self.threads {
            t.join().expect("a registration thread panicked");
        }
        let acked: BTreeSet<usize> = self.acked.lock().unwrap().iter().map(|(i, _)| *i).collect();
        (acked, self.failed.load(Ordering::SeqCst))
    }
}

/// The registration number of a job named `reg-NNNN`.
fn number(name: &str) -> usize {
    name.strip_prefix("reg-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected job {name:?}"))
}

/// The restarted server lists every acknowledged job.
fn check_listed(server: &Server, acked: &BTreeSet<usize>) {
    let listed: BTreeSet<usize> = server
        .client
        .list_jobs()
        .expect("listing jobs after the restart")
        .iter()
        .map(|j| number(&j.name))
        .collect();
    let lost: Vec<&usize> = acked.difference(&listed).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged registrations lost after the restart: {lost:?}",
        lost.len()
    );
}

/// Open the store file the server left (it must open) and check every
/// acknowledged job is there, and every job there (acknowledged or not) is
/// whole: its record and its version record both hold exactly the spec
/// sent. Returns how many jobs the store holds.
fn check_store(path: &Path, acked: &BTreeSet<usize>) -> usize {
    let store = RedbStore::open(path)
        .unwrap_or_else(|e| panic!("the store {} does not open: {e}", path.display()));
    let decode_all = |table: Table| -> Vec<Job> {
        store
            .scan(table, "")
            .unwrap_or_else(|e| panic!("scanning {table}: {e}"))
            .iter()
            .map(|r| {
                taba_store::decode::<Job>(&r.value)
                    .unwrap_or_else(|e| panic!("{table}/{} does not decode: {e}", r.key))
            })
            .collect()
    };
    let mut present = BTreeSet::new();
    for job in decode_all(Table::Jobs) {
        let i = number(&job.spec.name);
        assert_eq!(job.spec, job_spec(i), "job {i} differs from what was sent");
        assert_eq!(job.version, 0, "job {i} was applied twice");
        assert!(present.insert(i), "job {i} stored twice");
    }
    let mut versioned = BTreeSet::new();
    for job in decode_all(Table::JobVersions) {
        let i = number(&job.spec.name);
        assert_eq!(job.spec, job_spec(i), "version of job {i} differs");
        assert!(versioned.insert(i), "job {i} has two versions");
    }
    assert_eq!(
        present, versioned,
        "a job without its version, or the reverse"
    );
    let lost: Vec<&usize> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "acknowledged jobs missing from the store: {lost:?}"
    );
    present.len()
}

/// One kill -9 trial on a fresh data dir; returns (acknowledged, stored).
fn kill9_trial(rng: &mut TestRng) -> (usize, usize) {
    let tmp = tempfile::Builder::new()
        .prefix("taba-durability-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(tmp.path(), &data, None);
    let kill_after = rng.below(1..(REGISTRATIONS - 2 * IN_FLIGHT) as u64) as usize;
    let regs = Registrations::start(&server.client);
    regs.wait_acked(kill_after, rng, &|| server.proc.log_tail());
    server.kill9();
    let (acked, _) = regs.finish();

    let mut again = Server::start(tmp.path(), &data, Some(&server.token));
    check_listed(&again, &acked);
    // kill -9 again, then read the file the way the next start would.
    again.kill9();
    let stored = check_store(&data.join("state.redb"), &acked);
    (acked.len(), stored)
}

#[test]
fn root_kill9_at_random_moments_keeps_every_acknowledged_registration() {
    require_root();
    let n = trials("TABA_KILL9_TRIALS", 100);
    let mut rng = TestRng::from_env("kill -9 trials");
    let start = Instant::now();
    let (mut acked, mut stored) = (0, 0);
    for trial in 0..n {
        let (a, s) = kill9_trial(&mut rng);
        eprintln!("trial {trial}: {a} acknowledged, {s} stored");
        acked += a;
        stored += s;
    }
    eprintln!(
        "{n} kill -9 trials in {:.1} s: {acked} acknowledged, {stored} stored, none lost",
        start.elapsed().as_secs_f64()
    );
}

/// How a power cut trial cuts the power.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// ext4's shutdown ioctl (the substitute where device-mapper is missing).
    Ext4Shutdown,
    /// dm-flakey under the filesystem starts dropping or failing writes.
    DmFlakey(Flakey),
}

impl Cut {
    fn filesystem(self) -> LoopFs {
        match self {
            Cut::Ext4Shutdown => LoopFs::create(256),
            Cut::DmFlakey(_) => LoopFs::create_on_dm_flakey(256),
        }
    }

    fn cut(self, fs: &LoopFs) {
        match self {
            Cut::Ext4Shutdown => fs.power_cut(),
            Cut::DmFlakey(how) => fs.cut_writes(how),
        }
    }

    /// Whether the server learns of the cut (its fsyncs fail). When the
    /// device silently drops writes, the machine is as good as dead from
    /// the cut on: what it acknowledges after it cannot count, and it is
    /// killed at once.
    fn noticed(self) -> bool {
        !matches!(self, Cut::DmFlakey(Flakey::DropWrites))
    }

    /// After how many acknowledged registrations the cut may come. Under
    /// the guest's emulated CPU a registration takes ~0.1 s, so dm-flakey
    /// cuts within the first 300 (the rest are still in flight or queued).
    fn moments(self) -> std::ops::Range<u64> {
        match self {
            Cut::Ext4Shutdown => 1..(REGISTRATIONS - 2 * IN_FLIGHT) as u64,
            Cut::DmFlakey(_) => 1..300,
        }
    }
}

/// After the cut: a file written and fsync'd on the filesystem. Returns
/// whether the fsync succeeded; the caller checks the file is gone after
/// the reboot (it must be, whichever way the cut was made).
fn write_canary(fs: &LoopFs) -> bool {
    use std::io::Write;
    let path = fs.mountpoint().join("canary");
    let r = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(b"written after the cut\n")?;
        f.sync_all()
    });
    r.is_ok()
}

/// One power cut trial; returns (acknowledged before the cut, acknowledged
/// in all, stored).
fn power_cut_trial(rng: &mut TestRng, cut: Cut) -> (usize, usize, usize) {
    let mut fs = cut.filesystem();
    // Configuration and logs on the host; only the store is on the test disk.
    let tmp = tempfile::Builder::new()
        .prefix("taba-powercut-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let data = fs.mountpoint().join("data");
    let mut server = Server::start(tmp.path(), &data, None);
    let cut_after = rng.below(cut.moments()) as usize;
    let regs = Registrations::start(&server.client);
    regs.wait_acked(cut_after, rng, &|| server.proc.log_tail());
    let cut_at = Instant::now();
    cut.cut(&fs);
    if cut.noticed() {
        // The server goes on taking requests for a moment on a dead disk.
        std::thread::sleep(Duration::from_millis(rng.below(0..300)));
    }
    server.kill9();
    let before_cut = regs.acked_before(cut_at);
    let (acked, _) = regs.finish();
    let log = std::fs::read_to_string(&server.proc.log).unwrap_or_default();
    assert!(
        !log.contains("panicked"),
        "the server panicked on the dead disk:\n{log}"
    );
    let canary_synced = write_canary(&fs);
    assert_eq!(
        canary_synced,
        !cut.noticed(),
        "{cut:?}: an fsync after the cut {} (the cut did not happen as meant)",
        if canary_synced { "succeeded" } else { "failed" }
    );

    fs.reboot();
    assert!(
        !fs.mountpoint().join("canary").exists(),
        "{cut:?}: a file written after the cut reached the disk"
    );
    // Every write acknowledged before the cut must be there; one
    // acknowledged after it too, when the server could notice the cut (an
    // acknowledgement is then only allowed if its fsync reached the device).
    let must_keep = if cut.noticed() {
        acked.clone()
    } else {
        before_cut.clone()
    };
    let mut again = Server::start(tmp.path(), &data, Some(&server.token));
    let listed: BTreeSet<usize> = again
        .client
        .list_jobs()
        .expect("listing jobs after the power cut")
        .iter()
        .map(|j| number(&j.name))
        .collect();
    let lost_before: Vec<&usize> = before_cut.difference(&listed).collect();
    let lost_after: Vec<&usize> = must_keep
        .difference(&before_cut)
        .filter(|i| !listed.contains(i))
        .collect();
    assert!(
        lost_before.is_empty() && lost_after.is_empty(),
        "{cut:?}: acknowledged registrations lost: {lost_before:?} acknowledged before the cut, \
         {lost_after:?} after it; the server's log before the cut:\n{log}"
    );
    again.kill9();
    let stored = check_store(&data.join("state.redb"), &must_keep);
    (before_cut.len(), acked.len(), stored)
}

#[test]
fn root_power_cut_keeps_every_acknowledged_registration() {
    require_root();
    let n = trials("TABA_POWER_CUT_TRIALS", 10);
    let mut rng = TestRng::from_env("power cut trials");
    for trial in 0..n {
        let (before, acked, stored) = power_cut_trial(&mut rng, Cut::Ext4Shutdown);
        eprintln!(
            "trial {trial}: {before} acknowledged before the cut, {acked} in all, {stored} stored"
        );
    }
}

/// The power cut with dm-flakey, each trial dropping or failing writes (a
/// coin toss). Needs device-mapper: `root_dm_flakey_power_cut_in_a_guest`
/// runs it in the QEMU guest.
#[test]
#[ignore = "needs device-mapper: root_dm_flakey_power_cut_in_a_guest runs it in a QEMU guest"]
fn root_dm_flakey_power_cut_keeps_every_acknowledged_registration() {
    require_root();
    let n = trials("TABA_DM_FLAKEY_TRIALS", 3);
    let mut rng = TestRng::from_env("dm-flakey power cut trials");
    let start = Instant::now();
    for trial in 0..n {
        let how = if rng.below(0..2) == 0 {
            Flakey::DropWrites
        } else {
            Flakey::ErrorWrites
        };
        let t = Instant::now();
        let (before, acked, stored) = power_cut_trial(&mut rng, Cut::DmFlakey(how));
        eprintln!(
            "trial {trial} ({how:?}): {before} acknowledged before the cut, {acked} in all, \
             {stored} stored, none lost ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "{n} dm-flakey trials in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// Runs the dm-flakey trials in the guest of `scripts/guest.sh` (Debian's
/// kernel with dm-mod, dm-flakey, loop and ext4; the host root over 9p, so
/// this very test binary and the `taba` binary run there). The trial count
/// (`TABA_DM_FLAKEY_TRIALS`) and `TABA_TEST_SEED` are passed in.
#[test]
fn root_dm_flakey_power_cut_in_a_guest() {
    require_root();
    common::guest::run_tests(
        &std::env::current_exe().unwrap(),
        &["root_dm_flakey_power_cut_keeps_every_acknowledged_registration"],
        &["TABA_DM_FLAKEY_TRIALS", "TABA_TEST_SEED"],
    );
}

/// The same power cut under the store alone (no server, no HTTP): threads
/// apply transactions to a `RedbStore` on the test disk; every `apply` that
/// returned `Ok` before or after the cut must survive the remount.
#[test]
fn root_power_cut_under_the_store_keeps_every_applied_transaction() {
    use taba_store::{encode, Txn};
    require_root();
    let n = trials("TABA_POWER_CUT_TRIALS", 10);
    let mut rng = TestRng::from_env("store power cut trials");
    for trial in 0..n {
        let mut fs = LoopFs::create(256);
        let path = fs.mountpoint().join("data").join("state.redb");
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let applied = Arc::new(Mutex::new(Vec::<(usize, Instant)>::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                let (store, applied, next) = (store.clone(), applied.clone(), next.clone());
                std::thread::spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= REGISTRATIONS {
                        return;
                    }
                    let txn = Txn::new().put(Table::Jobs, job_name(i), encode(&job_toml(i)));
                    match store.apply(txn) {
                        Ok(_) => applied.lock().unwrap().push((i, Instant::now())),
                        Err(_) => return,
                    }
                })
            })
            .collect();
        let cut_after = rng.below(1..(REGISTRATIONS - 2 * IN_FLIGHT) as u64) as usize;
        while applied.lock().unwrap().len() < cut_after {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(rng.below(0..1000)));
        let cut_at = Instant::now();
        fs.power_cut();
        for t in threads {
            t.join().unwrap();
        }
        drop(store);
        let applied = applied.lock().unwrap().clone();
        fs.reboot();
        let store = RedbStore::open(&path).unwrap();
        let present: BTreeSet<usize> = store
            .scan(Table::Jobs, "")
            .unwrap()
            .iter()
            .map(|r| number(&r.key))
            .collect();
        let lost_before: Vec<usize> = applied
            .iter()
            .filter(|(i, at)| *at < cut_at && !present.contains(i))
            .map(|(i, _)| *i)
            .collect();
        let lost_after: Vec<usize> = applied
            .iter()
            .filter(|(i, at)| *at >= cut_at && !present.contains(i))
            .map(|(i, _)| *i)
            .collect();
        eprintln!(
            "trial {trial}: {} applied, {} present; lost (applied before the cut) {lost_before:?}, lost (applied after) {lost_after:?}",
            applied.len(),
            present.len()
        );
        assert!(
            lost_before.is_empty() && lost_after.is_empty(),
            "applied transactions lost in the power cut"
        );
    }
}
