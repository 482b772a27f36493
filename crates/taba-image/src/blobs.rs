//! Content-addressed blobs: `<root>/blobs/sha256/<hex>` holds the bytes of image configs,
//! manifests and layers exactly as they were imported or fetched, so that an image can be
//! handed to another node (or saved again) with the same digests. A blob is written to a
//! `.part` file in a staging dir, checked against its digest and size, and only then named;
//! it enters the store with the commit of the image that uses it, and is deleted with the last
//! image that does.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::archive::hex;
use crate::error::{io_ctx, ImageError};
use crate::reference::is_hex;

/// The largest layer blob accepted from a manifest.
pub const MAX_BLOB_BYTES: u64 = 16 << 30;

/// `<dir>/sha256/<hex>`.
pub(crate) fn blob_path(blobs_dir: &Path, hex: &str) -> PathBuf {
    blobs_dir.join("sha256").join(hex)
}

/// Checks a `sha256:<64 lower-case hex>` digest; returns the hex part.
pub fn parse_digest(digest: &str) -> Result<&str, ImageError> {
    let bad = |reason: &str| ImageError::InvalidDigest {
        digest: digest.chars().take(100).collect(),
        reason: reason.to_string(),
    };
    let Some((algo, h)) = digest.split_once(':') else {
        return Err(bad("expected sha256:<64 hex digits>"));
    };
    if algo != "sha256" {
        return Err(bad("only sha256 is supported"));
    }
    if h.len() != 64 || !is_hex(h) {
        return Err(bad("expected 64 lower-case hex digits after sha256:"));
    }
    Ok(h)
}

/// Writes one blob of a known digest and size into a staging dir. Every write is counted (more
/// bytes than stated fail at once); [`BlobWriter::finish`] checks size and digest and names the
/// file. Dropped unfinished, or failing, it removes what it wrote.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<BufWriter<File>>,
    part: PathBuf,
    dest: PathBuf,
    hasher: Sha256,
    written: u64,
    hex: String,
    size: u64,
}

impl BlobWriter {
    pub(crate) fn create(staged_blobs: &Path, hex: &str, size: u64) -> Result<Self, ImageError> {
        let dir = staged_blobs.join("sha256");
        fs::create_dir_all(&dir).map_err(io_ctx(|| format!("create {}", dir.display())))?;
        let part = dir.join(format!(".{hex}.part"));
        let file = File::create(&part).map_err(io_ctx(|| format!("create {}", part.display())))?;
        Ok(BlobWriter {
            file: Some(BufWriter::with_capacity(256 * 1024, file)),
            dest: dir.join(hex),
            part,
            hasher: Sha256::new(),
            written: 0,
            hex: hex.to_string(),
            size,
        })
    }

    /// The digest this blob must have.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks the size and digest of what was written and names the blob.
    pub fn finish(mut self) -> Result<(), ImageError> {
        let file = self.file.take().expect("finish runs once");
        let result = (|| {
            if self.written != self.size {
                return Err(ImageError::SizeMismatch {
                    digest: self.digest(),
                    expected: self.size,
                    actual: self.written,
                });
            }
            let actual = hex(&std::mem::take(&mut self.hasher).finalize());
            if actual != self.hex {
                return Err(ImageError::DigestMismatch {
                    expected: self.digest(),
                    actual: format!("sha256:{actual}"),
                });
            }
            file.into_inner()
                .map_err(|e| e.into_error())
                .map_err(io_ctx(|| format!("write {}", self.part.display())))?;
            fs::rename(&self.part, &self.dest)
                .map_err(io_ctx(|| format!("rename {}", self.part.display())))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.part);
        }
        result
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().expect("not finished");
        if self.written + buf.len() as u64 > self.size {
            return Err(io::Error::other(format!(
                "blob {} is longer than the {} bytes its descriptor states",
                self.digest(),
                self.size
            )));
        }
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("not finished").flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.part);
        }
    }
}

/// A reader that copies every byte it passes into a new blob file, when given one (the original
/// bytes of a layer while it is unpacked). A write error is kept and reported by
/// [`Tee::write_error`], so that a full disk is not mistaken for a broken archive.
pub(crate) struct Tee<R> {
    inner: R,
    out: Option<(BufWriter<File>, PathBuf)>,
    error: Option<io::Error>,
}

impl<R: Read> Tee<R> {
    /// Passes `inner` through, copying it to a new file at `copy_to` if given.
    pub(crate) fn new(inner: R, copy_to: Option<PathBuf>) -> Result<Self, ImageError> {
        let out = match copy_to {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir)
                        .map_err(io_ctx(|| format!("create {}", dir.display())))?;
                }
                let f =
                    File::create(&path).map_err(io_ctx(|| format!("create {}", path.display())))?;
                Some((BufWriter::with_capacity(256 * 1024, f), path))
            }
            None => None,
        };
        Ok(Tee {
            inner,
            out,
            error: None,
        })
    }

    /// A write error, if one happened (then the read result does not matter).
    pub(crate) fn write_error(&mut self) -> Option<ImageError> {
        let e = self.error.take()?;
        let path = self.out.as_ref().map(|(_, p)| p.display().to_string());
        Some(io_ctx(|| format!("write {}", path.unwrap_or_default()))(e))
    }

    /// Flushes the copy and names it `dest` (dropped if `dest` exists: same content).
    pub(crate) fn finish(mut self, dest: &Path) -> Result<(), ImageError> {
        if let Some(e) = self.write_error() {
            self.discard();
            return Err(e);
        }
        let Some((out, path)) = self.out.take() else {
            return Ok(());
        };
        let result = out
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_ctx(|| format!("write {}", path.display())))
            .and_then(|_| {
                if dest.exists() {
                    fs::remove_file(&path).map_err(io_ctx(|| format!("remove {}", path.display())))
                } else {
                    fs::rename(&path, dest).map_err(io_ctx(|| format!("rename {}", path.display())))
                }
            });
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Drops the copy.
    pub(crate) fn discard(mut self) {
        if let Some((_, path)) = self.out.take() {
            let _ = fs::remove_file(path);
        }
    }
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let (Some((out, _)), None) = (self.out.as_mut(), self.error.as_ref()) {
            if let Err(e) = out.write_all(&buf[..n]) {
                self.error = Some(e);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_strictly() {
        let h = "a".repeat(64);
        assert_eq!(parse_digest(&format!("sha256:{h}")).unwrap(), h);
        for bad in [
            "",
            "sha256:",
            "sha512:abc",
            "sha256:ABC",
            "../../etc/passwd",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}/..", "a".repeat(61)),
            &format!("sha256:{h}0"),
        ] {
            assert!(
                matches!(parse_digest(bad), Err(ImageError::InvalidDigest { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_blob_writer_refuses_wrong_bytes_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let data = b"hello blob";
        let h = hex(&Sha256::digest(data));
        let n = data.len() as u64;
        let files = |d: &Path| -> Vec<String> {
            fs::read_dir(d.join("sha256"))
                .map(|r| {
                    r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };

        // Right bytes: named by digest.
        let mut w = BlobWriter::create(d.path(), &h, n).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap();
        assert_eq!(files(d.path()), vec![h.clone()]);
        fs::remove_file(blob_path(d.path(), &h)).unwrap();

        // Same length, other bytes: a digest mismatch, no file.
        let mut w = BlobWriter::create(d.path(), &h, n).unwrap();
        w.write_all(b"hello blub").unwrap();
        assert!(matches!(w.finish(), Err(ImageError::DigestMismatch { .. })));
        assert!(files(d.path()).is_empty());

        // Too short (a cut download): a size mismatch, no file.
        let mut w = BlobWriter::create(d.path(), &h, n).unwrap();
        w.write_all(&data[..4]).unwrap();
        assert!(matches!(
            w.finish(),
            Err(ImageError::SizeMismatch { expected, actual: 4, .. }) if expected == n
        ));
        assert!(files(d.path()).is_empty());

        // Too long: refused at the write.
        let mut w = BlobWriter::create(d.path(), &h, n).unwrap();
        assert!(w.write_all(b"hello blob and more").is_err());
        drop(w);
        assert!(files(d.path()).is_empty());

        // Dropped half way: nothing left.
        let mut w = BlobWriter::create(d.path(), &h, n).unwrap();
        w.write_all(&data[..3]).unwrap();
        drop(w);
        assert!(files(d.path()).is_empty());
    }
}
