//! A seeded pseudo-random source (SplitMix64) and byte-level mutations.

/// SplitMix64: small, fast, and every seed gives a full-period sequence.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from `bytes` (the same input always draws the same facts).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        Self(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Numbers that find edge cases: limits of the integer widths, of rates and ports.
pub const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "7",
    "8",
    "255",
    "256",
    "1023",
    "1024",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "999999999999999",
    "1000000000000000",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e309",
    "0.0000001",
    "1.5",
    ".5",
    "5.",
    "00000000000000000000000000000001",
];

/// Applies one to four random edits to `data`: bit flips, interesting bytes,
/// dictionary words and numbers, deletions, duplications, splices with `other`.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&str], other: &[u8], max_len: usize) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] =
                    *rng.pick(&[0u8, 0xff, 0x7f, 0x80, b'"', b'\'', b'\n', b'[', b'{', b'\\', b'*', b'0']);
            }
            2 | 3 => {
                let at = rng.below(len + 1);
                let word = if rng.one_in(2) { rng.pick(dict) } else { rng.pick(NUMBERS) };
                data.splice(at..at, word.bytes());
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(16)).min(len);
                data.drain(at..end);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(32)).min(len);
                let copy: Vec<u8> = data[at..end].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, copy);
            }
            6 => replace_number(rng, data),
            7 if !other.is_empty() => {
                // Splice: our head, the other input's tail.
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let at = rng.below(len);
                data.insert(at, rng.next_u64() as u8);
            }
            _ => data.push(rng.next_u64() as u8),
        }
    }
    data.truncate(max_len);
}

/// Replaces a run of digits with an interesting number.
fn replace_number(rng: &mut Rng, data: &mut Vec<u8>) {
    let digits: Vec<usize> =
        data.iter().enumerate().filter(|(_, b)| b.is_ascii_digit()).map(|(i, _)| i).collect();
    if digits.is_empty() {
        return;
    }
    let start = *rng.pick(&digits);
    let end = data[start..].iter().position(|b| !b.is_ascii_digit()).map_or(data.len(), |n| start + n);
    data.splice(start..end, rng.pick(NUMBERS).bytes());
}
