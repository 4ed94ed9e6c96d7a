//! Capturing the DTLS-SRTP keys of a str0m connection.
//!
//! str0m derives its SRTP contexts from the keying material its DTLS instance exports and keeps
//! them private. [`crypto_provider`] is str0m's default crypto provider with one change: its DTLS
//! provider wraps each instance so that the keying material, the negotiated profile and the
//! instance's role are also copied into a [`KeyCapture`] when the handshake exports them. Nothing
//! else of the handshake changes; an `Rtc` built with this provider outside [`capturing`] behaves
//! exactly like one built with the default.
//!
//! str0m creates the DTLS instance while an `Rtc` is built, so [`capturing`] hands the capture to
//! the provider through a thread-local for the duration of the build closure.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, ProtocolVersion, SrtpProfile,
};
use str0m::crypto::{CryptoError, CryptoProvider};

/// The DTLS-SRTP export of one connection.
#[derive(Clone, PartialEq, Eq)]
pub struct DtlsKeys {
    /// client key | server key | client salt | server salt (RFC 5764 §4.2).
    pub material: Vec<u8>,
    pub profile: SrtpProfile,
    /// This side was the DTLS client: it sends with the client's key and salt.
    pub active: bool,
}

impl std::fmt::Debug for DtlsKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsKeys")
            .field("profile", &self.profile)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Where one connection's keys land once its handshake completes.
#[derive(Debug, Clone, Default)]
pub struct KeyCapture(Arc<OnceLock<DtlsKeys>>);

impl KeyCapture {
    /// The keys, once the handshake exported them.
    pub fn keys(&self) -> Option<&DtlsKeys> {
        self.0.get()
    }
}

thread_local! {
    static PENDING: RefCell<Option<KeyCapture>> = const { RefCell::new(None) };
}

/// Runs `build` (which builds one `Rtc` with [`crypto_provider`]) and returns the capture its
/// DTLS instance will fill.
pub fn capturing<R>(build: impl FnOnce() -> R) -> (R, KeyCapture) {
    let capture = KeyCapture::default();
    PENDING.with(|p| *p.borrow_mut() = Some(capture.clone()));
    let built = build();
    // Taken by the provider if the build created a DTLS instance; cleared either way.
    PENDING.with(|p| p.borrow_mut().take());
    (built, capture)
}

/// str0m's default crypto provider with the capturing DTLS provider (one instance per process).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            static DTLS: OnceLock<CapturingDtls> = OnceLock::new();
            let mut provider = str0m::crypto::from_feature_flags();
            let inner = provider.dtls_provider;
            provider.dtls_provider = DTLS.get_or_init(|| CapturingDtls { inner });
            Arc::new(provider)
        })
        .clone()
}

#[derive(Debug)]
struct CapturingDtls {
    inner: &'static dyn DtlsProvider,
}

impl DtlsProvider for CapturingDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.inner.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: str0m::crypto::dtls::DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let inner = self.inner.new_dtls(cert, now, dtls_version, mtu)?;
        match PENDING.with(|p| p.borrow_mut().take()) {
            Some(capture) => Ok(Box::new(Capturing { inner, capture })),
            None => Ok(inner),
        }
    }

    fn is_test(&self) -> bool {
        self.inner.is_test()
    }
}

#[derive(Debug)]
struct Capturing {
    inner: Box<dyn DtlsInstance>,
    capture: KeyCapture,
}

impl DtlsInstance for Capturing {
    fn set_active(&mut self, active: bool) {
        self.inner.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.inner.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let out = self.inner.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(material, profile) = &out {
            let keys = DtlsKeys {
                material: material.to_vec(),
                profile: *profile,
                active: self.inner.is_active(),
            };
            // A connection exports once; a second export (it does not happen) keeps the first.
            let _ = self.capture.0.set(keys);
        }
        out
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.inner.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.inner.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.inner.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.inner.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.inner.close()
    }
}
