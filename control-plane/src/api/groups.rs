//! Groups, members and invites:
//! `POST/GET /v1/groups`, `GET/PATCH/DELETE /v1/groups/{id}`, `POST /v1/groups/{id}/join`
//! (public groups), `GET /v1/groups/{id}/members`, `PATCH/DELETE /v1/groups/{id}/members/{user}`
//! (role; leave or remove), `POST /v1/groups/{id}/invites` and `POST /v1/invites/{code}/accept`.
//!
//! Rights: members read; admins change the group, change roles, remove members and delete the
//! group; who may invite is a setting. A group always keeps an admin while it has members.
//! Each change is an event of the group's log, fanned out after it commits.

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, Json, Path};
use crate::clock::{Now, rfc3339};
use crate::domain::{self, GroupName};
use crate::store::{GroupChanges, GroupRow, MemberGroup, MemberRefusal};
use crate::tokens::random_b64;
use axum::extract::State;
use axum::http::StatusCode;
use protocol::api::{
    AcceptInviteResponse, ChangeRoleRequest, CreateGroupRequest, GroupList, GroupPresence,
    GroupView, InviteView, JoinPermission, MemberList, MemberPresence, MemberView, Privacy, Role,
    UpdateGroupRequest,
};
use protocol::ids::{GroupId, UserId};
use protocol::realtime::{EventData, GroupEvent, PresenceStatus};
use uuid::Uuid;

/// How long an invite stays valid.
const INVITE_TTL_SECS: u64 = 7 * 24 * 3600;
/// Random bytes in an invite code (144 bits; 24 base64url characters).
const INVITE_CODE_BYTES: usize = 18;
/// Longest invite code looked up; longer ones cannot exist.
const MAX_INVITE_CODE_LEN: usize = 64;
const NO_GROUP: &str = "no such group";

#[utoipa::path(post, path = "/v1/groups", tag = "groups", summary = "Create a group", request_body = CreateGroupRequest, responses((status = 201, description = "Group", body = GroupView)))]
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateGroupRequest>,
) -> Result<(StatusCode, Json<GroupView>), AppError> {
    let name = GroupName::parse(&req.name)?;
    let id = GroupId::from_uuid(Uuid::now_v7());
    let row = GroupRow::new(id, name.as_str().to_owned(), caller.user, Now::read().ms);
    let event = state.store.insert_group(&row).await?;
    state.fanout.event(event);
    let group = member_of(&state, id, caller).await?;
    Ok((StatusCode::CREATED, Json(view(&group))))
}

#[utoipa::path(get, path = "/v1/groups", tag = "groups", summary = "Your groups", responses((status = 200, description = "Groups", body = GroupList)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<GroupList>, AppError> {
    let groups = state.store.groups_of(caller.user).await?;
    Ok(Json(GroupList {
        groups: groups.iter().map(view).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups", summary = "A group of yours", params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 200, description = "Group", body = GroupView)))]
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
) -> Result<Json<GroupView>, AppError> {
    Ok(Json(view(&member_of(&state, group, caller).await?)))
}

#[utoipa::path(patch, path = "/v1/groups/{id}", tag = "groups", summary = "Change a group (admins)", request_body = UpdateGroupRequest, params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 200, description = "Group", body = GroupView)))]
pub(super) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
    Json(req): Json<UpdateGroupRequest>,
) -> Result<Json<GroupView>, AppError> {
    let settings = req.settings.unwrap_or_default();
    let changes = GroupChanges {
        name: req
            .name
            .as_deref()
            .map(|n| GroupName::parse(n).map(|n| n.as_str().to_owned()))
            .transpose()?,
        description: req
            .description
            .as_deref()
            .map(domain::group_description)
            .transpose()?,
        avatar_url: req
            .avatar_url
            .as_deref()
            .map(domain::avatar_url)
            .transpose()?,
        privacy: settings.privacy,
        join_permission: settings.join_permission,
        location_sharing: settings.location_sharing,
        music_sharing: settings.music_sharing,
        proximity_radius_m: settings
            .proximity_radius_m
            .map(domain::proximity_radius)
            .transpose()?,
    };
    let (updated, event) = state
        .store
        .update_group(group, caller.user, &changes, Now::read().ms, view)
        .await?
        .map_err(refused)?;
    state.fanout.event(event);
    Ok(Json(view(&updated)))
}

#[utoipa::path(delete, path = "/v1/groups/{id}", tag = "groups", summary = "Delete a group (admins)", params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 204, description = "Deleted")))]
pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
) -> Result<StatusCode, AppError> {
    let change = state
        .store
        .delete_group(group, caller.user, Now::read().ms)
        .await?;
    publish(&state, change.map_err(refused)?).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Joins a public group; a private one does not exist for non-members.
#[utoipa::path(post, path = "/v1/groups/{id}/join", tag = "groups", summary = "Join a public group", params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 200, description = "Group", body = GroupView)))]
pub(super) async fn join(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
) -> Result<Json<GroupView>, AppError> {
    match state.store.group_privacy(group).await? {
        Some(Privacy::Public) => {}
        Some(Privacy::Private) => {
            // A member may call it (it changes nothing); anyone else learns nothing.
            return Ok(Json(view(&member_of(&state, group, caller).await?)));
        }
        None => return Err(AppError::NotFound(NO_GROUP)),
    }
    let change = state
        .store
        .add_member(group, caller.user, Now::read().ms)
        .await?;
    publish(&state, change.map_err(refused)?).await;
    Ok(Json(view(&member_of(&state, group, caller).await?)))
}

#[utoipa::path(get, path = "/v1/groups/{id}/members", tag = "groups", summary = "Members, roles and markers", params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 200, description = "Members", body = MemberList)))]
pub(super) async fn members(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
) -> Result<Json<MemberList>, AppError> {
    member_of(&state, group, caller).await?;
    let members = state.store.members(group).await?;
    Ok(Json(MemberList {
        members: members
            .into_iter()
            .map(|m| MemberView {
                user_id: m.user,
                username: m.username,
                role: m.role,
                joined_at: rfc3339(m.joined_at_ms),
                read_upto: u64::try_from(m.read_upto).unwrap_or(0),
                delivered_upto: u64::try_from(m.delivered_upto).unwrap_or(0),
            })
            .collect(),
    }))
}

/// Who of the group is connected and who is typing; "unknown" when the presence store does
/// not answer. Members who hide their presence are shown offline.
#[utoipa::path(get, path = "/v1/groups/{id}/presence", tag = "groups", summary = "Who is online and who is typing", params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 200, description = "Presence", body = GroupPresence)))]
pub(super) async fn presence(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
) -> Result<Json<GroupPresence>, AppError> {
    member_of(&state, group, caller).await?;
    let members = state.store.presence_visibility(group).await?;
    let now = Now::read().ms;
    let users: Vec<UserId> = members.iter().map(|(u, _)| *u).collect();
    let online = state.presence.online(&users, now).await.ok();
    let members = members
        .iter()
        .enumerate()
        .map(|(i, (user, shown))| MemberPresence {
            user_id: *user,
            status: match (&online, shown) {
                (_, false) => PresenceStatus::Offline,
                (None, true) => PresenceStatus::Unknown,
                (Some(online), true) if online.get(i).copied().unwrap_or(false) => {
                    PresenceStatus::Online
                }
                (Some(_), true) => PresenceStatus::Offline,
            },
        })
        .collect();
    let typing = state.presence.typing(group, now).await.ok().map(|mut t| {
        t.retain(|u| users.contains(u));
        t.sort();
        t
    });
    Ok(Json(GroupPresence { members, typing }))
}

/// Promotes or demotes a member (admins).
#[utoipa::path(patch, path = "/v1/groups/{id}/members/{user}", tag = "groups", summary = "Promote or demote (admins)", request_body = ChangeRoleRequest, params(("id" = protocol::ids::GroupId, Path, description = "The group"), ("user" = protocol::ids::UserId, Path, description = "The member")), responses((status = 204, description = "Changed")))]
pub(super) async fn set_role(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, user)): Path<(GroupId, UserId)>,
    Json(req): Json<ChangeRoleRequest>,
) -> Result<StatusCode, AppError> {
    let change = state
        .store
        .set_role(group, caller.user, user, req.role, Now::read().ms)
        .await?;
    publish(&state, change.map_err(refused)?).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Leaves the group (the caller's own id) or removes a member (admins).
#[utoipa::path(delete, path = "/v1/groups/{id}/members/{user}", tag = "groups", summary = "Leave, or remove a member (admins)", params(("id" = protocol::ids::GroupId, Path, description = "The group"), ("user" = protocol::ids::UserId, Path, description = "The member")), responses((status = 204, description = "Removed")))]
pub(super) async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, user)): Path<(GroupId, UserId)>,
) -> Result<StatusCode, AppError> {
    let change = state
        .store
        .remove_member(group, caller.user, user, Now::read().ms)
        .await?;
    publish(&state, change.map_err(refused)?).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/groups/{id}/invites", tag = "groups", summary = "Create an invite", params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 201, description = "Invite", body = InviteView)))]
pub(super) async fn invite(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
) -> Result<(StatusCode, Json<InviteView>), AppError> {
    let membership = member_of(&state, group, caller).await?;
    let may_invite = membership.role == Role::Admin
        || membership.group.settings.join_permission == JoinPermission::Members;
    if !may_invite {
        return Err(AppError::Forbidden("only group admins can invite"));
    }
    let now = Now::read();
    let code = random_b64(INVITE_CODE_BYTES);
    let expires_at_ms = now.plus_secs_ms(INVITE_TTL_SECS);
    state
        .store
        .insert_invite(&code, group, caller.user, now.ms, expires_at_ms)
        .await?;
    let invite = InviteView {
        code,
        expires_at: rfc3339(expires_at_ms),
    };
    Ok((StatusCode::CREATED, Json(invite)))
}

#[utoipa::path(post, path = "/v1/invites/{code}/accept", tag = "groups", summary = "Accept an invite", params(("code" = String, Path, description = "The invite code")), responses((status = 200, description = "Joined", body = AcceptInviteResponse)))]
pub(super) async fn accept(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<AcceptInviteResponse>, AppError> {
    const UNKNOWN: &str = "no such invite";
    let plausible = code.len() <= MAX_INVITE_CODE_LEN
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plausible {
        return Err(AppError::NotFound(UNKNOWN));
    }
    let invite = state
        .store
        .invite(&code)
        .await?
        .ok_or(AppError::NotFound(UNKNOWN))?;
    let now = Now::read();
    if invite.expires_at_ms <= now.ms {
        return Err(AppError::Gone("the invite has expired"));
    }
    let change = state
        .store
        .add_member(invite.group, caller.user, now.ms)
        .await?;
    publish(&state, change.map_err(|_| AppError::NotFound(UNKNOWN))?).await;
    let membership = member_of(&state, invite.group, caller).await?;
    Ok(Json(AcceptInviteResponse {
        group: view(&membership),
    }))
}

/// The group as the caller sees it; 404 when it does not exist or the caller is not a member.
pub(super) async fn member_of(
    state: &AppState,
    group: GroupId,
    caller: Caller,
) -> Result<MemberGroup, AppError> {
    state
        .store
        .member_group(group, caller.user)
        .await?
        .ok_or(AppError::NotFound(NO_GROUP))
}

/// Fans a change out; a deleted group's attachment bytes go too.
async fn publish(state: &AppState, event: Option<GroupEvent>) {
    if let Some(event) = event {
        let deleted = matches!(event.data, EventData::GroupDeleted).then_some(event.group);
        state.fanout.event(event);
        if let Some(group) = deleted {
            super::attachments::forget_group(state, group).await;
        }
    }
}

fn refused(refusal: MemberRefusal) -> AppError {
    match refusal {
        MemberRefusal::NoGroup => AppError::NotFound(NO_GROUP),
        MemberRefusal::NotAdmin => AppError::Forbidden("only group admins can do this"),
        MemberRefusal::NoMember => AppError::NotFound("no such member"),
        MemberRefusal::LastAdmin => {
            AppError::Conflict("the group must keep an admin: make another member admin first")
        }
    }
}

pub(super) fn view(m: &MemberGroup) -> GroupView {
    GroupView {
        id: m.group.id,
        name: m.group.name.clone(),
        created_by: m.group.created_by,
        created_at: rfc3339(m.group.created_at_ms),
        role: m.role,
        description: m.group.description.clone(),
        avatar_url: m.group.avatar_url.clone(),
        settings: m.group.settings,
        member_count: u64::try_from(m.member_count).unwrap_or(0),
        last_seq: u64::try_from(m.group.last_seq).unwrap_or(0),
    }
}
