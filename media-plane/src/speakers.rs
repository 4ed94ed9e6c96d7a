//! Active speakers of a room, from RFC 6464 audio levels; the payload is never decoded.
//!
//! Every forwarded packet's audio level (0..=127, in -dBov: 0 is the loudest, 127 silence) is
//! counted into the current bin of its publisher. Every [`SpeakerConfig::interval`] the bins rotate
//! and the ranking is recomputed over the last [`SpeakerConfig::window`] bins: a publisher speaks
//! when enough of its packets were voice (louder than the threshold, or flagged with the V bit),
//! and speakers rank by their mean linear amplitude. A change of the ranked list is reported once.
//! With the defaults (100 ms bins, 3 bins, 30 % voice) onset is seen within about 200 ms of
//! speech and is reported within the 300 ms the room control promises. Time is an argument.

use crate::participant::ParticipantKey;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How speakers are detected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakerConfig {
    /// Length of one bin.
    pub interval: Duration,
    /// Bins in the window the ranking looks at.
    pub window: usize,
    /// A packet at this level (-dBov) or louder is voice.
    pub voice_level: u8,
    /// Share of a window's packets that must be voice for the publisher to speak.
    pub min_voice_share: f32,
    /// Let the RFC 6464 V bit veto a loud level. Off by default: not every sender sets it.
    pub trust_vad: bool,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            window: 3,
            voice_level: 50,
            min_voice_share: 0.3,
            trust_vad: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bin {
    packets: u32,
    voice: u32,
    amplitude: f32,
}

#[derive(Debug)]
struct Source {
    current: Bin,
    past: VecDeque<Bin>,
    /// When its last packet was counted.
    last_seen: Instant,
}

/// One speaker of a ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speaker {
    pub participant: ParticipantKey,
    /// Mean linear amplitude over the window, 0..1 (1 = 0 dBov).
    pub level: f32,
}

/// The speaker detector of one room.
#[derive(Debug)]
pub struct SpeakerDetector {
    config: SpeakerConfig,
    sources: HashMap<ParticipantKey, Source>,
    ranking: Vec<Speaker>,
    next_tick: Option<Instant>,
}

impl SpeakerDetector {
    /// A detector with no publishers yet.
    pub fn new(config: SpeakerConfig) -> Self {
        Self {
            config,
            sources: HashMap::new(),
            ranking: Vec::new(),
            next_tick: None,
        }
    }

    /// Counts one packet of `who`: its audio level (-dBov) and voice-activity flag, if present.
    pub fn observe(
        &mut self,
        now: Instant,
        who: ParticipantKey,
        level: Option<u8>,
        vad: Option<bool>,
    ) {
        let Some(level) = level.map(|l| l.min(127)) else {
            return;
        };
        self.next_tick.get_or_insert(now + self.config.interval);
        let source = self.sources.entry(who).or_insert_with(|| Source {
            current: Bin::default(),
            past: VecDeque::new(),
            last_seen: now,
        });
        source.last_seen = now;
        let bin = &mut source.current;
        bin.packets += 1;
        let vetoed = self.config.trust_vad && vad == Some(false);
        if level <= self.config.voice_level && !vetoed {
            bin.voice += 1;
        }
        bin.amplitude += 10f32.powf(-f32::from(level) / 20.0);
    }

    /// Forgets a publisher (it left). Returns whether the ranking changed.
    pub fn remove(&mut self, who: ParticipantKey) -> bool {
        self.sources.remove(&who);
        let before = self.ranking.len();
        self.ranking.retain(|s| s.participant != who);
        before != self.ranking.len()
    }

    /// When [`SpeakerDetector::tick`] wants to run next (none while nobody publishes levels).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    /// Rotates the bins if an interval passed. Returns the new ranking when the list of speakers
    /// (or their order) changed.
    pub fn tick(&mut self, now: Instant) -> Option<&[Speaker]> {
        let due = self.next_tick?;
        if now < due {
            return None;
        }
        // Catch up whole intervals missed (a quiet core), but never loop for long.
        let missed =
            (now.duration_since(due).as_nanos() / self.config.interval.as_nanos().max(1)) as u32;
        self.next_tick = Some(due + self.config.interval * (missed + 1));
        let window = self.config.window.max(1);
        let mut speakers = Vec::new();
        self.sources.retain(|&who, src| {
            // What was counted since the last tick goes where its newest packet was: the
            // intervals missed before it and after it are empty. A tick that comes late under
            // load thus keeps a publisher that sent all along, and a long silence still empties
            // the window.
            let age = now.saturating_duration_since(src.last_seen);
            let after =
                ((age.as_nanos() / self.config.interval.as_nanos().max(1)) as u32).min(missed);
            let bins = (0..(missed - after).min(window as u32))
                .map(|_| Bin::default())
                .chain(std::iter::once(std::mem::take(&mut src.current)))
                .chain((0..after.min(window as u32)).map(|_| Bin::default()));
            for bin in bins {
                src.past.push_back(bin);
                if src.past.len() > window {
                    src.past.pop_front();
                }
            }
            let (mut packets, mut voice, mut amplitude) = (0u32, 0u32, 0f32);
            for b in &src.past {
                packets += b.packets;
                voice += b.voice;
                amplitude += b.amplitude;
            }
            if packets > 0 && voice as f32 >= self.config.min_voice_share * packets as f32 {
                speakers.push(Speaker {
                    participant: who,
                    level: amplitude / packets as f32,
                });
            }
            // A publisher silent for a whole window is forgotten until it sends again.
            packets > 0
        });
        speakers.sort_by(|a, b| {
            b.level
                .total_cmp(&a.level)
                .then(a.participant.cmp(&b.participant))
        });
        if self.sources.is_empty() {
            self.next_tick = None;
        }
        let same = speakers.len() == self.ranking.len()
            && speakers
                .iter()
                .zip(&self.ranking)
                .all(|(a, b)| a.participant == b.participant);
        self.ranking = speakers;
        (!same).then_some(&self.ranking[..])
    }

    /// The current speakers, loudest first.
    pub fn ranking(&self) -> &[Speaker] {
        &self.ranking
    }

    /// Whether `who` is among the `n` loudest speakers other than `listener`.
    pub fn in_top(&self, who: ParticipantKey, listener: ParticipantKey, n: usize) -> bool {
        self.ranking
            .iter()
            .filter(|s| s.participant != listener)
            .take(n)
            .any(|s| s.participant == who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_tick_keeps_the_publishers_it_counted() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let start = Instant::now();
        let mut now = start;
        // 200 ms of voice, ticking on time: a speaker.
        for i in 0..10 {
            now = start + FRAME * i;
            d.observe(now, 1, Some(20), None);
            d.tick(now);
        }
        assert_eq!(d.ranking().len(), 1);
        // The core is busy for half a second: packets keep coming, the tick does not.
        for i in 10..35 {
            now = start + FRAME * i;
            d.observe(now, 1, Some(20), None);
        }
        d.tick(now);
        assert_eq!(
            d.ranking().first().map(|s| s.participant),
            Some(1),
            "a late tick must not drop a publisher that sent all along"
        );
    }

    const FRAME: Duration = Duration::from_millis(20);

    /// Feeds `ms` of 20 ms packets from each (participant, level) and ticks as time passes;
    /// returns every ranking change with its time since `start`.
    fn feed(
        d: &mut SpeakerDetector,
        now: &mut Instant,
        start: Instant,
        ms: u64,
        talkers: &[(ParticipantKey, u8)],
    ) -> Vec<(Duration, Vec<ParticipantKey>)> {
        let mut changes = Vec::new();
        for _ in 0..ms / 20 {
            *now += FRAME;
            for &(who, level) in talkers {
                d.observe(*now, who, Some(level), None);
            }
            if let Some(r) = d.tick(*now) {
                changes.push((*now - start, r.iter().map(|s| s.participant).collect()));
            }
        }
        changes
    }

    #[test]
    fn onset_is_reported_within_300_ms_and_ranks_by_loudness() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let start = Instant::now();
        let mut now = start;
        // Three publishers sending silence (level 127) for a second: nobody speaks.
        let quiet = feed(
            &mut d,
            &mut now,
            start,
            1000,
            &[(1, 127), (2, 127), (3, 127)],
        );
        assert!(quiet.is_empty(), "{quiet:?}");
        // 2 starts talking at -20 dBov, 3 at -10 dBov.
        let t0 = now - start;
        let changes = feed(&mut d, &mut now, start, 600, &[(1, 127), (2, 20), (3, 10)]);
        let (at, first) = &changes[0];
        assert!(
            *at - t0 <= Duration::from_millis(300),
            "onset after {:?}",
            *at - t0
        );
        assert!(!first.contains(&1));
        assert_eq!(
            d.ranking()
                .iter()
                .map(|s| s.participant)
                .collect::<Vec<_>>(),
            vec![3, 2]
        );
        assert!(d.in_top(2, 3, 1), "for 3, the loudest other is 2");
        assert!(!d.in_top(2, 1, 1), "for 1, the loudest other is 3");
    }

    #[test]
    fn a_speaker_who_stops_drops_out_and_a_leaver_is_forgotten() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let start = Instant::now();
        let mut now = start;
        feed(&mut d, &mut now, start, 500, &[(1, 15), (2, 30)]);
        assert_eq!(d.ranking().len(), 2);
        let changes = feed(&mut d, &mut now, start, 500, &[(1, 127), (2, 30)]);
        assert_eq!(changes.last().unwrap().1, vec![2]);
        assert!(d.remove(2));
        assert!(d.ranking().is_empty());
        assert!(!d.remove(2));
    }

    #[test]
    fn a_trusted_v_bit_saying_no_voice_wins_over_a_loud_level_and_no_level_means_no_data() {
        let mut d = SpeakerDetector::new(SpeakerConfig {
            trust_vad: true,
            ..SpeakerConfig::default()
        });
        let mut now = Instant::now();
        for _ in 0..30 {
            now += FRAME;
            d.observe(now, 1, Some(5), Some(false));
            d.observe(now, 2, None, Some(true));
            d.tick(now);
        }
        assert!(d.ranking().is_empty());
        assert!(d.poll_timeout().is_some(), "1 still sends levels");
    }

    #[test]
    fn a_long_gap_does_not_loop_and_empties_the_window() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let start = Instant::now();
        let mut now = start;
        feed(&mut d, &mut now, start, 400, &[(1, 10)]);
        assert_eq!(d.ranking().len(), 1);
        now += Duration::from_secs(3600);
        assert_eq!(d.tick(now).map(<[Speaker]>::len), Some(0));
        assert_eq!(d.poll_timeout(), None, "nobody publishes: no timer");
    }
}
