//! Size-capped, rotated log files for one stream of a task.
//!
//! Numbering: `<log_dir>/<name>.<stream>.N` with N counting up from 0. The
//! file with the HIGHEST number is the one being written; when it reaches
//! `max_bytes` the writer opens N+1 and deletes files numbered `N+1-max_files`
//! and below, so at most `max_files` files exist. Files are never renamed,
//! so a reader following the newest file (`alloc logs -f`) moves on to the
//! next number when it appears. A new shim for the same task continues in the
//! highest existing file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Errors writing logs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log directory or a file could not be opened or written.
    #[error("write log file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The size or file limits are unusable.
    #[error("log_max_bytes and log_max_files must be at least 1")]
    Limits,
}

/// The writer of one stream (`stdout` or `stderr`).
#[derive(Debug)]
pub struct LogWriter {
    dir: PathBuf,
    prefix: String,
    max_bytes: u64,
    max_files: u32,
    index: u64,
    size: u64,
    file: File,
}

/// Path of file `index` of a stream.
pub fn log_path(dir: &Path, name: &str, stream: &str, index: u64) -> PathBuf {
    dir.join(format!("{name}.{stream}.{index}"))
}

/// The indices of a stream's existing files, sorted.
pub fn log_indices(dir: &Path, name: &str, stream: &str) -> io::Result<Vec<u64>> {
    let prefix = format!("{name}.{stream}.");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(n) = e.file_name().to_str().and_then(|f| f.strip_prefix(&prefix)) {
            if let Ok(i) = n.parse::<u64>() {
                out.push(i);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

impl LogWriter {
    /// Open (or continue) the stream's newest file.
    pub fn open(
        dir: &Path,
        name: &str,
        stream: &str,
        max_bytes: u64,
        max_files: u32,
    ) -> Result<LogWriter, LogError> {
        if max_bytes == 0 || max_files == 0 {
            return Err(LogError::Limits);
        }
        let io_err = |path: PathBuf| move |source| LogError::Io { path, source };
        crate::sys::private_dir(dir).map_err(io_err(dir.to_owned()))?;
        let index = log_indices(dir, name, stream)
            .map_err(io_err(dir.to_owned()))?
            .last()
            .copied()
            .unwrap_or(0);
        let path = log_path(dir, name, stream, index);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(path.clone()))?;
        let size = file.metadata().map_err(io_err(path))?.len();
        let mut w = LogWriter {
            dir: dir.to_owned(),
            prefix: format!("{name}.{stream}"),
            max_bytes,
            max_files,
            index,
            size,
            file,
        };
        if w.size >= w.max_bytes {
            w.rotate()?;
        }
        Ok(w)
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{}.{index}", self.prefix))
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        self.index += 1;
        let path = self.path(self.index);
        self.file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LogError::Io { path, source })?;
        self.size = 0;
        // Delete what falls out of the window (older files were deleted by
        // earlier rotations; a file missing here is fine).
        if let Some(old) = (self.index + 1).checked_sub(u64::from(self.max_files) + 1) {
            let _ = std::fs::remove_file(self.path(old));
        }
        Ok(())
    }

    /// Append `buf`, rotating as often as needed.
    pub fn write(&mut self, mut buf: &[u8]) -> Result<(), LogError> {
        while !buf.is_empty() {
            if self.size >= self.max_bytes {
                self.rotate()?;
            }
            let room = (self.max_bytes - self.size).min(buf.len() as u64) as usize;
            self.file
                .write_all(&buf[..room])
                .map_err(|source| LogError::Io {
                    path: self.path(self.index),
                    source,
                })?;
            self.size += room as u64;
            buf = &buf[room..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_cap_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), "t", "stdout", 10, 3).unwrap();
        w.write(&[b'a'; 45]).unwrap();
        // 45 bytes in files of 10: 0..=4 were written, only 2, 3, 4 remain.
        assert_eq!(
            log_indices(dir.path(), "t", "stdout").unwrap(),
            vec![2, 3, 4]
        );
        assert_eq!(
            std::fs::read(log_path(dir.path(), "t", "stdout", 3))
                .unwrap()
                .len(),
            10
        );
        assert_eq!(
            std::fs::read(log_path(dir.path(), "t", "stdout", 4))
                .unwrap()
                .len(),
            5
        );
        drop(w);
        // A new writer continues the newest file.
        let mut w = LogWriter::open(dir.path(), "t", "stdout", 10, 3).unwrap();
        w.write(b"bbbbb").unwrap();
        assert_eq!(
            std::fs::read(log_path(dir.path(), "t", "stdout", 4)).unwrap(),
            b"aaaaabbbbb"
        );
        w.write(b"c").unwrap();
        assert_eq!(
            log_indices(dir.path(), "t", "stdout").unwrap(),
            vec![3, 4, 5]
        );
    }

    #[test]
    fn zero_limits_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            LogWriter::open(dir.path(), "t", "stdout", 0, 3),
            Err(LogError::Limits)
        ));
    }
}
