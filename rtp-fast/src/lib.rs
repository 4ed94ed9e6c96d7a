//! The forwarding fast path beside str0m.
//!
//! str0m runs each peer connection (ICE, DTLS, SCTP, RTCP, NACK) and is the reference for every
//! byte we put on the wire; its per-packet send path (stream queue, pacer, a timeout and a full
//! drain per write) is what a media core spends most of its time in when it forwards one audio
//! packet to many subscribers. This crate lets a caller send (and, in the load generator, read)
//! plain audio RTP without that machinery, on the same keys and SSRCs:
//!
//! - [`capture`]: a DTLS provider around str0m's own that copies the DTLS-SRTP keying material
//!   (RFC 5764) of each connection as the handshake exports it. The handshake itself is str0m's.
//! - [`srtp`]: session keys derived from that material (RFC 3711 §4.3) and SRTP protect /
//!   unprotect for the profiles str0m negotiates, AES-128-CM-HMAC-SHA1-80 and AEAD-AES-128-GCM
//!   and AEAD-AES-256-GCM (RFC 7714), on the cipher implementations of str0m's crypto provider.
//! - [`rtp`]: RTP headers with one-byte header extensions (RFC 8285), and the extension ids a
//!   session negotiated, read from its SDP.
//!
//! Everything is sans-IO: bytes in, bytes out.

pub mod capture;
pub mod rtp;
pub mod srtp;

pub use capture::{DtlsKeys, KeyCapture};
pub use srtp::{SrtpError, SrtpRx, SrtpTx};
