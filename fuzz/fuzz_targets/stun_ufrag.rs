//! `stun::local_ufrag` on arbitrary bytes: never panics, and a ufrag it returns is a non-empty,
//! colon-free slice of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_plane::stun;

fuzz_target!(|data: &[u8]| {
    let Some(u) = stun::local_ufrag(data) else {
        return;
    };
    assert!(!u.is_empty(), "empty ufrag");
    assert!(!u.contains(&b':'), "ufrag contains ':'");
    let range = data.as_ptr_range();
    let sub = u.as_ptr_range();
    assert!(
        range.start <= sub.start && sub.end <= range.end,
        "ufrag is not a subslice of the datagram"
    );
    assert!(stun::is_stun(data), "a ufrag from a non-STUN datagram");
});
