//! RTP headers (RFC 3550) with one-byte header extensions (RFC 8285), as the fast path writes and
//! the load generator reads them.

/// RFC 6464 client-to-mixer audio level (with the voice activity flag).
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// RFC 8843 media identification.
pub const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

/// Smallest RTP header.
pub const MIN_HEADER: usize = 12;

/// The header extension ids a session negotiated that the fast path writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtIds {
    pub audio_level: Option<u8>,
    pub mid: Option<u8>,
}

impl ExtIds {
    /// The ids of an SDP (offer or answer; a bundle shares them), from its `a=extmap` lines. Ids
    /// outside the one-byte form (1–14) are ignored: the fast path does not write them.
    pub fn from_sdp(sdp: &str) -> Self {
        let mut ids = ExtIds::default();
        for line in sdp.lines() {
            let Some(rest) = line.trim_end().strip_prefix("a=extmap:") else {
                continue;
            };
            let mut parts = rest.split_whitespace();
            let (Some(id), Some(uri)) = (parts.next(), parts.next()) else {
                continue;
            };
            // "<id>" or "<id>/<direction>".
            let Some(id) = id.split('/').next().and_then(|i| i.parse::<u8>().ok()) else {
                continue;
            };
            if !(1..=14).contains(&id) {
                continue;
            }
            match uri {
                AUDIO_LEVEL_URI => ids.audio_level = ids.audio_level.or(Some(id)),
                MID_URI => ids.mid = ids.mid.or(Some(id)),
                _ => {}
            }
        }
        ids
    }
}

/// The byte of an RFC 6464 audio level extension: the voice flag, then the level in −dBov.
pub fn audio_level_byte(level_dbov: i8, voice: bool) -> u8 {
    (u8::from(voice) << 7) | (level_dbov.unsigned_abs().min(127))
}

/// The fixed fields of an RTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// Appends the header with the extensions `exts` (id 1–14, 1–16 bytes each) to `out`; returns
/// its length.
pub fn write_header(h: &Header, exts: &[(u8, &[u8])], out: &mut Vec<u8>) -> usize {
    let start = out.len();
    let x = if exts.is_empty() { 0 } else { 0x10 };
    out.push(0x80 | x);
    out.push((u8::from(h.marker) << 7) | (h.pt & 0x7f));
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.timestamp.to_be_bytes());
    out.extend_from_slice(&h.ssrc.to_be_bytes());
    if !exts.is_empty() {
        out.extend_from_slice(&[0xBE, 0xDE, 0, 0]);
        let body = out.len();
        for &(id, value) in exts {
            debug_assert!((1..=14).contains(&id) && (1..=16).contains(&value.len()));
            out.push((id << 4) | (value.len() as u8 - 1));
            out.extend_from_slice(value);
        }
        while !(out.len() - body).is_multiple_of(4) {
            out.push(0);
        }
        let words = ((out.len() - body) / 4) as u16;
        out[body - 2..body].copy_from_slice(&words.to_be_bytes());
    }
    out.len() - start
}

/// An RTP packet's header as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub header: Header,
    /// Bytes before the payload: fixed header, CSRCs, extensions.
    pub header_len: usize,
}

/// Whether a datagram on a bundled socket is RTP: version 2 (RFC 7983: first byte 128–191) and
/// not an RTCP packet type (RFC 5761: second byte 192–223).
pub fn is_rtp(buf: &[u8]) -> bool {
    buf.len() >= MIN_HEADER && (128..192).contains(&buf[0]) && !(192..224).contains(&buf[1])
}

/// Reads an RTP header; `None` for anything that is not a whole one.
pub fn parse_header(buf: &[u8]) -> Option<Parsed> {
    if !is_rtp(buf) {
        return None;
    }
    let csrcs = usize::from(buf[0] & 0x0f);
    let mut len = MIN_HEADER + 4 * csrcs;
    if buf[0] & 0x10 != 0 {
        let words = buf.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    if buf.len() < len {
        return None;
    }
    Some(Parsed {
        header: Header {
            pt: buf[1] & 0x7f,
            marker: buf[1] & 0x80 != 0,
            seq: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        },
        header_len: len,
    })
}

/// The value of one-byte extension `id` in a packet whose header `parse_header` accepted.
pub fn extension<'a>(buf: &'a [u8], parsed: &Parsed, id: u8) -> Option<&'a [u8]> {
    if buf[0] & 0x10 == 0 {
        return None;
    }
    let at = MIN_HEADER + 4 * usize::from(buf[0] & 0x0f);
    if buf.get(at..at + 2)? != [0xBE, 0xDE] {
        return None;
    }
    let mut i = at + 4;
    while i < parsed.header_len {
        let b = buf[i];
        if b == 0 {
            i += 1;
            continue;
        }
        let (eid, n) = (b >> 4, usize::from(b & 0x0f) + 1);
        if eid == 15 {
            return None;
        }
        // An element running past the extension block (into the payload) ends the search.
        let value = buf
            .get(i + 1..i + 1 + n)
            .filter(|_| i + 1 + n <= parsed.header_len)?;
        if eid == id {
            return Some(value);
        }
        i += 1 + n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_headers_read_back_with_their_extensions() {
        let h = Header {
            pt: 111,
            marker: true,
            seq: 65_000,
            timestamp: 0xdead_beef,
            ssrc: 42,
        };
        let mut out = vec![9, 9];
        let n = write_header(&h, &[(1, &[0x80 | 30]), (4, b"12")], &mut out);
        assert_eq!(n, 12 + 4 + 8, "2 + 3 bytes of elements padded to 8");
        out.extend_from_slice(b"payload");
        let p = parse_header(&out[2..]).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.header_len, n);
        assert_eq!(extension(&out[2..], &p, 1), Some(&[0x80 | 30][..]));
        assert_eq!(extension(&out[2..], &p, 4), Some(&b"12"[..]));
        assert_eq!(extension(&out[2..], &p, 5), None);
        assert_eq!(&out[2 + n..], b"payload");
        let mut bare = Vec::new();
        assert_eq!(write_header(&h, &[], &mut bare), 12);
        assert_eq!(parse_header(&bare).unwrap().header_len, 12);
    }

    #[test]
    fn an_element_running_past_its_block_is_not_read_from_the_payload() {
        let h = Header {
            pt: 111,
            marker: false,
            seq: 1,
            timestamp: 2,
            ssrc: 3,
        };
        let mut out = Vec::new();
        let n = write_header(&h, &[(1, &[0x80 | 30])], &mut out);
        // One word of elements: id 1 (1 byte), then padding. Make the padding an element of
        // id 2 with 4 bytes, which would take 2 from the block and the rest from the payload.
        out[n - 2] = (2 << 4) | 3;
        out.extend_from_slice(b"payload");
        let p = parse_header(&out).unwrap();
        assert_eq!(p.header_len, n);
        assert_eq!(extension(&out, &p, 1), Some(&[0x80 | 30][..]));
        assert_eq!(extension(&out, &p, 2), None);
    }

    #[test]
    fn rtcp_stun_dtls_and_truncated_headers_are_not_rtp() {
        assert!(
            !is_rtp(&[0x80, 200, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            "RTCP SR"
        );
        assert!(
            !is_rtp(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0]),
            "STUN"
        );
        assert!(!is_rtp(&[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "DTLS");
        // Extension bit set, but the extension header is cut.
        assert_eq!(
            parse_header(&[0x90, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE]),
            None
        );
        // Claims 1,000 words of extensions.
        let mut p = vec![
            0x90, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE, 0x03, 0xE8,
        ];
        p.extend_from_slice(&[0; 8]);
        assert_eq!(parse_header(&p), None);
    }

    #[test]
    fn extension_ids_come_from_the_sdp() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
                   a=extmap:3/sendrecv http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
                   a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid\r\n";
        assert_eq!(
            ExtIds::from_sdp(sdp),
            ExtIds {
                audio_level: Some(1),
                mid: Some(9)
            }
        );
        assert_eq!(
            ExtIds::from_sdp("a=extmap:15 urn:ietf:params:rtp-hdrext:sdes:mid"),
            ExtIds::default(),
            "two-byte ids are not written by the fast path"
        );
        assert_eq!(audio_level_byte(-30, true), 0x80 | 30);
        assert_eq!(audio_level_byte(-128, false), 127);
    }
}
