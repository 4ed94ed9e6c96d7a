//! Heartbeats into the Redis node registry and session events onto the Redis stream, for a media
//! node in its own process.
//!
//! Every heartbeat writes `{prefix}node:{id}` (JSON, expiring after [`NODE_TTL_SECS`]) and adds the
//! id to `{prefix}nodes`: the format the control plane's `RedisRegistry` reads. Writes happen on a
//! background task; a failed write is retried by the next heartbeat.

use crate::node::{EventSink, Heartbeat};
use protocol::events::{REDIS_EVENT_FIELD, SessionEvent, redis_stream_key};
use protocol::node::{NODE_TTL_SECS, NodeRecord, redis_index_key, redis_node_key};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A heartbeat that writes to Redis at `url`, keys under `prefix`. Call within a tokio runtime.
pub async fn redis_heartbeat(url: &str, prefix: &str) -> anyhow::Result<Heartbeat> {
    let client = redis::Client::open(url)?;
    let mut conn = redis::aio::ConnectionManager::new(client).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<NodeRecord>();
    let prefix = prefix.to_string();
    tokio::spawn(async move {
        while let Some(record) = rx.recv().await {
            let json = serde_json::to_string(&record).unwrap_or_default();
            let written: Result<(), redis::RedisError> = redis::pipe()
                .set_ex(redis_node_key(&prefix, &record.id), json, NODE_TTL_SECS)
                .ignore()
                .sadd(redis_index_key(&prefix), record.id.as_str())
                .ignore()
                .query_async(&mut conn)
                .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "node registry heartbeat not written");
            }
        }
    });
    Ok(Arc::new(move |record| {
        let _ = tx.send(record);
    }))
}

/// Session events onto the Redis stream the control plane consumes (`{prefix}session-events`),
/// capped at about [`STREAM_MAX_LEN`] entries. Call within a tokio runtime.
pub async fn redis_event_sink(url: &str, prefix: &str) -> anyhow::Result<EventSink> {
    let client = redis::Client::open(url)?;
    let mut conn = redis::aio::ConnectionManager::new(client).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<SessionEvent>();
    let key = redis_stream_key(prefix);
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let json = serde_json::to_string(&event).unwrap_or_default();
            let added: Result<String, redis::RedisError> = redis::cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAX_LEN)
                .arg("*")
                .arg(REDIS_EVENT_FIELD)
                .arg(json)
                .query_async(&mut conn)
                .await;
            if let Err(e) = added {
                tracing::warn!(error = %e, "session event not written");
            }
        }
    });
    Ok(Arc::new(move |event| {
        let _ = tx.send(event);
    }))
}

/// Entries the session-event stream keeps (approximately).
pub const STREAM_MAX_LEN: usize = 100_000;
