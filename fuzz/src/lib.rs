//! Support code for Convoy's fuzz targets: a [`Shard`] with one str0m client connected to it
//! (ICE + DTLS done) in simulated time, over an in-memory network.
//!
//! The harness reads no clock except once for its epoch and opens no socket. It tolerates
//! anything the client's `Rtc` reports (errors after fuzzed input are not our bugs to find here)
//! and says when it needs to be rebuilt; it must never panic on what the shard does, so that a
//! panic in a target is always a finding in the code under test.

use media_plane::{Grants, JoinRequest, Shard, ShardConfig, ShardEvent};
use protocol::{SessionId, UserId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc};
use uuid::Uuid;

/// The shard's advertised address.
pub const SERVER: &str = "127.0.0.1:40000";
/// The client's address.
pub const CLIENT: &str = "127.0.0.1:5000";

/// The shard every target uses: index 0, seed 1.
pub fn shard(now: Instant) -> Shard {
    Shard::new(ShardConfig::new(0, parse(SERVER), 1), now).expect("a shard can be built")
}

/// A join request for `offer` into session 1, with every grant.
pub fn join_request(offer: String) -> JoinRequest {
    JoinRequest {
        id: protocol::ParticipantId::from_uuid(Uuid::new_v4()),
        session: SessionId::from_uuid(Uuid::from_u128(1)),
        user: UserId::from_uuid(Uuid::from_u128(1)),
        grants: Grants {
            publish: true,
            subscribe: true,
            admin: false,
            music_ctl: false,
        },
        e2ee: false,
        offer,
        music: false,
    }
}

/// A str0m client at [`CLIENT`] offering one sendrecv Opus m-line, as a browser's WHIP client would.
pub fn client_offer(now: Instant) -> (Rtc, String, SdpPendingOffer) {
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_opus(true, false)
        .build(now);
    let candidate = Candidate::host(parse(CLIENT), "udp").expect("a host candidate");
    rtc.add_local_candidate(candidate);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = api.apply().expect("an offer");
    (rtc, offer.to_sdp_string(), pending)
}

fn parse(s: &str) -> SocketAddr {
    s.parse().expect("a literal socket address")
}

/// A shard with one joined, connected participant and its client.
#[derive(Debug)]
pub struct Rig {
    /// Simulated time.
    pub now: Instant,
    pub shard: Shard,
    client: Rtc,
    client_deadline: Instant,
    /// Datagrams the client sent to the shard, not yet delivered.
    outbox: Vec<Vec<u8>>,
    /// Every datagram the client sent to the shard, in order (for seed corpora).
    pub sent_log: Vec<Vec<u8>>,
    connected: bool,
    broken: bool,
}

impl Rig {
    /// Builds the shard and the client, joins, and runs simulated time until the participant is
    /// connected. Panics if it cannot connect: that is a harness bug, not a finding.
    pub fn connected() -> Self {
        let mut rig = Self::joined();
        let deadline = rig.now + Duration::from_secs(10);
        while !rig.connected && rig.now < deadline {
            rig.advance(Duration::from_millis(10));
        }
        assert!(rig.connected, "the rig's client connects to the shard");
        rig
    }

    /// Builds the shard and the client and joins, without running any time.
    pub fn joined() -> Self {
        let now = Instant::now();
        let mut shard = shard(now);
        let (mut client, offer, pending) = client_offer(now);
        let joined = shard
            .join(now, join_request(offer))
            .expect("a str0m offer is accepted");
        let answer = SdpAnswer::from_sdp_string(&joined.answer).expect("the answer parses");
        client
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("the client accepts the answer");
        let mut rig = Rig {
            now,
            shard,
            client,
            client_deadline: now,
            outbox: Vec::new(),
            sent_log: Vec::new(),
            connected: false,
            broken: false,
        };
        rig.drain_client();
        rig
    }

    /// The address the shard learned for the participant.
    pub fn client_addr(&self) -> SocketAddr {
        parse(CLIENT)
    }

    /// Whether the participant is still connected and the client alive; if not, rebuild.
    pub fn healthy(&self) -> bool {
        self.connected && !self.broken && self.client.is_alive()
    }

    /// Feeds one datagram to the shard as if received from `source`, then lets the network settle.
    pub fn feed(&mut self, source: SocketAddr, bytes: &[u8]) {
        self.shard.handle_datagram(self.now, source, bytes);
        self.settle();
    }

    /// Runs simulated time forward by `d`, handling every deadline on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        let mut stuck = 0;
        loop {
            self.settle();
            let next = self
                .shard
                .poll_timeout()
                .min(self.client_deadline)
                .min(end)
                .max(self.now);
            // A deadline that stays in the past after being handled is a busy loop in the runtime.
            stuck = if next == self.now { stuck + 1 } else { 0 };
            assert!(
                stuck < 1000,
                "time does not advance: shard wants {:?}, client wants {:?}, now {:?}",
                self.shard.poll_timeout(),
                self.client_deadline,
                self.now
            );
            self.now = next;
            self.shard.handle_timeout(self.now);
            if self.client_deadline <= self.now && !self.broken {
                // An error here is the client's business; the shard is what we test.
                let _ = self.client.handle_input(Input::Timeout(self.now));
                self.drain_client();
            }
            if self.now >= end {
                break;
            }
        }
        self.settle();
    }

    /// Delivers datagrams both ways until the network is quiet.
    fn settle(&mut self) {
        let server = parse(SERVER);
        let client = parse(CLIENT);
        loop {
            let mut moved = false;
            for bytes in std::mem::take(&mut self.outbox) {
                moved = true;
                self.shard.handle_datagram(self.now, client, &bytes);
            }
            while let Some(d) = self.shard.poll_transmit() {
                moved = true;
                if d.destination != client || self.broken {
                    continue;
                }
                if let Ok(r) = Receive::new(Protocol::Udp, server, client, &d.contents) {
                    let _ = self.client.handle_input(Input::Receive(self.now, r));
                    self.drain_client();
                }
            }
            while let Some(e) = self.shard.poll_event() {
                match e {
                    ShardEvent::Connected { .. } => self.connected = true,
                    ShardEvent::Left { .. } => self.broken = true,
                    _ => {}
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn drain_client(&mut self) {
        let server = parse(SERVER);
        loop {
            match self.client.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.client_deadline = t;
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    if t.destination == server {
                        let bytes: Vec<u8> = t.contents.into();
                        self.sent_log.push(bytes.clone());
                        self.outbox.push(bytes);
                    }
                }
                Ok(Output::Event(_)) => {}
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
    }
}
