//! Attachments: `POST /v1/groups/{id}/attachments?name=` (the body is the file, streamed),
//! `GET /v1/attachments/{id}` (members of the group; single byte ranges, `ETag`) and
//! `DELETE /v1/attachments/{id}` (an upload no message took, by its uploader or an admin).
//!
//! An upload is staged to a file while it arrives (counted against the size limit, hashed,
//! its first bytes checked against the declared type), then handed whole to the object store,
//! then recorded in SQL: a row always has its bytes. Messages take uploads through
//! `attachments` in `POST /v1/groups/{id}/messages`.

use super::error::AppError;
use super::extract::{Caller, Json, Path};
use super::groups::member_of;
use super::openapi::FileBytes;
use super::{AppState, Shared};
use crate::attachments::{self as rules, RangeAnswer, Sniffer};
use crate::blobs::{ObjectStore, Staging};
use crate::clock::Now;
use crate::store::{AttachmentRefusal, NewAttachment, object_key};
use axum::body::Body;
use axum::extract::{Query, State, rejection::QueryRejection};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use protocol::api::AttachmentView;
use protocol::ids::{AttachmentId, GroupId};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;

/// How long an upload may send nothing before it is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const NO_ATTACHMENT: &str = "no such attachment";
/// The longest an upload may take, however steadily it trickles.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(3600);
/// A staged file this old belongs to an upload cut off by a crash (no live upload lasts longer
/// than [`UPLOAD_DEADLINE`]).
const STAGED_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The object store and the upload rules, shared by the handlers.
#[derive(Debug, Clone)]
pub(crate) struct Attachments {
    pub store: Arc<dyn ObjectStore>,
    pub staging: Staging,
    pub max_bytes: u64,
    pub unsent_ttl: Duration,
    pub sweep_every: Duration,
}

impl Attachments {
    pub(crate) fn open(config: &rules::AttachmentConfig) -> anyhow::Result<Self> {
        let (store, staging): (Arc<dyn ObjectStore>, Staging) = match &config.store {
            rules::AttachmentStore::Local(dir) => (
                Arc::new(crate::blobs::LocalStore::new(dir.clone())),
                Staging::for_local(dir),
            ),
            rules::AttachmentStore::S3 { config, staging } => (
                Arc::new(
                    crate::blobs_s3::S3Store::new(config.clone()).map_err(anyhow::Error::msg)?,
                ),
                Staging::new(staging.clone()),
            ),
        };
        Ok(Self {
            store,
            staging,
            max_bytes: config.max_bytes,
            unsent_ttl: config.unsent_ttl,
            sweep_every: config.sweep_every,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
    name: Option<String>,
}

/// Removes a staged file unless it was handed on.
struct StagedFile(Option<PathBuf>);

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn status(status: StatusCode, detail: impl Into<String>) -> AppError {
    AppError::BadRequest {
        status,
        detail: detail.into(),
    }
}

#[utoipa::path(post, path = "/v1/groups/{id}/attachments", tag = "attachments", summary = "Upload a file (the body, streamed)", request_body(content((FileBytes = "image/png"), (FileBytes = "image/jpeg"), (FileBytes = "application/pdf"), (FileBytes = "text/plain")), description = "The file; Content-Type one of the allowed types"), params(("id" = protocol::ids::GroupId, Path, description = "The group"), ("name" = Option<String>, Query, description = "The file name")), responses((status = 201, description = "Stored", body = AttachmentView)))]
pub(super) async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(group): Path<GroupId>,
    query: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidInput(e.body_text()))?;
    member_of(&state, group, caller).await?;
    let name =
        rules::file_name(q.name.as_deref()).map_err(|e| AppError::InvalidInput(e.to_owned()))?;
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(media_type) = rules::media_type(declared) else {
        return Err(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {declared:?} is not taken; attachments may be {}",
                rules::allowed_types().collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let limits = &state.attachments;
    let too_large = || {
        status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("attachments are at most {} bytes", limits.max_bytes),
        )
    };
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|len| len > limits.max_bytes) {
        return Err(too_large());
    }
    if state.store.unsent_attachments(caller.user).await? >= rules::MAX_UNSENT_PER_USER {
        return Err(AppError::Conflict(
            "too many uploads wait for a message: send or delete some first",
        ));
    }

    let (mut file, path) = limits.staging.create().await.map_err(AppError::internal)?;
    let mut staged = StagedFile(Some(path.clone()));
    let mut sniffer = Sniffer::new(media_type);
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    let deadline = tokio::time::Instant::now() + UPLOAD_DEADLINE;
    loop {
        let wait =
            IDLE_TIMEOUT.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let chunk = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => {
                return Err(status(
                    StatusCode::REQUEST_TIMEOUT,
                    "the upload stalled (nothing for 30 s) or took over an hour",
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(AppError::InvalidInput(format!("the upload broke off: {e}")));
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        size += chunk.len() as u64;
        if size > limits.max_bytes {
            return Err(too_large());
        }
        sniffer.feed(&chunk);
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(AppError::internal)?;
    }
    if size == 0 {
        return Err(AppError::InvalidInput("the upload is empty".into()));
    }
    if declared_len.is_some_and(|len| len != size) {
        return Err(AppError::InvalidInput(
            "the upload is shorter than its Content-Length".into(),
        ));
    }
    if !sniffer.matches() {
        return Err(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the bytes are not {media_type}"),
        ));
    }
    file.sync_all().await.map_err(AppError::internal)?;
    drop(file);

    let id = AttachmentId::from_uuid(uuid::Uuid::now_v7());
    let key = object_key(group, id);
    let sha256 = crate::blobs_s3::hex(&hasher.finalize());
    staged.0 = None; // `put` consumes the staged file, whatever happens.
    limits
        .store
        .put(&key, &path, size, &sha256)
        .await
        .map_err(AppError::internal)?;
    let new = NewAttachment {
        id,
        group,
        uploader: caller.user,
        name,
        content_type: media_type.to_owned(),
        size,
        sha256,
        now_ms: Now::read().ms,
    };
    let recorded = state.store.insert_attachment(&new).await;
    if !matches!(recorded, Ok(true))
        && let Err(e) = limits.store.delete(&key).await
    {
        tracing::warn!(%key, error = %e, "an unrecorded upload's bytes were not deleted");
    }
    if !recorded? {
        return Err(AppError::NotFound("no such group"));
    }
    let view = AttachmentView {
        id,
        group,
        uploader: caller.user,
        name: new.name,
        content_type: new.content_type,
        size,
        sha256: new.sha256,
        created_at: crate::clock::rfc3339(new.now_ms),
        message_id: None,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/attachments/{id}"))],
        Json(view),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/attachments/{id}", tag = "attachments", summary = "A file's bytes (members of its group)", params(("id" = protocol::ids::AttachmentId, Path, description = "The attachment")), responses((status = 200, description = "The file", content_type = "application/octet-stream", body = FileBytes), (status = 206, description = "Part of the file", content_type = "application/octet-stream", body = FileBytes), (status = 304, description = "Not modified (If-None-Match)")))]
pub(super) async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<AttachmentId>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let attachment = state
        .store
        .attachment_for(id, caller.user)
        .await?
        .ok_or(AppError::NotFound(NO_ATTACHMENT))?;
    let etag = format!("\"{}\"", attachment.sha256);
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let mut common = HeaderMap::new();
    let mut set = |name, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            common.insert(name, value);
        }
    };
    set(header::ETAG, &etag);
    set(
        header::CACHE_CONTROL,
        "private, max-age=31536000, immutable",
    );
    set(header::ACCEPT_RANGES, "bytes");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; sandbox",
    );

    if text(header::IF_NONE_MATCH).is_some_and(|v| etag_matches(v, &etag)) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    let range_header = match text(header::IF_RANGE) {
        Some(if_range) if if_range.trim() != etag => None,
        _ => text(header::RANGE),
    };
    let size = attachment.size;
    let range = match rules::range(range_header, size) {
        RangeAnswer::Unsatisfiable => {
            set(header::CONTENT_RANGE, &format!("bytes */{size}"));
            return Err(AppError::RangeNotSatisfiable(common));
        }
        RangeAnswer::Full => None,
        RangeAnswer::Partial(range) => Some(range),
    };
    let key = object_key(attachment.group, id);
    let Some(stream) = state
        .attachments
        .store
        .get(&key, range)
        .await
        .map_err(AppError::internal)?
    else {
        tracing::error!(%key, "an attachment's row has no bytes");
        return Err(AppError::NotFound(NO_ATTACHMENT));
    };
    let content_type = if attachment.content_type.starts_with("text/") {
        format!("{}; charset=utf-8", attachment.content_type)
    } else {
        attachment.content_type.clone()
    };
    set(header::CONTENT_TYPE, &content_type);
    set(
        header::CONTENT_DISPOSITION,
        &rules::content_disposition(&attachment.content_type, &attachment.name),
    );
    let status = match range {
        Some(range) => {
            set(
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", range.start, range.end),
            );
            set(header::CONTENT_LENGTH, &range.len().to_string());
            StatusCode::PARTIAL_CONTENT
        }
        None => {
            set(header::CONTENT_LENGTH, &size.to_string());
            StatusCode::OK
        }
    };
    Ok((status, common, Body::from_stream(stream)).into_response())
}

/// Whether an `If-None-Match` list names `etag` (weak comparison, RFC 9110 §13.1.2).
fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[utoipa::path(delete, path = "/v1/attachments/{id}", tag = "attachments", summary = "Delete an upload no message has", params(("id" = protocol::ids::AttachmentId, Path, description = "The attachment")), responses((status = 204, description = "Deleted")))]
pub(super) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<AttachmentId>,
) -> Result<StatusCode, AppError> {
    let key = state
        .store
        .delete_attachment(id, caller.user)
        .await?
        .map_err(|refusal| match refusal {
            AttachmentRefusal::NotFound => AppError::NotFound(NO_ATTACHMENT),
            AttachmentRefusal::NotYours => {
                AppError::Forbidden("only its uploader or a group admin can delete an upload")
            }
            AttachmentRefusal::Attached => {
                AppError::Conflict("a message has this file: delete the message instead")
            }
        })?;
    forget(&state, &[key]).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the bytes of attachments whose rows are gone. A failure is logged, not returned:
/// the change is committed, and bytes without a row are never served.
pub(super) async fn forget(state: &AppState, keys: &[String]) {
    for key in keys {
        if let Err(e) = state.attachments.store.delete(key).await {
            tracing::warn!(%key, error = %e, "a deleted attachment's bytes stay behind");
        }
    }
}

/// Deletes the bytes of every attachment of a deleted group.
pub(super) async fn forget_group(state: &AppState, group: GroupId) {
    if let Err(e) = state
        .attachments
        .store
        .delete_prefix(&format!("{group}/"))
        .await
    {
        tracing::warn!(%group, error = %e, "a deleted group's attachments stay behind");
    }
}

/// Deletes uploads no message took within `unsent_ttl`, and staged files of uploads cut off by
/// a crash, every `sweep_every` while the server lives.
pub(crate) fn spawn_sweeper(shared: Weak<Shared>) {
    let Some(every) = shared.upgrade().map(|s| s.attachments.sweep_every) else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            if let Err(e) = sweep(&shared).await {
                tracing::warn!(error = %e, "sweeping unsent attachments failed");
            }
        }
    });
}

async fn sweep(shared: &Shared) -> anyhow::Result<()> {
    let attachments = &shared.attachments;
    let ttl_ms = i64::try_from(attachments.unsent_ttl.as_millis()).unwrap_or(i64::MAX);
    let before = Now::read().ms.saturating_sub(ttl_ms);
    loop {
        let stale = shared.store.stale_attachments(before, 100).await?;
        let mut deleted = 0;
        for (group, id) in &stale {
            if shared.store.delete_stale_attachment(*group, *id).await? {
                attachments.store.delete(&object_key(*group, *id)).await?;
                deleted += 1;
            }
        }
        if stale.len() < 100 || deleted == 0 {
            break;
        }
    }
    attachments.staging.sweep(STAGED_MAX_AGE).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_none_match_lists_are_read() {
        let etag = "\"abc\"";
        assert!(etag_matches("\"abc\"", etag));
        assert!(etag_matches("\"x\", W/\"abc\"", etag));
        assert!(etag_matches("*", etag));
        assert!(!etag_matches("\"abcd\"", etag));
        assert!(!etag_matches("abc", etag));
    }
}
