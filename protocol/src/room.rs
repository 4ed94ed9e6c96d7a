//! Room control messages: JSON text frames on the WebRTC data channel labelled [`CONTROL_LABEL`]
//! (and, later, on the QUIC control stream).
//!
//! A client sends [`ClientMessage`]s; the node answers and broadcasts [`ServerMessage`]s.
//! Participants are named by their room-scoped [`ParticipantRef`]. Decoding never panics:
//! [`ClientMessage::decode`] returns an error for anything malformed or oversized.

use crate::ids::UserId;
use crate::music::{MusicAction, MusicState};
use serde::{Deserialize, Serialize};

/// Label of the data channel that carries room control.
pub const CONTROL_LABEL: &str = "convoy-control";
/// Largest control message accepted, in bytes.
pub const MAX_CONTROL_MESSAGE: usize = 4096;

/// A participant of a room, as its members see it: an opaque handle, unique within the room.
pub type ParticipantRef = u64;

/// What a client asks of its room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Mute or unmute one's own microphone and/or speaker (deafen).
    Mute {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        microphone: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speaker: Option<bool>,
    },
    /// Raise or lower one's hand (a request to speak).
    RaiseHand { raised: bool },
    /// Admin: mute or unmute someone's microphone and/or speaker.
    MuteParticipant {
        participant: ParticipantRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        microphone: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speaker: Option<bool>,
    },
    /// Admin: allow or forbid someone to speak.
    SetSpeak {
        participant: ParticipantRef,
        allowed: bool,
    },
    /// Admin: remove someone from the room.
    Remove { participant: ParticipantRef },
    /// Ask for the participant list.
    ListParticipants,
    /// Control the room's music (needs the join token's `music_ctl`). `queue` is refused here:
    /// files are queued through the REST API.
    Music(MusicAction),
}

/// Why a decoded control message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control message larger than {MAX_CONTROL_MESSAGE} bytes")]
    TooLarge,
    #[error("malformed control message: {0}")]
    Malformed(String),
}

impl ClientMessage {
    /// Parses one data-channel message.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlError> {
        if bytes.len() > MAX_CONTROL_MESSAGE {
            return Err(ControlError::TooLarge);
        }
        serde_json::from_slice(bytes).map_err(|e| {
            // serde's message quotes the client's text: keep at most 200 characters of it.
            ControlError::Malformed(e.to_string().chars().take(200).collect())
        })
    }

    /// The message as sent on the wire.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One participant in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub participant: ParticipantRef,
    pub user_id: UserId,
    pub microphone_muted: bool,
    pub speaker_muted: bool,
    pub hand_raised: bool,
    pub can_speak: bool,
    pub admin: bool,
}

/// One active speaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    pub participant: ParticipantRef,
    /// Mean linear level over the detection window, 0..1.
    pub level: f32,
}

/// Error codes of [`ServerMessage::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Malformed,
    Forbidden,
    UnknownParticipant,
    /// The request cannot be carried out now (e.g. play with nothing queued).
    Conflict,
    /// Too many control messages: this one and the next ones are dropped until the budget
    /// refills (20 at once, then 10 a second).
    RateLimited,
}

/// What the node tells a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Sent when the channel opens: who you are in this room.
    Welcome {
        participant: ParticipantRef,
    },
    /// The whole list (on open, and on request).
    Participants {
        participants: Vec<ParticipantInfo>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant: ParticipantRef,
    },
    /// Someone's state changed (mute, hand, speak permission).
    ParticipantUpdated {
        participant: ParticipantInfo,
    },
    /// The active speakers, loudest first.
    Speakers {
        speakers: Vec<SpeakerInfo>,
    },
    /// You were removed from the room (by an admin in the room, or through the REST API when
    /// `by` is absent); the connection closes.
    Removed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<ParticipantRef>,
    },
    /// The room's music (on open when there is some, and at every change).
    Music(MusicState),
    /// A request was refused.
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ServerMessage {
    /// The message as sent on the wire.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a server message (clients and tests).
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlError> {
        serde_json::from_slice(bytes).map_err(|e| ControlError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_round_trip_and_look_as_documented() {
        let m = ClientMessage::Mute {
            microphone: Some(true),
            speaker: None,
        };
        assert_eq!(m.encode(), r#"{"type":"mute","microphone":true}"#);
        assert_eq!(ClientMessage::decode(m.encode().as_bytes()), Ok(m));
        let m = ClientMessage::SetSpeak {
            participant: 7,
            allowed: false,
        };
        assert_eq!(ClientMessage::decode(m.encode().as_bytes()), Ok(m));
        assert_eq!(
            ClientMessage::decode(br#"{"type":"list_participants"}"#),
            Ok(ClientMessage::ListParticipants)
        );
        let m = ClientMessage::Music(MusicAction::Seek { position_ms: 3000 });
        assert_eq!(
            m.encode(),
            r#"{"type":"music","action":"seek","position_ms":3000}"#
        );
        assert_eq!(ClientMessage::decode(m.encode().as_bytes()), Ok(m));
        let s = ServerMessage::Music(MusicState {
            playing: true,
            position_ms: 20,
            ..MusicState::default()
        });
        let text = s.encode();
        assert!(
            text.starts_with(r#"{"type":"music","playing":true"#),
            "{text}"
        );
        assert_eq!(ServerMessage::decode(text.as_bytes()), Ok(s));
    }

    #[test]
    fn bad_control_messages_are_errors() {
        for bad in [
            &b""[..],
            b"{}",
            b"null",
            br#"{"type":"mute","microphone":"yes"}"#,
            br#"{"type":"explode"}"#,
            br#"{"type":"remove"}"#,
            br#"{"type":"mute","extra":1}"#,
            br#"{"type":"music"}"#,
            br#"{"type":"music","action":"play","x":1}"#,
            br#"{"type":"music","action":"seek","position_ms":"far"}"#,
            &[0xff, 0xfe],
        ] {
            assert!(
                matches!(ClientMessage::decode(bad), Err(ControlError::Malformed(_))),
                "{bad:?}"
            );
        }
        // An error message quoting multi-byte text is cut on a character, not a byte.
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(500));
        match ClientMessage::decode(long.as_bytes()) {
            Err(ControlError::Malformed(m)) => assert!(m.chars().count() <= 200),
            other => panic!("{other:?}"),
        }
        let big = vec![b' '; MAX_CONTROL_MESSAGE + 1];
        assert_eq!(ClientMessage::decode(&big), Err(ControlError::TooLarge));
    }
}
