//! The forwarding fast path's decoders on arbitrary bytes (`rtp_fast`): `parse_header` and
//! `extension` never panic and never point outside the datagram, an accepted header reads back
//! the same after `write_header`, and `SrtpRx::unprotect` refuses what it cannot authenticate
//! without panicking or appending anything. A packet sealed by `SrtpTx` opens to its own bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtp_fast::rtp::{self, Header};
use rtp_fast::{DtlsKeys, SrtpRx, SrtpTx};
use str0m::crypto::dtls::SrtpProfile;

const PROFILES: [SrtpProfile; 3] = [
    SrtpProfile::AES128_CM_SHA1_80,
    SrtpProfile::AEAD_AES_128_GCM,
    SrtpProfile::AEAD_AES_256_GCM,
];

fn keys(profile: SrtpProfile, active: bool) -> DtlsKeys {
    let len = match profile {
        SrtpProfile::AES128_CM_SHA1_80 => 2 * (16 + 14),
        SrtpProfile::AEAD_AES_256_GCM => 2 * (32 + 12),
        _ => 2 * (16 + 12),
    };
    DtlsKeys {
        material: (0..len as u8).map(|b| b.wrapping_mul(29) ^ 0x5a).collect(),
        profile,
        active,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(parsed) = rtp::parse_header(data) else {
        return;
    };
    assert!(parsed.header_len >= 12 && parsed.header_len <= data.len());
    let mut exts: Vec<(u8, &[u8])> = Vec::new();
    for id in 1..=14u8 {
        if let Some(value) = rtp::extension(data, &parsed, id) {
            // Inside the header, and a one-byte extension's value is 1–16 bytes.
            let offset = value.as_ptr() as usize - data.as_ptr() as usize;
            assert!(offset + value.len() <= parsed.header_len);
            assert!((1..=16).contains(&value.len()));
            exts.push((id, value));
        }
    }

    // What was read writes back to a header that reads the same.
    let header: Header = parsed.header;
    let mut written = Vec::new();
    let len = rtp::write_header(&header, &exts, &mut written);
    assert_eq!(len, written.len());
    let again = rtp::parse_header(&written).expect("a written header parses");
    assert_eq!(again.header, header);
    assert_eq!(again.header_len, len);
    for &(id, value) in &exts {
        assert_eq!(rtp::extension(&written, &again, id), Some(value));
    }

    let crypto = rtp_fast::capture::crypto_provider();
    let index = u64::from(header.seq) | (u64::from(data.len() as u32) << 16);
    for profile in PROFILES {
        // Arbitrary bytes as SRTP: refused, nothing appended.
        let mut rx = SrtpRx::new(&keys(profile, false), &crypto).expect("keys fit");
        let mut out = vec![7u8];
        if rx
            .unprotect(data, parsed.header_len, header.ssrc, index, &mut out)
            .is_err()
        {
            assert_eq!(out, [7u8]);
        }
        // The datagram as plain RTP: sealed, then opened by the other side, byte for byte.
        let mut tx = SrtpTx::new(&keys(profile, true), &crypto).expect("keys fit");
        let mut sealed = Vec::new();
        tx.protect(data, parsed.header_len, header.ssrc, index, &mut sealed)
            .expect("a parsed header seals");
        assert_eq!(sealed.len(), data.len() + tx.overhead());
        let mut opened = Vec::new();
        rx.unprotect(&sealed, parsed.header_len, header.ssrc, index, &mut opened)
            .expect("what the peer sealed opens");
        assert_eq!(opened, data);
    }
});
