//! Accounts: credentials, profile, settings, plan, and devices to notify.

use super::{Inserted, Store, is_unique_violation, parsed_column, uuid_column};
use protocol::account::{
    AudioSettings, MessageNotifications, NotificationSettings, Platform, PrivacySettings,
    SubscriptionStatus, SubscriptionTier, UpdateSettingsRequest, UserSettings,
};
use protocol::ids::{GroupId, UserId};
use sqlx::Row as _;
use sqlx::any::AnyRow;
use uuid::Uuid;

/// An account to create; the password is already hashed.
#[derive(Debug, Clone)]
pub(crate) struct NewUser<'a> {
    pub id: UserId,
    pub username: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub now_ms: i64,
}

/// A stored account.
#[derive(Clone)]
pub(crate) struct UserRow {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub password_hash: String,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl UserRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: uuid_column(row, "id", UserId::from_uuid)?,
            username: row.try_get("username")?,
            email: row.try_get("email")?,
            password_hash: row.try_get("password_hash")?,
        })
    }
}

impl Store {
    /// Creates an account, signed in now; [`Inserted::Duplicate`] when the username (in any case) or the email
    /// is taken.
    pub(crate) async fn insert_user(&self, user: &NewUser<'_>) -> Result<Inserted, sqlx::Error> {
        let result = sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, created_at, last_login_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(user.id.to_string())
        .bind(user.username)
        .bind(user.email)
        .bind(user.password_hash)
        .bind(user.now_ms)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(Inserted::Done),
            Err(e) if is_unique_violation(&e) => Ok(Inserted::Duplicate),
            Err(e) => Err(e),
        }
    }

    /// The account with this (lowercased) email.
    pub(crate) async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
        sqlx::query("SELECT id, username, email, password_hash FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(UserRow::from_row)
            .transpose()
    }

    /// The account with this id.
    pub(crate) async fn user_by_id(&self, id: UserId) -> Result<Option<UserRow>, sqlx::Error> {
        sqlx::query("SELECT id, username, email, password_hash FROM users WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(UserRow::from_row)
            .transpose()
    }

    /// Records a successful sign-in.
    pub(crate) async fn touch_login(&self, user: UserId, now_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(user.to_string())
            .execute(&self.pool)
            .await
            .map(drop)
    }
}

/// An account with everything `GET /v1/users/me` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountRow {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub picture_url: Option<String>,
    pub created_at_ms: i64,
    pub last_login_at_ms: Option<i64>,
    pub settings: UserSettings,
    pub tier: SubscriptionTier,
    pub status: SubscriptionStatus,
    pub renews_at_ms: Option<i64>,
}

/// The profile changes of `PATCH /v1/users/me`, validated; `None` keeps a field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AccountChanges {
    pub username: Option<String>,
    /// `Some(None)` removes the picture.
    pub picture_url: Option<Option<String>>,
    /// Already lowercased.
    pub email: Option<String>,
}

/// A device registration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewDevice {
    pub platform: Platform,
    /// The APNs/FCM token or the Web Push endpoint.
    pub token: String,
    pub p256dh: Option<String>,
    pub auth: Option<String>,
}

/// A stored device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceRow {
    pub id: Uuid,
    pub user: UserId,
    pub platform: Platform,
    pub token: String,
    pub p256dh: Option<String>,
    pub auth: Option<String>,
    pub created_at_ms: i64,
    pub last_seen_at_ms: i64,
}

/// The most devices one account keeps; registering another drops the least recently seen.
pub(crate) const MAX_DEVICES: i64 = 20;

const ACCOUNT_SELECT: &str = "SELECT id, username, email, picture_url, created_at, last_login_at, \
     notify_messages, notify_calls, notify_proximity, show_presence, share_location, \
     location_history_days, \
     noise_suppression, echo_cancellation, auto_gain, voice_volume, music_volume, \
     subscription_tier, subscription_status, subscription_renews_at FROM users WHERE id = $1";

const DEVICE_COLUMNS: &str = "id, user_id, platform, token, p256dh, auth, created_at, last_seen_at";

impl Store {
    /// The account with its settings and plan.
    pub(crate) async fn account(&self, id: UserId) -> Result<Option<AccountRow>, sqlx::Error> {
        sqlx::query(ACCOUNT_SELECT)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(account_from_row)
            .transpose()
    }

    /// Applies profile changes in one statement; [`Inserted::Duplicate`] when the new username
    /// or email belongs to another account.
    pub(crate) async fn update_account(
        &self,
        id: UserId,
        changes: &AccountChanges,
    ) -> Result<Inserted, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE users SET username = COALESCE($2, username), \
             picture_url = CASE WHEN $3 = 1 THEN $4 ELSE picture_url END, \
             email = COALESCE($5, email) WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(changes.username.clone())
        .bind(i64::from(changes.picture_url.is_some()))
        .bind(changes.picture_url.clone().flatten())
        .bind(changes.email.clone())
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(Inserted::Done),
            Err(e) if is_unique_violation(&e) => Ok(Inserted::Duplicate),
            Err(e) => Err(e),
        }
    }

    /// Applies setting changes in one statement (concurrent changes to different settings
    /// both stay).
    pub(crate) async fn update_settings(
        &self,
        id: UserId,
        req: &UpdateSettingsRequest,
    ) -> Result<(), sqlx::Error> {
        let n = req.notifications.unwrap_or_default();
        let p = req.privacy.unwrap_or_default();
        let a = req.audio.unwrap_or_default();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE users SET notify_messages = COALESCE($2, notify_messages), \
             notify_calls = COALESCE($3, notify_calls), \
             notify_proximity = COALESCE($4, notify_proximity), \
             show_presence = COALESCE($5, show_presence), \
             share_location = COALESCE($6, share_location), \
             noise_suppression = COALESCE($7, noise_suppression), \
             echo_cancellation = COALESCE($8, echo_cancellation), \
             auto_gain = COALESCE($9, auto_gain), \
             voice_volume = COALESCE($10, voice_volume), \
             music_volume = COALESCE($11, music_volume), \
             location_history_days = COALESCE($12, location_history_days) WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(n.messages.map(MessageNotifications::as_str))
        .bind(n.calls.map(i64::from))
        .bind(n.proximity.map(i64::from))
        .bind(p.show_presence.map(i64::from))
        .bind(p.share_location.map(i64::from))
        .bind(a.noise_suppression.map(i64::from))
        .bind(a.echo_cancellation.map(i64::from))
        .bind(a.auto_gain.map(i64::from))
        .bind(a.voice_volume.map(i64::from))
        .bind(a.music_volume.map(i64::from))
        .bind(p.location_history_days.map(i64::from))
        .execute(&mut *tx)
        .await?;
        // Keeping no history deletes what was kept, in the same transaction.
        if p.location_history_days == Some(0) {
            sqlx::query("DELETE FROM location_history WHERE user_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Whether `viewer` may see `user`'s profile: it is their own, or they share a group.
    pub(crate) async fn may_see_profile(
        &self,
        viewer: UserId,
        user: UserId,
    ) -> Result<bool, sqlx::Error> {
        if viewer == user {
            return Ok(true);
        }
        let shared: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM group_members a JOIN group_members b ON a.group_id = b.group_id \
             WHERE a.user_id = $1 AND b.user_id = $2 LIMIT 1",
        )
        .bind(viewer.to_string())
        .bind(user.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(shared.is_some())
    }

    /// The members of `group`, in joining order, with whether each shows their presence.
    pub(crate) async fn presence_visibility(
        &self,
        group: GroupId,
    ) -> Result<Vec<(UserId, bool)>, sqlx::Error> {
        sqlx::query(
            "SELECT u.id, u.show_presence FROM group_members m JOIN users u ON u.id = m.user_id \
             WHERE m.group_id = $1 ORDER BY m.joined_at, u.id",
        )
        .bind(group.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let shown: i64 = row.try_get("show_presence")?;
            Ok((uuid_column(row, "id", UserId::from_uuid)?, shown != 0))
        })
        .collect()
    }

    /// Whether `user` shows their presence (false for an account that no longer exists).
    pub(crate) async fn shows_presence(&self, user: UserId) -> Result<bool, sqlx::Error> {
        let shown: Option<i64> =
            sqlx::query_scalar("SELECT show_presence FROM users WHERE id = $1")
                .bind(user.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(shown.is_some_and(|s| s != 0))
    }

    /// Registers a device for `user`, or refreshes it (a token another account held moves to
    /// this one), then keeps only the [`MAX_DEVICES`] most recently seen.
    pub(crate) async fn upsert_device(
        &self,
        user: UserId,
        device: &NewDevice,
        now_ms: i64,
    ) -> Result<DeviceRow, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "INSERT INTO devices ({DEVICE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             ON CONFLICT (token) DO UPDATE SET user_id = excluded.user_id, \
             platform = excluded.platform, p256dh = excluded.p256dh, auth = excluded.auth, \
             created_at = CASE WHEN devices.user_id = excluded.user_id \
                 THEN devices.created_at ELSE excluded.created_at END, \
             last_seen_at = excluded.last_seen_at \
             RETURNING {DEVICE_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(Uuid::now_v7().to_string())
            .bind(user.to_string())
            .bind(device.platform.as_str())
            .bind(&device.token)
            .bind(device.p256dh.clone())
            .bind(device.auth.clone())
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?;
        let stored = device_from_row(&row)?;
        sqlx::query(
            "DELETE FROM devices WHERE user_id = $1 AND id NOT IN \
             (SELECT id FROM devices WHERE user_id = $1 \
              ORDER BY last_seen_at DESC, id DESC LIMIT $2)",
        )
        .bind(user.to_string())
        .bind(MAX_DEVICES)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// The user's devices, most recently seen first.
    pub(crate) async fn devices_of(&self, user: UserId) -> Result<Vec<DeviceRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1 \
             ORDER BY last_seen_at DESC, id DESC"
        );
        sqlx::query(&sql)
            .bind(user.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(device_from_row)
            .collect()
    }

    /// Forgets one of the user's devices; false when it has no such device.
    pub(crate) async fn delete_device(&self, user: UserId, id: Uuid) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM devices WHERE id = $1 AND user_id = $2")
            .bind(id.to_string())
            .bind(user.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

fn account_from_row(row: &AnyRow) -> Result<AccountRow, sqlx::Error> {
    let flag =
        |column: &str| -> Result<bool, sqlx::Error> { Ok(row.try_get::<i64, _>(column)? != 0) };
    let level = |column: &str| -> Result<u8, sqlx::Error> {
        let v: i64 = row.try_get(column)?;
        u8::try_from(v).map_err(|e| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(e),
        })
    };
    Ok(AccountRow {
        id: uuid_column(row, "id", UserId::from_uuid)?,
        username: row.try_get("username")?,
        email: row.try_get("email")?,
        picture_url: row.try_get("picture_url")?,
        created_at_ms: row.try_get("created_at")?,
        last_login_at_ms: row.try_get("last_login_at")?,
        settings: UserSettings {
            notifications: NotificationSettings {
                messages: parsed_column(row, "notify_messages", MessageNotifications::parse)?,
                calls: flag("notify_calls")?,
                proximity: flag("notify_proximity")?,
            },
            privacy: PrivacySettings {
                show_presence: flag("show_presence")?,
                share_location: flag("share_location")?,
                location_history_days: u16::try_from(
                    row.try_get::<i64, _>("location_history_days")?,
                )
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            },
            audio: AudioSettings {
                noise_suppression: flag("noise_suppression")?,
                echo_cancellation: flag("echo_cancellation")?,
                auto_gain: flag("auto_gain")?,
                voice_volume: level("voice_volume")?,
                music_volume: level("music_volume")?,
            },
        },
        tier: parsed_column(row, "subscription_tier", SubscriptionTier::parse)?,
        status: parsed_column(row, "subscription_status", SubscriptionStatus::parse)?,
        renews_at_ms: row.try_get("subscription_renews_at")?,
    })
}

fn device_from_row(row: &AnyRow) -> Result<DeviceRow, sqlx::Error> {
    Ok(DeviceRow {
        id: uuid_column(row, "id", |u| u)?,
        user: uuid_column(row, "user_id", UserId::from_uuid)?,
        platform: parsed_column(row, "platform", Platform::parse)?,
        token: row.try_get("token")?,
        p256dh: row.try_get("p256dh")?,
        auth: row.try_get("auth")?,
        created_at_ms: row.try_get("created_at")?,
        last_seen_at_ms: row.try_get("last_seen_at")?,
    })
}
