//! loadtest (being written).
