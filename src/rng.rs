//! Seeded random numbers that do not depend on libtorch's generator: the data splits, the
//! per-epoch batch order, the bundled 2-D toys and the seeds the trainer derives for each step.
//!
//! Everything here is a pure function of its seed, the same on every machine and every
//! libtorch version. The sequences are frozen: the shipped model's data split
//! (`models/glow_digits`) and the committed toy files (`data/toys/*.csv`, `make toys`) depend on
//! them bit for bit, so a change here is a change of every seeded result.

/// The golden-ratio increment of splitmix64 (also its seed whitening constant).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64 (Steele, Lea & Flood 2014): a 64-bit state advanced by a constant, each output a
/// mix of the state. Small, fast, and good enough for shuffles and toy data.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output mixes `state + GOLDEN`. Callers whiten their seed
    /// themselves (see [`seeded_permutation`] and `data::toys`): those constants are part of the
    /// frozen sequences.
    pub fn from_state(state: u64) -> SplitMix64 {
        SplitMix64 { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box–Muller, one of the pair; two uniforms per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A permutation of `0..n` from a seed (Fisher–Yates driven by splitmix64).
pub fn seeded_permutation(n: usize, seed: u64) -> Vec<i64> {
    let mut rng = SplitMix64::from_state(seed ^ GOLDEN);
    let mut p: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        p.swap(i, j);
    }
    p
}

/// A non-negative seed derived from a run's `seed`, a purpose tag `stream` (batch order,
/// data-init batch, per-step noise, evaluation, samples, ...) and an index (epoch or step), so
/// that every random draw of a run is reproducible from `(seed, stream, index)` alone and a
/// resumed run draws what the uninterrupted one would have.
pub fn derive_seed(seed: u64, stream: u64, index: i64) -> i64 {
    let mut z = seed ^ stream.wrapping_mul(GOLDEN) ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z >> 1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values recorded from the three copies this module replaces (toys, the image split, the
    // trainer's seed mixing): any change to a generator shows up here before it moves a split.
    #[test]
    fn sequences_are_frozen() {
        let mut r = SplitMix64::from_state(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(seeded_permutation(10, 0), vec![8, 7, 6, 5, 3, 9, 2, 4, 1, 0]);
        assert_eq!(seeded_permutation(10, 12345), vec![8, 3, 7, 4, 2, 5, 6, 0, 9, 1]);
        assert_eq!(derive_seed(0, 1, 0), 3946794011547024710);
        assert_eq!(derive_seed(7, 6, 3), 5386762160179029511);
        assert_eq!(derive_seed(u64::MAX, 5, -1), 1514858146715745235);
    }
}
