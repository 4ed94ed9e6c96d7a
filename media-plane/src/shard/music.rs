//! The music of music rooms: members' commands (data channel and, relayed by the control plane,
//! the REST API), and the frames each room's [`Player`] makes due, sent to every listener.
//!
//! Every listener of a room gets frame `k` from the same timeout, so they hear it together; each
//! listener's music slot (its first receiving m-line) renumbers the room's sequence and keeps
//! the room clock's timestamps, and the frame's due time is the RTP write's wall clock, so the
//! sender reports of all listeners map the music to the same wall time.

use super::{Shard, ShardEvent};
use crate::forwarder::SourceKey;
use crate::music::{MusicError, Player, Track};
use crate::participant::ParticipantKey;
use protocol::music::{MusicAction, MusicState};
use protocol::room::{ErrorCode, ServerMessage};
use protocol::{SessionId, UserId};
use std::time::Instant;
use str0m::rtp::RtpWrite;

/// The music as a source of slots: no participant has key 0.
pub const MUSIC_SOURCE: SourceKey = SourceKey {
    participant: 0,
    ssrc: 0,
};

/// Why a music command was not carried out. The messages are safe to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MusicRefusal {
    #[error("nobody is in the session on this node")]
    NoRoom,
    #[error("the session is not a music session")]
    NotMusic,
    #[error("an end-to-end encrypted room cannot carry the server's music")]
    Encrypted,
    #[error(transparent)]
    Player(#[from] MusicError),
}

impl Shard {
    /// Carries out a music action for `user` (relayed from the REST API). Answers the new state.
    pub fn music(
        &mut self,
        now: Instant,
        session: SessionId,
        user: UserId,
        action: &MusicAction,
    ) -> Result<MusicState, MusicRefusal> {
        self.last_now = now;
        self.player(session)?.apply(now, user, action)?;
        Ok(self.music_changed(now, session, user, None))
    }

    /// Adds a track to the end of a room's queue for `user`. Answers the new state.
    pub fn queue_track(
        &mut self,
        now: Instant,
        session: SessionId,
        user: UserId,
        track: Track,
    ) -> Result<MusicState, MusicRefusal> {
        self.last_now = now;
        self.player(session)?.queue(user, track)?;
        Ok(self.music_changed(now, session, user, None))
    }

    /// A music action from a participant's data channel.
    pub(super) fn music_from(&mut self, now: Instant, from: ParticipantKey, action: MusicAction) {
        let Some(p) = self.participants.get(&from) else {
            return;
        };
        let (session, user, id) = (p.session, p.user, p.id);
        if !p.grants.music_ctl {
            self.refuse(
                from,
                ErrorCode::Forbidden,
                "your join token does not let you control the music".into(),
            );
            return;
        }
        let done = self
            .player(session)
            .and_then(|player| Ok(player.apply(now, user, &action)?));
        match done {
            Ok(()) => {
                self.music_changed(now, session, user, Some(id));
            }
            Err(MusicRefusal::Player(MusicError::QueueHere)) => self.refuse(
                from,
                ErrorCode::Forbidden,
                MusicError::QueueHere.to_string(),
            ),
            Err(e) => self.refuse(from, ErrorCode::Conflict, e.to_string()),
        }
    }

    fn player(&mut self, session: SessionId) -> Result<&mut Player, MusicRefusal> {
        let room = self.rooms.get_mut(&session).ok_or(MusicRefusal::NoRoom)?;
        if room.e2ee {
            return Err(MusicRefusal::Encrypted);
        }
        room.music.as_mut().ok_or(MusicRefusal::NotMusic)
    }

    /// Tells the node and the room about the music's new state; answers it.
    fn music_changed(
        &mut self,
        now: Instant,
        session: SessionId,
        user: UserId,
        participant: Option<protocol::ParticipantId>,
    ) -> MusicState {
        self.refresh_music_due();
        let Some(player) = self.rooms.get_mut(&session).and_then(|r| r.music.as_mut()) else {
            return MusicState::default();
        };
        player.take_changed();
        let (state, at) = player.state(now);
        self.broadcast_except(
            session,
            ParticipantKey::MAX,
            &ServerMessage::Music(state.clone()),
        );
        self.events.push_back(ShardEvent::Music {
            session,
            user,
            participant,
            state: state.clone(),
            at,
        });
        state
    }

    /// Sends a participant whose control channel just opened the room's music, if it has some.
    pub(super) fn send_music(&mut self, now: Instant, to: ParticipantKey) {
        let Some(session) = self.participants.get(&to).map(|p| p.session) else {
            return;
        };
        let Some(player) = self.rooms.get(&session).and_then(|r| r.music.as_ref()) else {
            return;
        };
        let (state, _) = player.state(now);
        if state.current.is_some() {
            self.send(to, &ServerMessage::Music(state));
        }
    }

    /// Sends every frame due at `now` to the listeners of its room.
    pub(super) fn play_music(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .rooms
            .iter()
            .filter(|(_, r)| {
                r.music
                    .as_ref()
                    .and_then(Player::poll_timeout)
                    .is_some_and(|t| t <= now)
            })
            .map(|(&s, _)| s)
            .collect();
        let mut written = std::mem::take(&mut self.fanout);
        written.clear();
        let mut ended = Vec::new();
        for session in due {
            let Some(room) = self.rooms.get_mut(&session) else {
                continue;
            };
            let Some(player) = room.music.as_mut() else {
                continue;
            };
            let skipped_before = player.skipped();
            while let Some(frame) = player.poll_frame(now) {
                for &to in &room.members {
                    let Some(sub) = self.participants.get_mut(&to) else {
                        continue;
                    };
                    if !sub.connected || sub.leaving.is_some() || sub.speaker_muted {
                        continue;
                    }
                    let Some(i) = sub.music_slot else {
                        continue;
                    };
                    let slot = &mut sub.slots[i];
                    if slot.source() != Some(MUSIC_SOURCE) {
                        slot.assign(MUSIC_SOURCE, frame.seq, frame.ts);
                    }
                    let Some((seq, ts)) = slot.rewrite(MUSIC_SOURCE, frame.seq, frame.ts) else {
                        continue;
                    };
                    let (mid, pt) = (slot.mid, slot.pt);
                    let mut api = sub.rtc.direct_api();
                    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                        continue;
                    };
                    tx.write_rtp(
                        RtpWrite::new(pt, seq.into(), ts, frame.due, frame.payload.clone())
                            .nackable(true)
                            .marker(frame.marker),
                    );
                    self.stats.music_packets_out += 1;
                    if !written.contains(&to) {
                        written.push(to);
                    }
                }
            }
            self.stats.music_frames_skipped += player.skipped() - skipped_before;
            // A track ended: the next plays, or the music stopped. Reported as the last
            // changer's (a player plays only after someone's command).
            if player.take_changed()
                && let Some(user) = player.changed_by()
            {
                ended.push((session, user));
            }
        }
        for (session, user) in ended {
            self.music_changed(now, session, user, None);
        }
        self.release_written(now, &written);
        self.fanout = written;
        self.refresh_music_due();
    }

    /// Recomputes the earliest frame due in any room (after anything that moves one).
    pub(super) fn refresh_music_due(&mut self) {
        self.music_due = self
            .rooms
            .values()
            .filter_map(|r| r.music.as_ref().and_then(Player::poll_timeout))
            .min();
    }
}
