//! Live migration of a VM: the `vm` driver's [`Migratable`].
//!
//! ```text
//! source QEMU (running)                         target QEMU
//!                                               started with -incoming defer (same accel)
//!                                               QMP migrate-set-capabilities events
//!                                               QMP migrate-incoming tcp:IP:0
//!                                               QMP query-migrate -> socket-address: port P
//!              <---------- Incoming {IP:P} ----
//! QMP migrate-set-capabilities events, auto-converge (+ postcopy-ram on both sides)
//! QMP migrate-set-parameters downtime-limit, max-bandwidth
//! QMP migrate tcp:IP:P  ==== RAM pages, device state ====>
//! QMP query-migrate every 50 ms -> progress      (loads state; autostarts when complete)
//!   not converged (pass 1 done, timeout/4 gone), post-copy allowed:
//!     QMP migrate-start-postcopy                (runs; faults pages in from the source)
//!   completed: QMP quit (the source ends, exit 0)
//!   cancel (progress says Break) / timeout, before post-copy: QMP migrate_cancel,
//!     then QEMU's verdict: completed -> as above; cancelled/failed -> the source runs on
//!                                               finish_incoming: query-status running and
//!                                                 the incoming migration no longer post-copy
//!                                               abort_incoming: killed, cgroup removed
//! ```
//!
//! Disks (local qcow2 files) move with the VM, as Proxmox and Incus do it:
//!
//! ```text
//! target: fresh overlays on the same bases; QEMU -incoming defer -S;
//!         capability late-block-activate; nbd-server-start IP:Q;
//!         nbd-server-add diskN writable                 -> Incoming {IP:P, disks: IP:Q}
//! source: blockdev-add nbd tgtN (IP:Q, export diskN); blockdev-mirror
//!         mirrorN diskN -> tgtN sync=top; wait until every mirror is ready;
//!         migrate (as above); completed -> block-job-cancel mirrorN (a ready
//!         mirror ends with a consistent copy) and wait until no job is left
//!         failed -> block-job-cancel, blockdev-del tgtN: the source runs on
//! target: finish_incoming: nbd-server-stop; cont (activates the disks)
//! ```

use super::{block_on, qmp, VmDriver, VmError, QMP_TIMEOUT};
use crate::migrate::{
    Incoming, Migratable, MigrationPolicy, MigrationProgress, MigrationStats, SourceInfo,
    SOURCE_END_TIMEOUT,
};
use crate::shimmed::wait_gone;
use crate::{DriverError, TaskConfig, TaskHandle};
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};
use taba_runtime::shim::Workload;
use taba_types::vm::VmAccel;

/// "As fast as it goes" (QEMU's default cap is far lower).
const UNLIMITED_BANDWIDTH: u64 = 100 << 30;
/// How often a running migration is looked at.
const POLL: Duration = Duration::from_millis(50);

fn failed(why: impl Into<String>) -> DriverError {
    VmError::Migration(why.into()).into()
}

impl Migratable for VmDriver {
    fn source_info(&self, h: &TaskHandle) -> Result<SourceInfo, DriverError> {
        let sc = taba_runtime::shim::read_config(&h.task_dir)?;
        let Workload::Process(p) = &sc.workload else {
            return Err(failed("the task is not a VM"));
        };
        let accel = p
            .args
            .windows(2)
            .find(|w| w[0] == "-accel")
            .map(|w| w[1].as_str())
            .ok_or_else(|| failed("the VM's QEMU command line has no -accel"))?;
        Ok(SourceInfo {
            accel: if accel.starts_with("kvm") {
                VmAccel::Kvm
            } else {
                VmAccel::Tcg
            },
            post_copy: false,
        })
    }

    fn prepare_incoming(
        &self,
        cfg: &TaskConfig,
        listen: IpAddr,
        source: &SourceInfo,
    ) -> Result<(TaskHandle, Incoming), DriverError> {
        self.prepare_task_dir(cfg)?;
        let (mut plan, made) = self.plan(cfg, Some(source.accel))?;
        plan.incoming = Some("defer".into());
        let disk_count = plan.disks.len();
        // With disks, the target waits paused until their copy is complete.
        plan.paused = disk_count > 0;
        let h = self
            .launch(cfg, &plan)
            .inspect_err(|_| super::remove_files(&made))?;
        let listening = (|| -> Result<Incoming, DriverError> {
            let mut caps = capabilities(false, source.post_copy);
            if disk_count > 0 {
                caps.capabilities.push(qmp::MigrationCapability {
                    capability: "late-block-activate".into(),
                    state: true,
                });
            }
            self.qmp(&h, caps)?;
            let disks = if disk_count > 0 {
                Some(self.export_disks(&h, listen, disk_count)?)
            } else {
                None
            };
            let uri = format!("tcp:{}", SocketAddr::new(listen, 0));
            self.qmp(&h, qmp::MigrateIncoming { uri })?;
            let info = self.qmp(&h, qmp::QueryMigrate)?;
            let port = info
                .socket_address
                .iter()
                .find_map(|a| a.port.as_deref()?.parse::<u16>().ok())
                .ok_or_else(|| {
                    failed(format!("target: QEMU names no listening port ({info:?})"))
                })?;
            Ok(Incoming {
                addr: SocketAddr::new(listen, port),
                disks,
                disk_count,
            })
        })();
        match listening {
            Ok(i) => Ok((h, i)),
            Err(e) => {
                let _ = self.abort_incoming(&h);
                super::remove_files(&made);
                Err(e)
            }
        }
    }

    fn migrate_out(
        &self,
        h: &TaskHandle,
        to: &Incoming,
        policy: &MigrationPolicy,
        progress: &mut dyn FnMut(&MigrationProgress) -> ControlFlow<String>,
    ) -> Result<MigrationStats, DriverError> {
        let sock = Self::qmp_socket(&h.task_dir);
        let deadline = Instant::now() + policy.timeout;
        let stats = block_on(async {
            let mut q = qmp::Qmp::connect(&sock, QMP_TIMEOUT).await?;
            q.execute(&capabilities(policy.auto_converge, policy.post_copy))
                .await?;
            q.execute(&qmp::MigrateSetParameters {
                downtime_limit: Some(policy.max_downtime.as_millis().max(1) as u64),
                max_bandwidth: Some(if policy.max_bandwidth == 0 {
                    UNLIMITED_BANDWIDTH
                } else {
                    policy.max_bandwidth
                }),
            })
            .await?;
            if let Some(nbd) = to.disks {
                let mirrored = mirror_disks(&mut q, nbd, to.disk_count, deadline, progress).await;
                if let Err(e) = mirrored {
                    stop_mirrors(&mut q, to.disk_count).await;
                    return Ok(Err(e));
                }
            }
            q.execute(&qmp::Migrate {
                uri: format!("tcp:{}", to.addr),
            })
            .await?;
            let r = watch(&mut q, policy, deadline, progress).await?;
            if to.disks.is_some() {
                if r.is_ok() {
                    // A ready mirror ends with a consistent copy on the target.
                    for i in 0..to.disk_count {
                        q.execute(&qmp::BlockJobCancel {
                            device: format!("mirror{i}"),
                        })
                        .await?;
                    }
                    let until = Instant::now() + policy.timeout;
                    while !q.execute(&qmp::QueryBlockJobs).await?.is_empty() {
                        if Instant::now() > until {
                            return Ok(Err(failed("disk mirrors did not end")));
                        }
                        tokio::time::sleep(POLL).await;
                    }
                } else {
                    stop_mirrors(&mut q, to.disk_count).await;
                }
            }
            Ok::<_, VmError>(r)
        })???;
        // The source is paused for good: end it (exit 0).
        let _ = self.qmp(h, qmp::Quit);
        if !wait_gone(h.pid, SOURCE_END_TIMEOUT) {
            let _ = self.shim.stop(h, libc::SIGKILL, Duration::ZERO);
        }
        Ok(stats)
    }

    fn finish_incoming(&self, h: &TaskHandle, timeout: Duration) -> Result<(), DriverError> {
        let deadline = Instant::now() + timeout;
        let mut resumed = false;
        loop {
            let st = self.qmp(h, qmp::QueryStatus)?;
            if !st.running && !resumed && st.status != "inmigrate" {
                // Started paused (disks): the copies are complete; stop
                // exporting them, then run (which activates them).
                let _ = self.qmp(h, qmp::NbdServerStop);
                self.qmp(h, qmp::Cont)?;
                resumed = true;
                continue;
            }
            // In post-copy the VM runs here while pages still come from the
            // source: it is ours only once the migration completed.
            if st.running && !self.incoming_in_postcopy(h)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "target: the VM is {:?}, not running, after {}s",
                    st.status,
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    fn abort_incoming(&self, h: &TaskHandle) -> Result<(), DriverError> {
        self.shim.stop(h, libc::SIGKILL, Duration::ZERO)?;
        let _ = self.shim.wait(h);
        let _ = std::fs::remove_file(Self::qmp_socket(&h.task_dir));
        self.shim.destroy_cgroup(h)
    }
}

impl VmDriver {
    /// Whether the incoming migration of `h` still runs in post-copy.
    fn incoming_in_postcopy(&self, h: &TaskHandle) -> Result<bool, DriverError> {
        let info = self.qmp(h, qmp::QueryMigrate)?;
        Ok(info
            .status
            .as_deref()
            .is_some_and(|s| s.starts_with("postcopy")))
    }

    /// Start the target's NBD server on `listen` and export its disks.
    fn export_disks(
        &self,
        h: &TaskHandle,
        listen: IpAddr,
        count: usize,
    ) -> Result<SocketAddr, DriverError> {
        // A free port now; QEMU's nbd-server-start does not report one it picked.
        let port = std::net::TcpListener::bind(SocketAddr::new(listen, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| failed(format!("target: no free port for disks: {e}")))?
            .port();
        self.qmp(
            h,
            qmp::NbdServerStart {
                addr: qmp::TaggedInet {
                    kind: "inet",
                    data: qmp::InetAddress {
                        host: listen.to_string(),
                        port: port.to_string(),
                    },
                },
            },
        )?;
        for i in 0..count {
            self.qmp(
                h,
                qmp::NbdServerAdd {
                    device: format!("disk{i}"),
                    writable: true,
                },
            )?;
        }
        Ok(SocketAddr::new(listen, port))
    }
}

/// Mirror every disk to the target's NBD exports; returns once all are in
/// sync (progress: the disks' bytes copied and left).
async fn mirror_disks(
    q: &mut qmp::Qmp,
    nbd: SocketAddr,
    count: usize,
    deadline: Instant,
    progress: &mut dyn FnMut(&MigrationProgress) -> ControlFlow<String>,
) -> Result<(), DriverError> {
    let qe = |e: qmp::QmpError| DriverError::from(VmError::from(e));
    for i in 0..count {
        q.execute(&qmp::BlockdevAddNbd {
            driver: "nbd",
            node_name: format!("tgt{i}"),
            server: qmp::ServerInet {
                kind: "inet",
                host: nbd.ip().to_string(),
                port: nbd.port().to_string(),
            },
            export: format!("disk{i}"),
        })
        .await
        .map_err(qe)?;
        q.execute(&qmp::BlockdevMirror {
            job_id: format!("mirror{i}"),
            device: format!("disk{i}"),
            target: format!("tgt{i}"),
            sync: "top",
        })
        .await
        .map_err(qe)?;
    }
    loop {
        let jobs = q.execute(&qmp::QueryBlockJobs).await.map_err(qe)?;
        if jobs.len() == count && jobs.iter().all(|j| j.ready) {
            return Ok(());
        }
        if jobs.len() < count {
            return Err(failed("a disk mirror ended before it was in sync"));
        }
        if Instant::now() > deadline {
            return Err(failed("disk mirrors not in sync in time"));
        }
        let (done, len) = jobs
            .iter()
            .fold((0, 0), |(d, l), j| (d + j.offset, l + j.len));
        if let ControlFlow::Break(why) = progress(&MigrationProgress {
            transferred: done,
            remaining: len.saturating_sub(done),
            total: len,
            ..Default::default()
        }) {
            return Err(failed(why));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Undo [`mirror_disks`] after a failure: the source keeps its disks as they are.
async fn stop_mirrors(q: &mut qmp::Qmp, count: usize) {
    for i in 0..count {
        let _ = q
            .execute(&qmp::BlockJobCancel {
                device: format!("mirror{i}"),
            })
            .await;
    }
    for _ in 0..100 {
        match q.execute(&qmp::QueryBlockJobs).await {
            Ok(j) if !j.is_empty() => tokio::time::sleep(POLL).await,
            _ => break,
        }
    }
    for i in 0..count {
        let _ = q
            .execute(&qmp::BlockdevDel {
                node_name: format!("tgt{i}"),
            })
            .await;
    }
}

/// The capabilities of both sides: events, auto-converge (the source's
/// policy), post-copy (both, when the policy allows it).
fn capabilities(auto_converge: bool, post_copy: bool) -> qmp::MigrateSetCapabilities {
    let cap = |name: &str, state| qmp::MigrationCapability {
        capability: name.into(),
        state,
    };
    qmp::MigrateSetCapabilities {
        capabilities: vec![
            cap("events", true),
            cap("auto-converge", auto_converge),
            cap("postcopy-ram", post_copy),
        ],
    }
}

/// When a pre-copy that does not converge switches to post-copy (if the
/// policy allows it): after its first full pass over RAM, once this share
/// of `migrate.timeout` has passed.
const POSTCOPY_AFTER: f64 = 0.25;
/// How long QEMU has to end a migration it was asked to cancel.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// Follow the migration until it ends. Escalates by the policy: pre-copy
/// within `max_downtime` (auto-converge, when on, slows the guest only
/// when it dirties memory faster than it moves), then post-copy when
/// allowed; cancels at the deadline or when `progress` says so. A cancel
/// waits for QEMU's verdict: a migration that completed meanwhile is a
/// completed one.
async fn watch(
    q: &mut qmp::Qmp,
    policy: &MigrationPolicy,
    deadline: Instant,
    progress: &mut dyn FnMut(&MigrationProgress) -> ControlFlow<String>,
) -> Result<Result<MigrationStats, DriverError>, VmError> {
    let start = Instant::now();
    let switch_at = start + policy.timeout.mul_f64(POSTCOPY_AFTER);
    let mut post_copy = false;
    let mut cancelled: Option<String> = None;
    let mut cancel_wait = Instant::now();
    loop {
        let info = q.execute(&qmp::QueryMigrate).await?;
        let ram = info.ram.clone().unwrap_or_default();
        let status = info.status.as_deref().unwrap_or("");
        match status {
            "completed" => {
                return Ok(Ok(MigrationStats {
                    total_ms: info.total_time.unwrap_or(0),
                    downtime_ms: info.downtime.unwrap_or(0),
                    transferred: ram.transferred,
                    post_copy,
                }))
            }
            "failed" => {
                let why = info
                    .error_desc
                    .unwrap_or_else(|| "QEMU gives no reason".into());
                return Ok(Err(failed(match cancelled {
                    Some(c) => c,
                    None => format!("failed: {why}"),
                })));
            }
            "cancelled" => return Ok(Err(failed(cancelled.unwrap_or_else(|| "cancelled".into())))),
            _ => {}
        }
        post_copy |= status.starts_with("postcopy");
        if status == "postcopy-paused" {
            // The target or the link went away after the switch: the
            // guest's memory is split between the two sides.
            return Ok(Err(failed(
                "post-copy broke off (the target or the network failed after the switch); the VM cannot run on",
            )));
        }
        if cancelled.is_some() {
            // migrate_cancel sent: wait for QEMU's verdict (bounded).
            if Instant::now() > cancel_wait {
                return Err(VmError::Migration(format!(
                    "the migration neither ended nor was cancelled (status {status:?})"
                )));
            }
            tokio::time::sleep(POLL).await;
            continue;
        }
        let flow = progress(&MigrationProgress {
            transferred: ram.transferred,
            remaining: ram.remaining,
            total: ram.total,
            dirty_pages_rate: ram.dirty_pages_rate,
            expected_downtime_ms: info.expected_downtime,
            throttle_pct: info.cpu_throttle_percentage.unwrap_or(0),
            post_copy,
        });
        if post_copy {
            // The target runs: the source must serve it to the end; nothing
            // can be cancelled any more.
            tokio::time::sleep(POLL).await;
            continue;
        }
        let why = match flow {
            ControlFlow::Break(why) => Some(why),
            ControlFlow::Continue(()) if Instant::now() > deadline => Some(format!(
                "timed out after {}s and was cancelled",
                policy.timeout.as_secs()
            )),
            ControlFlow::Continue(()) => None,
        };
        if let Some(why) = why {
            q.execute(&qmp::MigrateCancel).await?;
            cancelled = Some(why);
            cancel_wait = Instant::now() + CANCEL_WAIT;
            continue;
        }
        if policy.post_copy
            && status == "active"
            && ram.dirty_sync_count >= 2
            && Instant::now() >= switch_at
        {
            tracing::info!(
                transferred = ram.transferred,
                remaining = ram.remaining,
                "pre-copy does not converge: switching to post-copy"
            );
            q.execute(&qmp::MigrateStartPostcopy).await?;
            post_copy = true;
        }
        tokio::time::sleep(POLL).await;
    }
}
