//! Live migration of a VM: the `vm` driver's [`Migratable`].
//!
//! ```text
//! source QEMU (running)                         target QEMU
//!                                               started with -incoming defer (same accel)
//!                                               QMP migrate-set-capabilities events
//!                                               QMP migrate-incoming tcp:IP:0
//!                                               QMP query-migrate -> socket-address: port P
//!              <---------- Incoming {IP:P} ----
//! QMP migrate-set-capabilities events, auto-converge
//! QMP migrate-set-parameters downtime-limit, max-bandwidth
//! QMP migrate tcp:IP:P  ==== RAM pages, device state ====>
//! QMP query-migrate every 50 ms -> progress      (loads state; autostarts when complete)
//!   completed: QMP quit (the source ends, exit 0)
//!   failed / cancelled / timeout (migrate_cancel): the source runs on
//!                                               finish_incoming: query-status running
//!                                               abort_incoming: killed, cgroup removed
//! ```
//!
//! Disks are not moved yet: a VM with disks is refused (its overlays are
//! local files; mirroring them over NBD is the next step).

use super::{block_on, qmp, VmDriver, VmError, QMP_TIMEOUT};
use crate::migrate::{
    Incoming, Migratable, MigrationPolicy, MigrationProgress, MigrationStats, SourceInfo,
    SOURCE_END_TIMEOUT,
};
use crate::shimmed::wait_gone;
use crate::{DriverError, TaskConfig, TaskHandle};
use std::net::{IpAddr, SocketAddr};
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
        })
    }

    fn prepare_incoming(
        &self,
        cfg: &TaskConfig,
        listen: IpAddr,
        source: &SourceInfo,
    ) -> Result<(TaskHandle, Incoming), DriverError> {
        if !cfg.task.disks.is_empty() {
            return Err(failed(
                "of a VM with disks is not supported yet (its disks are local files)",
            ));
        }
        self.prepare_task_dir(cfg)?;
        let (mut plan, made) = self.plan(cfg, Some(source.accel))?;
        plan.incoming = Some("defer".into());
        let h = self
            .launch(cfg, &plan)
            .inspect_err(|_| super::remove_files(&made))?;
        let listening = (|| -> Result<Incoming, DriverError> {
            self.qmp(&h, events_on(false))?;
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
        progress: &mut dyn FnMut(&MigrationProgress),
    ) -> Result<MigrationStats, DriverError> {
        let sock = Self::qmp_socket(&h.task_dir);
        let stats = block_on(async {
            let mut q = qmp::Qmp::connect(&sock, QMP_TIMEOUT).await?;
            q.execute(&events_on(policy.auto_converge)).await?;
            q.execute(&qmp::MigrateSetParameters {
                downtime_limit: Some(policy.max_downtime.as_millis().max(1) as u64),
                max_bandwidth: Some(if policy.max_bandwidth == 0 {
                    UNLIMITED_BANDWIDTH
                } else {
                    policy.max_bandwidth
                }),
            })
            .await?;
            q.execute(&qmp::Migrate {
                uri: format!("tcp:{}", to.addr),
            })
            .await?;
            watch(&mut q, policy, progress).await
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
        loop {
            let st = self.qmp(h, qmp::QueryStatus)?;
            if st.running {
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

fn events_on(auto_converge: bool) -> qmp::MigrateSetCapabilities {
    let cap = |name: &str, state| qmp::MigrationCapability {
        capability: name.into(),
        state,
    };
    qmp::MigrateSetCapabilities {
        capabilities: vec![cap("events", true), cap("auto-converge", auto_converge)],
    }
}

/// Follow the migration until it ends; cancel it after the policy's timeout.
async fn watch(
    q: &mut qmp::Qmp,
    policy: &MigrationPolicy,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<Result<MigrationStats, DriverError>, VmError> {
    let start = Instant::now();
    loop {
        let info = q.execute(&qmp::QueryMigrate).await?;
        let ram = info.ram.clone().unwrap_or_default();
        match info.status.as_deref() {
            Some("completed") => {
                return Ok(Ok(MigrationStats {
                    total_ms: info.total_time.unwrap_or(0),
                    downtime_ms: info.downtime.unwrap_or(0),
                    transferred: ram.transferred,
                }))
            }
            Some("failed") => {
                return Ok(Err(failed(format!(
                    "failed: {}",
                    info.error_desc
                        .unwrap_or_else(|| "QEMU gives no reason".into())
                ))))
            }
            Some("cancelled") => return Ok(Err(failed("cancelled"))),
            _ => {}
        }
        progress(&MigrationProgress {
            transferred: ram.transferred,
            remaining: ram.remaining,
            total: ram.total,
            dirty_pages_rate: ram.dirty_pages_rate,
            expected_downtime_ms: info.expected_downtime,
        });
        if start.elapsed() > policy.timeout {
            q.execute(&qmp::MigrateCancel).await?;
            return Ok(Err(failed(format!(
                "timed out after {}s and was cancelled",
                policy.timeout.as_secs()
            ))));
        }
        tokio::time::sleep(POLL).await;
    }
}
