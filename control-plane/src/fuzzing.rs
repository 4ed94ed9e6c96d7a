//! Entry points for the fuzz targets `control_plane_inputs` and `realtime_frames` (`fuzz/`): the control plane's own
//! parsers of what callers send or what it reads back. Not an API; nothing else calls these.

use crate::sealed::DataKey;
use axum::http::{HeaderMap, HeaderValue};
use std::net::IpAddr;

/// A TOTP code as typed (`123 456`).
pub fn totp_code(input: &str) -> Option<u32> {
    crate::totp::parse_code(input)
}

/// The step a code matches around `now_secs`, after `last` (time and code as the fuzzer likes).
pub fn totp_step(secret: &[u8], code: u32, now_secs: u64, last: Option<u64>) -> Option<u64> {
    crate::totp::matching_step(secret, code, now_secs, last)
}

/// The stored form of a recovery code as typed.
pub fn recovery_code_hash(input: &str) -> Option<String> {
    crate::totp::recovery_code_hash(input)
}

/// The attempt-budget key of a request from `peer` with these `X-Forwarded-For` values (values
/// that are not valid header bytes are left out, as HTTP would refuse them).
pub fn client_key(peer: Option<IpAddr>, forwarded: &[&[u8]], trusted: &[IpAddr]) -> String {
    let mut headers = HeaderMap::new();
    for value in forwarded {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append("x-forwarded-for", value);
        }
    }
    crate::api::extract::client_key(peer, &headers, trusted)
}

/// The `<tag>` values of an S3 listing as read from the bucket's answer.
pub fn s3_listing_values(xml: &str, tag: &str) -> Vec<String> {
    crate::blobs_s3::xml_values(xml, tag)
}

/// Seals `plaintext` under `key` for `context`.
pub fn seal(key: &[u8; 32], plaintext: &[u8], context: &str) -> String {
    DataKey::from_bytes(key).seal(plaintext, context)
}

/// Opens a sealed value read back from storage.
pub fn open(key: &[u8; 32], sealed: &str, context: &str) -> Option<Vec<u8>> {
    DataKey::from_bytes(key).open(sealed, context).ok()
}

/// Whether `text` is a usable data key (`CONVOY_DATA_KEY`).
pub fn data_key_parses(text: &str) -> bool {
    crate::decode_key(text).is_ok()
}

/// A `/v1/events` client frame: `Some(re-encoded)` when it parses.
pub fn client_frame(text: &str) -> Option<String> {
    let frame = protocol::realtime::ClientFrame::decode(text).ok()?;
    serde_json::to_string(&frame).ok()
}

/// A fan-out message read from Redis: whether it decodes.
pub fn bus_message(payload: &[u8]) -> bool {
    crate::fanout::decode(payload).is_ok()
}

/// The message and group fields as sent: whether each is accepted, and an accepted body's
/// length in characters.
pub fn message_fields(text: &str) -> (Option<usize>, bool, bool, bool) {
    (
        crate::domain::message_body(text)
            .ok()
            .map(|b| b.chars().count()),
        crate::domain::client_msg_id(text).is_ok(),
        crate::domain::avatar_url(text).is_ok(),
        crate::domain::group_description(text).is_ok(),
    )
}

/// The account fields as sent: whether a device token, a picture URL and a Web Push
/// subscription whose three parts are `text` are accepted.
pub fn account_fields(text: &str) -> (bool, bool, bool) {
    (
        crate::domain::device_token(text).is_ok(),
        crate::domain::picture_url(text).is_ok(),
        crate::domain::PushSubscription::parse(text, text, text, true).is_ok(),
    )
}
