//! The music of one room: a queue of encoded tracks and the clock that paces their frames.
//!
//! Sans-IO: every call takes `now`; the shard asks for due frames ([`Player::poll_frame`]) and
//! sends each to every listener at once, so all of them hear frame `k` at the same moment.
//! Frame `k` of a stretch of playing is due at `start + k · 20 ms`: the schedule is anchored, so
//! the music never drifts from the wall clock however late the core gets to it (frames more than
//! [`LATE_SKIP`] behind are skipped rather than sent in a burst). RTP timestamps come from one
//! room clock (48 kHz ticks since the room began), so a pause or a seek shows as a gap, the way
//! DTX does, and the sender reports map every listener's stream to the same wall time.

use super::transcode::{Encoded, FRAME_MS};
use protocol::UserId;
use protocol::music::{MAX_QUEUE, MusicAction, MusicState, MusicTrack};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A change starts sounding this long after it is made: time for the command to reach every
/// listener's client before the first frame does (clients that schedule by `at_ms`).
pub const LEAD: Duration = Duration::from_millis(100);
/// Frames due longer ago than this are skipped (a stalled core catches up in time, not by a
/// burst that every jitter buffer would have to swallow).
pub const LATE_SKIP: Duration = Duration::from_millis(100);
const FRAME: Duration = Duration::from_millis(FRAME_MS);

/// A track in a queue.
#[derive(Debug, Clone)]
pub struct Track {
    pub info: MusicTrack,
    pub audio: Arc<Encoded>,
}

/// One frame to send to every listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The room's music sequence number (extended; each listener's slot renumbers it).
    pub seq: u64,
    /// RTP timestamp on the room clock.
    pub ts: u32,
    pub payload: Arc<[u8]>,
    /// First frame after a start, a seek or a skip (RTP marker: a talkspurt begins).
    pub marker: bool,
    /// The instant the frame is for (the RTP timestamp's wall time).
    pub due: Instant,
}

/// Why an action could not be carried out. The message is safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MusicError {
    #[error("nothing is queued")]
    NothingQueued,
    #[error("the queue is full ({MAX_QUEUE} tracks)")]
    QueueFull,
    #[error("files are queued through the REST API, not the data channel")]
    QueueHere,
}

/// The music of one room.
#[derive(Debug)]
pub struct Player {
    /// The current track first.
    queue: VecDeque<Track>,
    playing: bool,
    /// Next frame of the current track to send.
    next: usize,
    /// When frame `next` is due (meaningful while playing).
    due: Instant,
    epoch: Instant,
    ts_base: u32,
    seq: u64,
    /// The next frame starts a stretch of playing.
    restart: bool,
    changed: bool,
    /// Who changed the music last: automatic changes (a track ends) are reported as theirs.
    by: Option<UserId>,
    skipped: u64,
}

impl Player {
    /// A silent player; `ts_base` is the room clock's random starting timestamp.
    pub fn new(now: Instant, ts_base: u32) -> Self {
        Self {
            queue: VecDeque::new(),
            playing: false,
            next: 0,
            due: now,
            epoch: now,
            ts_base,
            seq: 0,
            restart: true,
            changed: false,
            by: None,
            skipped: 0,
        }
    }

    /// Carries out `action` for `by`. Queueing needs the track itself: [`Player::queue`].
    pub fn apply(
        &mut self,
        now: Instant,
        by: UserId,
        action: &MusicAction,
    ) -> Result<(), MusicError> {
        match action {
            MusicAction::Queue { .. } => return Err(MusicError::QueueHere),
            MusicAction::Play {} => {
                if self.queue.is_empty() {
                    return Err(MusicError::NothingQueued);
                }
                if !self.playing {
                    self.playing = true;
                    self.start(now);
                }
            }
            MusicAction::Pause {} => {
                if self.playing {
                    self.playing = false;
                    // Frames of the lead not sent yet stay unsent: `next` is the resume point.
                }
            }
            MusicAction::Seek { position_ms } => {
                let len = self
                    .queue
                    .front()
                    .ok_or(MusicError::NothingQueued)?
                    .audio
                    .frames
                    .len();
                let frame = (*position_ms / FRAME_MS) as usize;
                if frame >= len {
                    self.advance();
                } else {
                    self.next = frame;
                }
                if self.playing {
                    self.start(now);
                }
            }
            MusicAction::Skip {} => {
                if self.queue.is_empty() {
                    return Err(MusicError::NothingQueued);
                }
                self.advance();
                if self.playing {
                    self.start(now);
                }
            }
            MusicAction::Clear {} => self.queue.truncate(1),
        }
        self.by = Some(by);
        self.changed = true;
        Ok(())
    }

    /// Adds `track` at the end of the queue.
    pub fn queue(&mut self, by: UserId, track: Track) -> Result<(), MusicError> {
        if self.queue.len() >= MAX_QUEUE {
            return Err(MusicError::QueueFull);
        }
        self.queue.push_back(track);
        self.by = Some(by);
        self.changed = true;
        Ok(())
    }

    /// The next frame due at `now`, if any.
    pub fn poll_frame(&mut self, now: Instant) -> Option<Frame> {
        loop {
            if !self.playing || self.due > now {
                return None;
            }
            let track = self.queue.front()?;
            let payload = track.audio.frames.get(self.next)?.clone();
            let ended = self.next + 1 >= track.audio.frames.len();
            let due = self.due;
            self.next += 1;
            self.due += FRAME;
            let late = now.saturating_duration_since(due) > LATE_SKIP;
            let marker = !late && std::mem::take(&mut self.restart);
            if ended {
                // The next track follows seamlessly, on the same schedule.
                self.advance();
                self.restart = false;
                self.changed = true;
            }
            if late {
                self.skipped += 1;
                continue;
            }
            self.seq += 1;
            return Some(Frame {
                seq: self.seq,
                ts: self.ts_at(due),
                payload,
                marker,
                due,
            });
        }
    }

    /// When the next frame is due, if the music is playing.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.playing.then_some(self.due)
    }

    /// Whether the state changed since the last call (a command, or a track that ended).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Who changed the music last.
    pub fn changed_by(&self) -> Option<UserId> {
        self.by
    }

    /// Frames skipped because the core got to them too late.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The state, and the instant its position holds: the next frame's due time while playing
    /// (a little ahead of `now` just after a change), else `now`.
    pub fn state(&self, now: Instant) -> (MusicState, Instant) {
        let mut tracks = self.queue.iter().map(|t| t.info.clone());
        let current = tracks.next();
        let at = if self.playing { self.due } else { now };
        let state = MusicState {
            playing: self.playing,
            position_ms: if current.is_some() {
                self.next as u64 * FRAME_MS
            } else {
                0
            },
            current,
            queue: tracks.collect(),
            at_ms: None,
        };
        (state, at)
    }

    /// The next extended sequence number and the room clock at `now`: where a listener's slot
    /// picks the music up.
    pub fn clock(&self, now: Instant) -> (u64, u32) {
        (self.seq + 1, self.ts_at(now))
    }

    fn start(&mut self, now: Instant) {
        self.due = now + LEAD;
        self.restart = true;
    }

    /// Ends the current track; stops when none follows.
    fn advance(&mut self) {
        self.queue.pop_front();
        self.next = 0;
        self.restart = true;
        if self.queue.is_empty() {
            self.playing = false;
        }
    }

    fn ts_at(&self, t: Instant) -> u32 {
        let ticks = t.saturating_duration_since(self.epoch).as_micros() * 48 / 1000;
        self.ts_base.wrapping_add(ticks as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ids::AttachmentId;

    fn track(id: u128, frames: usize) -> Track {
        Track {
            info: MusicTrack {
                id: AttachmentId::from_uuid(uuid::Uuid::from_u128(id)),
                name: format!("t{id}.wav"),
                duration_ms: frames as u64 * FRAME_MS,
            },
            audio: Arc::new(Encoded {
                // Frame k of track `id` says so in its bytes.
                frames: (0..frames)
                    .map(|k| Arc::from(vec![id as u8, k as u8].as_slice()))
                    .collect(),
            }),
        }
    }

    const ANN: UserId = UserId(uuid::Uuid::from_u128(77));

    /// Every frame due up to `until`, stepping the clock by 1 ms.
    fn run(p: &mut Player, from: Instant, until: Instant) -> Vec<(Instant, Frame)> {
        let mut out = Vec::new();
        let mut now = from;
        while now <= until {
            while let Some(f) = p.poll_frame(now) {
                out.push((now, f));
            }
            now += Duration::from_millis(1);
        }
        out
    }

    #[test]
    fn frames_go_out_every_20_ms_after_the_lead_with_timestamps_960_apart() {
        let t0 = Instant::now();
        let mut p = Player::new(t0, 1_000);
        assert_eq!(
            p.apply(t0, ANN, &MusicAction::Play {}),
            Err(MusicError::NothingQueued)
        );
        p.queue(ANN, track(1, 10)).unwrap();
        assert!(p.take_changed());
        p.apply(t0, ANN, &MusicAction::Play {}).unwrap();
        assert_eq!(p.poll_timeout(), Some(t0 + LEAD));
        let frames = run(&mut p, t0, t0 + Duration::from_secs(1));
        assert_eq!(frames.len(), 10, "the whole track, once");
        for (k, (sent, f)) in frames.iter().enumerate() {
            let due = t0 + LEAD + FRAME * k as u32;
            assert_eq!(f.due, due);
            assert_eq!(*sent, due, "sent the moment it is due");
            assert_eq!(&f.payload[..], &[1, k as u8]);
            assert_eq!(f.seq, k as u64 + 1);
            assert_eq!(f.marker, k == 0, "only the first frame starts a talkspurt");
        }
        let ts0 = frames[0].1.ts;
        assert_eq!(ts0, 1_000 + 4_800, "100 ms of the room clock before it");
        for w in frames.windows(2) {
            assert_eq!(w[1].1.ts.wrapping_sub(w[0].1.ts), 960);
        }
        // The track ended: nothing plays, and that is a change to report.
        assert!(p.take_changed());
        assert_eq!(p.poll_timeout(), None);
        let (state, _) = p.state(t0 + Duration::from_secs(1));
        assert!(!state.playing && state.current.is_none() && state.queue.is_empty());
    }

    #[test]
    fn pause_holds_the_position_and_play_resumes_there_on_the_room_clock() {
        let t0 = Instant::now();
        let mut p = Player::new(t0, 0);
        p.queue(ANN, track(1, 100)).unwrap();
        p.apply(t0, ANN, &MusicAction::Play {}).unwrap();
        let first = run(&mut p, t0, t0 + Duration::from_millis(199));
        assert_eq!(
            first.len(),
            5,
            "100 ms lead, then frames at 100, 120, 140, 160, 180 ms"
        );
        let paused_at = t0 + Duration::from_millis(200);
        p.apply(paused_at, ANN, &MusicAction::Pause {}).unwrap();
        let (state, at) = p.state(paused_at);
        assert!(!state.playing);
        assert_eq!(state.position_ms, 100, "five frames were played");
        assert_eq!(at, paused_at);
        assert!(run(&mut p, paused_at, paused_at + Duration::from_secs(2)).is_empty());
        let resume = t0 + Duration::from_millis(3_000);
        p.apply(resume, ANN, &MusicAction::Play {}).unwrap();
        let (state, at) = p.state(resume);
        assert!(state.playing);
        assert_eq!((state.position_ms, at), (100, resume + LEAD));
        let after = run(&mut p, resume, resume + Duration::from_millis(150));
        assert_eq!(
            &after[0].1.payload[..],
            &[1, 5],
            "it goes on where it stopped"
        );
        assert!(after[0].1.marker);
        // The gap shows on the room clock: 2,900 ms between frame 4 and frame 5.
        let gap = after[0].1.ts.wrapping_sub(first[4].1.ts);
        assert_eq!(gap, (3_100 - 180) * 48);
    }

    #[test]
    fn seek_skip_and_clear_move_through_the_queue() {
        let t0 = Instant::now();
        let mut p = Player::new(t0, 0);
        for id in 1..=3 {
            p.queue(ANN, track(id, 50)).unwrap();
        }
        p.apply(t0, ANN, &MusicAction::Seek { position_ms: 400 })
            .unwrap();
        p.apply(t0, ANN, &MusicAction::Play {}).unwrap();
        let f = run(&mut p, t0, t0 + LEAD);
        assert_eq!(&f[0].1.payload[..], &[1, 20], "frame 20 is at 400 ms");
        let t1 = t0 + Duration::from_millis(500);
        p.apply(t1, ANN, &MusicAction::Skip {}).unwrap();
        let f = run(&mut p, t1, t1 + LEAD);
        assert_eq!(
            &f[0].1.payload[..],
            &[2, 0],
            "the next track from its start"
        );
        assert!(f[0].1.marker);
        // A seek past the end ends the track.
        let t2 = t1 + Duration::from_millis(500);
        p.apply(
            t2,
            ANN,
            &MusicAction::Seek {
                position_ms: 60_000,
            },
        )
        .unwrap();
        let (state, _) = p.state(t2);
        assert_eq!(state.current.map(|t| t.name), Some("t3.wav".into()));
        p.queue(ANN, track(4, 5)).unwrap();
        p.apply(t2, ANN, &MusicAction::Clear {}).unwrap();
        let (state, _) = p.state(t2);
        assert!(state.queue.is_empty(), "clear keeps only the current track");
        p.apply(t2, ANN, &MusicAction::Skip {}).unwrap();
        assert_eq!(
            p.poll_timeout(),
            None,
            "skipping the last track stops the music"
        );
        assert_eq!(
            p.apply(t2, ANN, &MusicAction::Skip {}),
            Err(MusicError::NothingQueued)
        );
    }

    #[test]
    fn a_track_ending_hands_over_to_the_next_without_a_gap() {
        let t0 = Instant::now();
        let mut p = Player::new(t0, 0);
        p.queue(ANN, track(1, 3)).unwrap();
        p.queue(ANN, track(2, 3)).unwrap();
        p.apply(t0, ANN, &MusicAction::Play {}).unwrap();
        p.take_changed();
        let f = run(&mut p, t0, t0 + Duration::from_secs(1));
        let ids: Vec<u8> = f.iter().map(|(_, f)| f.payload[0]).collect();
        assert_eq!(ids, [1, 1, 1, 2, 2, 2]);
        let markers: Vec<bool> = f.iter().map(|(_, f)| f.marker).collect();
        assert_eq!(markers, [true, false, false, false, false, false]);
        for w in f.windows(2) {
            assert_eq!(w[1].1.due - w[0].1.due, FRAME, "no gap between the tracks");
            assert_eq!(w[1].1.seq, w[0].1.seq + 1);
        }
        assert!(p.take_changed());
        assert_eq!(p.changed_by(), Some(ANN));
    }

    #[test]
    fn a_stalled_core_skips_what_is_too_late_and_keeps_the_schedule() {
        let t0 = Instant::now();
        let mut p = Player::new(t0, 0);
        p.queue(ANN, track(1, 100)).unwrap();
        p.apply(t0, ANN, &MusicAction::Play {}).unwrap();
        // Nobody polls for 500 ms after the start.
        let late = t0 + LEAD + Duration::from_millis(500);
        let mut got = Vec::new();
        while let Some(f) = p.poll_frame(late) {
            got.push(f);
        }
        assert_eq!(p.skipped(), 20, "frames more than 100 ms late are dropped");
        assert_eq!(got.len(), 6, "the last 100 ms and the one due now go out");
        assert!(got.iter().all(|f| late - f.due <= LATE_SKIP));
        assert_eq!(p.poll_timeout(), Some(t0 + LEAD + FRAME * 26));
        assert_eq!(p.queue(ANN, track(9, 1)), Ok(()));
        for _ in 0..MAX_QUEUE {
            let _ = p.queue(ANN, track(9, 1));
        }
        assert_eq!(p.queue(ANN, track(9, 1)), Err(MusicError::QueueFull));
    }
}
