//! Alerts of location engines in the groups' logs, each logged once; users' own location
//! history, kept only with their consent and for the days they chose.

use super::Store;
use super::group_log::{GroupTx, NewEvent};
use protocol::ids::UserId;
use protocol::location::{HistoryFix, LocationAlert};
use protocol::realtime::{EventData, GroupEvent};
use sqlx::Row as _;

/// How long an alert's id is remembered against redelivery (a week, ms): far longer than a
/// stream entry stays pending.
const REMEMBER_MS: i64 = 7 * 24 * 3600 * 1000;

impl Store {
    /// Logs `alert` in its group unless it was logged before, the group is gone, or a member it
    /// names has left the group (their sharing outlived their membership by at most a token's
    /// life). Answers the logged event.
    pub(crate) async fn log_location_alert(
        &self,
        alert: &LocationAlert,
    ) -> Result<Option<GroupEvent>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, alert.group).await? else {
            return Ok(None);
        };
        let (first, second) = alert.kind.users();
        for user in std::iter::once(first).chain(second) {
            let member =
                sqlx::query("SELECT 1 FROM group_members WHERE group_id = $1 AND user_id = $2")
                    .bind(alert.group.to_string())
                    .bind(user.to_string())
                    .fetch_optional(&mut *gtx.conn())
                    .await?;
            if member.is_none() {
                return Ok(None);
            }
        }
        let id = format!("{:032x}", alert.id);
        let fresh = sqlx::query(
            "INSERT INTO location_alerts (id, group_id, at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(alert.group.to_string())
        .bind(alert.at_ms)
        .execute(&mut *gtx.conn())
        .await?
        .rows_affected();
        if fresh == 0 {
            return Ok(None);
        }
        sqlx::query("DELETE FROM location_alerts WHERE at_ms < $1")
            .bind(alert.at_ms.saturating_sub(REMEMBER_MS))
            .execute(&mut *gtx.conn())
            .await?;
        let event = gtx
            .append(NewEvent::data(
                first,
                alert.at_ms,
                EventData::Location {
                    alert_id: id,
                    alert: alert.kind,
                },
            ))
            .await?;
        gtx.commit().await?;
        Ok(Some(event))
    }
}

/// A day, ms.
pub(crate) const DAY_MS: i64 = 24 * 3600 * 1000;
/// Fixes time-stamped further ahead than this are not stored (a device clock far off).
const MAX_AHEAD_MS: i64 = 60_000;

/// One stored fix.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistoryRow {
    pub t_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub acc: f64,
    pub alt: Option<f64>,
    pub speed: Option<f64>,
    pub heading: Option<f64>,
}

impl Store {
    /// Stores the fixes of users who keep a history now (their setting is read here: consent
    /// withdrawn after the engine was told still stores nothing), within their retention; a fix
    /// stored before is not stored twice. Answers how many were stored.
    pub(crate) async fn store_history(
        &self,
        fixes: &[HistoryFix],
        now_ms: i64,
    ) -> Result<u64, sqlx::Error> {
        // One settings read a user: the batch sorted by user (stable: each user's fixes keep
        // their order).
        let mut by_user: Vec<&HistoryFix> = fixes.iter().collect();
        by_user.sort_by_key(|f| f.user);
        let mut stored = 0;
        let mut tx = self.pool.begin().await?;
        for run in by_user.chunk_by(|a, b| a.user == b.user) {
            let user = run[0].user;
            let days: Option<i64> =
                sqlx::query_scalar("SELECT location_history_days FROM users WHERE id = $1")
                    .bind(user.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(days) = days.filter(|d| *d > 0) else {
                continue;
            };
            let oldest = now_ms.saturating_sub(days.saturating_mul(DAY_MS));
            for f in run.iter().map(|f| &f.fix) {
                if f.t < oldest || f.t > now_ms.saturating_add(MAX_AHEAD_MS) {
                    continue;
                }
                stored += sqlx::query(
                    "INSERT INTO location_history \
                     (user_id, t_ms, lat, lon, acc, alt, speed, heading) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (user_id, t_ms) DO NOTHING",
                )
                .bind(user.to_string())
                .bind(f.t)
                .bind(f.lat)
                .bind(f.lon)
                .bind(f.acc)
                .bind(f.alt)
                .bind(f.speed)
                .bind(f.heading)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// `user`'s stored fixes from `from_ms` (inclusive) to `to_ms` (exclusive), oldest first,
    /// at most `limit`, never older than their retention allows at `now_ms`.
    pub(crate) async fn location_history(
        &self,
        user: UserId,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
        now_ms: i64,
    ) -> Result<Vec<HistoryRow>, sqlx::Error> {
        let days: Option<i64> =
            sqlx::query_scalar("SELECT location_history_days FROM users WHERE id = $1")
                .bind(user.to_string())
                .fetch_optional(&self.pool)
                .await?;
        let oldest = now_ms.saturating_sub(days.unwrap_or(0).saturating_mul(DAY_MS));
        let rows = sqlx::query(
            "SELECT t_ms, lat, lon, acc, alt, speed, heading FROM location_history \
             WHERE user_id = $1 AND t_ms >= $2 AND t_ms < $3 ORDER BY t_ms LIMIT $4",
        )
        .bind(user.to_string())
        .bind(from_ms.max(oldest))
        .bind(to_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    t_ms: r.try_get("t_ms")?,
                    lat: r.try_get("lat")?,
                    lon: r.try_get("lon")?,
                    acc: r.try_get("acc")?,
                    alt: r.try_get("alt")?,
                    speed: r.try_get("speed")?,
                    heading: r.try_get("heading")?,
                })
            })
            .collect()
    }

    /// Deletes every stored fix of `user`; answers how many.
    pub(crate) async fn delete_location_history(&self, user: UserId) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("DELETE FROM location_history WHERE user_id = $1")
                .bind(user.to_string())
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// Deletes the fixes older than their owner's retention at `now_ms` (run hourly); answers
    /// how many.
    pub(crate) async fn purge_location_history(&self, now_ms: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "DELETE FROM location_history WHERE t_ms < $1 - $2 * \
             (SELECT u.location_history_days FROM users u WHERE u.id = location_history.user_id)",
        )
        .bind(now_ms)
        .bind(DAY_MS)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
