//! The `convoy` launcher's library: how the parts are put together in one process.
//!
//! [`dev::DevStack`] is what `convoy dev` runs and what the end-to-end tests start: the control
//! plane on SQLite and one media node in the same process, wired through the in-process registry.
//! `main.rs` only parses the command line and calls in here or into the part libraries.

pub mod dev;
