//! The location stream: what clients send a location engine and what it sends back, the location
//! token's claims, and the alerts the engine puts on the bus for the control plane.
//!
//! A client opens `GET /v1/stream` (a WebSocket) on the location engine with a location token
//! (`Authorization: Bearer`, or `?token=` where a browser cannot set headers) and sends fixes as
//! JSON text frames ([`ClientFrame`]) or as compact binary frames ([`encode_fixes`], 27 bytes a
//! fix). It may also post a batch: `POST /v1/fixes` with the same token and a JSON [`FixBatch`] or
//! a binary frame (`Content-Type: application/vnd.convoy.fixes`). The engine answers with
//! [`ServerFrame`]s: `ready`, the positions of the members of the caller's groups (each at the
//! precision its owner chose), alerts, and a `rejected` count for fixes it did not keep.
//!
//! Close codes: [`CLOSE_UNAUTHORIZED`] (no valid token, or it expired without a `token` frame
//! renewing it), [`CLOSE_BAD_FRAME`] (a frame that does not decode), [`CLOSE_TOO_SLOW`] (the
//! client did not read), [`CLOSE_TOO_MANY`] (more fixes than [`MAX_FIXES_PER_SEC`] sustained),
//! 1009 (a frame above [`MAX_FRAME`]) and 1001 when the engine shuts down.

use crate::ids::{GroupId, PlaceId, UserId};
use crate::token::{Claims, TokenKind};
use serde::{Deserialize, Serialize};

pub use crate::realtime::{CLOSE_BAD_FRAME, CLOSE_TOO_SLOW, CLOSE_UNAUTHORIZED};

/// Close code: fixes arrived faster than [`MAX_FIXES_PER_SEC`] for longer than the burst allows.
pub const CLOSE_TOO_MANY: u16 = 4029;
/// Sustained fixes per second one connection (or one token over HTTP) may send.
pub const MAX_FIXES_PER_SEC: u32 = 20;
/// Fixes one connection may send at once above the sustained rate.
pub const FIX_BURST: u32 = 200;
/// The largest frame or HTTP body read, bytes.
pub const MAX_FRAME: usize = 64 * 1024;
/// The most fixes in one frame or batch.
pub const MAX_BATCH: usize = 200;
/// The longest a location token lives, seconds (DESIGN.md §3).
pub const MAX_TOKEN_SECS: u64 = 15 * 60;
/// The most groups one location token names.
pub const MAX_GRANTS: usize = 64;
/// Media type of a binary fix batch over HTTP.
pub const BINARY_MEDIA_TYPE: &str = "application/vnd.convoy.fixes";

/// How precisely a member shares with a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// The fix as taken.
    Exact,
    /// A ~1.1 km cell: the group sees its centre, never the fix, and alerts are judged on it.
    Approx,
}

/// One group a location token lets its holder share with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grp: GroupId,
    pub precision: Precision,
    /// When the user's chosen sharing ends, Unix seconds; absent: until stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    /// The group's proximity radius in metres; 0 for no proximity alerts.
    pub near_m: u32,
    /// The revision of the group's places when the token was made (0: none ever): an engine
    /// that holds an older one fetches them ([`GroupPlaces`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub places: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Location token (aud `location`, ≤ [`MAX_TOKEN_SECS`]): who shares with which groups, how.
/// Sharing ends at the earlier of a grant's `until` and the token's `exp` unless a fresh token
/// renews it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationClaims {
    pub iss: String,
    pub sub: UserId,
    pub aud: String,
    pub typ: TokenKind,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub groups: Vec<Grant>,
    /// The user keeps a location history (consented, in their settings): the engine hands their
    /// accepted fixes to the control plane, which stores them for the chosen days.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hist: bool,
}

impl Claims for LocationClaims {
    const KIND: TokenKind = TokenKind::Location;
}

/// `POST /v1/location/token` (control plane): the groups to share with, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LocationTokenRequest {
    pub groups: Vec<ShareRequest>,
}

/// Sharing with one group, as the user chose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    pub group: GroupId,
    #[serde(default = "exact")]
    pub precision: Precision,
    /// When sharing ends (RFC 3339); absent: until stopped. Ask again with the same value to
    /// renew the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

fn exact() -> Precision {
    Precision::Exact
}

/// A location token and where to use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LocationToken {
    /// Bearer for the location engine's `/v1/stream` and `/v1/fixes`.
    pub token: String,
    /// RFC 3339. Ask for a fresh token before then and send it on the stream (`token` frame).
    pub expires_at: String,
    /// The location engine's stream, when the control plane knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_url: Option<String>,
    pub groups: Vec<GrantView>,
}

/// One group of a location token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantView {
    pub group: GroupId,
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The group's proximity radius, metres (0: no proximity alerts).
    pub near_m: u32,
}

/// A fix as a client sends it (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireFix {
    /// When the device took it, Unix ms.
    pub t: i64,
    /// Degrees, WGS84.
    pub lat: f64,
    pub lon: f64,
    /// The 68 % radius, metres.
    pub acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
    /// Metres per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Degrees clockwise from true north.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    /// Percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
}

/// `POST /v1/fixes` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixBatch {
    pub fixes: Vec<WireFix>,
}

/// The answer to `POST /v1/fixes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// Fixes kept.
    pub accepted: u32,
    /// Fixes not kept, with why, by index in the batch.
    pub rejected: Vec<Rejected>,
}

/// A fix the engine did not keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub index: u32,
    pub reason: String,
}

/// What a client sends on the stream as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Fix(WireFix),
    Fixes {
        fixes: Vec<WireFix>,
    },
    /// A fresh location token: renews sharing (and may change its groups) before the old one
    /// expires. Its `sub` must be the stream's user.
    Token {
        token: String,
    },
    /// Stop showing me to every group until `resume` (positions hidden, no alerts).
    Pause {},
    Resume {},
    Ping {},
}

impl ClientFrame {
    /// Parses a text frame.
    pub fn decode(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Where a member is, as the caller may see them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MemberPosition {
    pub user: UserId,
    pub precision: Precision,
    pub lat: f64,
    pub lon: f64,
    /// Metres: the fix's accuracy, or the cell's half diagonal.
    pub acc: f64,
    /// When the fix was taken, Unix ms.
    pub t: i64,
    /// No fix for the group's silence limit.
    pub lost: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<u8>,
}

/// What an alert says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AlertKind {
    /// Two members came within the group's radius (`a` < `b`).
    Near {
        a: UserId,
        b: UserId,
    },
    /// They moved apart beyond the hysteresis band.
    Apart {
        a: UserId,
        b: UserId,
    },
    Arrived {
        user: UserId,
        place: PlaceId,
    },
    Left {
        user: UserId,
        place: PlaceId,
    },
    /// No fix for the group's silence limit; `last_fix_ms` is when the last one was taken.
    Lost {
        user: UserId,
        last_fix_ms: i64,
    },
}

impl AlertKind {
    /// The members an alert is about.
    pub fn users(&self) -> (UserId, Option<UserId>) {
        match *self {
            AlertKind::Near { a, b } | AlertKind::Apart { a, b } => (a, Some(b)),
            AlertKind::Arrived { user, .. }
            | AlertKind::Left { user, .. }
            | AlertKind::Lost { user, .. } => (user, None),
        }
    }
}

/// An alert of one group, on the members' streams and on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationAlert {
    /// Unique across engines and restarts (32 hex digits): the control plane logs an id once.
    #[serde(with = "hex_u128")]
    pub id: u128,
    pub group: GroupId,
    /// Unix ms.
    pub at_ms: i64,
    #[serde(flatten)]
    pub kind: AlertKind,
}

mod hex_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s.len() != 32 {
            return Err(serde::de::Error::custom("an alert id is 32 hex digits"));
        }
        u128::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// One group the stream shares with, as `ready` confirms it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sharing {
    pub group: GroupId,
    pub precision: Precision,
    /// When sharing ends unless a fresh token renews it, Unix ms.
    pub until_ms: i64,
}

/// What the engine sends on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// After the token is checked, and again after each `token` frame.
    Ready {
        user: UserId,
        sharing: Vec<Sharing>,
        /// Groups of the token that could not be shared with, and why.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        refused: Vec<Refusal>,
    },
    /// The members of a group with a position, whenever one of them moved.
    Positions {
        group: GroupId,
        members: Vec<MemberPosition>,
    },
    Alert(LocationAlert),
    /// Fixes of the last frame that were not kept (too old, out of range, …).
    Rejected {
        rejected: Vec<Rejected>,
    },
    Pong {},
}

/// A group a token named that the engine would not share with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub group: GroupId,
    pub reason: String,
}

impl ServerFrame {
    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        // Plain structs with string keys: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// First byte of a binary fix frame (version 1).
pub const BINARY_MAGIC: u8 = 0xC1;
/// Bytes of one fix in a binary frame.
pub const BINARY_FIX_LEN: usize = 27;
const NO_ALT: i32 = i32::MIN;
const NO_U16: u16 = u16::MAX;
const NO_BATTERY: u8 = u8::MAX;

/// Why a binary frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("a binary fix frame starts with 0xC1 and a count")]
    Magic,
    #[error("a binary fix frame holds 1 to {MAX_BATCH} fixes")]
    Count,
    #[error("the frame's length does not match its count of 27-byte fixes")]
    Length,
}

/// Encodes fixes as one binary frame: `0xC1`, a count byte (1–200), then per fix, little-endian:
/// `t` i64 ms, latitude and longitude i32 in 1e-7 degrees, accuracy u16 in decimetres, altitude
/// i32 in decimetres (`i32::MIN`: none), speed u16 in cm/s, heading u16 in 1/100 degree (both
/// `0xFFFF`: none), battery u8 (`0xFF`: none). Values are rounded and clamped to their field.
pub fn encode_fixes(fixes: &[WireFix], out: &mut Vec<u8>) -> Result<(), BinaryError> {
    if fixes.is_empty() || fixes.len() > MAX_BATCH {
        return Err(BinaryError::Count);
    }
    out.reserve(2 + fixes.len() * BINARY_FIX_LEN);
    out.push(BINARY_MAGIC);
    out.push(fixes.len() as u8);
    for f in fixes {
        out.extend_from_slice(&f.t.to_le_bytes());
        out.extend_from_slice(&scaled_i32(f.lat, 1e7).to_le_bytes());
        out.extend_from_slice(&scaled_i32(f.lon, 1e7).to_le_bytes());
        // Accuracy is never absent: its whole range is a value (6553.5 m at most).
        let acc = (f.acc * 10.0).round() as u16;
        out.extend_from_slice(&acc.to_le_bytes());
        let alt = f
            .alt
            .map_or(NO_ALT, |a| scaled_i32(a, 10.0).max(NO_ALT + 1));
        out.extend_from_slice(&alt.to_le_bytes());
        out.extend_from_slice(&scaled_u16(f.speed, 100.0).to_le_bytes());
        out.extend_from_slice(&scaled_u16(f.heading, 100.0).to_le_bytes());
        out.push(f.battery.map_or(NO_BATTERY, |b| b.min(NO_BATTERY - 1)));
    }
    Ok(())
}

fn scaled_i32(v: f64, scale: f64) -> i32 {
    // `as` saturates and maps NaN to 0; the engine judges the value, not the codec.
    (v * scale).round() as i32
}

fn scaled_u16(v: Option<f64>, scale: f64) -> u16 {
    v.map_or(NO_U16, |v| ((v * scale).round() as u16).min(NO_U16 - 1))
}

/// Decodes a binary fix frame (see [`encode_fixes`]) into `out`.
pub fn decode_fixes(frame: &[u8], out: &mut Vec<WireFix>) -> Result<(), BinaryError> {
    let [magic, count, rest @ ..] = frame else {
        return Err(BinaryError::Magic);
    };
    if *magic != BINARY_MAGIC {
        return Err(BinaryError::Magic);
    }
    let count = usize::from(*count);
    if count == 0 || count > MAX_BATCH {
        return Err(BinaryError::Count);
    }
    if rest.len() != count * BINARY_FIX_LEN {
        return Err(BinaryError::Length);
    }
    out.reserve(count);
    for r in rest.chunks_exact(BINARY_FIX_LEN) {
        let i64_at = |i: usize| i64::from_le_bytes(r[i..i + 8].try_into().unwrap_or_default());
        let i32_at = |i: usize| i32::from_le_bytes(r[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(r[i..i + 2].try_into().unwrap_or_default());
        let alt = i32_at(18);
        let opt = |v: u16, scale: f64| (v != NO_U16).then(|| f64::from(v) / scale);
        out.push(WireFix {
            t: i64_at(0),
            lat: f64::from(i32_at(8)) / 1e7,
            lon: f64::from(i32_at(12)) / 1e7,
            acc: f64::from(u16_at(16)) / 10.0,
            alt: (alt != NO_ALT).then(|| f64::from(alt) / 10.0),
            speed: opt(u16_at(22), 100.0),
            heading: opt(u16_at(24), 100.0),
            battery: (r[26] != NO_BATTERY).then_some(r[26]),
        });
    }
    Ok(())
}

/// The Redis stream the engines put alerts on for the control plane (field `e`, JSON
/// [`LocationAlert`]).
pub fn redis_alert_stream_key(prefix: &str) -> String {
    format!("{prefix}location-alerts")
}

/// The Redis stream location engines put [`HistoryBatch`]es on for the control planes.
pub fn redis_history_stream_key(prefix: &str) -> String {
    format!("{prefix}location-history")
}

/// An accepted fix of a user whose token says they keep a history (engine → control plane).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryFix {
    pub user: UserId,
    pub fix: WireFix,
}

/// Fixes for the control plane's history, one Redis stream entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryBatch {
    pub fixes: Vec<HistoryFix>,
}

/// One stored position of `GET /v1/users/me/location-history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryPoint {
    /// When the device took it, RFC 3339 with milliseconds.
    pub at: String,
    pub lat: f64,
    pub lon: f64,
    /// The 68 % radius, metres.
    pub acc: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<f64>,
}

/// `GET /v1/users/me/location-history`: oldest first; `next` (when more remain) is the `from` of
/// the following page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LocationHistory {
    pub points: Vec<HistoryPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The longest a location history may be kept, days.
pub const MAX_HISTORY_DAYS: u16 = 365;

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn fix(t: i64) -> WireFix {
        WireFix {
            t,
            lat: 59.329_323_5,
            lon: -179.999_999_9,
            acc: 12.3,
            alt: Some(-3.4),
            speed: Some(1.39),
            heading: Some(359.99),
            battery: Some(100),
        }
    }

    #[test]
    fn binary_fixes_round_trip_at_their_resolution() {
        let bare = WireFix {
            alt: None,
            speed: None,
            heading: None,
            battery: None,
            ..fix(2)
        };
        let mut bytes = Vec::new();
        encode_fixes(&[fix(1_763_800_000_123), bare], &mut bytes).unwrap();
        assert_eq!(bytes.len(), 2 + 2 * BINARY_FIX_LEN);
        let mut back = Vec::new();
        decode_fixes(&bytes, &mut back).unwrap();
        assert_eq!(back.len(), 2);
        let (a, b) = (back[0], back[1]);
        assert_eq!(a.t, 1_763_800_000_123);
        assert!((a.lat - 59.329_323_5).abs() < 1e-7 && (a.lon + 179.999_999_9).abs() < 1e-7);
        assert_eq!(
            (a.acc, a.alt, a.speed, a.heading),
            (12.3, Some(-3.4), Some(1.39), Some(359.99))
        );
        assert_eq!(a.battery, Some(100));
        assert_eq!(
            (b.alt, b.speed, b.heading, b.battery),
            (None, None, None, None)
        );
    }

    #[test]
    fn bad_binary_frames_are_errors() {
        let mut good = Vec::new();
        encode_fixes(&[fix(1)], &mut good).unwrap();
        let mut out = Vec::new();
        assert_eq!(decode_fixes(&[], &mut out), Err(BinaryError::Magic));
        assert_eq!(decode_fixes(&[0xC1], &mut out), Err(BinaryError::Magic));
        assert_eq!(decode_fixes(&[0xC2, 1], &mut out), Err(BinaryError::Magic));
        assert_eq!(decode_fixes(&[0xC1, 0], &mut out), Err(BinaryError::Count));
        assert_eq!(
            decode_fixes(&[0xC1, 201], &mut out),
            Err(BinaryError::Count)
        );
        assert_eq!(
            decode_fixes(&good[..good.len() - 1], &mut out),
            Err(BinaryError::Length)
        );
        // Every field decodes and encodes back to the same bytes, the largest accuracy too.
        let mut widest = good.clone();
        widest[2 + 16..2 + 18].copy_from_slice(&[0xFF, 0xFF]);
        decode_fixes(&widest, &mut out).unwrap();
        assert_eq!(out[0].acc, 6553.5);
        let mut again = Vec::new();
        encode_fixes(&out, &mut again).unwrap();
        assert_eq!(again, widest);
        out.clear();
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode_fixes(&long, &mut out), Err(BinaryError::Length));
        assert!(out.is_empty());
        assert_eq!(encode_fixes(&[], &mut out_bytes()), Err(BinaryError::Count));
        assert_eq!(
            encode_fixes(&vec![fix(1); MAX_BATCH + 1], &mut out_bytes()),
            Err(BinaryError::Count)
        );
    }

    fn out_bytes() -> Vec<u8> {
        Vec::new()
    }

    #[test]
    fn text_frames_parse_and_unknown_ones_are_errors() {
        let f = ClientFrame::decode(r#"{"type":"fix","t":5,"lat":1.5,"lon":2,"acc":10}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Fix(WireFix {
                t: 5,
                lat: 1.5,
                lon: 2.0,
                acc: 10.0,
                alt: None,
                speed: None,
                heading: None,
                battery: None
            })
        );
        assert!(ClientFrame::decode(r#"{"type":"fix","t":5,"lat":1,"lon":2}"#).is_err());
        assert!(
            ClientFrame::decode(r#"{"type":"fix","t":5,"lat":1,"lon":2,"acc":1,"x":0}"#).is_err()
        );
        assert!(ClientFrame::decode(r#"{"type":"teleport"}"#).is_err());
        assert!(ClientFrame::decode(r#"{"type":"pause"}"#).is_ok());
    }

    #[test]
    fn alerts_carry_a_hex_id_and_a_flat_kind() {
        let a = LocationAlert {
            id: (7u128 << 64) | 9,
            group: GroupId::from_uuid(Uuid::from_u128(1)),
            at_ms: 42,
            kind: AlertKind::Near {
                a: UserId::from_uuid(Uuid::from_u128(2)),
                b: UserId::from_uuid(Uuid::from_u128(3)),
            },
        };
        let json = serde_json::to_string(&a).unwrap();
        assert!(
            json.contains(r#""id":"00000000000000070000000000000009""#),
            "{json}"
        );
        assert!(json.contains(r#""kind":"near""#), "{json}");
        assert_eq!(serde_json::from_str::<LocationAlert>(&json).unwrap(), a);
        let short = json.replace("00000000000000070000000000000009", "79");
        assert!(serde_json::from_str::<LocationAlert>(&short).is_err());
    }
}

/// Places a group may have.
pub const MAX_PLACES_PER_GROUP: usize = 1_000;
/// The longest name of a place, in characters.
pub const MAX_PLACE_NAME: usize = 80;

/// A place's outline, in WGS84 degrees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PlaceShape {
    /// A circle of 10 m to 50 km.
    Circle { lat: f64, lon: f64, radius_m: f64 },
    /// A simple polygon of 3 to 256 vertices `[lat, lon]`, in order, the first not repeated at
    /// the end, within 50 km of its centre.
    Polygon { points: Vec<[f64; 2]> },
}

/// A place (a geofence) of a group: members are told when someone arrives or leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaceView {
    pub id: PlaceId,
    pub group: GroupId,
    pub name: String,
    pub shape: PlaceShape,
    /// How long someone must be inside (or outside) before it counts, seconds.
    pub dwell_s: u32,
    pub created_by: UserId,
    /// RFC 3339.
    pub created_at: String,
}

/// `POST /v1/groups/{id}/places`: a new place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewPlace {
    pub name: String,
    pub shape: PlaceShape,
    /// Seconds, 0 to 86,400; default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_s: Option<u32>,
}

/// `PATCH /v1/groups/{id}/places/{place}`: what to change (the rest stays).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlaceChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<PlaceShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dwell_s: Option<u32>,
}

/// A group's places at one revision: what a location engine fetches
/// (`GET /v1/location/places?group=` on the control plane, with a location token naming the
/// group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupPlaces {
    pub group: GroupId,
    /// Grows with every change to the group's places.
    pub rev: u64,
    pub places: Vec<PlaceView>,
}

/// A change to a group's places, published for location engines (Redis pub/sub on
/// [`redis_places_channel`], or handed over in one process): engines that serve the group fetch
/// its places again. Lossy on purpose: a location token carries the revision too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacesChanged {
    pub group: GroupId,
    pub rev: u64,
}

/// The Redis channel control planes publish [`PlacesChanged`] on.
pub fn redis_places_channel(prefix: &str) -> String {
    format!("{prefix}location-places")
}

#[cfg(test)]
mod place_tests {
    use super::*;

    #[test]
    fn shapes_read_as_documented_and_refuse_the_rest() {
        let c: PlaceShape =
            serde_json::from_str(r#"{"type":"circle","lat":48.85,"lon":2.35,"radius_m":150}"#)
                .unwrap();
        assert_eq!(
            c,
            PlaceShape::Circle {
                lat: 48.85,
                lon: 2.35,
                radius_m: 150.0
            }
        );
        let p: PlaceShape =
            serde_json::from_str(r#"{"type":"polygon","points":[[1,2],[1,3],[2,3]]}"#).unwrap();
        assert!(matches!(p, PlaceShape::Polygon { ref points } if points.len() == 3));
        for bad in [
            r#"{"type":"circle","lat":1,"lon":2}"#,
            r#"{"type":"square","lat":1,"lon":2,"radius_m":3}"#,
            r#"{"type":"polygon","points":[[1,2,3]]}"#,
            r#"{"type":"circle","lat":1,"lon":2,"radius_m":3,"x":1}"#,
        ] {
            assert!(serde_json::from_str::<PlaceShape>(bad).is_err(), "{bad}");
        }
        // An old token without places reads as revision 0.
        let g: Grant = serde_json::from_str(
            r#"{"grp":"00000000-0000-0000-0000-000000000001","precision":"exact","near_m":200}"#,
        )
        .unwrap();
        assert_eq!(g.places, 0);
        assert!(!serde_json::to_string(&g).unwrap().contains("places"));
    }
}
