//! Messages and markers: `POST/GET /v1/groups/{id}/messages`,
//! `PATCH/DELETE /v1/groups/{id}/messages/{message}` and `POST /v1/groups/{id}/markers`.
//!
//! A send goes through the message writer ([`crate::writer`]) and is answered once it is
//! committed and fanned out: 201 the first time, 200 with the original for a repeated
//! `client_msg_id`. Edits and deletes are events of the group's log too.

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, Json, Path};
use super::groups::member_of;
use crate::clock::Now;
use crate::domain;
use crate::fanout::Item;
use crate::store::{Deleted, MessageRefusal, NewMessage, Posted};
use crate::writer::WriteError;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::StatusCode;
use protocol::api::{
    DeliveryStatus, EditMessageRequest, MAX_MESSAGE_ATTACHMENTS, Markers, MarkersRequest,
    MessagePage, MessageView, SendMessageRequest,
};
use protocol::ids::{GroupId, UserId};
use protocol::realtime::{EventData, GroupEvent};
use serde::Deserialize;

/// Messages per page unless `limit` says otherwise.
const DEFAULT_LIMIT: u64 = 50;
/// The most messages per page.
const MAX_LIMIT: u64 = 200;
const NO_MESSAGE: &str = "no such message";

#[utoipa::path(post, path = "/v1/groups/{id}/messages", tag = "messages", summary = "Send a message", request_body = SendMessageRequest, params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 201, description = "Sent", body = MessageView), (status = 200, description = "Sent before with this client_msg_id: the original", body = MessageView)))]
pub(super) async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
    Json(req): Json<SendMessageRequest>,
) -> Result<(StatusCode, Json<MessageView>), AppError> {
    if req.attachments.len() > MAX_MESSAGE_ATTACHMENTS {
        return Err(AppError::InvalidInput(format!(
            "a message has at most {MAX_MESSAGE_ATTACHMENTS} attachments"
        )));
    }
    let body = if req.body.is_empty() && !req.attachments.is_empty() {
        String::new()
    } else {
        domain::message_body(&req.body)?
    };
    let message = NewMessage {
        sender: caller.user,
        client_msg_id: domain::client_msg_id(&req.client_msg_id)?,
        body,
        attachments: req.attachments,
        now_ms: Now::read().ms,
    };
    let posted = state
        .writer
        .post(group, message)
        .await
        .map_err(|e| match e {
            WriteError::Stopped => AppError::NotReady,
            WriteError::Database(e) => AppError::internal(e),
        })?;
    match posted {
        Posted::New(GroupEvent {
            data: EventData::Message { mut message },
            ..
        }) => {
            state.push_queue.wake(group);
            message.status = Some(DeliveryStatus::Sent);
            Ok((StatusCode::CREATED, Json(message)))
        }
        Posted::Existing(mut message) => {
            with_status(
                &state,
                group,
                caller.user,
                std::slice::from_mut(&mut message),
            )
            .await?;
            Ok((StatusCode::OK, Json(message)))
        }
        Posted::BadAttachments => Err(AppError::InvalidInput(
            "each attachment must be your upload to this group that no message has yet".into(),
        )),
        Posted::New(_) | Posted::NotMember => Err(AppError::NotFound("no such group")),
    }
}

/// `before`, `after` and `limit` of `GET .../messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u64>,
}

#[utoipa::path(get, path = "/v1/groups/{id}/messages", tag = "messages", summary = "A page of messages, oldest first", params(("id" = protocol::ids::GroupId, Path, description = "The group"), ("before" = Option<u64>, Query, description = "Messages before this id"), ("after" = Option<u64>, Query, description = "Messages after this id"), ("limit" = Option<u64>, Query, description = "1 to 200 (default 50)")), responses((status = 200, description = "Page", body = MessagePage)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<MessagePage>, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidInput(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AppError::InvalidInput(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let cursor = |v: Option<u64>| -> Result<Option<i64>, AppError> {
        v.map(|v| {
            i64::try_from(v).map_err(|_| AppError::InvalidInput("cursor out of range".into()))
        })
        .transpose()
    };
    let (before, after) = (cursor(q.before)?, cursor(q.after)?);
    member_of(&state, group, caller).await?;
    let (mut messages, has_more) = state
        .store
        .messages(group, before, after, i64::try_from(limit).unwrap_or(50))
        .await?;
    with_status(&state, group, caller.user, &mut messages).await?;
    Ok(Json(MessagePage { messages, has_more }))
}

#[utoipa::path(patch, path = "/v1/groups/{id}/messages/{message}", tag = "messages", summary = "Edit your message", request_body = EditMessageRequest, params(("id" = protocol::ids::GroupId, Path, description = "The group"), ("message" = u64, Path, description = "The message id")), responses((status = 200, description = "Edited", body = MessageView)))]
pub(super) async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, message)): Path<(GroupId, u64)>,
    Json(req): Json<EditMessageRequest>,
) -> Result<Json<MessageView>, AppError> {
    let body = domain::message_body(&req.body)?;
    let id = i64::try_from(message).map_err(|_| AppError::NotFound(NO_MESSAGE))?;
    let event = state
        .store
        .edit_message(group, caller.user, id, &body, Now::read().ms)
        .await?
        .map_err(refused)?;
    state.fanout.event(event);
    let (mut messages, _) = state
        .store
        .messages(group, Some(id + 1), Some(id - 1), 1)
        .await?;
    with_status(&state, group, caller.user, &mut messages).await?;
    messages
        .pop()
        .map(Json)
        .ok_or(AppError::NotFound(NO_MESSAGE))
}

#[utoipa::path(delete, path = "/v1/groups/{id}/messages/{message}", tag = "messages", summary = "Delete a message (sender or admin)", params(("id" = protocol::ids::GroupId, Path, description = "The group"), ("message" = u64, Path, description = "The message id")), responses((status = 204, description = "Deleted")))]
pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((group, message)): Path<(GroupId, u64)>,
) -> Result<StatusCode, AppError> {
    let id = i64::try_from(message).map_err(|_| AppError::NotFound(NO_MESSAGE))?;
    let deleted = state
        .store
        .delete_message(group, caller.user, id, Now::read().ms)
        .await?
        .map_err(refused)?;
    if let Some(Deleted { event, erased }) = deleted {
        state.fanout.event(event);
        super::attachments::forget(&state, &erased).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/groups/{id}/markers", tag = "messages", summary = "Move your read and delivered markers", request_body = MarkersRequest, params(("id" = protocol::ids::GroupId, Path, description = "The group")), responses((status = 200, description = "Markers", body = Markers)))]
pub(super) async fn markers(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
    Json(req): Json<MarkersRequest>,
) -> Result<Json<Markers>, AppError> {
    advance_markers(&state, group, caller.user, req)
        .await?
        .map(Json)
        .ok_or(AppError::NotFound("no such group"))
}

/// Moves a member's markers and tells the group; `None` if they are not in it.
pub(super) async fn advance_markers(
    state: &AppState,
    group: GroupId,
    user: UserId,
    req: MarkersRequest,
) -> Result<Option<Markers>, AppError> {
    let clamp = |v: Option<u64>| i64::try_from(v.unwrap_or(0)).unwrap_or(i64::MAX);
    let Some((read, delivered)) = state
        .store
        .advance_markers(group, user, clamp(req.read), clamp(req.delivered))
        .await?
    else {
        return Ok(None);
    };
    let markers = Markers {
        read_upto: u64::try_from(read).unwrap_or(0),
        delivered_upto: u64::try_from(delivered).unwrap_or(0),
    };
    state.fanout.publish(Item::Markers {
        group,
        user,
        read_upto: markers.read_upto,
        delivered_upto: markers.delivered_upto,
    });
    Ok(Some(markers))
}

/// Fills in the delivery status of `viewer`'s own messages: read when every other member has
/// read it, delivered when it is on every other member's device, sent otherwise.
async fn with_status(
    state: &AppState,
    group: GroupId,
    viewer: UserId,
    messages: &mut [MessageView],
) -> Result<(), AppError> {
    if !messages.iter().any(|m| m.sender == viewer) {
        return Ok(());
    }
    let others = state.store.others_markers(group, viewer).await?;
    for m in messages.iter_mut().filter(|m| m.sender == viewer) {
        let id = i64::try_from(m.id).unwrap_or(i64::MAX);
        m.status = Some(match others {
            Some((read, _)) if read >= id => DeliveryStatus::Read,
            Some((_, delivered)) if delivered >= id => DeliveryStatus::Delivered,
            _ => DeliveryStatus::Sent,
        });
    }
    Ok(())
}

fn refused(refusal: MessageRefusal) -> AppError {
    match refusal {
        MessageRefusal::NoGroup => AppError::NotFound("no such group"),
        MessageRefusal::NoMessage => AppError::NotFound(NO_MESSAGE),
        MessageRefusal::NotYours => {
            AppError::Forbidden("only its sender (or an admin, to delete) can change a message")
        }
        MessageRefusal::Deleted => AppError::Gone("the message was deleted"),
    }
}
