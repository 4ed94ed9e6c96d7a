//! Keyframe requests (PLI, FIR) from subscribers, relayed to the publisher they concern at most
//! once per interval: every subscriber that loses a picture asks, and a publisher answering each of
//! them would send nothing but keyframes. Pure state, `now` passed in.

use std::time::{Duration, Instant};

/// Default for [`super::ShardConfig::keyframe_interval`].
pub const KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// One publisher's gate: the first request passes, then nothing until `interval` has passed.
#[derive(Debug, Clone, Default)]
pub struct KeyframeThrottle {
    last: Option<Instant>,
}

impl KeyframeThrottle {
    /// Whether a request arriving at `now` may go to the publisher; if so, the interval restarts.
    pub fn allow(&mut self, now: Instant, interval: Duration) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < interval)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_once_and_the_next_request_after_the_interval_passes_again() {
        let t0 = Instant::now();
        let mut t = KeyframeThrottle::default();
        let passed = (0..25)
            .filter(|i| t.allow(t0 + Duration::from_millis(i * 20), KEYFRAME_INTERVAL))
            .count();
        assert_eq!(passed, 1, "25 requests over 480 ms");
        assert!(t.allow(t0 + KEYFRAME_INTERVAL, KEYFRAME_INTERVAL));
        assert!(!t.allow(t0 + Duration::from_millis(999), KEYFRAME_INTERVAL));
        assert!(t.allow(t0 + Duration::from_millis(1000), KEYFRAME_INTERVAL));
    }

    #[test]
    fn the_interval_is_the_callers_and_a_clock_going_back_does_not_open_the_gate() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut t = KeyframeThrottle::default();
        assert!(t.allow(t0, Duration::from_secs(2)));
        assert!(!t.allow(t0 + Duration::from_millis(1500), Duration::from_secs(2)));
        assert!(!t.allow(t0 - Duration::from_secs(5), Duration::from_secs(2)));
        assert!(t.allow(t0 + Duration::from_millis(1500), Duration::from_secs(1)));
        assert!(t.allow(t0 + Duration::from_millis(1500), Duration::ZERO));
    }
}
