//! The music of a music session: `GET /v1/sessions/{id}/music` (its state, as its media node last
//! reported it) and `POST /v1/sessions/{id}/music` (play, pause, seek, skip, queue, clear).
//!
//! Who may control it: a group admin, or any member when the group's `music_sharing` setting is
//! on (the join token's `music_ctl` follows the same rule). An action is relayed to the node that
//! hosts the session with a single-use moderation token on the caller's behalf; a queued track's
//! file (an audio attachment of the group) goes with it as the request body, so the node needs no
//! way back to the control plane. The node answers the new state, and reports it as a session
//! event too, which becomes the group event `music`.

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, Json, Path};
use super::participants::{relay_to, session_of};
use crate::store::object_key;
use axum::extract::State;
use protocol::api::{Role, SessionKind};
use protocol::ids::SessionId;
use protocol::music::{MusicAction, MusicState};
use std::time::Duration;

/// How long the control plane waits for a node to carry out a music action.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it waits for a node to take a track: it decodes and encodes the whole file first.
const TRACK_TIMEOUT: Duration = Duration::from_secs(120);

#[utoipa::path(get, path = "/v1/sessions/{id}/music", tag = "sessions", summary = "The music of a session", params(("id" = protocol::ids::SessionId, Path, description = "The session")), responses((status = 200, description = "Its music as the media node last reported it", body = MusicState)))]
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<SessionId>,
) -> Result<Json<MusicState>, AppError> {
    let (session, _) = session_of(&state, caller, id).await?;
    Ok(Json(state.store.session_music(session.id).await?))
}

#[utoipa::path(post, path = "/v1/sessions/{id}/music", tag = "sessions", summary = "Play, pause, seek, skip, queue or clear the music", request_body = MusicAction, params(("id" = protocol::ids::SessionId, Path, description = "The session")), responses((status = 200, description = "The music after the action", body = MusicState)))]
pub(super) async fn control(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<SessionId>,
    Json(action): Json<MusicAction>,
) -> Result<Json<MusicState>, AppError> {
    action
        .validate()
        .map_err(|e| AppError::InvalidInput(e.into()))?;
    let (session, member) = session_of(&state, caller, id).await?;
    if member.role != Role::Admin && !member.group.settings.music_sharing {
        return Err(AppError::Forbidden(
            "only a group admin may control the music (the group does not share music)",
        ));
    }
    if session.kind != SessionKind::Music {
        return Err(AppError::Conflict("the session is not a music session"));
    }
    let (base, token) = relay_to(&state, caller, &session)?;
    let base = format!("{base}/music");
    let request = match &action {
        MusicAction::Queue { track } => {
            let file = state
                .store
                .attachment_for(*track, caller.user)
                .await?
                .filter(|a| a.group == session.group)
                // An upload no message took yet is its uploader's alone.
                .filter(|a| a.message_id.is_some() || a.uploader == caller.user)
                .ok_or(AppError::NotFound("no such file in the group"))?;
            if !file.content_type.starts_with("audio/") {
                return Err(AppError::InvalidInput(format!(
                    "{} is {}, not an audio file",
                    file.name, file.content_type
                )));
            }
            let key = object_key(file.group, file.id);
            let bytes = state
                .attachments
                .store
                .get(&key, None)
                .await
                .map_err(AppError::internal)?
                .ok_or(AppError::NotFound("no such file in the group"))?;
            state
                .http
                .post(format!("{base}/tracks"))
                .query(&[
                    ("track", file.id.to_string()),
                    ("name", file.name.clone()),
                    ("type", file.content_type.clone()),
                ])
                .header(reqwest::header::CONTENT_LENGTH, file.size)
                .body(reqwest::Body::wrap_stream(bytes))
                .timeout(TRACK_TIMEOUT)
        }
        other => state.http.post(base).json(other).timeout(NODE_TIMEOUT),
    };
    let res = request.bearer_auth(token).send().await.map_err(|e| {
        tracing::warn!(error = %e, node = %session.node, "music relay failed");
        AppError::BadGateway("the session's media node is not reachable")
    })?;
    let status = res.status().as_u16();
    if (200..300).contains(&status) {
        let music: MusicState = res.json().await.map_err(|e| {
            tracing::warn!(error = %e, node = %session.node, "a node's music answer");
            AppError::BadGateway("the media node answered something else")
        })?;
        return Ok(Json(music));
    }
    // The node's refusal says why; it is safe to show (the node words it for clients).
    let detail = res
        .json::<protocol::api::Problem>()
        .await
        .ok()
        .and_then(|p| p.detail);
    match status {
        404 => Err(AppError::Conflict(
            "nobody is in the session on its media node: join it first",
        )),
        409 | 422 => Err(AppError::Refused {
            status,
            detail: detail.unwrap_or_else(|| "the media node refused the action".into()),
        }),
        _ => {
            tracing::warn!(status, node = %session.node, "media node refused a music action");
            Err(AppError::BadGateway("the media node refused the request"))
        }
    }
}
