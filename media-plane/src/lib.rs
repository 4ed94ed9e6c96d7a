//! Convoy media node: a thread-per-core SFU on str0m with WHIP signaling.
//!
//! - Sans-IO core: [`shard`] (rooms, participants, demux, forwarding) with [`forwarder`] (per
//!   subscriber slot rewriting) and [`stun`] (ufrag extraction). No clock, socket or thread there.
//! - Shell: `runtime` runs one glommio executor pinned per core around a shard; `signaling` serves
//!   WHIP on the node's HTTP port; [`auth`] verifies join tokens against the control plane's JWKS;
//!   [`node`] ties them together and heartbeats into the registry.

pub mod auth;
pub mod forwarder;
mod metrics;
pub mod music;
pub mod node;
pub mod participant;
pub mod red;
pub mod registry;
mod room;
mod runtime;
pub mod shard;
mod signaling;
pub mod speakers;
pub mod stun;
pub mod udp;

pub use node::{EventSink, Heartbeat, Hooks, MediaNode, NodeConfig};
pub use participant::{Grants, LeaveReason, MuteChange, ParticipantKey};
pub use runtime::CoreLoad;
pub use shard::{Datagram, JoinError, JoinRequest, Joined, Shard, ShardConfig, ShardEvent};
pub use signaling::MAX_OFFER_BYTES;
