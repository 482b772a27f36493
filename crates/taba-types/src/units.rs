//! Human units in job files: byte sizes (`"64MiB"`, `"1GB"`, or an integer
//! number of MiB) and durations (`"15s"`, `"500ms"`, `"2m"`, or an integer
//! number of seconds). Both serialise back to the canonical integer form.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

impl ByteSize {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * MIB)
    }
    /// The size in whole mebibytes, rounded down.
    pub const fn as_mib(self) -> u64 {
        self.0 / MIB
    }
    /// Parse `"64MiB"`, `"1 GiB"`, `"512MB"`, `"100k"`, `"4096B"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(format!(
                "{s:?} is not a size; write e.g. \"64MiB\" or \"1GiB\""
            ));
        }
        let unit = unit.trim();
        let mult: u64 = match unit.to_ascii_lowercase().as_str() {
            "" => MIB,
            "b" => 1,
            "k" | "kb" => 1000,
            "kib" => KIB,
            "m" | "mb" => 1000 * 1000,
            "mib" => MIB,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => GIB,
            "t" | "tb" => 1000 * 1000 * 1000 * 1000,
            "tib" => TIB,
            _ => {
                return Err(format!(
                    "unknown size unit {unit:?}; use B, KiB, MiB, GiB or TiB"
                ))
            }
        };
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size; write e.g. \"64MiB\""))?;
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("{s:?} is too large"));
        }
        Ok(Self(bytes as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= GIB && b.is_multiple_of(GIB) {
            write!(f, "{}GiB", b / GIB)
        } else if b >= MIB && b.is_multiple_of(MIB) {
            write!(f, "{}MiB", b / MIB)
        } else if b >= KIB && b.is_multiple_of(KIB) {
            write!(f, "{}KiB", b / KIB)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or an integer number of MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                v.checked_mul(MIB)
                    .map(ByteSize)
                    .ok_or_else(|| E::custom("size is too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                if v < 0 {
                    return Err(E::custom("size must not be negative"));
                }
                self.visit_u64(v as u64)
            }
            fn visit_f64<E: de::Error>(self, _v: f64) -> Result<ByteSize, E> {
                Err(E::custom(
                    "size must be an integer number of MiB or a string like \"64MiB\"",
                ))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration in milliseconds, written `"15s"`, `"250ms"`, `"5m"`, `"1h"` or
/// as an integer number of seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSpec(pub u64);

impl DurationSpec {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Self {
        Self(n * 1000)
    }
    /// As a std duration.
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
    /// Parse `"15s"`, `"250ms"`, `"1m30s"`, `"2h"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("empty duration; write e.g. \"15s\"".into());
        }
        let mut total: u64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            let n_end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if n_end == 0 {
                return Err(format!(
                    "{s:?} is not a duration; write e.g. \"15s\" or \"500ms\""
                ));
            }
            let n: u64 = rest[..n_end]
                .parse()
                .map_err(|_| format!("{s:?} is too large"))?;
            rest = &rest[n_end..];
            let u_end = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..u_end];
            rest = &rest[u_end..];
            let mult = match unit {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "" => return Err(format!("{s:?} needs a unit (ms, s, m or h)")),
                _ => return Err(format!("unknown duration unit {unit:?}; use ms, s, m or h")),
            };
            total = n
                .checked_mul(mult)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("{s:?} is too large"))?;
        }
        Ok(Self(total))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = DurationSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"15s\" or an integer number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationSpec, E> {
                v.checked_mul(1000)
                    .map(DurationSpec)
                    .ok_or_else(|| E::custom("duration is too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationSpec, E> {
                if v < 0 {
                    return Err(E::custom("duration must not be negative"));
                }
                self.visit_u64(v as u64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationSpec, E> {
                DurationSpec::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MiB").unwrap(), ByteSize::mib(64));
        assert_eq!(ByteSize::parse("1GiB").unwrap().0, 1 << 30);
        assert_eq!(ByteSize::parse("1.5 GiB").unwrap().0, 3 << 29);
        assert_eq!(ByteSize::parse("512MB").unwrap().0, 512_000_000);
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("12XB").is_err());
        assert!(ByteSize::parse("99999999999999999999TiB").is_err());
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
    }

    #[test]
    fn durations() {
        assert_eq!(DurationSpec::parse("15s").unwrap(), DurationSpec::secs(15));
        assert_eq!(DurationSpec::parse("1m30s").unwrap().0, 90_000);
        assert_eq!(DurationSpec::parse("250ms").unwrap().0, 250);
        assert!(DurationSpec::parse("15").is_err());
        assert!(DurationSpec::parse("s").is_err());
        assert!(DurationSpec::parse("3y").is_err());
        assert_eq!(DurationSpec(90_000).to_string(), "90s");
    }
}
