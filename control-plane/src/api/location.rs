//! `POST /v1/location/token`: a location token for the groups the caller chooses to share with
//! (DESIGN.md §3). Each group must be one the caller is in, with location sharing allowed by the
//! group's settings, and the caller's own privacy setting must allow sharing. The token lives at
//! most [`MAX_TOKEN_SECS`]; sharing ends at the earlier of the chosen `until` and the token's
//! expiry, so a client that stops renewing stops sharing.

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, Json};
use super::groups::member_of;
use crate::clock::{Now, rfc3339};
use axum::extract::State;
use protocol::location::{
    Grant, GrantView, LocationToken, LocationTokenRequest, MAX_GRANTS, MAX_TOKEN_SECS,
};
use std::collections::HashSet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[utoipa::path(post, path = "/v1/location/token", tag = "location", summary = "Get a location token to share with some groups", request_body = LocationTokenRequest, responses((status = 200, description = "The token, its expiry and the location engine's stream", body = LocationToken)))]
pub(super) async fn token(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<LocationTokenRequest>,
) -> Result<Json<LocationToken>, AppError> {
    if req.groups.is_empty() || req.groups.len() > MAX_GRANTS {
        return Err(AppError::InvalidInput(format!(
            "name 1 to {MAX_GRANTS} groups to share with"
        )));
    }
    let mut seen = HashSet::new();
    if !req.groups.iter().all(|g| seen.insert(g.group)) {
        return Err(AppError::InvalidInput("a group is named twice".into()));
    }
    let now = Now::read();
    let account = state
        .store
        .account(caller.user)
        .await?
        .ok_or(AppError::InvalidToken("the account is gone".into()))?;
    if !account.settings.privacy.share_location {
        return Err(AppError::Forbidden(
            "location sharing is off in your privacy settings",
        ));
    }
    let mut grants = Vec::with_capacity(req.groups.len());
    let mut views = Vec::with_capacity(req.groups.len());
    for share in &req.groups {
        let until = match &share.until {
            None => None,
            Some(text) => {
                let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                    AppError::InvalidInput(format!("until {text:?} is not an RFC 3339 time"))
                })?;
                let secs = u64::try_from(t.unix_timestamp()).unwrap_or(0);
                if secs <= now.secs() {
                    return Err(AppError::InvalidInput(format!("until {text:?} has passed")));
                }
                Some(secs)
            }
        };
        let membership = member_of(&state, share.group, caller).await?;
        if !membership.group.settings.location_sharing {
            return Err(AppError::Forbidden(
                "a group named does not allow location sharing",
            ));
        }
        let near_m = membership.group.settings.proximity_radius_m;
        grants.push(Grant {
            grp: share.group,
            precision: share.precision,
            until,
            near_m,
        });
        views.push(GrantView {
            group: share.group,
            precision: share.precision,
            until: until.map(|u| rfc3339(secs_to_ms(u))),
            near_m,
        });
    }
    // No longer than the latest chosen end: a token past every grant would share nothing.
    let latest = grants
        .iter()
        .map(|g| g.until.unwrap_or(u64::MAX))
        .max()
        .unwrap_or(u64::MAX);
    let exp = (now.secs() + MAX_TOKEN_SECS).min(latest);
    let token = state.tokens.location(caller.user, grants, now.secs(), exp);
    Ok(Json(LocationToken {
        token,
        expires_at: rfc3339(secs_to_ms(exp)),
        stream_url: state.location_url.clone(),
        groups: views,
    }))
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}
