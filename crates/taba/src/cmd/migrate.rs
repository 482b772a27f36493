//! `taba alloc migrate ID [--to NODE] [--detach]`: ask for the move, then
//! follow it until the allocation runs on its new node (or the migration
//! failed and it runs on where it was). A live migration's progress
//! (transferred, remaining, dirty rate, expected downtime) is shown as the
//! source agent reports it: one line redrawn in place on a terminal, a line
//! per second otherwise. Ctrl-C while following cancels the migration (a
//! second Ctrl-C stops following); `taba alloc migrate ID --cancel` cancels
//! one from anywhere.

use super::cli::{print_json, short};
use super::GlobalArgs;
use anyhow::bail;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taba_client::Client;
use taba_types::{Allocation, DesiredStatus, MigrationProgress};

/// Arguments of `taba alloc migrate`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Allocation id or prefix.
    pub id: String,
    /// The node to move to (id, prefix or name); the best other node if not given.
    #[arg(long)]
    pub to: Option<String>,
    /// Return once the move is asked for instead of following it.
    #[arg(long)]
    pub detach: bool,
    /// Cancel the live migration the allocation (source or target) takes
    /// part in: the VM runs on where it was.
    #[arg(long, conflicts_with = "to")]
    pub cancel: bool,
}

/// Polling interval while following a move.
const POLL: Duration = Duration::from_millis(250);
/// How long the CLI waits for a finished live migration's figures (the
/// source reports them once its QEMU has ended, which may take up to 10 s).
const FIGURES_WAIT: Duration = Duration::from_secs(15);
/// How long past the group's `migrate.timeout` the CLI still waits.
const SLACK: Duration = Duration::from_secs(120);

/// Run `taba alloc migrate`.
pub fn run(g: &GlobalArgs, api: &Client, a: MigrateArgs) -> anyhow::Result<ExitCode> {
    let before = api.alloc(&a.id)?.allocation;
    if a.cancel {
        return cancel(g, api, &before, a.detach);
    }
    let failures_before = failures(&before);
    let r = api.migrate_alloc(before.id.as_str(), a.to.as_deref())?;
    if g.json && a.detach {
        return print_json(&r);
    }
    if !g.json {
        println!("==> {}", r.message);
    }
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let limit = before.group_spec.migrate.timeout.as_duration() + SLACK;
    let start = Instant::now();
    let tty = std::io::stdout().is_terminal() && !g.json;
    let mut target = None;
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let interrupted = catch_ctrl_c();
    let mut cancel_asked = false;
    loop {
        if interrupted.load(Ordering::SeqCst) && !cancel_asked {
            cancel_asked = true;
            eprintln!("\n==> Ctrl-C: cancelling the migration (Ctrl-C again stops following)");
            match api.cancel_migration(before.id.as_str()) {
                Ok(r) => eprintln!("==> {}", r.message),
                Err(e) => eprintln!("==> the cancel failed: {e}"),
            }
        }
        if start.elapsed() > limit {
            bail!(
                "the move of allocation {} did not finish within {}s; see `taba alloc status {}`",
                before.id,
                limit.as_secs(),
                short(before.id.as_str())
            );
        }
        let cur = api.alloc(before.id.as_str())?.allocation;
        if let Some(lm) = &cur.live_migration {
            target = Some((lm.target_alloc.clone(), lm.target_node_name.clone()));
        }
        if cur.desired_status != DesiredStatus::Run {
            if tty {
                println!();
            }
            return done(g, api, cur, target);
        }
        if failures(&cur) > failures_before {
            if tty {
                println!();
            }
            let why = last_ending(&cur).unwrap_or_default();
            bail!(
                "{why}; allocation {} runs on on node {}",
                short(cur.id.as_str()),
                cur.node_name
            );
        }
        if cur.migrate.is_none() && cur.live_migration.is_none() && target.is_none() {
            bail!(
                "the move of allocation {} was dropped: no other node can take it now",
                short(cur.id.as_str())
            );
        }
        let progress = cur
            .migration_status
            .as_ref()
            .and_then(|s| s.progress.as_ref());
        if let (Some(p), false) = (progress, g.json) {
            if tty {
                print!("\r\x1b[K    {}", progress_line(p));
                let _ = std::io::stdout().flush();
            } else if last_line.elapsed() >= Duration::from_secs(1) {
                println!("    {}", progress_line(p));
                last_line = Instant::now();
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Events of a migration that ended without moving the allocation.
fn is_ending(kind: &str) -> bool {
    kind == "Migration Failed" || kind == "Migration Cancelled"
}

/// How many migrations of `a` failed or were cancelled so far.
fn failures(a: &Allocation) -> usize {
    a.events.iter().filter(|e| is_ending(&e.kind)).count()
}

/// Why the last migration of `a` ended without moving it.
fn last_ending(a: &Allocation) -> Option<String> {
    a.events
        .iter()
        .rev()
        .find(|e| is_ending(&e.kind))
        .map(|e| e.message.clone())
}

/// Ctrl-C sets the flag; a second one ends the CLI (exit 130).
fn catch_ctrl_c() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(rt) = rt {
        std::thread::spawn(move || {
            rt.block_on(async {
                while tokio::signal::ctrl_c().await.is_ok() {
                    if f.swap(true, Ordering::SeqCst) {
                        std::process::exit(130);
                    }
                }
            })
        });
    }
    flag
}

/// `taba alloc migrate ID --cancel`: ask for the cancel, then follow it
/// until the migration has ended.
fn cancel(
    g: &GlobalArgs,
    api: &Client,
    before: &Allocation,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let r = api.cancel_migration(before.id.as_str())?;
    if g.json && detach {
        return print_json(&r);
    }
    if !g.json {
        println!("==> {}", r.message);
    }
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let source = before
        .live_migration
        .as_ref()
        .map_or(before.id.clone(), |m| m.source_alloc.clone());
    let limit = before.group_spec.migrate.timeout.as_duration() + SLACK;
    let start = Instant::now();
    loop {
        let cur = api.alloc(source.as_str())?.allocation;
        if cur.live_migration.is_none() && cur.migrate.is_none() {
            if cur.desired_description.starts_with("migrated to ") {
                bail!(
                    "the migration completed before it could be cancelled: allocation {} {}",
                    short(cur.id.as_str()),
                    cur.desired_description
                );
            }
            if g.json {
                return print_json(&cur);
            }
            println!(
                "==> {}; allocation {} runs on node {}",
                last_ending(&cur).unwrap_or_else(|| "the migration ended".into()),
                short(cur.id.as_str()),
                cur.node_name
            );
            return Ok(ExitCode::SUCCESS);
        }
        if start.elapsed() > limit {
            bail!(
                "the migration of allocation {} did not end within {}s; see `taba alloc status {}`",
                short(source.as_str()),
                limit.as_secs(),
                short(source.as_str())
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The allocation was stopped: moved (success) or stopped for another reason.
fn done(
    g: &GlobalArgs,
    api: &Client,
    cur: Allocation,
    target: Option<(taba_types::AllocId, String)>,
) -> anyhow::Result<ExitCode> {
    let live = cur.desired_description.starts_with("migrated to ");
    let moved = live || cur.desired_description.starts_with("moved to another node");
    if !moved {
        bail!(
            "allocation {} was stopped instead: {}",
            short(cur.id.as_str()),
            cur.desired_description
        );
    }
    // The source's final figures may arrive just after the switch-over.
    let mut cur = cur;
    let figures = |a: &Allocation| {
        a.migration_status
            .as_ref()
            .and_then(|s| s.completed.clone())
    };
    let start = Instant::now();
    while live && figures(&cur).is_none() && start.elapsed() < FIGURES_WAIT {
        std::thread::sleep(POLL);
        cur = api.alloc(cur.id.as_str())?.allocation;
    }
    if g.json {
        return print_json(&cur);
    }
    if !live {
        println!(
            "==> Allocation {} {}",
            short(cur.id.as_str()),
            cur.desired_description
        );
        return Ok(ExitCode::SUCCESS);
    }
    // A quick migration may start and end between two looks.
    let node = cur.desired_description["migrated to ".len()..].to_string();
    let id = target
        .map(|t| t.0)
        .or_else(|| {
            cur.migration_status
                .as_ref()
                .map(|s| s.target_alloc.clone())
        })
        .map(|id| format!(" as allocation {}", short(id.as_str())))
        .unwrap_or_default();
    let stats = figures(&cur)
        .map(|s| {
            format!(
                ": {} MiB in {} ms, paused {} ms{}",
                s.transferred >> 20,
                s.elapsed_ms,
                s.downtime_ms.unwrap_or(0),
                if s.post_copy { " (post-copy)" } else { "" }
            )
        })
        .unwrap_or_default();
    println!(
        "==> Allocation {} migrated live to node {node}{id}{stats}",
        short(cur.id.as_str())
    );
    Ok(ExitCode::SUCCESS)
}

fn progress_line(p: &MigrationProgress) -> String {
    let pct = (100 * p.total.saturating_sub(p.remaining))
        .checked_div(p.total)
        .unwrap_or(0);
    let phase = if p.post_copy {
        ", post-copy".to_string()
    } else if p.throttle_pct > 0 {
        format!(", guest slowed {}%", p.throttle_pct)
    } else {
        String::new()
    };
    format!(
        "{pct:>3}%  sent {} MiB, {} MiB left, {} dirty pages/s, expected downtime {} ms{phase}, {:.1}s",
        p.transferred >> 20,
        p.remaining >> 20,
        p.dirty_pages_rate,
        p.downtime_ms.map_or("?".into(), |d| d.to_string()),
        p.elapsed_ms as f64 / 1000.0
    )
}
