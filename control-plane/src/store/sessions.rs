//! Media sessions. At most one session of each kind is active per group, enforced by the
//! partial unique index `sessions_one_active`; allocation is insert-or-fetch around it.

use super::{Store, parsed_column, uuid_column};
use protocol::api::SessionKind;
use protocol::ids::{GroupId, NodeId, SessionId};
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
    /// (then nothing changes and the answer is `false`).
    pub(crate) async fn insert_active_session(
        &self,
        session: &SessionRow,
    ) -> Result<bool, sqlx::Error> {
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
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Ends a session if it is still active.
    pub(crate) async fn end_session(&self, id: SessionId, now_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sessions SET state = 'ended', ended_at = $1 WHERE id = $2 AND state = 'active'",
        )
        .bind(now_ms)
        .bind(id.to_string())
        .execute(&self.pool)
        .await
        .map(drop)
    }
}
