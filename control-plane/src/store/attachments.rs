//! Attachment metadata: one row per uploaded file, written once its bytes are stored.
//!
//! A row's `message_seq` is set when a message takes the file and the row is deleted with the
//! message (or by the uploader, or by the sweeper, while no message has it). Every change after
//! the insert runs under the group's row lock ([`GroupTx`]), so a file cannot be attached and
//! deleted at once.

use super::group_log::GroupTx;
use super::{Store, uuid_column};
use crate::clock::rfc3339;
use protocol::api::{AttachmentView, Role};
use protocol::ids::{AttachmentId, GroupId, UserId};
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// A stored upload to record.
#[derive(Debug, Clone)]
pub(crate) struct NewAttachment {
    pub id: AttachmentId,
    pub group: GroupId,
    pub uploader: UserId,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub now_ms: i64,
}

/// Why an attachment was not deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttachmentRefusal {
    /// No such attachment that the caller can see.
    NotFound,
    /// Neither the uploader nor an admin of the group.
    NotYours,
    /// A message has it: delete the message.
    Attached,
}

const COLUMNS: &str =
    "id, group_id, uploader_id, name, content_type, size, sha256, created_at, message_seq";

/// The object key of an attachment's bytes.
pub(crate) fn object_key(group: GroupId, id: AttachmentId) -> String {
    format!("{group}/{id}")
}

impl Store {
    /// Records an upload whose bytes are stored; `false` if the uploader is no longer a member
    /// of the group (or the group is gone).
    pub(crate) async fn insert_attachment(&self, new: &NewAttachment) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO attachments \
             (id, group_id, uploader_id, name, content_type, size, sha256, created_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS \
             (SELECT 1 FROM group_members WHERE group_id = $2 AND user_id = $3)",
        )
        .bind(new.id.to_string())
        .bind(new.group.to_string())
        .bind(new.uploader.to_string())
        .bind(&new.name)
        .bind(&new.content_type)
        .bind(i64::try_from(new.size).unwrap_or(i64::MAX))
        .bind(&new.sha256)
        .bind(new.now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many uploads of `user` no message has taken yet.
    pub(crate) async fn unsent_attachments(&self, user: UserId) -> Result<i64, sqlx::Error> {
        sqlx::query(
            "SELECT COUNT(*) AS n FROM attachments WHERE uploader_id = $1 AND message_seq IS NULL",
        )
        .bind(user.to_string())
        .fetch_one(&self.pool)
        .await?
        .try_get("n")
    }

    /// The attachment, if `viewer` is a member of its group.
    pub(crate) async fn attachment_for(
        &self,
        id: AttachmentId,
        viewer: UserId,
    ) -> Result<Option<AttachmentView>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM attachments a WHERE id = $1 AND EXISTS \
             (SELECT 1 FROM group_members m WHERE m.group_id = a.group_id AND m.user_id = $2)"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(viewer.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(view)
            .transpose()
    }

    /// Deletes an upload no message has taken: its uploader or an admin of its group may.
    /// Answers the object key whose bytes to delete.
    pub(crate) async fn delete_attachment(
        &self,
        id: AttachmentId,
        actor: UserId,
    ) -> Result<Result<String, AttachmentRefusal>, sqlx::Error> {
        let Some(found) = self.attachment_for(id, actor).await? else {
            return Ok(Err(AttachmentRefusal::NotFound));
        };
        let Some(mut gtx) = GroupTx::begin(&self.pool, found.group).await? else {
            return Ok(Err(AttachmentRefusal::NotFound));
        };
        let Some(role) = gtx.role_of(actor).await? else {
            return Ok(Err(AttachmentRefusal::NotFound));
        };
        let row = sqlx::query("SELECT uploader_id, message_seq FROM attachments WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(gtx.conn())
            .await?;
        let Some(row) = row else {
            return Ok(Err(AttachmentRefusal::NotFound));
        };
        if uuid_column(&row, "uploader_id", UserId::from_uuid)? != actor && role != Role::Admin {
            return Ok(Err(AttachmentRefusal::NotYours));
        }
        if row.try_get::<Option<i64>, _>("message_seq")?.is_some() {
            return Ok(Err(AttachmentRefusal::Attached));
        }
        sqlx::query("DELETE FROM attachments WHERE id = $1")
            .bind(id.to_string())
            .execute(gtx.conn())
            .await?;
        gtx.commit().await?;
        Ok(Ok(object_key(found.group, id)))
    }

    /// Up to `limit` uploads that no message took and that are older than `before_ms`.
    pub(crate) async fn stale_attachments(
        &self,
        before_ms: i64,
        limit: i64,
    ) -> Result<Vec<(GroupId, AttachmentId)>, sqlx::Error> {
        sqlx::query(
            "SELECT group_id, id FROM attachments \
             WHERE message_seq IS NULL AND created_at < $1 ORDER BY created_at LIMIT $2",
        )
        .bind(before_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                uuid_column(row, "group_id", GroupId::from_uuid)?,
                uuid_column(row, "id", AttachmentId::from_uuid)?,
            ))
        })
        .collect()
    }

    /// Deletes `id` if no message has taken it by now (the sweeper); `true` if it did.
    pub(crate) async fn delete_stale_attachment(
        &self,
        group: GroupId,
        id: AttachmentId,
    ) -> Result<bool, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(false);
        };
        let done = sqlx::query("DELETE FROM attachments WHERE id = $1 AND message_seq IS NULL")
            .bind(id.to_string())
            .execute(gtx.conn())
            .await?;
        gtx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Gives the attachments `ids` to the message about to be appended at `seq`, if each is an
/// upload of `sender` to the locked group that no message has taken; `None` (and nothing
/// changed) otherwise. Answers them in the order asked.
pub(super) async fn take_for_message(
    gtx: &mut GroupTx,
    sender: UserId,
    ids: &[AttachmentId],
    seq: u64,
) -> Result<Option<Vec<AttachmentView>>, sqlx::Error> {
    let group = gtx.group();
    let list = super::group_log::placeholders(3, ids.len());
    let sql = format!(
        "SELECT {COLUMNS} FROM attachments WHERE group_id = $1 AND uploader_id = $2 \
         AND message_seq IS NULL AND id IN ({list})"
    );
    let mut query = sqlx::query(&sql)
        .bind(group.to_string())
        .bind(sender.to_string());
    for id in ids {
        query = query.bind(id.to_string());
    }
    let found = query
        .fetch_all(gtx.conn())
        .await?
        .iter()
        .map(view)
        .collect::<Result<Vec<_>, _>>()?;
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        match found.iter().find(|a| a.id == *id) {
            Some(a) if !views.iter().any(|v: &AttachmentView| v.id == *id) => {
                views.push(AttachmentView {
                    message_id: Some(seq),
                    ..a.clone()
                });
            }
            _ => return Ok(None),
        }
    }
    let sql =
        format!("UPDATE attachments SET message_seq = $1 WHERE group_id = $2 AND id IN ({list})");
    let mut query = sqlx::query(&sql)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(group.to_string());
    for id in ids {
        query = query.bind(id.to_string());
    }
    query.execute(gtx.conn()).await?;
    Ok(Some(views))
}

/// Deletes the rows of the attachments of message `seq` in the locked group; answers their
/// object keys.
pub(super) async fn erase_for_message(
    gtx: &mut GroupTx,
    seq: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let group = gtx.group();
    let ids = sqlx::query("SELECT id FROM attachments WHERE group_id = $1 AND message_seq = $2")
        .bind(group.to_string())
        .bind(seq)
        .fetch_all(gtx.conn())
        .await?
        .iter()
        .map(|row| uuid_column(row, "id", AttachmentId::from_uuid))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query("DELETE FROM attachments WHERE group_id = $1 AND message_seq = $2")
        .bind(group.to_string())
        .bind(seq)
        .execute(gtx.conn())
        .await?;
    Ok(ids.into_iter().map(|id| object_key(group, id)).collect())
}

fn view(row: &AnyRow) -> Result<AttachmentView, sqlx::Error> {
    let size: i64 = row.try_get("size")?;
    let created_at: i64 = row.try_get("created_at")?;
    let message_seq: Option<i64> = row.try_get("message_seq")?;
    Ok(AttachmentView {
        id: uuid_column(row, "id", AttachmentId::from_uuid)?,
        group: uuid_column(row, "group_id", GroupId::from_uuid)?,
        uploader: uuid_column(row, "uploader_id", UserId::from_uuid)?,
        name: row.try_get("name")?,
        content_type: row.try_get("content_type")?,
        size: u64::try_from(size).unwrap_or(0),
        sha256: row.try_get("sha256")?,
        created_at: rfc3339(created_at),
        message_id: message_seq.and_then(|s| u64::try_from(s).ok()),
    })
}
