//! Each group's event log, its messages and its members' markers.
//!
//! A change to a group runs in a [`GroupTx`]: its first statement bumps nothing but locks the
//! group's row (`UPDATE groups SET last_seq = last_seq ... RETURNING`), so changes to one group
//! are serialised, checks made inside see every earlier change, and events get consecutive
//! `seq` numbers that commit in order. A reader that has seen `seq` n can therefore read every
//! event up to n from SQL. Messages are log entries of kind `message`; their `seq` is their id.

use super::{Store, uuid_column};
use crate::clock::rfc3339;
use protocol::api::{AttachmentView, MessageView, Role};
use protocol::ids::{AttachmentId, GroupId, UserId};
use protocol::realtime::{EventData, GroupEvent};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AnyPool, Row as _, Transaction};
use std::collections::{HashMap, HashSet};

/// A transaction holding one group's row lock.
pub(crate) struct GroupTx {
    tx: Transaction<'static, Any>,
    group: GroupId,
    last_seq: i64,
    appended: bool,
    /// Events given their seq but not inserted yet ([`GroupTx::stage`]): written together.
    staged: Vec<EventRow>,
}

/// The columns of one `group_events` row to insert.
struct EventRow {
    seq: i64,
    kind: &'static str,
    actor: String,
    at_ms: i64,
    data: String,
    ref_seq: Option<i64>,
    client_msg_id: Option<String>,
    body: Option<String>,
}

/// The most rows one `INSERT` writes (9 values each; SQLite takes 32,766 a statement).
const INSERT_CHUNK: usize = 64;

/// An event to append.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    actor: UserId,
    at_ms: i64,
    what: What,
}

#[derive(Debug, Clone)]
enum What {
    Data(EventData),
    Message {
        client_msg_id: String,
        body: String,
        attachments: Vec<AttachmentView>,
    },
    Edited {
        message: i64,
        body: String,
    },
    Deleted {
        message: i64,
    },
}

impl NewEvent {
    /// An event whose fields are kept as JSON (members, roles, settings).
    pub(crate) fn data(actor: UserId, at_ms: i64, data: EventData) -> Self {
        Self {
            actor,
            at_ms,
            what: What::Data(data),
        }
    }
}

impl GroupTx {
    /// Opens a transaction on `group` and locks it; `None` if there is no such group.
    pub(crate) async fn begin(pool: &AnyPool, group: GroupId) -> Result<Option<Self>, sqlx::Error> {
        Self::lock(pool.begin().await?, group).await
    }

    /// Locks `group` within `tx`; `None` (and the transaction rolled back) if there is no such
    /// group.
    pub(crate) async fn lock(
        mut tx: Transaction<'static, Any>,
        group: GroupId,
    ) -> Result<Option<Self>, sqlx::Error> {
        let row =
            sqlx::query("UPDATE groups SET last_seq = last_seq WHERE id = $1 RETURNING last_seq")
                .bind(group.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Self {
            tx,
            group,
            last_seq: row.try_get("last_seq")?,
            appended: false,
            staged: Vec::new(),
        }))
    }

    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    pub(crate) fn group(&self) -> GroupId {
        self.group
    }

    /// The group's seq, counting what this transaction appended.
    pub(crate) fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// `user`'s role in the group, if they are in it.
    pub(crate) async fn role_of(&mut self, user: UserId) -> Result<Option<Role>, sqlx::Error> {
        let row =
            sqlx::query("SELECT role FROM group_members WHERE group_id = $1 AND user_id = $2")
                .bind(self.group.to_string())
                .bind(user.to_string())
                .fetch_optional(&mut *self.tx)
                .await?;
        row.map(|row| super::parsed_column(&row, "role", Role::parse))
            .transpose()
    }

    /// How many members and how many admins the group has.
    pub(crate) async fn counts(&mut self) -> Result<(i64, i64), sqlx::Error> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS members, \
             COALESCE(SUM(CASE WHEN role = 'admin' THEN 1 ELSE 0 END), 0) AS admins \
             FROM group_members WHERE group_id = $1",
        )
        .bind(self.group.to_string())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok((row.try_get("members")?, row.try_get("admins")?))
    }

    /// Appends an event at the next seq (and writes any staged before it).
    pub(crate) async fn append(&mut self, event: NewEvent) -> Result<GroupEvent, sqlx::Error> {
        let event = self.stage(event)?;
        self.flush().await?;
        Ok(event)
    }

    /// Gives an event the next seq and keeps its row to be written with the others staged, by
    /// the next [`Self::flush`], [`Self::append`] or [`Self::commit`]: a batch of messages is a
    /// few multi-row `INSERT`s, not one round trip each. Nothing in this transaction reads
    /// `group_events` between staging and flushing.
    fn stage(&mut self, event: NewEvent) -> Result<GroupEvent, sqlx::Error> {
        let seq = self.last_seq + 1;
        let (kind, data, ref_seq, client_msg_id, body) = match &event.what {
            What::Data(data) => (
                data.kind(),
                serde_json::to_string(data).map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
                None,
                None,
                None,
            ),
            What::Message {
                client_msg_id,
                body,
                attachments,
            } => (
                "message",
                message_data(attachments)?,
                None,
                Some(client_msg_id.clone()),
                Some(body.clone()),
            ),
            What::Edited { message, body } => (
                "message_edited",
                "{}".to_owned(),
                Some(*message),
                None,
                Some(body.clone()),
            ),
            What::Deleted { message } => (
                "message_deleted",
                "{}".to_owned(),
                Some(*message),
                None,
                None,
            ),
        };
        self.staged.push(EventRow {
            seq,
            kind,
            actor: event.actor.to_string(),
            at_ms: event.at_ms,
            data,
            ref_seq,
            client_msg_id,
            body,
        });
        self.last_seq = seq;
        self.appended = true;
        Ok(self.event(seq, event))
    }

    /// Inserts the staged rows, in seq order, in chunks whose sizes are powers of two (so
    /// each connection prepares a handful of statements, not one per batch size).
    async fn flush(&mut self) -> Result<(), sqlx::Error> {
        let mut rows = std::mem::take(&mut self.staged).into_iter();
        let group = self.group.to_string();
        while rows.len() > 0 {
            let n = chunk_len(rows.len());
            let values = (0..n)
                .map(|i| format!("({})", placeholders(1 + 9 * i, 9)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO group_events \
                 (group_id, seq, kind, actor_id, created_at, data, ref_seq, client_msg_id, body) \
                 VALUES {values}"
            );
            let mut query = sqlx::query(&sql);
            for row in rows.by_ref().take(n) {
                query = query
                    .bind(group.clone())
                    .bind(row.seq)
                    .bind(row.kind)
                    .bind(row.actor)
                    .bind(row.at_ms)
                    .bind(row.data)
                    .bind(row.ref_seq)
                    .bind(row.client_msg_id)
                    .bind(row.body);
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    fn event(&self, seq: i64, event: NewEvent) -> GroupEvent {
        let at = rfc3339(event.at_ms);
        let data = match event.what {
            What::Data(data) => data,
            What::Message {
                client_msg_id,
                body,
                attachments,
            } => EventData::Message {
                message: MessageView {
                    id: seq_u64(seq),
                    group: self.group,
                    sender: event.actor,
                    client_msg_id,
                    body: Some(body),
                    created_at: at.clone(),
                    edited_at: None,
                    deleted_at: None,
                    attachments,
                    status: None,
                },
            },
            What::Edited { message, body } => EventData::MessageEdited {
                message_id: seq_u64(message),
                body: Some(body),
                edited_at: at.clone(),
            },
            What::Deleted { message } => EventData::MessageDeleted {
                message_id: seq_u64(message),
            },
        };
        GroupEvent {
            group: self.group,
            seq: seq_u64(seq),
            at,
            actor: event.actor,
            data,
        }
    }

    /// Records the new seq (if anything was appended) and commits.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.flush().await?;
        if self.appended {
            sqlx::query("UPDATE groups SET last_seq = $2 WHERE id = $1")
                .bind(self.group.to_string())
                .bind(self.last_seq)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await
    }
}

/// A message to post.
#[derive(Debug, Clone)]
pub(crate) struct NewMessage {
    pub sender: UserId,
    pub client_msg_id: String,
    pub body: String,
    /// Files the sender uploaded to the group, to attach (checked in the transaction).
    pub attachments: Vec<AttachmentId>,
    pub now_ms: i64,
}

/// What became of a message to post.
#[derive(Debug, Clone)]
pub(crate) enum Posted {
    /// Stored now; the event to fan out.
    New(GroupEvent),
    /// Its sender had sent it before (same client message id): the original.
    Existing(MessageView),
    /// The group is gone or the sender is not in it.
    NotMember,
    /// An attachment is not the sender's unsent upload to this group.
    BadAttachments,
}

/// A message deleted now.
#[derive(Debug, Clone)]
pub(crate) struct Deleted {
    /// The `message_deleted` event to fan out.
    pub event: GroupEvent,
    /// Object keys of its attachments, whose rows are gone: delete the bytes.
    pub erased: Vec<String>,
}

/// Why an edit or a delete was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageRefusal {
    NoGroup,
    NoMessage,
    NotYours,
    Deleted,
}

const MESSAGE_COLUMNS: &str = "group_id, seq, kind, actor_id, created_at, data, ref_seq, client_msg_id, body, edited_at, deleted_at";

impl Store {
    /// Posts messages to one group in one transaction (the message writer batches sends that
    /// arrive together). Each sender must be a member; a client message id a sender used
    /// before answers the original, also when it repeats within the batch.
    pub(crate) async fn post_messages(
        &self,
        group: GroupId,
        batch: &[NewMessage],
    ) -> Result<Vec<Posted>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(vec![Posted::NotMember; batch.len()]);
        };
        let senders: HashSet<UserId> = batch.iter().map(|m| m.sender).collect();
        // QueryBuilder would write `?` placeholders, which PostgreSQL does not take.
        let senders = padded(senders.iter().map(UserId::to_string).collect());
        let sql = format!(
            "SELECT user_id FROM group_members WHERE group_id = $1 AND user_id IN ({})",
            placeholders(2, senders.len())
        );
        let mut query = sqlx::query(&sql).bind(group.to_string());
        for sender in senders {
            query = query.bind(sender);
        }
        let members: HashSet<UserId> = query
            .fetch_all(gtx.conn())
            .await?
            .iter()
            .map(|row| uuid_column(row, "user_id", UserId::from_uuid))
            .collect::<Result<_, _>>()?;

        // One probe of the unique index on (group, client id, sender) per id; a row of another
        // sender with the same client id is harmless (looked up by the pair below).
        let ids = padded(batch.iter().map(|m| m.client_msg_id.clone()).collect());
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM group_events \
             WHERE kind = 'message' AND group_id = $1 AND client_msg_id IN ({})",
            placeholders(2, ids.len())
        );
        let mut query = sqlx::query(&sql).bind(group.to_string());
        for id in ids {
            query = query.bind(id);
        }
        let mut known: HashMap<(UserId, String), MessageView> = HashMap::new();
        for row in query.fetch_all(gtx.conn()).await? {
            let message = message_from_row(&row)?;
            known.insert((message.sender, message.client_msg_id.clone()), message);
        }

        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            if !members.contains(&m.sender) {
                out.push(Posted::NotMember);
                continue;
            }
            let key = (m.sender, m.client_msg_id.clone());
            if let Some(original) = known.get(&key) {
                out.push(Posted::Existing(original.clone()));
                continue;
            }
            let attachments = if m.attachments.is_empty() {
                Vec::new()
            } else {
                let seq = seq_u64(gtx.last_seq() + 1);
                match super::attachments::take_for_message(&mut gtx, m.sender, &m.attachments, seq)
                    .await?
                {
                    Some(views) => views,
                    None => {
                        out.push(Posted::BadAttachments);
                        continue;
                    }
                }
            };
            let event = gtx.stage(NewEvent {
                actor: m.sender,
                at_ms: m.now_ms,
                what: What::Message {
                    client_msg_id: m.client_msg_id.clone(),
                    body: m.body.clone(),
                    attachments,
                },
            })?;
            if let EventData::Message { message } = &event.data {
                known.insert(key, message.clone());
            }
            out.push(Posted::New(event));
        }
        gtx.commit().await?;
        Ok(out)
    }

    /// A page of a group's messages, oldest first, and whether more lie beyond it.
    pub(crate) async fn messages(
        &self,
        group: GroupId,
        before: Option<i64>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<MessageView>, bool), sqlx::Error> {
        let ascending = after.is_some();
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM group_events \
             WHERE kind = 'message' AND group_id = $1 AND seq < $2 AND seq > $3 \
             ORDER BY seq {} LIMIT $4",
            if ascending { "ASC" } else { "DESC" }
        );
        let rows = sqlx::query(&sql)
            .bind(group.to_string())
            .bind(before.unwrap_or(i64::MAX))
            .bind(after.unwrap_or(-1))
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut messages = rows
            .iter()
            .map(message_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let has_more = messages.len() as i64 > limit;
        messages.truncate(usize::try_from(limit).unwrap_or(0));
        if !ascending {
            messages.reverse();
        }
        Ok((messages, has_more))
    }

    /// The lowest read and delivered markers among the members other than `user` (`None`
    /// when `user` is alone).
    pub(crate) async fn others_markers(
        &self,
        group: GroupId,
        user: UserId,
    ) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT MIN(read_upto) AS read_upto, MIN(delivered_upto) AS delivered_upto \
             FROM group_members WHERE group_id = $1 AND user_id <> $2",
        )
        .bind(group.to_string())
        .bind(user.to_string())
        .fetch_one(&self.pool)
        .await?;
        let read: Option<i64> = row.try_get("read_upto")?;
        let delivered: Option<i64> = row.try_get("delivered_upto")?;
        Ok(read.zip(delivered))
    }

    /// The sender replaces the text of their message.
    pub(crate) async fn edit_message(
        &self,
        group: GroupId,
        editor: UserId,
        message: i64,
        body: &str,
        now_ms: i64,
    ) -> Result<Result<GroupEvent, MessageRefusal>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(Err(MessageRefusal::NoGroup));
        };
        if gtx.role_of(editor).await?.is_none() {
            return Ok(Err(MessageRefusal::NoGroup));
        }
        let Some(current) = message_in(&mut gtx, message).await? else {
            return Ok(Err(MessageRefusal::NoMessage));
        };
        if current.sender != editor {
            return Ok(Err(MessageRefusal::NotYours));
        }
        if current.deleted_at.is_some() {
            return Ok(Err(MessageRefusal::Deleted));
        }
        sqlx::query(
            "UPDATE group_events SET body = $3, edited_at = $4 \
             WHERE group_id = $1 AND seq = $2 AND kind = 'message'",
        )
        .bind(group.to_string())
        .bind(message)
        .bind(body)
        .bind(now_ms)
        .execute(gtx.conn())
        .await?;
        let event = gtx
            .append(NewEvent {
                actor: editor,
                at_ms: now_ms,
                what: What::Edited {
                    message,
                    body: body.to_owned(),
                },
            })
            .await?;
        gtx.commit().await?;
        Ok(Ok(event))
    }

    /// Deletes a message, leaving a tombstone: its text and the text of its edits are erased.
    /// Its sender or an admin may; deleting a deleted message changes nothing (`Ok(None)`).
    pub(crate) async fn delete_message(
        &self,
        group: GroupId,
        actor: UserId,
        message: i64,
        now_ms: i64,
    ) -> Result<Result<Option<Deleted>, MessageRefusal>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(Err(MessageRefusal::NoGroup));
        };
        let Some(role) = gtx.role_of(actor).await? else {
            return Ok(Err(MessageRefusal::NoGroup));
        };
        let Some(current) = message_in(&mut gtx, message).await? else {
            return Ok(Err(MessageRefusal::NoMessage));
        };
        if current.sender != actor && role != Role::Admin {
            return Ok(Err(MessageRefusal::NotYours));
        }
        if current.deleted_at.is_some() {
            return Ok(Ok(None));
        }
        let erased = super::attachments::erase_for_message(&mut gtx, message).await?;
        sqlx::query(
            "UPDATE group_events SET body = NULL, deleted_at = $3, data = '{}' \
             WHERE group_id = $1 AND seq = $2 AND kind = 'message'",
        )
        .bind(group.to_string())
        .bind(message)
        .bind(now_ms)
        .execute(gtx.conn())
        .await?;
        sqlx::query(
            "UPDATE group_events SET body = NULL \
             WHERE group_id = $1 AND ref_seq = $2 AND kind = 'message_edited'",
        )
        .bind(group.to_string())
        .bind(message)
        .execute(gtx.conn())
        .await?;
        let event = gtx
            .append(NewEvent {
                actor,
                at_ms: now_ms,
                what: What::Deleted { message },
            })
            .await?;
        gtx.commit().await?;
        Ok(Ok(Some(Deleted { event, erased })))
    }

    /// Moves `user`'s markers forward (never back, never past the group's last event);
    /// `read` implies `delivered`. `None` if `user` is not in the group.
    pub(crate) async fn advance_markers(
        &self,
        group: GroupId,
        user: UserId,
        read: i64,
        delivered: i64,
    ) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let delivered = delivered.max(read);
        let row = sqlx::query(
            "UPDATE group_members SET \
             read_upto = CASE WHEN read_upto >= $3 OR read_upto >= g.last_seq THEN read_upto \
                 WHEN $3 > g.last_seq THEN g.last_seq ELSE $3 END, \
             delivered_upto = CASE WHEN delivered_upto >= $4 OR delivered_upto >= g.last_seq \
                 THEN delivered_upto WHEN $4 > g.last_seq THEN g.last_seq ELSE $4 END \
             FROM (SELECT last_seq FROM groups WHERE id = $1) AS g \
             WHERE group_id = $1 AND user_id = $2 \
             RETURNING read_upto, delivered_upto",
        )
        .bind(group.to_string())
        .bind(user.to_string())
        .bind(read)
        .bind(delivered)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok((row.try_get("read_upto")?, row.try_get("delivered_upto")?)))
            .transpose()
    }

    /// Up to `limit` events of a group after `after`, in order.
    pub(crate) async fn events_after(
        &self,
        group: GroupId,
        after: i64,
        limit: i64,
    ) -> Result<Vec<GroupEvent>, sqlx::Error> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM group_events \
             WHERE group_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(group.to_string())
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }
}

/// The message with this id in the locked group.
async fn message_in(gtx: &mut GroupTx, message: i64) -> Result<Option<MessageView>, sqlx::Error> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM group_events \
         WHERE group_id = $1 AND seq = $2 AND kind = 'message'"
    );
    let group = gtx.group();
    let row = sqlx::query(&sql)
        .bind(group.to_string())
        .bind(message)
        .fetch_optional(gtx.conn())
        .await?;
    row.as_ref().map(message_from_row).transpose()
}

/// `items` (not empty) with its last repeated up to a power of two: the same `IN (...)` list,
/// from a handful of statement texts instead of one per length.
fn padded<T: Clone>(mut items: Vec<T>) -> Vec<T> {
    if let Some(last) = items.last().cloned() {
        items.resize(items.len().next_power_of_two(), last);
    }
    items
}

/// The largest power of two that is at most `len` and [`INSERT_CHUNK`].
fn chunk_len(len: usize) -> usize {
    let n = len.min(INSERT_CHUNK);
    1 << n.ilog2()
}

/// `$start, $start+1, ...`: `count` numbered placeholders.
pub(super) fn placeholders(start: usize, count: usize) -> String {
    (start..start + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn seq_u64(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

fn message_from_row(row: &AnyRow) -> Result<MessageView, sqlx::Error> {
    let seq: i64 = row.try_get("seq")?;
    let created_at: i64 = row.try_get("created_at")?;
    let edited_at: Option<i64> = row.try_get("edited_at")?;
    let deleted_at: Option<i64> = row.try_get("deleted_at")?;
    Ok(MessageView {
        id: seq_u64(seq),
        group: uuid_column(row, "group_id", GroupId::from_uuid)?,
        sender: uuid_column(row, "actor_id", UserId::from_uuid)?,
        client_msg_id: row
            .try_get::<Option<String>, _>("client_msg_id")?
            .unwrap_or_default(),
        body: row.try_get("body")?,
        created_at: rfc3339(created_at),
        edited_at: edited_at.map(rfc3339),
        deleted_at: deleted_at.map(rfc3339),
        attachments: message_attachments(row)?,
        status: None,
    })
}

/// What a message row keeps in `data`: its attachments as they were sent.
#[derive(Debug, Default, Serialize, Deserialize)]
struct MessageData {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<AttachmentView>,
}

fn message_data(attachments: &[AttachmentView]) -> Result<String, sqlx::Error> {
    if attachments.is_empty() {
        return Ok("{}".to_owned());
    }
    serde_json::to_string(&MessageData {
        attachments: attachments.to_vec(),
    })
    .map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

fn message_attachments(row: &AnyRow) -> Result<Vec<AttachmentView>, sqlx::Error> {
    let text: String = row.try_get("data")?;
    if text == "{}" {
        return Ok(Vec::new());
    }
    serde_json::from_str::<MessageData>(&text)
        .map(|data| data.attachments)
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: "data".to_owned(),
            source: Box::new(e),
        })
}

fn event_from_row(row: &AnyRow) -> Result<GroupEvent, sqlx::Error> {
    let kind: String = row.try_get("kind")?;
    let seq: i64 = row.try_get("seq")?;
    let at: i64 = row.try_get("created_at")?;
    let reference = || -> Result<u64, sqlx::Error> {
        Ok(seq_u64(
            row.try_get::<Option<i64>, _>("ref_seq")?.unwrap_or(0),
        ))
    };
    let data = match kind.as_str() {
        "message" => EventData::Message {
            message: message_from_row(row)?,
        },
        "message_edited" => EventData::MessageEdited {
            message_id: reference()?,
            body: row.try_get("body")?,
            edited_at: rfc3339(at),
        },
        "message_deleted" => EventData::MessageDeleted {
            message_id: reference()?,
        },
        _ => {
            let text: String = row.try_get("data")?;
            serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
                index: "data".to_owned(),
                source: Box::new(e),
            })?
        }
    };
    Ok(GroupEvent {
        group: uuid_column(row, "group_id", GroupId::from_uuid)?,
        seq: seq_u64(seq),
        at: rfc3339(at),
        actor: uuid_column(row, "actor_id", UserId::from_uuid)?,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_chunks_are_powers_of_two_that_add_up() {
        for len in 1..=300 {
            let (mut rest, mut sizes) = (len, Vec::new());
            while rest > 0 {
                let n = chunk_len(rest);
                assert!(
                    n.is_power_of_two() && n <= INSERT_CHUNK && n <= rest,
                    "{len}: {n}"
                );
                sizes.push(n);
                rest -= n;
            }
            assert_eq!(sizes.iter().sum::<usize>(), len);
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{len}: {sizes:?}");
        }
    }

    #[test]
    fn padded_lists_repeat_the_last_item_up_to_a_power_of_two() {
        assert_eq!(padded(vec![1]), vec![1]);
        assert_eq!(padded(vec![1, 2, 3]), vec![1, 2, 3, 3]);
        assert_eq!(padded(vec![1, 2, 3, 4]), vec![1, 2, 3, 4]);
        assert_eq!(padded((0..9).collect()).len(), 16);
        assert_eq!(padded(Vec::<u8>::new()), Vec::<u8>::new());
    }
}
