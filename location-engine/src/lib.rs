//! The location engine: latest fix per user, proximity alerts and places (issue 5).
//!
//! Sans-IO: every function takes `now` as an argument and owns no socket or thread. Built so
//! far: [`geo`] (WGS84 distances), [`fix`] (the latest fix per user, compact, only ever
//! replaced by a newer one) and [`proximity`] (the per-pair state machine). The index, places,
//! privacy and the server are not built yet.

pub mod fix;
pub mod geo;
pub mod places;
pub mod proximity;
