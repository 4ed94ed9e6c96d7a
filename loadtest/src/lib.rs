//! Convoy's load generator. `loadtest sfu` drives a running media node through the real join path
//! (issue 3); `loadtest api` the control plane's message path and sign-in (issue 4); `loadtest
//! location` the location engine's stream path, against Redis GEO for comparison (issue 5).

pub mod api;
pub mod location;
pub mod measure;
pub mod pin;
pub mod report;
pub mod sfu;
