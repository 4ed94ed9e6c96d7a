//! Sign-in sessions and their rotating refresh tokens.
//!
//! A session is one refresh-token family: signing in creates it with its first token; each
//! refresh spends the presented token (`rotated_at`) and issues its child (`parent_id`). A spent
//! token presented again within the grace window (the answer to the first use was lost) spends
//! the child it got and issues another; after the window, or once that child was used in turn,
//! it is taken as stolen and the whole session is revoked. No read-then-write transaction: each
//! step is a conditional UPDATE that only one caller can win.

use super::{Store, uuid_column};
use protocol::ids::UserId;
use sqlx::Row as _;
use sqlx::any::AnyRow;
use uuid::Uuid;

/// A session to create with its first token.
#[derive(Debug, Clone)]
pub(crate) struct NewAuthSession<'a> {
    pub id: Uuid,
    pub user: UserId,
    pub token_hash: &'a str,
    pub user_agent: Option<&'a str>,
    pub now_ms: i64,
    pub expires_at_ms: i64,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthSessionRow {
    pub id: Uuid,
    pub created_at_ms: i64,
    pub last_used_at_ms: i64,
    pub user_agent: Option<String>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refreshed {
    /// Spent; its successor (hash given by the caller) is stored.
    Rotated { user: UserId, session: Uuid },
    /// Unknown, expired, superseded, or of a signed-out session.
    Invalid,
    /// A spent token came back after the grace window: the session is revoked.
    Reused { user: UserId, session: Uuid },
}

/// The token row a refresh looks at.
struct Presented {
    id: String,
    user: UserId,
    session: Uuid,
    expires_at: i64,
    revoked: bool,
    rotated_at: Option<i64>,
    session_revoked: bool,
}

impl Presented {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            user: uuid_column(row, "user_id", UserId::from_uuid)?,
            session: uuid_column(row, "family_id", |u| u)?,
            expires_at: row.try_get("expires_at")?,
            revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            rotated_at: row.try_get("rotated_at")?,
            session_revoked: row
                .try_get::<Option<i64>, _>("session_revoked_at")?
                .is_some(),
        })
    }
}

impl AuthSessionRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: uuid_column(row, "id", |u| u)?,
            created_at_ms: row.try_get("created_at")?,
            last_used_at_ms: row.try_get("last_used_at")?,
            user_agent: row.try_get("user_agent")?,
        })
    }
}

impl Store {
    /// Creates a session and its first refresh token.
    pub(crate) async fn create_auth_session(
        &self,
        s: &NewAuthSession<'_>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO auth_sessions (id, user_id, created_at, last_used_at, expires_at, \
             user_agent) VALUES ($1, $2, $3, $3, $4, $5)",
        )
        .bind(s.id.to_string())
        .bind(s.user.to_string())
        .bind(s.now_ms)
        .bind(s.expires_at_ms)
        .bind(s.user_agent)
        .execute(&self.pool)
        .await?;
        self.insert_token(s.user, s.id, None, s.token_hash, s.now_ms, s.expires_at_ms)
            .await
    }

    async fn insert_token(
        &self,
        user: UserId,
        session: Uuid,
        parent: Option<&str>,
        token_hash: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, \
             expires_at, parent_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(user.to_string())
        .bind(session.to_string())
        .bind(token_hash)
        .bind(now_ms)
        .bind(expires_at_ms)
        .bind(parent)
        .execute(&self.pool)
        .await
        .map(drop)
    }

    async fn presented(&self, token_hash: &str) -> Result<Option<Presented>, sqlx::Error> {
        sqlx::query(
            "SELECT t.id, t.user_id, t.family_id, t.expires_at, t.revoked_at, t.rotated_at, \
             s.revoked_at AS session_revoked_at \
             FROM refresh_tokens t JOIN auth_sessions s ON s.id = t.family_id \
             WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(Presented::from_row)
        .transpose()
    }

    /// Spends the token with `token_hash` and stores `next_hash` as its successor, or says why not
    /// (see the module doc for the grace window `grace_ms`).
    pub(crate) async fn refresh(
        &self,
        token_hash: &str,
        next_hash: &str,
        now_ms: i64,
        expires_at_ms: i64,
        grace_ms: i64,
    ) -> Result<Refreshed, sqlx::Error> {
        let Some(mut t) = self.presented(token_hash).await? else {
            return Ok(Refreshed::Invalid);
        };
        if t.revoked || t.session_revoked || t.expires_at <= now_ms {
            return Ok(Refreshed::Invalid);
        }
        if t.rotated_at.is_none() {
            let won = sqlx::query(
                "UPDATE refresh_tokens SET rotated_at = $1 \
                 WHERE id = $2 AND rotated_at IS NULL AND revoked_at IS NULL",
            )
            .bind(now_ms)
            .bind(&t.id)
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1;
            if won {
                return self.issue_child(&t, next_hash, now_ms, expires_at_ms).await;
            }
            // Spent by a concurrent request a moment ago: a retry, as below.
            match self.presented(token_hash).await? {
                Some(again) if !again.revoked && !again.session_revoked => t = again,
                _ => return Ok(Refreshed::Invalid),
            }
        }
        let spent_at = t.rotated_at.unwrap_or(now_ms);
        let child_used: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM refresh_tokens WHERE parent_id = $1 AND rotated_at IS NOT NULL",
        )
        .bind(&t.id)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        if now_ms.saturating_sub(spent_at) <= grace_ms && child_used == 0 {
            // The answer to the first use was lost: its child was never used. Replace it.
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $1 \
                 WHERE parent_id = $2 AND rotated_at IS NULL AND revoked_at IS NULL",
            )
            .bind(now_ms)
            .bind(&t.id)
            .execute(&self.pool)
            .await?;
            return self.issue_child(&t, next_hash, now_ms, expires_at_ms).await;
        }
        self.revoke_auth_session(t.user, t.session, now_ms, "reuse")
            .await?;
        Ok(Refreshed::Reused {
            user: t.user,
            session: t.session,
        })
    }

    async fn issue_child(
        &self,
        t: &Presented,
        next_hash: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Refreshed, sqlx::Error> {
        self.insert_token(
            t.user,
            t.session,
            Some(&t.id),
            next_hash,
            now_ms,
            expires_at_ms,
        )
        .await?;
        let live = sqlx::query(
            "UPDATE auth_sessions SET last_used_at = $1, expires_at = $2 \
             WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(expires_at_ms)
        .bind(t.session.to_string())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        // Signed out meanwhile: the child exists but is refused on use (its session is revoked).
        Ok(if live {
            Refreshed::Rotated {
                user: t.user,
                session: t.session,
            }
        } else {
            Refreshed::Invalid
        })
    }

    /// The user's sessions that are neither signed out nor expired, newest use first.
    pub(crate) async fn auth_sessions(
        &self,
        user: UserId,
        now_ms: i64,
    ) -> Result<Vec<AuthSessionRow>, sqlx::Error> {
        sqlx::query(
            "SELECT id, created_at, last_used_at, user_agent FROM auth_sessions \
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
             ORDER BY last_used_at DESC, id",
        )
        .bind(user.to_string())
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(AuthSessionRow::from_row)
        .collect()
    }

    /// Whether access tokens of `session` (of `user`) must be refused: it was signed out, has
    /// expired, or does not exist.
    pub(crate) async fn auth_session_revoked(
        &self,
        session: uuid::Uuid,
        user: UserId,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let live = sqlx::query(
            "SELECT 1 AS live FROM auth_sessions \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > $3",
        )
        .bind(session.to_string())
        .bind(user.to_string())
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(live.is_none())
    }

    /// Signs one of the user's sessions out. Returns whether it was live.
    pub(crate) async fn revoke_auth_session(
        &self,
        user: UserId,
        session: Uuid,
        now_ms: i64,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $1, revoked_reason = $2 \
             WHERE id = $3 AND user_id = $4 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(reason)
        .bind(session.to_string())
        .bind(user.to_string())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Signs out every session of the user but `keep`. Returns how many were live.
    pub(crate) async fn revoke_other_auth_sessions(
        &self,
        user: UserId,
        keep: Option<Uuid>,
        now_ms: i64,
        reason: &str,
    ) -> Result<u64, sqlx::Error> {
        let keep = keep.map(|k| k.to_string()).unwrap_or_default();
        Ok(sqlx::query(
            "UPDATE auth_sessions SET revoked_at = $1, revoked_reason = $2 \
             WHERE user_id = $3 AND id <> $4 AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(reason)
        .bind(user.to_string())
        .bind(keep)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::NewUser;

    pub(crate) async fn store_with_user() -> (Store, UserId) {
        let dir = std::env::temp_dir().join(format!("convoy-auth-{}", Uuid::now_v7()));
        let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.join("a.db").display()))
            .await
            .unwrap();
        let user = UserId::from_uuid(Uuid::now_v7());
        store
            .insert_user(&NewUser {
                id: user,
                username: "ann",
                email: "ann@example.org",
                password_hash: "x",
                now_ms: 0,
            })
            .await
            .unwrap();
        (store, user)
    }

    const T0: i64 = 1_700_000_000_000;
    const GRACE: i64 = 10_000;
    const LIFE: i64 = 30 * 24 * 3600 * 1000;

    #[tokio::test]
    async fn the_grace_window_is_kept_to_the_millisecond_and_expiry_is_honoured() {
        let (store, user) = store_with_user().await;
        let session = Uuid::now_v7();
        store
            .create_auth_session(&NewAuthSession {
                id: session,
                user,
                token_hash: "h0",
                user_agent: None,
                now_ms: T0,
                expires_at_ms: T0 + LIFE,
            })
            .await
            .unwrap();
        let rotated = Refreshed::Rotated { user, session };
        let r = |hash, next, now| store.refresh(hash, next, now, now + LIFE, GRACE);
        assert_eq!(r("h0", "h1", T0 + 1).await.unwrap(), rotated);
        // A retry exactly at the end of the window is one; a millisecond later it is theft.
        assert_eq!(r("h0", "h2", T0 + 1 + GRACE).await.unwrap(), rotated);
        assert_eq!(
            r("h1", "hx", T0 + 2 + GRACE).await.unwrap(),
            Refreshed::Invalid
        );
        assert_eq!(
            r("h0", "h3", T0 + 2 + GRACE).await.unwrap(),
            Refreshed::Reused { user, session }
        );
        assert_eq!(
            r("h2", "h4", T0 + 3 + GRACE).await.unwrap(),
            Refreshed::Invalid
        );
        assert!(store.auth_sessions(user, T0).await.unwrap().is_empty());

        // A token past its expiry is refused, and its session is not listed.
        let other = Uuid::now_v7();
        store
            .create_auth_session(&NewAuthSession {
                id: other,
                user,
                token_hash: "k0",
                user_agent: Some("test"),
                now_ms: T0,
                expires_at_ms: T0 + 1_000,
            })
            .await
            .unwrap();
        assert_eq!(store.auth_sessions(user, T0 + 999).await.unwrap().len(), 1);
        assert!(
            store
                .auth_sessions(user, T0 + 1_000)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(r("k0", "k1", T0 + 1_000).await.unwrap(), Refreshed::Invalid);
    }
}
