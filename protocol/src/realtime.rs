//! The realtime stream `GET /v1/events` (a WebSocket, JSON text frames) and the events of a
//! group's log.
//!
//! Every group has an event log: each change (a message, an edit, a member joining, a setting)
//! gets the group's next sequence number. A client remembers the highest `seq` it has seen per
//! group (its cursor) and sends it in [`ClientFrame::Hello`] when it reconnects; the server
//! replays what it missed, then streams live. Ephemeral frames (markers, typing, presence) carry
//! no `seq`: a client that missed them reads the current state over REST
//! (`GET /v1/groups/{id}/members`, `GET /v1/groups/{id}/presence`).
//!
//! Close codes: [`CLOSE_UNAUTHORIZED`] (no valid token in time, or the token expired; sign in
//! again or refresh, then reconnect), [`CLOSE_BAD_FRAME`] (a frame that is not a valid
//! [`ClientFrame`]), [`CLOSE_TOO_SLOW`] (the client did not read its frames), and 1001 when the
//! server shuts down.

use crate::api::{GroupView, MessageView, Role};
use crate::ids::{GroupId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Close code: no valid access token, or it expired.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Close code: a client frame that does not parse, or one not allowed at this point.
pub const CLOSE_BAD_FRAME: u16 = 4002;
/// Close code: the client fell too far behind reading.
pub const CLOSE_TOO_SLOW: u16 = 4008;

/// The largest client frame read, in bytes.
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// The first frame. `access_token` is needed unless the upgrade request carried
    /// `Authorization: Bearer`. `cursor` maps a group to the highest `seq` the client has; a
    /// group the client is in but did not name replays from when the client joined it.
    Hello {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access_token: Option<String>,
        #[serde(default)]
        cursor: BTreeMap<GroupId, u64>,
    },
    /// Move the caller's read and delivered markers in a group (as `POST .../markers`).
    Markers {
        group: GroupId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delivered: Option<u64>,
    },
    /// The caller is typing in `group` (`true`; repeat every few seconds while it lasts, it
    /// expires after [`TYPING_TTL_MS`]) or stopped (`false`). Members' connections get
    /// [`ServerFrame::Typing`].
    Typing { group: GroupId, typing: bool },
    /// A signal of a 1:1 call to `to`, who must share a group with the caller. Start a call
    /// with `POST /v1/calls` (its id and ICE servers), then send the offer, candidates, and
    /// finally a hangup; the callee answers the same way with the caller's id.
    Call {
        to: UserId,
        call: Uuid,
        signal: CallSignal,
    },
    /// Answered by [`ServerFrame::Pong`].
    Ping {},
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A durable event of a group's log.
    Event(GroupEvent),
    /// The replay after `hello` is over: what follows is live. `cursor` is where each of the
    /// caller's groups stands.
    Ready {
        cursor: BTreeMap<GroupId, u64>,
    },
    /// The client missed more of a group than is replayed (`from` is the first `seq` it has
    /// not got): it reads the messages over REST and goes on from `seq` onward.
    Gap {
        group: GroupId,
        from: u64,
        seq: u64,
    },
    /// The caller is no longer in this group (left, removed, or the group was deleted).
    Removed {
        group: GroupId,
    },
    /// A member's markers moved.
    Markers {
        group: GroupId,
        user: UserId,
        read_upto: u64,
        delivered_upto: u64,
    },
    /// A member of `group` started (`typing`) or stopped typing. A start holds for
    /// `expires_in_ms` unless repeated.
    Typing {
        group: GroupId,
        user: UserId,
        typing: bool,
        expires_in_ms: u64,
    },
    /// A signal of a 1:1 call from `from`. An offer carries the callee's ICE servers (STUN,
    /// and TURN with time-limited credentials). A hangup with reason `offline` comes from
    /// the server when the callee has no live connection.
    Call {
        from: UserId,
        call: Uuid,
        signal: CallSignal,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_servers: Option<Vec<IceServer>>,
    },
    /// A user who shares a group with the caller came online or went offline (their last
    /// connection closed). Users who hide their presence always appear offline.
    Presence {
        user: UserId,
        status: PresenceStatus,
    },
    Pong,
}

/// Whether a user is connected. `Unknown` when the server cannot tell (its presence store, Redis,
/// does not answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Offline,
    Unknown,
}

/// What one side of a 1:1 call tells the other; the server relays it unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CallSignal {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    /// A trickled ICE candidate (`RTCIceCandidate.toJSON()` fields).
    Candidate {
        candidate: String,
        #[serde(default, rename = "sdpMid", skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        #[serde(
            default,
            rename = "sdpMLineIndex",
            skip_serializing_if = "Option::is_none"
        )]
        sdp_m_line_index: Option<u16>,
    },
    /// The call is over, or never started. The client may then fall back to a group voice
    /// session (`POST /v1/groups/{id}/sessions`).
    Hangup {
        reason: HangupReason,
    },
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupReason {
    /// One side hung up.
    Ended,
    /// The callee refused.
    Declined,
    /// The callee is in another call.
    Busy,
    /// The peers could not connect.
    Failed,
    /// The callee has no live connection (sent by the server).
    Offline,
    /// Another device of the callee answered (sent by the server to the callee's other
    /// devices, so they stop ringing).
    AnsweredElsewhere,
}

/// An ICE server for `RTCPeerConnection` (`RTCIceServer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// How long a typing notice lasts unless repeated.
pub const TYPING_TTL_MS: u64 = 6_000;

/// One entry of a group's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupEvent {
    pub group: GroupId,
    /// Increases by one with each event of the group.
    pub seq: u64,
    /// RFC 3339.
    pub at: String,
    /// Who caused it.
    pub actor: UserId,
    #[serde(flatten)]
    pub data: EventData,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventData {
    /// A message was posted (as it is now: edited or deleted since, if it was).
    Message {
        message: MessageView,
    },
    MessageEdited {
        message_id: u64,
        /// `None` when the message has been deleted since.
        body: Option<String>,
        edited_at: String,
    },
    MessageDeleted {
        message_id: u64,
    },
    MemberJoined {
        user: UserId,
        role: Role,
    },
    /// The member left (`removed_by` is `None`) or an admin removed them.
    MemberLeft {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        removed_by: Option<UserId>,
    },
    RoleChanged {
        user: UserId,
        role: Role,
    },
    /// The name, description, picture or settings changed. `details.role` is the actor's.
    GroupUpdated {
        details: GroupView,
    },
    /// The group is gone; no event follows.
    GroupDeleted,
    /// A voice or music session of the group opened on a media node.
    SessionStarted {
        session: crate::api::SessionView,
    },
    /// The session closed (its media node went away); a new one opens on the next join.
    SessionEnded {
        session: crate::ids::SessionId,
    },
    /// Someone joined a session of the group (reported by its media node).
    ParticipantJoined {
        session: crate::ids::SessionId,
        participant: crate::ids::ParticipantId,
        user: UserId,
    },
    /// Someone left a session of the group, or was removed.
    ParticipantLeft {
        session: crate::ids::SessionId,
        participant: crate::ids::ParticipantId,
        user: UserId,
    },
    /// The music of a session changed (a member played, paused, sought, skipped or queued, or
    /// a track ended). `actor` made the change (a track that ended is the last changer's).
    Music {
        session: crate::ids::SessionId,
        music: crate::music::MusicState,
    },
    /// A place of the group was added or changed.
    PlaceSaved {
        place: crate::location::PlaceView,
    },
    /// A place of the group was removed.
    PlaceRemoved {
        place: crate::ids::PlaceId,
    },
    /// A location engine's alert: two members came near or moved apart, one arrived at or left
    /// a place of the group, or went silent. `alert_id` (32 hex digits) is the engine's.
    Location {
        alert_id: String,
        alert: crate::location::AlertKind,
    },
}

impl EventData {
    /// The `kind` tag of the event on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::Message { .. } => "message",
            EventData::MessageEdited { .. } => "message_edited",
            EventData::MessageDeleted { .. } => "message_deleted",
            EventData::MemberJoined { .. } => "member_joined",
            EventData::MemberLeft { .. } => "member_left",
            EventData::RoleChanged { .. } => "role_changed",
            EventData::GroupUpdated { .. } => "group_updated",
            EventData::GroupDeleted => "group_deleted",
            EventData::SessionStarted { .. } => "session_started",
            EventData::SessionEnded { .. } => "session_ended",
            EventData::ParticipantJoined { .. } => "participant_joined",
            EventData::ParticipantLeft { .. } => "participant_left",
            EventData::Location { .. } => "location",
            EventData::Music { .. } => "music",
            EventData::PlaceSaved { .. } => "place_saved",
            EventData::PlaceRemoved { .. } => "place_removed",
        }
    }
}

impl ClientFrame {
    /// Parses a text frame.
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl ServerFrame {
    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        // Serialising these types cannot fail: every map key is a string-like id.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_with_a_cursor_reads_back() {
        let g = GroupId::from_uuid(uuid::Uuid::from_u128(7));
        let text = format!(r#"{{"type":"hello","cursor":{{"{g}":12}}}}"#);
        let frame = ClientFrame::decode(&text).unwrap();
        assert_eq!(
            frame,
            ClientFrame::Hello {
                access_token: None,
                cursor: BTreeMap::from([(g, 12)]),
            }
        );
    }

    #[test]
    fn unknown_frames_and_fields_are_errors() {
        assert!(ClientFrame::decode(r#"{"type":"subscribe"}"#).is_err());
        assert!(ClientFrame::decode(r#"{"type":"ping","x":1}"#).is_err());
        assert!(ClientFrame::decode(r#"{"type":"hello","cursor":{"nope":1}}"#).is_err());
        assert!(ClientFrame::decode("not json").is_err());
    }

    #[test]
    fn an_event_is_flat_with_its_kind() {
        let u = UserId::from_uuid(uuid::Uuid::from_u128(1));
        let event = ServerFrame::Event(GroupEvent {
            group: GroupId::from_uuid(uuid::Uuid::from_u128(2)),
            seq: 3,
            at: "2026-01-01T00:00:00Z".into(),
            actor: u,
            data: EventData::MessageDeleted { message_id: 2 },
        });
        let json: serde_json::Value = serde_json::from_str(&event.encode()).unwrap();
        assert_eq!(json["type"], "event");
        assert_eq!(json["kind"], "message_deleted");
        if let ServerFrame::Event(e) = &event {
            assert_eq!(e.data.kind(), "message_deleted", "kind() is the wire tag");
        }
        assert_eq!(json["message_id"], 2);
        assert_eq!(json["seq"], 3);
        let back: ServerFrame = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
}
