//! The notification outbox (migration 0009): how far each group's log has been turned into
//! pushes, the pushes still to deliver with their retry schedule, and process-wide secrets.

use super::{Store, parsed_column, uuid_column};
use protocol::account::MessageNotifications;
use protocol::ids::{GroupId, UserId};
use sqlx::Row as _;
use uuid::Uuid;

/// A member who may get pushes, with one of their browser subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushTarget {
    pub user: UserId,
    pub username: String,
    pub messages: MessageNotifications,
    /// Wants location alerts.
    pub proximity: bool,
    pub device: Uuid,
}

/// A push to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewDelivery {
    pub device: Uuid,
    pub seq: i64,
    pub payload: String,
}

/// A queued push that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DueDelivery {
    pub id: Uuid,
    pub device: Uuid,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    pub payload: String,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub expires_at_ms: i64,
}

impl Store {
    /// Groups whose log has events not yet turned into pushes, with how far they have been.
    pub(crate) async fn push_backlog(
        &self,
        limit: i64,
    ) -> Result<Vec<(GroupId, i64)>, sqlx::Error> {
        sqlx::query(
            "SELECT g.id, COALESCE(p.upto, 0) AS upto FROM groups g \
             LEFT JOIN push_progress p ON p.group_id = g.id \
             WHERE g.last_seq > COALESCE(p.upto, 0) LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                uuid_column(row, "id", GroupId::from_uuid)?,
                row.try_get("upto")?,
            ))
        })
        .collect()
    }

    /// How far `group`'s log has been turned into pushes (0 when never).
    pub(crate) async fn push_upto(&self, group: GroupId) -> Result<i64, sqlx::Error> {
        let upto: Option<i64> =
            sqlx::query_scalar("SELECT upto FROM push_progress WHERE group_id = $1")
                .bind(group.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(upto.unwrap_or(0))
    }

    /// How far `group`'s log has been turned into pushes and where it ends; `None` when the
    /// group does not exist.
    pub(crate) async fn push_position(
        &self,
        group: GroupId,
    ) -> Result<Option<(i64, i64)>, sqlx::Error> {
        sqlx::query(
            "SELECT COALESCE(p.upto, 0) AS upto, g.last_seq FROM groups g \
             LEFT JOIN push_progress p ON p.group_id = g.id WHERE g.id = $1",
        )
        .bind(group.to_string())
        .fetch_optional(&self.pool)
        .await?
        .map(|row| Ok((row.try_get("upto")?, row.try_get("last_seq")?)))
        .transpose()
    }

    /// The members of `group` with a browser subscription, one entry per subscription.
    pub(crate) async fn push_targets(
        &self,
        group: GroupId,
    ) -> Result<Vec<PushTarget>, sqlx::Error> {
        sqlx::query(
            "SELECT u.id, u.username, u.notify_messages, u.notify_proximity, d.id AS device_id \
             FROM group_members m JOIN users u ON u.id = m.user_id \
             JOIN devices d ON d.user_id = m.user_id AND d.platform = 'web' \
             WHERE m.group_id = $1 ORDER BY u.id, d.id",
        )
        .bind(group.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(PushTarget {
                user: uuid_column(row, "id", UserId::from_uuid)?,
                username: row.try_get("username")?,
                messages: parsed_column(row, "notify_messages", MessageNotifications::parse)?,
                proximity: row.try_get::<i64, _>("notify_proximity")? != 0,
                device: uuid_column(row, "device_id", |u| u)?,
            })
        })
        .collect()
    }

    /// Moves `group`'s progress from `from` to `to` and queues `deliveries`, in one
    /// transaction; false (and nothing queued) when another notifier moved it first.
    pub(crate) async fn advance_push(
        &self,
        group: GroupId,
        from: i64,
        to: i64,
        deliveries: &[NewDelivery],
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "INSERT INTO push_progress (group_id, upto) VALUES ($1, $3) \
             ON CONFLICT (group_id) DO UPDATE SET upto = excluded.upto \
             WHERE push_progress.upto = $2",
        )
        .bind(group.to_string())
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // A missing row counts as 0: inserting it is the move from 0.
        if moved == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for d in deliveries {
            sqlx::query(
                "INSERT INTO push_deliveries \
                 (id, device_id, group_id, seq, payload, next_attempt_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (device_id, group_id, seq) DO NOTHING",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(d.device.to_string())
            .bind(group.to_string())
            .bind(d.seq)
            .bind(&d.payload)
            .bind(now_ms)
            .bind(expires_at_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Up to `limit` queued pushes due at `now_ms`, oldest first.
    pub(crate) async fn due_deliveries(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<DueDelivery>, sqlx::Error> {
        sqlx::query(
            "SELECT q.id, q.device_id, d.token, d.p256dh, d.auth, q.payload, q.attempts, \
             q.next_attempt_at, q.expires_at FROM push_deliveries q \
             JOIN devices d ON d.id = q.device_id \
             WHERE q.next_attempt_at <= $1 ORDER BY q.next_attempt_at, q.id LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(DueDelivery {
                id: uuid_column(row, "id", |u| u)?,
                device: uuid_column(row, "device_id", |u| u)?,
                endpoint: row.try_get("token")?,
                p256dh: row
                    .try_get::<Option<String>, _>("p256dh")?
                    .unwrap_or_default(),
                auth: row
                    .try_get::<Option<String>, _>("auth")?
                    .unwrap_or_default(),
                payload: row.try_get("payload")?,
                attempts: row.try_get("attempts")?,
                next_attempt_at_ms: row.try_get("next_attempt_at")?,
                expires_at_ms: row.try_get("expires_at")?,
            })
        })
        .collect()
    }

    /// Takes a due push for `lease_until_ms` (so no other notifier sends it meanwhile); false
    /// when another took it first.
    pub(crate) async fn claim_delivery(
        &self,
        d: &DueDelivery,
        lease_until_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE push_deliveries SET next_attempt_at = $3 \
             WHERE id = $1 AND next_attempt_at = $2",
        )
        .bind(d.id.to_string())
        .bind(d.next_attempt_at_ms)
        .bind(lease_until_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A push is done with: delivered, or given up.
    pub(crate) async fn drop_delivery(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM push_deliveries WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map(drop)
    }

    /// A push failed and is tried again at `next_ms`.
    pub(crate) async fn retry_delivery(
        &self,
        id: Uuid,
        attempts: i64,
        next_ms: i64,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE push_deliveries SET attempts = $2, next_attempt_at = $3, last_error = $4 \
             WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(attempts)
        .bind(next_ms)
        .bind(error)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    /// Forgets a device its push service no longer knows (and its queued pushes).
    pub(crate) async fn drop_device(&self, device: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(device.to_string())
            .execute(&self.pool)
            .await
            .map(drop)
    }

    /// The stored secret `name`, storing `candidate` first if there is none (the first
    /// replica to start wins; every replica then reads the same).
    pub(crate) async fn server_secret(
        &self,
        name: &str,
        candidate: &str,
        now_ms: i64,
    ) -> Result<String, sqlx::Error> {
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        self.read_server_secret(name).await
    }

    /// Replaces secret `name` if it still is `old` (another replica may have replaced it
    /// first); answers what is stored afterwards.
    pub(crate) async fn replace_server_secret(
        &self,
        name: &str,
        old: &str,
        new: &str,
        now_ms: i64,
    ) -> Result<String, sqlx::Error> {
        sqlx::query(
            "UPDATE server_secrets SET value = $3, created_at = $4 WHERE name = $1 AND value = $2",
        )
        .bind(name)
        .bind(old)
        .bind(new)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        self.read_server_secret(name).await
    }

    async fn read_server_secret(&self, name: &str) -> Result<String, sqlx::Error> {
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
    }
}
