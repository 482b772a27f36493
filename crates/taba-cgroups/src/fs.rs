//! Reading and writing cgroup files, and walking cgroup directories.
//!
//! Owns the translation from `io::Error` to [`CgroupError`] with the file's
//! path; knows nothing about which controller a file belongs to.

use crate::CgroupError;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// How long `rmdir` is retried while the kernel still reports the cgroup busy.
const RMDIR_RETRY: Duration = Duration::from_secs(2);

/// Reads a whole file.
pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a file when it exists; `None` when it does not (an older kernel).
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `value` to an existing cgroup file (never creates one), the way the
/// kernel expects: one `write` of the whole value.
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let result = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    result.map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

/// Parses one unsigned number (surrounding whitespace allowed).
pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    let t = text.trim();
    t.parse().map_err(|_| CgroupError::Parse {
        path: path.to_owned(),
        reason: format!("expected a number, found {t:?}"),
    })
}

/// Reads a file holding one unsigned number.
pub(crate) fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    parse_u64(path, &read(path)?)
}

/// Reads a file holding a number or `max`; `max` is `None`.
pub(crate) fn read_max(path: &Path) -> Result<Option<u64>, CgroupError> {
    let text = read(path)?;
    if text.trim() == "max" {
        return Ok(None);
    }
    parse_u64(path, &text).map(Some)
}

/// The value of `key` in a flat-keyed file (`key value` per line, as
/// `memory.stat`, `cpu.stat`, `memory.events`, `memory.oom_control`).
/// `Ok(None)` when the key is absent; an error when its value is not a number.
pub(crate) fn keyed(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some(key) {
            let value = words.next().unwrap_or("");
            return parse_u64(path, value).map(Some);
        }
    }
    Ok(None)
}

/// The pids listed in one `cgroup.procs` file.
pub(crate) fn read_procs(path: &Path) -> Result<Vec<u32>, CgroupError> {
    let text = read(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse().map_err(|_| CgroupError::Parse {
                path: path.to_owned(),
                reason: format!("expected a pid, found {l:?}"),
            })
        })
        .collect()
}

/// `dir` and every directory below it, children before their parents.
/// Empty when `dir` does not exist.
pub(crate) fn tree_children_first(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_owned(),
            source,
        })?;
        // A child removed while we walk is simply skipped.
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&entry.path(), out)?;
        }
    }
    out.push(dir.to_owned());
    Ok(())
}

/// Every pid in `dir`'s `cgroup.procs` and in those of its descendants.
/// A directory that vanishes meanwhile counts as empty.
pub(crate) fn procs_recursive(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let mut pids = Vec::new();
    for d in tree_children_first(dir)? {
        match read_procs(&d.join("cgroup.procs")) {
            Ok(p) => pids.extend(p),
            Err(CgroupError::Read { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pids)
}

/// Removes `dir` and every cgroup below it, children first. Retries briefly
/// while the kernel answers EBUSY (processes that were just killed are still
/// leaving). A directory that is already gone is fine.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for d in tree_children_first(dir)? {
        let deadline = Instant::now() + RMDIR_RETRY;
        loop {
            match fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(source) => return Err(CgroupError::Remove { path: d, source }),
            }
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(|source| CgroupError::Create {
        path: dir.to_owned(),
        source,
    })
}

/// Polls `done` with growing pauses (1 ms up to 20 ms) until it returns
/// true or `timeout` passes; returns its last answer.
pub(crate) fn poll_until(
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_finds_the_exact_key() {
        let p = Path::new("memory.stat");
        let text = "cache 10\ntotal_cache 20\ninactive_file 3\ntotal_inactive_file 7\n";
        assert_eq!(keyed(p, text, "total_cache").unwrap(), Some(20));
        assert_eq!(keyed(p, text, "inactive_file").unwrap(), Some(3));
        assert_eq!(keyed(p, text, "absent").unwrap(), None);
    }

    #[test]
    fn keyed_reports_a_bad_value_with_the_path() {
        let err = keyed(Path::new("/x/memory.stat"), "cache lots\n", "cache").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/x/memory.stat") && msg.contains("lots"),
            "{msg}"
        );
    }

    #[test]
    fn write_never_creates_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cpu.weight");
        let err = write(&path, "100").unwrap_err();
        assert!(matches!(err, CgroupError::Write { ref path, .. } if path.ends_with("cpu.weight")));
        assert!(!path.exists());
    }

    #[test]
    fn procs_parse_and_reject_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cgroup.procs");
        fs::write(&path, "12\n345\n").unwrap();
        assert_eq!(read_procs(&path).unwrap(), vec![12, 345]);
        fs::write(&path, "12\nabc\n").unwrap();
        assert!(matches!(read_procs(&path), Err(CgroupError::Parse { .. })));
    }
}
