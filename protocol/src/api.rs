//! REST bodies of the control plane (`/v1/...`) and the RFC 9457 problem body every error uses.
//!
//! Timestamps are RFC 3339 strings on the wire so this crate needs no time library.

use crate::ids::{GroupId, NodeId, ParticipantId, SessionId, UserId};
use serde::{Deserialize, Serialize};

/// `POST /v1/auth/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    pub email: String,
    pub password: String,
}

/// `POST /v1/auth/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

/// `POST /v1/auth/refresh`: trade a refresh token for a new pair. The old one is spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A sign-in session (a device) in `GET /v1/auth/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSessionView {
    pub id: uuid::Uuid,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: the sign-in or the last refresh.
    pub last_used_at: String,
    /// The `User-Agent` of the sign-in, if it sent one.
    pub user_agent: Option<String>,
    /// The session of the access token that asked.
    pub current: bool,
}

/// `DELETE /v1/auth/sessions`: how many other sessions were signed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSessions {
    pub revoked: u64,
}

/// A user as others may see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub id: UserId,
    pub username: String,
    pub email: String,
}

/// Answer to register and login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResponse {
    pub user: UserView,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// `GET /.well-known/jwks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key (RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kid: String,
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// The 32-byte public key, base64url without padding.
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// `POST /v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub name: String,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    /// The role as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
    /// Parses a stored role.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A group as seen by one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub id: GroupId,
    pub name: String,
    pub created_by: UserId,
    pub created_at: String,
    /// The caller's role in the group.
    pub role: Role,
}

/// `POST /v1/groups/{id}/invites` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteView {
    pub code: String,
    pub expires_at: String,
}

/// `POST /v1/invites/{code}/accept` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptInviteResponse {
    pub group: GroupView,
}

/// What a media session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    Audio,
    Music,
}

impl SessionKind {
    /// The kind as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Audio => "audio",
            SessionKind::Music => "music",
        }
    }
    /// Parses a stored kind.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "audio" => Some(SessionKind::Audio),
            "music" => Some(SessionKind::Music),
            _ => None,
        }
    }
}

/// `POST /v1/groups/{id}/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    pub kind: SessionKind,
    /// End-to-end encrypted: the clients encrypt the payloads (SFrame, insertable streams) and
    /// the media node forwards them untouched, never mixes them. A group's active session of a kind
    /// is either encrypted or not; asking for the other is refused (409).
    #[serde(default)]
    pub e2ee: bool,
}

/// A media session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: SessionId,
    pub group_id: GroupId,
    pub kind: SessionKind,
    pub node_id: NodeId,
    /// End-to-end encrypted (see [`CreateSessionRequest::e2ee`]).
    #[serde(default)]
    pub e2ee: bool,
}

/// A media node a client may join the session on, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub node_id: NodeId,
    pub region: String,
    pub whip_url: String,
}

/// `POST /v1/groups/{id}/sessions` answer: the session, where to join it, and a join token for the
/// first candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAllocation {
    pub session: SessionView,
    pub candidates: Vec<Candidate>,
    pub join_token: String,
}

/// Whether a participant's microphone and speaker are muted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MuteStatus {
    pub microphone: bool,
    pub speaker: bool,
}

/// A participant of a session (`GET /v1/sessions/{id}/participants`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantView {
    pub id: ParticipantId,
    pub user_id: UserId,
    pub joined_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_at: Option<String>,
    pub mute_status: MuteStatus,
}

/// `POST /v1/sessions/{id}/participants/{pid}/mute`: `None` leaves that side as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microphone: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<bool>,
}

/// `POST /v1/sessions/{id}/participants/{pid}/speak`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeakRequest {
    pub allowed: bool,
}

/// What the control plane asks a media node to do to a participant (the node's moderation API,
/// `POST {node}/v1/admin/sessions/{sid}/participants/{pid}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Moderation {
    Mute {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        microphone: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        speaker: Option<bool>,
    },
    Speak {
        allowed: bool,
    },
    Remove,
}

/// RFC 9457 problem details, the body of every error answer (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The media type of [`Problem`] bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every problem `type` is this prefix followed by a slug (`tag:convoy,2025:problem/not-found`).
pub const PROBLEM_TYPE_PREFIX: &str = "tag:convoy,2025:problem/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields_and_kinds() {
        let plain = serde_json::from_str::<CreateSessionRequest>(r#"{"kind":"audio"}"#).unwrap();
        assert!(!plain.e2ee, "not encrypted unless asked");
        let e2ee = r#"{"kind":"audio","e2ee":true}"#;
        assert!(
            serde_json::from_str::<CreateSessionRequest>(e2ee)
                .unwrap()
                .e2ee
        );
        assert!(
            serde_json::from_str::<CreateSessionRequest>(r#"{"kind":"audio","e2ee":1}"#).is_err()
        );
        assert!(serde_json::from_str::<CreateSessionRequest>(r#"{"kind":"video"}"#).is_err());
        assert!(serde_json::from_str::<CreateGroupRequest>(r#"{"name":"a","x":1}"#).is_err());
    }

    #[test]
    fn roles_and_kinds_round_trip_through_their_stored_form() {
        for r in [Role::Admin, Role::Member] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        for k in [SessionKind::Audio, SessionKind::Music] {
            assert_eq!(SessionKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(Role::parse("owner"), None);
    }
}
