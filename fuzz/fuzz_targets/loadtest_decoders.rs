//! The load generator's own decoders on arbitrary bytes: `measure::Stamp::read` (a payload that
//! came back from the node), `StreamStats::packet` fed with the stamps found, and
//! `report::node_side` on two `/metrics` texts. None may panic; a stamp read back is what was
//! there; the jitter estimate stays finite and never negative; counts add up.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use loadtest::measure::{STAMP_LEN, Stamp, StreamStats, micros_histogram, record};
use loadtest::report::node_side;

fuzz_target!(|data: &[u8]| {
    // Every window of the input read as a payload.
    let mut stats = StreamStats::default();
    let mut histogram = micros_histogram();
    let mut stamps = 0u64;
    for start in 0..data.len().min(64) {
        let payload = &data[start..];
        if let Some(stamp) = Stamp::read(payload) {
            let mut again = [0u8; STAMP_LEN];
            stamp.write(&mut again);
            assert_eq!(&again[..], &payload[..STAMP_LEN], "a stamp reads back as written");
            stamps += 1;
            let jitter = stats.packet(stamp.counter, u64::from(stamp.publisher), stamp.sent_ns);
            assert!(jitter.is_finite() && jitter >= 0.0, "jitter {jitter}");
            record(&mut histogram, stamp.sent_ns / 1_000);
        }
    }
    assert_eq!(stats.received, stamps);
    assert!(stats.reordered <= stats.received);
    assert_eq!(histogram.len(), stamps);

    // Two scrapes: the input split at its first NUL, each half as text.
    let text = String::from_utf8_lossy(data);
    let (before, after) = text.split_once('\0').unwrap_or(("", &text));
    let measured = Duration::from_millis(data.len() as u64);
    let side = node_side(before, after, measured);
    assert_eq!(side.cores, side.busy_ratio.len());
});
