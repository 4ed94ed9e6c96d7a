//! TOTP factors, recovery codes and password changes.
//!
//! Every step that must happen once is a conditional UPDATE only one caller can win: a TOTP step
//! is accepted only if it is later than the last one (`last_step`), a recovery code only while
//! unused, a new password only over the hash that was verified.

use super::Store;
use protocol::ids::UserId;
use sqlx::Row as _;

/// A user's TOTP factor.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TotpRow {
    pub secret_sealed: String,
    pub enabled: bool,
    pub last_step: Option<u64>,
}

impl std::fmt::Debug for TotpRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpRow")
            .field("enabled", &self.enabled)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Stores a new secret awaiting confirmation, replacing an earlier unconfirmed one; `false`
    /// when TOTP is already on (it must be disabled first).
    pub(crate) async fn put_pending_totp(
        &self,
        user: UserId,
        secret_sealed: &str,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO totp_factors (user_id, secret_sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE \
             SET secret_sealed = excluded.secret_sealed, created_at = excluded.created_at, \
                 last_step = NULL \
             WHERE totp_factors.enabled_at IS NULL",
        )
        .bind(user.to_string())
        .bind(secret_sealed)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The user's factor, confirmed or not.
    pub(crate) async fn totp_factor(&self, user: UserId) -> Result<Option<TotpRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT secret_sealed, enabled_at, last_step FROM totp_factors WHERE user_id = $1",
        )
        .bind(user.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let enabled_at: Option<i64> = row.try_get("enabled_at")?;
            let last_step: Option<i64> = row.try_get("last_step")?;
            Ok(TotpRow {
                secret_sealed: row.try_get("secret_sealed")?,
                enabled: enabled_at.is_some(),
                last_step: last_step.and_then(|s| u64::try_from(s).ok()),
            })
        })
        .transpose()
    }

    /// Spends TOTP step `step` if it is later than the last one spent; with `confirm`, this
    /// also turns a pending factor on at `now_ms` (and only a pending one), else the factor
    /// must be on.
    pub(crate) async fn spend_totp_step(
        &self,
        user: UserId,
        step: u64,
        confirm: bool,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let query = if confirm {
            sqlx::query(
                "UPDATE totp_factors SET last_step = $2, enabled_at = $3 \
                 WHERE user_id = $1 AND enabled_at IS NULL \
                   AND (last_step IS NULL OR last_step < $2)",
            )
            .bind(user.to_string())
            .bind(step)
            .bind(now_ms)
        } else {
            sqlx::query(
                "UPDATE totp_factors SET last_step = $2 \
                 WHERE user_id = $1 AND enabled_at IS NOT NULL \
                   AND (last_step IS NULL OR last_step < $2)",
            )
            .bind(user.to_string())
            .bind(step)
        };
        let done = query.execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces the user's recovery codes with `hashes`, in one transaction.
    pub(crate) async fn replace_recovery_codes(
        &self,
        user: UserId,
        hashes: &[String],
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        for hash in hashes {
            sqlx::query(
                "INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
            )
            .bind(user.to_string())
            .bind(hash)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Spends an unused recovery code.
    pub(crate) async fn spend_recovery_code(
        &self,
        user: UserId,
        hash: &str,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(user.to_string())
        .bind(hash)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// How many unused recovery codes the user has.
    pub(crate) async fn recovery_codes_left(&self, user: UserId) -> Result<u64, sqlx::Error> {
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(left).unwrap_or(0))
    }

    /// Removes the user's factor and recovery codes; `false` if TOTP was not on.
    pub(crate) async fn remove_totp(&self, user: UserId) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM totp_factors WHERE user_id = $1")
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets a new password hash over the one the caller verified; `false` if it changed since.
    pub(crate) async fn change_password(
        &self,
        user: UserId,
        verified_hash: &str,
        new_hash: &str,
        now_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = $3, password_changed_at = $4 \
             WHERE id = $1 AND password_hash = $2",
        )
        .bind(user.to_string())
        .bind(verified_hash)
        .bind(new_hash)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::auth_sessions::tests::store_with_user;

    #[tokio::test]
    async fn each_step_each_recovery_code_and_each_verified_hash_is_spent_once() {
        let (store, user) = store_with_user().await;
        assert!(store.put_pending_totp(user, "sealed-1", 1).await.unwrap());
        // Not on yet: a sign-in step cannot be spent, the confirming one can, once.
        assert!(!store.spend_totp_step(user, 100, false, 2).await.unwrap());
        assert!(store.spend_totp_step(user, 100, true, 2).await.unwrap());
        assert!(!store.spend_totp_step(user, 101, true, 3).await.unwrap());
        // On: a later step once; the same or an earlier one never.
        assert!(!store.put_pending_totp(user, "sealed-2", 3).await.unwrap());
        assert!(!store.spend_totp_step(user, 100, false, 3).await.unwrap());
        assert!(!store.spend_totp_step(user, 99, false, 3).await.unwrap());
        assert!(store.spend_totp_step(user, 101, false, 3).await.unwrap());
        assert!(!store.spend_totp_step(user, 101, false, 3).await.unwrap());
        let factor = store.totp_factor(user).await.unwrap().unwrap();
        assert_eq!((factor.enabled, factor.last_step), (true, Some(101)));
        assert_eq!(factor.secret_sealed, "sealed-1");

        store
            .replace_recovery_codes(user, &["a".into(), "b".into()], 4)
            .await
            .unwrap();
        assert!(store.spend_recovery_code(user, "a", 5).await.unwrap());
        assert!(!store.spend_recovery_code(user, "a", 5).await.unwrap());
        assert_eq!(store.recovery_codes_left(user).await.unwrap(), 1);
        store
            .replace_recovery_codes(user, &["c".into()], 6)
            .await
            .unwrap();
        assert!(!store.spend_recovery_code(user, "b", 7).await.unwrap());
        assert_eq!(store.recovery_codes_left(user).await.unwrap(), 1);

        assert!(store.remove_totp(user).await.unwrap());
        assert!(!store.remove_totp(user).await.unwrap());
        assert_eq!(store.recovery_codes_left(user).await.unwrap(), 0);
        // A new enrolment starts from no used step.
        assert!(store.put_pending_totp(user, "sealed-3", 8).await.unwrap());
        assert!(store.spend_totp_step(user, 5, true, 9).await.unwrap());

        // The password changes only over the hash that was verified.
        assert!(store.change_password(user, "x", "y", 10).await.unwrap());
        assert!(!store.change_password(user, "x", "z", 11).await.unwrap());
    }
}
