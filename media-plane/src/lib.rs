//! Convoy media node: a thread-per-core SFU on str0m with WHIP signaling.
//!
//! - Sans-IO core: [`shard`] (rooms, participants, demux, forwarding) with [`forwarder`] (per
//!   subscriber slot rewriting) and [`stun`] (ufrag extraction). No clock, socket or thread here.
//! - Shell: `runtime` runs one glommio executor per core around a shard; `signaling` serves WHIP on
//!   the node's HTTP port; `auth` verifies join tokens against the control plane's JWKS.

pub mod forwarder;
pub mod participant;
mod room;
pub mod shard;
pub mod stun;

pub use participant::{Grants, LeaveReason, ParticipantKey};
pub use shard::{Datagram, JoinError, JoinRequest, Joined, Shard, ShardConfig, ShardEvent};
