//! The JSON the control plane reads back from Redis — node records and session events written by
//! media nodes — on arbitrary bytes: never panics, and what parses survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::events::SessionEvent;
use protocol::node::NodeRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = serde_json::from_slice::<SessionEvent>(data) {
        let again: SessionEvent =
            serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(again, e);
    }
    let _ = serde_json::from_slice::<NodeRecord>(data);
});
