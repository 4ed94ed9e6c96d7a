//! `POST /v1/calls`: starts a 1:1 call with someone who shares a group with the caller (404 for
//! anyone else, as if the account did not exist). Answers the call's id and the caller's ICE
//! servers; the signals then go over `/v1/events` (see [`super::events`]), where the callee's
//! offer carries the callee's own ICE servers. Nothing is stored: a call is its two peers.

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, Json};
use crate::clock::{Now, rfc3339};
use axum::extract::State;
use axum::http::StatusCode;
use protocol::api::{CallView, CreateCallRequest};
use uuid::Uuid;

#[utoipa::path(post, path = "/v1/calls", tag = "calls", summary = "Start a 1:1 call", request_body = CreateCallRequest, responses((status = 201, description = "Call id and ICE servers", body = CallView)))]
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateCallRequest>,
) -> Result<(StatusCode, Json<CallView>), AppError> {
    if req.to == caller.user {
        return Err(AppError::InvalidInput("a call needs someone else".into()));
    }
    if !state.store.may_see_profile(caller.user, req.to).await? {
        return Err(AppError::NotFound("no such user"));
    }
    let now = Now::read();
    let (ice_servers, expires) = state.ice.servers_for(caller.user, now.secs());
    Ok((
        StatusCode::CREATED,
        Json(CallView {
            call_id: Uuid::new_v4(),
            to: req.to,
            ice_servers,
            ice_expires_at: rfc3339(
                i64::try_from(expires.saturating_mul(1000)).unwrap_or(i64::MAX),
            ),
        }),
    ))
}
