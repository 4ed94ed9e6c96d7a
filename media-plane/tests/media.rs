//! The media plane's integration tests: one binary, two tiers.
//!
//! - `sim`: the deterministic simulation tier. str0m clients talk to a [`media_plane::Shard`]
//!   through an in-memory network under simulated time: no socket, no clock, no sleep.
//! - `live`: the node on loopback (glommio cores, WHIP over HTTP) with its bad-input answers.

mod media {
    pub mod live;
    pub mod sim;
}
