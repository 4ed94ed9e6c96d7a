//! `media_plane::music::transcode` on arbitrary bytes, as an uploaded music file of unknown type:
//! an answer for every input (a track or an error), never a panic, a hang or a runaway
//! allocation; a track is never empty and never longer than the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_plane::music::transcode::{MAX_DURATION_MS, transcode};

fuzz_target!(|data: &[u8]| {
    if let Ok(track) = transcode(data.to_vec(), None) {
        assert!(!track.frames.is_empty());
        assert!(track.duration_ms() <= MAX_DURATION_MS + 20);
    }
});
