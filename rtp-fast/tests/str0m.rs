//! The fast path against str0m, the implementation it must agree with byte for byte: two `Rtc`s
//! connect in memory (ICE, DTLS), the keys both captured are the two ends of one export, a packet
//! sealed by `SrtpTx` is accepted by the peer's str0m as the RTP it was, and a packet str0m sends
//! opens with `SrtpRx`.

use rtp_fast::capture::{capturing, crypto_provider};
use rtp_fast::rtp::{self, ExtIds, Header};
use rtp_fast::srtp::estimate_index;
use rtp_fast::{KeyCapture, SrtpRx, SrtpTx};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};

const CLIENT: &str = "10.0.0.1:5000";
const SERVER: &str = "10.0.0.2:6000";

struct Peer {
    rtc: Rtc,
    keys: KeyCapture,
    addr: SocketAddr,
    connected: bool,
    /// Datagrams it sent (destination, bytes) and RTP packets it got.
    sent: Vec<Vec<u8>>,
    got: Vec<str0m::rtp::RtpPacket>,
}

impl Peer {
    fn drain(&mut self, now: Instant) -> (Vec<(SocketAddr, Vec<u8>)>, Instant) {
        let mut out = Vec::new();
        loop {
            match self.rtc.poll_output().expect("poll") {
                Output::Timeout(t) => return (out, t.max(now)),
                Output::Transmit(t) => {
                    self.sent.push(t.contents.to_vec());
                    out.push((t.destination, t.contents.to_vec()));
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::RtpPacket(p)) => self.got.push(p),
                Output::Event(_) => {}
            }
        }
    }
}

fn deliver(to: &mut Peer, from: SocketAddr, now: Instant, bytes: &[u8]) {
    let r = Receive::new(Protocol::Udp, from, to.addr, bytes).expect("receive");
    to.rtc.handle_input(Input::Receive(now, r)).expect("input");
}

/// Runs both until `done` or 10 simulated seconds.
fn run(a: &mut Peer, b: &mut Peer, now: &mut Instant, done: impl Fn(&Peer, &Peer) -> bool) {
    let end = *now + Duration::from_secs(10);
    while *now < end {
        let (out_a, ta) = a.drain(*now);
        let (out_b, tb) = b.drain(*now);
        let quiet = out_a.is_empty() && out_b.is_empty();
        for (_, d) in out_a {
            deliver(b, a.addr, *now, &d);
        }
        for (_, d) in out_b {
            deliver(a, b.addr, *now, &d);
        }
        if done(a, b) {
            return;
        }
        if quiet {
            *now = ta.min(tb).max(*now + Duration::from_millis(1));
            a.rtc.handle_input(Input::Timeout(*now)).unwrap();
            b.rtc.handle_input(Input::Timeout(*now)).unwrap();
        }
    }
    panic!("did not get there in 10 s");
}

fn connected_pair() -> (Peer, Peer, Mid, String, Instant) {
    let mut now = Instant::now();
    let (mut client, client_keys) = capturing(|| {
        Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .set_crypto_provider(crypto_provider())
            .build(now)
    });
    let (mut server, server_keys) = capturing(|| {
        Rtc::builder()
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false)
            .set_crypto_provider(crypto_provider())
            .build(now)
    });
    client.add_local_candidate(Candidate::host(CLIENT.parse().unwrap(), "udp").unwrap());
    server.add_local_candidate(Candidate::host(SERVER.parse().unwrap(), "udp").unwrap());
    let mut change = client.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).unwrap();
    let answer = server.sdp_api().accept_offer(offer).unwrap();
    let answer_sdp = answer.to_sdp_string();
    client.sdp_api().accept_answer(pending, answer).unwrap();
    let mut a = Peer {
        rtc: client,
        keys: client_keys,
        addr: CLIENT.parse().unwrap(),
        connected: false,
        sent: Vec::new(),
        got: Vec::new(),
    };
    let mut b = Peer {
        rtc: server,
        keys: server_keys,
        addr: SERVER.parse().unwrap(),
        connected: false,
        sent: Vec::new(),
        got: Vec::new(),
    };
    run(&mut a, &mut b, &mut now, |a, b| {
        a.connected && b.connected && a.keys.keys().is_some() && b.keys.keys().is_some()
    });
    (a, b, mid, answer_sdp, now)
}

#[test]
fn both_ends_capture_the_same_export_in_opposite_roles() {
    let (a, b, ..) = connected_pair();
    let (ka, kb) = (a.keys.keys().unwrap(), b.keys.keys().unwrap());
    assert_eq!(ka.material, kb.material);
    assert_eq!(ka.profile, kb.profile);
    assert_ne!(ka.active, kb.active);
    assert!(!ka.material.iter().all(|&x| x == 0));
}

#[test]
fn an_rtc_built_outside_capturing_captures_nothing_and_still_connects() {
    let now = Instant::now();
    let (_, capture) = capturing(|| ());
    let rtc = Rtc::builder()
        .set_crypto_provider(crypto_provider())
        .build(now);
    drop(rtc);
    assert!(capture.keys().is_none());
}

#[test]
fn str0m_accepts_what_the_fast_path_seals() {
    let (mut a, mut b, mid, answer, now) = connected_pair();
    let keys = b.keys.keys().unwrap().clone();
    let crypto = crypto_provider();
    let mut tx = SrtpTx::new(&keys, &crypto).unwrap();
    let ssrc = *b
        .rtc
        .direct_api()
        .stream_tx_by_mid(mid, None)
        .expect("the server's send stream of the m-line")
        .ssrc();
    let pt = *b.rtc.codec_config().params()[0].pt();
    let ids = ExtIds::from_sdp(&answer);
    let level_id = ids.audio_level.expect("audio level negotiated");
    let mid_id = ids.mid.expect("mid negotiated");
    // Across a rollover: the index carries the ROC.
    for (k, seq) in (65_530u64..65_540).enumerate() {
        let mut plain = Vec::new();
        let level = [rtp::audio_level_byte(-25, true)];
        let n = rtp::write_header(
            &Header {
                pt,
                marker: k == 0,
                seq: seq as u16,
                timestamp: 1_000 + 960 * k as u32,
                ssrc,
            },
            &[(level_id, &level), (mid_id, mid.as_bytes())],
            &mut plain,
        );
        plain.extend_from_slice(format!("frame {k}").as_bytes());
        let mut sealed = Vec::new();
        tx.protect(&plain, n, ssrc, seq, &mut sealed).unwrap();
        deliver(&mut a, b.addr, now, &sealed);
        // str0m's rule: drain after every input.
        let _ = a.drain(now);
    }
    assert_eq!(a.got.len(), 10);
    for (k, p) in a.got.iter().enumerate() {
        assert_eq!(&p.payload[..], format!("frame {k}").as_bytes());
        assert_eq!(*p.seq_no, 65_530 + k as u64, "extended across the rollover");
        assert_eq!(p.header.timestamp, 1_000 + 960 * k as u32);
        assert_eq!(p.header.ext_vals.audio_level, Some(-25));
        assert_eq!(p.header.ext_vals.voice_activity, Some(true));
        assert_eq!(p.header.marker, k == 0);
    }
}

#[test]
fn the_fast_path_opens_what_str0m_sends() {
    let (mut a, b, mid, _, now) = connected_pair();
    let keys = b.keys.keys().unwrap().clone();
    let mut rx = SrtpRx::new(&keys, &crypto_provider()).unwrap();
    let pt = a.rtc.codec_config().params()[0].pt();
    a.sent.clear();
    for k in 0..5u64 {
        let mut api = a.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).expect("client send stream");
        tx.write_rtp(
            RtpWrite::new(pt, (100 + k).into(), 960 * k as u32, now, vec![k as u8; 40]).ext_vals(
                ExtensionValues {
                    audio_level: Some(-10),
                    ..Default::default()
                },
            ),
        );
        a.rtc.handle_input(Input::Timeout(now)).unwrap();
        let _ = a.drain(now);
    }
    let mut highest = None;
    let mut opened = 0;
    for d in &a.sent {
        let Some(p) = rtp::parse_header(d) else {
            continue;
        };
        let index = estimate_index(highest, p.header.seq);
        highest = Some(highest.map_or(index, |h: u64| h.max(index)));
        let mut out = Vec::new();
        rx.unprotect(d, p.header_len, p.header.ssrc, index, &mut out)
            .expect("opens");
        let k = u64::from(p.header.seq) - 100;
        assert_eq!(&out[p.header_len..], &vec![k as u8; 40][..]);
        opened += 1;
    }
    assert_eq!(opened, 5);
}
