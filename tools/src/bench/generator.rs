//! Key number generators: uniform, zipfian (Gray et al., "Quickly Generating Billion-Record
//! Synthetic Databases", SIGMOD 1994, as in YCSB's `ZipfianGenerator`), YCSB's scrambled
//! zipfian and latest, and the shared counter of inserted keys.
//!
//! Every generator draws a key number in `0..items`, where `items` is the number of keys
//! inserted and acknowledged so far ([`KeySpace::items`]): it grows with the inserts of the
//! run phase (workloads D and E), and the zipfian generators follow it incrementally (only
//! the new terms of the zeta sum are added).
//!
//! **Scrambled zipfian.** YCSB spreads the popular items over the key space by hashing the
//! zipfian rank (`fnv(rank) % items`), and avoids a modulus that changes with inserts by
//! sizing its generator up front for the expected inserts and redrawing keys not inserted
//! yet. Here the modulus is fixed to the key count the generator starts with (`base_items`,
//! the record count): ranks below it are scrambled exactly as in YCSB, and ranks of keys
//! inserted later map to themselves, so the popular keys stay the same while the key space
//! grows and no draw is wasted. Unlike YCSB's `ScrambledZipfianGenerator`, which draws ranks
//! over 10 billion items (with a precomputed zeta) before the modulus, the ranks here are
//! drawn over the actual key count: the skew is the zipfian 0.99 of the key space itself
//! (YCSB's is flatter: its most popular key gets ~3.8% of the draws at any size).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::Rng;

use super::config::Distribution;

/// YCSB's zipfian constant (theta).
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// Terms of a zeta sum added one by one; beyond, the Euler–Maclaurin formula gives the rest
/// (its error there is far below the rounding error of the sum).
const ZETA_EXACT_TERMS: u64 = 1_000_000;

const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// YCSB's `Utils.fnvhash64`: FNV-1a over the 8 little-endian bytes of `v`, as a
/// non-negative 63-bit number (Java's `Math.abs` of the signed result).
pub fn fnv_hash64(v: u64) -> u64 {
    let mut hash = FNV_OFFSET_BASIS_64;
    let mut v = v;
    for _ in 0..8 {
        hash ^= v & 0xff;
        hash = hash.wrapping_mul(FNV_PRIME_64);
        v >>= 8;
    }
    (hash as i64).unsigned_abs()
}

/// SplitMix64: a well-mixed 64-bit value from any input (for per-worker seeds).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sum over `i` in `from..to` of `1 / (i + 1)^theta` (YCSB's `zeta(st, n, theta, 0)`).
pub fn zeta_range(from: u64, to: u64, theta: f64) -> f64 {
    if to <= from {
        return 0.0;
    }
    let exact_end = to.min(from.saturating_add(ZETA_EXACT_TERMS));
    let mut sum = 0.0;
    for i in from..exact_end {
        sum += 1.0 / ((i + 1) as f64).powf(theta);
    }
    if exact_end < to {
        // Terms k = exact_end + 1 ..= to.
        sum += euler_maclaurin(exact_end + 1, to, theta);
    }
    sum
}

/// The sum over `k` in `a..=b` of `k^-theta`, by Euler–Maclaurin with two correction terms;
/// for `a` ≥ 10^6 the error is below 10^-30.
fn euler_maclaurin(a: u64, b: u64, theta: f64) -> f64 {
    let (a, b) = (a as f64, b as f64);
    let f = |x: f64| x.powf(-theta);
    let f1 = |x: f64| -theta * x.powf(-theta - 1.0);
    let f3 = |x: f64| -theta * (theta + 1.0) * (theta + 2.0) * x.powf(-theta - 3.0);
    let integral =
        if (theta - 1.0).abs() < f64::EPSILON { (b / a).ln() } else { (b.powf(1.0 - theta) - a.powf(1.0 - theta)) / (1.0 - theta) };
    integral + (f(a) + f(b)) / 2.0 + (f1(b) - f1(a)) / 12.0 - (f3(b) - f3(a)) / 720.0
}

/// Zipfian ranks in `0..items`, rank 0 the most popular (YCSB's `ZipfianGenerator` with
/// base 0). The item count may grow between draws; the zeta sum follows incrementally.
#[derive(Debug, Clone)]
pub struct Zipfian {
    theta: f64,
    /// 1 / (1 - theta).
    alpha: f64,
    /// zeta(2, theta).
    zeta2theta: f64,
    /// 0.5^theta.
    half_pow_theta: f64,
    /// The item count `zetan` and `eta` are for.
    items: u64,
    /// zeta(items, theta).
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `items` items (at least 1) with YCSB's constant 0.99. Computing the
    /// zeta sum takes up to 10^6 steps: create one and clone it for each worker.
    pub fn new(items: u64) -> Zipfian {
        Zipfian::with_theta(items, ZIPFIAN_CONSTANT)
    }

    pub fn with_theta(items: u64, theta: f64) -> Zipfian {
        let items = items.max(1);
        let mut z = Zipfian {
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta2theta: zeta_range(0, 2, theta),
            half_pow_theta: 0.5f64.powf(theta),
            items,
            zetan: zeta_range(0, items, theta),
            eta: 0.0,
        };
        z.eta = z.compute_eta();
        z
    }

    fn compute_eta(&self) -> f64 {
        (1.0 - (2.0 / self.items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2theta / self.zetan)
    }

    /// Follows a new item count: adds the new terms of the zeta sum when it grew,
    /// recomputes it when it shrank.
    fn set_items(&mut self, items: u64) {
        let items = items.max(1);
        if items == self.items {
            return;
        }
        if items > self.items {
            self.zetan += zeta_range(self.items, items, self.theta);
        } else {
            self.zetan = zeta_range(0, items, self.theta);
        }
        self.items = items;
        self.eta = self.compute_eta();
    }

    /// The next rank in `0..items`.
    pub fn next<R: Rng>(&mut self, rng: &mut R, items: u64) -> u64 {
        self.set_items(items);
        let u: f64 = rng.random();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.items - 1);
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}

/// YCSB's scrambled zipfian over a growing key space (see the module documentation).
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    zipf: Zipfian,
    /// The fixed modulus of the scrambling: the key count at the start.
    base_items: u64,
}

impl ScrambledZipfian {
    pub fn new(base_items: u64) -> ScrambledZipfian {
        let base_items = base_items.max(1);
        ScrambledZipfian { zipf: Zipfian::new(base_items), base_items }
    }

    /// The next key number in `0..items`.
    pub fn next<R: Rng>(&mut self, rng: &mut R, items: u64) -> u64 {
        let rank = self.zipf.next(rng, items);
        if rank < self.base_items {
            fnv_hash64(rank) % self.base_items
        } else {
            rank
        }
    }
}

/// YCSB's "latest" (`SkewedLatestGenerator`): zipfian over the age of keys, so the key
/// inserted last is the most popular.
#[derive(Debug, Clone)]
pub struct Latest {
    zipf: Zipfian,
}

impl Latest {
    pub fn new(items: u64) -> Latest {
        Latest { zipf: Zipfian::new(items) }
    }

    /// The next key number in `0..items`.
    pub fn next<R: Rng>(&mut self, rng: &mut R, items: u64) -> u64 {
        let items = items.max(1);
        items - 1 - self.zipf.next(rng, items)
    }
}

/// Picks the key numbers of reads, updates, scans and read-modify-writes.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    Uniform,
    Zipfian(ScrambledZipfian),
    Latest(Latest),
}

impl KeyChooser {
    /// A chooser for a key space of `items` keys at the start.
    pub fn new(distribution: Distribution, items: u64) -> KeyChooser {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform,
            Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(items)),
            Distribution::Latest => KeyChooser::Latest(Latest::new(items)),
        }
    }

    /// The next key number in `0..items` (`items` ≥ 1).
    pub fn next<R: Rng>(&mut self, rng: &mut R, items: u64) -> u64 {
        match self {
            KeyChooser::Uniform => rng.random_range(0..items.max(1)),
            KeyChooser::Zipfian(z) => z.next(rng, items),
            KeyChooser::Latest(l) => l.next(rng, items),
        }
    }
}

/// The key numbers of the run phase's inserts (YCSB's `AcknowledgedCounterGenerator`):
/// inserts take numbers in order; [`KeySpace::items`] counts the keys `0..items` whose
/// inserts have all finished, so a read never picks a key whose insert is still in flight.
/// A failed insert is acknowledged too (as in YCSB), so one failure does not freeze the key
/// space; a read of it then finds nothing and counts as not found.
#[derive(Debug)]
pub struct KeySpace {
    next: AtomicU64,
    /// Every key below is acknowledged; only changed under `pending`'s lock.
    items: AtomicU64,
    /// Acknowledged keys above `items`.
    pending: Mutex<BTreeSet<u64>>,
}

impl KeySpace {
    /// A key space of the keys `0..items`, all inserted.
    pub fn new(items: u64) -> KeySpace {
        KeySpace { next: AtomicU64::new(items), items: AtomicU64::new(items), pending: Mutex::new(BTreeSet::new()) }
    }

    /// The number for a new key.
    pub fn allocate(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks the insert of `key` as finished.
    pub fn acknowledge(&self, key: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut items = self.items.load(Ordering::Relaxed);
        if key != items {
            pending.insert(key);
            return;
        }
        items += 1;
        while pending.remove(&items) {
            items += 1;
        }
        self.items.store(items, Ordering::Release);
    }

    /// How many keys may be read: `0..items` are all inserted.
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::SmallRng, SeedableRng};

    /// YCSB's precomputed zeta(10^10, 0.99) (`ScrambledZipfianGenerator.ZETAN`).
    const YCSB_ZETAN_10B: f64 = 26.46902820178302;

    #[test]
    fn fnv_matches_ycsb() {
        // YCSB's first keys: user6284781860667377211, user8517097267634966620, ...
        assert_eq!(fnv_hash64(0), 6284781860667377211);
        assert_eq!(fnv_hash64(1), 8517097267634966620);
        assert!((0..10_000).all(|i| fnv_hash64(i) <= i64::MAX as u64 + 1));
    }

    #[test]
    fn zeta_exact_and_approximate_agree() {
        let theta = ZIPFIAN_CONSTANT;
        // 3 * 10^6 terms one by one against 10^6 plus Euler–Maclaurin.
        let n = 3 * ZETA_EXACT_TERMS;
        let mut exact = 0.0;
        for i in 0..n {
            exact += 1.0 / ((i + 1) as f64).powf(theta);
        }
        let approx = zeta_range(0, n, theta);
        assert!(((exact - approx) / exact).abs() < 1e-12, "{exact} vs {approx}");
        // And YCSB's constant for 10 billion items.
        let z = zeta_range(0, 10_000_000_000, theta);
        assert!(((z - YCSB_ZETAN_10B) / YCSB_ZETAN_10B).abs() < 1e-9, "{z}");
        // Incremental sums add up to the direct one.
        let parts = zeta_range(0, 1000, theta) + zeta_range(1000, 5000, theta);
        assert!((parts - zeta_range(0, 5000, theta)).abs() < 1e-12);
    }

    #[test]
    fn zipfian_incremental_matches_fresh() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut grown = Zipfian::new(100);
        for items in [100, 150, 1000, 5000] {
            grown.next(&mut rng, items);
        }
        let fresh = Zipfian::new(5000);
        assert!((grown.zetan - fresh.zetan).abs() < 1e-12);
        assert!((grown.eta - fresh.eta).abs() < 1e-12);
        // Shrinking recomputes.
        grown.next(&mut rng, 10);
        assert!((grown.zetan - Zipfian::new(10).zetan).abs() < 1e-12);
    }

    /// Frequencies of each key number over `draws` draws.
    fn histogram(chooser: &mut KeyChooser, items: u64, draws: usize, seed: u64) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut counts = vec![0usize; items as usize];
        for _ in 0..draws {
            let k = chooser.next(&mut rng, items);
            assert!(k < items, "{k} out of 0..{items}");
            counts[k as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipfian_is_skewed_in_range_and_deterministic() {
        const ITEMS: u64 = 1000;
        const DRAWS: usize = 100_000;
        let mut chooser = KeyChooser::new(Distribution::Zipfian, ITEMS);
        let counts = histogram(&mut chooser, ITEMS, DRAWS, 42);
        let uniform = DRAWS as f64 / ITEMS as f64;
        let top = *counts.iter().max().unwrap() as f64;
        // Rank 0 has probability 1/zeta(1000) ≈ 14%: ~140 times the uniform share.
        assert!(top > 50.0 * uniform, "most popular key drawn {top} times, uniform {uniform}");
        // The popular key is not key 0: scrambled.
        let hottest = counts.iter().enumerate().max_by_key(|(_, c)| **c).map(|(k, _)| k as u64).unwrap();
        assert_eq!(hottest, fnv_hash64(0) % ITEMS);
        // The 10% most popular keys take most draws.
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top10: usize = sorted[..ITEMS as usize / 10].iter().sum();
        assert!(top10 as f64 > 0.5 * DRAWS as f64, "top 10% got {top10}");
        // Same seed, same draws.
        let mut again = KeyChooser::new(Distribution::Zipfian, ITEMS);
        assert_eq!(histogram(&mut again, ITEMS, DRAWS, 42), counts);
        let mut other = KeyChooser::new(Distribution::Zipfian, ITEMS);
        assert_ne!(histogram(&mut other, ITEMS, DRAWS, 43), counts);
    }

    #[test]
    fn zipfian_growing_keeps_hot_keys_and_reaches_new_ones() {
        let mut chooser = KeyChooser::new(Distribution::Zipfian, 1000);
        let counts = histogram(&mut chooser, 2000, 200_000, 5);
        let hottest = counts.iter().enumerate().max_by_key(|(_, c)| **c).map(|(k, _)| k as u64).unwrap();
        assert_eq!(hottest, fnv_hash64(0) % 1000, "hot key moved when the key space grew");
        assert!(counts[1000..].iter().sum::<usize>() > 0, "new keys never drawn");
    }

    #[test]
    fn uniform_is_flat() {
        const ITEMS: u64 = 100;
        let counts = histogram(&mut KeyChooser::Uniform, ITEMS, 100_000, 1);
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        assert!(min > 800 && max < 1200, "{min}..{max}");
    }

    #[test]
    fn latest_favours_recent_inserts() {
        const DRAWS: usize = 100_000;
        let mut chooser = KeyChooser::new(Distribution::Latest, 1000);
        let counts = histogram(&mut chooser, 1000, DRAWS, 9);
        assert_eq!(counts.iter().enumerate().max_by_key(|(_, c)| **c).map(|(k, _)| k), Some(999));
        let newest_tenth: usize = counts[900..].iter().sum();
        let oldest_tenth: usize = counts[..100].iter().sum();
        assert!(newest_tenth > DRAWS / 2, "newest 10% got {newest_tenth}");
        assert!(newest_tenth > 10 * oldest_tenth, "{newest_tenth} vs {oldest_tenth}");
        // After inserts, the newest key is the most popular.
        let counts = histogram(&mut chooser, 1500, DRAWS, 10);
        assert_eq!(counts.iter().enumerate().max_by_key(|(_, c)| **c).map(|(k, _)| k), Some(1499));
    }

    #[test]
    fn key_space_counts_only_contiguous_acknowledged_inserts() {
        let ks = KeySpace::new(10);
        let (a, b, c) = (ks.allocate(), ks.allocate(), ks.allocate());
        assert_eq!((a, b, c), (10, 11, 12));
        ks.acknowledge(c);
        ks.acknowledge(b);
        assert_eq!(ks.items(), 10, "key 10 is still in flight");
        ks.acknowledge(a);
        assert_eq!(ks.items(), 13);
    }
}
