//! Whether two members of a group are near each other: one small state machine per pair,
//! fed with the pair's distance each time either member's fix is accepted. Pure: time is an
//! argument.
//!
//! - Hysteresis: `near` when the distance falls below the group's radius r, `apart` only above
//!   max(1.2·r, r + 50 m), so GPS noise around one threshold cannot flap the state.
//! - Accuracy: with the combined accuracy radius u of the two fixes, a reading counts as near
//!   only when d + u < r and as apart only when d − u > r_apart; anything between holds the
//!   old state.
//! - Dwell: a new state must be read on 2 fixes, or hold over 30 s, before it is confirmed.
//! - The first state of a pair is seeded silently (no alert storm when sharing starts).
//! - One transition per change, numbered per pair (`epoch`), so an alert has a stable id.
//! - Cooldown: after a transition, the next one waits at least the cooldown; a flap inside it
//!   collapses into nothing or into one transition when it ends.
//!
//! Staleness is the caller's: a pair with a stale fix is *unknown* and is not fed at all (its
//! confirmed state is kept, so a pair that was apart, went silent and comes back near gets one
//! `near`, through the dwell, like any change).

/// The two states a pair can be confirmed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proximity {
    Near,
    Apart,
}

/// A group's proximity rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    /// r: nearer than this is near, metres.
    pub radius_m: f64,
    /// Fixes a new state must be read on before it is confirmed.
    pub dwell_fixes: u32,
    /// Or the time it must hold, ms.
    pub dwell_ms: i64,
    /// Least time between two transitions of a pair, ms.
    pub cooldown_ms: i64,
}

impl Rule {
    /// The defaults: 2 fixes or 30 s of dwell, a minute of cooldown.
    pub fn new(radius_m: f64) -> Self {
        Self {
            radius_m,
            dwell_fixes: 2,
            dwell_ms: 30_000,
            cooldown_ms: 60_000,
        }
    }

    /// Farther than this is apart, metres.
    pub fn apart_m(&self) -> f64 {
        (1.2 * self.radius_m).max(self.radius_m + 50.0)
    }

    /// What one reading says: `None` when the accuracy leaves it undecided.
    pub fn read(&self, distance_m: f64, accuracy_m: f64) -> Option<Proximity> {
        let u = if accuracy_m.is_finite() {
            accuracy_m.max(0.0)
        } else {
            return None;
        };
        if distance_m + u < self.radius_m {
            Some(Proximity::Near)
        } else if distance_m - u > self.apart_m() {
            Some(Proximity::Apart)
        } else {
            None
        }
    }
}

/// The combined accuracy radius of two fixes (each a 68 % radius): √(a² + b²).
pub fn combined_accuracy(a_m: f64, b_m: f64) -> f64 {
    (a_m * a_m + b_m * b_m).sqrt()
}

/// A confirmed change of a pair's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: Proximity,
    /// 1 for the pair's first transition, then 2, 3…: with the pair it names the event.
    pub epoch: u32,
    pub at_ms: i64,
}

/// A two-state signal made steady: the first conclusive reading seeds it silently, a different
/// reading must persist (for `dwell_fixes` readings or `dwell_ms`) before it is confirmed, and
/// confirmations are at least `cooldown_ms` apart. Shared by pairs (near/apart) and places
/// (inside/outside). 24 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Track {
    /// The confirmed state: 0 none yet, 1 on (near, inside), 2 off (apart, outside).
    state: u8,
    /// The different state being read (0 none), on how many readings so far, since when.
    pending: u8,
    fixes: u16,
    /// Transitions so far.
    epoch: u32,
    first_ms: i64,
    /// When the last transition (or the seed) happened.
    since_ms: i64,
}

/// How long a new state must persist, and how far apart transitions must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    pub dwell_fixes: u32,
    pub dwell_ms: i64,
    pub cooldown_ms: i64,
}

fn code(on: bool) -> u8 {
    if on { 1 } else { 2 }
}

impl Track {
    /// The confirmed state, if any (`true` = on).
    pub fn state(&self) -> Option<bool> {
        (self.state != 0).then_some(self.state == 1)
    }

    /// Transitions confirmed so far.
    /// The confirmed state's code while nothing is pending (a reading of it changes nothing),
    /// else 0.
    fn settled_code(&self) -> u8 {
        if self.pending == 0 { self.state } else { 0 }
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Sets the confirmed state without a transition (a seed), dropping any pending change.
    pub fn seed(&mut self, on: bool, now_ms: i64) {
        self.state = code(on);
        self.pending = 0;
        self.since_ms = now_ms;
    }

    /// Forgets a change being read (the reading stopped: a fix went stale).
    pub fn interrupt(&mut self) {
        self.pending = 0;
    }

    /// Feeds one reading (`None`: inconclusive) at `now_ms`; answers the state and epoch of the
    /// transition it confirms, if any.
    pub fn feed(
        &mut self,
        reading: Option<bool>,
        d: &Debounce,
        now_ms: i64,
    ) -> Option<(bool, u32)> {
        let reading = code(reading?);
        if self.state == 0 {
            self.state = reading;
            self.since_ms = now_ms;
            return None;
        }
        if reading == self.state {
            self.pending = 0;
            return None;
        }
        if self.pending == reading {
            // Readings at the instant of the first (both members' fixes in one tick) count once.
            if now_ms != self.first_ms {
                self.fixes = self.fixes.saturating_add(1);
            }
        } else {
            self.pending = reading;
            self.fixes = 1;
            self.first_ms = now_ms;
        }
        let dwelt = u32::from(self.fixes) >= d.dwell_fixes || now_ms - self.first_ms >= d.dwell_ms;
        let cooled = self.epoch == 0 || now_ms - self.since_ms >= d.cooldown_ms;
        if !(dwelt && cooled) {
            return None;
        }
        self.state = reading;
        self.pending = 0;
        self.epoch += 1;
        self.since_ms = now_ms;
        Some((reading == 1, self.epoch))
    }
}

impl Rule {
    fn debounce(&self) -> Debounce {
        Debounce {
            dwell_fixes: self.dwell_fixes,
            dwell_ms: self.dwell_ms,
            cooldown_ms: self.cooldown_ms,
        }
    }
}

/// One pair's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pair(Track);

fn proximity(near: bool) -> Proximity {
    if near {
        Proximity::Near
    } else {
        Proximity::Apart
    }
}

impl Pair {
    /// The confirmed state, if any.
    pub fn state(&self) -> Option<Proximity> {
        self.0.state().map(proximity)
    }

    /// The underlying track (to interrupt or inspect it).
    pub fn track(&mut self) -> &mut Track {
        &mut self.0
    }

    /// Feeds one reading of the pair (the distance between the two latest fixes and their
    /// combined accuracy) at `now_ms`; answers the transition it confirms, if any.
    pub fn observe(
        &mut self,
        rule: &Rule,
        distance_m: f64,
        accuracy_m: f64,
        now_ms: i64,
    ) -> Option<Transition> {
        let reading = rule
            .read(distance_m, accuracy_m)
            .map(|p| p == Proximity::Near);
        let (near, epoch) = self.0.feed(reading, &rule.debounce(), now_ms)?;
        Some(Transition {
            to: proximity(near),
            epoch,
            at_ms: now_ms,
        })
    }
}

/// The index of the pair (i, j), i ≠ j, in a triangle of pairs.
#[inline]
pub(crate) fn tri(i: usize, j: usize) -> usize {
    let (a, b) = if i < j { (i, j) } else { (j, i) };
    b * (b - 1) / 2 + a
}

/// A group's pair tracks (a triangle, `tri(i, j)` for members i ≠ j), with one byte a pair
/// that settles the common reading without touching the track: the confirmed state's code while
/// nothing is pending. A reading equal to it changes nothing in [`Track::feed`] (it would only
/// clear a pending change, and there is none), so the 24-byte track is loaded only for a pair
/// whose reading differs, or that has no state yet or a change pending. At a million users the
/// tracks are hundreds of megabytes read in no order: one cache miss a pair.
///
/// The bytes are kept twice, as a square (row i, column j and row j, column i), so that a
/// member's bytes are one run: a fix of member i reads row i, a cache line for a group of up to
/// 64 where the triangle spreads them over all of its lines (a group of 50: 20 lines). Rows are
/// `stride` bytes apart, the members rounded up to 8, so the square is laid out again only
/// when a group grows past that.
#[derive(Debug, Clone, Default)]
pub struct Pairs {
    tracks: Vec<Pair>,
    settled: Vec<u8>,
    stride: usize,
}

impl Pairs {
    /// Room for the pairs of `members` members; new pairs start unknown.
    pub fn resize_for(&mut self, members: usize) {
        let n = members * members.saturating_sub(1) / 2;
        self.tracks.resize(n, Pair::default());
        if members > self.stride {
            let stride = members.next_multiple_of(8);
            let mut settled = vec![0; stride * stride];
            for (row, old) in settled
                .chunks_exact_mut(stride)
                .zip(self.settled.chunks_exact(self.stride.max(1)))
            {
                row[..self.stride].copy_from_slice(old);
            }
            self.settled = settled;
            self.stride = stride;
        }
    }

    /// Pairs held.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Bytes held (capacities).
    pub fn bytes(&self) -> usize {
        self.tracks.capacity() * size_of::<Pair>() + self.settled.capacity()
    }

    /// Forgets every pair of member `i` (one of `members`).
    pub fn reset_member(&mut self, i: usize, members: usize) {
        for j in (0..members).filter(|&j| j != i) {
            self.tracks[tri(i, j)] = Pair::default();
            self.settled[j * self.stride + i] = 0;
        }
        self.settled[i * self.stride..][..members].fill(0);
    }

    /// The confirmed state of pair (i, j).
    pub fn state(&self, i: usize, j: usize) -> Option<Proximity> {
        self.tracks[tri(i, j)].state()
    }

    /// The state pair (i, j) is settled in: confirmed, with no change pending.
    #[inline]
    pub fn settled(&self, i: usize, j: usize) -> Option<Proximity> {
        match self.settled[i * self.stride + j] {
            0 => None,
            c => Some(proximity(c == 1)),
        }
    }

    /// Whether a byte of [`Pairs::row`] says settled apart.
    #[inline]
    pub fn apart(byte: u8) -> bool {
        byte == code(false)
    }

    /// Member `i`'s bytes, one per member up to `members`: what a fix of theirs screens the
    /// group with first (and what reading ahead asks for).
    pub fn row(&self, i: usize, members: usize) -> &[u8] {
        self.settled
            .get(i * self.stride..)
            .and_then(|row| row.get(..members))
            .unwrap_or_default()
    }

    fn settle(&mut self, i: usize, j: usize, code: u8) {
        self.settled[i * self.stride + j] = code;
        self.settled[j * self.stride + i] = code;
    }

    /// A member's readings stopped: the change being read on pair (i, j) is forgotten.
    pub fn interrupt(&mut self, i: usize, j: usize) {
        let track = &mut self.tracks[tri(i, j)].0;
        track.interrupt();
        let code = track.settled_code();
        self.settle(i, j, code);
    }

    /// Whether a reading of pair (i, j) at `distance_m` with accuracy `accuracy_m` may change
    /// it: false when the reading says nothing or what the pair is settled in, when
    /// [`Pairs::observe`] would change nothing.
    #[inline]
    pub fn may_change(
        &self,
        i: usize,
        j: usize,
        rule: &Rule,
        distance_m: f64,
        accuracy_m: f64,
    ) -> bool {
        rule.read(distance_m, accuracy_m).is_some_and(|reading| {
            self.settled[i * self.stride + j] != code(reading == Proximity::Near)
        })
    }

    /// [`Pair::observe`] on pair (i, j).
    #[inline]
    pub fn observe(
        &mut self,
        i: usize,
        j: usize,
        rule: &Rule,
        distance_m: f64,
        accuracy_m: f64,
        now_ms: i64,
    ) -> Option<Transition> {
        let near = rule.read(distance_m, accuracy_m)? == Proximity::Near;
        if self.settled[i * self.stride + j] == code(near) {
            return None;
        }
        let track = &mut self.tracks[tri(i, j)].0;
        let changed = track.feed(Some(near), &rule.debounce(), now_ms);
        let code = track.settled_code();
        self.settle(i, j, code);
        let (near, epoch) = changed?;
        Some(Transition {
            to: proximity(near),
            epoch,
            at_ms: now_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::{LatLon, distance_m};

    const R: f64 = 200.0;

    fn rule() -> Rule {
        Rule {
            radius_m: R,
            dwell_fixes: 2,
            dwell_ms: 30_000,
            cooldown_ms: 0,
        }
    }

    #[test]
    fn a_pair_is_small() {
        assert_eq!(std::mem::size_of::<Pair>(), 24);
    }

    #[test]
    fn the_apart_threshold_is_the_larger_of_the_two_margins() {
        assert_eq!(Rule::new(200.0).apart_m(), 250.0);
        assert_eq!(Rule::new(500.0).apart_m(), 600.0);
    }

    #[test]
    fn the_first_state_is_seeded_silently_and_a_change_needs_two_fixes() {
        let rule = rule();
        let mut pair = Pair::default();
        assert_eq!(pair.observe(&rule, 100.0, 0.0, 0), None);
        assert_eq!(pair.state(), Some(Proximity::Near));
        assert_eq!(pair.observe(&rule, 300.0, 0.0, 1_000), None, "one fix");
        let t = pair.observe(&rule, 310.0, 0.0, 2_000).unwrap();
        assert_eq!(
            t,
            Transition {
                to: Proximity::Apart,
                epoch: 1,
                at_ms: 2_000
            }
        );
        // Back near: one reading, then a near-again reading resets nothing already confirmed.
        assert_eq!(pair.observe(&rule, 100.0, 0.0, 3_000), None);
        assert_eq!(pair.observe(&rule, 260.0, 0.0, 4_000), None, "apart again");
        assert_eq!(
            pair.observe(&rule, 100.0, 0.0, 5_000),
            None,
            "pending restarted"
        );
        assert_eq!(pair.observe(&rule, 90.0, 0.0, 6_000).unwrap().epoch, 2);
    }

    #[test]
    fn a_single_late_fix_confirms_after_the_dwell_time() {
        let rule = Rule {
            dwell_fixes: 3,
            ..rule()
        };
        let mut pair = Pair::default();
        pair.observe(&rule, 400.0, 0.0, 0);
        assert_eq!(pair.observe(&rule, 50.0, 0.0, 1_000), None);
        assert_eq!(
            pair.observe(&rule, 50.0, 0.0, 30_999),
            None,
            "2 of 3, 29.999 s"
        );
        let t = pair.observe(&rule, 50.0, 0.0, 31_000).unwrap();
        assert_eq!(t.to, Proximity::Near);
    }

    #[test]
    fn between_the_thresholds_or_within_the_accuracy_the_old_state_holds() {
        let rule = rule();
        let mut pair = Pair::default();
        pair.observe(&rule, 100.0, 0.0, 0);
        for (i, d) in [210.0, 230.0, 249.0, 220.0].into_iter().enumerate() {
            assert_eq!(pair.observe(&rule, d, 0.0, i as i64 * 1000), None);
        }
        assert_eq!(pair.state(), Some(Proximity::Near));
        // 300 m apart but each fix is ±40 m: 300 − 56.6 < 250, undecided.
        let u = combined_accuracy(40.0, 40.0);
        assert_eq!(rule.read(300.0, u), None);
        assert_eq!(pair.observe(&rule, 300.0, u, 10_000), None);
        assert_eq!(pair.observe(&rule, 300.0, u, 11_000), None);
        assert_eq!(pair.state(), Some(Proximity::Near));
        assert_eq!(rule.read(190.0, 20.0), None, "near only when d + u < r");
        assert_eq!(rule.read(100.0, f64::NAN), None);
    }

    #[test]
    fn the_cooldown_delays_a_transition_and_a_flap_inside_it_collapses() {
        let rule = Rule {
            cooldown_ms: 60_000,
            ..rule()
        };
        let mut pair = Pair::default();
        pair.observe(&rule, 100.0, 0.0, 0);
        pair.observe(&rule, 400.0, 0.0, 1_000);
        assert_eq!(pair.observe(&rule, 400.0, 0.0, 2_000).unwrap().epoch, 1);
        // Near again 10 s later: held by the cooldown.
        assert_eq!(pair.observe(&rule, 100.0, 0.0, 12_000), None);
        assert_eq!(pair.observe(&rule, 100.0, 0.0, 13_000), None);
        // Apart again within it: nothing to say.
        assert_eq!(pair.observe(&rule, 400.0, 0.0, 20_000), None);
        // Near, and the cooldown is over: one transition.
        assert_eq!(pair.observe(&rule, 100.0, 0.0, 61_000), None);
        let t = pair.observe(&rule, 100.0, 0.0, 62_000).unwrap();
        assert_eq!((t.to, t.epoch), (Proximity::Near, 2));
    }

    #[test]
    fn the_circle_decides_not_its_bounding_box() {
        // Two people at the box's corner: 0.9·r north and 0.9·r east, 1.27·r apart. A box test
        // (Tile38's ROAM) calls them near; the circle does not.
        let rule = rule();
        let a = LatLon::new(45.0, 7.0).unwrap();
        let dlat = 0.9 * R / 111_132.0;
        let dlon = 0.9 * R / (111_412.0 * 45f64.to_radians().cos());
        let corner = LatLon::new(45.0 + dlat, 7.0 + dlon).unwrap();
        let d = distance_m(a, corner);
        assert!(d > R && d < 2f64.sqrt() * R, "{d}");
        assert_eq!(rule.read(d, 0.0), Some(Proximity::Apart));
        let mut pair = Pair::default();
        pair.observe(&rule, d, 0.0, 0);
        assert_eq!(pair.state(), Some(Proximity::Apart));
    }

    #[test]
    fn a_jittered_trace_that_crosses_once_alerts_once_each_way() {
        // Bob walks from 400 m to 0 m of Ann and back, 1 m a second, fixes every 5 s with
        // ±15 m of noise and a reported accuracy of 10 m each.
        let rule = rule();
        let mut noise = crate::noise::Noise(0x2545_f491_4f6c_dd1d);
        let mut jitter = || noise.signed(15.0);
        let u = combined_accuracy(10.0, 10.0);
        let mut pair = Pair::default();
        let mut transitions = Vec::new();
        for step in 0..=160 {
            let t = step * 5;
            let d = if t <= 400 { 400 - t } else { t - 400 } as f64;
            let d = (d + jitter()).abs();
            transitions.extend(pair.observe(&rule, d, u, t * 1000));
        }
        let to: Vec<_> = transitions.iter().map(|t| (t.to, t.epoch)).collect();
        assert_eq!(to, vec![(Proximity::Near, 1), (Proximity::Apart, 2)]);
    }

    #[test]
    fn the_settled_byte_answers_exactly_as_the_track_would() {
        // Random walks of distance, accuracy and time through both thresholds, with interrupts,
        // members forgotten and the group growing past its stride halfway: every pair of
        // `Pairs`, read from either member, must say what a lone `Pair` fed the same readings
        // says.
        let rule = Rule {
            cooldown_ms: 20_000,
            ..rule()
        };
        let mut noise = crate::noise::Noise(0x9e37_79b9_7f4a_7c15);
        let mut pairs = Pairs::default();
        let mut members = 8;
        pairs.resize_for(members);
        let mut lone = vec![Pair::default(); pairs.len()];
        let mut d = vec![230.0; pairs.len()];
        let (mut transitions, mut skipped, mut unchanged) = (0, 0, 0);
        for step in 0..40_000i64 {
            if step == 20_000 {
                members = 19;
                pairs.resize_for(members);
                lone.resize(pairs.len(), Pair::default());
                d.resize(pairs.len(), 230.0);
            }
            let i = noise.below(members);
            let j = (i + 1 + noise.below(members - 1)) % members;
            let k = tri(i, j);
            if noise.unit() < 0.02 {
                pairs.interrupt(i, j);
                lone[k].track().interrupt();
                continue;
            }
            if noise.unit() < 0.001 {
                pairs.reset_member(i, members);
                for j in (0..members).filter(|&j| j != i) {
                    lone[tri(i, j)] = Pair::default();
                }
                continue;
            }
            d[k] = (d[k] + noise.signed(40.0)).clamp(0.0, 500.0);
            let u = if noise.unit() < 0.2 {
                noise.unit() * 80.0
            } else {
                5.0
            };
            let now = step * 700 + (noise.below(3) as i64 - 1) * 700;
            let before = pairs.settled(i, j);
            // What the engine asks before it reads the other member's record: a reading that
            // may not change the pair must leave the lone pair exactly as it was.
            let may = pairs.may_change(i, j, &rule, d[k], u);
            let lone_before = lone[k];
            let got = pairs.observe(i, j, &rule, d[k], u, now);
            let want = lone[k].observe(&rule, d[k], u, now);
            assert_eq!(got, want, "step {step}, pair ({i}, {j})");
            if !may {
                assert_eq!(lone[k], lone_before, "step {step}: may_change said no");
                unchanged += 1;
            }
            assert_eq!(pairs.state(i, j), lone[k].state(), "step {step}");
            assert_eq!(pairs.state(j, i), lone[k].state(), "step {step}");
            assert_eq!(pairs.settled(i, j), pairs.settled(j, i), "step {step}");
            assert_eq!(pairs.row(i, members)[j], pairs.row(j, members)[i]);
            transitions += usize::from(got.is_some());
            skipped += usize::from(before.is_some() && pairs.settled(i, j) == before);
        }
        assert!(
            transitions > 200,
            "the walk crossed the thresholds: {transitions}"
        );
        assert!(
            skipped > 10_000,
            "most readings were settled by the byte: {skipped}"
        );
        assert!(
            unchanged > 10_000,
            "most readings changed nothing: {unchanged}"
        );
    }
}
