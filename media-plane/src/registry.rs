//! Heartbeats into the Redis node registry, for a media node in its own process.
//!
//! Every heartbeat writes `{prefix}node:{id}` (JSON, expiring after [`NODE_TTL_SECS`]) and adds the
//! id to `{prefix}nodes`: the format the control plane's `RedisRegistry` reads. Writes happen on a
//! background task; a failed write is retried by the next heartbeat.

use crate::node::Heartbeat;
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
