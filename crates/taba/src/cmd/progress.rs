//! Progress of a deployment on a terminal: one bar per task group of the
//! job (`job run`), filled by the group's allocations of the new version
//! that run (or completed, for a batch job), with how many are placed and
//! how many of older versions still run. Off a terminal, or with `--json`,
//! there are no bars and `job run` prints one line per change instead.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use taba_types::api::AllocListEntry;
use taba_types::{ClientStatus, DesiredStatus};

/// One bar per group.
pub struct GroupBars {
    bars: BTreeMap<String, indicatif::ProgressBar>,
    batch: bool,
}

/// Counts of one group at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupCounts {
    /// Allocations of the new version placed.
    pub placed: u64,
    /// Of those, running (complete, for a batch job).
    pub done: u64,
    /// Allocations of older versions still running.
    pub old: u64,
}

impl GroupBars {
    /// Bars for `groups` (name, count) when stdout is a terminal and the
    /// output is not JSON; `None` otherwise.
    pub fn new(groups: &[(String, u32)], batch: bool, json: bool) -> Option<GroupBars> {
        if json || !std::io::stdout().is_terminal() {
            return None;
        }
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template(
            "  group {prefix:<12} [{bar:30}] {pos}/{len} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        let bars = groups
            .iter()
            .map(|(name, count)| {
                let b = multi.add(indicatif::ProgressBar::new(u64::from(*count)));
                b.set_style(style.clone());
                b.set_prefix(name.clone());
                (name.clone(), b)
            })
            .collect();
        Some(GroupBars { bars, batch })
    }

    /// Shows the job's allocations as of now.
    pub fn update(&self, allocations: &[AllocListEntry], version: u64) {
        let counts = count_groups(allocations, version, self.batch);
        for (group, bar) in &self.bars {
            let c = counts.get(group).copied().unwrap_or_default();
            // A system job has as many as there are nodes: grow to what was placed.
            if c.placed > bar.length().unwrap_or(0) {
                bar.set_length(c.placed);
            }
            bar.set_position(c.done);
            let done = if self.batch { "complete" } else { "running" };
            let old = if c.old > 0 {
                format!(", {} of older versions still running", c.old)
            } else {
                String::new()
            };
            bar.set_message(format!("{done}, {} placed{old}", c.placed));
        }
    }

    /// Replaces the bars with one line per group saying where it ended.
    pub fn finish(&self) {
        for (group, bar) in &self.bars {
            bar.finish_and_clear();
            println!(
                "    group {group}: {}/{} {}",
                bar.position(),
                bar.length().unwrap_or(0),
                bar.message()
            );
        }
    }
}

/// Per group: the new version's allocations placed and done, and the older
/// versions' still running.
fn count_groups(
    allocations: &[AllocListEntry],
    version: u64,
    batch: bool,
) -> BTreeMap<String, GroupCounts> {
    let mut out: BTreeMap<String, GroupCounts> = BTreeMap::new();
    for a in allocations
        .iter()
        .filter(|a| a.desired_status == DesiredStatus::Run)
    {
        let c = out.entry(a.group.clone()).or_default();
        if a.job_version != version {
            c.old += u64::from(!a.status.is_terminal());
            continue;
        }
        c.placed += 1;
        let done = if batch {
            ClientStatus::Complete
        } else {
            ClientStatus::Running
        };
        c.done += u64::from(a.status == done);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(group: &str, version: u64, status: ClientStatus) -> AllocListEntry {
        serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-4000-8000-000000000001",
            "name": format!("j.{group}[0]"),
            "job": "j",
            "group": group,
            "job_version": version,
            "node": "n1",
            "node_id": "00000000-0000-4000-8000-000000000002",
            "desired_status": "run",
            "status": status,
            "task_states": {},
            "create_time": 0,
            "modify_time": 0,
        }))
        .unwrap()
    }

    #[test]
    fn counts_new_placed_and_done_and_old_still_running_per_group() {
        let allocs = [
            alloc("web", 2, ClientStatus::Running),
            alloc("web", 2, ClientStatus::Pending),
            alloc("web", 1, ClientStatus::Running),
            alloc("web", 1, ClientStatus::Complete),
            alloc("db", 2, ClientStatus::Complete),
        ];
        let c = count_groups(&allocs, 2, false);
        assert_eq!(
            c["web"],
            GroupCounts {
                placed: 2,
                done: 1,
                old: 1
            }
        );
        assert_eq!(
            c["db"],
            GroupCounts {
                placed: 1,
                done: 0,
                old: 0
            }
        );
        assert_eq!(count_groups(&allocs, 2, true)["db"].done, 1);
    }
}
