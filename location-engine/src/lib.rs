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
//! The server (WebSocket and HTTP ingest, location tokens) is not built yet.

pub mod engine;
pub mod fix;
pub mod geo;
pub mod noise;
pub mod places;
pub mod proximity;

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
