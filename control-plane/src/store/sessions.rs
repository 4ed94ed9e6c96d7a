//! Media sessions. At most one session of each kind is active per group, enforced by the
//! partial unique index `sessions_one_active`; allocation is insert-or-fetch around it.

use super::group_log::{GroupTx, NewEvent};
use super::{Store, parsed_column, uuid_column};
use protocol::api::{SessionKind, SessionView};
use protocol::ids::{GroupId, NodeId, SessionId, UserId};
use protocol::realtime::{EventData, GroupEvent};
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionRow {
    pub id: SessionId,
    pub group: GroupId,
    pub kind: SessionKind,
    pub node: NodeId,
    pub created_at_ms: i64,
    /// End-to-end encrypted: payloads are forwarded untouched, never mixed.
    pub e2ee: bool,
}

/// The columns [`SessionRow::from_row`] reads.
pub(super) const COLUMNS: &str = "id, group_id, kind, node_id, created_at, e2ee";

impl SessionRow {
    pub(super) fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: uuid_column(row, "id", SessionId::from_uuid)?,
            group: uuid_column(row, "group_id", GroupId::from_uuid)?,
            kind: parsed_column(row, "kind", SessionKind::parse)?,
            node: parsed_column(row, "node_id", |s| NodeId::new(s).ok())?,
            created_at_ms: row.try_get("created_at")?,
            e2ee: row.try_get::<i64, _>("e2ee")? != 0,
        })
    }
}

impl Store {
    /// The group's active session of this kind.
    pub(crate) async fn active_session(
        &self,
        group: GroupId,
        kind: SessionKind,
    ) -> Result<Option<SessionRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM sessions \
             WHERE group_id = $1 AND kind = $2 AND state = 'active'"
        ))
        .bind(group.to_string())
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(SessionRow::from_row)
        .transpose()
    }

    /// Inserts `session` as the group's active session of its kind, unless one is active already
    /// (then nothing changes and the answer is `None`); with it, `by` appends `session_started`
    /// to the group's log. `None` too if the group is gone.
    pub(crate) async fn insert_active_session(
        &self,
        session: &SessionRow,
        by: UserId,
    ) -> Result<Option<GroupEvent>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, session.group).await? else {
            return Ok(None);
        };
        let result = sqlx::query(
            "INSERT INTO sessions (id, group_id, kind, node_id, state, created_at, e2ee) \
             VALUES ($1, $2, $3, $4, 'active', $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(session.id.to_string())
        .bind(session.group.to_string())
        .bind(session.kind.as_str())
        .bind(session.node.as_str())
        .bind(session.created_at_ms)
        .bind(i64::from(session.e2ee))
        .execute(gtx.conn())
        .await?;
        if result.rows_affected() != 1 {
            return Ok(None);
        }
        let view = SessionView {
            id: session.id,
            group_id: session.group,
            kind: session.kind,
            node_id: session.node.clone(),
            e2ee: session.e2ee,
        };
        let event = gtx
            .append(NewEvent::data(
                by,
                session.created_at_ms,
                EventData::SessionStarted { session: view },
            ))
            .await?;
        gtx.commit().await?;
        Ok(Some(event))
    }

    /// Ends a session if it is still active; `by` appends `session_ended` to its group's log.
    pub(crate) async fn end_session(
        &self,
        session: &SessionRow,
        by: UserId,
        now_ms: i64,
    ) -> Result<Option<GroupEvent>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, session.group).await? else {
            return Ok(None);
        };
        let result = sqlx::query(
            "UPDATE sessions SET state = 'ended', ended_at = $1 WHERE id = $2 AND state = 'active'",
        )
        .bind(now_ms)
        .bind(session.id.to_string())
        .execute(gtx.conn())
        .await?;
        if result.rows_affected() != 1 {
            return Ok(None);
        }
        let event = gtx
            .append(NewEvent::data(
                by,
                now_ms,
                EventData::SessionEnded {
                    session: session.id,
                },
            ))
            .await?;
        gtx.commit().await?;
        Ok(Some(event))
    }
}
