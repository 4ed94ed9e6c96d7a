//! Session events: what a media node reports to the control plane about who is in its rooms and
//! what their music does.
//! In one process they are handed over directly; across processes they travel on the Redis stream
//! [`redis_stream_key`], one JSON [`SessionEvent`] per entry (field `e`).

use crate::ids::{NodeId, ParticipantId, SessionId, UserId};
use serde::{Deserialize, Serialize};

/// Field of a stream entry that holds the JSON event.
pub const REDIS_EVENT_FIELD: &str = "e";

/// The Redis stream of session events.
pub fn redis_stream_key(prefix: &str) -> String {
    format!("{prefix}session-events")
}

/// A change of one participant of a session, or of its music.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub node: NodeId,
    pub session: SessionId,
    /// Who it concerns; for a music change, who made it (the nil id when it came through the
    /// REST API or a track ended).
    pub participant: ParticipantId,
    /// The participant's user; for a music change, who made it (a track that ended is the last
    /// changer's).
    pub user: UserId,
    /// When it happened on the node, Unix milliseconds.
    pub at_ms: u64,
    pub change: ParticipantChange,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParticipantChange {
    Joined,
    Left {
        reason: String,
    },
    Muted {
        microphone: bool,
        speaker: bool,
    },
    /// The session's music changed: its state after the change.
    Music {
        state: crate::music::MusicState,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn events_round_trip_as_tagged_json() {
        let e = SessionEvent {
            node: NodeId::new("n1").unwrap(),
            session: SessionId::from_uuid(Uuid::from_u128(1)),
            participant: ParticipantId::from_uuid(Uuid::from_u128(2)),
            user: UserId::from_uuid(Uuid::from_u128(3)),
            at_ms: 42,
            change: ParticipantChange::Muted {
                microphone: true,
                speaker: false,
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""change":{"type":"muted","microphone":true,"speaker":false}"#));
        assert_eq!(serde_json::from_str::<SessionEvent>(&json).unwrap(), e);
        assert!(serde_json::from_str::<SessionEvent>("{}").is_err());
    }
}
