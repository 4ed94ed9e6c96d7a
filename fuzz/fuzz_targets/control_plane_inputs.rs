//! The control plane's own parsers on arbitrary input: TOTP codes, recovery codes, the
//! `X-Forwarded-For` walk to a client key, sealed values read back from storage and the data key
//! from the environment. None may panic; a code that parses is six digits; a recovery-code hash
//! is 64 hex digits; a sealed value opens only as what was sealed, and never after a change.
//! Attachment inputs: a byte range lies inside the file, a kept file name is tidy, and the
//! type check of an upload does not depend on how its bytes are chunked; an S3 listing never
//! yields more keys than it has.
#![no_main]

use control_plane::attachments::{self, RangeAnswer, Sniffer};
use control_plane::fuzzing as cp;
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

const KEY: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Some(code) = cp::totp_code(&text) {
        assert!(code < 1_000_000);
        let now = u64::from_le_bytes(pad8(data));
        if let Some(step) = cp::totp_step(data, code, now, None) {
            assert!(step + 1 >= now / 30 && step <= now / 30 + 1);
            assert_eq!(cp::totp_step(data, code, now, Some(step + 1)), None);
        }
    }

    if let Some(hash) = cp::recovery_code_hash(&text) {
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    // The input split at NULs: peer, trusted proxies, then X-Forwarded-For values.
    let mut parts = data.split(|b| *b == 0);
    let peer = parts
        .next()
        .and_then(|p| std::str::from_utf8(p).ok())
        .and_then(|p| p.parse::<IpAddr>().ok());
    let trusted: Vec<IpAddr> = parts
        .next()
        .and_then(|p| std::str::from_utf8(p).ok())
        .map(|p| p.split(',').filter_map(|a| a.trim().parse().ok()).collect())
        .unwrap_or_default();
    let forwarded: Vec<&[u8]> = parts.collect();
    let key = cp::client_key(peer, &forwarded, &trusted);
    assert!(!key.is_empty());
    if peer.is_none() {
        assert_eq!(key, "unknown");
    }

    // Stored bytes read back: garbage never opens; a sealed value opens only unchanged.
    assert_eq!(cp::open(&KEY, &text, "ctx"), None, "{text:?}");
    let sealed = cp::seal(&KEY, data, "ctx");
    assert_eq!(cp::open(&KEY, &sealed, "ctx").as_deref(), Some(data));
    assert_eq!(cp::open(&KEY, &sealed, "other"), None);

    let _ = cp::data_key_parses(&text);

    // An S3 listing answer: every value read lies between its tags, and no more are read
    // than there are opening tags.
    let keys = cp::s3_listing_values(&text, "Key");
    assert!(keys.len() <= text.matches("<Key>").count());

    // Attachments: a Range header against a size, a file name, an upload's bytes.
    let size = u64::from(data.first().copied().unwrap_or(0)) * 37;
    if let RangeAnswer::Partial(range) = attachments::range(Some(&text), size) {
        assert!(range.start <= range.end && range.end < size, "{text:?} {size}");
    }
    if let Ok(name) = attachments::file_name(Some(&text)) {
        assert!(!name.is_empty() && !name.starts_with('.'), "{name:?}");
        assert!(!name.contains(['/', '\\']) && !name.chars().any(char::is_control));
    }
    let cut = data.len() / 2;
    for media in attachments::allowed_types() {
        let mut whole = Sniffer::new(media);
        whole.feed(data);
        let mut split = Sniffer::new(media);
        split.feed(&data[..cut]);
        split.feed(&data[cut..]);
        assert_eq!(whole.matches(), split.matches(), "{media}: chunking changed the verdict");
        if media == "text/plain" {
            let utf8 = std::str::from_utf8(data).is_ok_and(|t| !t.contains('\0'));
            assert_eq!(whole.matches(), utf8);
        }
    }
});

fn pad8(data: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    let n = data.len().min(8);
    out[..n].copy_from_slice(&data[..n]);
    out
}
