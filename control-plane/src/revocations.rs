//! Access tokens of signed-out sessions stop working before they expire.
//!
//! An access token names its sign-in session (`sid`). SQL says whether the session is revoked;
//! each replica keeps the answer for [`RECHECK_MS`], so a request costs one lookup per session
//! per five seconds. A revocation made here is known here at once; another replica learns it at
//! its next lookup, within five seconds. Time is an argument: this is the pure cache.

use protocol::ids::UserId;
use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

/// How long an answer from SQL is trusted.
pub(crate) const RECHECK_MS: i64 = 5_000;
/// Entries kept at most; beyond, the oldest half goes (they are only a cache).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    user: UserId,
    revoked: bool,
    checked_ms: i64,
}

/// What this replica knows of sessions' revocation.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    entries: Mutex<HashMap<Uuid, Entry>>,
}

impl Revocations {
    /// Whether `session` is revoked, if known from a lookup less than [`RECHECK_MS`] old (or a
    /// revocation here, which never goes stale).
    pub(crate) fn known(&self, session: Uuid, now_ms: i64) -> Option<bool> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(&session)?;
        (entry.revoked || now_ms - entry.checked_ms < RECHECK_MS).then_some(entry.revoked)
    }

    /// Records what SQL answered for `session` of `user`.
    pub(crate) fn record(&self, session: Uuid, user: UserId, revoked: bool, now_ms: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let mut ages: Vec<i64> = entries.values().map(|e| e.checked_ms).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            entries.retain(|_, e| e.checked_ms > cut);
        }
        entries.insert(
            session,
            Entry {
                user,
                revoked,
                checked_ms: now_ms,
            },
        );
    }

    /// `session` was revoked here.
    pub(crate) fn revoked(&self, session: Uuid, user: UserId, now_ms: i64) {
        self.record(session, user, true, now_ms);
    }

    /// Every session of `user` but `keep` was revoked here: their answers are looked up again.
    pub(crate) fn revoked_all_but(&self, user: UserId, keep: Option<Uuid>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|id, e| e.user != user || Some(*id) == keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_trusted_for_a_while_and_revocations_for_good() {
        let cache = Revocations::default();
        let (s1, s2, s3) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let (ann, bob) = (
            UserId::from_uuid(Uuid::from_u128(10)),
            UserId::from_uuid(Uuid::from_u128(11)),
        );
        assert_eq!(cache.known(s1, 0), None);
        cache.record(s1, ann, false, 1_000);
        assert_eq!(cache.known(s1, 1_000 + RECHECK_MS - 1), Some(false));
        assert_eq!(
            cache.known(s1, 1_000 + RECHECK_MS),
            None,
            "stale: look again"
        );
        cache.revoked(s2, ann, 1_000);
        assert_eq!(cache.known(s2, 1_000_000), Some(true));
        cache.record(s3, bob, false, 1_000);
        cache.revoked_all_but(ann, Some(s1));
        assert_eq!(cache.known(s1, 1_001), Some(false), "kept");
        assert_eq!(
            cache.known(s2, 1_001),
            None,
            "ann's others are looked up again"
        );
        assert_eq!(cache.known(s3, 1_001), Some(false), "bob's stay");
    }
}
