//! Convoy's shared vocabulary: the things that cross a process boundary.
//!
//! - [`ids`]: id newtypes (a `GroupId` is never confused with a `UserId`).
//! - [`account`]: the caller's own account, settings and devices; public profiles.
//! - [`api`]: the REST request/response bodies of the control plane and the problem+json error body.
//! - [`events`]: what media nodes report about their sessions to the control plane.
//! - [`location`]: the location stream's frames (JSON and binary), the location token's claims and
//!   the alerts location engines put on the bus.
//! - [`music`]: a session's shared music: the actions members ask for and the state they are told.
//! - [`node`]: the media node record the registry holds.
//! - [`realtime`]: the `/v1/events` WebSocket frames and the events of a group's log.
//! - [`room`]: room control messages on the data channel.
//! - [`token`]: the claims of every token kind and the EdDSA JWT codec that signs and verifies them.
//!
//! This crate must not depend on a runtime (tokio, glommio, sqlx, axum) and performs no I/O; every
//! other crate may depend on it (ARCHITECTURE.md, invariant 1). Decoders return errors, never panic.

pub mod account;
pub mod api;
pub mod events;
pub mod ids;
pub mod location;
pub mod music;
pub mod node;
pub mod realtime;
pub mod room;
pub mod token;

pub use ids::{GroupId, NodeId, ParticipantId, PlaceId, SessionId, UserId};
