//! Alerts of location engines in the groups' logs, each logged once.

use super::Store;
use super::group_log::{GroupTx, NewEvent};
use protocol::location::LocationAlert;
use protocol::realtime::{EventData, GroupEvent};

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
