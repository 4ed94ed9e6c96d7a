//! Tells location engines that a group's places changed, so the engines serving the group fetch
//! them again: to hooks of engines in this process, and on Redis pub/sub
//! ([`protocol::location::redis_places_channel`]) to engines elsewhere. Best effort: a notice
//! lost (Redis away, no subscriber) is made up by the revision every location token carries.

use protocol::location::PlacesChanged;
use std::sync::{Arc, RwLock};

/// A location engine in this process, told of each change.
pub type PlacesHook = Arc<dyn Fn(PlacesChanged) + Send + Sync>;

/// The publisher.
#[derive(Clone, Default)]
pub(crate) struct PlacesNotice {
    hooks: Arc<RwLock<Vec<PlacesHook>>>,
    redis: Option<(redis::aio::ConnectionManager, String)>,
}

impl std::fmt::Debug for PlacesNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacesNotice")
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl PlacesNotice {
    /// Publishes on Redis too, on the channel for `prefix`.
    pub(crate) fn with_redis(conn: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Self {
            hooks: Arc::default(),
            redis: Some((conn, protocol::location::redis_places_channel(prefix))),
        }
    }

    /// Adds an engine of this process.
    pub(crate) fn subscribe(&self, hook: PlacesHook) {
        self.hooks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// Tells every engine; never waits for Redis.
    pub(crate) fn publish(&self, notice: PlacesChanged) {
        for hook in self.hooks.read().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(notice);
        }
        if let Some((conn, channel)) = &self.redis {
            let (mut conn, channel) = (conn.clone(), channel.clone());
            let payload = serde_json::to_string(&notice).unwrap_or_default();
            tokio::spawn(async move {
                let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(payload)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "publishing a places notice");
                }
            });
        }
    }
}
