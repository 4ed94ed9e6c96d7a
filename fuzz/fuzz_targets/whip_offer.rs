//! `Shard::join` with arbitrary text as the WHIP offer: returns `Ok` or `Err`, never panics.
//! One shard per process; a successful join is left again so the shard stays small.
#![no_main]

use convoy_fuzz::{join_request, shard};
use libfuzzer_sys::fuzz_target;
use media_plane::Shard;
use std::cell::RefCell;
use std::time::Instant;

thread_local! {
    static SHARD: RefCell<(Instant, Shard)> = RefCell::new({
        let now = Instant::now();
        (now, shard(now))
    });
}

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = std::str::from_utf8(data) else {
        return;
    };
    SHARD.with_borrow_mut(|(now, shard)| {
        if let Ok(joined) = shard.join(*now, join_request(offer.to_owned())) {
            assert!(joined.answer.starts_with("v=0"), "an answer is SDP");
            assert!(shard.leave(joined.participant));
        }
        while shard.poll_transmit().is_some() {}
        while shard.poll_event().is_some() {}
        let _ = shard.poll_timeout();
        assert_eq!(shard.participant_count(), 0);
    });
});
