//! The forwarding fast path: forwarded audio sealed by the shard itself, beside str0m.
//!
//! Through str0m, every forwarded packet costs each subscriber a write into its stream queue, a
//! timeout (the pacer releases only what a timeout snapshotted) and a full drain of every
//! subsystem: most of a core's time at a few thousand subscriber streams. A subscriber on the
//! fast path instead gets the packet written here, on the same SSRC str0m announced for the slot's
//! m-line, with the same sequence numbers and timestamps the slot's rewrite gives, sealed with the
//! connection's own SRTP keys (captured from str0m's DTLS handshake by `rtp_fast::capture`), and
//! sent to the address str0m sends its DTLS and media to. str0m keeps everything else of the
//! connection: ICE, DTLS, SCTP, RTCP, the publisher side, and the music slot.
//!
//! A subscriber is on the fast path only once its handshake exported keys of a profile we seal
//! and only if it negotiated no NACK: retransmission needs str0m's send buffer, which the fast
//! path bypasses (browsers negotiate no NACK for audio). The fast path writes the audio level and
//! mid extensions when negotiated, and no transport-wide sequence numbers: a forwarded audio
//! stream does not drive the subscriber's bandwidth estimation.

use crate::participant::Participant;
use rtp_fast::SrtpTx;
use rtp_fast::rtp::{self, Header};
use std::net::SocketAddr;
use str0m::media::Mid;

/// Where a subscriber stands with the fast path.
#[derive(Debug, Default)]
pub(crate) enum Fast {
    /// Not set up yet (no keys until the handshake completes).
    #[default]
    Pending,
    Ready(Box<FastTx>),
    /// This subscriber stays on str0m's path.
    Off,
}

#[derive(Debug)]
pub(crate) struct FastTx {
    srtp: SrtpTx,
    /// The SSRC of each slot's m-line, as str0m announced it, by slot index.
    ssrcs: Vec<Option<u32>>,
    /// Scratch for the plain packet.
    plain: Vec<u8>,
}

/// Whether a datagram str0m sends is DTLS or (S)RTP(C) (RFC 7983), which str0m sends only on the
/// selected candidate pair; STUN answers go wherever a check came from.
pub(crate) fn is_media_or_dtls(contents: &[u8]) -> bool {
    contents
        .first()
        .is_some_and(|&b| (20..=63).contains(&b) || (128..=191).contains(&b))
}

/// One packet to seal for a subscriber.
pub(crate) struct Packet<'a> {
    pub slot: usize,
    pub mid: Mid,
    pub pt: u8,
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub level: Option<i8>,
    pub voice: Option<bool>,
    pub payload: &'a [u8],
}

impl Participant {
    /// The subscriber's fast path, set up on first use once its keys exist.
    fn fast_tx(&mut self) -> Option<&mut FastTx> {
        if matches!(self.fast, Fast::Pending) && self.connected {
            self.fast = match self.keys.keys() {
                None => Fast::Pending,
                Some(_) if self.nack => Fast::Off,
                Some(keys) => match SrtpTx::new(keys, &rtp_fast::capture::crypto_provider()) {
                    Ok(srtp) => Fast::Ready(Box::new(FastTx {
                        srtp,
                        ssrcs: vec![None; self.slots.len()],
                        plain: Vec::with_capacity(1500),
                    })),
                    Err(_) => Fast::Off,
                },
            };
        }
        match &mut self.fast {
            Fast::Ready(f) => Some(f),
            _ => None,
        }
    }

    /// Seals `pkt` for this subscriber on the fast path: the datagram and where to send it, or
    /// `None` when the subscriber is not on the fast path (the caller writes through str0m).
    pub(crate) fn seal_fast(&mut self, pkt: &Packet<'_>) -> Option<(SocketAddr, Vec<u8>)> {
        let destination = self.media_addr?;
        let ids = self.ext_ids;
        // Split borrows: the fast state and the Rtc are separate fields.
        self.fast_tx()?;
        let Fast::Ready(fast) = &mut self.fast else {
            return None;
        };
        let ssrc = match fast.ssrcs.get(pkt.slot).copied().flatten() {
            Some(s) => s,
            None => {
                let s = *self
                    .rtc
                    .direct_api()
                    .stream_tx_by_mid(pkt.mid, None)?
                    .ssrc();
                *fast.ssrcs.get_mut(pkt.slot)? = Some(s);
                s
            }
        };
        let level = pkt
            .level
            .map(|l| [rtp::audio_level_byte(l, pkt.voice.unwrap_or(false))]);
        let mut exts: [(u8, &[u8]); 2] = [(0, &[]); 2];
        let mut n = 0;
        if let (Some(id), Some(l)) = (ids.audio_level, level.as_ref()) {
            exts[n] = (id, l);
            n += 1;
        }
        if let Some(id) = ids.mid {
            exts[n] = (id, pkt.mid.as_bytes());
            n += 1;
        }
        fast.plain.clear();
        let header_len = rtp::write_header(
            &Header {
                pt: pkt.pt,
                marker: pkt.marker,
                seq: pkt.seq as u16,
                timestamp: pkt.timestamp,
                ssrc,
            },
            &exts[..n],
            &mut fast.plain,
        );
        fast.plain.extend_from_slice(pkt.payload);
        let mut out = Vec::with_capacity(fast.plain.len() + fast.srtp.overhead());
        fast.srtp
            .protect(&fast.plain, header_len, ssrc, pkt.seq, &mut out)
            .ok()?;
        Some((destination, out))
    }
}
