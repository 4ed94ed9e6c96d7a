//! What a listener measures about each stream it receives: pure functions of the packets and the
//! times they were sent and read, so they are tested without sockets.

use hdrhistogram::Histogram;

/// Marks a load-test payload.
pub const MAGIC: [u8; 4] = *b"CVLT";
/// Bytes of the stamp at the start of every payload: magic, publisher, counter, send time.
pub const STAMP_LEN: usize = 20;
/// The RTP clock of Opus.
const RTP_HZ: f64 = 48_000.0;

/// What a publisher writes at the start of each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The publisher, numbered across the whole run.
    pub publisher: u32,
    /// The publisher's packet counter, from 0.
    pub counter: u32,
    /// When the packet was handed to the client stack, in nanoseconds since the Unix epoch
    /// (realtime clock: the clock of the kernel's receive stamps).
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp into the start of `payload` (at least [`STAMP_LEN`] bytes).
    pub fn write(&self, payload: &mut [u8]) {
        payload[..4].copy_from_slice(&MAGIC);
        payload[4..8].copy_from_slice(&self.publisher.to_be_bytes());
        payload[8..12].copy_from_slice(&self.counter.to_be_bytes());
        payload[12..20].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a stamp; `None` for a payload that is not ours (or was mangled on the way).
    pub fn read(payload: &[u8]) -> Option<Self> {
        let p = payload.get(..STAMP_LEN)?;
        if p[..4] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&p[12..20]);
        Some(Self {
            publisher: u32_at(4),
            counter: u32_at(8),
            sent_ns: u64::from_be_bytes(ns),
        })
    }
}

/// One (listener, publisher) stream.
#[derive(Debug, Clone, Default)]
pub struct StreamStats {
    /// Packets counted (counter at or after the publisher's first measured packet).
    pub received: u64,
    /// Packets that arrived with a counter below the highest seen so far.
    pub reordered: u64,
    highest: Option<u32>,
    /// RFC 3550 §6.4.1 interarrival jitter, in RTP timestamp units.
    jitter: f64,
    last_transit: Option<f64>,
}

impl StreamStats {
    /// Accounts one packet: its RTP timestamp (`rtp_time`, 48 kHz units, extended) and when it was
    /// read (`arrival_ns`). Returns the jitter estimate after it, in microseconds.
    pub fn packet(&mut self, counter: u32, rtp_time: u64, arrival_ns: u64) -> f64 {
        self.received += 1;
        match self.highest {
            Some(h) if counter < h => self.reordered += 1,
            _ => self.highest = Some(counter),
        }
        // RFC 3550: transit = arrival - timestamp, in timestamp units; the estimate moves by
        // 1/16 of the difference between |D| and itself.
        let arrival = arrival_ns as f64 * RTP_HZ / 1e9;
        let transit = arrival - rtp_time as f64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        self.jitter_us()
    }

    /// The current jitter estimate in microseconds.
    pub fn jitter_us(&self) -> f64 {
        self.jitter * 1e6 / RTP_HZ
    }
}

/// A latency histogram in microseconds, from 1 µs to 60 s with 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid")
}

/// Records `value_us` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, value_us: u64) {
    let v = value_us.clamp(h.low(), h.high());
    // Within bounds by construction.
    let _ = h.record(v);
}

/// Loss over streams: `(expected, received)` summed, as a fraction of `expected`.
pub fn loss_ratio(expected: u64, received: u64) -> f64 {
    if expected == 0 {
        return 0.0;
    }
    expected.saturating_sub(received) as f64 / expected as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_foreign_payloads_are_refused() {
        let s = Stamp {
            publisher: 7,
            counter: 123_456,
            sent_ns: 9_876_543_210,
        };
        let mut payload = vec![0u8; 120];
        s.write(&mut payload);
        assert_eq!(Stamp::read(&payload), Some(s));
        assert_eq!(Stamp::read(&payload[..STAMP_LEN - 1]), None);
        payload[0] = b'X';
        assert_eq!(Stamp::read(&payload), None);
    }

    #[test]
    fn jitter_is_zero_for_a_steady_stream_and_follows_rfc3550_otherwise() {
        let mut steady = StreamStats::default();
        for i in 0..100u64 {
            // 20 ms apart on both clocks, 5 ms in flight.
            steady.packet(i as u32, i * 960, i * 20_000_000 + 5_000_000);
        }
        assert!(steady.jitter_us() < 1e-6, "{}", steady.jitter_us());
        assert_eq!(steady.received, 100);

        // Every other packet 2 ms late: |D| = 2 ms on every packet after the first, so the
        // estimate converges to 2 ms (J += (|D| - J) / 16).
        let mut bumpy = StreamStats::default();
        for i in 0..400u64 {
            let late = if i % 2 == 1 { 2_000_000 } else { 0 };
            bumpy.packet(i as u32, i * 960, i * 20_000_000 + late);
        }
        assert!(
            (bumpy.jitter_us() - 2000.0).abs() < 1.0,
            "{}",
            bumpy.jitter_us()
        );
        // After one step from zero with |D| = 2 ms the estimate is 2 ms / 16.
        let mut one = StreamStats::default();
        one.packet(0, 0, 0);
        let j = one.packet(1, 960, 22_000_000);
        assert!((j - 125.0).abs() < 1e-6, "{j}");
    }

    #[test]
    fn reordering_is_counted_and_loss_is_a_fraction_of_expected() {
        let mut s = StreamStats::default();
        for c in [0, 1, 3, 2, 4] {
            s.packet(c, u64::from(c) * 960, u64::from(c) * 20_000_000);
        }
        assert_eq!((s.received, s.reordered), (5, 1));
        assert_eq!(loss_ratio(1000, 999), 0.001);
        assert_eq!(loss_ratio(0, 0), 0.0);
        assert_eq!(loss_ratio(10, 12), 0.0);
    }

    #[test]
    fn histogram_clamps_out_of_range_values() {
        let mut h = micros_histogram();
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
    }
}
