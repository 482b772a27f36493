//! Allocation and task runners.
//!
//! One [`AllocRunner`] per allocation on this node; it runs one task loop per
//! task of the group. A task loop starts the workload through its driver,
//! waits for it to end, and applies the group's restart policy: restart after
//! `delay` while fewer than `attempts` restarts happened within `interval`,
//! then fail (or, in `delay` mode, wait for the window to pass). Batch tasks
//! that exit 0 are done. When a task fails for good its siblings are stopped.
//!
//! Every change is written to `runner.json` before it is reported, so a
//! restarted agent resumes exactly where it was: running workloads are
//! re-attached through their handles, never restarted.

use crate::state::{RunnerState, StateDir, TaskRecord, RUNNER_STATE_VERSION};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taba_driver::{now_ms, Driver, ExitResult, Recovered, TaskConfig, TaskHandle};
use taba_types::validate::crate_signal_number;
use taba_types::wire::AllocUpdate;
use taba_types::{
    AllocId, AllocUsage, Allocation, ByteSize, ClientStatus, DesiredStatus, JobType, RestartMode,
    TaskSpec, TaskState, TaskStatus,
};
use tokio::sync::{mpsc, watch};

mod migration;
use migration::MigrationSide;

/// What every runner on this node shares.
pub struct RunnerCtx {
    /// Fetches images the node lacks from the servers (`None`: no fetching).
    pub images: Option<Arc<crate::images::ImageFetcher>>,
    /// The agent's data dir.
    pub state_dir: StateDir,
    /// Drivers by name.
    pub drivers: BTreeMap<String, Arc<dyn Driver>>,
    /// Runners announce changes here; the syncer reports them to the servers.
    pub changed: mpsc::UnboundedSender<AllocId>,
    /// Largest log file before rotation.
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    pub log_max_files: u32,
    /// This node's address, for `TABA_ADDR_<label>`.
    pub node_ip: std::net::IpAddr,
    /// Cgroup (relative to each hierarchy) under which allocations get theirs.
    pub cgroup_parent: String,
}

struct Shared {
    id: AllocId,
    ctx: Arc<RunnerCtx>,
    alloc: Mutex<Allocation>,
    state: Mutex<RunnerState>,
    /// Set when every task must stop: `Some(reason)`.
    stop: watch::Sender<Option<String>>,
    running_tasks: Mutex<usize>,
    finished: watch::Sender<bool>,
    /// Bumped when the servers send a changed allocation.
    alloc_changed: watch::Sender<u64>,
    /// Its part in a live migration (`migration.rs`).
    migration: Mutex<MigrationSide>,
    /// Source: whether the outgoing stream runs or has sent the state.
    outgoing: watch::Sender<migration::Outgoing>,
}

/// Runs one allocation.
pub struct AllocRunner {
    shared: Arc<Shared>,
}

impl AllocRunner {
    /// Start (or, with `recovered`, resume) the allocation.
    pub fn start(ctx: Arc<RunnerCtx>, alloc: Allocation, recovered: Option<RunnerState>) -> Self {
        let id = alloc.id.clone();
        let mut state = recovered.unwrap_or_else(|| RunnerState {
            version: RUNNER_STATE_VERSION,
            tasks: BTreeMap::new(),
            fenced: None,
        });
        state.version = RUNNER_STATE_VERSION;
        let now = now_ms();
        for t in &alloc.group_spec.tasks {
            state.tasks.entry(t.name.clone()).or_insert_with(|| {
                let mut s = TaskState::default();
                s.push_event(now, "Received", "task received by agent");
                TaskRecord {
                    state: s,
                    handle: None,
                    restart_times: Vec::new(),
                }
            });
        }
        let (stop, _) = watch::channel(None);
        let (finished, _) = watch::channel(false);
        let desired_stop = alloc.desired_status != DesiredStatus::Run;
        let tasks = alloc.group_spec.tasks.clone();
        let shared = Arc::new(Shared {
            id,
            ctx,
            alloc: Mutex::new(alloc),
            state: Mutex::new(state),
            stop,
            running_tasks: Mutex::new(tasks.len()),
            finished,
            alloc_changed: watch::channel(0).0,
            migration: Mutex::new(MigrationSide::default()),
            outgoing: watch::channel(migration::Outgoing::Idle).0,
        });
        if let Err(e) = shared
            .ctx
            .state_dir
            .save_alloc(&shared.alloc.lock().unwrap())
        {
            tracing::error!(alloc = %shared.id, "saving allocation: {e}");
        }
        if desired_stop {
            shared
                .stop
                .send_replace(Some("allocation is not desired to run".into()));
        }
        shared.persist_and_notify();
        migration::on_update(&shared);
        for task in tasks {
            let s = shared.clone();
            tokio::spawn(async move {
                run_task(s.clone(), task).await;
                let left = {
                    let mut n = s.running_tasks.lock().unwrap();
                    *n -= 1;
                    *n
                };
                if left == 0 {
                    // The tasks' cgroups are gone; remove the allocation's parent.
                    let rel = format!("{}/{}", s.ctx.cgroup_parent, s.id);
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Ok(layout) = taba_cgroups::Layout::detect() {
                            if let Err(e) = layout.destroy(&rel) {
                                tracing::warn!("removing cgroup {rel}: {e}");
                            }
                        }
                    })
                    .await;
                    s.finished.send_replace(true);
                }
                s.persist_and_notify();
            });
        }
        Self { shared }
    }

    /// The allocation id.
    pub fn id(&self) -> &AllocId {
        &self.shared.id
    }

    /// The servers sent the allocation again: apply it if it changed.
    pub fn update_if_changed(&self, alloc: Allocation) {
        let changed = self
            .shared
            .alloc
            .lock()
            .unwrap()
            .server_side_differs(&alloc);
        if changed {
            self.update(alloc);
        }
    }

    /// A newer version of the allocation arrived from the servers.
    pub fn update(&self, alloc: Allocation) {
        let stop = alloc.desired_status != DesiredStatus::Run;
        let reason = if alloc.desired_description.is_empty() {
            format!("allocation desired status is {}", alloc.desired_status)
        } else {
            alloc.desired_description.clone()
        };
        if let Err(e) = self.shared.ctx.state_dir.save_alloc(&alloc) {
            tracing::error!(alloc = %self.shared.id, "saving allocation: {e}");
        }
        *self.shared.alloc.lock().unwrap() = alloc;
        self.shared.alloc_changed.send_modify(|n| *n += 1);
        if stop {
            self.stop(reason);
        }
        migration::on_update(&self.shared);
    }

    /// Stop every task.
    pub fn stop(&self, reason: String) {
        self.shared.stop.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Fencing: the agent lost contact with the servers for longer than
    /// the group's `stop_after_disconnect`; stop every task and report the
    /// allocation `lost` with `reason` (kept across agent restarts).
    pub fn fence(&self, reason: String) {
        self.shared.state.lock().unwrap().fenced = Some(reason.clone());
        self.shared.persist_and_notify();
        self.stop(reason);
    }

    /// Whether the agent fenced the allocation.
    pub fn is_fenced(&self) -> bool {
        self.shared.state.lock().unwrap().fenced.is_some()
    }

    /// The group's `stop_after_disconnect`, while the allocation is
    /// desired to run.
    pub fn stop_after_disconnect(&self) -> Option<Duration> {
        let a = self.shared.alloc.lock().unwrap();
        if a.desired_status != DesiredStatus::Run {
            return None;
        }
        a.group_spec.stop_after_disconnect.map(|d| d.as_duration())
    }

    /// Wait until every task loop has ended.
    pub async fn wait_finished(&self) {
        let mut rx = self.shared.finished.subscribe();
        let _ = rx.wait_for(|f| *f).await;
    }

    /// Whether every task loop has ended.
    pub fn is_finished(&self) -> bool {
        *self.shared.finished.borrow()
    }

    /// The state to report to the servers.
    pub fn report(&self) -> AllocUpdate {
        self.shared.report()
    }

    /// The handle of a task's current workload.
    pub fn handle(&self, task: &str) -> Option<TaskHandle> {
        let st = self.shared.state.lock().unwrap();
        let rec = st.tasks.get(task)?;
        (rec.state.state == TaskStatus::Running)
            .then(|| rec.handle.clone())
            .flatten()
    }

    /// Task names of the allocation.
    pub fn task_names(&self) -> Vec<String> {
        self.shared
            .alloc
            .lock()
            .unwrap()
            .group_spec
            .tasks
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// Driver of a task.
    pub fn driver_of(&self, task: &str) -> Option<Arc<dyn Driver>> {
        let alloc = self.shared.alloc.lock().unwrap();
        let t = alloc.group_spec.tasks.iter().find(|t| t.name == task)?;
        self.shared.ctx.drivers.get(&t.driver).cloned()
    }

    /// Sum of the running tasks' usage; `cpu_mhz` is left to the caller,
    /// which knows the previous sample.
    pub fn usage(&self) -> Option<AllocUsage> {
        let handles: Vec<(TaskHandle, Arc<dyn Driver>)> = {
            let st = self.shared.state.lock().unwrap();
            st.tasks
                .iter()
                .filter(|(_, r)| r.state.state == TaskStatus::Running)
                .filter_map(|(name, r)| Some((r.handle.clone()?, self.driver_of(name)?)))
                .collect()
        };
        if handles.is_empty() {
            return None;
        }
        let mut u = AllocUsage {
            at: now_ms(),
            ..Default::default()
        };
        for (h, d) in handles {
            if let Ok(s) = d.stats(&h) {
                u.cpu_total_ns += s.cpu_usage_ns;
                u.memory = ByteSize(u.memory.0 + s.memory);
                u.memory_max = ByteSize(u.memory_max.0 + s.memory_max);
            }
        }
        Some(u)
    }
}

impl Shared {
    fn persist_and_notify(&self) {
        let st = self.state.lock().unwrap().clone();
        if let Err(e) = self.ctx.state_dir.save_runner(self.id.as_str(), &st) {
            tracing::error!(alloc = %self.id, "saving runner state: {e}");
        }
        let _ = self.ctx.changed.send(self.id.clone());
    }

    fn update_task(&self, task: &str, f: impl FnOnce(&mut TaskRecord)) {
        {
            let mut st = self.state.lock().unwrap();
            if let Some(r) = st.tasks.get_mut(task) {
                f(r);
            }
        }
        self.persist_and_notify();
    }

    fn record(&self, task: &str) -> TaskRecord {
        self.state
            .lock()
            .unwrap()
            .tasks
            .get(task)
            .cloned()
            .unwrap_or_default()
    }

    fn stop_reason(&self) -> Option<String> {
        self.stop.borrow().clone()
    }

    fn report(&self) -> AllocUpdate {
        let st = self.state.lock().unwrap();
        let task_states: BTreeMap<String, TaskState> = st
            .tasks
            .iter()
            .map(|(k, v)| (k.clone(), v.state.clone()))
            .collect();
        let (mut client_status, mut client_description) = client_status(&task_states);
        if let (Some(why), true) = (&st.fenced, client_status.is_terminal()) {
            client_status = ClientStatus::Lost;
            client_description = format!("stopped by its agent: {why}");
        }
        AllocUpdate {
            id: self.id.clone(),
            client_status,
            client_description,
            task_states,
            usage: None,
            migration: self.migration.lock().unwrap().report.clone(),
        }
    }
}

/// The allocation's status from its tasks'.
pub fn client_status(tasks: &BTreeMap<String, TaskState>) -> (ClientStatus, String) {
    if let Some((name, _)) = tasks.iter().find(|(_, t)| t.failed) {
        return (ClientStatus::Failed, format!("task {name} failed"));
    }
    if !tasks.is_empty() && tasks.values().all(|t| t.state == TaskStatus::Dead) {
        return (ClientStatus::Complete, "all tasks have completed".into());
    }
    if tasks.values().any(|t| t.state == TaskStatus::Running)
        && tasks.values().all(|t| t.state != TaskStatus::Pending)
    {
        return (ClientStatus::Running, "tasks are running".into());
    }
    (ClientStatus::Pending, "tasks are starting".into())
}

fn task_config(s: &Shared, task: &TaskSpec) -> TaskConfig {
    let alloc = s.alloc.lock().unwrap();
    let alloc_dir = s.ctx.state_dir.alloc_dir(alloc.id.as_str());
    let mut env = vec![
        ("TABA_ALLOC_ID".to_string(), alloc.id.to_string()),
        ("TABA_ALLOC_NAME".to_string(), alloc.name.clone()),
        ("TABA_ALLOC_INDEX".to_string(), alloc.index.to_string()),
        ("TABA_JOB_NAME".to_string(), alloc.job.clone()),
        ("TABA_GROUP_NAME".to_string(), alloc.group.clone()),
        ("TABA_TASK_NAME".to_string(), task.name.clone()),
        ("TABA_NODE_NAME".to_string(), alloc.node_name.clone()),
    ];
    env.extend(taba_types::ports::port_env(&alloc.ports, s.ctx.node_ip));
    TaskConfig {
        alloc_id: alloc.id.clone(),
        job: alloc.job.clone(),
        group: alloc.group.clone(),
        task: task.clone(),
        network_mode: alloc.group_spec.network.mode,
        task_dir: alloc_dir.join(&task.name),
        log_dir: alloc_dir.join("logs"),
        log_max_bytes: s.ctx.log_max_bytes,
        log_max_files: s.ctx.log_max_files,
        cgroup: format!("{}/{}/{}", s.ctx.cgroup_parent, alloc.id, task.name),
        env,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Wait for a stop request; returns its reason.
async fn stopped(s: &Shared) -> String {
    let mut rx = s.stop.subscribe();
    let reason = rx.wait_for(|v| v.is_some()).await.map(|v| v.clone());
    match reason {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => std::future::pending().await,
    }
}

/// Sleep, unless a stop comes first (then `false`).
async fn sleep_unless_stopped(s: &Shared, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stopped(s) => false,
    }
}

fn mark_dead(s: &Shared, task: &str, failed: bool, kind: &str, msg: String) {
    let now = now_ms();
    s.update_task(task, |r| {
        r.state.state = TaskStatus::Dead;
        r.state.failed = failed;
        r.state.pid = None;
        r.state.finished_at = Some(now);
        r.state.push_event(now, kind, msg);
    });
}

async fn run_task(s: Arc<Shared>, task: TaskSpec) {
    let name = task.name.clone();
    let (job_type, policy) = {
        let a = s.alloc.lock().unwrap();
        (a.job_type, a.group_spec.restart_policy(a.job_type))
    };
    let Some(driver) = s.ctx.drivers.get(&task.driver).cloned() else {
        mark_dead(
            &s,
            &name,
            true,
            "Driver Failure",
            format!("driver {:?} is not available on this node", task.driver),
        );
        s.stop.send_replace(Some(format!("task {name} failed")));
        return;
    };
    // The job's kill_signal, else what the driver learnt at start (an
    // image's STOPSIGNAL), else SIGTERM.
    let kill_signal = task.kill_signal.as_deref().and_then(crate_signal_number);
    let kill_timeout = task.kill_timeout.as_duration();

    // Resume what a previous agent left.
    let rec = s.record(&name);
    if rec.state.state == TaskStatus::Dead {
        return;
    }
    let mut resumed: Option<(TaskHandle, Option<ExitResult>)> = None;
    if let (TaskStatus::Running, Some(h)) = (rec.state.state, rec.handle.clone()) {
        let d = driver.clone();
        let h2 = h.clone();
        match blocking(move || d.recover(&h2)).await {
            Ok(Recovered::Running) => {
                tracing::info!(alloc = %s.id, task = %name, pid = h.pid, "re-attached to running task");
                resumed = Some((h, None));
            }
            Ok(Recovered::Exited(r)) => resumed = Some((h, Some(r))),
            Err(e) => {
                tracing::warn!(alloc = %s.id, task = %name, "could not recover task: {e}");
                let r = ExitResult {
                    start_error: Some(format!("lost while the agent was down: {e}")),
                    finished_at: now_ms(),
                    ..Default::default()
                };
                resumed = Some((h, Some(r)));
            }
        }
    }

    // A live migration's target takes its first workload from the source.
    let mut may_migrate_in = resumed.is_none();
    loop {
        // 1. Have a running workload (or a result).
        let (handle, early_exit) = match resumed.take() {
            Some(x) => (Some(x.0), x.1),
            None => {
                if let Some(reason) = s.stop_reason() {
                    mark_dead(&s, &name, false, "Killed", reason);
                    return;
                }
                if std::mem::take(&mut may_migrate_in) && s.is_migration_target() {
                    // The images the target's QEMU needs (the bases of its disks)
                    // first; without them the target ends and the VM stays at the source.
                    match prepare_image(&s, &task, &driver).await {
                        Prepared::Ready => match migration::incoming(&s, &task, &driver).await {
                            Some(started) => started,
                            None => return,
                        },
                        Prepared::Stopped(reason) => {
                            mark_dead(&s, &name, false, "Killed", reason);
                            return;
                        }
                        Prepared::Failed(r) => (None, Some(r)),
                    }
                } else {
                    match prepare_image(&s, &task, &driver).await {
                        Prepared::Ready => start_workload(&s, &task, &driver).await,
                        Prepared::Stopped(reason) => {
                            mark_dead(&s, &name, false, "Killed", reason);
                            return;
                        }
                        Prepared::Failed(r) => (None, Some(r)),
                    }
                }
            }
        };

        // 2. Wait for it to end, or stop it.
        let mut stop_reason = None;
        let result = match (early_exit, handle.clone()) {
            (Some(r), _) => r,
            (None, Some(h)) => {
                let d = driver.clone();
                let h2 = h.clone();
                let mut wait = tokio::task::spawn_blocking(move || d.wait(&h2));
                let r = tokio::select! {
                    r = &mut wait => r,
                    reason = stopped(&s) => {
                        stop_reason = Some(reason.clone());
                        let now = now_ms();
                        s.update_task(&name, |r| r.state.push_event(now, "Killing", reason));
                        let d = driver.clone();
                        let h3 = h.clone();
                        let signal = kill_signal.or(h.stop_signal).unwrap_or(libc::SIGTERM);
                        if let Err(e) = blocking(move || d.stop(&h3, signal, kill_timeout)).await {
                            tracing::warn!(alloc = %s.id, task = %name, "stopping task: {e}");
                        }
                        wait.await
                    }
                };
                match r {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => ExitResult {
                        start_error: Some(format!(
                            "waiting for the task failed: {}",
                            taba_types::error_chain(&e)
                        )),
                        finished_at: now_ms(),
                        ..Default::default()
                    },
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
            (None, None) => unreachable!("a start either gives a handle or a result"),
        };
        if let Some(h) = handle {
            let d = driver.clone();
            if let Err(e) = blocking(move || d.destroy(&h)).await {
                tracing::warn!(alloc = %s.id, task = %name, "releasing task resources: {e}");
            }
        }
        let now = now_ms();
        let kind = if result.oom_killed {
            "OOM Killed"
        } else {
            "Terminated"
        };
        let desc = result.describe();
        s.update_task(&name, |r| {
            r.state.exit_code = result.exit_code;
            r.state.signal = result.signal;
            r.state.oom_killed = result.oom_killed;
            if result.oom_killed {
                r.state.oom_kills += 1;
            }
            r.state.pid = None;
            r.state.push_event(now, kind, desc.clone());
        });

        // 3. Decide what comes next.
        if let Some(to) = migration::sent_away(&s).await {
            mark_dead(
                &s,
                &name,
                false,
                "Migrated",
                format!("migrated live to node {to}"),
            );
            return;
        }
        if let Some(reason) = stop_reason.or_else(|| s.stop_reason()) {
            mark_dead(&s, &name, false, "Killed", reason);
            return;
        }
        if job_type == JobType::Batch && result.successful() {
            mark_dead(&s, &name, false, "Completed", "exit code 0".into());
            return;
        }
        let rec = s.record(&name);
        let (delay, mut recent) = match after_exit(&policy, &rec.restart_times, now) {
            AfterExit::Restart { delay, recent } => (delay, recent),
            AfterExit::Fail => {
                let msg = format!(
                    "exceeded {} restarts in {}; last run: {desc}",
                    policy.attempts, policy.interval
                );
                mark_dead(&s, &name, true, "Not Restarting", msg);
                s.stop.send_if_modified(|cur| {
                    if cur.is_none() {
                        *cur = Some(format!("sibling task {name} failed"));
                        true
                    } else {
                        false
                    }
                });
                return;
            }
        };
        recent.push(now + delay.as_millis() as u64);
        s.update_task(&name, |r| {
            r.restart_times = recent.clone();
            r.state.restarts += 1;
            r.state.state = TaskStatus::Pending;
            r.state.push_event(
                now,
                "Restarting",
                format!("{desc}; restarting in {}ms", delay.as_millis()),
            );
        });
        if !sleep_unless_stopped(&s, delay).await {
            let reason = s.stop_reason().unwrap_or_default();
            mark_dead(&s, &name, false, "Killed", reason);
            return;
        }
    }
}

/// Starts the workload through its driver: a handle, or the start error as a result.
async fn start_workload(
    s: &Shared,
    task: &TaskSpec,
    driver: &Arc<dyn Driver>,
) -> (Option<TaskHandle>, Option<ExitResult>) {
    let cfg = task_config(s, task);
    let d = driver.clone();
    match blocking(move || d.start(&cfg)).await {
        Ok(h) => {
            let now = now_ms();
            let pid = h.pid;
            s.update_task(&task.name, |r| {
                r.handle = Some(h.clone());
                r.state.state = TaskStatus::Running;
                r.state.pid = Some(pid);
                r.state.started_at = Some(h.started_at);
                r.state.exit_code = None;
                r.state.signal = None;
                r.state.oom_killed = false;
                r.state
                    .push_event(now, "Started", format!("task started (pid {pid})"));
            });
            (Some(h), None)
        }
        Err(e) => {
            let r = ExitResult {
                start_error: Some(taba_types::error_chain(&e)),
                finished_at: now_ms(),
                ..Default::default()
            };
            let msg = taba_types::error_chain(&e);
            s.update_task(&task.name, |rec| {
                rec.state.push_event(now_ms(), "Driver Failure", msg);
            });
            (None, Some(r))
        }
    }
}

/// What getting a task's image ready came to.
enum Prepared {
    /// The image is on the node (or the task needs none).
    Ready,
    /// It could not be fetched: the start fails with this result.
    Failed(ExitResult),
    /// The allocation was stopped while fetching.
    Stopped(String),
}

/// Fetches the images of the node's store the task needs (its container image, a VM's disk
/// images: [`Driver::store_images`]) from the servers when the node lacks them; every step
/// is a task event.
async fn prepare_image(s: &Shared, task: &TaskSpec, driver: &Arc<dyn Driver>) -> Prepared {
    let Some(fetcher) = s.ctx.images.clone() else {
        return Prepared::Ready;
    };
    for image in driver.store_images(task) {
        match prepare_one(s, &task.name, &fetcher, image).await {
            Prepared::Ready => {}
            other => return other,
        }
    }
    Prepared::Ready
}

/// [`prepare_image`] of one image.
async fn prepare_one(
    s: &Shared,
    name: &str,
    fetcher: &Arc<crate::images::ImageFetcher>,
    image: String,
) -> Prepared {
    let fetched = async {
        if fetcher.is_present(&image).await? {
            return Ok(None);
        }
        s.update_task(name, |r| {
            r.state.push_event(
                now_ms(),
                "Downloading Image",
                format!("image {image} is not on this node; fetching it from the servers"),
            )
        });
        fetcher.fetch(&image).await.map(Some)
    };
    let result = tokio::select! {
        r = fetched => r,
        reason = stopped(s) => return Prepared::Stopped(reason),
    };
    match result {
        Ok(None) => Prepared::Ready,
        Ok(Some(f)) => {
            let msg = if f.blobs == 0 {
                format!(
                    "image {image} ({}) was fetched by another allocation on this node",
                    f.id
                )
            } else {
                format!(
                    "fetched image {image} ({}) from the servers: {} blobs, {} bytes in {} ms",
                    f.id,
                    f.blobs,
                    f.bytes,
                    f.elapsed.as_millis()
                )
            };
            tracing::info!(alloc = %s.id, task = %name, "{msg}");
            s.update_task(name, |r| r.state.push_event(now_ms(), "Image Fetched", msg));
            Prepared::Ready
        }
        Err(e) => {
            let msg = format!(
                "fetching image {image} from the servers: {}",
                taba_types::error_chain(&e)
            );
            tracing::warn!(alloc = %s.id, task = %name, "{msg}");
            s.update_task(name, |r| {
                r.state
                    .push_event(now_ms(), "Image Fetch Failed", msg.clone())
            });
            Prepared::Failed(ExitResult {
                start_error: Some(msg),
                finished_at: now_ms(),
                ..Default::default()
            })
        }
    }
}

/// What the restart policy says after a run that did not simply complete.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// Restart after `delay`; `recent` are the restarts still in the window.
    Restart {
        /// Wait this long first.
        delay: Duration,
        /// Earlier restarts within the policy's interval.
        recent: Vec<u64>,
    },
    /// The restart budget is spent: the task fails.
    Fail,
}

/// Apply `policy` given the times of earlier restarts (when each restarted
/// run was due to start) and the time now.
pub fn after_exit(policy: &taba_types::RestartPolicy, restarts: &[u64], now: u64) -> AfterExit {
    let window_start = now.saturating_sub(policy.interval.0);
    let recent: Vec<u64> = restarts
        .iter()
        .copied()
        .filter(|t| *t >= window_start)
        .collect();
    if (recent.len() as u32) < policy.attempts {
        return AfterExit::Restart {
            delay: policy.delay.as_duration(),
            recent,
        };
    }
    if policy.mode == RestartMode::Delay && policy.attempts > 0 {
        // Wait until the oldest restart leaves the window.
        let oldest = recent.first().copied().unwrap_or(now);
        let delay = Duration::from_millis((oldest + policy.interval.0).saturating_sub(now))
            .max(policy.delay.as_duration());
        return AfterExit::Restart { delay, recent };
    }
    AfterExit::Fail
}

#[cfg(test)]
mod tests {
    use super::*;
    use taba_types::{DurationSpec, RestartPolicy};

    fn policy(attempts: u32, mode: RestartMode) -> RestartPolicy {
        RestartPolicy {
            attempts,
            interval: DurationSpec::secs(60),
            delay: DurationSpec::secs(2),
            mode,
        }
    }

    #[test]
    fn restarts_until_attempts_then_fails() {
        let p = policy(2, RestartMode::Fail);
        let now = 1_000_000;
        assert_eq!(
            after_exit(&p, &[], now),
            AfterExit::Restart {
                delay: Duration::from_secs(2),
                recent: vec![]
            }
        );
        assert!(matches!(
            after_exit(&p, &[now - 5_000], now),
            AfterExit::Restart { .. }
        ));
        assert_eq!(
            after_exit(&p, &[now - 5_000, now - 1_000], now),
            AfterExit::Fail
        );
        // Restarts older than the interval no longer count.
        assert!(matches!(
            after_exit(&p, &[now - 120_000, now - 1_000], now),
            AfterExit::Restart { .. }
        ));
        assert_eq!(
            after_exit(&policy(0, RestartMode::Fail), &[], now),
            AfterExit::Fail
        );
    }

    #[test]
    fn delay_mode_waits_for_the_window() {
        let p = policy(1, RestartMode::Delay);
        let now = 1_000_000;
        match after_exit(&p, &[now - 10_000], now) {
            AfterExit::Restart { delay, .. } => assert_eq!(delay, Duration::from_secs(50)),
            other => panic!("{other:?}"),
        }
    }

    fn task(state: TaskStatus, failed: bool) -> TaskState {
        TaskState {
            state,
            failed,
            ..Default::default()
        }
    }

    #[test]
    fn alloc_status_from_tasks() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), task(TaskStatus::Running, false));
        m.insert("b".to_string(), task(TaskStatus::Pending, false));
        assert_eq!(client_status(&m).0, ClientStatus::Pending);
        m.insert("b".to_string(), task(TaskStatus::Running, false));
        assert_eq!(client_status(&m).0, ClientStatus::Running);
        m.insert("b".to_string(), task(TaskStatus::Dead, false));
        assert_eq!(client_status(&m).0, ClientStatus::Running);
        m.insert("a".to_string(), task(TaskStatus::Dead, false));
        assert_eq!(client_status(&m).0, ClientStatus::Complete);
        m.insert("a".to_string(), task(TaskStatus::Dead, true));
        let (st, why) = client_status(&m);
        assert_eq!(st, ClientStatus::Failed);
        assert!(why.contains("task a failed"));
    }
}
