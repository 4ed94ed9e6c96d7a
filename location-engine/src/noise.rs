//! A deterministic stream of numbers (xorshift64) for the traces of tests, benches and the load
//! generator: seeded, so a failure reproduces. Not for anything that needs unpredictability.

/// The stream; the seed must not be 0.
#[derive(Debug, Clone)]
pub struct Noise(pub u64);

impl Noise {
    /// The next number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next number in [-amplitude, amplitude).
    pub fn signed(&mut self, amplitude: f64) -> f64 {
        (self.unit() * 2.0 - 1.0) * amplitude
    }

    /// The next index below `n` (> 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n - 1)
    }
}
