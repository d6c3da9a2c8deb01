//! Keys and values.
//!
//! A key is `user` and a number, zero-padded on the left so the key is exactly
//! `key_bytes` bytes. With room for 19 digits or more (`key_bytes` ≥ 23) the number is
//! YCSB's hash of the key number (`fnv_hash64`, at most 19 digits): key number 0 is
//! `user06284781860667377211` at 24 bytes, as YCSB's `user6284781860667377211` with
//! zero padding. With fewer digits `d`, a hash cut to `d` digits would make duplicate keys;
//! the number is instead `key_number × P mod 10^d` (P the FNV prime, coprime to 10^d): a
//! scrambling that is one-to-one on `0..10^d`, so keys stay distinct up to 10^d keys
//! (validation refuses a record count above that; run-phase inserts beyond it reuse keys).
//!
//! A value is `value_bytes` random bytes made once per worker; each write changes 8 bytes
//! of it at a varying offset, so consecutive values differ without drawing every byte.

use rand::Rng;

use super::generator::fnv_hash64;

/// The prefix of every key (YCSB's).
pub const KEY_PREFIX: &str = "user";
/// Digits of the largest `fnv_hash64` value (2^63).
pub const HASH_DIGITS: usize = 19;
/// The multiplier of the short-key scrambling: the 64-bit FNV prime (ends in 1, so coprime
/// to every power of 10).
const SHORT_KEY_MULTIPLIER: u128 = 1_099_511_628_211;
/// Bytes of a value changed per write.
const VALUE_VARIED_BYTES: usize = 8;

/// Turns key numbers into keys of a fixed size.
#[derive(Debug, Clone, Copy)]
pub struct KeyFormat {
    /// Digits after the prefix.
    digits: usize,
}

impl KeyFormat {
    /// The format of keys of `key_bytes` bytes (at least `KEY_PREFIX.len() + 1`).
    pub fn new(key_bytes: usize) -> KeyFormat {
        KeyFormat { digits: key_bytes.saturating_sub(KEY_PREFIX.len()).max(1) }
    }

    /// How many distinct keys there are, when fewer than 2^63 (short keys).
    pub fn distinct_keys(&self) -> Option<u64> {
        if self.digits >= HASH_DIGITS {
            None
        } else {
            Some(10u64.pow(self.digits as u32))
        }
    }

    /// The keys that cut the key space into `shards` ranges holding equal shares of the
    /// keys (the numbers are uniform over `0..2^63`, or `0..10^digits` for short keys):
    /// `shards - 1` keys, in order.
    pub fn split_keys(&self, shards: u64) -> Vec<Vec<u8>> {
        let space: u128 = match self.distinct_keys() {
            None => 1u128 << 63,
            Some(modulus) => u128::from(modulus),
        };
        (1..shards.max(1))
            .map(|i| {
                let number = (space * u128::from(i) / u128::from(shards)) as u64;
                format!("{KEY_PREFIX}{number:0width$}", width = self.digits).into_bytes()
            })
            .collect()
    }

    /// The key of key number `n`.
    pub fn key(&self, n: u64) -> Vec<u8> {
        let number = match self.distinct_keys() {
            None => fnv_hash64(n),
            Some(modulus) => ((u128::from(n) * SHORT_KEY_MULTIPLIER) % u128::from(modulus)) as u64,
        };
        format!("{KEY_PREFIX}{number:0width$}", width = self.digits).into_bytes()
    }
}

/// Values of one worker: random bytes made once, a few bytes changed per value.
#[derive(Debug, Clone)]
pub struct ValueSource {
    buf: Vec<u8>,
    /// Where the next change goes.
    offset: usize,
}

impl ValueSource {
    pub fn new<R: Rng>(rng: &mut R, value_bytes: usize) -> ValueSource {
        let mut buf = vec![0u8; value_bytes];
        rng.fill_bytes(&mut buf);
        ValueSource { buf, offset: 0 }
    }

    /// The next value: the previous one with up to 8 bytes replaced by random ones.
    pub fn next<R: Rng>(&mut self, rng: &mut R) -> Vec<u8> {
        let len = self.buf.len();
        if len > 0 {
            let start = self.offset % len;
            let end = (start + VALUE_VARIED_BYTES).min(len);
            let fresh = rng.next_u64().to_le_bytes();
            self.buf[start..end].copy_from_slice(&fresh[..end - start]);
            // Move by a prime stride so the changes wander over the whole value.
            self.offset = (start + 61) % len;
        }
        self.buf.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};
    use std::collections::HashSet;

    #[test]
    fn keys_have_exact_size_and_ycsb_numbers() {
        let f = KeyFormat::new(24);
        assert_eq!(f.key(0), b"user06284781860667377211");
        for size in [8, 12, 16, 22, 23, 24, 25, 64, 4096] {
            let f = KeyFormat::new(size);
            for n in [0, 1, 2, 9_999, 1 << 40, u64::MAX] {
                let k = f.key(n);
                assert_eq!(k.len(), size, "key {n} of size {size}: {}", String::from_utf8_lossy(&k));
                assert!(k.starts_with(b"user"));
                assert!(k[4..].iter().all(u8::is_ascii_digit));
            }
        }
        assert_eq!(KeyFormat::new(23).key(0), b"user6284781860667377211");
    }

    #[test]
    fn short_keys_are_distinct_up_to_capacity() {
        let f = KeyFormat::new(8);
        assert_eq!(f.distinct_keys(), Some(10_000));
        let keys: HashSet<Vec<u8>> = (0..10_000).map(|n| f.key(n)).collect();
        assert_eq!(keys.len(), 10_000);
        assert_eq!(KeyFormat::new(23).distinct_keys(), None);
        // Consecutive numbers are scattered, not sequential.
        assert_ne!(f.key(1), b"user0001");
    }

    #[test]
    fn values_have_exact_size_and_vary() {
        let mut rng = SmallRng::seed_from_u64(1);
        for size in [1, 7, 8, 100, 1024] {
            let mut v = ValueSource::new(&mut rng, size);
            let (a, b) = (v.next(&mut rng), v.next(&mut rng));
            assert_eq!((a.len(), b.len()), (size, size));
            assert_ne!(a, b, "size {size}");
        }
    }

    #[test]
    fn split_keys_cut_the_keys_into_equal_shares() {
        for key_bytes in [24, 10] {
            let f = KeyFormat::new(key_bytes);
            let splits = f.split_keys(16);
            assert_eq!(splits.len(), 15);
            assert!(splits.windows(2).all(|w| w[0] < w[1]), "in order");
            let mut counts = [0usize; 16];
            for n in 0..16_000u64 {
                let k = f.key(n);
                counts[splits.iter().filter(|s| **s <= k).count()] += 1;
            }
            // 1,000 keys each on average; every share within 20% of it.
            assert!(counts.iter().all(|c| (800..=1_200).contains(c)), "{key_bytes} bytes: {counts:?}");
        }
        assert!(KeyFormat::new(24).split_keys(1).is_empty());
    }
}
