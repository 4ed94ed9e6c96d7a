//! Loss accounting, pure state: packets a publisher sent that never reached us, and the NACKs and
//! retransmissions of a subscriber's stream from str0m's cumulative stats.

/// Packets an incoming stream is allowed to run ahead of a missing one before it counts as lost:
/// 64 packets of 20 ms audio, 1.28 s, long enough for a retransmission to fill the gap.
pub(crate) const LOSS_WINDOW: u64 = 64;

/// A jump further ahead than this is a restart of the numbering, not loss (10 s of 20 ms audio).
const MAX_JUMP: u64 = 500;

/// Counts the packets of one incoming stream that never arrived, from the extended sequence
/// numbers that did. A number is lost once the stream is [`LOSS_WINDOW`] packets past it without
/// it; a packet arriving late within the window (reordered, or retransmitted) is not lost. Numbers
/// before the first packet seen are not counted.
#[derive(Debug, Clone, Default)]
pub(crate) struct LossCounter {
    /// Highest sequence number seen.
    max: Option<u64>,
    /// Bit `i` set: `max - i` arrived (or came before the first packet).
    seen: u64,
}

impl LossCounter {
    /// Notes the arrival of extended sequence number `seq`. Returns how many packets became lost.
    pub fn observe(&mut self, seq: u64) -> u64 {
        let Some(max) = self.max else {
            self.max = Some(seq);
            self.seen = u64::MAX;
            return 0;
        };
        if seq <= max {
            let back = max - seq;
            if back < LOSS_WINDOW {
                self.seen |= 1 << back;
            }
            return 0;
        }
        let ahead = seq - max;
        self.max = Some(seq);
        let lost = if ahead > MAX_JUMP {
            // The gaps still in the window are lost; the numbers jumped over are not.
            u64::from(self.seen.count_zeros())
        } else if ahead >= LOSS_WINDOW {
            // Everything in the window leaves it, and the numbers jumped over never entered.
            u64::from(self.seen.count_zeros()) + (ahead - LOSS_WINDOW)
        } else {
            let leaving = self.seen >> (LOSS_WINDOW - ahead);
            ahead - u64::from(leaving.count_ones())
        };
        self.seen = if ahead > MAX_JUMP {
            u64::MAX
        } else if ahead >= LOSS_WINDOW {
            1
        } else {
            (self.seen << ahead) | 1
        };
        lost
    }
}

/// What str0m's cumulative stats of one sending stream (a subscriber's slot) already added to the
/// shard's counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EgressCounts {
    /// Packets we wrote to the stream.
    pub written: u64,
    nacks: u64,
    retransmitted: u64,
}

impl EgressCounts {
    /// Folds in a stats report of the stream (`nacks` received and `packets` sent so far,
    /// retransmissions included) and returns the (NACKs, retransmissions) new since the last one.
    ///
    /// str0m does not report retransmissions apart: they are the packets sent beyond those we
    /// wrote. A packet written but not yet sent makes that a little low for one report; the next
    /// one catches up, and the counts never go down.
    pub fn report(&mut self, nacks: u64, packets: u64) -> (u64, u64) {
        let new_nacks = nacks.saturating_sub(self.nacks);
        self.nacks = self.nacks.max(nacks);
        let retransmitted = packets.saturating_sub(self.written);
        let new_retransmitted = retransmitted.saturating_sub(self.retransmitted);
        self.retransmitted = self.retransmitted.max(retransmitted);
        (new_nacks, new_retransmitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(c: &mut LossCounter, seqs: impl IntoIterator<Item = u64>) -> u64 {
        seqs.into_iter().map(|s| c.observe(s)).sum()
    }

    #[test]
    fn a_gap_is_lost_once_the_stream_is_a_window_past_it() {
        let mut c = LossCounter::default();
        let early = feed(&mut c, (1000..1010).chain(1012..1020));
        assert_eq!(early, 0, "1010 and 1011 may still come");
        assert_eq!(feed(&mut c, 1020..1010 + LOSS_WINDOW), 0);
        assert_eq!(c.observe(1010 + LOSS_WINDOW), 1, "1010 left the window");
        assert_eq!(c.observe(1011 + LOSS_WINDOW), 1);
        assert_eq!(feed(&mut c, 1012 + LOSS_WINDOW..5000), 0);
    }

    #[test]
    fn late_and_duplicate_packets_are_not_lost_and_numbers_before_the_first_never_count() {
        let mut c = LossCounter::default();
        let mixed = [
            500, 502, 501, 499, 503, 503, 510, 504, 505, 506, 507, 508, 509,
        ];
        let lost = feed(&mut c, mixed) + feed(&mut c, 511..1000);
        assert_eq!(
            lost, 0,
            "499 came before the first packet; 501 and 504.. came late"
        );
        // Every 10th packet missing over 1000 packets.
        let lost = feed(&mut c, (1000..2000).filter(|s| s % 10 != 0)) + feed(&mut c, 2000..2100);
        assert_eq!(lost, 100);
    }

    #[test]
    fn a_jump_past_the_window_counts_the_numbers_jumped_over_and_a_restart_counts_nothing() {
        let mut c = LossCounter::default();
        assert_eq!(feed(&mut c, 0..100), 0);
        assert_eq!(c.observe(200), 37, "100..=136 can no longer come");
        assert_eq!(
            c.observe(201 + MAX_JUMP),
            63,
            "a restart: the gaps in the window are lost, the numbers jumped over are not"
        );
        assert_eq!(feed(&mut c, 202 + MAX_JUMP..1000), 0);
    }

    #[test]
    fn egress_counts_report_only_what_is_new_and_never_go_down() {
        let mut e = EgressCounts {
            written: 100,
            ..EgressCounts::default()
        };
        assert_eq!(e.report(0, 100), (0, 0));
        e.written = 150;
        // 10 NACKs answered with 8 retransmissions while 2 written packets wait to be sent:
        // 6 counted, and the other 2 once those are sent.
        assert_eq!(e.report(10, 156), (10, 6));
        assert_eq!(e.report(10, 158), (0, 2));
        e.written = 170;
        assert_eq!(e.report(12, 181), (2, 3));
        assert_eq!(e.report(12, 170), (0, 0), "never negative");
    }
}
