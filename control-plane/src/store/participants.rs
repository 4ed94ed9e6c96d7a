//! Participants of media sessions, kept current from the media nodes' session events.
//!
//! A node may only write rows for sessions the control plane placed on it: every statement checks
//! the session's `node_id` against the event's node. Events are idempotent (a repeated `joined`
//! changes nothing, `left` only closes an open row).

use super::group_log::{GroupTx, NewEvent};
use super::{SessionRow, Store, uuid_column};
use protocol::events::{ParticipantChange, SessionEvent};
use protocol::ids::GroupId;
use protocol::ids::{ParticipantId, SessionId, UserId};
use protocol::realtime::{EventData, GroupEvent};
use sqlx::AnyConnection;
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// A stored participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParticipantRow {
    pub id: ParticipantId,
    pub session: SessionId,
    pub user: UserId,
    pub joined_at_ms: i64,
    pub left_at_ms: Option<i64>,
    pub mute_microphone: bool,
    pub mute_speaker: bool,
}

impl ParticipantRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: uuid_column(row, "id", ParticipantId::from_uuid)?,
            session: uuid_column(row, "session_id", SessionId::from_uuid)?,
            user: uuid_column(row, "user_id", UserId::from_uuid)?,
            joined_at_ms: row.try_get("joined_at")?,
            left_at_ms: row.try_get("left_at")?,
            mute_microphone: row.try_get::<i64, _>("mute_microphone")? != 0,
            mute_speaker: row.try_get::<i64, _>("mute_speaker")? != 0,
        })
    }
}

const COLUMNS: &str = "id, session_id, user_id, joined_at, left_at, mute_microphone, mute_speaker";

impl Store {
    /// Applies one session event: whether a row changed, and for a join or a leave that did,
    /// the `participant_joined`/`participant_left` event appended to the group's log in the
    /// same transaction (the group is locked first, as every change to a group does).
    pub(crate) async fn apply_session_event(
        &self,
        e: &SessionEvent,
    ) -> Result<(bool, Option<GroupEvent>), sqlx::Error> {
        let logged = match e.change {
            ParticipantChange::Joined => Some(EventData::ParticipantJoined {
                session: e.session,
                participant: e.participant,
                user: e.user,
            }),
            ParticipantChange::Left { .. } => Some(EventData::ParticipantLeft {
                session: e.session,
                participant: e.participant,
                user: e.user,
            }),
            ParticipantChange::Muted { .. } => None,
            ParticipantChange::Music { ref state } => Some(EventData::Music {
                session: e.session,
                music: state.clone(),
            }),
        };
        let Some(data) = logged else {
            let mut conn = self.pool.acquire().await?;
            return Ok((apply_change(&mut conn, e).await?, None));
        };
        let group = sqlx::query("SELECT group_id FROM sessions WHERE id = $1 AND node_id = $2")
            .bind(e.session.to_string())
            .bind(e.node.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(group) = group else {
            return Ok((false, None));
        };
        let group = uuid_column(&group, "group_id", GroupId::from_uuid)?;
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok((false, None));
        };
        if !apply_change(gtx.conn(), e).await? {
            return Ok((false, None));
        }
        let at = i64::try_from(e.at_ms).unwrap_or(i64::MAX);
        let event = gtx.append(NewEvent::data(e.user, at, data)).await?;
        gtx.commit().await?;
        Ok((true, Some(event)))
    }

    /// The participants of a session who have not left, in join order.
    pub(crate) async fn present_participants(
        &self,
        session: SessionId,
    ) -> Result<Vec<ParticipantRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM participants WHERE session_id = $1 AND left_at IS NULL \
             ORDER BY joined_at, id"
        ))
        .bind(session.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(ParticipantRow::from_row)
        .collect()
    }

    /// One participant of a session, present or not.
    pub(crate) async fn participant(
        &self,
        session: SessionId,
        id: ParticipantId,
    ) -> Result<Option<ParticipantRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM participants WHERE session_id = $1 AND id = $2"
        ))
        .bind(session.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(ParticipantRow::from_row)
        .transpose()
    }

    /// A session's music as its node last reported it (idle when it never did).
    pub(crate) async fn session_music(
        &self,
        session: SessionId,
    ) -> Result<protocol::music::MusicState, sqlx::Error> {
        let row = sqlx::query("SELECT music_state FROM sessions WHERE id = $1")
            .bind(session.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let json: Option<String> = match row {
            Some(row) => row.try_get("music_state")?,
            None => None,
        };
        Ok(json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default())
    }

    /// A session by id.
    pub(crate) async fn session(&self, id: SessionId) -> Result<Option<SessionRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {} FROM sessions WHERE id = $1",
            super::sessions::COLUMNS
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(SessionRow::from_row)
        .transpose()
    }
}

/// Writes one session event to the participants table; whether a row changed.
async fn apply_change(conn: &mut AnyConnection, e: &SessionEvent) -> Result<bool, sqlx::Error> {
    let at = i64::try_from(e.at_ms).unwrap_or(i64::MAX);
    let result = match &e.change {
        ParticipantChange::Joined => {
            sqlx::query(
                "INSERT INTO participants (id, session_id, user_id, joined_at) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS \
                 (SELECT 1 FROM sessions WHERE id = $2 AND node_id = $5) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(e.participant.to_string())
            .bind(e.session.to_string())
            .bind(e.user.to_string())
            .bind(at)
            .bind(e.node.as_str())
            .execute(&mut *conn)
            .await?
        }
        ParticipantChange::Left { .. } => {
            // Upsert: a `left` applied before its `joined` (another control plane of the
            // consumer group took that one) still closes the row.
            sqlx::query(
                "INSERT INTO participants (id, session_id, user_id, joined_at, left_at) \
                 SELECT $1, $2, $3, $4, $4 WHERE EXISTS \
                 (SELECT 1 FROM sessions WHERE id = $2 AND node_id = $5) \
                 ON CONFLICT (id) DO UPDATE SET left_at = excluded.left_at \
                 WHERE participants.left_at IS NULL",
            )
            .bind(e.participant.to_string())
            .bind(e.session.to_string())
            .bind(e.user.to_string())
            .bind(at)
            .bind(e.node.as_str())
            .execute(&mut *conn)
            .await?
        }
        ParticipantChange::Muted {
            microphone,
            speaker,
        } => {
            // Upsert for the same reason as `left`; the latest change wins whatever the
            // order it arrives in (the node's times are strictly increasing).
            sqlx::query(
                "INSERT INTO participants \
                 (id, session_id, user_id, joined_at, mute_microphone, mute_speaker, \
                 mute_changed_at) \
                 SELECT $1, $2, $3, $4, $6, $7, $4 WHERE EXISTS \
                 (SELECT 1 FROM sessions WHERE id = $2 AND node_id = $5) \
                 ON CONFLICT (id) DO UPDATE SET mute_microphone = excluded.mute_microphone, \
                 mute_speaker = excluded.mute_speaker, \
                 mute_changed_at = excluded.mute_changed_at \
                 WHERE participants.mute_changed_at < excluded.mute_changed_at",
            )
            .bind(e.participant.to_string())
            .bind(e.session.to_string())
            .bind(e.user.to_string())
            .bind(at)
            .bind(e.node.as_str())
            .bind(i64::from(*microphone))
            .bind(i64::from(*speaker))
            .execute(&mut *conn)
            .await?
        }
        ParticipantChange::Music { state } => {
            // The latest report wins whatever the order it arrives in (the node's times are
            // strictly increasing); a repeated one changes nothing and logs nothing.
            let json = serde_json::to_string(state).unwrap_or_default();
            sqlx::query(
                "UPDATE sessions SET music_state = $1, music_changed_at = $2 \
                 WHERE id = $3 AND node_id = $4 AND music_changed_at < $2",
            )
            .bind(json)
            .bind(at)
            .bind(e.session.to_string())
            .bind(e.node.as_str())
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(result.rows_affected() > 0)
}
