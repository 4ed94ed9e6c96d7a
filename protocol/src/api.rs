//! REST bodies of the control plane (`/v1/...`) and the RFC 9457 problem body every error uses.
//!
//! Timestamps are RFC 3339 strings on the wire so this crate needs no time library.

use crate::ids::{AttachmentId, GroupId, NodeId, ParticipantId, SessionId, UserId};
use serde::{Deserialize, Serialize};

/// `POST /v1/auth/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    pub email: String,
    pub password: String,
}

/// `POST /v1/auth/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// The `trusted_device` token an earlier sign-in on this device returned. It proves nothing
    /// about the password; it only keeps this device out of the account's shared attempt
    /// budget, so someone guessing the password elsewhere cannot slow this device down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_device: Option<String>,
}

/// `POST /v1/auth/login/mfa`: the second step of a sign-in when the account has TOTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MfaLoginRequest {
    /// The `mfa_token` of the login's `mfa-required` problem (valid 5 minutes).
    pub mfa_token: String,
    /// A 6-digit code from the authenticator app, or one of the recovery codes.
    pub code: String,
}

/// `POST /v1/auth/password`: change the password. Every other sign-in session is signed out
/// unless `sign_out_other_sessions` is `false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
    #[serde(default = "yes")]
    pub sign_out_other_sessions: bool,
}

fn yes() -> bool {
    true
}

/// Answer to `POST /v1/auth/password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PasswordChanged {
    /// How many other sign-in sessions were signed out.
    pub revoked_sessions: u64,
}

/// `POST /v1/auth/totp`: a new, not yet active TOTP secret (RFC 6238: SHA-1, 6 digits, 30 s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TotpEnrollment {
    /// The secret in base32 (RFC 4648, no padding), for typing into an app.
    pub secret: String,
    /// `otpauth://totp/...`, for a QR code.
    pub otpauth_uri: String,
}

/// The account's password, asked again before a sensitive change (`POST /v1/auth/totp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PasswordConfirmation {
    pub password: String,
}

/// `GET /v1/auth/totp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TotpStatus {
    /// Sign-in asks for a code.
    pub enabled: bool,
    /// Recovery codes not used yet.
    pub recovery_codes_left: u64,
}

/// A TOTP or recovery code: confirms an enrolment, disables TOTP, or renews recovery codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TotpCode {
    pub code: String,
}

/// Recovery codes, shown once: each signs in once in place of a TOTP code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

/// `POST /v1/auth/refresh`: trade a refresh token for a new pair. The old one is spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A sign-in session (a device) in `GET /v1/auth/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokedSessions {
    pub revoked: u64,
}

/// A user as others may see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserView {
    pub id: UserId,
    pub username: String,
    pub email: String,
}

/// Answer to register and login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthResponse {
    pub user: UserView,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// After a password sign-in: a token for this device to send with its next logins
    /// ([`LoginRequest::trusted_device`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_device: Option<String>,
}

/// `GET /.well-known/jwks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One Ed25519 public key (RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    pub name: String,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Who may see and join a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Privacy {
    /// Only through an invite; to anyone else the group does not exist.
    Private,
    /// Anyone signed in who knows the group's id may join it (`POST /v1/groups/{id}/join`).
    Public,
}

/// Who may create invites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JoinPermission {
    Admins,
    Members,
}

/// A group's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupSettings {
    pub privacy: Privacy,
    pub join_permission: JoinPermission,
    /// Members may share their positions with each other in this group.
    pub location_sharing: bool,
    /// Members may start and control shared music in this group.
    pub music_sharing: bool,
    /// Members sharing their location closer than this (metres) are `near`, farther than
    /// max(1.2·r, r + 50 m) `apart`; 0: no proximity alerts. 0 or
    /// [`MIN_PROXIMITY_RADIUS_M`]–[`MAX_PROXIMITY_RADIUS_M`].
    #[serde(default = "default_proximity_radius")]
    pub proximity_radius_m: u32,
}

/// A group's proximity radius unless its admins choose another.
pub const DEFAULT_PROXIMITY_RADIUS_M: u32 = 200;
/// The smallest proximity radius (a phone's fix is often 5–20 m off).
pub const MIN_PROXIMITY_RADIUS_M: u32 = 25;
/// The largest proximity radius.
pub const MAX_PROXIMITY_RADIUS_M: u32 = 10_000;

fn default_proximity_radius() -> u32 {
    DEFAULT_PROXIMITY_RADIUS_M
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            privacy: Privacy::Private,
            join_permission: JoinPermission::Admins,
            location_sharing: true,
            music_sharing: true,
            proximity_radius_m: DEFAULT_PROXIMITY_RADIUS_M,
        }
    }
}

/// A group as seen by one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupView {
    pub id: GroupId,
    pub name: String,
    pub created_by: UserId,
    pub created_at: String,
    /// The caller's role in the group.
    pub role: Role,
    pub description: String,
    pub avatar_url: Option<String>,
    pub settings: GroupSettings,
    pub member_count: u64,
    /// The group's latest event sequence number: a cursor for `/v1/events`.
    pub last_seq: u64,
}

/// `GET /v1/groups`: the caller's groups, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupList {
    pub groups: Vec<GroupView>,
}

/// `PATCH /v1/groups/{id}` (admins): what to change; what is absent stays.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateGroupRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// An `https://` URL; the empty string removes the picture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<UpdateGroupSettings>,
}

/// The settings to change in `PATCH /v1/groups/{id}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateGroupSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_permission: Option<JoinPermission>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_sharing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub music_sharing: Option<bool>,
    /// 0 (no proximity alerts) or [`MIN_PROXIMITY_RADIUS_M`]–[`MAX_PROXIMITY_RADIUS_M`] metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proximity_radius_m: Option<u32>,
}

/// A member of a group as the other members see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberView {
    pub user_id: UserId,
    pub username: String,
    pub role: Role,
    pub joined_at: String,
    /// The highest message id this member has read.
    pub read_upto: u64,
    /// The highest message id this member's devices have received.
    pub delivered_upto: u64,
}

/// `GET /v1/groups/{id}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberList {
    pub members: Vec<MemberView>,
}

/// `PATCH /v1/groups/{id}/members/{user}` (admins): promote or demote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChangeRoleRequest {
    pub role: Role,
}

/// `POST /v1/groups/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// Chosen by the client, unique per sender and group (a UUID, say; 1 to 64 characters of
    /// `[A-Za-z0-9_-]`). Sending again with the same id answers the original message, forever.
    pub client_msg_id: String,
    /// 1 to 4,000 characters; may be empty when `attachments` is not.
    #[serde(default)]
    pub body: String,
    /// Up to [`MAX_MESSAGE_ATTACHMENTS`] files the sender uploaded to this group
    /// (`POST /v1/groups/{id}/attachments`) and has not attached to another message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentId>,
}

/// The most attachments one message carries.
pub const MAX_MESSAGE_ATTACHMENTS: usize = 10;

/// A file uploaded to a group: the answer to `POST /v1/groups/{id}/attachments?name=`, and
/// each of a message's `attachments`. Its bytes are at `GET /v1/attachments/{id}`, for the
/// members of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttachmentView {
    pub id: AttachmentId,
    pub group: GroupId,
    pub uploader: UserId,
    /// The file name the uploader gave (`name`), or `attachment`.
    pub name: String,
    /// The media type the upload declared, from the allowed list.
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes; the download's `ETag`.
    pub sha256: String,
    pub created_at: String,
    /// The message it is attached to; `None` until one is sent.
    #[serde(default)]
    pub message_id: Option<u64>,
}

/// `PATCH /v1/groups/{id}/messages/{message}`: the sender edits their message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EditMessageRequest {
    pub body: String,
}

/// How far a message of the caller's has got: stored, on every other member's device, or read
/// by every other member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
}

/// A message. Its id is the sequence number of the event that posted it: ids increase within
/// a group, and a message's id is also a cursor in the group's event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageView {
    pub id: u64,
    pub group: GroupId,
    pub sender: UserId,
    pub client_msg_id: String,
    /// `None` once deleted (a tombstone).
    pub body: Option<String>,
    pub created_at: String,
    pub edited_at: Option<String>,
    pub deleted_at: Option<String>,
    /// The files sent with it (none once deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentView>,
    /// For the sender's own messages, in answers to the sender; `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeliveryStatus>,
}

/// `GET /v1/groups/{id}/messages?before=&after=&limit=`: oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    /// More messages lie beyond this page in the direction asked (before `before`, or after
    /// `after`, or before the first when neither was given).
    pub has_more: bool,
}

/// `POST /v1/groups/{id}/markers`: how far the caller has read and received. Markers only
/// move forward; `read` implies `delivered`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MarkersRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
}

/// The caller's markers after `POST /v1/groups/{id}/markers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Markers {
    pub read_upto: u64,
    pub delivered_upto: u64,
}

/// `POST /v1/groups/{id}/invites` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InviteView {
    pub code: String,
    pub expires_at: String,
}

/// `POST /v1/invites/{code}/accept` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AcceptInviteResponse {
    pub group: GroupView,
}

/// What a media session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Candidate {
    pub node_id: NodeId,
    pub region: String,
    pub whip_url: String,
}

/// `POST /v1/groups/{id}/sessions` answer: the session, where to join it, and a join token for the
/// first candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionAllocation {
    pub session: SessionView,
    pub candidates: Vec<Candidate>,
    pub join_token: String,
}

/// Whether a participant's microphone and speaker are muted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MuteStatus {
    pub microphone: bool,
    pub speaker: bool,
}

/// A participant of a session (`GET /v1/sessions/{id}/participants`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MuteRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microphone: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaker: Option<bool>,
}

/// `POST /v1/sessions/{id}/participants/{pid}/speak`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SpeakRequest {
    pub allowed: bool,
}

/// What the control plane asks a media node to do to a participant (the node's moderation API,
/// `POST {node}/v1/admin/sessions/{sid}/participants/{pid}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extension member of the `mfa-required` problem: the token for `POST /v1/auth/login/mfa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_token: Option<String>,
}

impl Problem {
    /// A problem of type [`PROBLEM_TYPE_PREFIX`]`{slug}`.
    pub fn new(status: u16, slug: &str, title: &str, detail: Option<String>) -> Self {
        Self {
            type_: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title: title.to_owned(),
            status,
            detail,
            mfa_token: None,
        }
    }
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

/// A member's presence in `GET /v1/groups/{id}/presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberPresence {
    pub user_id: UserId,
    pub status: crate::realtime::PresenceStatus,
}

/// `GET /v1/groups/{id}/presence`: who of the group is connected and who is typing.
/// `typing` is absent when the server cannot tell (its presence store does not answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupPresence {
    pub members: Vec<MemberPresence>,
    pub typing: Option<Vec<UserId>>,
}

/// `POST /v1/calls`: start a 1:1 call with someone who shares a group with the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateCallRequest {
    pub to: UserId,
}

/// The call's id (for the `call` signals over `/v1/events`) and the caller's ICE servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CallView {
    pub call_id: uuid::Uuid,
    pub to: UserId,
    pub ice_servers: Vec<crate::realtime::IceServer>,
    /// When the TURN credentials stop working for new allocations (RFC 3339).
    pub ice_expires_at: String,
}
