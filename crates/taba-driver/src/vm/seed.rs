//! The cloud-init NoCloud seed disk of a VM (`user_data`, `meta_data`,
//! `network_config`): a small FAT file system labelled `cidata` holding
//! `user-data`, `meta-data` and `network-config`, which cloud images find
//! by its label. Made with `mkfs.vfat` and `mcopy` (dosfstools, mtools) as
//! `<task_dir>/seed.img` at every start of the task, attached read-only,
//! and gone with the task directory when the allocation is removed.
//!
//! `meta-data` gets `instance-id` = the allocation id (a new allocation is
//! a new instance to cloud-init) and `local-hostname` unless the task's
//! `meta_data` sets them. This module must not touch the VM's disks.

use std::path::{Path, PathBuf};
use std::process::Command;
use taba_types::TaskSpec;

/// The seed disk, relative to the task directory.
pub const SEED_DISK: &str = "seed.img";
/// The file system label cloud-init looks for.
pub const LABEL: &str = "cidata";

/// Errors making a seed disk.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// A tool is missing or could not run.
    #[error("run {tool} (install Debian's {package} on the node)")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
        /// Why it did not run.
        #[source]
        source: std::io::Error,
    },
    /// A tool refused.
    #[error("{tool}: {stderr}")]
    Failed {
        /// The program.
        tool: &'static str,
        /// What it said.
        stderr: String,
    },
    /// Writing the seed's files failed.
    #[error("write {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// What goes on the seed disk of a task, by file name; `None` when the task
/// has no `user_data`.
pub fn contents(t: &TaskSpec, alloc_id: &str) -> Option<Vec<(&'static str, String)>> {
    let user = t.user_data.as_ref()?;
    let given = t.meta_data.as_deref().unwrap_or("");
    let has = |key: &str| given.lines().any(|l| l.starts_with(key));
    let mut meta = String::new();
    if !has("instance-id:") {
        meta.push_str(&format!("instance-id: {alloc_id}\n"));
    }
    if !has("local-hostname:") {
        let host = t
            .hostname
            .clone()
            .unwrap_or_else(|| alloc_id.chars().take(12).collect());
        meta.push_str(&format!("local-hostname: {host}\n"));
    }
    meta.push_str(given);
    if !meta.ends_with('\n') {
        meta.push('\n');
    }
    let mut files = vec![("meta-data", meta), ("user-data", user.clone())];
    if let Some(n) = &t.network_config {
        files.push(("network-config", n.clone()));
    }
    Some(files)
}

fn run(cmd: &mut Command, tool: &'static str, package: &'static str) -> Result<(), SeedError> {
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .map_err(|source| SeedError::Spawn {
            tool,
            package,
            source,
        })?;
    if !out.status.success() {
        return Err(SeedError::Failed {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// `name` in the usual places of a root's PATH (the agent may run with a
/// short one).
fn tool(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// Make `<task_dir>/seed.img` for task `t` of allocation `alloc_id` (made
/// anew at each start, replacing the last one by rename). `None` when the
/// task has no `user_data`. Nothing is left behind on an error.
pub fn make(task_dir: &Path, t: &TaskSpec, alloc_id: &str) -> Result<Option<PathBuf>, SeedError> {
    let Some(files) = contents(t, alloc_id) else {
        return Ok(None);
    };
    let img = task_dir.join(SEED_DISK);
    let tmp = task_dir.join(format!(".{SEED_DISK}.tmp"));
    let staging = task_dir.join(".seed");
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).map_err(|e| SeedError::Io(staging.clone(), e))?;
        let bytes: usize = files.iter().map(|(_, c)| c.len()).sum();
        // KiB: room for the files twice over, and FAT's own.
        let kib = (bytes / 1024 * 2 + 512).max(1024);
        run(
            Command::new(tool("mkfs.vfat"))
                .args(["-C", "-n", LABEL])
                .arg(&tmp)
                .arg(kib.to_string()),
            "mkfs.vfat",
            "dosfstools",
        )?;
        for (name, content) in &files {
            let f = staging.join(name);
            std::fs::write(&f, content).map_err(|e| SeedError::Io(f.clone(), e))?;
            run(
                Command::new(tool("mcopy"))
                    .arg("-i")
                    .arg(&tmp)
                    .arg(&f)
                    .arg(format!("::{name}")),
                "mcopy",
                "mtools",
            )?;
        }
        std::fs::rename(&tmp, &img).map_err(|e| SeedError::Io(img.clone(), e))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| Some(img))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(extra: serde_json::Value) -> TaskSpec {
        let mut v = serde_json::json!({"name": "t", "driver": "vm", "kernel": "k"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn meta_data_names_the_allocation_unless_the_task_does() {
        assert!(contents(&task(serde_json::json!({})), "a").is_none());
        let f = contents(
            &task(serde_json::json!({"user_data": "#cloud-config\n"})),
            "0123456789abcdef",
        )
        .unwrap();
        assert_eq!(
            f[0],
            (
                "meta-data",
                "instance-id: 0123456789abcdef\nlocal-hostname: 0123456789ab\n".into()
            )
        );
        assert_eq!(f[1], ("user-data", "#cloud-config\n".into()));
        assert_eq!(f.len(), 2);
        let f = contents(
            &task(serde_json::json!({
                "user_data": "u",
                "meta_data": "instance-id: mine\nregion: x",
                "network_config": "version: 2\n",
                "hostname": "web1",
            })),
            "a1",
        )
        .unwrap();
        assert_eq!(
            f[0].1,
            "local-hostname: web1\ninstance-id: mine\nregion: x\n"
        );
        assert_eq!(f[2], ("network-config", "version: 2\n".into()));
    }

    #[test]
    fn the_seed_is_a_fat_file_system_labelled_cidata() {
        let d = tempfile::tempdir().unwrap();
        let t = task(serde_json::json!({"user_data": "taba-marker 1\n"}));
        let img = make(d.path(), &t, "alloc-1").unwrap().unwrap();
        let out = Command::new(tool("mdir"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i"])
            .arg(&img)
            .arg("::")
            .output()
            .expect("mtools (scripts/setup.sh installs it)");
        let listing = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(listing.contains("volume in drive : is cidata"), "{listing}");
        assert!(
            listing.contains("user-data") && listing.contains("meta-data"),
            "{listing}"
        );
        let out = Command::new(tool("mtype"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&img)
            .arg("::meta-data")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("instance-id: alloc-1"));
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(SEED_DISK)]);
    }
}
