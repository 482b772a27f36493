//! Caps on what an image may make the store read, decompress and write
//! ([`ImageLimits`], set by the operator: `[limits]` of the server's and the
//! agent's configuration), and [`Bounded`], the reader that enforces the
//! decompression caps while the bytes come out of the decompressor, so a
//! decompression bomb is refused after at most one cap's worth of output,
//! never written whole first.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::error::ImageError;

/// Below this much output a layer's ratio is not checked: small layers of
/// zero-filled files compress a thousandfold and are harmless.
pub const RATIO_FLOOR: u64 = 16 << 20;

/// The store's caps on images (import, fetch, unpack).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest image archive once decompressed (a `.tar.gz` import), bytes.
    pub max_archive: u64,
    /// Largest JSON document (manifest, index, config), bytes.
    pub max_manifest: u64,
    /// Largest total one layer may decompress to, bytes.
    pub max_layer_unpacked: u64,
    /// Largest ratio of decompressed to compressed bytes of a layer (or a
    /// compressed archive), checked once past [`RATIO_FLOOR`] of output.
    pub max_layer_ratio: u64,
    /// Most entries (files, directories, links) in one layer.
    pub max_layer_entries: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_archive: 16 << 30,
            max_manifest: 16 << 20,
            max_layer_unpacked: 64 << 30,
            max_layer_ratio: 100,
            max_layer_entries: 2_000_000,
        }
    }
}

impl ImageLimits {
    /// Checks every cap is usable; the error names the key
    /// (`max_layer_ratio: must be at least 1`).
    pub fn validate(&self) -> Result<(), String> {
        let at_least = |key: &str, v: u64, min: u64, unit: &str| {
            if v < min {
                Err(format!("{key}: must be at least {min}{unit}"))
            } else {
                Ok(())
            }
        };
        at_least(
            "max_image_upload",
            self.max_archive,
            1 << 20,
            " bytes (1MiB)",
        )?;
        at_least("max_manifest", self.max_manifest, 4096, " bytes (4KiB)")?;
        at_least(
            "max_layer_unpacked",
            self.max_layer_unpacked,
            1 << 20,
            " bytes (1MiB)",
        )?;
        at_least("max_layer_ratio", self.max_layer_ratio, 1, "")?;
        at_least("max_layer_entries", self.max_layer_entries, 1, "")
    }
}

/// Which cap a [`Bounded`] reader hit, and the message for it.
pub(crate) type Tripped = Rc<Cell<Option<(&'static str, String)>>>;

/// The error of a stream that went past a cap: [`ImageError::LimitExceeded`].
pub(crate) fn exceeded(what: &str, tripped: &Tripped) -> Option<ImageError> {
    tripped
        .take()
        .map(|(limit, reason)| ImageError::LimitExceeded {
            what: what.to_string(),
            limit,
            reason,
        })
}

/// A reader over decompressed output that fails once more than `max` bytes
/// came out, or more than `ratio` times what `compressed` (the count of
/// compressed bytes read so far) says went in. Which cap was hit is left in
/// `tripped`, since the error may reach the caller wrapped by a tar reader.
pub(crate) struct Bounded<R> {
    pub(crate) inner: R,
    out: u64,
    max: u64,
    max_key: &'static str,
    ratio: u64,
    compressed: Option<Rc<Cell<u64>>>,
    tripped: Tripped,
}

impl<R: Read> Bounded<R> {
    /// `max` is the limit named `max_key`; `compressed` is `None` for a
    /// plain stream (no ratio to check).
    pub(crate) fn new(
        inner: R,
        max: u64,
        max_key: &'static str,
        ratio: u64,
        compressed: Option<Rc<Cell<u64>>>,
    ) -> Bounded<R> {
        Bounded {
            inner,
            out: 0,
            max,
            max_key,
            ratio,
            compressed,
            tripped: Rc::new(Cell::new(None)),
        }
    }

    /// Where the cap that was hit is reported.
    pub(crate) fn tripped(&self) -> Tripped {
        self.tripped.clone()
    }

    fn trip(&self, limit: &'static str, reason: String) -> io::Error {
        let e = io::Error::other(reason.clone());
        self.tripped.set(Some((limit, reason)));
        e
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out = self.out.saturating_add(n as u64);
        if self.out > self.max {
            return Err(self.trip(
                self.max_key,
                format!("decompresses to more than {} bytes", self.max),
            ));
        }
        if let Some(c) = &self.compressed {
            let input = c.get().max(1);
            if self.out > RATIO_FLOOR && self.out / input >= self.ratio {
                return Err(self.trip(
                    "max_layer_ratio",
                    format!(
                        "decompresses to more than {} times its compressed size \
                         ({} bytes from {input}; a decompression bomb?)",
                        self.ratio, self.out
                    ),
                ));
            }
        }
        Ok(n)
    }
}

/// Counts the bytes read through it into a shared cell.
pub(crate) struct Counting<R> {
    pub(crate) inner: R,
    pub(crate) n: Rc<Cell<u64>>,
}

impl<R> Counting<R> {
    pub(crate) fn new(inner: R) -> Counting<R> {
        Counting {
            inner,
            n: Rc::new(Cell::new(0)),
        }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.set(self.n.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_cap_trips_during_the_read() {
        let src = io::repeat(0).take(10 << 20);
        let mut b = Bounded::new(src, 1 << 20, "max_layer_unpacked", 100, None);
        let err = io::copy(&mut b, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
        let (key, _) = b.tripped().take().unwrap();
        assert_eq!(key, "max_layer_unpacked");
    }

    #[test]
    fn the_ratio_trips_past_the_floor_only() {
        let compressed = Rc::new(Cell::new(1000u64));
        // 8 MiB out of 1000 bytes: under the floor, fine.
        let mut b = Bounded::new(
            io::repeat(0).take(8 << 20),
            u64::MAX,
            "max_layer_unpacked",
            100,
            Some(compressed.clone()),
        );
        io::copy(&mut b, &mut io::sink()).unwrap();
        // 32 MiB out of 1000 bytes: refused.
        let mut b = Bounded::new(
            io::repeat(0).take(32 << 20),
            u64::MAX,
            "max_layer_unpacked",
            100,
            Some(compressed.clone()),
        );
        io::copy(&mut b, &mut io::sink()).unwrap_err();
        assert_eq!(b.tripped().take().unwrap().0, "max_layer_ratio");
        // 32 MiB out of 1 MiB (ratio 32) under a ratio of 100: fine.
        compressed.set(1 << 20);
        let mut b = Bounded::new(
            io::repeat(0).take(32 << 20),
            u64::MAX,
            "max_layer_unpacked",
            100,
            Some(compressed),
        );
        io::copy(&mut b, &mut io::sink()).unwrap();
    }

    #[test]
    fn limits_are_validated_with_their_keys() {
        assert!(ImageLimits::default().validate().is_ok());
        let l = ImageLimits {
            max_layer_ratio: 0,
            ..Default::default()
        };
        assert!(l.validate().unwrap_err().starts_with("max_layer_ratio:"));
    }
}
