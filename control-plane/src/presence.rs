//! Who is connected and who is typing: ephemeral state, in Redis when one is configured (shared
//! by every replica) or in this process otherwise. Nothing here is durable; every entry carries
//! an expiry, so a replica that dies leaves nothing behind for longer than a TTL.
//!
//! Presence: a user is online while at least one of their `/v1/events` connections is live. Each
//! connection is a member of the user's set with an expiry [`PRESENCE_TTL_MS`] ahead, renewed
//! every [`HEARTBEAT`]. Typing: per group, a set of users with an expiry
//! [`TYPING_TTL_MS`] ahead, renewed by each typing notice.
//!
//! When Redis does not answer, calls fail with [`Unavailable`] and callers report "unknown"
//! rather than guessing. Time comes in as an argument (Unix ms): nothing here reads the clock.

use protocol::ids::{GroupId, UserId};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use uuid::Uuid;

pub(crate) use protocol::realtime::TYPING_TTL_MS;

/// How long a connection counts as live without a heartbeat.
pub(crate) const PRESENCE_TTL_MS: u64 = 60_000;
/// How often a live connection renews its presence.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(20);
/// How long a Redis call may take before presence counts as unknown.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// The presence store did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the presence store does not answer")]
pub(crate) struct Unavailable;

/// Adds a connection (or renews it) after dropping expired ones; answers how many live
/// connections the user had before. KEYS[1] the user's set; ARGV now, expiry, connection, ttl.
const CONNECT_LUA: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return before
";

/// Removes a connection; answers how many live connections are left.
/// KEYS[1] the user's set; ARGV now, connection.
const DISCONNECT_LUA: &str = r"
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])
";

/// Starts (ARGV[3] = 1) or stops (0) typing; answers 1 when that changed anything.
/// KEYS[1] the group's set; ARGV now, user, typing, expiry, ttl.
const TYPING_LUA: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if ARGV[3] == '1' then
  local added = redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return added
end
return redis.call('ZREM', KEYS[1], ARGV[2])
";

/// Presence and typing, here or in Redis.
pub(crate) enum Presence {
    Local(Mutex<Local>),
    Redis(Box<RedisPresence>),
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presence::Local(_) => f.write_str("Presence::Local"),
            Presence::Redis(r) => write!(f, "Presence::Redis({})", r.prefix),
        }
    }
}

/// The in-process store: expiry (Unix ms) per connection and per typing user.
#[derive(Debug, Default)]
pub(crate) struct Local {
    connections: HashMap<UserId, HashMap<Uuid, i64>>,
    typing: HashMap<GroupId, HashMap<UserId, i64>>,
    /// When expired entries were last dropped.
    swept_at_ms: i64,
}

pub(crate) struct RedisPresence {
    conn: ConnectionManager,
    prefix: String,
    connect: redis::Script,
    disconnect: redis::Script,
    typing: redis::Script,
}

fn ttl_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl Presence {
    pub(crate) fn in_process() -> Self {
        Presence::Local(Mutex::new(Local::default()))
    }

    /// Keys under `{prefix}presence:` and `{prefix}typing:`.
    pub(crate) fn redis(conn: ConnectionManager, prefix: &str) -> Self {
        Presence::Redis(Box::new(RedisPresence {
            conn,
            prefix: prefix.to_owned(),
            connect: redis::Script::new(CONNECT_LUA),
            disconnect: redis::Script::new(DISCONNECT_LUA),
            typing: redis::Script::new(TYPING_LUA),
        }))
    }

    /// Records (or renews) a live connection; true when the user was offline before.
    pub(crate) async fn connected(
        &self,
        user: UserId,
        conn: Uuid,
        now_ms: i64,
    ) -> Result<bool, Unavailable> {
        let expiry = now_ms.saturating_add(ttl_ms(PRESENCE_TTL_MS));
        match self {
            Presence::Local(local) => {
                let mut local = lock(local);
                let conns = local.connections.entry(user).or_default();
                conns.retain(|_, until| *until > now_ms);
                let was_offline = conns.is_empty();
                conns.insert(conn, expiry);
                Ok(was_offline)
            }
            Presence::Redis(r) => {
                let mut call = r.connect.key(r.presence_key(user));
                call.arg(now_ms)
                    .arg(expiry)
                    .arg(conn.to_string())
                    .arg(PRESENCE_TTL_MS);
                let before: i64 = r.run(&call).await?;
                Ok(before == 0)
            }
        }
    }

    /// Forgets a connection; true when it was the user's last live one.
    pub(crate) async fn disconnected(
        &self,
        user: UserId,
        conn: Uuid,
        now_ms: i64,
    ) -> Result<bool, Unavailable> {
        match self {
            Presence::Local(local) => {
                let mut local = lock(local);
                let Some(conns) = local.connections.get_mut(&user) else {
                    return Ok(true);
                };
                conns.remove(&conn);
                conns.retain(|_, until| *until > now_ms);
                let last = conns.is_empty();
                if last {
                    local.connections.remove(&user);
                }
                Ok(last)
            }
            Presence::Redis(r) => {
                let mut call = r.disconnect.key(r.presence_key(user));
                call.arg(now_ms).arg(conn.to_string());
                let left: i64 = r.run(&call).await?;
                Ok(left == 0)
            }
        }
    }

    /// Whether each of `users` has a live connection.
    pub(crate) async fn online(
        &self,
        users: &[UserId],
        now_ms: i64,
    ) -> Result<Vec<bool>, Unavailable> {
        match self {
            Presence::Local(local) => {
                let local = lock(local);
                Ok(users
                    .iter()
                    .map(|u| {
                        local
                            .connections
                            .get(u)
                            .is_some_and(|c| c.values().any(|until| *until > now_ms))
                    })
                    .collect())
            }
            Presence::Redis(r) => {
                if users.is_empty() {
                    return Ok(Vec::new());
                }
                let mut pipe = redis::pipe();
                for user in users {
                    pipe.cmd("ZCOUNT")
                        .arg(r.presence_key(*user))
                        .arg(format!("({now_ms}"))
                        .arg("+inf");
                }
                let mut conn = r.conn.clone();
                let counts: Vec<i64> =
                    tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<Vec<i64>>(&mut conn))
                        .await
                        .map_err(|_| Unavailable)?
                        .map_err(|e| r.failed(&e))?;
                Ok(counts.into_iter().map(|n| n > 0).collect())
            }
        }
    }

    /// Starts or stops `user` typing in `group`; true when that is news (a start that was not
    /// already on, or a stop of one that was).
    pub(crate) async fn set_typing(
        &self,
        group: GroupId,
        user: UserId,
        typing: bool,
        now_ms: i64,
    ) -> Result<bool, Unavailable> {
        let expiry = now_ms.saturating_add(ttl_ms(TYPING_TTL_MS));
        match self {
            Presence::Local(local) => {
                let mut local = lock(local);
                let typers = local.typing.entry(group).or_default();
                typers.retain(|_, until| *until > now_ms);
                let changed = if typing {
                    typers.insert(user, expiry).is_none()
                } else {
                    typers.remove(&user).is_some()
                };
                if typers.is_empty() {
                    local.typing.remove(&group);
                }
                Ok(changed)
            }
            Presence::Redis(r) => {
                let mut call = r.typing.key(r.typing_key(group));
                call.arg(now_ms)
                    .arg(user.to_string())
                    .arg(i64::from(typing))
                    .arg(expiry)
                    .arg(TYPING_TTL_MS);
                let changed: i64 = r.run(&call).await?;
                Ok(changed == 1)
            }
        }
    }

    /// Who is typing in `group`, in no particular order.
    pub(crate) async fn typing(
        &self,
        group: GroupId,
        now_ms: i64,
    ) -> Result<Vec<UserId>, Unavailable> {
        match self {
            Presence::Local(local) => {
                let local = lock(local);
                Ok(local
                    .typing
                    .get(&group)
                    .into_iter()
                    .flatten()
                    .filter(|(_, until)| **until > now_ms)
                    .map(|(user, _)| *user)
                    .collect())
            }
            Presence::Redis(r) => {
                let mut conn = r.conn.clone();
                let mut cmd = redis::cmd("ZRANGEBYSCORE");
                cmd.arg(r.typing_key(group))
                    .arg(format!("({now_ms}"))
                    .arg("+inf");
                let users: Vec<String> =
                    tokio::time::timeout(REDIS_TIMEOUT, cmd.query_async(&mut conn))
                        .await
                        .map_err(|_| Unavailable)?
                        .map_err(|e| r.failed(&e))?;
                // Anything unparsable was not written by us: skip it.
                Ok(users
                    .iter()
                    .filter_map(|u| Uuid::parse_str(u).ok().map(UserId::from_uuid))
                    .collect())
            }
        }
    }

    /// Drops expired entries of the in-process store (Redis expires its own), at most once
    /// per [`PRESENCE_TTL_MS`] however often it is called.
    pub(crate) fn sweep(&self, now_ms: i64) {
        if let Presence::Local(local) = self {
            let mut local = lock(local);
            if now_ms.saturating_sub(local.swept_at_ms) < ttl_ms(PRESENCE_TTL_MS) {
                return;
            }
            local.swept_at_ms = now_ms;
            local.connections.retain(|_, conns| {
                conns.retain(|_, until| *until > now_ms);
                !conns.is_empty()
            });
            local.typing.retain(|_, typers| {
                typers.retain(|_, until| *until > now_ms);
                !typers.is_empty()
            });
        }
    }
}

impl RedisPresence {
    fn presence_key(&self, user: UserId) -> String {
        format!("{}presence:{user}", self.prefix)
    }

    fn typing_key(&self, group: GroupId) -> String {
        format!("{}typing:{group}", self.prefix)
    }

    async fn run(&self, call: &redis::ScriptInvocation<'_>) -> Result<i64, Unavailable> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(REDIS_TIMEOUT, call.invoke_async::<i64>(&mut conn))
            .await
            .map_err(|_| Unavailable)?
            .map_err(|e| self.failed(&e))
    }

    fn failed(&self, e: &redis::RedisError) -> Unavailable {
        tracing::debug!(error = %e, "presence store failed");
        Unavailable
    }
}

fn lock(local: &Mutex<Local>) -> std::sync::MutexGuard<'_, Local> {
    local.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn user(n: u128) -> UserId {
        UserId::from_uuid(Uuid::from_u128(n))
    }

    /// The rules every store follows, step by step.
    async fn follows_the_rules(store: Presence) {
        let (ann, bob) = (user(1), user(2));
        let (phone, laptop) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let g = GroupId::from_uuid(Uuid::from_u128(20));

        assert_eq!(store.online(&[ann, bob], T0).await, Ok(vec![false, false]));
        assert_eq!(store.connected(ann, phone, T0).await, Ok(true), "news");
        assert_eq!(store.connected(ann, laptop, T0 + 1).await, Ok(false));
        assert_eq!(
            store.online(&[ann, bob], T0 + 2).await,
            Ok(vec![true, false])
        );
        assert_eq!(store.disconnected(ann, phone, T0 + 3).await, Ok(false));
        assert_eq!(store.disconnected(ann, laptop, T0 + 4).await, Ok(true));
        assert_eq!(store.online(&[ann], T0 + 5).await, Ok(vec![false]));

        // A connection that stops renewing expires; renewing keeps it.
        store.connected(bob, phone, T0).await.unwrap();
        let ttl = ttl_ms(PRESENCE_TTL_MS);
        assert_eq!(store.connected(bob, phone, T0 + ttl - 1).await, Ok(false));
        assert_eq!(store.online(&[bob], T0 + ttl + 1).await, Ok(vec![true]));
        assert_eq!(store.online(&[bob], T0 + 2 * ttl).await, Ok(vec![false]));
        assert_eq!(
            store.connected(bob, laptop, T0 + 2 * ttl).await,
            Ok(true),
            "after expiry the user was offline"
        );

        // Typing: starts are news once, stops only if on, and it expires.
        let typing_ttl = ttl_ms(TYPING_TTL_MS);
        assert_eq!(store.set_typing(g, ann, true, T0).await, Ok(true));
        assert_eq!(store.set_typing(g, ann, true, T0 + 1_000).await, Ok(false));
        assert_eq!(store.set_typing(g, bob, true, T0 + 1_000).await, Ok(true));
        let mut typers = store.typing(g, T0 + 2_000).await.unwrap();
        typers.sort();
        assert_eq!(typers, vec![ann, bob]);
        assert_eq!(store.set_typing(g, bob, false, T0 + 2_000).await, Ok(true));
        assert_eq!(store.set_typing(g, bob, false, T0 + 2_000).await, Ok(false));
        assert_eq!(store.typing(g, T0 + 2_000).await, Ok(vec![ann]));
        assert_eq!(
            store.typing(g, T0 + 1_000 + typing_ttl).await,
            Ok(vec![]),
            "the renewed notice expired too"
        );
        assert_eq!(
            store
                .set_typing(g, ann, true, T0 + 1_000 + typing_ttl)
                .await,
            Ok(true)
        );
    }

    #[tokio::test]
    async fn the_in_process_store_follows_the_rules() {
        let store = Presence::in_process();
        follows_the_rules(store).await;
        let store = Presence::in_process();
        store
            .connected(user(1), Uuid::from_u128(1), T0)
            .await
            .unwrap();
        store.sweep(T0 + ttl_ms(PRESENCE_TTL_MS));
        let Presence::Local(local) = &store else {
            unreachable!()
        };
        assert!(
            lock(local).connections.is_empty(),
            "the sweep drops expired entries"
        );
    }

    #[tokio::test]
    async fn the_redis_store_follows_the_same_rules_and_fails_as_unavailable() {
        let Some(url) = crate::throttle::tests::redis_url() else {
            return;
        };
        let client = redis::Client::open(url).unwrap();
        let mut conn = ConnectionManager::new(client).await.unwrap();
        let prefix = format!("convoy-test:{}:", Uuid::now_v7());
        follows_the_rules(Presence::redis(conn.clone(), &prefix)).await;

        // A key of the wrong type makes every call on it fail: unknown, not a guess.
        let store = Presence::redis(conn.clone(), &prefix);
        let key = format!("{prefix}presence:{}", user(3));
        redis::cmd("SET")
            .arg(&key)
            .arg("not a set")
            .exec_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(store.online(&[user(3)], T0).await, Err(Unavailable));
        assert_eq!(
            store.connected(user(3), Uuid::from_u128(1), T0).await,
            Err(Unavailable)
        );
    }
}
