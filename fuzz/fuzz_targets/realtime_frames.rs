//! What `/v1/events` and the fan-out read from the network: client frames, Redis fan-out
//! messages (typing, presence, call signals, sign-outs), and the message, group and account fields of the
//! REST API. None may panic; a frame that
//! parses re-encodes to one that parses the same; an accepted body is 1 to 4,000 characters;
//! an accepted client message id is 1 to 64 bytes.
#![no_main]

use control_plane::fuzzing as cp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(again) = cp::client_frame(&text) {
        assert_eq!(cp::client_frame(&again).as_deref(), Some(again.as_str()));
    }
    let _ = cp::bus_message(data);
    let (body, client_id, _, _) = cp::message_fields(&text);
    if let Some(chars) = body {
        assert!((1..=4000).contains(&chars));
    }
    if client_id {
        assert!((1..=64).contains(&text.len()));
    }
    let (token, _, _) = cp::account_fields(&text);
    if token {
        assert!((1..=4096).contains(&text.len()));
    }
});
