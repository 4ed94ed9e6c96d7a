//! What a media node tells the registry about itself (DESIGN.md §4). JSON in Redis; a plain value
//! in the in-process registry of dev mode.

use crate::ids::NodeId;
use serde::{Deserialize, Serialize};

/// Heartbeat period of a media node.
pub const HEARTBEAT_INTERVAL_SECS: u64 = 2;
/// A node whose last heartbeat is older than this is dead.
pub const NODE_TTL_SECS: u64 = 6;

/// Default prefix of the registry's Redis keys: `{prefix}node:{id}` holds a node's JSON record
/// (expiring after [`NODE_TTL_SECS`]); the set `{prefix}nodes` indexes the ids.
pub const REDIS_PREFIX: &str = "convoy:";

/// Redis key of one node's record.
pub fn redis_node_key(prefix: &str, id: &NodeId) -> String {
    format!("{prefix}node:{id}")
}

/// Redis key of the set of node ids.
pub fn redis_index_key(prefix: &str) -> String {
    format!("{prefix}nodes")
}

/// Lifecycle state of a media node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    /// Takes new sessions.
    Serving,
    /// Keeps its sessions, takes no new ones.
    Draining,
    /// About to exit.
    ShuttingDown,
}

/// A media node's registry record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub region: String,
    /// Base URL of the node's HTTP side, e.g. `http://127.0.0.1:8090`; WHIP lives under
    /// `{http_url}/v1/whip/{session_id}`.
    pub http_url: String,
    /// UDP ports, one per core, in core order.
    pub udp_ports: Vec<u16>,
    pub version: String,
    pub cores: u32,
    /// 0..1, the max of core busy ratio, packet rate / capacity and rooms / capacity.
    pub stress: f32,
    pub state: NodeState,
}

impl NodeRecord {
    /// The WHIP endpoint of a session on this node.
    pub fn whip_url(&self, session: crate::SessionId) -> String {
        format!(
            "{}/v1/whip/{}",
            self.http_url.trim_end_matches('/'),
            session
        )
    }
}
