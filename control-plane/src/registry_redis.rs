//! The node registry in Redis, for control planes and media nodes in separate processes.
//!
//! A media node writes its record as JSON to `{prefix}node:{id}` with a TTL of
//! [`NODE_TTL_SECS`] and adds its id to the set `{prefix}nodes`, every heartbeat. The control plane
//! mirrors every record into a local [`NodeTable`] once a second (and on [`RedisRegistry::refresh`]),
//! so allocation never waits on Redis. When Redis is unreachable the mirror ages out on the same
//! TTL, and nodes of this process (heartbeating through [`NodeRegistry::heartbeat`]) stay known
//! from memory: Redis holds only what may be lost (DESIGN.md §7).

use crate::registry::{NodeRegistry, NodeTable};
use protocol::NodeId;
use protocol::node::{NODE_TTL_SECS, NodeRecord, redis_index_key, redis_node_key};
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often the mirror is refreshed from Redis.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The node registry backed by Redis.
pub struct RedisRegistry {
    prefix: String,
    conn: ConnectionManager,
    mirror: Mutex<NodeTable>,
    local: Mutex<NodeTable>,
    healthy: AtomicBool,
    writes: mpsc::UnboundedSender<NodeRecord>,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("prefix", &self.prefix)
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisRegistry {
    /// Connects to Redis at `url` (keys under `prefix`, normally [`protocol::node::REDIS_PREFIX`])
    /// and starts mirroring. Call from within a tokio runtime.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Arc<Self>> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        let (writes, mut pending) = mpsc::unbounded_channel::<NodeRecord>();
        let registry = Arc::new(Self {
            prefix: prefix.to_string(),
            conn,
            mirror: Mutex::new(NodeTable::default()),
            local: Mutex::new(NodeTable::default()),
            healthy: AtomicBool::new(true),
            writes,
        });
        // The first mirror before anyone allocates.
        let _ = registry.refresh().await;
        let weak = Arc::downgrade(&registry);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_INTERVAL);
            loop {
                tokio::select! {
                    rec = pending.recv() => {
                        let (Some(rec), Some(reg)) = (rec, weak.upgrade()) else { return };
                        let _ = reg.write(&rec).await;
                    }
                    _ = tick.tick() => {
                        let Some(reg) = weak.upgrade() else { return };
                        let _ = reg.refresh().await;
                    }
                }
            }
        });
        Ok(registry)
    }

    /// Whether the last Redis round trip succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Reads every node record from Redis into the mirror now. Returns how many were read.
    pub async fn refresh(&self) -> Result<usize, redis::RedisError> {
        let result = self.read_all().await;
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        let records = result?;
        let now = Instant::now();
        let mut table = NodeTable::default();
        let n = records.len();
        for r in records {
            table.heartbeat(r, now);
        }
        *self.mirror.lock().unwrap_or_else(PoisonError::into_inner) = table;
        Ok(n)
    }

    async fn read_all(&self) -> Result<Vec<NodeRecord>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let index = redis_index_key(&self.prefix);
        let ids: Vec<String> = conn.smembers(&index).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| format!("{}node:{id}", self.prefix))
            .collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let mut records = Vec::new();
        let mut gone = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value.and_then(|v| serde_json::from_str::<NodeRecord>(&v).ok()) {
                Some(r) => records.push(r),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            // Expired (or unreadable) records leave the index.
            let _: Result<(), _> = conn.srem(&index, gone).await;
        }
        Ok(records)
    }

    async fn write(&self, record: &NodeRecord) -> Result<(), redis::RedisError> {
        let result = write_record(&mut self.conn.clone(), &self.prefix, record).await;
        self.healthy.store(result.is_ok(), Ordering::Relaxed);
        result
    }

    fn merged(&self, now: Instant) -> HashMap<NodeId, NodeRecord> {
        let mut all: HashMap<NodeId, NodeRecord> = self
            .mirror
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .alive(now)
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        // What a node of this process said last is at least as fresh as the mirror.
        for r in self
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .alive(now)
        {
            all.insert(r.id.clone(), r);
        }
        all
    }
}

/// Writes one node record: `SET {prefix}node:{id} <json> EX ttl` and `SADD {prefix}nodes {id}`.
pub async fn write_record(
    conn: &mut ConnectionManager,
    prefix: &str,
    record: &NodeRecord,
) -> Result<(), redis::RedisError> {
    let json = serde_json::to_string(record).unwrap_or_default();
    redis::pipe()
        .set_ex(redis_node_key(prefix, &record.id), json, NODE_TTL_SECS)
        .ignore()
        .sadd(redis_index_key(prefix), record.id.as_str())
        .ignore()
        .query_async(conn)
        .await
}

impl NodeRegistry for RedisRegistry {
    fn heartbeat(&self, record: NodeRecord) {
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .heartbeat(record.clone(), Instant::now());
        let _ = self.writes.send(record);
    }

    fn alive(&self) -> Vec<NodeRecord> {
        let mut v: Vec<NodeRecord> = self.merged(Instant::now()).into_values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn get(&self, id: &NodeId) -> Option<NodeRecord> {
        self.merged(Instant::now()).remove(id)
    }
}
