//! Which media nodes are alive (DESIGN.md §4).
//!
//! Media nodes heartbeat every [`HEARTBEAT_INTERVAL_SECS`](protocol::node::HEARTBEAT_INTERVAL_SECS);
//! a record stays alive for [`NODE_TTL_SECS`] after its last heartbeat. Production keeps the
//! records in Redis; dev mode and tests use [`InProcessRegistry`]. The TTL rule lives in
//! [`NodeTable`], which never reads the clock: every call carries `now`, so tests drive it with
//! simulated time. Only [`InProcessRegistry`] reads [`Instant::now`].

use protocol::NodeId;
use protocol::node::{NODE_TTL_SECS, NodeRecord};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a record stays alive after its last heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(NODE_TTL_SECS);

/// The registry of media nodes the allocator reads and the nodes write.
pub trait NodeRegistry: Send + Sync + 'static {
    /// Records (or refreshes) a node's record.
    fn heartbeat(&self, record: NodeRecord);
    /// Every node whose last heartbeat is at most [`NODE_TTL`] old, whatever its state.
    fn alive(&self) -> Vec<NodeRecord>;
    /// One node, if it is alive.
    fn get(&self, id: &NodeId) -> Option<NodeRecord>;
}

/// Node records with the time each was last seen. Sans-clock: the caller passes `now`.
#[derive(Debug, Default, Clone)]
pub struct NodeTable {
    nodes: HashMap<NodeId, (NodeRecord, Instant)>,
}

impl NodeTable {
    /// Stores `record` as seen at `now` and forgets records that died before `now`.
    pub fn heartbeat(&mut self, record: NodeRecord, now: Instant) {
        self.expire(now);
        self.nodes.insert(record.id.clone(), (record, now));
    }

    /// The records alive at `now`, ordered by node id.
    pub fn alive(&self, now: Instant) -> Vec<NodeRecord> {
        let mut alive: Vec<NodeRecord> = self
            .nodes
            .values()
            .filter(|(_, seen)| is_alive(*seen, now))
            .map(|(record, _)| record.clone())
            .collect();
        alive.sort_by(|a, b| a.id.cmp(&b.id));
        alive
    }

    /// One record, if it is alive at `now`.
    pub fn get(&self, id: &NodeId, now: Instant) -> Option<NodeRecord> {
        self.nodes
            .get(id)
            .filter(|(_, seen)| is_alive(*seen, now))
            .map(|(record, _)| record.clone())
    }

    /// Drops the records that are dead at `now`.
    pub fn expire(&mut self, now: Instant) {
        self.nodes.retain(|_, (_, seen)| is_alive(*seen, now));
    }

    /// Number of records held, dead ones not yet expired included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

fn is_alive(seen: Instant, now: Instant) -> bool {
    now.saturating_duration_since(seen) <= NODE_TTL
}

/// The registry of dev mode and tests: a [`NodeTable`] behind a mutex, read with the real clock.
#[derive(Debug, Default)]
pub struct InProcessRegistry {
    table: Mutex<NodeTable>,
}

impl InProcessRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, NodeTable> {
        // The table is valid after any panic of a holder (every mutation is one map operation).
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl NodeRegistry for InProcessRegistry {
    fn heartbeat(&self, record: NodeRecord) {
        self.table().heartbeat(record, Instant::now());
    }

    fn alive(&self) -> Vec<NodeRecord> {
        self.table().alive(Instant::now())
    }

    fn get(&self, id: &NodeId) -> Option<NodeRecord> {
        self.table().get(id, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::node::NodeState;

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: NodeId::new(id).unwrap(),
            region: "eu".into(),
            http_url: format!("http://{id}:8090"),
            udp_ports: vec![40000],
            version: "test".into(),
            cores: 1,
            stress: 0.0,
            state: NodeState::Serving,
        }
    }

    fn ids(records: &[NodeRecord]) -> Vec<&str> {
        records.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn a_record_lives_for_the_ttl_after_its_last_heartbeat() {
        let t0 = Instant::now();
        let mut table = NodeTable::default();
        table.heartbeat(node("a"), t0);
        let id = NodeId::new("a").unwrap();

        assert!(table.get(&id, t0).is_some());
        assert!(table.get(&id, t0 + NODE_TTL).is_some());
        assert!(
            table
                .get(&id, t0 + NODE_TTL + Duration::from_millis(1))
                .is_none()
        );
        assert!(table.alive(t0 + NODE_TTL * 2).is_empty());
    }

    #[test]
    fn a_heartbeat_extends_life_and_replaces_the_record() {
        let t0 = Instant::now();
        let mut table = NodeTable::default();
        table.heartbeat(node("a"), t0);
        let mut draining = node("a");
        draining.state = NodeState::Draining;
        table.heartbeat(draining, t0 + Duration::from_secs(4));

        let later = t0 + Duration::from_secs(9);
        let alive = table.alive(later);
        assert_eq!(ids(&alive), ["a"]);
        assert_eq!(alive[0].state, NodeState::Draining);
    }

    #[test]
    fn alive_lists_only_live_nodes_in_id_order_and_heartbeats_expire_the_dead() {
        let t0 = Instant::now();
        let mut table = NodeTable::default();
        table.heartbeat(node("c"), t0);
        table.heartbeat(node("b"), t0 + Duration::from_secs(5));
        table.heartbeat(node("a"), t0 + Duration::from_secs(5));
        assert_eq!(
            ids(&table.alive(t0 + Duration::from_secs(6))),
            ["a", "b", "c"]
        );
        assert_eq!(ids(&table.alive(t0 + Duration::from_secs(7))), ["a", "b"]);

        assert_eq!(table.len(), 3);
        table.heartbeat(node("d"), t0 + Duration::from_secs(7));
        assert_eq!(table.len(), 3, "the dead record of c is dropped");
    }

    #[test]
    fn a_clock_that_goes_backwards_does_not_kill_a_node() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut table = NodeTable::default();
        table.heartbeat(node("a"), t0);
        assert_eq!(ids(&table.alive(t0 - Duration::from_secs(1))), ["a"]);
    }

    #[test]
    fn the_in_process_registry_serves_fresh_heartbeats() {
        let registry = InProcessRegistry::new();
        registry.heartbeat(node("a"));
        assert_eq!(ids(&registry.alive()), ["a"]);
        assert!(registry.get(&NodeId::new("a").unwrap()).is_some());
        assert!(registry.get(&NodeId::new("b").unwrap()).is_none());
    }
}
