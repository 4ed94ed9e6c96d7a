//! What a location engine reads from the network (`protocol::location`): binary fix frames
//! (WebSocket or `POST /v1/fixes`), JSON text frames, JSON fix batches, alerts read back from the
//! Redis stream, and location tokens. None may panic.
//!
//! - A binary frame that decodes holds as many fixes as its count byte (byte 1), and re-encodes
//!   to the same bytes: every field is an integer that survives the trip through `f64` exactly,
//!   and the clamps never move a decoded value (the sentinels `i32::MIN`, `0xFFFF` and `0xFF` of
//!   the optional fields decode to none, and none encodes back to them; accuracy, never absent,
//!   uses its whole range). So `decode(encode(decode(x)))` is `decode(x)`. A refused frame adds
//!   no fix.
//! - Fixes parsed from JSON (a `fix` or `fixes` frame, a batch) encode to a frame that decodes to
//!   as many fixes, with the same times and the same optional fields present, and that frame
//!   itself round-trips as above. (Not the JSON round trip of the floats: serde_json without
//!   `float_roundtrip` may parse one a bit off; a parsed frame only has to parse again.)
//! - An alert that parses serialises to JSON that parses to the same alert.
//! - No location token is accepted (nothing here is signed by the key trusted, except by
//!   breaking Ed25519).
//!
//! Input: the bytes as a binary frame, and, if they are UTF-8, as text for the JSON decoders and
//! the token (a binary frame never is: `0xC1` is not valid UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::api::Jwks;
use protocol::location::{
    BINARY_FIX_LEN, ClientFrame, FixBatch, HistoryBatch, LocationAlert, LocationClaims, MAX_BATCH,
    WireFix, decode_fixes, encode_fixes,
};
use protocol::token::{Signer, VerifyingKeys};
use std::sync::LazyLock;

static KEYS: LazyLock<VerifyingKeys> = LazyLock::new(|| {
    VerifyingKeys::from_jwks(&Jwks {
        keys: vec![Signer::from_seed(&[7; 32]).jwk()],
    })
});

/// Unix seconds the tokens are judged at.
const NOW: u64 = 1_500;

fuzz_target!(|data: &[u8]| {
    binary_frame(data);
    if let Ok(text) = std::str::from_utf8(data) {
        text_frames(text);
    }
});

fn binary_frame(frame: &[u8]) {
    let mut fixes = Vec::new();
    if decode_fixes(frame, &mut fixes).is_err() {
        assert!(
            fixes.is_empty(),
            "a refused frame added {} fixes",
            fixes.len()
        );
        return;
    }
    assert_eq!(fixes.len(), usize::from(frame[1]));

    let mut bytes = Vec::new();
    encode_fixes(&fixes, &mut bytes).expect("decoded fixes encode");
    assert_eq!(bytes.len(), frame.len());
    assert_eq!(bytes, frame, "re-encoded frame differs");

    let mut again = Vec::new();
    decode_fixes(&bytes, &mut again).expect("a re-encoded frame decodes");
    assert_eq!(again.len(), fixes.len());
    assert_eq!(again, fixes);
    let mut bytes2 = Vec::new();
    encode_fixes(&again, &mut bytes2).expect("decoded fixes encode");
    assert_eq!(bytes2, bytes, "a second round trip changed the frame");
}

/// Fixes from JSON, as the engine may re-encode them for its binary paths.
fn json_fixes(fixes: &[WireFix]) {
    let mut bytes = Vec::new();
    if encode_fixes(fixes, &mut bytes).is_err() {
        assert!(fixes.is_empty() || fixes.len() > MAX_BATCH);
        return;
    }
    assert_eq!(bytes.len(), 2 + fixes.len() * BINARY_FIX_LEN);
    let mut back = Vec::new();
    decode_fixes(&bytes, &mut back).expect("an encoded frame decodes");
    assert_eq!(back.len(), fixes.len());
    for (a, b) in fixes.iter().zip(&back) {
        assert_eq!(a.t, b.t);
        assert_eq!(
            (
                a.alt.is_some(),
                a.speed.is_some(),
                a.heading.is_some(),
                a.battery.is_some()
            ),
            (
                b.alt.is_some(),
                b.speed.is_some(),
                b.heading.is_some(),
                b.battery.is_some()
            ),
            "{a:?} came back as {b:?}"
        );
    }
    binary_frame(&bytes);
}

fn text_frames(text: &str) {
    if let Ok(frame) = ClientFrame::decode(text) {
        let json = serde_json::to_string(&frame).expect("a parsed frame serialises");
        assert!(
            ClientFrame::decode(&json).is_ok(),
            "does not parse again: {json}"
        );
        match &frame {
            ClientFrame::Fix(f) => json_fixes(std::slice::from_ref(f)),
            ClientFrame::Fixes { fixes } => json_fixes(fixes),
            _ => {}
        }
    }
    if let Ok(batch) = serde_json::from_str::<FixBatch>(text) {
        json_fixes(&batch.fixes);
    }
    if let Ok(alert) = serde_json::from_str::<LocationAlert>(text) {
        let json = serde_json::to_string(&alert).expect("an alert serialises");
        let again = serde_json::from_str::<LocationAlert>(&json);
        assert_eq!(again.ok(), Some(alert), "{json}");
    }
    // What the control plane reads off the history stream.
    if let Ok(history) = serde_json::from_str::<HistoryBatch>(text) {
        let json = serde_json::to_string(&history).expect("a history batch serialises");
        assert!(
            serde_json::from_str::<HistoryBatch>(&json).is_ok(),
            "does not parse again: {json}"
        );
    }
    let claims = KEYS.verify::<LocationClaims>(text, "location", NOW, 60);
    assert!(
        claims.is_err(),
        "accepted a forged location token: {claims:?}"
    );
}
