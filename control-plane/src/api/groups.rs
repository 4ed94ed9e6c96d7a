//! Groups and invites: `POST /v1/groups`, `POST /v1/groups/{id}/invites` (admins only) and
//! `POST /v1/invites/{code}/accept`.

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, Json, Path};
use crate::clock::{Now, rfc3339};
use crate::domain::GroupName;
use crate::store::{GroupRow, MemberGroup};
use crate::tokens::random_b64;
use axum::extract::State;
use axum::http::StatusCode;
use protocol::api::{AcceptInviteResponse, CreateGroupRequest, GroupView, InviteView, Role};
use protocol::ids::GroupId;
use uuid::Uuid;

/// How long an invite stays valid.
const INVITE_TTL_SECS: u64 = 7 * 24 * 3600;
/// Random bytes in an invite code (144 bits; 24 base64url characters).
const INVITE_CODE_BYTES: usize = 18;
/// Longest invite code looked up; longer ones cannot exist.
const MAX_INVITE_CODE_LEN: usize = 64;

pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateGroupRequest>,
) -> Result<(StatusCode, Json<GroupView>), AppError> {
    let name = GroupName::parse(&req.name)?;
    let group = GroupRow {
        id: GroupId::from_uuid(Uuid::now_v7()),
        name: name.as_str().to_owned(),
        created_by: caller.user,
        created_at_ms: Now::read().ms,
    };
    state.store.insert_group(&group).await?;
    let view = view(MemberGroup {
        group,
        role: Role::Admin,
    });
    Ok((StatusCode::CREATED, Json(view)))
}

pub(super) async fn invite(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
) -> Result<(StatusCode, Json<InviteView>), AppError> {
    let membership = member_of(&state, group, caller).await?;
    if membership.role != Role::Admin {
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
    state
        .store
        .add_member(invite.group, caller.user, Role::Member, now.ms)
        .await?;
    let membership = member_of(&state, invite.group, caller).await?;
    Ok(Json(AcceptInviteResponse {
        group: view(membership),
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
        .ok_or(AppError::NotFound("no such group"))
}

fn view(m: MemberGroup) -> GroupView {
    GroupView {
        id: m.group.id,
        name: m.group.name,
        created_by: m.group.created_by,
        created_at: rfc3339(m.group.created_at_ms),
        role: m.role,
    }
}
