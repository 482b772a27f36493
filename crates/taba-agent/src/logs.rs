//! Reading task logs. The task shim writes each stream to
//! `<alloc>/logs/<task>.<stdout|stderr>.<N>` with rotation; this module reads
//! the kept files oldest first and, when following, keeps reading new output
//! across rotations until the task has ended and everything is read.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Which stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The kept log files of a task's stream, oldest first.
pub fn log_files(dir: &Path, task: &str, stream: Stream) -> Vec<PathBuf> {
    let prefix = format!("{task}.{}.", stream.name());
    let mut files: Vec<(std::time::SystemTime, u64, u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let n: u64 = name.strip_prefix(&prefix)?.parse().ok()?;
                    let md = e.metadata().ok()?;
                    Some((md.modified().ok()?, md.ino(), n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    // Oldest content first: by modification time, then by number.
    files.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
    files.into_iter().map(|f| f.3).collect()
}

/// Read a stream's logs into `tx` in chunks, starting `offset` bytes into the
/// concatenation of the kept files. With `follow`, keep going until
/// `finished()` says the task has ended and no new output arrives.
pub fn pump(
    dir: PathBuf,
    task: String,
    stream: Stream,
    offset: u64,
    follow: bool,
    finished: impl Fn() -> bool,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    let mut skip = offset;
    let mut done_inodes: Vec<u64> = Vec::new();
    let mut current: Option<(File, u64)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut idle_after_finish = 0;
    loop {
        // Drain the file being read.
        if let Some((f, _)) = current.as_mut() {
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let mut chunk = &buf[..n];
                        if skip > 0 {
                            let s = (skip as usize).min(chunk.len());
                            chunk = &chunk[s..];
                            skip -= s as u64;
                        }
                        if !chunk.is_empty() && tx.blocking_send(Ok(chunk.to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        }
        // Move to the next file not read yet, if any.
        let next = log_files(&dir, &task, stream).into_iter().find_map(|p| {
            let f = File::open(&p).ok()?;
            let ino = f.metadata().ok()?.ino();
            let is_current = current.as_ref().is_some_and(|(_, i)| *i == ino);
            (!done_inodes.contains(&ino) && !is_current).then_some((f, ino))
        });
        match next {
            Some((f, ino)) => {
                if let Some((_, old)) = current.take() {
                    done_inodes.push(old);
                }
                current = Some((f, ino));
                idle_after_finish = 0;
                continue;
            }
            None if !follow => return,
            None => {}
        }
        if finished() {
            // Give the shim a moment to flush its last bytes, then stop.
            idle_after_finish += 1;
            if idle_after_finish > 3 {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        // A read past the end of a regular file sees what was appended since.
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        dir: &Path,
        offset: u64,
        follow: bool,
        finished: impl Fn() -> bool + Send + 'static,
    ) -> Vec<u8> {
        let (tx, mut rx) = mpsc::channel(64);
        let d = dir.to_path_buf();
        let h = std::thread::spawn(move || {
            pump(d, "t".into(), Stream::Stdout, offset, follow, finished, tx)
        });
        let mut out = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            out.extend(chunk.unwrap());
        }
        h.join().unwrap();
        out
    }

    #[test]
    fn reads_rotated_files_oldest_first_with_offset() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("t.stdout.0"), b"one\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(d.path().join("t.stdout.1"), b"two\n").unwrap();
        std::fs::write(d.path().join("t.stderr.0"), b"err\n").unwrap();
        std::fs::write(d.path().join("other.stdout.0"), b"x\n").unwrap();
        assert_eq!(collect(d.path(), 0, false, || true), b"one\ntwo\n");
        assert_eq!(collect(d.path(), 5, false, || true), b"wo\n");
    }

    #[test]
    fn follow_sees_appends_and_new_files_until_finished() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("t.stdout.0");
        std::fs::write(&path, b"a").unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (dir, done2) = (d.path().to_path_buf(), done.clone());
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            std::thread::sleep(Duration::from_millis(300));
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("t.stdout.0"))
                .unwrap();
            f.write_all(b"b").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(dir.join("t.stdout.1"), b"c").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            done2.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let out = collect(d.path(), 0, true, move || {
            done.load(std::sync::atomic::Ordering::SeqCst)
        });
        writer.join().unwrap();
        assert_eq!(out, b"abc");
    }
}
