//! benches (being written).
