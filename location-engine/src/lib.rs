//! The location engine: latest fix per user in an R-tree, proximity alerts and places.
//!
//! Not built yet (issue 5). The crate exists so the workspace has its final shape; it exposes
//! nothing that pretends to work.
