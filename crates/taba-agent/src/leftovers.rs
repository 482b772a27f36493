//! The startup sweep: what an agent killed in the middle of starting (or
//! removing) an allocation left behind for allocations it no longer knows.
//!
//! Runs once at agent start, before recovery. An allocation is known when
//! its directory holds a readable `alloc.json`; those are recovered (their
//! mounts and cgroups are reused, or released by their runners). For any
//! other allocation directory under `<data>/allocs/` (named by an allocation
//! id):
//! - the cgroup `<cgroup_parent>/<id>` (every hierarchy) has its processes
//!   killed and its tree removed;
//! - every mount under the directory is detached and the directory removed
//!   (`StateDir::remove_alloc`).
//!
//! Cgroups are swept only for directories of this agent's own data dir: a
//! cgroup is made after its allocation's directory, and several agents (or
//! tests) may share one `cgroup_parent` on a host, so a cgroup without a
//! directory here may well be another agent's. Each removal is logged.

use crate::state::StateDir;

/// What the sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Allocation directories removed (with their mounts detached).
    pub alloc_dirs: Vec<String>,
    /// Cgroups removed (relative paths).
    pub cgroups: Vec<String>,
}

fn is_alloc_id(name: &str) -> bool {
    uuid::Uuid::parse_str(name).is_ok()
}

/// Remove what unknown allocations left (see the module doc).
pub fn sweep(state_dir: &StateDir, cgroup_parent: &str) -> Swept {
    let mut swept = Swept::default();
    let layout = taba_cgroups::Layout::detect().ok();
    for id in state_dir.alloc_ids() {
        if !is_alloc_id(&id) || matches!(state_dir.load_alloc(&id), Ok(Some(_))) {
            continue;
        }
        let rel = format!("{cgroup_parent}/{id}");
        let present = layout
            .as_ref()
            .is_some_and(|l| l.roots().iter().any(|r| r.join(&rel).is_dir()));
        if let (Some(layout), true) = (&layout, present) {
            match layout.destroy(&rel) {
                Ok(()) => {
                    tracing::info!(alloc = %id, cgroup = %rel, "removed the leftover cgroup of an unknown allocation");
                    swept.cgroups.push(rel);
                }
                Err(e) => tracing::warn!(cgroup = %rel, "removing a leftover cgroup: {e}"),
            }
        }
        match state_dir.remove_alloc(&id) {
            Ok(()) => {
                tracing::info!(alloc = %id, "removed the leftover mounts and directory of an unknown allocation");
                swept.alloc_dirs.push(id);
            }
            Err(e) => {
                tracing::warn!(alloc = %id, "removing the leftovers of an unknown allocation: {e}")
            }
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount under an allocation directory without `alloc.json` and a
    /// cgroup (with a live process) of that allocation under the agent's
    /// parent are removed; another agent's cgroups under the same parent
    /// (no directory here) are not touched.
    #[test]
    fn root_sweep_removes_mounts_and_cgroups_of_unknown_allocations() {
        let d = tempfile::tempdir().unwrap();
        let st = StateDir::open(d.path()).unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let rootfs = st.alloc_dir(&id).join("t/bundle/rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let lower = d.path().join("lower");
        std::fs::create_dir(&lower).unwrap();
        std::fs::write(lower.join("keep"), "image file").unwrap();
        let ok = std::process::Command::new("mount")
            .arg("--bind")
            .arg(&lower)
            .arg(&rootfs)
            .status()
            .unwrap();
        assert!(ok.success(), "this test needs root (mount --bind)");
        let parent = format!("taba-test-sweep-{}", std::process::id());
        let layout = taba_cgroups::Layout::detect().expect("cgroups");
        let cg = layout.create(&format!("{parent}/{id}/t")).unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        cg.add_pid(sleeper.id()).unwrap();
        let other_id = uuid::Uuid::new_v4().to_string();
        let other = layout.create(&format!("{parent}/{other_id}/t")).unwrap();

        let swept = sweep(&st, &parent);

        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(rootfs.to_str().unwrap());
        let cg_left: Vec<_> = cg.dirs().into_iter().filter(|p| p.exists()).collect();
        let other_kept = other.dirs().iter().all(|p| p.exists());
        let sleeper_status = sleeper.try_wait().unwrap();
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let _ = layout.destroy(&parent);
        assert_eq!(swept.alloc_dirs, vec![id.clone()]);
        assert_eq!(swept.cgroups, vec![format!("{parent}/{id}")]);
        assert!(!mounted, "the leftover mount is still there");
        assert!(!st.alloc_dir(&id).exists());
        assert_eq!(
            std::fs::read_to_string(lower.join("keep")).unwrap(),
            "image file"
        );
        assert!(cg_left.is_empty(), "{cg_left:?}");
        assert!(sleeper_status.is_some(), "the leftover process still runs");
        assert!(other_kept, "another agent's cgroup was removed");
    }
}
