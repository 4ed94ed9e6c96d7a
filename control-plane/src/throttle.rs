//! Attempt budgets against password and code guessing: a few free attempts per key, then a
//! delay that doubles with every further attempt up to a cap, answered as 429 with
//! `Retry-After`. There is no lockout: whatever the count, one attempt is allowed again once the
//! delay has passed, and a key forgets everything after a quiet window.
//!
//! An attempt is counted when it is admitted, before the password is checked, so a burst of
//! parallel guesses cannot all slip through before the first failure is recorded. A success
//! then either forgets the key (the account's budget) or refunds the attempt (the address's
//! budget, so many people behind one NAT signing in correctly never slow each other down).
//!
//! The rule itself is [`Policy::admit`], a pure function of the bucket and `now`. Buckets live
//! in Redis when one is configured, so every replica shares them (the same rule as a Lua script,
//! checked against the pure one in the tests), and in process memory otherwise or while Redis
//! does not answer.

use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How long a Redis round trip may take before the in-process buckets answer instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After a Redis failure, how long the in-process buckets answer before Redis is tried again.
const REDIS_BACKOFF_MS: i64 = 5_000;
/// In-process buckets kept before expired ones are swept.
const SWEEP_AT: usize = 10_000;

/// The budget of one kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Attempts admitted without delay.
    pub free: u32,
    /// The delay after the first attempt beyond `free`; it doubles with each one after.
    pub base_ms: i64,
    /// The longest delay.
    pub cap_ms: i64,
    /// A key unused this long starts over.
    pub window_ms: i64,
}

/// Password guesses against one account (by email, known or not: unknown ones behave the same).
pub(crate) const ACCOUNT: Policy = Policy {
    free: 5,
    base_ms: 1_000,
    cap_ms: 600_000,
    window_ms: 12 * 3_600_000,
};
/// Password attempts from a device that signed in to the account before.
pub(crate) const TRUSTED_DEVICE: Policy = Policy {
    free: 5,
    base_ms: 1_000,
    cap_ms: 60_000,
    window_ms: 3_600_000,
};
/// Failed attempts from one client address (an IPv6 /64).
pub(crate) const ADDRESS: Policy = Policy {
    free: 30,
    base_ms: 1_000,
    cap_ms: 600_000,
    window_ms: 3_600_000,
};
/// Accounts created from one client address: generous for a household or an office, but
/// probing which emails exist (409) or mass sign-ups slow down to a few an hour.
pub(crate) const REGISTRATIONS: Policy = Policy {
    free: 100,
    base_ms: 1_000,
    cap_ms: 600_000,
    window_ms: 3_600_000,
};
/// Second-factor and re-authentication codes for one user.
pub(crate) const CODES: Policy = Policy {
    free: 5,
    base_ms: 1_000,
    cap_ms: 300_000,
    window_ms: 3_600_000,
};

/// One key's state: attempts counted, the earliest time of the next one, when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Bucket {
    pub attempts: u32,
    pub next_ms: i64,
    pub expires_ms: i64,
}

impl Policy {
    /// The delay after attempt number `attempts` (1-based).
    pub(crate) fn delay_after(&self, attempts: u32) -> i64 {
        if attempts <= self.free {
            return 0;
        }
        let doublings = attempts - self.free - 1;
        let factor = 1i64.checked_shl(doublings.min(62)).unwrap_or(i64::MAX);
        self.base_ms.saturating_mul(factor).min(self.cap_ms)
    }

    /// Admits an attempt at `now`: the bucket after it, or how long to wait (ms, > 0).
    pub(crate) fn admit(&self, bucket: Option<Bucket>, now_ms: i64) -> Result<Bucket, i64> {
        let bucket = bucket.filter(|b| b.expires_ms > now_ms).unwrap_or_default();
        if now_ms < bucket.next_ms {
            return Err(bucket.next_ms - now_ms);
        }
        let attempts = bucket.attempts.saturating_add(1);
        Ok(Bucket {
            attempts,
            next_ms: now_ms + self.delay_after(attempts),
            expires_ms: now_ms + self.window_ms,
        })
    }
}

/// The same rule as [`Policy::admit`], in Redis. KEYS[1] the bucket; ARGV now, free, base, cap,
/// window. Returns 0 when admitted, else the milliseconds to wait. The expiry is decided on
/// `now` like the pure rule; Redis's own TTL only collects the garbage.
const ADMIT_LUA: &str = r"
local now = tonumber(ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'n', 'next', 'exp')
local n = tonumber(b[1]) or 0
local nxt = tonumber(b[2]) or 0
if now >= (tonumber(b[3]) or 0) then n = 0; nxt = 0 end
if now < nxt then return nxt - now end
n = n + 1
local free, base, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local delay = 0
if n > free then delay = math.min(base * 2 ^ math.min(n - free - 1, 62), cap) end
redis.call('HSET', KEYS[1], 'n', n, 'next', now + delay, 'exp', now + tonumber(ARGV[5]))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 0
";

/// Gives back one attempt (never below zero). KEYS[1] the bucket.
const REFUND_LUA: &str = r"
local n = tonumber(redis.call('HGET', KEYS[1], 'n'))
if n and n > 0 then redis.call('HSET', KEYS[1], 'n', n - 1) end
return 0
";

/// Every budget of one control plane.
pub(crate) struct Throttle {
    local: Mutex<HashMap<String, Bucket>>,
    redis: Option<RedisBuckets>,
}

struct RedisBuckets {
    conn: ConnectionManager,
    prefix: String,
    admit: redis::Script,
    refund: redis::Script,
    /// Until when (Unix ms) Redis is skipped after a failure.
    skip_until_ms: AtomicI64,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("redis", &self.redis.as_ref().map(|r| &r.prefix))
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// Buckets in this process only.
    pub(crate) fn in_process() -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            redis: None,
        }
    }

    /// Buckets in Redis under `{prefix}throttle:`, in process while Redis does not answer.
    pub(crate) fn redis(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            local: Mutex::new(HashMap::new()),
            redis: Some(RedisBuckets {
                conn,
                prefix: format!("{prefix}throttle:"),
                admit: redis::Script::new(ADMIT_LUA),
                refund: redis::Script::new(REFUND_LUA),
                skip_until_ms: AtomicI64::new(0),
            }),
        }
    }

    /// Whether a Redis is configured.
    pub(crate) fn uses_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Whether the buckets are shared through Redis right now (false: in process only).
    pub(crate) fn shared(&self, now_ms: i64) -> bool {
        self.redis
            .as_ref()
            .is_some_and(|r| r.skip_until_ms.load(Ordering::Relaxed) <= now_ms)
    }

    /// Admits an attempt on `key`, or says how long to wait.
    pub(crate) async fn admit(
        &self,
        key: &str,
        policy: Policy,
        now_ms: i64,
    ) -> Result<(), Duration> {
        if let Some(redis) = self.live_redis(now_ms) {
            let mut conn = redis.conn.clone();
            let mut invocation = redis.admit.key(format!("{}{key}", redis.prefix));
            invocation
                .arg(now_ms)
                .arg(policy.free)
                .arg(policy.base_ms)
                .arg(policy.cap_ms)
                .arg(policy.window_ms);
            match tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<i64>(&mut conn))
                .await
            {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(wait_ms)) => return Err(Duration::from_millis(wait_ms.max(1) as u64)),
                Ok(Err(e)) => redis.failed(now_ms, &e.to_string()),
                Err(_) => redis.failed(now_ms, "timed out"),
            }
        }
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if local.len() >= SWEEP_AT {
            local.retain(|_, b| b.expires_ms > now_ms);
        }
        match policy.admit(local.get(key).copied(), now_ms) {
            Ok(bucket) => {
                local.insert(key.to_owned(), bucket);
                Ok(())
            }
            Err(wait_ms) => Err(Duration::from_millis(wait_ms as u64)),
        }
    }

    /// Forgets `key` (a success on an account's budget).
    pub(crate) async fn forget(&self, key: &str, now_ms: i64) {
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        if let Some(redis) = self.live_redis(now_ms) {
            let mut conn = redis.conn.clone();
            let mut cmd = redis::cmd("DEL");
            cmd.arg(format!("{}{key}", redis.prefix));
            let del = cmd.exec_async(&mut conn);
            match tokio::time::timeout(REDIS_TIMEOUT, del).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => redis.failed(now_ms, &e.to_string()),
                Err(_) => redis.failed(now_ms, "timed out"),
            }
        }
    }

    /// Gives back the attempt a success used (an address's budget counts failures only).
    pub(crate) async fn refund(&self, key: &str, now_ms: i64) {
        if let Some(b) = self
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(key)
        {
            b.attempts = b.attempts.saturating_sub(1);
        }
        if let Some(redis) = self.live_redis(now_ms) {
            let mut conn = redis.conn.clone();
            let invocation = redis.refund.key(format!("{}{key}", redis.prefix));
            let refund = invocation.invoke_async::<i64>(&mut conn);
            match tokio::time::timeout(REDIS_TIMEOUT, refund).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => redis.failed(now_ms, &e.to_string()),
                Err(_) => redis.failed(now_ms, "timed out"),
            }
        }
    }

    fn live_redis(&self, now_ms: i64) -> Option<&RedisBuckets> {
        self.redis
            .as_ref()
            .filter(|r| r.skip_until_ms.load(Ordering::Relaxed) <= now_ms)
    }
}

impl RedisBuckets {
    fn failed(&self, now_ms: i64, why: &str) {
        let previous = self
            .skip_until_ms
            .swap(now_ms + REDIS_BACKOFF_MS, Ordering::Relaxed);
        if previous <= now_ms {
            tracing::warn!(
                error = why,
                "Redis does not answer: attempt budgets are kept in process"
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const P: Policy = Policy {
        free: 3,
        base_ms: 1_000,
        cap_ms: 8_000,
        window_ms: 60_000,
    };

    #[test]
    fn free_attempts_then_a_doubling_delay_up_to_the_cap() {
        let delays: Vec<i64> = (1..=10).map(|n| P.delay_after(n)).collect();
        assert_eq!(
            delays,
            [0, 0, 0, 1_000, 2_000, 4_000, 8_000, 8_000, 8_000, 8_000]
        );
        assert_eq!(P.delay_after(u32::MAX), 8_000);
    }

    #[test]
    fn an_attempt_inside_the_delay_is_refused_with_the_wait_and_changes_nothing() {
        let mut bucket = None;
        let mut now = 0;
        for _ in 0..3 {
            bucket = Some(P.admit(bucket, now).unwrap());
        }
        // The 4th is admitted and sets a 1 s delay.
        bucket = Some(P.admit(bucket, now).unwrap());
        assert_eq!(P.admit(bucket, now + 400), Err(600));
        assert_eq!(P.admit(bucket, now + 999), Err(1));
        now += 1_000;
        let fifth = P.admit(bucket, now).unwrap();
        assert_eq!((fifth.attempts, fifth.next_ms), (5, now + 2_000));
        // Never a lockout: the capped delay always ends.
        let mut b = fifth;
        for _ in 0..100 {
            now = b.next_ms;
            b = P.admit(Some(b), now).unwrap();
        }
        assert_eq!(b.next_ms - now, 8_000);
        // A quiet window starts over.
        let fresh = P.admit(Some(b), b.expires_ms).unwrap();
        assert_eq!(fresh.attempts, 1);
    }

    /// A burst of parallel attempts: only the free ones and the first delayed one get in.
    #[tokio::test]
    async fn a_parallel_burst_gets_only_the_free_attempts() {
        let throttle = std::sync::Arc::new(Throttle::in_process());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let t = throttle.clone();
            tasks.push(tokio::spawn(async move { t.admit("k", P, 0).await }));
        }
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.unwrap().is_ok());
        }
        assert_eq!(admitted, 4);
    }

    /// The Lua rule and the Rust rule agree, step by step, on a real Redis.
    #[tokio::test]
    async fn redis_buckets_follow_the_same_rule_and_refunds_and_forgets_work() {
        let Some(url) = redis_url() else { return };
        let client = redis::Client::open(url).unwrap();
        let conn = ConnectionManager::new(client).await.unwrap();
        let prefix = format!("convoy-test:{}:", uuid::Uuid::now_v7());
        let shared = Throttle::redis(conn, &prefix);
        let local = Throttle::in_process();
        let mut now = 1_700_000_000_000;
        for i in 0..40 {
            // Attempts at an uneven pace: some early (refused), some late.
            now += [0, 300, 1_000, 2_500, 8_000][i % 5];
            let (a, b) = (
                shared.admit("k", P, now).await,
                local.admit("k", P, now).await,
            );
            assert_eq!(a, b, "attempt {i} at {now}");
            assert!(shared.shared(now));
        }
        // Refund: one attempt given back on both.
        now += 8_000;
        shared.refund("k", now).await;
        local.refund("k", now).await;
        for _ in 0..5 {
            now += 8_000;
            assert_eq!(
                shared.admit("k", P, now).await,
                local.admit("k", P, now).await
            );
        }
        // A quiet window: a fresh start on both.
        now += 60_000;
        for _ in 0..6 {
            assert_eq!(
                shared.admit("k", P, now).await,
                local.admit("k", P, now).await
            );
        }
        // Forget: a fresh start on both.
        shared.forget("k", now).await;
        local.forget("k", now).await;
        for _ in 0..3 {
            assert_eq!(shared.admit("k", P, now).await, Ok(()));
        }
        assert!(shared.admit("k", P, now).await.is_ok());
        assert_eq!(
            shared.admit("k", P, now).await,
            Err(Duration::from_millis(1_000))
        );
    }

    /// Redis that does not answer: the in-process buckets take over at once.
    #[tokio::test]
    async fn when_redis_fails_the_in_process_buckets_answer() {
        let Some(url) = redis_url() else { return };
        let client = redis::Client::open(url).unwrap();
        let mut conn = ConnectionManager::new(client).await.unwrap();
        let prefix = format!("convoy-test:{}:", uuid::Uuid::now_v7());
        let throttle = Throttle::redis(conn.clone(), &prefix);
        // Make the key the wrong type: every script call on it fails.
        let key = format!("{prefix}throttle:k");
        redis::cmd("SET")
            .arg(&key)
            .arg("not a hash")
            .exec_async(&mut conn)
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(throttle.admit("k", P, 0).await, Ok(()));
            assert!(!throttle.shared(0));
        }
        throttle.admit("k", P, 0).await.unwrap();
        assert_eq!(
            throttle.admit("k", P, 0).await,
            Err(Duration::from_millis(1_000))
        );
        // After the back-off Redis is tried again.
        assert!(throttle.shared(REDIS_BACKOFF_MS));
    }

    pub(crate) fn redis_url() -> Option<String> {
        match std::env::var("CONVOY_TEST_REDIS_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                assert!(
                    std::env::var("CONVOY_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
                    "CONVOY_REQUIRE_EXTERNAL=1 but CONVOY_TEST_REDIS_URL is not set"
                );
                eprintln!("SKIPPED: Redis throttle tests (set CONVOY_TEST_REDIS_URL)");
                None
            }
        }
    }
}
