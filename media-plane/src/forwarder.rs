//! The per-subscriber view of one forwarded audio stream: a downstream slot.
//!
//! A subscriber offers some receiving audio m-lines; each one is a [`DownSlot`]. A slot carries one
//! publisher at a time and rewrites sequence numbers and RTP timestamps so the subscriber sees one
//! continuous stream even when the publisher behind the slot changes. Pure state, no I/O.

use str0m::media::{Mid, Pt};

/// A publisher's stream as the shard names it: participant key and its SSRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub participant: u64,
    pub ssrc: u32,
}

/// Samples in one 20 ms Opus frame at 48 kHz: the timestamp gap left when a slot switches source.
const FRAME_TICKS: u32 = 960;

/// One receiving audio m-line of a subscriber.
#[derive(Debug, Clone)]
pub struct DownSlot {
    /// The subscriber's m-line.
    pub mid: Mid,
    /// The subscriber's payload type for Opus.
    pub pt: Pt,
    source: Option<SourceKey>,
    /// `out = in + seq_delta` for the current source.
    seq_delta: i64,
    /// `out = in + ts_delta` (wrapping) for the current source.
    ts_delta: u32,
    /// Lowest outgoing sequence number the current source may use (packets from before a switch
    /// must not land on numbers the previous source used).
    seq_floor: u64,
    last_seq: Option<u64>,
    last_ts: u32,
    initial_seq: u64,
    initial_ts: u32,
}

impl DownSlot {
    /// A free slot. `initial_seq` must be below 2^15 so the stream starts with rollover counter 0
    /// and has room for reordering; `initial_ts` is any value.
    pub fn new(mid: Mid, pt: Pt, initial_seq: u16, initial_ts: u32) -> Self {
        Self {
            mid,
            pt,
            source: None,
            seq_delta: 0,
            ts_delta: 0,
            seq_floor: 0,
            last_seq: None,
            last_ts: 0,
            initial_seq: u64::from(initial_seq & 0x7fff) + 1,
            initial_ts,
        }
    }

    /// The publisher this slot carries, if any.
    pub fn source(&self) -> Option<SourceKey> {
        self.source
    }

    /// Frees the slot; the next source continues the outgoing numbering.
    pub fn release(&mut self) {
        self.source = None;
    }

    /// Points the slot at `source`, whose next packet has extended sequence `in_seq` and timestamp
    /// `in_ts`.
    pub fn assign(&mut self, source: SourceKey, in_seq: u64, in_ts: u32) {
        let (next_seq, next_ts) = match self.last_seq {
            Some(last) => (last + 1, self.last_ts.wrapping_add(FRAME_TICKS)),
            None => (self.initial_seq, self.initial_ts),
        };
        self.source = Some(source);
        self.seq_delta = next_seq as i64 - in_seq as i64;
        self.ts_delta = next_ts.wrapping_sub(in_ts);
        self.seq_floor = next_seq;
    }

    /// Outgoing (extended sequence, timestamp) for a packet of the current source, or `None` when
    /// it must be dropped (another source, or older than the switch to this source).
    pub fn rewrite(&mut self, source: SourceKey, in_seq: u64, in_ts: u32) -> Option<(u64, u32)> {
        if self.source != Some(source) {
            return None;
        }
        let out = in_seq as i64 + self.seq_delta;
        if out < self.seq_floor as i64 {
            return None;
        }
        let out = out as u64;
        let ts = in_ts.wrapping_add(self.ts_delta);
        if self.last_seq.is_none_or(|last| out > last) {
            self.last_seq = Some(out);
            self.last_ts = ts;
        }
        Some((out, ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SourceKey = SourceKey {
        participant: 1,
        ssrc: 11,
    };
    const B: SourceKey = SourceKey {
        participant: 2,
        ssrc: 22,
    };

    fn slot() -> DownSlot {
        DownSlot::new(Mid::from("0"), Pt::from(111), 99, 5_000)
    }

    #[test]
    fn a_fresh_slot_starts_at_its_initial_numbers_and_follows_the_source() {
        let mut s = slot();
        s.assign(A, 70_000, 1_000_000);
        assert_eq!(s.rewrite(A, 70_000, 1_000_000), Some((100, 5_000)));
        assert_eq!(s.rewrite(A, 70_001, 1_000_960), Some((101, 5_960)));
        // Reordered older packet keeps its place.
        assert_eq!(s.rewrite(A, 70_003, 1_002_880), Some((103, 7_880)));
        assert_eq!(s.rewrite(A, 70_002, 1_001_920), Some((102, 6_920)));
        assert_eq!(s.rewrite(B, 5, 5), None, "not the slot's source");
    }

    #[test]
    fn switching_source_continues_the_numbering_without_reuse() {
        let mut s = slot();
        s.assign(A, 10, 0);
        for i in 0..5 {
            s.rewrite(A, 10 + i, (i as u32) * 960).unwrap();
        }
        let (last_seq, last_ts) = (104, 5_000 + 4 * 960);
        s.assign(B, 40_000, u32::MAX - 100);
        assert_eq!(
            s.rewrite(B, 40_000, u32::MAX - 100),
            Some((last_seq + 1, last_ts + 960))
        );
        // B's packet from before the switch would reuse a number A used: dropped.
        assert_eq!(s.rewrite(B, 39_999, u32::MAX - 1060), None);
        // Timestamps wrap with the source.
        assert_eq!(
            s.rewrite(B, 40_001, (u32::MAX - 100).wrapping_add(960)),
            Some((last_seq + 2, last_ts + 1920))
        );
        assert_eq!(s.rewrite(A, 15, 0), None, "the old source no longer passes");
    }

    #[test]
    fn released_slot_passes_nothing() {
        let mut s = slot();
        s.assign(A, 1, 1);
        s.release();
        assert_eq!(s.source(), None);
        assert_eq!(s.rewrite(A, 2, 961), None);
    }
}
