//! Session events from media nodes into SQL (participants joined, left, muted).
//!
//! A node in this process hands its events to [`EventIngest::submit`] (applied in order); nodes in
//! other processes append them to a Redis stream that [`consume_redis`] reads as a consumer group,
//! so each event is applied once however many control planes run — but not necessarily in order
//! across them, which is why `left` and `muted` are upserts that hold whatever arrives first.
//! Applying is idempotent, so a redelivered event changes nothing. An event that cannot be applied
//! is logged and acknowledged: one bad entry never blocks the stream.

use crate::store::Store;
use protocol::events::{REDIS_EVENT_FIELD, SessionEvent, redis_stream_key};
use redis::streams::{StreamReadOptions, StreamReadReply};
use std::time::Duration;
use tokio::sync::mpsc;

/// The consumer group of every control plane on the session-event stream.
pub const CONSUMER_GROUP: &str = "control-plane";

/// Hands session events of in-process media nodes to the control plane.
#[derive(Debug, Clone)]
pub struct EventIngest {
    tx: mpsc::UnboundedSender<SessionEvent>,
}

impl EventIngest {
    /// Queues an event; it is applied after every event submitted before it.
    pub fn submit(&self, event: SessionEvent) {
        let _ = self.tx.send(event);
    }
}

/// Starts the task that applies submitted events. Call within a tokio runtime.
pub(crate) fn spawn_ingest(store: Store) -> EventIngest {
    let (tx, mut rx) = mpsc::unbounded_channel::<SessionEvent>();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            apply(&store, &event).await;
        }
    });
    EventIngest { tx }
}

async fn apply(store: &Store, event: &SessionEvent) {
    match store.apply_session_event(event).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(?event, "session event changed nothing"),
        Err(e) => tracing::warn!(error = %e, ?event, "session event not applied"),
    }
}

/// Consumes the Redis stream of session events until the connection cannot be made at all.
pub(crate) async fn consume_redis(store: Store, url: String, prefix: String) -> anyhow::Result<()> {
    let client = redis::Client::open(url.as_str())?;
    let mut conn = redis::aio::ConnectionManager::new(client).await?;
    let key = redis_stream_key(&prefix);
    create_group(&mut conn, &key).await?;
    let consumer = format!("cp-{}", uuid::Uuid::new_v4().simple());
    tokio::spawn(async move {
        let opts = StreamReadOptions::default()
            .group(CONSUMER_GROUP, &consumer)
            .count(100)
            .block(2000);
        loop {
            let reply: Result<StreamReadReply, _> =
                redis::AsyncCommands::xread_options(&mut conn, &[&key], &[">"], &opts).await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) if e.code() == Some("NOGROUP") => {
                    // Redis restarted empty: the stream and the group are gone; make them again.
                    let _ = create_group(&mut conn, &key).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading session events from Redis");
                    // Redis is down: back off, the connection manager reconnects.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for stream in reply.keys {
                for entry in stream.ids {
                    let event = entry
                        .get::<String>(REDIS_EVENT_FIELD)
                        .and_then(|json| serde_json::from_str::<SessionEvent>(&json).ok());
                    match event {
                        Some(event) => apply(&store, &event).await,
                        None => tracing::warn!(id = %entry.id, "unreadable session event"),
                    }
                    let acked: Result<i64, _> =
                        redis::AsyncCommands::xack(&mut conn, &key, CONSUMER_GROUP, &[&entry.id])
                            .await;
                    if let Err(e) = acked {
                        tracing::warn!(error = %e, "acknowledging a session event");
                    }
                }
            }
        }
    });
    Ok(())
}

/// Creates the consumer group (and the stream) unless it exists.
async fn create_group(
    conn: &mut redis::aio::ConnectionManager,
    key: &str,
) -> Result<(), redis::RedisError> {
    let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(CONSUMER_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}
