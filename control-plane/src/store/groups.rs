//! Groups, their members and invites. Every change to a group or its members is one
//! transaction that locks the group (see [`super::group_log`]) and appends its event.

use super::group_log::{GroupTx, NewEvent};
use super::{Store, parsed_column, uuid_column};
use protocol::api::{GroupSettings, JoinPermission, Privacy, Role};
use protocol::ids::{GroupId, UserId};
use protocol::realtime::{EventData, GroupEvent};
use sqlx::Row as _;
use sqlx::any::AnyRow;

/// A stored group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupRow {
    pub id: GroupId,
    pub name: String,
    pub created_by: UserId,
    pub created_at_ms: i64,
    pub description: String,
    pub avatar_url: Option<String>,
    pub settings: GroupSettings,
    pub last_seq: i64,
}

impl GroupRow {
    /// A group just created: no description, no picture, default settings.
    pub(crate) fn new(id: GroupId, name: String, created_by: UserId, now_ms: i64) -> Self {
        Self {
            id,
            name,
            created_by,
            created_at_ms: now_ms,
            description: String::new(),
            avatar_url: None,
            settings: GroupSettings::default(),
            last_seq: 0,
        }
    }
}

/// A group with the role one member holds in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberGroup {
    pub group: GroupRow,
    pub role: Role,
    pub member_count: i64,
    /// The group's seq when this member joined.
    pub joined_seq: i64,
}

/// A member as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberRow {
    pub user: UserId,
    pub username: String,
    pub role: Role,
    pub joined_at_ms: i64,
    pub read_upto: i64,
    pub delivered_upto: i64,
}

/// A stored invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InviteRow {
    pub group: GroupId,
    pub expires_at_ms: i64,
}

/// The changes of `PATCH /v1/groups/{id}`, validated; `None` keeps a field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    /// `Some(None)` removes the picture.
    pub avatar_url: Option<Option<String>>,
    pub privacy: Option<Privacy>,
    pub join_permission: Option<JoinPermission>,
    pub location_sharing: Option<bool>,
    pub music_sharing: Option<bool>,
    pub proximity_radius_m: Option<u32>,
}

/// Why a membership change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberRefusal {
    /// The group does not exist or the caller is not in it.
    NoGroup,
    /// The caller is a member but not an admin.
    NotAdmin,
    /// The target is not a member.
    NoMember,
    /// The change would leave members without an admin.
    LastAdmin,
}

/// A membership change that took effect, with its event (none when nothing changed).
pub(crate) type MemberChange = Result<Option<GroupEvent>, MemberRefusal>;

/// A group with one member's role, joined seq and the member count; a `WHERE` follows.
const MEMBER_GROUP_SELECT: &str = "SELECT g.id, g.name, g.created_by, g.created_at, \
     g.description, g.avatar_url, g.privacy, g.join_permission, g.location_sharing, \
     g.music_sharing, g.proximity_radius_m, g.last_seq, m.role, m.joined_seq, \
     (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id) AS member_count \
     FROM groups g JOIN group_members m ON m.group_id = g.id";

impl Store {
    /// Creates a group with its creator as admin; the creator's joining is the group's first
    /// event.
    pub(crate) async fn insert_group(&self, group: &GroupRow) -> Result<GroupEvent, sqlx::Error> {
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
        let mut gtx = GroupTx::lock(tx, group.id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        let event = gtx
            .append(NewEvent::data(
                group.created_by,
                group.created_at_ms,
                EventData::MemberJoined {
                    user: group.created_by,
                    role: Role::Admin,
                },
            ))
            .await?;
        insert_member(&mut gtx, group.created_by, Role::Admin, group.created_at_ms).await?;
        gtx.commit().await?;
        Ok(event)
    }

    /// The group as seen by `user`, or `None` if there is no such group or `user` is not in it.
    pub(crate) async fn member_group(
        &self,
        group: GroupId,
        user: UserId,
    ) -> Result<Option<MemberGroup>, sqlx::Error> {
        let sql = format!("{MEMBER_GROUP_SELECT} WHERE g.id = $1 AND m.user_id = $2");
        let row = sqlx::query(&sql)
            .bind(group.to_string())
            .bind(user.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(member_group_from_row).transpose()
    }

    /// Every group `user` is in, oldest first.
    pub(crate) async fn groups_of(&self, user: UserId) -> Result<Vec<MemberGroup>, sqlx::Error> {
        let sql = format!("{MEMBER_GROUP_SELECT} WHERE m.user_id = $1 ORDER BY g.created_at, g.id");
        let rows = sqlx::query(&sql)
            .bind(user.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(member_group_from_row).collect()
    }

    /// The privacy of a group, whoever asks; `None` if it does not exist.
    pub(crate) async fn group_privacy(
        &self,
        group: GroupId,
    ) -> Result<Option<Privacy>, sqlx::Error> {
        let row = sqlx::query("SELECT privacy FROM groups WHERE id = $1")
            .bind(group.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| parsed_column(&row, "privacy", parse_privacy))
            .transpose()
    }

    /// The members of a group, oldest first.
    pub(crate) async fn members(&self, group: GroupId) -> Result<Vec<MemberRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT m.user_id, u.username, m.role, m.joined_at, m.read_upto, m.delivered_upto \
             FROM group_members m JOIN users u ON u.id = m.user_id \
             WHERE m.group_id = $1 ORDER BY m.joined_at, m.user_id",
        )
        .bind(group.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MemberRow {
                    user: uuid_column(row, "user_id", UserId::from_uuid)?,
                    username: row.try_get("username")?,
                    role: parsed_column(row, "role", Role::parse)?,
                    joined_at_ms: row.try_get("joined_at")?,
                    read_upto: row.try_get("read_upto")?,
                    delivered_upto: row.try_get("delivered_upto")?,
                })
            })
            .collect()
    }

    /// Adds `user` to `group` as a member. `Ok(None)`: they were in it already; `Err`: the
    /// group is gone.
    pub(crate) async fn add_member(
        &self,
        group: GroupId,
        user: UserId,
        now_ms: i64,
    ) -> Result<Result<Option<GroupEvent>, MemberRefusal>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(Err(MemberRefusal::NoGroup));
        };
        if gtx.role_of(user).await?.is_some() {
            return Ok(Ok(None));
        }
        let event = gtx
            .append(NewEvent::data(
                user,
                now_ms,
                EventData::MemberJoined {
                    user,
                    role: Role::Member,
                },
            ))
            .await?;
        insert_member(&mut gtx, user, Role::Member, now_ms).await?;
        gtx.commit().await?;
        Ok(Ok(Some(event)))
    }

    /// Applies an admin's changes to a group and answers the group as the admin sees it now.
    pub(crate) async fn update_group(
        &self,
        group: GroupId,
        admin: UserId,
        changes: &GroupChanges,
        now_ms: i64,
        view: impl FnOnce(&MemberGroup) -> protocol::api::GroupView,
    ) -> Result<Result<(MemberGroup, GroupEvent), MemberRefusal>, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(Err(MemberRefusal::NoGroup));
        };
        if let Err(refusal) = require_admin(&mut gtx, admin).await? {
            return Ok(Err(refusal));
        }
        let c = changes;
        sqlx::query(
            "UPDATE groups SET \
             name = COALESCE($2, name), description = COALESCE($3, description), \
             avatar_url = CASE WHEN $4 = 1 THEN $5 ELSE avatar_url END, \
             privacy = COALESCE($6, privacy), join_permission = COALESCE($7, join_permission), \
             location_sharing = COALESCE($8, location_sharing), \
             music_sharing = COALESCE($9, music_sharing), \
             proximity_radius_m = COALESCE($10, proximity_radius_m) \
             WHERE id = $1",
        )
        .bind(group.to_string())
        .bind(c.name.clone())
        .bind(c.description.clone())
        .bind(i64::from(c.avatar_url.is_some()))
        .bind(c.avatar_url.clone().flatten())
        .bind(c.privacy.map(privacy_str))
        .bind(c.join_permission.map(join_permission_str))
        .bind(c.location_sharing.map(i64::from))
        .bind(c.music_sharing.map(i64::from))
        .bind(c.proximity_radius_m.map(i64::from))
        .execute(gtx.conn())
        .await?;
        let sql = format!("{MEMBER_GROUP_SELECT} WHERE g.id = $1 AND m.user_id = $2");
        let row = sqlx::query(&sql)
            .bind(group.to_string())
            .bind(admin.to_string())
            .fetch_one(gtx.conn())
            .await?;
        let mut updated = member_group_from_row(&row)?;
        let seq_before = updated.group.last_seq;
        updated.group.last_seq = seq_before + 1;
        let event = gtx
            .append(NewEvent::data(
                admin,
                now_ms,
                EventData::GroupUpdated {
                    details: view(&updated),
                },
            ))
            .await?;
        gtx.commit().await?;
        Ok(Ok((updated, event)))
    }

    /// Deletes a group (admins only). The answer is the event to fan out; it is not stored,
    /// since the group's log goes with it.
    pub(crate) async fn delete_group(
        &self,
        group: GroupId,
        admin: UserId,
        now_ms: i64,
    ) -> Result<MemberChange, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(Err(MemberRefusal::NoGroup));
        };
        if let Err(refusal) = require_admin(&mut gtx, admin).await? {
            return Ok(Err(refusal));
        }
        delete_locked(gtx, admin, now_ms).await.map(|e| Ok(Some(e)))
    }

    /// `actor` takes `target` out of `group`: themselves (leaving) or, as an admin, anyone.
    /// The last admin cannot leave while others remain; the last member leaving deletes the
    /// group (the answer is then a `GroupDeleted` event).
    pub(crate) async fn remove_member(
        &self,
        group: GroupId,
        actor: UserId,
        target: UserId,
        now_ms: i64,
    ) -> Result<MemberChange, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(Err(MemberRefusal::NoGroup));
        };
        let Some(actor_role) = gtx.role_of(actor).await? else {
            return Ok(Err(MemberRefusal::NoGroup));
        };
        if actor != target && actor_role != Role::Admin {
            return Ok(Err(MemberRefusal::NotAdmin));
        }
        let Some(target_role) = gtx.role_of(target).await? else {
            return Ok(Err(MemberRefusal::NoMember));
        };
        let (members, admins) = gtx.counts().await?;
        if members == 1 {
            return delete_locked(gtx, actor, now_ms).await.map(|e| Ok(Some(e)));
        }
        if target_role == Role::Admin && admins == 1 {
            return Ok(Err(MemberRefusal::LastAdmin));
        }
        sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
            .bind(group.to_string())
            .bind(target.to_string())
            .execute(gtx.conn())
            .await?;
        let removed_by = (actor != target).then_some(actor);
        let event = gtx
            .append(NewEvent::data(
                actor,
                now_ms,
                EventData::MemberLeft {
                    user: target,
                    removed_by,
                },
            ))
            .await?;
        gtx.commit().await?;
        Ok(Ok(Some(event)))
    }

    /// An admin gives `target` a role. Demoting the last admin is refused; a role the target
    /// holds already changes nothing.
    pub(crate) async fn set_role(
        &self,
        group: GroupId,
        admin: UserId,
        target: UserId,
        role: Role,
        now_ms: i64,
    ) -> Result<MemberChange, sqlx::Error> {
        let Some(mut gtx) = GroupTx::begin(&self.pool, group).await? else {
            return Ok(Err(MemberRefusal::NoGroup));
        };
        if let Err(refusal) = require_admin(&mut gtx, admin).await? {
            return Ok(Err(refusal));
        }
        let Some(current) = gtx.role_of(target).await? else {
            return Ok(Err(MemberRefusal::NoMember));
        };
        if current == role {
            return Ok(Ok(None));
        }
        if current == Role::Admin && gtx.counts().await?.1 == 1 {
            return Ok(Err(MemberRefusal::LastAdmin));
        }
        sqlx::query("UPDATE group_members SET role = $3 WHERE group_id = $1 AND user_id = $2")
            .bind(group.to_string())
            .bind(target.to_string())
            .bind(role.as_str())
            .execute(gtx.conn())
            .await?;
        let event = gtx
            .append(NewEvent::data(
                admin,
                now_ms,
                EventData::RoleChanged { user: target, role },
            ))
            .await?;
        gtx.commit().await?;
        Ok(Ok(Some(event)))
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

/// Whether `user` is an admin of the locked group: a non-member is told there is no group.
async fn require_admin(
    gtx: &mut GroupTx,
    user: UserId,
) -> Result<Result<(), MemberRefusal>, sqlx::Error> {
    Ok(match gtx.role_of(user).await? {
        None => Err(MemberRefusal::NoGroup),
        Some(Role::Member) => Err(MemberRefusal::NotAdmin),
        Some(Role::Admin) => Ok(()),
    })
}

/// Deletes the locked group; its log goes with it, so the event is only fanned out.
async fn delete_locked(
    mut gtx: GroupTx,
    actor: UserId,
    now_ms: i64,
) -> Result<GroupEvent, sqlx::Error> {
    let group = gtx.group();
    let seq = gtx.last_seq() + 1;
    sqlx::query("DELETE FROM groups WHERE id = $1")
        .bind(group.to_string())
        .execute(gtx.conn())
        .await?;
    gtx.commit().await?;
    Ok(GroupEvent {
        group,
        seq: u64::try_from(seq).unwrap_or(0),
        at: crate::clock::rfc3339(now_ms),
        actor,
        data: EventData::GroupDeleted,
    })
}

/// Inserts a member row at the group's current seq (after the join event was appended).
async fn insert_member(
    gtx: &mut GroupTx,
    user: UserId,
    role: Role,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let group = gtx.group();
    let joined_seq = gtx.last_seq();
    sqlx::query(
        "INSERT INTO group_members (group_id, user_id, role, joined_at, joined_seq) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(group.to_string())
    .bind(user.to_string())
    .bind(role.as_str())
    .bind(now_ms)
    .bind(joined_seq)
    .execute(gtx.conn())
    .await
    .map(drop)
}

fn member_group_from_row(row: &AnyRow) -> Result<MemberGroup, sqlx::Error> {
    let flag =
        |column: &str| -> Result<bool, sqlx::Error> { Ok(row.try_get::<i64, _>(column)? != 0) };
    Ok(MemberGroup {
        group: GroupRow {
            id: uuid_column(row, "id", GroupId::from_uuid)?,
            name: row.try_get("name")?,
            created_by: uuid_column(row, "created_by", UserId::from_uuid)?,
            created_at_ms: row.try_get("created_at")?,
            description: row.try_get("description")?,
            avatar_url: row.try_get("avatar_url")?,
            settings: GroupSettings {
                privacy: parsed_column(row, "privacy", parse_privacy)?,
                join_permission: parsed_column(row, "join_permission", parse_join_permission)?,
                location_sharing: flag("location_sharing")?,
                music_sharing: flag("music_sharing")?,
                proximity_radius_m: u32::try_from(row.try_get::<i64, _>("proximity_radius_m")?)
                    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            },
            last_seq: row.try_get("last_seq")?,
        },
        role: parsed_column(row, "role", Role::parse)?,
        member_count: row.try_get("member_count")?,
        joined_seq: row.try_get("joined_seq")?,
    })
}

fn privacy_str(p: Privacy) -> &'static str {
    match p {
        Privacy::Private => "private",
        Privacy::Public => "public",
    }
}

fn parse_privacy(s: &str) -> Option<Privacy> {
    match s {
        "private" => Some(Privacy::Private),
        "public" => Some(Privacy::Public),
        _ => None,
    }
}

fn join_permission_str(p: JoinPermission) -> &'static str {
    match p {
        JoinPermission::Admins => "admins",
        JoinPermission::Members => "members",
    }
}

fn parse_join_permission(s: &str) -> Option<JoinPermission> {
    match s {
        "admins" => Some(JoinPermission::Admins),
        "members" => Some(JoinPermission::Members),
        _ => None,
    }
}
