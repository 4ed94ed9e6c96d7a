//! `room::ClientMessage::decode` on arbitrary bytes: never panics, and whatever it accepts
//! survives an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::room::ClientMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ClientMessage::decode(data) {
        let again =
            ClientMessage::decode(msg.encode().as_bytes()).expect("re-encoded message decodes");
        assert_eq!(again, msg);
    }
});
