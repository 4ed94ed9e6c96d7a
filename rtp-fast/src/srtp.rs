//! SRTP for RTP packets (RFC 3711, RFC 7714), keyed by a DTLS-SRTP export (RFC 5764).
//!
//! Only what a forwarding core needs: protect an RTP packet for a subscriber, and (for the load
//! generator) unprotect one. RTCP stays with str0m. Session keys come from the master key and salt
//! through the AES-CM key derivation of RFC 3711 §4.3.1 (key derivation rate 0); the ciphers are
//! the ones of str0m's crypto provider, so a packet sealed here is sealed exactly as str0m would.

use crate::capture::DtlsKeys;
use str0m::crypto::dtls::SrtpProfile;
use str0m::crypto::{
    AeadAes128Gcm, AeadAes128GcmCipher, AeadAes256Gcm, AeadAes256GcmCipher, Aes128CmSha1_80,
    Aes128CmSha1_80Cipher, CryptoProvider, Sha1HmacProvider, SrtpProvider,
};

/// Why a packet could not be protected or unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpError {
    /// The negotiated profile is not one this fast path implements (the caller keeps str0m's).
    Unsupported,
    /// Shorter than its header and tag.
    Short,
    /// The authentication tag did not verify.
    Auth,
    /// The cipher refused the input.
    Cipher,
}

impl std::fmt::Display for SrtpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SrtpError::Unsupported => "unsupported SRTP profile",
            SrtpError::Short => "packet too short",
            SrtpError::Auth => "authentication failed",
            SrtpError::Cipher => "cipher error",
        })
    }
}

impl std::error::Error for SrtpError {}

// Key derivation labels (RFC 3711 §4.3.2): RTP encryption key, authentication key, salt.
const LABEL_RTP_KEY: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;

const KEY_LEN: usize = 16;
const KEY256_LEN: usize = 32;
const CM_SALT_LEN: usize = Aes128CmSha1_80::SALT_LEN;
const GCM_SALT_LEN: usize = AeadAes128Gcm::SALT_LEN;
const CM_TAG: usize = Aes128CmSha1_80::HMAC_TAG_LEN;
const GCM_TAG: usize = AeadAes128Gcm::TAG_LEN;

/// The AES-CM PRF of RFC 3711 §4.3.3: `out` = AES-CTR keystream of `master` (AES-128, or
/// AES-256 for a 32-byte key, RFC 6188) from IV = (salt XOR (label << 48)) · 2^16. The salt is
/// written left-aligned (a 96-bit GCM salt leaves bytes 12 and 13 zero, as str0m and browsers do).
pub fn derive(crypto: &dyn SrtpProvider, master: &[u8], salt: &[u8], label: u8, out: &mut [u8]) {
    let mut input = [0u8; 16];
    input[..salt.len()].copy_from_slice(salt);
    input[7] ^= label;
    // The provider's ECB round may write a padding block after the first.
    let mut block = [0u8; 32];
    for (round, chunk) in out.chunks_mut(16).enumerate() {
        input[14..].copy_from_slice(&(round as u16).to_be_bytes());
        if master.len() == KEY256_LEN {
            crypto.srtp_aes_256_ecb_round(master, &input, &mut block);
        } else {
            crypto.srtp_aes_128_ecb_round(master, &input, &mut block);
        }
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

/// The master key and salt one direction uses (RFC 5764 §4.2): the client's (left half of each)
/// or the server's.
fn master(
    keys: &DtlsKeys,
    key_len: usize,
    salt_len: usize,
    client: bool,
) -> Option<(&[u8], &[u8])> {
    let m = &keys.material;
    if m.len() != 2 * (key_len + salt_len) {
        return None;
    }
    let (k, s) = if client {
        (0, 2 * key_len)
    } else {
        (key_len, 2 * key_len + salt_len)
    };
    Some((&m[k..k + key_len], &m[s..s + salt_len]))
}

enum Cipher {
    Cm {
        ctr: Box<dyn Aes128CmSha1_80Cipher>,
        auth: [u8; Aes128CmSha1_80::HMAC_KEY_LEN],
        salt: [u8; CM_SALT_LEN],
        hmac: &'static dyn Sha1HmacProvider,
    },
    Gcm {
        aead: Box<dyn AeadAes128GcmCipher>,
        salt: [u8; GCM_SALT_LEN],
    },
    Gcm256 {
        aead: Box<dyn AeadAes256GcmCipher>,
        salt: [u8; GCM_SALT_LEN],
    },
}

impl Cipher {
    /// The session cipher of one direction (`client`: the DTLS client's sending direction).
    fn new(
        keys: &DtlsKeys,
        crypto: &CryptoProvider,
        client: bool,
        encrypt: bool,
    ) -> Result<Self, SrtpError> {
        let srtp = crypto.srtp_provider;
        match keys.profile {
            SrtpProfile::AES128_CM_SHA1_80 => {
                let (mk, ms) =
                    master(keys, KEY_LEN, CM_SALT_LEN, client).ok_or(SrtpError::Unsupported)?;
                let mut key = [0u8; KEY_LEN];
                let mut auth = [0u8; Aes128CmSha1_80::HMAC_KEY_LEN];
                let mut salt = [0u8; CM_SALT_LEN];
                derive(srtp, mk, ms, LABEL_RTP_KEY, &mut key);
                derive(srtp, mk, ms, LABEL_RTP_AUTH, &mut auth);
                derive(srtp, mk, ms, LABEL_RTP_SALT, &mut salt);
                Ok(Cipher::Cm {
                    ctr: srtp.aes_128_cm_sha1_80().create_cipher(key, encrypt),
                    auth,
                    salt,
                    hmac: crypto.sha1_hmac_provider,
                })
            }
            SrtpProfile::AEAD_AES_128_GCM => {
                let (mk, ms) =
                    master(keys, KEY_LEN, GCM_SALT_LEN, client).ok_or(SrtpError::Unsupported)?;
                let mut key = [0u8; KEY_LEN];
                let mut salt = [0u8; GCM_SALT_LEN];
                derive(srtp, mk, ms, LABEL_RTP_KEY, &mut key);
                derive(srtp, mk, ms, LABEL_RTP_SALT, &mut salt);
                Ok(Cipher::Gcm {
                    aead: srtp.aead_aes_128_gcm().create_cipher(key, encrypt),
                    salt,
                })
            }
            SrtpProfile::AEAD_AES_256_GCM => {
                let (mk, ms) =
                    master(keys, KEY256_LEN, GCM_SALT_LEN, client).ok_or(SrtpError::Unsupported)?;
                let mut key = [0u8; KEY256_LEN];
                let mut salt = [0u8; GCM_SALT_LEN];
                derive(srtp, mk, ms, LABEL_RTP_KEY, &mut key);
                derive(srtp, mk, ms, LABEL_RTP_SALT, &mut salt);
                Ok(Cipher::Gcm256 {
                    aead: srtp.aead_aes_256_gcm().create_cipher(key, encrypt),
                    salt,
                })
            }
            _ => Err(SrtpError::Unsupported),
        }
    }

    fn tag_len(&self) -> usize {
        match self {
            Cipher::Cm { .. } => CM_TAG,
            Cipher::Gcm { .. } | Cipher::Gcm256 { .. } => GCM_TAG,
        }
    }
}

/// The sending side of one connection's SRTP.
pub struct SrtpTx(Cipher);

impl std::fmt::Debug for SrtpTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpTx").finish_non_exhaustive()
    }
}

impl SrtpTx {
    /// The protector of what this side sends.
    pub fn new(keys: &DtlsKeys, crypto: &CryptoProvider) -> Result<Self, SrtpError> {
        Cipher::new(keys, crypto, keys.active, true).map(Self)
    }

    /// Bytes SRTP adds to a packet (the authentication tag).
    pub fn overhead(&self) -> usize {
        self.0.tag_len()
    }

    /// Appends to `out` the SRTP packet of `packet` (an RTP header of `header_len` bytes, then
    /// the payload), sent on `ssrc` with packet index `index` (ROC · 2^16 + sequence number).
    pub fn protect(
        &mut self,
        packet: &[u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        if header_len < 12 || packet.len() < header_len {
            return Err(SrtpError::Short);
        }
        let (header, payload) = packet.split_at(header_len);
        let start = out.len();
        out.extend_from_slice(header);
        let body = start + header_len;
        match &mut self.0 {
            Cipher::Cm {
                ctr,
                auth,
                salt,
                hmac,
            } => {
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, index);
                // Room for the tag, and for a backend that writes whole blocks.
                out.resize(body + payload.len() + 16, 0);
                ctr.encrypt(&iv, payload, &mut out[body..])
                    .map_err(|_| SrtpError::Cipher)?;
                let end = body + payload.len();
                let roc = ((index >> 16) as u32).to_be_bytes();
                let tag = hmac.sha1_hmac(auth, &[&out[start..end], &roc]);
                out.truncate(end);
                out.extend_from_slice(&tag[..CM_TAG]);
            }
            Cipher::Gcm { aead, salt } => {
                let iv = AeadAes128Gcm::rtp_iv(*salt, ssrc, (index >> 16) as u32, index as u16);
                out.resize(body + payload.len() + GCM_TAG, 0);
                aead.encrypt(&iv, header, payload, &mut out[body..])
                    .map_err(|_| SrtpError::Cipher)?;
            }
            Cipher::Gcm256 { aead, salt } => {
                let iv = AeadAes256Gcm::rtp_iv(*salt, ssrc, (index >> 16) as u32, index as u16);
                out.resize(body + payload.len() + GCM_TAG, 0);
                aead.encrypt(&iv, header, payload, &mut out[body..])
                    .map_err(|_| SrtpError::Cipher)?;
            }
        }
        Ok(())
    }
}

/// The receiving side of one connection's SRTP.
pub struct SrtpRx(Cipher);

impl std::fmt::Debug for SrtpRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpRx").finish_non_exhaustive()
    }
}

impl SrtpRx {
    /// The unprotector of what the peer sends.
    pub fn new(keys: &DtlsKeys, crypto: &CryptoProvider) -> Result<Self, SrtpError> {
        Cipher::new(keys, crypto, !keys.active, false).map(Self)
    }

    /// Checks and decrypts `packet` (an SRTP packet whose RTP header is `header_len` bytes) sent
    /// on `ssrc` with packet index `index`; appends the header and the plain payload to `out`.
    /// Nothing is appended when it fails.
    pub fn unprotect(
        &mut self,
        packet: &[u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), SrtpError> {
        let tag_len = self.0.tag_len();
        if header_len < 12 || packet.len() < header_len + tag_len {
            return Err(SrtpError::Short);
        }
        let (header, body) = packet.split_at(header_len);
        let start = out.len();
        match &mut self.0 {
            Cipher::Cm {
                ctr,
                auth,
                salt,
                hmac,
            } => {
                let (sealed, tag) = packet.split_at(packet.len() - CM_TAG);
                let roc = ((index >> 16) as u32).to_be_bytes();
                let want = hmac.sha1_hmac(auth, &[sealed, &roc]);
                // Constant time: the tag is a secret-dependent value.
                let diff = want[..CM_TAG]
                    .iter()
                    .zip(tag)
                    .fold(0u8, |d, (a, b)| d | (a ^ b));
                if diff != 0 {
                    return Err(SrtpError::Auth);
                }
                let enc = &sealed[header_len..];
                let iv = Aes128CmSha1_80::rtp_iv(*salt, ssrc, index);
                out.extend_from_slice(header);
                out.resize(start + header_len + enc.len() + 16, 0);
                if ctr
                    .decrypt(&iv, enc, &mut out[start + header_len..])
                    .is_err()
                {
                    out.truncate(start);
                    return Err(SrtpError::Cipher);
                }
                out.truncate(start + header_len + enc.len());
            }
            Cipher::Gcm { aead, salt } => {
                let iv = AeadAes128Gcm::rtp_iv(*salt, ssrc, (index >> 16) as u32, index as u16);
                out.extend_from_slice(header);
                out.resize(start + packet.len(), 0);
                match aead.decrypt(&iv, &[header], body, &mut out[start + header_len..]) {
                    Ok(n) => out.truncate(start + header_len + n),
                    Err(_) => {
                        out.truncate(start);
                        return Err(SrtpError::Auth);
                    }
                }
            }
            Cipher::Gcm256 { aead, salt } => {
                let iv = AeadAes256Gcm::rtp_iv(*salt, ssrc, (index >> 16) as u32, index as u16);
                out.extend_from_slice(header);
                out.resize(start + packet.len(), 0);
                match aead.decrypt(&iv, &[header], body, &mut out[start + header_len..]) {
                    Ok(n) => out.truncate(start + header_len + n),
                    Err(_) => {
                        out.truncate(start);
                        return Err(SrtpError::Auth);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The packet index of sequence number `seq` given the highest index seen on its stream
/// (RFC 3711 §3.3.1, Appendix A): the one of ROC − 1, ROC, ROC + 1 closest to it.
pub fn estimate_index(highest: Option<u64>, seq: u16) -> u64 {
    let Some(highest) = highest else {
        return u64::from(seq);
    };
    let roc = highest >> 16;
    let candidate = |roc: u64| (roc << 16) | u64::from(seq);
    let mut best = candidate(roc);
    for r in [roc.wrapping_sub(1), roc + 1] {
        if r == u64::MAX {
            continue;
        }
        let c = candidate(r);
        if c.abs_diff(highest) < best.abs_diff(highest) {
            best = c;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn key_derivation_matches_rfc_3711_appendix_b3() {
        let crypto = str0m::crypto::from_feature_flags();
        let master = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut key = [0u8; 16];
        derive(crypto.srtp_provider, &master, &salt, 0, &mut key);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        derive(crypto.srtp_provider, &master, &salt, 2, &mut s);
        assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        derive(crypto.srtp_provider, &master, &salt, 1, &mut auth);
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    fn keys(profile: SrtpProfile, active: bool) -> DtlsKeys {
        let len = match profile {
            SrtpProfile::AES128_CM_SHA1_80 => 2 * (16 + 14),
            SrtpProfile::AEAD_AES_256_GCM => 2 * (32 + 12),
            _ => 2 * (16 + 12),
        };
        DtlsKeys {
            material: (0..len as u8).map(|b| b.wrapping_mul(37)).collect(),
            profile,
            active,
        }
    }

    fn packet(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&960u32.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(b"an opus frame, or so it says");
        p
    }

    #[test]
    fn what_one_side_protects_the_other_unprotects_and_a_flipped_bit_fails() {
        let crypto = str0m::crypto::from_feature_flags();
        for profile in [
            SrtpProfile::AES128_CM_SHA1_80,
            SrtpProfile::AEAD_AES_128_GCM,
            SrtpProfile::AEAD_AES_256_GCM,
        ] {
            let mut tx = SrtpTx::new(&keys(profile, true), &crypto).unwrap();
            let mut rx = SrtpRx::new(&keys(profile, false), &crypto).unwrap();
            // The same side's receiver uses the other half of the material: it must fail.
            let mut wrong = SrtpRx::new(&keys(profile, true), &crypto).unwrap();
            let plain = packet(65_535);
            let index = (3 << 16) | 65_535;
            let mut sealed = Vec::new();
            tx.protect(&plain, 12, 0x1234_5678, index, &mut sealed)
                .unwrap();
            assert_eq!(sealed.len(), plain.len() + tx.overhead(), "{profile:?}");
            assert_eq!(&sealed[..12], &plain[..12], "the header stays in the clear");
            assert_ne!(
                &sealed[12..plain.len()],
                &plain[12..],
                "the payload does not"
            );
            let mut opened = Vec::new();
            rx.unprotect(&sealed, 12, 0x1234_5678, index, &mut opened)
                .unwrap();
            assert_eq!(opened, plain, "{profile:?}");
            let mut none = Vec::new();
            assert_eq!(
                wrong.unprotect(&sealed, 12, 0x1234_5678, index, &mut none),
                Err(SrtpError::Auth)
            );
            // Another ROC is another index: the tag (CM) or the nonce (GCM) no longer fits.
            assert_eq!(
                rx.unprotect(&sealed, 12, 0x1234_5678, index + (1 << 16), &mut none),
                Err(SrtpError::Auth)
            );
            for i in [0, 13, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[i] ^= 1;
                assert_eq!(
                    rx.unprotect(&bad, 12, 0x1234_5678, index, &mut none),
                    Err(SrtpError::Auth),
                    "{profile:?} byte {i}"
                );
            }
            assert!(none.is_empty());
            assert_eq!(
                rx.unprotect(&sealed[..20], 12, 1, 1, &mut none),
                Err(SrtpError::Short)
            );
        }
    }

    #[test]
    fn material_of_the_wrong_length_is_refused() {
        let crypto = str0m::crypto::from_feature_flags();
        let mut k = keys(SrtpProfile::AEAD_AES_128_GCM, true);
        k.profile = SrtpProfile::AEAD_AES_256_GCM; // with 128's length of material
        assert!(matches!(
            SrtpTx::new(&k, &crypto),
            Err(SrtpError::Unsupported)
        ));
        k.profile = SrtpProfile::AES128_CM_SHA1_80; // with GCM's length of material
        assert!(matches!(
            SrtpTx::new(&k, &crypto),
            Err(SrtpError::Unsupported)
        ));
    }

    #[test]
    fn index_estimation_follows_rollover_both_ways() {
        assert_eq!(estimate_index(None, 7), 7);
        assert_eq!(estimate_index(Some(65_530), 3), 65_539);
        assert_eq!(estimate_index(Some(65_539), 65_534), 65_534);
        assert_eq!(estimate_index(Some(10), 65_535), 65_535);
        assert_eq!(estimate_index(Some((5 << 16) | 100), 90), (5 << 16) | 90);
    }
}
