//! Convoy's load generator (issue 3: `loadtest sfu`; issue 5: `loadtest location`).
//!
//! Nothing is built here yet; the crate exists so the workspace has its final shape.
