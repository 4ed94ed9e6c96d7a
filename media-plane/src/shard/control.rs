//! Room control on the data channel labelled `convoy-control`: requests from clients (mute, raise
//! hand, and for admins mute others, allow to speak, remove) and the room's news sent back to them
//! (participants joining, leaving and changing, active speakers).
//!
//! A malformed or forbidden request gets an `error` message on the same channel and changes
//! nothing; it never affects the call.

use super::ratelimit::{CONTROL_BURST, Verdict};
use super::{Shard, ShardEvent};
use crate::participant::{LeaveReason, MuteChange, Participant, ParticipantKey};
use protocol::SessionId;
use protocol::api::Moderation;
use protocol::room::{ClientMessage, ErrorCode, ParticipantInfo, ServerMessage, SpeakerInfo};
use std::time::Instant;

pub(super) fn info(key: ParticipantKey, p: &Participant) -> ParticipantInfo {
    ParticipantInfo {
        participant: key,
        user_id: p.user,
        microphone_muted: p.mic_muted,
        speaker_muted: p.speaker_muted,
        hand_raised: p.hand_raised,
        can_speak: p.grants.publish && p.can_speak,
        admin: p.grants.admin,
    }
}

impl Shard {
    /// Handles control channel opens and messages queued while draining.
    pub(super) fn process_control(&mut self, now: Instant) {
        while let Some(key) = self.control_opened.pop_front() {
            let Some(p) = self.participants.get(&key) else {
                continue;
            };
            let session = p.session;
            let me = info(key, p);
            self.send(key, &ServerMessage::Welcome { participant: key });
            self.send_participants(key);
            self.send_music(now, key);
            self.broadcast_except(
                session,
                key,
                &ServerMessage::ParticipantJoined { participant: me },
            );
        }
        while let Some((from, bytes)) = self.control_in.pop_front() {
            let Some(p) = self.participants.get_mut(&from) else {
                continue;
            };
            match p.control_budget.take(now) {
                Verdict::Allow => {}
                Verdict::Refuse => {
                    self.stats.control_rate_limited += 1;
                    self.refuse(
                        from,
                        ErrorCode::RateLimited,
                        format!(
                            "more than {CONTROL_BURST} control messages at once: dropped until \
                             the budget refills"
                        ),
                    );
                    continue;
                }
                Verdict::Drop => {
                    self.stats.control_rate_limited += 1;
                    continue;
                }
            }
            match ClientMessage::decode(&bytes) {
                Ok(msg) => self.handle_request(now, from, msg),
                Err(e) => self.refuse(from, ErrorCode::Malformed, e.to_string()),
            }
        }
    }

    fn handle_request(&mut self, now: Instant, from: ParticipantKey, msg: ClientMessage) {
        let Some(p) = self.participants.get(&from) else {
            return;
        };
        let (session, admin) = (p.session, p.grants.admin);
        match msg {
            ClientMessage::Mute {
                microphone,
                speaker,
            } => {
                self.set_mute(
                    from,
                    MuteChange {
                        microphone,
                        speaker,
                    },
                );
            }
            ClientMessage::RaiseHand { raised } => {
                if let Some(p) = self.participants.get_mut(&from)
                    && p.hand_raised != raised
                {
                    p.hand_raised = raised;
                    self.announce(from);
                }
            }
            ClientMessage::ListParticipants => self.send_participants(from),
            ClientMessage::Music(action) => self.music_from(now, from, action),
            ClientMessage::MuteParticipant { .. }
            | ClientMessage::SetSpeak { .. }
            | ClientMessage::Remove { .. }
                if !admin =>
            {
                self.refuse(
                    from,
                    ErrorCode::Forbidden,
                    "only a group admin may do that".into(),
                );
            }
            ClientMessage::MuteParticipant {
                participant,
                microphone,
                speaker,
            } => {
                if self.in_room(participant, session) {
                    self.set_mute(
                        participant,
                        MuteChange {
                            microphone,
                            speaker,
                        },
                    );
                } else {
                    self.unknown(from, participant);
                }
            }
            ClientMessage::SetSpeak {
                participant,
                allowed,
            } => {
                if self.in_room(participant, session) {
                    self.set_can_speak(participant, allowed);
                } else {
                    self.unknown(from, participant);
                }
            }
            ClientMessage::Remove { participant } => {
                if self.in_room(participant, session) {
                    self.send(participant, &ServerMessage::Removed { by: Some(from) });
                    self.remove_participant(participant, LeaveReason::Removed);
                } else {
                    self.unknown(from, participant);
                }
            }
        }
    }

    fn in_room(&self, key: ParticipantKey, session: SessionId) -> bool {
        self.participants
            .get(&key)
            .is_some_and(|p| p.session == session)
    }

    /// Allows or forbids a participant to speak. Returns whether it is here.
    pub fn set_can_speak(&mut self, participant: ParticipantKey, allowed: bool) -> bool {
        let Some(p) = self.participants.get_mut(&participant) else {
            return false;
        };
        if p.can_speak != allowed {
            p.can_speak = allowed;
            if allowed {
                p.hand_raised = false;
            } else {
                let session = p.session;
                self.release_source(session, participant);
            }
            self.announce(participant);
        }
        true
    }

    /// Applies a moderation the control plane relays (REST API). Returns whether the participant
    /// was here.
    pub fn moderate(&mut self, participant: ParticipantKey, action: Moderation) -> bool {
        if !self.participants.contains_key(&participant) {
            return false;
        }
        match action {
            Moderation::Mute {
                microphone,
                speaker,
            } => self
                .set_mute(
                    participant,
                    MuteChange {
                        microphone,
                        speaker,
                    },
                )
                .is_some(),
            Moderation::Speak { allowed } => self.set_can_speak(participant, allowed),
            Moderation::Remove => {
                self.send(participant, &ServerMessage::Removed { by: None });
                self.remove_participant(participant, LeaveReason::Removed)
            }
        }
    }

    /// Removes a participant on an admin's request. Returns whether it was here.
    pub fn remove_participant(&mut self, participant: ParticipantKey, reason: LeaveReason) -> bool {
        self.remove(participant, reason)
    }

    /// Tells the room that a participant's state changed.
    pub(super) fn announce(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let session = p.session;
        let msg = ServerMessage::ParticipantUpdated {
            participant: info(key, p),
        };
        self.broadcast_except(session, ParticipantKey::MAX, &msg);
    }

    /// Tells the room about an event the shard reports.
    pub(super) fn tell_room(&mut self, event: &ShardEvent) {
        match event {
            ShardEvent::Left {
                session,
                participant,
                ..
            } => self.broadcast_except(
                *session,
                *participant,
                &ServerMessage::ParticipantLeft {
                    participant: *participant,
                },
            ),
            ShardEvent::Speakers { session, speakers } => {
                let msg = ServerMessage::Speakers {
                    speakers: speakers
                        .iter()
                        .map(|s| SpeakerInfo {
                            participant: s.participant,
                            level: s.level,
                        })
                        .collect(),
                };
                self.broadcast_except(*session, ParticipantKey::MAX, &msg);
            }
            ShardEvent::Muted { participant, .. } => self.announce(*participant),
            _ => {}
        }
    }

    fn send_participants(&mut self, to: ParticipantKey) {
        let Some(session) = self.participants.get(&to).map(|p| p.session) else {
            return;
        };
        let participants = self
            .rooms
            .get(&session)
            .map(|room| {
                room.members
                    .iter()
                    .filter_map(|k| self.participants.get(k).map(|p| info(*k, p)))
                    .collect()
            })
            .unwrap_or_default();
        self.send(to, &ServerMessage::Participants { participants });
    }

    fn unknown(&mut self, to: ParticipantKey, who: ParticipantKey) {
        self.refuse(
            to,
            ErrorCode::UnknownParticipant,
            format!("no participant {who} in this room"),
        );
    }

    pub(super) fn refuse(&mut self, to: ParticipantKey, code: ErrorCode, message: String) {
        self.send(to, &ServerMessage::Error { code, message });
    }

    pub(super) fn broadcast_except(
        &mut self,
        session: SessionId,
        except: ParticipantKey,
        msg: &ServerMessage,
    ) {
        let mut members = std::mem::take(&mut self.fanout);
        members.clear();
        if let Some(room) = self.rooms.get(&session) {
            members.extend(room.members.iter().copied().filter(|&m| m != except));
        }
        if members.is_empty() {
            self.fanout = members;
            return;
        }
        let text = msg.encode();
        for &to in &members {
            self.send_text(to, &text);
        }
        self.fanout = members;
    }

    pub(super) fn send(&mut self, to: ParticipantKey, msg: &ServerMessage) {
        self.send_text(to, &msg.encode());
    }

    /// Writes one text message on a participant's control channel, if open, and drains.
    fn send_text(&mut self, to: ParticipantKey, text: &str) {
        let Some(p) = self.participants.get_mut(&to) else {
            return;
        };
        let Some(id) = p.control else {
            return;
        };
        if let Some(mut ch) = p.rtc.channel(id) {
            // A full send buffer drops the message: control is best effort, state is resent
            // on request (list_participants).
            let _ = ch.write(false, text.as_bytes());
        }
        self.drain(to);
    }
}
