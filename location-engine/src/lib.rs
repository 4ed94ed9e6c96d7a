//! The location engine: latest fix per user, proximity alerts and places (issue 5).
//!
//! Sans-IO: every function takes `now` as an argument and owns no socket or thread.
//! - [`geo`]: WGS84 distances, the tangent frame places are drawn in, approximate cells.
//! - [`fix`]: a fix, validated and packed in 24 bytes.
//! - [`proximity`]: the debounced two-state track (pairs near/apart, places inside/outside).
//! - [`places`]: circles and polygons, scanned or looked up in an rstar tree of normals.
//! - [`noise`]: a seeded stream of numbers for test and bench traces.
//! - [`engine`]: sharing per group (exact or approximate, until a time, paused), the latest fix
//!   per user, proximity and place alerts, lost members, purging.
//!
//! The shell around it:
//! - [`hub`]: the engine plus who is connected and what their location tokens grant; turns
//!   engine output into frames for streams and alerts for the bus. Still sans-IO.
//! - [`server`]: tokio/axum: the WebSocket stream and HTTP batch ingest, token checks against the
//!   control plane's JWKS, the task that owns the hub and the clock, alerts to Redis.
//! - [`verified`]: location tokens verified lately, so a batch with a known token costs a
//!   digest and a lookup, not a signature check. Sans-IO.

pub mod engine;
pub mod fix;
pub mod geo;
pub mod hub;
pub mod noise;
pub mod places;
pub mod proximity;
pub mod server;
pub mod verified;

/// Puts `item` in a slot freed earlier, or in a new one at the end; answers the slot.
pub(crate) fn put<T>(slots: &mut Vec<T>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(slot) => {
            slots[slot as usize] = item;
            slot
        }
        None => {
            slots.push(item);
            (slots.len() - 1) as u32
        }
    }
}
