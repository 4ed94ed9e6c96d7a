//! A budget for each participant's room-control messages: a client that floods its data channel
//! (every `list_participants` costs the node a whole list to send back) gets refused, once, and
//! is then ignored until its budget refills; the rest of the room never notices. Pure state,
//! `now` passed in.

use std::time::{Duration, Instant};

/// Messages a participant may send at once.
pub const CONTROL_BURST: u32 = 20;
/// Steady rate after the burst: one message per this interval (10 per second).
pub const CONTROL_REFILL: Duration = Duration::from_millis(100);

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over budget: drop it and tell the sender (once per exhaustion).
    Refuse,
    /// Over budget and already told: drop it silently.
    Drop,
}

/// A token bucket holding up to [`CONTROL_BURST`] tokens, one added per [`CONTROL_REFILL`].
#[derive(Debug, Clone)]
pub struct ControlBudget {
    tokens: u32,
    /// When the next token is due (refill runs from the last time the bucket was below full).
    refilled_at: Option<Instant>,
    told: bool,
}

impl Default for ControlBudget {
    fn default() -> Self {
        Self {
            tokens: CONTROL_BURST,
            refilled_at: None,
            told: false,
        }
    }
}

impl ControlBudget {
    /// Takes a token for a message arriving at `now`.
    pub fn take(&mut self, now: Instant) -> Verdict {
        self.refill(now);
        if self.tokens > 0 {
            self.tokens -= 1;
            if self.refilled_at.is_none() {
                self.refilled_at = Some(now);
            }
            return Verdict::Allow;
        }
        if std::mem::replace(&mut self.told, true) {
            Verdict::Drop
        } else {
            Verdict::Refuse
        }
    }

    fn refill(&mut self, now: Instant) {
        let Some(since) = self.refilled_at else {
            return;
        };
        // A clock that goes back refills nothing.
        let elapsed = now.saturating_duration_since(since);
        let earned =
            (elapsed.as_nanos() / CONTROL_REFILL.as_nanos()).min(u128::from(CONTROL_BURST));
        if earned == 0 {
            return;
        }
        self.tokens = (self.tokens + earned as u32).min(CONTROL_BURST);
        self.told = false;
        self.refilled_at = if self.tokens == CONTROL_BURST {
            None
        } else {
            Some(since + CONTROL_REFILL * earned as u32)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_refusal_then_silence_until_the_budget_refills() {
        let t0 = Instant::now();
        let mut b = ControlBudget::default();
        let verdicts: Vec<Verdict> = (0..30).map(|_| b.take(t0)).collect();
        assert!(verdicts[..20].iter().all(|v| *v == Verdict::Allow));
        assert_eq!(verdicts[20], Verdict::Refuse);
        assert!(verdicts[21..].iter().all(|v| *v == Verdict::Drop));
        // 250 ms later: two tokens earned, and a new exhaustion is told again.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(b.take(t1), Verdict::Allow);
        assert_eq!(b.take(t1), Verdict::Allow);
        assert_eq!(b.take(t1), Verdict::Refuse);
        assert_eq!(b.take(t1), Verdict::Drop);
        // The half token left over counts: at 300 ms the third is there.
        assert_eq!(b.take(t0 + Duration::from_millis(300)), Verdict::Allow);
    }

    #[test]
    fn a_steady_ten_per_second_is_never_refused_and_a_quiet_bucket_fills_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = ControlBudget::default();
        for i in 0..1_000u32 {
            assert_eq!(
                b.take(t0 + CONTROL_REFILL * i),
                Verdict::Allow,
                "message {i}"
            );
        }
        let later = t0 + Duration::from_secs(3600);
        let passed = (0..100).filter(|_| b.take(later) == Verdict::Allow).count();
        assert_eq!(passed, CONTROL_BURST as usize);
    }

    #[test]
    fn a_clock_going_back_refills_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = ControlBudget::default();
        for _ in 0..CONTROL_BURST {
            b.take(t0);
        }
        assert_eq!(b.take(t0 - Duration::from_secs(5)), Verdict::Refuse);
    }
}
