//! RFC 2198 redundant audio (RED): just enough to take the primary encoding out of a RED payload,
//! for subscribers that did not negotiate RED.
//!
//! ```text
//!  redundant block header (4 bytes, F = 1):  F | block PT (7) | timestamp offset (14) | length (10)
//!  primary block header   (1 byte,  F = 0):  F | block PT (7)
//!  then the redundant blocks' data in header order, then the primary data
//! ```
//! Reads untrusted bytes: anything inconsistent is `None`, never a panic (fuzz target
//! `red_primary`).

/// Most redundant blocks accepted in one packet (browsers send one or two).
pub const MAX_BLOCKS: usize = 8;

/// The primary block of a RED payload: its payload type and data.
pub fn primary(payload: &[u8]) -> Option<(u8, &[u8])> {
    let mut at = 0;
    let mut redundant = 0usize;
    for _ in 0..=MAX_BLOCKS {
        let first = *payload.get(at)?;
        if first & 0x80 == 0 {
            let pt = first & 0x7f;
            let start = at.checked_add(1)?.checked_add(redundant)?;
            return payload.get(start..).map(|data| (pt, data));
        }
        let header = payload.get(at..at + 4)?;
        let len = (usize::from(header[2] & 0x03) << 8) | usize::from(header[3]);
        redundant = redundant.checked_add(len)?;
        at += 4;
    }
    None
}

/// A copy of a RED payload whose block headers name payload type `to` wherever they named
/// `from` (publisher and subscriber may number Opus differently). `None` if it is inconsistent.
pub fn rename_pt(payload: &[u8], from: u8, to: u8) -> Option<Vec<u8>> {
    primary(payload)?;
    let mut out = payload.to_vec();
    let mut at = 0;
    loop {
        let b = out[at];
        if b & 0x7f == from {
            out[at] = (b & 0x80) | (to & 0x7f);
        }
        if b & 0x80 == 0 {
            return Some(out);
        }
        at += 4;
    }
}

/// Wraps `data` as a RED payload with only a primary block (no redundancy).
pub fn wrap_primary(pt: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(pt & 0x7f);
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RED payload: redundant blocks (pt, ts offset, data) then the primary.
    fn red(blocks: &[(u8, u16, &[u8])], pt: u8, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (bpt, off, d) in blocks {
            out.push(0x80 | bpt);
            let v = (u32::from(*off) << 10) | d.len() as u32;
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
        out.push(pt);
        for (_, _, d) in blocks {
            out.extend_from_slice(d);
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn takes_the_primary_after_redundant_blocks() {
        let p = red(
            &[(111, 960, b"older"), (111, 1920, b"oldest!")],
            111,
            b"primary",
        );
        assert_eq!(primary(&p), Some((111, &b"primary"[..])));
        assert_eq!(primary(&red(&[], 111, b"only")), Some((111, &b"only"[..])));
        assert_eq!(primary(&wrap_primary(111, b"x")), Some((111, &b"x"[..])));
    }

    #[test]
    fn block_payload_types_are_renamed_and_the_data_kept() {
        let p = red(&[(111, 960, b"older")], 111, b"primary");
        let r = rename_pt(&p, 111, 109).unwrap();
        assert_eq!(primary(&r), Some((109, &b"primary"[..])));
        assert_eq!(r[0], 0x80 | 109);
        assert_eq!(r.len(), p.len());
        assert_eq!(rename_pt(&p[..3], 111, 109), None);
    }

    #[test]
    fn inconsistent_payloads_are_none() {
        let p = red(&[(111, 960, b"older")], 111, b"primary");
        for cut in 0..6 {
            assert_eq!(primary(&p[..cut]), None, "cut at {cut}");
        }
        // A block length past the end.
        let mut long = p.clone();
        long[3] = 0xff;
        assert_eq!(primary(&long), None);
        // Only F = 1 headers.
        assert_eq!(primary(&[0x80; 64]), None);
        assert_eq!(primary(&[]), None);
    }
}
