//! Accounts.

use super::{Inserted, Store, is_unique_violation, uuid_column};
use protocol::ids::UserId;
use sqlx::Row as _;
use sqlx::any::AnyRow;

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
    /// Creates an account; [`Inserted::Duplicate`] when the username (in any case) or the email
    /// is taken.
    pub(crate) async fn insert_user(&self, user: &NewUser<'_>) -> Result<Inserted, sqlx::Error> {
        let result = sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
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
