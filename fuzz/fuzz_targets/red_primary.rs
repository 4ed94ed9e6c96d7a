//! `red::primary` on arbitrary bytes: never panics, and the primary it returns is a suffix of the
//! payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_plane::red;

fuzz_target!(|data: &[u8]| {
    if let Some((pt, primary)) = red::primary(data) {
        assert!(pt < 128);
        assert!(
            data.ends_with(primary),
            "the primary block ends the payload"
        );
        // Wrapping it again and unwrapping gives it back.
        let again = red::wrap_primary(pt, primary);
        assert_eq!(red::primary(&again), Some((pt, primary)));
    }
});
