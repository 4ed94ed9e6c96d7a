//! Web Push: the message encryption of RFC 8291 (the `aes128gcm` content coding of RFC 8188,
//! one record) and the VAPID authorization of RFC 8292. Pure functions of their inputs: the
//! caller brings the randomness, the time and the HTTP client.
//!
//! A push message for a browser subscription `{endpoint, keys: {p256dh, auth}}` is
//! `POST endpoint` with `Content-Encoding: aes128gcm`, `TTL`, `Authorization: vapid t=…, k=…`
//! and the body [`encrypt`] makes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;

/// The record size announced in the header (one record holds the whole message).
const RECORD_SIZE: u32 = 4096;
/// Header: salt (16), record size (4), key id length (1), key id (the 65-byte public key).
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// The largest plaintext: push services take bodies of at most 4,096 bytes, and the body adds
/// the header, a padding delimiter and the 16-byte tag.
pub(crate) const MAX_PLAINTEXT: usize = 4096 - HEADER_LEN - 1 - 16;
/// How long a VAPID token is valid (RFC 8292 allows at most 24 hours).
pub(crate) const VAPID_TTL_SECS: u64 = 12 * 3600;

/// Why a message cannot be encrypted for a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PushError {
    #[error("the subscription's p256dh is not a P-256 public key")]
    BadPublicKey,
    #[error("the subscription's auth secret is not 16 bytes")]
    BadAuthSecret,
    #[error("the message is longer than {MAX_PLAINTEXT} bytes")]
    TooLong,
    #[error("the endpoint is not an http(s) URL")]
    BadEndpoint,
}

/// Encrypts `plaintext` for the user agent whose subscription keys are `ua_public` (65 bytes,
/// uncompressed) and `auth` (16 bytes), with a fresh key pair and salt from `rng`.
pub(crate) fn encrypt(
    ua_public: &[u8],
    auth: &[u8],
    plaintext: &[u8],
    rng: &mut (impl rand::CryptoRng + rand::RngCore),
) -> Result<Vec<u8>, PushError> {
    let ephemeral = SecretKey::random(rng);
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    encrypt_with(ua_public, auth, plaintext, &ephemeral, salt)
}

/// [`encrypt`] with the application server's key pair and the salt given.
fn encrypt_with(
    ua_public: &[u8],
    auth: &[u8],
    plaintext: &[u8],
    as_secret: &SecretKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, PushError> {
    let ua_key = PublicKey::from_sec1_bytes(ua_public).map_err(|_| PushError::BadPublicKey)?;
    let ua_public = ua_key.to_encoded_point(false);
    if auth.len() != 16 {
        return Err(PushError::BadAuthSecret);
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(PushError::TooLong);
    }
    let as_public = as_secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua_key.as_affine());

    // RFC 8291 §3.4: IKM from the ECDH secret and the auth secret, bound to both public keys.
    let mut key_info = Vec::with_capacity(14 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public.as_bytes());
    key_info.extend_from_slice(as_public.as_bytes());
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), shared.raw_secret_bytes())
        .expand(&key_info, &mut ikm)
        .map_err(|_| PushError::BadAuthSecret)?;
    // RFC 8188 §2.2 and §2.3: the content key and nonce from the salt.
    let prk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .and_then(|()| prk.expand(b"Content-Encoding: nonce\0", &mut nonce))
        .map_err(|_| PushError::BadAuthSecret)?;

    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(2); // the last record's padding delimiter
    let sealed = seal_aes128gcm(&cek, &nonce, &record);

    let mut body = Vec::with_capacity(HEADER_LEN + sealed.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

fn seal_aes128gcm(key: &[u8; 16], nonce: &[u8; 12], plaintext: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead as _, KeyInit as _};
    let cipher = aes_gcm::Aes128Gcm::new(key.into());
    // Encryption only fails for inputs beyond GCM's limits (about 64 GiB), far above ours.
    cipher
        .encrypt(&aes_gcm::Nonce::from(*nonce), plaintext)
        .unwrap_or_default()
}

/// The application server's VAPID key (P-256). `Debug` hides the secret.
#[derive(Clone)]
pub(crate) struct VapidKey {
    signing: SigningKey,
    /// The public key, uncompressed, base64url: the `applicationServerKey` browsers
    /// subscribe with and the `k` of every authorization.
    public_b64: String,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &self.public_b64)
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    /// The key whose secret scalar is `bytes`; `None` if they are not a valid P-256 scalar.
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        let secret = SecretKey::from_slice(bytes).ok()?;
        let public = secret.public_key().to_encoded_point(false);
        Some(Self {
            signing: SigningKey::from(secret),
            public_b64: URL_SAFE_NO_PAD.encode(public.as_bytes()),
        })
    }

    /// A new random key's secret bytes.
    pub(crate) fn generate(rng: &mut (impl rand::CryptoRng + rand::RngCore)) -> [u8; 32] {
        SecretKey::random(rng).to_bytes().into()
    }

    pub(crate) fn public_b64(&self) -> &str {
        &self.public_b64
    }

    /// The `Authorization` header for a push to `endpoint` at `now_secs`: a JWT (ES256) for
    /// the endpoint's origin, valid [`VAPID_TTL_SECS`], naming `subject` (a `mailto:` or
    /// `https:` contact), and the public key.
    pub(crate) fn authorization(
        &self,
        endpoint: &str,
        subject: &str,
        now_secs: u64,
    ) -> Result<String, PushError> {
        let audience = origin(endpoint).ok_or(PushError::BadEndpoint)?;
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": audience,
            "exp": now_secs + VAPID_TTL_SECS,
            "sub": subject,
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature: Signature = self.signing.sign(signing_input.as_bytes());
        let jwt = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        );
        Ok(format!("vapid t={jwt}, k={}", self.public_b64))
    }
}

/// `scheme://host[:port]` of an http(s) URL.
fn origin(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let host_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if host_len == 0 {
        return None;
    }
    Some(&url[..scheme.len() + 3 + host_len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier as _;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// The same inputs through Python's http_ece 1.2.1 (an independent implementation):
    /// application server key 0x0102…20, user agent key 0x6566…84, auth 0x00…0f, salt
    /// 0xc8…d7, `http_ece.encrypt(pt, salt=…, private_key=…, dh=ua_pub, auth_secret=…,
    /// version="aes128gcm", rs=4096)`.
    #[test]
    fn the_body_matches_an_independent_implementation() {
        let as_secret =
            SecretKey::from_slice(&(1..=32).collect::<Vec<u8>>()).expect("a valid scalar");
        let ua_public = b64(
            "BCVO5tG60cdM4v0orFKaFmr0lQoOPaC8U9lr9A3OOOvn31k38R6GnUU3KaIi9j5wnQdAuXVE4UFrHlpAGzhfuVA",
        );
        let auth: Vec<u8> = (0..16).collect();
        let salt: [u8; 16] = std::array::from_fn(|i| 200 + i as u8);
        let body = encrypt_with(
            &ua_public,
            &auth,
            b"When I grow up, I want to be a watermelon",
            &as_secret,
            salt,
        )
        .unwrap();
        let expected = b64(
            "yMnKy8zNzs_Q0dLT1NXW1wAAEABBBFFcPW6545a5BNP-yn9U_c0MwemXvzddylFa0KbDtANfRTa-OlDzGPv5pUdZAqIhUCvvDVfgjFOyzApW8X2fk1SIU6zjQIiNyKMhoq1M8adsC7AozpshbX6tssFL84GEz4Vsvlqf-8dL5AH3Cd7sYbvh-bO0zCaAGnh3",
        );
        assert_eq!(body, expected);
    }

    #[test]
    fn bad_keys_and_long_messages_are_errors() {
        let mut rng = rand::rngs::OsRng;
        let ua = SecretKey::random(&mut rng)
            .public_key()
            .to_encoded_point(false);
        let ua = ua.as_bytes();
        assert!(encrypt(ua, &[0; 16], b"hi", &mut rng).is_ok());
        assert_eq!(
            encrypt(&ua[..33], &[0; 16], b"hi", &mut rng),
            Err(PushError::BadPublicKey)
        );
        assert_eq!(
            encrypt(ua, &[0; 15], b"hi", &mut rng),
            Err(PushError::BadAuthSecret)
        );
        let longest = vec![b'x'; MAX_PLAINTEXT];
        assert_eq!(
            encrypt(ua, &[0; 16], &longest, &mut rng).unwrap().len(),
            4096
        );
        assert_eq!(
            encrypt(ua, &[0; 16], &[longest, vec![b'x']].concat(), &mut rng),
            Err(PushError::TooLong)
        );
    }

    #[test]
    fn the_vapid_token_is_signed_for_the_endpoints_origin() {
        let key = VapidKey::from_bytes(&VapidKey::generate(&mut rand::rngs::OsRng)).unwrap();
        let header = key
            .authorization(
                "https://push.example.net:8443/wpush/v2/abc?x=1",
                "mailto:ops@convoy.example",
                1_700_000_000,
            )
            .unwrap();
        let (t, k) = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split_once(", k="))
            .unwrap();
        assert_eq!(k, key.public_b64());
        let parts: Vec<&str> = t.split('.').collect();
        let claims: serde_json::Value = serde_json::from_slice(&b64(parts[1])).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net:8443");
        assert_eq!(claims["exp"], 1_700_000_000 + VAPID_TTL_SECS);
        assert_eq!(claims["sub"], "mailto:ops@convoy.example");
        let verifying = VerifyingKey::from_sec1_bytes(&b64(k)).unwrap();
        let signature = Signature::from_slice(&b64(parts[2])).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(verifying.verify(input.as_bytes(), &signature).is_ok());
        assert!(verifying.verify(b"other", &signature).is_err());
        assert_eq!(
            key.authorization("ftp://x/y", "mailto:a@b", 0),
            Err(PushError::BadEndpoint)
        );
        assert!(!format!("{key:?}").contains("signing"));
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(
            origin("http://127.0.0.1:9000/p"),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(origin("https://a.example"), Some("https://a.example"));
        assert_eq!(origin("https://a.example?q"), Some("https://a.example"));
        assert_eq!(origin("https:///p"), None);
        assert_eq!(origin("a.example/p"), None);
    }
}
