//! Deterministic ids for what the scheduler creates.
//!
//! New allocations and follow-up evaluations get UUIDv4-shaped ids derived
//! from the evaluation id, the store index of the snapshot and a counter, so
//! the same state, evaluation and time give the same plan, ids included. The
//! snapshot index is part of the seed: re-running an evaluation after its plan
//! was committed (the index moved on) gives fresh ids, never colliding ones.

/// A stream of deterministic UUIDv4-shaped ids.
#[derive(Clone, Debug)]
pub struct IdStream {
    state: u64,
}

impl IdStream {
    /// A stream seeded by `seed` (e.g. an evaluation id) and `index`.
    pub fn new(seed: &str, index: u64) -> Self {
        // FNV-1a over the seed, then mixed with the index.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self {
            state: h ^ splitmix(index.wrapping_add(0x9e37_79b9_7f4a_7c15)),
        }
    }

    /// The next 64 random-looking bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.state)
    }

    /// The next id as 128 bits with the UUIDv4 version and variant set.
    pub fn next_u128(&mut self) -> u128 {
        let hi = u128::from(self.next_u64());
        let lo = u128::from(self.next_u64());
        let mut v = (hi << 64) | lo;
        v &= !(0xf << 76);
        v |= 0x4 << 76; // version 4
        v &= !(0x3 << 62);
        v |= 0x2 << 62; // RFC 4122 variant
        v
    }

    /// The next id as a lower-case hyphenated UUID string.
    pub fn next_uuid(&mut self) -> String {
        format_uuid(self.next_u128())
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `v` as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case.
pub fn format_uuid(v: u128) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        let nibble = (v >> (124 - 4 * i)) & 0xf;
        out.push(HEX[nibble as usize] as char);
    }
    out
}

/// Parse the exact form [`format_uuid`] writes (lower case, hyphenated).
pub fn parse_uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if *c != b'-' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_ids_and_round_trip() {
        let mut a = IdStream::new("eval-1", 7);
        let mut b = IdStream::new("eval-1", 7);
        let mut c = IdStream::new("eval-1", 8);
        let x = a.next_uuid();
        assert_eq!(x, b.next_uuid());
        assert_ne!(x, c.next_uuid());
        assert_eq!(x.len(), 36);
        assert_eq!(&x[14..15], "4");
        assert_eq!(format_uuid(parse_uuid(&x).unwrap()), x);
        assert_eq!(parse_uuid("not-a-uuid"), None);
        assert_eq!(parse_uuid(&x.to_uppercase()), None);
    }
}
