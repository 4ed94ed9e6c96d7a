//! Just enough STUN (RFC 8489) to demultiplex: the local ICE ufrag of a binding request.
//!
//! The shard mints every participant's local ufrag, so the `USERNAME` attribute of an incoming
//! binding request (`<our ufrag>:<their ufrag>`) names the participant in O(1) before str0m sees the
//! packet. This reads untrusted bytes: it returns `None` for anything it does not understand and never
//! panics (fuzz target `stun_ufrag`).

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;

/// Whether the datagram looks like STUN (RFC 7983 demultiplexing: first byte 0..=3, magic cookie).
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN && buf[0] < 4 && buf[4..8] == MAGIC_COOKIE
}

/// The local part (before `:`) of the `USERNAME` attribute of a STUN message, if it has one.
pub fn local_ufrag(buf: &[u8]) -> Option<&[u8]> {
    if !is_stun(buf) {
        return None;
    }
    let msg_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let body = buf.get(HEADER_LEN..HEADER_LEN.checked_add(msg_len)?)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let typ = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        if typ == ATTR_USERNAME {
            let end = value.iter().position(|&b| b == b':')?;
            let ufrag = &value[..end];
            return (!ufrag.is_empty()).then_some(ufrag);
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        // A PRIORITY attribute first, to check we skip attributes.
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username);
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn finds_the_local_ufrag_after_other_attributes() {
        let m = binding_request(b"abcd1234:remote");
        assert_eq!(local_ufrag(&m), Some(&b"abcd1234"[..]));
    }

    #[test]
    fn refuses_truncated_and_odd_messages() {
        let m = binding_request(b"abcd:remote");
        for cut in 0..m.len() {
            // Any prefix either has no username or is refused; never a panic or a wrong slice.
            if let Some(u) = local_ufrag(&m[..cut]) {
                assert_eq!(u, b"abcd");
            }
        }
        assert_eq!(local_ufrag(&binding_request(b"nocolon")), None);
        assert_eq!(local_ufrag(&binding_request(b":remote")), None);
        let mut rtp = m.clone();
        rtp[0] = 0x80;
        assert_eq!(local_ufrag(&rtp), None);
        let mut bad_len = m;
        bad_len[2] = 0xff;
        assert_eq!(local_ufrag(&bad_len), None);
    }
}
