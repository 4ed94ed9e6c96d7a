//! Places (geofences) of groups. Every change runs in the group's [`GroupTx`]: it moves the
//! group's `places_rev` on by one and appends `place_saved` or `place_removed` to its log, so an
//! engine that fetched revision n has seen every change up to it.

use super::group_log::{GroupTx, NewEvent};
use super::{Store, uuid_column};
use crate::clock::rfc3339;
use protocol::ids::{GroupId, PlaceId, UserId};
use protocol::location::{MAX_PLACES_PER_GROUP, PlaceShape, PlaceView};
use protocol::realtime::{EventData, GroupEvent};
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// A stored place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlaceRow {
    pub id: PlaceId,
    pub group: GroupId,
    pub name: String,
    pub shape: PlaceShape,
    pub dwell_ms: i64,
    pub created_by: UserId,
    pub created_at_ms: i64,
}

impl PlaceRow {
    pub(crate) fn view(&self) -> PlaceView {
        PlaceView {
            id: self.id,
            group: self.group,
            name: self.name.clone(),
            shape: self.shape.clone(),
            dwell_s: u32::try_from(self.dwell_ms / 1000).unwrap_or(u32::MAX),
            created_by: self.created_by,
            created_at: rfc3339(self.created_at_ms),
        }
    }

    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        let shape: String = row.try_get("shape")?;
        Ok(Self {
            id: uuid_column(row, "id", PlaceId::from_uuid)?,
            group: uuid_column(row, "group_id", GroupId::from_uuid)?,
            name: row.try_get("name")?,
            shape: serde_json::from_str(&shape).map_err(|e| sqlx::Error::ColumnDecode {
                index: "shape".into(),
                source: Box::new(e),
            })?,
            dwell_ms: row.try_get("dwell_ms")?,
            created_by: uuid_column(row, "created_by", UserId::from_uuid)?,
            created_at_ms: row.try_get("created_at")?,
        })
    }
}

const COLUMNS: &str = "id, group_id, name, shape, dwell_ms, created_by, created_at";

/// Why a change to a place was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlaceRefusal {
    /// The group is gone.
    NoGroup,
    /// No such place in the group.
    NoPlace,
    /// The group has [`MAX_PLACES_PER_GROUP`] places.
    TooMany,
    /// Only its creator or a group admin may change or remove a place.
    NotYours,
}

/// A change made: the event to fan out and the group's new places revision.
#[derive(Debug, Clone)]
pub(crate) struct PlacesChange {
    pub event: GroupEvent,
    pub rev: u64,
}

impl Store {
    /// A group's places (oldest first) and their revision.
    pub(crate) async fn places(&self, group: GroupId) -> Result<(u64, Vec<PlaceRow>), sqlx::Error> {
        let rev = self.places_rev(group).await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM places WHERE group_id = $1 ORDER BY created_at, id"
        ))
        .bind(group.to_string())
        .fetch_all(&self.pool)
        .await?;
        let places = rows
            .iter()
            .map(PlaceRow::from_row)
            .collect::<Result<_, _>>()?;
        Ok((rev, places))
    }

    /// The revision of a group's places (0: never changed, or no such group).
    pub(crate) async fn places_rev(&self, group: GroupId) -> Result<u64, sqlx::Error> {
        let row = sqlx::query("SELECT places_rev FROM groups WHERE id = $1")
            .bind(group.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => u64::try_from(r.try_get::<i64, _>("places_rev")?).unwrap_or(0),
            None => 0,
        })
    }

    /// One place of a group.
    pub(crate) async fn place(
        &self,
        group: GroupId,
        id: PlaceId,
    ) -> Result<Option<PlaceRow>, sqlx::Error> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM places WHERE group_id = $1 AND id = $2"
        ))
        .bind(group.to_string())
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(PlaceRow::from_row)
        .transpose()
    }

    /// Adds `place` (a new id), or replaces the place of that id if `by` created it or
    /// `admin` is set.
    pub(crate) async fn save_place(
        &self,
        place: &PlaceRow,
        by: UserId,
        admin: bool,
        now_ms: i64,
    ) -> Result<Result<PlacesChange, PlaceRefusal>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, place.group).await? else {
            return Ok(Err(PlaceRefusal::NoGroup));
        };
        let existing = sqlx::query("SELECT created_by FROM places WHERE id = $1 AND group_id = $2")
            .bind(place.id.to_string())
            .bind(place.group.to_string())
            .fetch_optional(&mut *gtx.conn())
            .await?;
        let shape = serde_json::to_string(&place.shape).unwrap_or_default();
        match existing {
            Some(row) => {
                let creator = uuid_column(&row, "created_by", UserId::from_uuid)?;
                if creator != by && !admin {
                    return Ok(Err(PlaceRefusal::NotYours));
                }
                sqlx::query(
                    "UPDATE places SET name = $1, shape = $2, dwell_ms = $3 \
                     WHERE id = $4 AND group_id = $5",
                )
                .bind(&place.name)
                .bind(shape)
                .bind(place.dwell_ms)
                .bind(place.id.to_string())
                .bind(place.group.to_string())
                .execute(&mut *gtx.conn())
                .await?;
            }
            None => {
                let count: i64 =
                    sqlx::query("SELECT COUNT(*) AS n FROM places WHERE group_id = $1")
                        .bind(place.group.to_string())
                        .fetch_one(&mut *gtx.conn())
                        .await?
                        .try_get("n")?;
                if count >= MAX_PLACES_PER_GROUP as i64 {
                    return Ok(Err(PlaceRefusal::TooMany));
                }
                sqlx::query(&format!(
                    "INSERT INTO places ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                ))
                .bind(place.id.to_string())
                .bind(place.group.to_string())
                .bind(&place.name)
                .bind(shape)
                .bind(place.dwell_ms)
                .bind(place.created_by.to_string())
                .bind(place.created_at_ms)
                .execute(&mut *gtx.conn())
                .await?;
            }
        }
        let rev = bump(&mut gtx).await?;
        let data = EventData::PlaceSaved {
            place: place.view(),
        };
        let event = gtx.append(NewEvent::data(by, now_ms, data)).await?;
        gtx.commit().await?;
        Ok(Ok(PlacesChange { event, rev }))
    }

    /// Removes a place if `by` created it or `admin` is set.
    pub(crate) async fn remove_place(
        &self,
        group: GroupId,
        id: PlaceId,
        by: UserId,
        admin: bool,
        now_ms: i64,
    ) -> Result<Result<PlacesChange, PlaceRefusal>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(Err(PlaceRefusal::NoGroup));
        };
        let existing = sqlx::query("SELECT created_by FROM places WHERE id = $1 AND group_id = $2")
            .bind(id.to_string())
            .bind(group.to_string())
            .fetch_optional(&mut *gtx.conn())
            .await?;
        let Some(row) = existing else {
            return Ok(Err(PlaceRefusal::NoPlace));
        };
        if uuid_column(&row, "created_by", UserId::from_uuid)? != by && !admin {
            return Ok(Err(PlaceRefusal::NotYours));
        }
        sqlx::query("DELETE FROM places WHERE id = $1 AND group_id = $2")
            .bind(id.to_string())
            .bind(group.to_string())
            .execute(&mut *gtx.conn())
            .await?;
        let rev = bump(&mut gtx).await?;
        let event = gtx
            .append(NewEvent::data(
                by,
                now_ms,
                EventData::PlaceRemoved { place: id },
            ))
            .await?;
        gtx.commit().await?;
        Ok(Ok(PlacesChange { event, rev }))
    }
}

/// Moves the group's places revision on by one; answers the new one.
async fn bump(gtx: &mut GroupTx) -> Result<u64, sqlx::Error> {
    let group = gtx.group();
    let rev: i64 = sqlx::query(
        "UPDATE groups SET places_rev = places_rev + 1 WHERE id = $1 RETURNING places_rev",
    )
    .bind(group.to_string())
    .fetch_one(&mut *gtx.conn())
    .await?
    .try_get("places_rev")?;
    Ok(u64::try_from(rev).unwrap_or(0))
}
