//! `media_plane::music::transcode_guarded` on arbitrary bytes, as an uploaded music file of
//! unknown type: an answer for every input (a track or an error), never an abort, a hang or a
//! runaway allocation; a track is never empty and never longer than the limit.
//!
//! symphonia's demuxers can panic on crafted files (its MKV reader does, at `ebml.rs`); the node
//! turns such a panic into an error (`transcode_guarded`), so here a panic located in symphonia
//! is let unwind into that guard. A panic anywhere else, ours included, still aborts the run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_plane::music::transcode::{MAX_DURATION_MS, transcode_guarded};

fuzz_target!(
    init: {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("/symphonia-")) {
                return;
            }
            abort(info);
        }));
    },
    |data: &[u8]| {
        if let Ok(track) = transcode_guarded(data.to_vec(), None) {
            assert!(!track.frames.is_empty());
            assert!(track.duration_ms() <= MAX_DURATION_MS + 20);
        }
    }
);
