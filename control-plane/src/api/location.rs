//! `POST /v1/location/token`: a location token for the groups the caller chooses to share with
//! (DESIGN.md §3). Each group must be one the caller is in, with location sharing allowed by the
//! group's settings, and the caller's own privacy setting must allow sharing. The token lives at
//! most [`MAX_TOKEN_SECS`]; sharing ends at the earlier of the chosen `until` and the token's
//! expiry, so a client that stops renewing stops sharing.
//!
//! `GET`/`DELETE /v1/users/me/location-history`: the caller's own fixes, stored only while their
//! `privacy.location_history_days` is above 0 and only for that many days.

use super::error::AppError;
use super::extract::{Caller, Json};
use super::groups::member_of;
use super::{AppState, Shared};
use crate::clock::{Now, rfc3339};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use protocol::location::{
    Grant, GrantView, HistoryPoint, LocationHistory, LocationToken, LocationTokenRequest,
    MAX_GRANTS, MAX_TOKEN_SECS,
};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Weak;
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
        let until = match time_param("until", share.until.as_deref())? {
            None => None,
            Some(ms) => {
                let secs = u64::try_from(ms.div_euclid(1000)).unwrap_or(0);
                if secs <= now.secs() {
                    let text = share.until.as_deref().unwrap_or_default();
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
            places: state.store.places_rev(share.group).await?,
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
    let hist = account.settings.privacy.location_history_days > 0;
    let token = state
        .tokens
        .location(caller.user, grants, hist, now.secs(), exp);
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

/// Points in one page of `GET /v1/users/me/location-history` unless `limit` says fewer.
const HISTORY_PAGE: u32 = 500;
/// The most points in one page.
const MAX_HISTORY_PAGE: u32 = 5_000;

/// `from`, `to` and `limit` of `GET /v1/users/me/location-history`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
}

fn time_param(name: &str, text: Option<&str>) -> Result<Option<i64>, AppError> {
    text.map(|text| {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
            .map_err(|_| AppError::InvalidInput(format!("{name} {text:?} is not an RFC 3339 time")))
    })
    .transpose()
}

#[utoipa::path(get, path = "/v1/users/me/location-history", tag = "location", summary = "Your own location history, oldest first (kept only with privacy.location_history_days > 0)", params(("from" = Option<String>, Query, description = "RFC 3339; points at or after (default: as old as kept)"), ("to" = Option<String>, Query, description = "RFC 3339; points before (default: now)"), ("limit" = Option<u32>, Query, description = "1 to 5000 (default 500)")), responses((status = 200, description = "Points, and the next page's from", body = LocationHistory)))]
pub(super) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<LocationHistory>, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidInput(e.body_text()))?;
    let limit = q.limit.unwrap_or(HISTORY_PAGE);
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        return Err(AppError::InvalidInput(format!(
            "limit must be 1 to {MAX_HISTORY_PAGE}"
        )));
    }
    let now = Now::read().ms;
    let from = time_param("from", q.from.as_deref())?.unwrap_or(i64::MIN);
    // A device clock a little ahead is stored; `to` defaults past it.
    let to = time_param("to", q.to.as_deref())?.unwrap_or(i64::MAX);
    let mut rows = state
        .store
        .location_history(caller.user, from, to, limit + 1, now)
        .await?;
    let next = (rows.len() > limit as usize).then(|| {
        rows.truncate(limit as usize);
        rfc3339(rows[rows.len() - 1].t_ms + 1)
    });
    Ok(Json(LocationHistory {
        points: rows
            .into_iter()
            .map(|r| HistoryPoint {
                at: rfc3339(r.t_ms),
                lat: r.lat,
                lon: r.lon,
                acc: r.acc,
                alt: r.alt,
                speed: r.speed,
                heading: r.heading,
            })
            .collect(),
        next,
    }))
}

#[utoipa::path(delete, path = "/v1/users/me/location-history", tag = "location", summary = "Delete your location history (keeping it stays as set)", responses((status = 204, description = "Deleted")))]
pub(super) async fn delete_history(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<StatusCode, AppError> {
    state.store.delete_location_history(caller.user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// How often stored fixes past their owner's retention are deleted.
const HISTORY_SWEEP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes stored fixes past their owner's retention every [`HISTORY_SWEEP`] while the control
/// plane lives (reads never return them in between: they filter by the retention too).
pub(crate) fn spawn_history_sweeper(shared: Weak<Shared>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HISTORY_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match shared.store.purge_location_history(Now::read().ms).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "location history past its retention"),
                Err(e) => tracing::warn!(error = %e, "sweeping location history failed"),
            }
        }
    });
}
