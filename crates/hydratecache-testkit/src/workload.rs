//! The workload the benchmarks and the chaos run share: a seeded PRNG, Zipf
//! key popularity and the key names.

/// splitmix64: a small deterministic PRNG.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A seed derived from `seed` and a label, so that each user of a run's
    /// seed (a backend, an instance) has its own stream whatever else runs.
    pub fn derive(seed: u64, label: &str) -> u64 {
        let mut h = SplitMix64(seed);
        let mut acc = h.next_u64();
        for b in label.bytes() {
            acc = SplitMix64(acc ^ u64::from(b)).next_u64();
        }
        acc
    }
}

/// Zipf over key ranks 0..n (rank 0 the hottest), sampled from its CDF.
#[derive(Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// Zipf with exponent `s` over `n` ranks (`n` at least 1).
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    /// A rank drawn with `rng`.
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// The name of key `index`: `k00042`.
pub fn key_name(index: usize) -> String {
    format!("k{index:05}")
}

/// The index of a key named by [`key_name`].
pub fn key_index(key: &str) -> Option<usize> {
    key.strip_prefix('k')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_derived_streams_differ() {
        let a: Vec<u64> = (0..4)
            .scan(SplitMix64::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(SplitMix64::new(7), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(
            SplitMix64::derive(7, "redis"),
            SplitMix64::derive(7, "nats")
        );
        assert_eq!(
            SplitMix64::derive(7, "redis"),
            SplitMix64::derive(7, "redis")
        );
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = SplitMix64::new(1);
        let mut hits = [0u32; 2];
        for _ in 0..10_000 {
            let k = z.sample(&mut rng);
            assert!(k < 1000);
            if k == 0 {
                hits[0] += 1;
            } else if k == 999 {
                hits[1] += 1;
            }
        }
        assert!(hits[0] > 100 * hits[1].max(1) / 2, "{hits:?}");
    }

    #[test]
    fn key_names_round_trip() {
        assert_eq!(key_name(42), "k00042");
        assert_eq!(key_index(&key_name(42)), Some(42));
        assert_eq!(key_index(&key_name(123_456)), Some(123_456));
        assert_eq!(key_index("x1"), None);
    }
}
