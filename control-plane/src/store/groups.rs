//! Groups, their members and invites.

use super::{Store, parsed_column, uuid_column};
use protocol::api::Role;
use protocol::ids::{GroupId, UserId};
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// A stored group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupRow {
    pub id: GroupId,
    pub name: String,
    pub created_by: UserId,
    pub created_at_ms: i64,
}

/// A group with the role one member holds in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberGroup {
    pub group: GroupRow,
    pub role: Role,
}

/// A stored invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InviteRow {
    pub group: GroupId,
    pub expires_at_ms: i64,
}

impl Store {
    /// Creates a group with its creator as admin, in one transaction.
    pub(crate) async fn insert_group(&self, group: &GroupRow) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO groups (id, name, created_by, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(group.id.to_string())
        .bind(group.name.as_str())
        .bind(group.created_by.to_string())
        .bind(group.created_at_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO group_members (group_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(group.id.to_string())
        .bind(group.created_by.to_string())
        .bind(Role::Admin.as_str())
        .bind(group.created_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The group as seen by `user`, or `None` if there is no such group or `user` is not in it.
    pub(crate) async fn member_group(
        &self,
        group: GroupId,
        user: UserId,
    ) -> Result<Option<MemberGroup>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT g.id, g.name, g.created_by, g.created_at, m.role \
             FROM groups g JOIN group_members m ON m.group_id = g.id \
             WHERE g.id = $1 AND m.user_id = $2",
        )
        .bind(group.to_string())
        .bind(user.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(member_group_from_row).transpose()
    }

    /// Adds `user` to `group` with `role`; a member already there keeps their role.
    pub(crate) async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        role: Role,
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO group_members (group_id, user_id, role, joined_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (group_id, user_id) DO NOTHING",
        )
        .bind(group.to_string())
        .bind(user.to_string())
        .bind(role.as_str())
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Stores an invite code.
    pub(crate) async fn insert_invite(
        &self,
        code: &str,
        group: GroupId,
        created_by: UserId,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO invites (code, group_id, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(code)
        .bind(group.to_string())
        .bind(created_by.to_string())
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// The invite with this code, expired or not.
    pub(crate) async fn invite(&self, code: &str) -> Result<Option<InviteRow>, sqlx::Error> {
        let row = sqlx::query("SELECT group_id, expires_at FROM invites WHERE code = $1")
            .bind(code)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(InviteRow {
                group: uuid_column(&row, "group_id", GroupId::from_uuid)?,
                expires_at_ms: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }
}

fn member_group_from_row(row: &AnyRow) -> Result<MemberGroup, sqlx::Error> {
    Ok(MemberGroup {
        group: GroupRow {
            id: uuid_column(row, "id", GroupId::from_uuid)?,
            name: row.try_get("name")?,
            created_by: uuid_column(row, "created_by", UserId::from_uuid)?,
            created_at_ms: row.try_get("created_at")?,
        },
        role: parsed_column(row, "role", Role::parse)?,
    })
}
