//! Simulation tier: str0m peers ↔ in-memory network ↔ shard, under simulated time.

use media_plane::{
    Grants, JoinError, JoinRequest, LeaveReason, MuteChange, Shard, ShardConfig, ShardEvent,
};
use protocol::room::{CONTROL_LABEL, ClientMessage, ErrorCode, ServerMessage};
use protocol::{SessionId, UserId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::{Codec, CodecConfig, PayloadParams};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RawPacket;
use str0m::rtp::rtcp::Rtcp;
use str0m::{Candidate, Event, Input, Output, Rtc};
use uuid::Uuid;

const SERVER: &str = "127.0.0.1:40000";
const FRAME: Duration = Duration::from_millis(20);
/// The payload type str0m gives Opus, and the RTX type our clients pair with it.
const OPUS_PT: u8 = 111;
const RTX_PT: u8 = 112;
/// The payload type str0m gives RED over Opus.
const RED_PT: u8 = 63;

/// What a simulated client offers besides plain Opus.
#[derive(Debug, Clone, Copy, Default)]
struct Opts {
    /// RFC 2198 RED for Opus.
    red: bool,
    /// NACK feedback for Opus without RTX (a NACK the node could only answer in band).
    nack: bool,
    /// NACK feedback and an RTX payload type paired with Opus (RFC 4588).
    rtx: bool,
    /// PLI and FIR feedback for Opus.
    keyframes: bool,
    /// The join token says the session is end-to-end encrypted.
    e2ee: bool,
    /// The join token's session is a music session.
    music: bool,
}

/// `p` with an RTX payload type paired with it, keeping everything else (RED included).
fn with_rtx(p: PayloadParams, rtx: u8) -> PayloadParams {
    if p.red().is_none() {
        return PayloadParams::new(p.pt(), Some(rtx.into()), p.spec());
    }
    // str0m has no setter for the RTX type of a RED-carrying parameter set.
    let mut v = serde_json::to_value(p).unwrap();
    v["resend"] = rtx.into();
    serde_json::from_value(v).unwrap()
}

struct Peer {
    rtc: Rtc,
    addr: SocketAddr,
    send_mid: Option<Mid>,
    tag: u8,
    /// RFC 6464 level sent with every frame (-dBov, negative), if any.
    level: Option<i8>,
    connected: bool,
    deadline: Instant,
    /// Every received frame: (mid, first byte = sender tag, length).
    received: Vec<(Mid, u8, usize)>,
    /// The frame counter of every received frame, in arrival order.
    counters: Vec<u32>,
    /// RTCP transport-wide congestion control feedback packets received.
    twcc_in: usize,
    /// (sender tag, frame counter) of every distinct Opus frame that reached the client as RTP,
    /// first sent or retransmitted.
    heard: std::collections::BTreeSet<(u8, u32)>,
    /// RTX packets received (retransmissions).
    rtx_in: usize,
    /// Keyframe requests (PLI or FIR) that reached this client as a sender.
    keyframe_requests: usize,
    /// The node's SDP answer.
    answer: String,
    /// The media time of every received frame, in microseconds, in arrival order.
    times: Vec<u64>,
    /// When each received frame arrived (simulated time), in arrival order.
    arrived: Vec<Instant>,
    /// 20 ms ticks so far; with `dtx`, a frame is sent only every `dtx`-th tick (Opus DTX).
    ticks: u32,
    dtx: Option<u32>,
    sent: u32,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    /// The room control channel, once open, and what arrived on it.
    control: Option<ChannelId>,
    inbox: Vec<ServerMessage>,
}

impl Peer {
    /// A client that offers `send` sendrecv audio m-lines plus `recv_only` recvonly ones.
    fn offer(
        tag: u8,
        now: Instant,
        send: bool,
        recv_only: usize,
    ) -> (Self, String, SdpPendingOffer) {
        Self::offer_opts(tag, now, send, recv_only, Opts::default())
    }

    /// Like [`Peer::offer`], with `opts` on top of plain Opus.
    fn offer_opts(
        tag: u8,
        now: Instant,
        send: bool,
        recv_only: usize,
        opts: Opts,
    ) -> (Self, String, SdpPendingOffer) {
        let addr: SocketAddr = format!("127.0.0.{}:5000", 10 + tag).parse().unwrap();
        let mut config = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, opts.red)
            .enable_raw_packets(true);
        let params = config
            .codec_config()
            .params()
            .iter()
            .map(|&p| {
                if p.spec().codec != Codec::Opus {
                    return p;
                }
                let mut p = if opts.rtx { with_rtx(p, RTX_PT) } else { p };
                p.set_fb_nack(opts.nack || opts.rtx);
                p.set_fb_pli(opts.keyframes);
                p.set_fb_fir(opts.keyframes);
                p
            })
            .collect();
        *config.codec_config() = CodecConfig::new_from_payload_params(params);
        let mut rtc = config.build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let send_mid =
            send.then(|| api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None));
        for _ in 0..recv_only {
            api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        }
        api.add_channel(CONTROL_LABEL.to_string());
        let (offer, pending) = api.apply().unwrap();
        let peer = Peer {
            rtc,
            addr,
            send_mid,
            tag,
            level: None,
            connected: false,
            deadline: now,
            received: Vec::new(),
            counters: Vec::new(),
            twcc_in: 0,
            heard: Default::default(),
            rtx_in: 0,
            keyframe_requests: 0,
            answer: String::new(),
            times: Vec::new(),
            arrived: Vec::new(),
            ticks: 0,
            dtx: None,
            sent: 0,
            outbox: Vec::new(),
            control: None,
            inbox: Vec::new(),
        };
        (peer, offer.to_sdp_string(), pending)
    }

    fn accept(&mut self, answer: &str, pending: SdpPendingOffer, now: Instant) {
        let answer = SdpAnswer::from_sdp_string(answer).unwrap();
        self.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        self.drain(now);
    }

    fn drain(&mut self, now: Instant) {
        loop {
            match self.rtc.poll_output().unwrap() {
                Output::Timeout(t) => {
                    self.deadline = t;
                    break;
                }
                Output::Transmit(t) => self.outbox.push((t.destination, t.contents.into())),
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::ChannelOpen(id, label)) if label == CONTROL_LABEL => {
                    self.control = Some(id)
                }
                Output::Event(Event::ChannelData(d)) => self
                    .inbox
                    .push(ServerMessage::decode(&d.data).expect("the node sends valid messages")),
                Output::Event(Event::RawPacket(raw)) => match *raw {
                    RawPacket::RtcpRx(Rtcp::Twcc(_)) => self.twcc_in += 1,
                    RawPacket::RtpRx(header, data) => {
                        // An RTX payload starts with the original sequence number.
                        let frame = match *header.payload_type {
                            OPUS_PT => data.get(..5),
                            RED_PT => {
                                media_plane::red::primary(&data).and_then(|(_, d)| d.get(..5))
                            }
                            RTX_PT => {
                                self.rtx_in += 1;
                                data.get(2..7)
                            }
                            _ => None,
                        };
                        if let Some(f) = frame {
                            let counter = u32::from_be_bytes([f[1], f[2], f[3], f[4]]);
                            self.heard.insert((f[0], counter));
                        }
                    }
                    _ => {}
                },
                Output::Event(Event::KeyframeRequest(_)) => self.keyframe_requests += 1,
                Output::Event(Event::MediaData(d)) => {
                    self.times.push(d.time.as_micros());
                    self.arrived.push(now);
                    if let Some(c) = d.data.get(1..5) {
                        self.counters
                            .push(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                    }
                    self.received
                        .push((d.mid, d.data.first().copied().unwrap_or(0), d.data.len()))
                }
                Output::Event(_) => {}
            }
        }
    }

    /// Asks the node for a keyframe of what this client receives on its first receiving m-line.
    fn request_keyframe(&mut self, now: Instant, kind: KeyframeRequestKind) {
        let mid = self.received.first().expect("receiving").0;
        let mut api = self.rtc.direct_api();
        api.stream_rx_by_mid(mid, None)
            .expect("a receive stream")
            .request_keyframe(kind);
        self.drain(now);
    }

    fn send_control(&mut self, now: Instant, raw: &[u8]) {
        let id = self.control.expect("control channel open");
        self.rtc.channel(id).unwrap().write(false, raw).unwrap();
        self.drain(now);
    }

    fn send_frame(&mut self, now: Instant) {
        let Some(mid) = self.send_mid else { return };
        if !self.connected {
            return;
        }
        let tick = self.ticks;
        self.ticks += 1;
        if self.dtx.is_some_and(|k| !tick.is_multiple_of(k)) {
            return;
        }
        let mut writer = self.rtc.writer(mid).unwrap();
        let pt = writer.payload_params().next().unwrap().pt();
        if let Some(level) = self.level {
            writer = writer.audio_level(level, level > -60);
        }
        let media_time = str0m::media::MediaTime::from_millis(u64::from(tick) * 20);
        let mut payload = vec![self.tag; 100];
        payload[1..5].copy_from_slice(&tick.to_be_bytes());
        writer.write(pt, now, media_time, payload).unwrap();
        self.sent += 1;
        self.drain(now);
    }
}

struct Sim {
    now: Instant,
    shard: Shard,
    peers: Vec<Peer>,
    next_frame: Instant,
    events: Vec<ShardEvent>,
    /// Drop every n-th SRTP datagram the shard sends to this peer (index, n).
    loss: Option<(usize, usize)>,
    lossy_count: usize,
    /// Drop every n-th SRTP datagram this peer sends to the shard (index, n).
    uplink_loss: Option<(usize, usize)>,
    uplink_count: usize,
}

impl Sim {
    fn new() -> Self {
        let now = Instant::now();
        let shard = Shard::new(ShardConfig::new(0, SERVER.parse().unwrap(), 7), now).unwrap();
        Sim {
            now,
            shard,
            peers: Vec::new(),
            next_frame: now + FRAME,
            events: Vec::new(),
            loss: None,
            lossy_count: 0,
            uplink_loss: None,
            uplink_count: 0,
        }
    }

    fn join(
        &mut self,
        session: SessionId,
        tag: u8,
        grants: Grants,
        send: bool,
        recv_only: usize,
    ) -> u64 {
        self.join_with(session, tag, grants, send, recv_only, false)
    }

    fn join_with(
        &mut self,
        session: SessionId,
        tag: u8,
        grants: Grants,
        send: bool,
        recv_only: usize,
        red: bool,
    ) -> u64 {
        let opts = Opts {
            red,
            ..Opts::default()
        };
        self.join_opts(session, tag, grants, send, recv_only, opts)
    }

    fn join_opts(
        &mut self,
        session: SessionId,
        tag: u8,
        grants: Grants,
        send: bool,
        recv_only: usize,
        opts: Opts,
    ) -> u64 {
        let (mut peer, offer, pending) = Peer::offer_opts(tag, self.now, send, recv_only, opts);
        let joined = self
            .shard
            .join(
                self.now,
                JoinRequest {
                    id: protocol::ParticipantId::from_uuid(Uuid::new_v4()),
                    session,
                    user: UserId::from_uuid(Uuid::from_u128(u128::from(tag))),
                    grants,
                    e2ee: opts.e2ee,
                    offer,
                    music: opts.music,
                },
            )
            .unwrap();
        peer.answer = joined.answer.clone();
        peer.accept(&joined.answer, pending, self.now);
        self.peers.push(peer);
        joined.participant
    }

    /// Delivers every datagram in flight, in a fixed order, until the network is quiet.
    fn deliver(&mut self) {
        let server: SocketAddr = SERVER.parse().unwrap();
        loop {
            let mut moved = false;
            for i in 0..self.peers.len() {
                let out = std::mem::take(&mut self.peers[i].outbox);
                for (dest, bytes) in out {
                    moved = true;
                    if let Some((lossy, n)) = self.uplink_loss
                        && lossy == i
                        && is_srtp_media(&bytes)
                    {
                        self.uplink_count += 1;
                        if self.uplink_count.is_multiple_of(n) {
                            continue;
                        }
                    }
                    if dest == server {
                        let src = self.peers[i].addr;
                        self.shard.handle_datagram(self.now, src, &bytes);
                    }
                }
            }
            while let Some(d) = self.shard.poll_transmit() {
                moved = true;
                if let Some((i, n)) = self.loss
                    && is_srtp_media(&d.contents)
                    && self.peers[i].addr == d.destination
                {
                    self.lossy_count += 1;
                    if self.lossy_count.is_multiple_of(n) {
                        continue;
                    }
                }
                if let Some(p) = self.peers.iter_mut().find(|p| p.addr == d.destination) {
                    let input = Input::Receive(
                        self.now,
                        Receive::new(Protocol::Udp, server, p.addr, &d.contents).unwrap(),
                    );
                    p.rtc.handle_input(input).unwrap();
                    p.drain(self.now);
                }
            }
            while let Some(e) = self.shard.poll_event() {
                self.events.push(e);
            }
            if !moved {
                break;
            }
        }
    }

    /// Runs simulated time forward by `d`, sending a frame from every connected sender each 20 ms.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.deliver();
            let mut next = self.shard.poll_timeout().min(self.next_frame).min(end);
            for p in &self.peers {
                next = next.min(p.deadline);
            }
            self.now = next.max(self.now);
            self.shard.handle_timeout(self.now);
            for p in &mut self.peers {
                if p.deadline <= self.now {
                    p.rtc.handle_input(Input::Timeout(self.now)).unwrap();
                    p.drain(self.now);
                }
            }
            if self.now >= self.next_frame {
                self.next_frame += FRAME;
                for p in &mut self.peers {
                    p.send_frame(self.now);
                }
            }
            if next == self.now && next != end {
                // Progress is guaranteed: every deadline that was due has been handled.
                continue;
            }
        }
        self.deliver();
    }
}

/// Whether a datagram looks like SRTP media rather than STUN, DTLS or a small RTCP report.
fn is_srtp_media(d: &[u8]) -> bool {
    d.first().is_some_and(|b| (128..192).contains(b)) && d.len() > 60
}

fn session(n: u128) -> SessionId {
    SessionId::from_uuid(Uuid::from_u128(n))
}

const ALL: Grants = Grants {
    publish: true,
    subscribe: true,
    admin: false,
    music_ctl: false,
};

#[test]
fn two_participants_hear_each_other_and_never_themselves() {
    let mut sim = Sim::new();
    sim.join(session(1), 1, ALL, true, 0);
    sim.join(session(1), 2, ALL, true, 0);
    sim.run(Duration::from_secs(3));
    assert!(
        sim.peers.iter().all(|p| p.connected),
        "ICE + DTLS completed"
    );
    for (me, other) in [(0, 1), (1, 0)] {
        let got = &sim.peers[me].received;
        let other_tag = sim.peers[other].tag;
        assert!(
            got.iter()
                .all(|&(_, tag, len)| tag == other_tag && len == 100),
            "only the other's frames"
        );
        // Frames sent before the receiver had connected are not forwarded; allow a short start.
        let sent = sim.peers[other].sent as usize;
        assert!(
            got.len() + 10 >= sent && got.len() <= sent,
            "received {} of {sent}",
            got.len()
        );
        assert!(
            sent > 100,
            "about 3 s of 20 ms frames were sent, got {sent}"
        );
    }
    let stats = sim.shard.stats();
    assert!(stats.rtp_forwarded > 200, "{stats:?}");
    // Neither negotiated NACK: every forwarded packet was sealed by the fast path, and str0m's
    // clients took each one as the RTP it was (checked above, frame by frame).
    assert_eq!(stats.rtp_forwarded_fast, stats.rtp_forwarded, "{stats:?}");
}

#[test]
fn three_participants_each_hear_both_others_on_separate_slots() {
    let mut sim = Sim::new();
    for tag in 1..=3 {
        // One sendrecv m-line plus one recvonly: two slots for two other voices.
        sim.join(session(9), tag, ALL, true, 1);
    }
    sim.run(Duration::from_secs(2));
    for me in 0..3 {
        let p = &sim.peers[me];
        let mut by_mid: std::collections::HashMap<Mid, std::collections::HashSet<u8>> =
            Default::default();
        for &(mid, tag, _) in &p.received {
            by_mid.entry(mid).or_default().insert(tag);
        }
        let tags: std::collections::HashSet<u8> = by_mid.values().flatten().copied().collect();
        let expect: std::collections::HashSet<u8> = (1..=3).filter(|&t| t != p.tag).collect();
        assert_eq!(
            tags, expect,
            "participant {} hears exactly the others",
            p.tag
        );
        assert!(
            by_mid.values().all(|s| s.len() == 1),
            "one voice per slot: {by_mid:?}"
        );
    }
}

#[test]
fn rooms_are_isolated_and_listeners_without_publish_grant_are_not_forwarded() {
    let mut sim = Sim::new();
    sim.join(session(1), 1, ALL, true, 0);
    sim.join(session(2), 2, ALL, true, 0);
    let listen_only = Grants {
        publish: false,
        subscribe: true,
        admin: false,
        music_ctl: false,
    };
    sim.join(session(1), 3, listen_only, true, 0);
    sim.run(Duration::from_secs(2));
    assert!(
        sim.peers[1].received.is_empty(),
        "room 2 hears nothing from room 1"
    );
    assert!(
        sim.peers[0].received.is_empty(),
        "a listener's packets are not forwarded"
    );
    assert!(
        sim.peers[2].received.iter().all(|r| r.1 == 1) && sim.peers[2].received.len() > 50,
        "the listener hears the speaker of its own room"
    );
}

#[test]
fn leaving_frees_the_slot_and_closes_the_empty_room() {
    let mut sim = Sim::new();
    let a = sim.join(session(1), 1, ALL, true, 0);
    let b = sim.join(session(1), 2, ALL, true, 0);
    sim.run(Duration::from_secs(1));
    assert!(sim.shard.leave(b));
    assert!(!sim.shard.leave(b), "leaving twice is a no-op");
    let before = sim.peers[0].received.len();
    sim.run(Duration::from_secs(1));
    assert_eq!(
        sim.peers[0].received.len(),
        before,
        "nothing arrives from a peer that left"
    );
    assert!(sim.shard.leave(a));
    sim.deliver();
    assert_eq!(sim.shard.room_count(), 0);
    assert!(sim.events.contains(&ShardEvent::RoomClosed {
        session: session(1)
    }));
    assert!(sim.events.iter().any(|e| matches!(e, ShardEvent::Left { participant, reason: LeaveReason::Requested, .. } if *participant == b)));
}

#[test]
fn a_peer_that_never_connects_is_removed_after_the_join_timeout() {
    let mut sim = Sim::new();
    let (_peer, offer, _pending) = Peer::offer(5, sim.now, true, 0);
    let key = sim
        .shard
        .join(
            sim.now,
            JoinRequest {
                id: protocol::ParticipantId::from_uuid(Uuid::new_v4()),
                session: session(3),
                user: UserId::from_uuid(Uuid::from_u128(5)),
                grants: ALL,
                e2ee: false,
                offer,
                music: false,
            },
        )
        .unwrap()
        .participant;
    sim.run(media_plane::shard::JOIN_TIMEOUT + Duration::from_secs(2));
    assert_eq!(sim.shard.participant_count(), 0);
    assert!(sim.events.iter().any(|e| matches!(e, ShardEvent::Left { participant, reason: LeaveReason::NeverConnected, .. } if *participant == key)), "{:?}", sim.events);
}

#[test]
fn bad_offers_are_refused_with_a_reason_and_leave_the_call_running() {
    let mut sim = Sim::new();
    sim.join(session(1), 1, ALL, true, 0);
    sim.join(session(1), 2, ALL, true, 0);
    sim.run(Duration::from_secs(1));
    let req = |offer: &str| JoinRequest {
        id: protocol::ParticipantId::from_uuid(Uuid::new_v4()),
        session: session(1),
        user: UserId::from_uuid(Uuid::from_u128(99)),
        grants: ALL,
        e2ee: false,
        offer: offer.to_string(),
        music: false,
    };
    assert_eq!(
        sim.shard.join(sim.now, req("hello")).unwrap_err(),
        JoinError::MalformedOffer
    );
    assert_eq!(
        sim.shard.join(sim.now, req("")).unwrap_err(),
        JoinError::MalformedOffer
    );
    // A video-only offer has no audio for us.
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_vp8(true)
        .build(sim.now);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
    let (video, _) = api.apply().unwrap();
    assert_eq!(
        sim.shard
            .join(sim.now, req(&video.to_sdp_string()))
            .unwrap_err(),
        JoinError::NoAudio
    );
    // Garbage datagrams from strangers and from a known address are dropped.
    let known = sim.peers[0].addr;
    for junk in [
        &[][..],
        &[0u8; 3][..],
        &[0x80; 40][..],
        &[0x16; 200][..],
        &[0x00, 0x01, 0, 4, 0x21, 0x12, 0xa4, 0x42][..],
    ] {
        sim.shard
            .handle_datagram(sim.now, "127.0.0.99:1".parse().unwrap(), junk);
        sim.shard.handle_datagram(sim.now, known, junk);
    }
    let before = sim.peers[1].received.len();
    sim.run(Duration::from_secs(1));
    assert!(
        sim.peers[1].received.len() >= before + 45,
        "the call goes on"
    );
    assert_eq!(sim.shard.participant_count(), 2);
}

#[test]
fn a_forwarded_packet_leaves_within_the_same_input() {
    let mut sim = Sim::new();
    sim.join(session(1), 1, ALL, true, 0);
    sim.join(session(1), 2, ALL, true, 0);
    sim.run(Duration::from_secs(1));
    // One frame from peer 1, delivered by hand, with no timeout in between.
    sim.now += Duration::from_millis(5);
    let now = sim.now;
    sim.peers[0].send_frame(now);
    // The client's own pacer releases the frame on its next timeout.
    sim.peers[0].rtc.handle_input(Input::Timeout(now)).unwrap();
    sim.peers[0].drain(now);
    let out = std::mem::take(&mut sim.peers[0].outbox);
    assert!(!out.is_empty(), "the frame was written");
    let (b, src) = (sim.peers[1].addr, sim.peers[0].addr);
    let before = sim.shard.stats().rtp_forwarded;
    for (_, bytes) in out {
        sim.shard.handle_datagram(now, src, &bytes);
    }
    assert_eq!(sim.shard.stats().rtp_forwarded, before + 1);
    let mut to_b = 0;
    while let Some(d) = sim.shard.poll_transmit() {
        to_b += usize::from(d.destination == b);
    }
    assert!(
        to_b >= 1,
        "the SRTP packet for peer 2 is ready without waiting for a timer"
    );
}

/// Tags heard by peer `i` in frames received after index `from`.
fn heard_since(sim: &Sim, i: usize, from: usize) -> std::collections::BTreeSet<u8> {
    sim.peers[i].received[from..].iter().map(|r| r.1).collect()
}

#[test]
fn a_large_room_forwards_each_listener_its_three_loudest_others_and_follows_changes() {
    let mut sim = Sim::new();
    for tag in 1..=8 {
        // One sendrecv + two recvonly m-lines: three slots, for the three loudest.
        sim.join(session(4), tag, ALL, true, 2);
    }
    // The first to join are silent; the loudest joined last, so first-come would be wrong.
    for (i, level) in [-127, -127, -127, -127, -40, -30, -20, -10]
        .into_iter()
        .enumerate()
    {
        sim.peers[i].level = Some(level);
    }
    sim.run(Duration::from_secs(2));
    let mark: Vec<usize> = sim.peers.iter().map(|p| p.received.len()).collect();
    sim.run(Duration::from_secs(1));
    let set = |v: &[u8]| {
        v.iter()
            .copied()
            .collect::<std::collections::BTreeSet<u8>>()
    };
    assert_eq!(
        heard_since(&sim, 0, mark[0]),
        set(&[6, 7, 8]),
        "a silent listener"
    );
    assert_eq!(
        heard_since(&sim, 7, mark[7]),
        set(&[5, 6, 7]),
        "the loudest hears the next three"
    );
    assert_eq!(
        heard_since(&sim, 4, mark[4]),
        set(&[6, 7, 8]),
        "the fourth hears the top three"
    );
    let ranked: Vec<u64> = sim
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            ShardEvent::Speakers { speakers, .. } => {
                Some(speakers.iter().map(|s| s.participant).collect())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(ranked, vec![8, 7, 6, 5], "speaker events rank by level");

    // 8 falls silent and 2 starts, loudest of all: within a second the listeners follow.
    sim.peers[7].level = Some(-127);
    sim.peers[1].level = Some(-5);
    sim.run(Duration::from_secs(1));
    let mark: Vec<usize> = sim.peers.iter().map(|p| p.received.len()).collect();
    sim.run(Duration::from_secs(1));
    assert_eq!(heard_since(&sim, 0, mark[0]), set(&[2, 6, 7]));
    assert_eq!(heard_since(&sim, 1, mark[1]), set(&[5, 6, 7]));
}

#[test]
fn speaker_events_follow_onset_within_300_ms() {
    let mut sim = Sim::new();
    sim.join(session(5), 1, ALL, true, 0);
    sim.join(session(5), 2, ALL, true, 0);
    sim.peers[0].level = Some(-127);
    sim.run(Duration::from_secs(1));
    sim.events.clear();
    let t0 = sim.now;
    sim.peers[0].level = Some(-20);
    let mut seen = None;
    for _ in 0..50 {
        sim.run(Duration::from_millis(20));
        if sim.events.iter().any(|e| matches!(e, ShardEvent::Speakers { speakers, .. } if speakers.first().is_some_and(|s| s.participant == 1))) {
            seen = Some(sim.now - t0);
            break;
        }
    }
    let after = seen.expect("a speaker event for 1");
    assert!(
        after <= Duration::from_millis(300),
        "speaker event after {after:?}"
    );
}

#[test]
fn a_muted_microphone_is_not_forwarded_and_a_deafened_listener_is_sent_nothing() {
    let mut sim = Sim::new();
    let a = sim.join(session(6), 1, ALL, true, 0);
    let b = sim.join(session(6), 2, ALL, true, 0);
    sim.run(Duration::from_secs(1));
    let mic = |on: bool| MuteChange {
        microphone: Some(on),
        speaker: None,
    };
    let deaf = |on: bool| MuteChange {
        microphone: None,
        speaker: Some(on),
    };
    assert_eq!(sim.shard.set_mute(a, mic(true)), Some((true, false)));
    let (b_before, a_before) = (sim.peers[1].received.len(), sim.peers[0].received.len());
    sim.run(Duration::from_secs(1));
    assert_eq!(
        sim.peers[1].received.len(),
        b_before,
        "nothing from a muted microphone"
    );
    assert!(
        sim.peers[0].received.len() >= a_before + 45,
        "the muted one still hears"
    );

    assert_eq!(sim.shard.set_mute(a, mic(false)), Some((false, false)));
    assert_eq!(sim.shard.set_mute(b, deaf(true)), Some((false, true)));
    let (b_before, a_before) = (sim.peers[1].received.len(), sim.peers[0].received.len());
    sim.run(Duration::from_secs(1));
    assert_eq!(
        sim.peers[1].received.len(),
        b_before,
        "a deafened listener gets nothing"
    );
    assert!(
        sim.peers[0].received.len() >= a_before + 45,
        "the deafened one is still heard"
    );

    assert_eq!(sim.shard.set_mute(b, deaf(false)), Some((false, false)));
    let b_before = sim.peers[1].received.len();
    sim.run(Duration::from_secs(1));
    assert!(
        sim.peers[1].received.len() >= b_before + 45,
        "unmuted: audio flows again"
    );
    assert_eq!(sim.shard.set_mute(999, mic(true)), None);
    let muted: Vec<_> = sim
        .events
        .iter()
        .filter(|e| matches!(e, ShardEvent::Muted { .. }))
        .collect();
    assert_eq!(muted.len(), 4, "one event per change: {muted:?}");
}

const ADMIN: Grants = Grants {
    publish: true,
    subscribe: true,
    admin: true,
    music_ctl: false,
};

/// Sends a control message from peer `i` and runs the network until it is handled.
fn control(sim: &mut Sim, i: usize, msg: &ClientMessage) {
    let now = sim.now;
    sim.peers[i].send_control(now, msg.encode().as_bytes());
    sim.run(Duration::from_millis(100));
}

fn last_update_of(sim: &Sim, i: usize, who: u64) -> Option<protocol::room::ParticipantInfo> {
    sim.peers[i].inbox.iter().rev().find_map(|m| match m {
        ServerMessage::ParticipantUpdated { participant } if participant.participant == who => {
            Some(participant.clone())
        }
        _ => None,
    })
}

#[test]
fn a_participant_flooding_the_control_channel_is_refused_once_and_the_room_goes_on() {
    use media_plane::shard::ratelimit::CONTROL_BURST;
    let mut sim = Sim::new();
    let admin = sim.join(session(7), 1, ADMIN, true, 0);
    let _flooder = sim.join(session(7), 2, ALL, true, 0);
    sim.run(Duration::from_secs(2));
    assert!(sim.peers.iter().all(|p| p.control.is_some()));
    let lists = |sim: &Sim, i: usize| {
        sim.peers[i]
            .inbox
            .iter()
            .filter(|m| matches!(m, ServerMessage::Participants { .. }))
            .count()
    };
    let errors = |sim: &Sim, i: usize| -> Vec<ErrorCode> {
        sim.peers[i]
            .inbox
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Error { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    };
    let before = lists(&sim, 1);
    // 200 requests for the whole list at once: each would cost the node a list to send back.
    let now = sim.now;
    let request = ClientMessage::ListParticipants.encode();
    for _ in 0..200 {
        sim.peers[1].send_control(now, request.as_bytes());
    }
    sim.run(Duration::from_millis(50));
    let answered = lists(&sim, 1) - before;
    assert_eq!(
        answered, CONTROL_BURST as usize,
        "the burst is answered, the rest dropped"
    );
    assert_eq!(errors(&sim, 1), vec![ErrorCode::RateLimited], "told once");
    assert_eq!(
        sim.shard.stats().control_rate_limited,
        200 - u64::from(CONTROL_BURST)
    );

    // The rest of the room is not held up: the admin's control works at once.
    control(
        &mut sim,
        0,
        &ClientMessage::Mute {
            microphone: Some(true),
            speaker: None,
        },
    );
    assert!(last_update_of(&sim, 1, admin).unwrap().microphone_muted);
    assert!(errors(&sim, 0).is_empty());
    // Once the budget refills the flooder is served again.
    sim.run(Duration::from_secs(1));
    control(&mut sim, 1, &ClientMessage::ListParticipants);
    assert_eq!(lists(&sim, 1) - before, CONTROL_BURST as usize + 1);
    assert_eq!(sim.shard.participant_count(), 2);
}

#[test]
fn room_control_on_the_data_channel_mutes_moderates_and_refuses_what_it_must() {
    let mut sim = Sim::new();
    let admin = sim.join(session(7), 1, ADMIN, true, 0);
    let member = sim.join(session(7), 2, ALL, true, 0);
    sim.run(Duration::from_secs(2));
    assert!(
        sim.peers.iter().all(|p| p.control.is_some()),
        "control channels open"
    );
    // On open: who you are, then everyone present.
    assert_eq!(
        sim.peers[1].inbox[0],
        ServerMessage::Welcome {
            participant: member
        }
    );
    assert!(sim.peers[1].inbox.iter().any(|m| matches!(m,
        ServerMessage::Participants { participants } if participants.len() == 2)));

    // A member mutes its own microphone: everyone is told, and its audio stops.
    control(
        &mut sim,
        1,
        &ClientMessage::Mute {
            microphone: Some(true),
            speaker: None,
        },
    );
    assert!(last_update_of(&sim, 0, member).unwrap().microphone_muted);
    let before = sim.peers[0].received.len();
    sim.run(Duration::from_secs(1));
    assert_eq!(
        sim.peers[0].received.len(),
        before,
        "muted by its own request"
    );
    control(
        &mut sim,
        1,
        &ClientMessage::Mute {
            microphone: Some(false),
            speaker: None,
        },
    );

    // A member may not moderate; garbage is refused; the call goes on.
    control(&mut sim, 1, &ClientMessage::Remove { participant: admin });
    sim.peers[1].send_control(sim.now, b"{not json");
    sim.run(Duration::from_millis(100));
    let errors: Vec<ErrorCode> = sim.peers[1]
        .inbox
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Error { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(errors, vec![ErrorCode::Forbidden, ErrorCode::Malformed]);
    assert_eq!(sim.shard.participant_count(), 2);

    // The member raises a hand; the admin takes the floor away, then gives it back.
    control(&mut sim, 1, &ClientMessage::RaiseHand { raised: true });
    assert!(last_update_of(&sim, 0, member).unwrap().hand_raised);
    control(
        &mut sim,
        0,
        &ClientMessage::SetSpeak {
            participant: member,
            allowed: false,
        },
    );
    assert!(!last_update_of(&sim, 1, member).unwrap().can_speak);
    let before = sim.peers[0].received.len();
    sim.run(Duration::from_secs(1));
    assert_eq!(
        sim.peers[0].received.len(),
        before,
        "no floor, no forwarding"
    );
    control(
        &mut sim,
        0,
        &ClientMessage::SetSpeak {
            participant: member,
            allowed: true,
        },
    );
    let info = last_update_of(&sim, 1, member).unwrap();
    assert!(
        info.can_speak && !info.hand_raised,
        "allowed to speak, hand lowered"
    );
    let before = sim.peers[0].received.len();
    sim.run(Duration::from_secs(1));
    assert!(sim.peers[0].received.len() >= before + 45);

    // The admin deafens the member, names someone absent, then removes the member.
    control(
        &mut sim,
        0,
        &ClientMessage::MuteParticipant {
            participant: member,
            microphone: None,
            speaker: Some(true),
        },
    );
    assert!(last_update_of(&sim, 0, member).unwrap().speaker_muted);
    control(
        &mut sim,
        0,
        &ClientMessage::MuteParticipant {
            participant: 999,
            microphone: Some(true),
            speaker: None,
        },
    );
    assert!(matches!(
        sim.peers[0].inbox.last(),
        Some(ServerMessage::Error {
            code: ErrorCode::UnknownParticipant,
            ..
        })
    ));
    control(
        &mut sim,
        0,
        &ClientMessage::Remove {
            participant: member,
        },
    );
    assert_eq!(sim.shard.participant_count(), 1);
    assert!(
        sim.peers[0]
            .inbox
            .contains(&ServerMessage::ParticipantLeft {
                participant: member
            })
    );
    assert!(sim.events.iter().any(|e| matches!(e, ShardEvent::Left { participant, reason: LeaveReason::Removed, .. } if *participant == member)));
}

#[test]
fn red_is_passed_to_red_subscribers_and_stripped_for_the_others() {
    let mut sim = Sim::new();
    // 1 sends RED; 2 understands RED; 3 does not; 3 also publishes plain Opus.
    sim.join_with(session(8), 1, ALL, true, 1, true);
    sim.join_with(session(8), 2, ALL, true, 1, true);
    sim.join_with(session(8), 3, ALL, true, 1, false);
    sim.run(Duration::from_secs(2));
    let mark: Vec<usize> = sim.peers.iter().map(|p| p.received.len()).collect();
    sim.run(Duration::from_secs(1));
    for (i, expect) in [(0, [2u8, 3]), (1, [1, 3]), (2, [1, 2])] {
        let got = &sim.peers[i].received[mark[i]..];
        for from in expect {
            let n = got.iter().filter(|r| r.1 == from).count();
            assert!(n >= 45, "peer {} hears {from} {n} times in 1 s", i + 1);
        }
        // Every frame decodes to the sender's 100-byte payload: no RED header left in it.
        assert!(
            got.iter().all(|r| r.2 == 100 && expect.contains(&r.1)),
            "peer {}: {:?}",
            i + 1,
            &got[..3]
        );
    }
}

#[test]
fn publishers_get_transport_wide_congestion_control_feedback() {
    let mut sim = Sim::new();
    sim.join(session(10), 1, ALL, true, 0);
    let listen_only = Grants {
        publish: false,
        subscribe: true,
        admin: false,
        music_ctl: false,
    };
    sim.join(session(10), 2, listen_only, false, 1);
    sim.run(Duration::from_secs(2));
    assert!(sim.peers[0].sent > 50);
    assert!(
        sim.peers[0].twcc_in >= 5,
        "the node sends TWCC feedback for the publisher's packets: {}",
        sim.peers[0].twcc_in
    );
    assert_eq!(
        sim.peers[1].twcc_in, 0,
        "a peer that sends no media gets none"
    );
}

#[test]
fn a_flood_of_junk_from_a_stranger_and_from_a_participants_address_does_not_stop_the_call() {
    use rand::{Rng, SeedableRng};
    let mut sim = Sim::new();
    sim.join(session(11), 1, ALL, true, 0);
    sim.join(session(11), 2, ALL, true, 0);
    sim.run(Duration::from_secs(1));
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let stranger: SocketAddr = "127.0.0.200:9".parse().unwrap();
    let spoofed = sim.peers[0].addr;
    let before = (sim.peers[0].received.len(), sim.peers[1].received.len());
    let stats_before = sim.shard.stats();
    for _ in 0..50 {
        // 400 junk datagrams every 20 ms: 20,000 a second, RTP-, DTLS- and STUN-shaped.
        for i in 0..400 {
            let mut junk = vec![0u8; rng.gen_range(1..300)];
            rng.fill(&mut junk[..]);
            junk[0] = [0x80, 0x90, 0x16, 0x00][i % 4];
            let from = if i % 2 == 0 { stranger } else { spoofed };
            sim.shard.handle_datagram(sim.now, from, &junk);
        }
        sim.run(Duration::from_millis(20));
    }
    let stats = sim.shard.stats();
    assert!(
        stats.unclaimed - stats_before.unclaimed >= 9_000,
        "{stats:?}"
    );
    assert_eq!(sim.shard.participant_count(), 2);
    assert!(
        sim.peers[0].received.len() >= before.0 + 45,
        "the call goes on"
    );
    assert!(sim.peers[1].received.len() >= before.1 + 45, "both ways");
}

#[test]
fn dtx_gaps_pass_through_with_their_timing() {
    let mut sim = Sim::new();
    sim.join(session(12), 1, ALL, true, 0);
    sim.join(session(12), 2, ALL, true, 0);
    sim.run(Duration::from_secs(1));
    // Peer 1 goes quiet: one frame every 400 ms, its media time still advancing 20 ms a tick.
    sim.peers[0].dtx = Some(20);
    let from = sim.peers[1].counters.len();
    sim.run(Duration::from_secs(3));
    let (counters, times) = (&sim.peers[1].counters[from..], &sim.peers[1].times[from..]);
    assert!(counters.len() >= 6, "{counters:?}");
    let gaps: Vec<u32> = counters.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().skip(1).all(|&g| g == 20),
        "a frame each 20 ticks: {gaps:?}"
    );
    for (c, t) in counters.windows(2).zip(times.windows(2)) {
        let ticks = u64::from(c[1] - c[0]);
        assert_eq!(
            t[1] - t[0],
            ticks * 20_000,
            "the timestamp gap is the sender's"
        );
    }
}

/// Opus frames of `tag` with a counter in `range` that peer `i` never received as RTP.
fn missing(sim: &Sim, i: usize, tag: u8, range: std::ops::Range<u32>) -> usize {
    range
        .filter(|c| !sim.peers[i].heard.contains(&(tag, *c)))
        .count()
}

#[test]
fn the_answer_offers_nack_for_opus_only_with_rtx() {
    let mut sim = Sim::new();
    let nack_line = |answer: &str| {
        answer
            .lines()
            .any(|l| l.trim_end() == format!("a=rtcp-fb:{OPUS_PT} nack"))
    };
    let rtx = Opts {
        rtx: true,
        ..Opts::default()
    };
    let nack_only = Opts {
        nack: true,
        ..Opts::default()
    };
    sim.join_opts(session(20), 1, ALL, true, 0, rtx);
    sim.join_opts(session(20), 2, ALL, true, 0, nack_only);
    sim.join(session(20), 3, ALL, true, 0);
    let answers: Vec<&str> = sim.peers.iter().map(|p| p.answer.as_str()).collect();
    assert!(nack_line(answers[0]), "{}", answers[0]);
    assert!(
        answers[0].contains(&format!("a=fmtp:{RTX_PT} apt={OPUS_PT}")),
        "RTX paired with Opus: {}",
        answers[0]
    );
    assert!(
        !nack_line(answers[1]),
        "NACK without RTX would go unanswered: {}",
        answers[1]
    );
    assert!(!nack_line(answers[2]), "not offered: {}", answers[2]);
    for a in &answers {
        assert!(!a.contains("nack pli") && !a.contains("ccm fir"), "{a}");
    }
}

/// Frames peer 1 sends while every 10th datagram to peer 2 is dropped: (first counter, end).
fn lossy_window(sim: &mut Sim) -> std::ops::Range<u32> {
    sim.run(Duration::from_secs(1));
    let start = sim.peers[0].ticks;
    sim.loss = Some((1, 10));
    sim.run(Duration::from_secs(4));
    let end = sim.peers[0].ticks;
    sim.loss = None;
    // Late retransmissions land.
    sim.run(Duration::from_millis(500));
    start..end
}

#[test]
fn nack_and_rtx_recover_what_the_network_lost_and_plain_opus_keeps_its_gaps() {
    let listen_only = Grants {
        publish: false,
        subscribe: true,
        admin: false,
        music_ctl: false,
    };
    let rtx = Opts {
        rtx: true,
        ..Opts::default()
    };
    let mut results = Vec::new();
    for opts in [rtx, Opts::default()] {
        let mut sim = Sim::new();
        sim.join(session(21), 1, ALL, true, 0);
        sim.join_opts(session(21), 2, listen_only, false, 1, opts);
        let window = lossy_window(&mut sim);
        let n = (window.end - window.start) as usize;
        // str0m reports each stream's NACKs and packets once a second.
        sim.run(Duration::from_secs(1));
        let stats = sim.shard.stats();
        results.push((n, missing(&sim, 1, 1, window), sim.peers[1].rtx_in, stats));
    }
    let [
        (n, rtx_missing, rtx_in, rtx_stats),
        (m, plain_missing, plain_rtx, plain_stats),
    ] = results[..]
    else {
        unreachable!()
    };
    assert!(n >= 190 && m == n, "4 s of frames: {n} and {m}");
    // Every 10th datagram lost: about n / 10 frames, each retransmitted (a lost retransmission is
    // asked for again).
    assert_eq!(rtx_missing, 0, "with RTX every frame arrives");
    assert!(
        (n / 10 - 2..=n / 10 + 5).contains(&rtx_in),
        "one retransmission per loss: {rtx_in} for {n} frames"
    );
    assert!(
        (n / 10 - 2..=n / 10).contains(&plain_missing),
        "without RTX the gaps stay: {plain_missing} of {n}"
    );
    assert_eq!(plain_rtx, 0);
    // The node's counters: a NACK per loss at least (a lost retransmission is asked for again),
    // and every retransmission it sent, the ones the network lost too.
    assert!(
        rtx_stats.nacks_received >= n as u64 / 10 - 2,
        "{rtx_stats:?}"
    );
    assert!(
        (rtx_in as u64..=rtx_in as u64 + 5).contains(&rtx_stats.rtp_retransmitted),
        "{rtx_in} received: {rtx_stats:?}"
    );
    // Retransmission needs str0m's send buffer: a NACK subscriber stays on str0m's path, the
    // plain one is on the fast path.
    assert_eq!(rtx_stats.rtp_forwarded_fast, 0, "{rtx_stats:?}");
    assert_eq!(
        plain_stats.rtp_forwarded_fast, plain_stats.rtp_forwarded,
        "{plain_stats:?}"
    );
    // A str0m client NACKs only a stream it knows an RTX SSRC for.
    assert_eq!(plain_stats.nacks_received, 0, "{plain_stats:?}");
    assert_eq!(plain_stats.rtp_retransmitted, 0, "{plain_stats:?}");
    assert_eq!(
        rtx_stats.rtp_lost + plain_stats.rtp_lost,
        0,
        "nothing lost upstream"
    );
}

#[test]
fn loss_from_a_publisher_is_counted_once_it_can_no_longer_arrive() {
    // Only loss the node cannot repair: str0m NACKs a publisher only for a stream whose offer
    // declares an RTX SSRC, and str0m as an offerer declares one only for video.
    let mut sim = Sim::new();
    sim.join(session(23), 1, ALL, true, 0);
    sim.join(session(23), 2, ALL, true, 0);
    sim.run(Duration::from_secs(1));
    let start = sim.peers[0].ticks;
    sim.uplink_loss = Some((0, 10));
    sim.run(Duration::from_secs(4));
    let end = sim.peers[0].ticks;
    sim.uplink_loss = None;
    let n = u64::from(end - start);
    let lost_while_lossy = sim.shard.stats().rtp_lost;
    // The last gaps leave the loss window (64 packets).
    sim.run(Duration::from_secs(2));
    let stats = sim.shard.stats();
    assert!(
        (n / 10 - 2..=n / 10 + 1).contains(&stats.rtp_lost),
        "every 10th of {n} packets: {stats:?}"
    );
    assert!(
        stats.rtp_lost - lost_while_lossy >= 2,
        "the gaps of the last 1.28 s count only once the stream is past them"
    );
    assert_eq!(
        missing(&sim, 1, 1, start..end) as u64,
        stats.rtp_lost,
        "the subscriber misses what the node lost"
    );
    assert_eq!(stats.nacks_received, 0, "{stats:?}");
}

#[test]
fn red_is_never_retransmitted_but_red_stripped_for_an_rtx_subscriber_is() {
    let listen_only = Grants {
        publish: false,
        subscribe: true,
        admin: false,
        music_ctl: false,
    };
    let red = Opts {
        red: true,
        ..Opts::default()
    };
    let mut results = Vec::new();
    for sub_red in [true, false] {
        let mut sim = Sim::new();
        sim.join_opts(session(22), 1, ALL, true, 0, red);
        let opts = Opts {
            red: sub_red,
            rtx: true,
            ..Opts::default()
        };
        sim.join_opts(session(22), 2, listen_only, false, 1, opts);
        assert!(
            sim.peers[1].answer.contains(&format!("apt={OPUS_PT}")),
            "{}",
            sim.peers[1].answer
        );
        let window = lossy_window(&mut sim);
        let n = (window.end - window.start) as usize;
        results.push((n, missing(&sim, 1, 1, window), sim.peers[1].rtx_in));
    }
    let [
        (n, red_missing, red_rtx),
        (_, stripped_missing, stripped_rtx),
    ] = results[..]
    else {
        unreachable!()
    };
    // RED carries its own redundancy: str0m does not keep RED packets for RTX (an RTX copy would
    // name Opus and carry RED bytes).
    assert_eq!(red_rtx, 0, "RED is not retransmitted");
    assert!(
        (n / 10 - 2..=n / 10).contains(&red_missing),
        "lost RED primaries stay lost: {red_missing} of {n}"
    );
    // Stripped to plain Opus for a subscriber without RED, it is retransmitted.
    assert!(stripped_rtx >= n / 10 - 2, "{stripped_rtx}");
    assert_eq!(stripped_missing, 0);
}

#[test]
fn keyframe_requests_reach_a_publisher_at_most_once_per_interval() {
    let listen_only = Grants {
        publish: false,
        subscribe: true,
        admin: false,
        music_ctl: false,
    };
    let keyframes = Opts {
        keyframes: true,
        ..Opts::default()
    };
    // Publisher 1 negotiated PLI and FIR for Opus, publisher 3 did not; 2 and 4 listen to them.
    let mut sim = Sim::new();
    sim.join_opts(session(24), 1, ALL, true, 0, keyframes);
    sim.join(session(24), 2, listen_only, false, 1);
    sim.join(session(25), 3, ALL, true, 0);
    sim.join(session(25), 4, listen_only, false, 1);
    assert!(
        sim.peers[0]
            .answer
            .contains(&format!("a=rtcp-fb:{OPUS_PT} nack pli"))
    );
    assert!(
        sim.peers[0]
            .answer
            .contains(&format!("a=rtcp-fb:{OPUS_PT} ccm fir"))
    );
    assert!(!sim.peers[2].answer.contains("nack pli"));
    sim.run(Duration::from_secs(1));
    // A burst: a request every 20 ms for 400 ms, PLI and FIR alternating.
    let burst = 20;
    for i in 0..burst {
        let kind = [KeyframeRequestKind::Pli, KeyframeRequestKind::Fir][i % 2];
        let now = sim.now;
        sim.peers[1].request_keyframe(now, kind);
        sim.peers[3].request_keyframe(now, kind);
        sim.run(FRAME);
    }
    let stats = sim.shard.stats();
    assert_eq!(
        stats.keyframe_requests_received,
        2 * burst as u64,
        "{stats:?}"
    );
    assert_eq!(sim.peers[0].keyframe_requests, 1, "one per 500 ms");
    assert_eq!(sim.peers[2].keyframe_requests, 0, "not negotiated");
    assert_eq!(stats.keyframe_requests_forwarded, 1, "{stats:?}");
    assert_eq!(stats.keyframe_requests_dropped, 2 * burst as u64 - 1);
    // Past the interval, the next request passes.
    sim.run(Duration::from_millis(100));
    let now = sim.now;
    sim.peers[1].request_keyframe(now, KeyframeRequestKind::Pli);
    sim.run(FRAME);
    assert_eq!(sim.peers[0].keyframe_requests, 2);
    assert_eq!(sim.shard.stats().keyframe_requests_forwarded, 2);
}

#[test]
fn a_join_that_disagrees_with_the_rooms_end_to_end_encryption_is_refused() {
    let e2ee = Opts {
        e2ee: true,
        ..Opts::default()
    };
    let mut sim = Sim::new();
    sim.join_opts(session(30), 1, ALL, true, 0, e2ee);
    sim.join_opts(session(30), 2, ALL, true, 0, e2ee);
    sim.join(session(31), 3, ALL, true, 0);
    sim.run(Duration::from_secs(1));
    let now = sim.now;
    let req = |session, e2ee| {
        let (_, offer, _) = Peer::offer(9, now, true, 0);
        JoinRequest {
            id: protocol::ParticipantId::from_uuid(Uuid::new_v4()),
            session,
            user: UserId::from_uuid(Uuid::from_u128(9)),
            grants: ALL,
            e2ee,
            offer,
            music: false,
        }
    };
    let (plain_into_e2ee, e2ee_into_plain) = (req(session(30), false), req(session(31), true));
    let err = sim.shard.join(sim.now, plain_into_e2ee).unwrap_err();
    assert_eq!(err, JoinError::E2eeMismatch { room: true });
    assert!(err.to_string().contains("end-to-end encrypted"), "{err}");
    assert_eq!(
        sim.shard.join(sim.now, e2ee_into_plain).unwrap_err(),
        JoinError::E2eeMismatch { room: false }
    );
    assert_eq!(sim.shard.participant_count(), 3, "nobody was added");
    let before = sim.peers[1].received.len();
    sim.run(Duration::from_secs(1));
    assert!(
        sim.peers[1].received.len() >= before + 45,
        "the encrypted call goes on"
    );
    // Once the room has closed, its next first joiner sets the flag anew.
    for key in [1, 2] {
        assert!(sim.shard.leave(key));
    }
    sim.deliver();
    assert!(!sim.shard.has_room(session(30)));
    assert!(sim.shard.join(sim.now, req(session(30), false)).is_ok());
}

#[test]
fn an_e2ee_room_forwards_payloads_as_they_came_and_red_only_to_red_subscribers() {
    let listen_only = Grants {
        publish: false,
        subscribe: true,
        admin: false,
        music_ctl: false,
    };
    let e2ee = Opts {
        e2ee: true,
        ..Opts::default()
    };
    let e2ee_red = Opts { red: true, ..e2ee };
    // 1 sends RED, 2 plain Opus; 3 understands RED, 4 does not.
    let mut sim = Sim::new();
    sim.join_opts(session(32), 1, ALL, true, 0, e2ee_red);
    sim.join_opts(session(32), 2, ALL, true, 0, e2ee);
    sim.join_opts(session(32), 3, listen_only, false, 2, e2ee_red);
    sim.join_opts(session(32), 4, listen_only, false, 2, e2ee);
    sim.run(Duration::from_secs(2));
    let mark: Vec<usize> = sim.peers.iter().map(|p| p.received.len()).collect();
    sim.run(Duration::from_secs(1));
    let heard = |i: usize, from: u8| {
        sim.peers[i].received[mark[i]..]
            .iter()
            .filter(|r| r.1 == from)
            .count()
    };
    assert!(heard(2, 1) >= 45 && heard(2, 2) >= 45, "RED and plain");
    assert!(heard(3, 2) >= 45, "plain Opus reaches everyone");
    assert_eq!(
        heard(3, 1),
        0,
        "RED is not stripped for a subscriber without it"
    );
    assert_eq!(heard(1, 1), 0, "nor for a publisher without it");
    assert!(heard(0, 2) >= 45);
    for p in &sim.peers {
        assert!(p.received.iter().all(|r| r.2 == 100), "payloads as sent");
    }
}

// ---- Music rooms ----

/// A track of `frames` frames whose frame k reads `[0xAA, k (4 bytes BE), …]`, like the peers'
/// own frames, so the peers' bookkeeping reads music too.
fn music_track(id: u128, frames: u32) -> media_plane::music::Track {
    use media_plane::music::{Encoded, Track};
    use protocol::music::MusicTrack;
    Track {
        info: MusicTrack {
            id: protocol::ids::AttachmentId::from_uuid(Uuid::from_u128(id)),
            name: format!("song{id}.mp3"),
            duration_ms: u64::from(frames) * 20,
        },
        audio: std::sync::Arc::new(Encoded {
            frames: (0..frames)
                .map(|k| {
                    let mut f = vec![0xAA; 80];
                    f[1..5].copy_from_slice(&k.to_be_bytes());
                    std::sync::Arc::from(f.as_slice())
                })
                .collect(),
        }),
    }
}

const MUSIC: Opts = Opts {
    red: false,
    nack: false,
    rtx: false,
    keyframes: false,
    e2ee: false,
    music: true,
};

fn last_music(p: &Peer) -> Option<&protocol::music::MusicState> {
    p.inbox.iter().rev().find_map(|m| match m {
        ServerMessage::Music(s) => Some(s),
        _ => None,
    })
}

fn music_events(sim: &Sim) -> Vec<(Option<protocol::ParticipantId>, protocol::music::MusicState)> {
    sim.events
        .iter()
        .filter_map(|e| match e {
            ShardEvent::Music {
                participant, state, ..
            } => Some((*participant, state.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn every_listener_hears_each_music_frame_at_the_same_moment_and_controls_take_effect() {
    use protocol::music::MusicAction;
    let mut sim = Sim::new();
    let room = session(40);
    let dj = Grants {
        music_ctl: true,
        ..ALL
    };
    let listener = Grants {
        publish: false,
        ..ALL
    };
    // The DJ also talks (one sendrecv m-line for the music, one recvonly for a voice); two
    // listeners have one receiving m-line each.
    sim.join_opts(room, 1, dj, false, 2, MUSIC);
    sim.join_opts(room, 2, listener, false, 1, MUSIC);
    sim.join_opts(room, 3, listener, false, 1, MUSIC);
    sim.run(Duration::from_secs(1));
    assert!(sim.peers.iter().all(|p| p.connected && p.control.is_some()));
    assert!(
        sim.peers.iter().all(|p| p.received.is_empty()),
        "silence so far"
    );

    // Nothing queued: play is refused on the data channel, queueing there is not allowed.
    sim.peers[0].send_control(sim.now, br#"{"type":"music","action":"play"}"#);
    sim.peers[0].send_control(
        sim.now,
        br#"{"type":"music","action":"queue","track":"00000000-0000-0000-0000-000000000001"}"#,
    );
    // A listener without the right may not.
    sim.peers[1].send_control(sim.now, br#"{"type":"music","action":"pause"}"#);
    sim.run(Duration::from_millis(100));
    let codes = |p: &Peer| -> Vec<ErrorCode> {
        p.inbox
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Error { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        codes(&sim.peers[0]),
        [ErrorCode::Conflict, ErrorCode::Forbidden]
    );
    assert_eq!(codes(&sim.peers[1]), [ErrorCode::Forbidden]);

    // A track queued (through the REST relay), then played from the data channel.
    let dj_user = UserId::from_uuid(Uuid::from_u128(1));
    let state = sim
        .shard
        .queue_track(sim.now, room, dj_user, music_track(7, 150))
        .unwrap();
    assert_eq!(state.current.as_ref().map(|t| t.duration_ms), Some(3_000));
    assert!(!state.playing);
    let played_at = sim.now;
    sim.peers[0].send_control(sim.now, br#"{"type":"music","action":"play"}"#);
    sim.run(Duration::from_secs(1));
    for p in &sim.peers {
        let s = last_music(p).expect("every member is told");
        assert!(s.playing && s.at_ms.is_none(), "{s:?}");
    }
    // Listeners hear frames 0, 1, 2, … on their one m-line, starting a lead after the play.
    let heard: Vec<Vec<u32>> = sim.peers.iter().map(|p| p.counters.clone()).collect();
    assert!(
        heard[1].len() >= 40,
        "{} frames in a second",
        heard[1].len()
    );
    for h in &heard {
        let n = h.len().min(heard[1].len());
        assert_eq!(
            h[..n],
            (0..n as u32).collect::<Vec<_>>()[..],
            "in order, none lost"
        );
    }
    assert!(
        sim.peers
            .iter()
            .all(|p| p.received.iter().all(|r| r.1 == 0xAA))
    );
    // The same frame reaches every listener at the same simulated instant, 20 ms apart,
    // and their media clocks agree on the spacing.
    let first = sim.peers[1].arrived[0];
    assert!(first - played_at >= media_plane::music::player::LEAD);
    for k in 0..40 {
        let at = sim.peers[1].arrived[k];
        assert_eq!(
            sim.peers[2].arrived[k], at,
            "frame {k} at once for both listeners"
        );
        assert_eq!(sim.peers[0].arrived[k], at, "and for the DJ");
        assert_eq!(at - first, FRAME * k as u32);
        for p in &sim.peers {
            assert_eq!(p.times[k] - p.times[0], 20_000 * k as u64);
        }
    }

    // Pause through the REST relay: silence; the state says where it stopped.
    let paused = sim
        .shard
        .music(sim.now, room, dj_user, &MusicAction::Pause {})
        .unwrap();
    assert!(!paused.playing);
    let before = sim.peers[1].counters.len();
    assert_eq!(paused.position_ms, before as u64 * 20);
    sim.run(Duration::from_secs(1));
    assert_eq!(sim.peers[1].counters.len(), before, "nothing while paused");

    // A late joiner hears from where the music is, not from the start.
    sim.join_opts(room, 4, listener, false, 1, MUSIC);
    sim.run(Duration::from_millis(500));
    sim.shard
        .music(sim.now, room, dj_user, &MusicAction::Play {})
        .unwrap();
    sim.run(Duration::from_millis(500));
    let late = &sim.peers[3].counters;
    assert_eq!(late.first().copied(), Some(before as u32), "{late:?}");
    assert_eq!(
        sim.peers[1].counters[before], before as u32,
        "the others resume where they stopped"
    );
    assert_eq!(
        sim.peers[3].arrived[0], sim.peers[1].arrived[before],
        "the late joiner hears it with the rest"
    );

    // Deafened: no music.
    let deaf_key = sim
        .events
        .iter()
        .find_map(|e| match e {
            ShardEvent::Joined {
                participant, user, ..
            } if *user == UserId::from_uuid(Uuid::from_u128(3)) => Some(*participant),
            _ => None,
        })
        .unwrap();
    sim.shard.set_mute(
        deaf_key,
        MuteChange {
            microphone: None,
            speaker: Some(true),
        },
    );
    let deaf_before = sim.peers[2].counters.len();
    sim.run(Duration::from_millis(500));
    assert_eq!(sim.peers[2].counters.len(), deaf_before);
    assert!(sim.peers[1].counters.len() > deaf_before + 20);

    // The track ends by itself: the music stops and everyone is told.
    sim.run(Duration::from_secs(3));
    assert_eq!(sim.peers[1].counters.last().copied(), Some(149));
    let end = last_music(&sim.peers[1]).unwrap();
    assert!(!end.playing && end.current.is_none(), "{end:?}");

    // The node was told of every change: the DJ's (with their participation), the relayed
    // ones (none), the track's end (as the last changer's).
    let events = music_events(&sim);
    let dj_id = sim.events.iter().find_map(|e| match e {
        ShardEvent::Joined { id, user, .. } if *user == dj_user => Some(*id),
        _ => None,
    });
    let who: Vec<(Option<protocol::ParticipantId>, bool)> =
        events.iter().map(|(p, s)| (*p, s.playing)).collect();
    assert_eq!(
        who,
        [
            (None, false), // queued
            (dj_id, true), // played on the data channel
            (None, false), // paused through the relay
            (None, true),  // played through the relay
            (None, false), // the track ended
        ]
    );
    assert!(sim.shard.stats().music_packets_out > 400);
    assert_eq!(
        sim.shard.stats().rtp_forwarded,
        0,
        "music is not forwarded voice"
    );
}

#[test]
fn in_a_music_room_voices_take_the_other_slots_and_the_music_keeps_the_first() {
    let mut sim = Sim::new();
    let room = session(41);
    let dj = Grants {
        music_ctl: true,
        ..ALL
    };
    // A talker; a listener with room for music and one voice; one with room for music only.
    sim.join_opts(room, 1, dj, true, 0, MUSIC);
    sim.join_opts(room, 2, ALL, false, 2, MUSIC);
    sim.join_opts(room, 3, ALL, false, 1, MUSIC);
    sim.run(Duration::from_secs(1));
    let dj_user = UserId::from_uuid(Uuid::from_u128(1));
    sim.shard
        .queue_track(sim.now, room, dj_user, music_track(1, 500))
        .unwrap();
    sim.shard
        .music(
            sim.now,
            room,
            dj_user,
            &protocol::music::MusicAction::Play {},
        )
        .unwrap();
    sim.run(Duration::from_secs(2));
    let mids = |p: &Peer, tag: u8| -> std::collections::BTreeSet<Mid> {
        p.received
            .iter()
            .filter(|r| r.1 == tag)
            .map(|r| r.0)
            .collect()
    };
    let two = &sim.peers[1];
    let (music, voice) = (mids(two, 0xAA), mids(two, 1));
    assert_eq!(music.len(), 1, "music on one m-line");
    assert_eq!(voice.len(), 1, "the voice on another");
    assert!(music.is_disjoint(&voice));
    let one = &sim.peers[2];
    assert_eq!(mids(one, 0xAA).len(), 1);
    assert!(
        mids(one, 1).is_empty(),
        "the music is never displaced by a voice"
    );
    // The talker hears the music on its only m-line too, not itself.
    assert!(mids(&sim.peers[0], 1).is_empty());
    assert_eq!(mids(&sim.peers[0], 0xAA).len(), 1);
}

#[test]
fn music_is_refused_where_it_cannot_play_and_leaves_with_the_room() {
    let mut sim = Sim::new();
    let user = UserId::from_uuid(Uuid::from_u128(1));
    let play = protocol::music::MusicAction::Play {};
    // Nobody there.
    assert_eq!(
        sim.shard.music(sim.now, session(50), user, &play),
        Err(media_plane::shard::MusicRefusal::NoRoom)
    );
    // A voice room has no music.
    sim.join(session(51), 1, ALL, true, 0);
    assert_eq!(
        sim.shard.music(sim.now, session(51), user, &play),
        Err(media_plane::shard::MusicRefusal::NotMusic)
    );
    // An end-to-end encrypted music room cannot carry the server's music.
    let e2ee = Opts {
        e2ee: true,
        ..MUSIC
    };
    sim.join_opts(session(52), 2, ALL, false, 1, e2ee);
    assert_eq!(
        sim.shard
            .queue_track(sim.now, session(52), user, music_track(1, 5)),
        Err(media_plane::shard::MusicRefusal::Encrypted)
    );
    // The queue goes with the room: the last one out is reported as ending the music.
    let k = sim.join_opts(session(53), 3, ALL, false, 1, MUSIC);
    sim.shard
        .queue_track(sim.now, session(53), user, music_track(1, 5))
        .unwrap();
    sim.run(Duration::from_millis(200));
    assert!(sim.shard.leave(k));
    sim.deliver();
    let (last_by, last) = music_events(&sim).pop().unwrap();
    assert_eq!(last, protocol::music::MusicState::default());
    assert!(last_by.is_some());
    assert!(!sim.shard.has_room(session(53)));
}
