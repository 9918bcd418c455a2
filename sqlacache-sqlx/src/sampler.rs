//! Which hits the shadow check (see [`crate::shadow`]) reads again: a per-thread draw, with no
//! shared state on the hit path.

use std::cell::Cell;

/// Which hits are checked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sampler {
    /// A hit is checked when a uniform 64-bit draw is below this.
    below: u64,
}

impl Sampler {
    /// Checks `fraction` of hits (0 to 1); `None` for none.
    pub fn new(fraction: f64) -> Option<Sampler> {
        let fraction = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) };
        (fraction > 0.0)
            .then(|| Sampler { below: if fraction >= 1.0 { u64::MAX } else { (fraction * 2f64.powi(64)) as u64 } })
    }

    /// Whether this hit is checked: a per-thread xorshift draw, no shared state.
    #[inline]
    pub fn sampled(&self) -> bool {
        thread_local! {
            static STATE: Cell<u64> = Cell::new(seed());
        }
        let draw = STATE.with(|state| {
            let mut x = state.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.set(x);
            x
        });
        draw < self.below || self.below == u64::MAX
    }
}

/// A nonzero seed that differs between threads.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    hasher.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::Sampler;

    #[test]
    fn samples_the_fraction_asked_for() {
        assert!(Sampler::new(0.0).is_none() && Sampler::new(-1.0).is_none() && Sampler::new(f64::NAN).is_none());
        let all = Sampler::new(1.0).unwrap();
        assert!((0..1000).all(|_| all.sampled()));
        let one_percent = Sampler::new(0.01).unwrap();
        let drawn = (0..1_000_000).filter(|_| one_percent.sampled()).count();
        assert!((9_500..=10_500).contains(&drawn), "{drawn} of 1,000,000");
    }
}
