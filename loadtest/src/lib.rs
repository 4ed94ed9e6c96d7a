//! Convoy's load generator. `loadtest sfu` drives a running media node through the real join path
//! (issue 3); `loadtest api` the control plane's message path and sign-in (issue 4); `loadtest location` comes with the location engine (issue 5).

pub mod api;
pub mod measure;
pub mod pin;
pub mod report;
pub mod sfu;
