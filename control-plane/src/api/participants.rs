//! The participants of a media session: `GET /v1/sessions/{id}/participants` and the moderation
//! routes under `/v1/sessions/{id}/participants/{pid}` (mute, speak, remove).
//!
//! The list comes from SQL, which the media nodes' session events keep current. Moderation is
//! relayed to the node hosting the session with a single-use moderation token (aud = the node);
//! the node reports the outcome as session events like any other change. Who may do what: any
//! member lists; a participant mutes or removes itself; a group admin does anything to anyone.

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, Json, Path};
use super::groups::member_of;
use crate::clock::{Now, rfc3339};
use crate::store::{MemberGroup, ParticipantRow, SessionRow};
use axum::extract::State;
use axum::http::StatusCode;
use protocol::api::{Moderation, MuteRequest, MuteStatus, ParticipantView, Role, SpeakRequest};
use protocol::ids::{ParticipantId, SessionId};
use std::time::Duration;

/// How long the control plane waits for a media node to carry out a moderation.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

fn view(p: ParticipantRow) -> ParticipantView {
    ParticipantView {
        id: p.id,
        user_id: p.user,
        joined_at: rfc3339(p.joined_at_ms),
        left_at: p.left_at_ms.map(rfc3339),
        mute_status: MuteStatus {
            microphone: p.mute_microphone,
            speaker: p.mute_speaker,
        },
    }
}

/// The session and the caller's membership of its group (404 for non-members, as for groups).
pub(super) async fn session_of(
    state: &AppState,
    caller: Caller,
    id: SessionId,
) -> Result<(SessionRow, MemberGroup), AppError> {
    let session = state
        .store
        .session(id)
        .await?
        .ok_or(AppError::NotFound("no such session"))?;
    let membership = member_of(state, session.group, caller)
        .await
        .map_err(|_| AppError::NotFound("no such session"))?;
    Ok((session, membership))
}

/// Where to relay a request about `session` on the caller's behalf: the base URL of the session
/// on its node (`…/v1/admin/sessions/{id}`) and a single-use moderation token for it.
pub(super) fn relay_to(
    state: &AppState,
    caller: Caller,
    session: &SessionRow,
) -> Result<(String, String), AppError> {
    let node = state
        .registry
        .get(&session.node)
        .ok_or(AppError::BadGateway(
            "the session's media node is not reachable",
        ))?;
    let token = state.tokens.moderation(
        caller.user,
        session.node.clone(),
        session.id,
        Now::read().secs(),
    );
    let base = format!(
        "{}/v1/admin/sessions/{}",
        node.http_url.trim_end_matches('/'),
        session.id
    );
    Ok((base, token))
}

#[utoipa::path(get, path = "/v1/sessions/{id}/participants", tag = "sessions", summary = "Who is in a session", params(("id" = protocol::ids::SessionId, Path, description = "The session")), responses((status = 200, description = "Participants", body = Vec<ParticipantView>)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<SessionId>,
) -> Result<Json<Vec<ParticipantView>>, AppError> {
    let (session, _) = session_of(&state, caller, id).await?;
    let rows = state.store.present_participants(session.id).await?;
    Ok(Json(rows.into_iter().map(view).collect()))
}

#[utoipa::path(post, path = "/v1/sessions/{id}/participants/{pid}/mute", tag = "sessions", summary = "Mute or unmute (admins)", request_body = MuteRequest, params(("id" = protocol::ids::SessionId, Path, description = "The session"), ("pid" = protocol::ids::ParticipantId, Path, description = "The participant")), responses((status = 204, description = "Done")))]
pub(super) async fn mute(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(SessionId, ParticipantId)>,
    Json(req): Json<MuteRequest>,
) -> Result<StatusCode, AppError> {
    let action = Moderation::Mute {
        microphone: req.microphone,
        speaker: req.speaker,
    };
    moderate(&state, caller, id, pid, action, true).await
}

#[utoipa::path(post, path = "/v1/sessions/{id}/participants/{pid}/speak", tag = "sessions", summary = "Let speak or not (admins)", request_body = SpeakRequest, params(("id" = protocol::ids::SessionId, Path, description = "The session"), ("pid" = protocol::ids::ParticipantId, Path, description = "The participant")), responses((status = 204, description = "Done")))]
pub(super) async fn speak(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(SessionId, ParticipantId)>,
    Json(req): Json<SpeakRequest>,
) -> Result<StatusCode, AppError> {
    let action = Moderation::Speak {
        allowed: req.allowed,
    };
    moderate(&state, caller, id, pid, action, false).await
}

#[utoipa::path(delete, path = "/v1/sessions/{id}/participants/{pid}", tag = "sessions", summary = "Remove from a session (admins)", params(("id" = protocol::ids::SessionId, Path, description = "The session"), ("pid" = protocol::ids::ParticipantId, Path, description = "The participant")), responses((status = 204, description = "Removed")))]
pub(super) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, pid)): Path<(SessionId, ParticipantId)>,
) -> Result<StatusCode, AppError> {
    moderate(&state, caller, id, pid, Moderation::Remove, true).await
}

/// Checks the caller's right and relays `action` to the session's node.
async fn moderate(
    state: &AppState,
    caller: Caller,
    id: SessionId,
    pid: ParticipantId,
    action: Moderation,
    self_allowed: bool,
) -> Result<StatusCode, AppError> {
    let (session, member) = session_of(state, caller, id).await?;
    let participant = state
        .store
        .participant(session.id, pid)
        .await?
        .filter(|p| p.left_at_ms.is_none())
        .ok_or(AppError::NotFound("no such participant in the session"))?;
    let is_self = participant.user == caller.user;
    if member.role != Role::Admin && !(self_allowed && is_self) {
        return Err(AppError::Forbidden("only a group admin may do that"));
    }
    let (base, token) = relay_to(state, caller, &session)?;
    let url = format!("{base}/participants/{pid}");
    let res = state
        .http
        .post(&url)
        .bearer_auth(token)
        .json(&action)
        .timeout(NODE_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, node = %session.node, "moderation relay failed");
            AppError::BadGateway("the session's media node is not reachable")
        })?;
    match res.status().as_u16() {
        200..=299 => Ok(StatusCode::NO_CONTENT),
        404 => Err(AppError::NotFound(
            "the participant is no longer on the media node",
        )),
        status => {
            tracing::warn!(status, node = %session.node, "media node refused a moderation");
            Err(AppError::BadGateway("the media node refused the request"))
        }
    }
}
