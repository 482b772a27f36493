//! `taba node drain NODE [--deadline 1h] [--ignore-system] [--detach] [--disable]`:
//! start (or cancel) a drain, then follow it until it is done. On a terminal
//! the progress is one bar redrawn in place; otherwise one line per change
//! (logs and CI stay readable).

use super::GlobalArgs;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use taba_client::api::{DrainRequest, DrainStatus};
use taba_client::Client;
use taba_types::DurationSpec;

/// Arguments of `taba node drain`.
#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// Node id, prefix or name.
    pub node: String,
    /// How long the allocations have to move off; what is left then is
    /// stopped (`0s` stops everything at once).
    #[arg(long, value_parser = DurationSpec::parse, default_value = "1h")]
    pub deadline: DurationSpec,
    /// Leave allocations of system jobs running (otherwise they are
    /// stopped last, after everything else moved).
    #[arg(long)]
    pub ignore_system: bool,
    /// Return once the drain is started instead of following it.
    #[arg(long)]
    pub detach: bool,
    /// Cancel the drain and make the node eligible again.
    #[arg(long, conflicts_with_all = ["ignore_system", "deadline"])]
    pub disable: bool,
}

/// Polling interval while following a drain.
const POLL: Duration = Duration::from_millis(500);
/// How long after the deadline the CLI still waits for the servers to stop
/// what is left and report the drain complete.
const PAST_DEADLINE: Duration = Duration::from_secs(120);

/// Run `taba node drain`.
pub fn run(g: &GlobalArgs, api: &Client, mut a: DrainArgs) -> anyhow::Result<ExitCode> {
    a.node = super::cli::node_id(api, &a.node)?;
    if a.disable {
        let req = DrainRequest {
            disable: true,
            ..Default::default()
        };
        let st = api.drain_node(&a.node, &req)?;
        if g.json {
            return super::cli::print_json(&st);
        }
        println!(
            "==> Node {} is eligible again; no drain in progress",
            st.node
        );
        return Ok(ExitCode::SUCCESS);
    }
    let req = DrainRequest {
        disable: false,
        deadline: Some(a.deadline),
        ignore_system: a.ignore_system,
    };
    let st = api.drain_node(&a.node, &req)?;
    if !g.json {
        println!(
            "==> Draining node {} (deadline {}{}): {} allocation(s) to move",
            st.node,
            a.deadline,
            if a.ignore_system {
                ", system jobs stay"
            } else {
                ""
            },
            st.left
        );
    }
    if a.detach {
        return match g.json {
            true => super::cli::print_json(&st),
            false => Ok(ExitCode::SUCCESS),
        };
    }
    follow(g, api, &a.node, st, a.deadline.as_duration())
}

fn follow(
    g: &GlobalArgs,
    api: &Client,
    node: &str,
    first: DrainStatus,
    deadline: Duration,
) -> anyhow::Result<ExitCode> {
    let give_up = Instant::now() + deadline + PAST_DEADLINE;
    let tty = !g.json && std::io::stdout().is_terminal();
    let mut total = first.left + first.starting;
    let mut last_line = String::new();
    let mut st = first;
    loop {
        total = total.max(st.left + st.starting);
        if !g.json {
            let line = progress_line(&st, total);
            if tty {
                print!("\r\x1b[2K{line}");
                let _ = std::io::stdout().flush();
            } else if line != last_line {
                println!("    {line}");
            }
            last_line = line;
        }
        if st.done || st.strategy.is_none() {
            break;
        }
        if Instant::now() > give_up {
            if tty {
                println!();
            }
            eprintln!(
                "error: the drain of node {} is not complete past its deadline",
                st.node
            );
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(POLL);
        st = api.drain_status(node)?;
    }
    if tty {
        println!();
    }
    if g.json {
        super::cli::print_json(&st)?;
    }
    if !st.done {
        eprintln!("error: the drain of node {} was cancelled", st.node);
        return Ok(ExitCode::from(1));
    }
    if !g.json {
        println!("==> Drain of node {} complete", st.node);
    }
    Ok(ExitCode::SUCCESS)
}

/// `[######----] 4/6 left  web.g: 2 left, 2 starting`.
pub fn progress_line(st: &DrainStatus, total: u32) -> String {
    const WIDTH: u32 = 20;
    let remaining = st.left + st.starting;
    let done = total.saturating_sub(remaining);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    format!(
        "[{bar}] {} left, {} starting  {}",
        st.left,
        st.starting,
        group_summary(st)
    )
}

/// `web.g: 2 left, 1 starting; db.g: 1 left`, or `nothing left`.
pub fn group_summary(st: &DrainStatus) -> String {
    if st.groups.is_empty() {
        return "nothing left".into();
    }
    st.groups
        .iter()
        .map(|g| {
            let mut s = format!("{}.{}: {} left", g.job, g.group, g.left);
            if g.starting > 0 {
                s.push_str(&format!(", {} starting", g.starting));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use taba_client::api::DrainGroupProgress;
    use taba_types::JobType;

    fn status(left: u32, starting: u32) -> DrainStatus {
        DrainStatus {
            node_id: "id".into(),
            node: "n1".into(),
            status: taba_types::NodeStatus::Ready,
            eligible: false,
            strategy: None,
            drained_at: None,
            groups: vec![DrainGroupProgress {
                namespace: "default".into(),
                job: "web".into(),
                group: "g".into(),
                job_type: JobType::Service,
                left,
                waiting: left,
                starting,
            }],
            left,
            starting,
            done: false,
            index: 1,
        }
    }

    #[test]
    fn the_bar_fills_as_allocations_leave() {
        let line = progress_line(&status(4, 2), 6);
        assert!(
            line.starts_with("[--------------------] 4 left, 2 starting"),
            "{line}"
        );
        assert!(line.ends_with("web.g: 4 left, 2 starting"), "{line}");
        let line = progress_line(&status(1, 1), 6);
        assert!(line.starts_with("[#############-------]"), "{line}");
        let mut st = status(0, 0);
        st.groups.clear();
        assert!(progress_line(&st, 0).contains("nothing left"));
    }
}
