//! Shared music of a session: what members ask of it and the state everyone is told.
//!
//! A member with the right (the join token's `music_ctl`; over REST a group admin, or any member
//! when the group's `music_sharing` setting is on) queues audio files uploaded to the group as
//! tracks and plays, pauses, seeks and skips. The media node hosting the session decodes each
//! track once, encodes it as stereo Opus and sends every listener the same frame at the same
//! moment. Every change is reported as a [`MusicState`]: on the room's data channel, and through
//! the control plane as the group event `music`.

use crate::ids::AttachmentId;
use serde::{Deserialize, Serialize};

/// The longest seek accepted, in milliseconds (a track is at most 30 minutes).
pub const MAX_POSITION_MS: u64 = 30 * 60 * 1000;
/// Tracks a session's queue holds at most (the one playing included).
pub const MAX_QUEUE: usize = 50;

/// What a member asks of the music: the body of `POST /v1/sessions/{id}/music`, and with
/// `type: music` a data-channel message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum MusicAction {
    // Unit-like variants are written `{}` so that unknown fields are refused for them too.
    /// Start or resume the current track (the first queued one when none is current).
    Play {},
    Pause {},
    /// Move within the current track; a position past its end ends it.
    Seek {
        position_ms: u64,
    },
    /// End the current track; the next one plays if the music was playing.
    Skip {},
    /// Add an audio file of the group to the end of the queue (REST only: the control plane
    /// hands the file to the node).
    Queue {
        track: AttachmentId,
    },
    /// Empty the queue after the current track.
    Clear {},
}

impl MusicAction {
    /// Whether the action is well-formed on its own.
    pub fn validate(&self) -> Result<(), &'static str> {
        match self {
            MusicAction::Seek { position_ms } if *position_ms > MAX_POSITION_MS => {
                Err("position_ms is past the longest track (30 minutes)")
            }
            _ => Ok(()),
        }
    }
}

/// A track as members see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MusicTrack {
    /// The audio file (attachment) it was made from.
    pub id: AttachmentId,
    /// Its file name.
    pub name: String,
    pub duration_ms: u64,
}

/// The music of a session, as of one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MusicState {
    pub playing: bool,
    /// The track playing or paused, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<MusicTrack>,
    /// Position in `current` at `at_ms` (on the data channel: when the message was sent).
    pub position_ms: u64,
    /// The tracks after `current`, in order.
    #[serde(default)]
    pub queue: Vec<MusicTrack>,
    /// When `position_ms` holds, Unix milliseconds on the media node's clock (absent on the
    /// data channel). While playing, the position at a later time `t` is
    /// `position_ms + (t - at_ms)`; a change made now takes effect a short lead later, so
    /// `at_ms` may be slightly ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_as_documented_and_refuse_the_rest() {
        let a: MusicAction =
            serde_json::from_str(r#"{"action":"seek","position_ms":1500}"#).expect("seek");
        assert_eq!(a, MusicAction::Seek { position_ms: 1500 });
        assert_eq!(a.validate(), Ok(()));
        let t = AttachmentId::from_uuid(uuid::Uuid::from_u128(9));
        let q = MusicAction::Queue { track: t };
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(
            json,
            r#"{"action":"queue","track":"00000000-0000-0000-0000-000000000009"}"#
        );
        assert_eq!(serde_json::from_str::<MusicAction>(&json).unwrap(), q);
        assert_eq!(
            serde_json::to_string(&MusicAction::Play {}).unwrap(),
            r#"{"action":"play"}"#
        );
        for bad in [
            r#"{"action":"louder"}"#,
            r#"{"action":"seek"}"#,
            r#"{"action":"seek","position_ms":-1}"#,
            r#"{"action":"play","extra":1}"#,
            r#"{"action":"queue","track":"nope"}"#,
            "{}",
        ] {
            assert!(serde_json::from_str::<MusicAction>(bad).is_err(), "{bad}");
        }
        assert!(
            MusicAction::Seek {
                position_ms: MAX_POSITION_MS + 1
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn a_state_round_trips() {
        let s = MusicState {
            playing: true,
            current: Some(MusicTrack {
                id: AttachmentId::from_uuid(uuid::Uuid::from_u128(1)),
                name: "song.mp3".into(),
                duration_ms: 180_000,
            }),
            position_ms: 12_340,
            queue: vec![],
            at_ms: Some(1_800_000_000_000),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<MusicState>(&json).unwrap(), s);
        let idle: MusicState = serde_json::from_str(r#"{"playing":false,"position_ms":0}"#)
            .expect("an idle state without the optional fields");
        assert_eq!(idle, MusicState::default());
    }
}
