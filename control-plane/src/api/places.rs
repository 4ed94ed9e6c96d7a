//! Places of a group (geofences): `GET`/`POST /v1/groups/{id}/places`, `PATCH`/`DELETE
//! /v1/groups/{id}/places/{place}`; members are told (`place_saved`, `place_removed`) and so are
//! the location engines, which then fetch the group's places through
//! `GET /v1/location/places?group=` with the location token of a member sharing with the group.
//!
//! Any member adds places; their creator or a group admin changes or removes them. A shape is
//! checked by the location engine's own rules (`location_engine::places::Place::new`), so a
//! place stored is a place every engine takes.

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, Json, Path, bearer};
use super::groups::member_of;
use crate::clock::Now;
use crate::store::{PlaceRefusal, PlaceRow};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use location_engine::places::{Place, Shape};
use protocol::api::Role;
use protocol::ids::{GroupId, PlaceId};
use protocol::location::{
    GroupPlaces, MAX_PLACE_NAME, NewPlace, PlaceChanges, PlaceShape, PlaceView, PlacesChanged,
};
use uuid::Uuid;

/// A place's dwell when none is given, seconds.
pub(crate) const DEFAULT_DWELL_S: u32 = 60;

#[utoipa::path(get, path = "/v1/groups/{id}/places", tag = "location", summary = "The group's places", params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 200, description = "Its places, oldest first", body = Vec<PlaceView>)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
) -> Result<Json<Vec<PlaceView>>, AppError> {
    member_of(&state, group, caller).await?;
    let (_, places) = state.store.places(group).await?;
    Ok(Json(places.iter().map(PlaceRow::view).collect()))
}

#[utoipa::path(post, path = "/v1/groups/{id}/places", tag = "location", summary = "Add a place to the group", request_body = NewPlace, params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 201, description = "The place", body = PlaceView)))]
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
    Json(new): Json<NewPlace>,
) -> Result<(StatusCode, Json<PlaceView>), AppError> {
    let member = member_of(&state, group, caller).await?;
    let now = Now::read();
    let place = PlaceRow {
        id: PlaceId::from_uuid(Uuid::now_v7()),
        group,
        name: checked_name(&new.name)?,
        dwell_ms: checked(&new.shape, new.dwell_s.unwrap_or(DEFAULT_DWELL_S))?,
        shape: new.shape,
        created_by: caller.user,
        created_at_ms: now.ms,
    };
    save(&state, &place, caller, member.role, now).await?;
    Ok((StatusCode::CREATED, Json(place.view())))
}

#[utoipa::path(patch, path = "/v1/groups/{id}/places/{place}", tag = "location", summary = "Change a place (its creator or an admin)", request_body = PlaceChanges, params(("id" = protocol::ids::GroupId, Path, description = "The group"), ("place" = protocol::ids::PlaceId, Path, description = "The place")), responses((status = 200, description = "The place as it is now", body = PlaceView)))]
pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, id)): Path<(GroupId, PlaceId)>,
    Json(changes): Json<PlaceChanges>,
) -> Result<Json<PlaceView>, AppError> {
    let member = member_of(&state, group, caller).await?;
    let mut place = state
        .store
        .place(group, id)
        .await?
        .ok_or(AppError::NotFound("no such place in the group"))?;
    if let Some(name) = &changes.name {
        place.name = checked_name(name)?;
    }
    if let Some(shape) = changes.shape {
        place.shape = shape;
    }
    let dwell_s = changes
        .dwell_s
        .unwrap_or(u32::try_from(place.dwell_ms / 1000).unwrap_or(DEFAULT_DWELL_S));
    place.dwell_ms = checked(&place.shape, dwell_s)?;
    save(&state, &place, caller, member.role, Now::read()).await?;
    Ok(Json(place.view()))
}

#[utoipa::path(delete, path = "/v1/groups/{id}/places/{place}", tag = "location", summary = "Remove a place (its creator or an admin)", params(("id" = protocol::ids::GroupId, Path, description = "The group"), ("place" = protocol::ids::PlaceId, Path, description = "The place")), responses((status = 204, description = "Removed")))]
pub(super) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, id)): Path<(GroupId, PlaceId)>,
) -> Result<StatusCode, AppError> {
    let member = member_of(&state, group, caller).await?;
    let admin = member.role == Role::Admin;
    let done = state
        .store
        .remove_place(group, id, caller.user, admin, Now::read().ms)
        .await?
        .map_err(refused)?;
    announce(&state, group, done);
    Ok(StatusCode::NO_CONTENT)
}

/// `?group=` of the engine's fetch.
#[derive(Debug, serde::Deserialize)]
pub(super) struct PlacesQuery {
    group: GroupId,
}

#[utoipa::path(get, path = "/v1/location/places", tag = "location", summary = "A group's places, for location engines (location token)", params(("group" = protocol::ids::GroupId, Query, description = "A group the token shares with")), responses((status = 200, description = "The group's places and their revision", body = GroupPlaces)))]
pub(super) async fn for_engine(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<PlacesQuery>, QueryRejection>,
) -> Result<Json<GroupPlaces>, AppError> {
    let token = bearer(&headers)?;
    let claims = state
        .tokens
        .verify_location(token, Now::read().secs())
        .map_err(|e| AppError::InvalidToken(format!("not a valid location token: {e}")))?;
    let Query(query) = query.map_err(|e| AppError::InvalidInput(e.body_text()))?;
    if !claims.groups.iter().any(|g| g.grp == query.group) {
        return Err(AppError::Forbidden(
            "the location token does not share with that group",
        ));
    }
    // The token may outlive its holder's membership by a few minutes: ask again.
    if state
        .store
        .member_group(query.group, claims.sub)
        .await?
        .is_none()
    {
        return Err(AppError::Forbidden(
            "the token's holder is no longer in the group",
        ));
    }
    let (rev, places) = state.store.places(query.group).await?;
    Ok(Json(GroupPlaces {
        group: query.group,
        rev,
        places: places.iter().map(PlaceRow::view).collect(),
    }))
}

/// Stores the place; tells the group and the location engines.
async fn save(
    state: &AppState,
    place: &PlaceRow,
    caller: Caller,
    role: Role,
    now: Now,
) -> Result<(), AppError> {
    let done = state
        .store
        .save_place(place, caller.user, role == Role::Admin, now.ms)
        .await?
        .map_err(refused)?;
    announce(state, place.group, done);
    Ok(())
}

fn announce(state: &AppState, group: GroupId, done: crate::store::PlacesChange) {
    state.fanout.event(done.event);
    state.places_notice.publish(PlacesChanged {
        group,
        rev: done.rev,
    });
}

fn refused(r: PlaceRefusal) -> AppError {
    match r {
        PlaceRefusal::NoGroup => AppError::NotFound("no such group"),
        PlaceRefusal::NoPlace => AppError::NotFound("no such place in the group"),
        PlaceRefusal::TooMany => AppError::Conflict("the group has as many places as it may"),
        PlaceRefusal::NotYours => {
            AppError::Forbidden("only the place's creator or a group admin may do that")
        }
    }
}

fn checked_name(name: &str) -> Result<String, AppError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_PLACE_NAME {
        return Err(AppError::InvalidInput(format!(
            "a place's name has 1 to {MAX_PLACE_NAME} characters"
        )));
    }
    Ok(name.to_owned())
}

/// The dwell in milliseconds, once the shape and the dwell pass the engine's rules.
fn checked(shape: &PlaceShape, dwell_s: u32) -> Result<i64, AppError> {
    let dwell_ms = i64::from(dwell_s) * 1000;
    Shape::from_wire(shape)
        .and_then(|s| Place::new(&s, dwell_ms))
        .map_err(|e| AppError::InvalidInput(e.to_string()))?;
    Ok(dwell_ms)
}
