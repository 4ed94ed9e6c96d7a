//! Support code for Convoy's benchmarks (`benches/hot_path.rs`).
//!
//! [`SimRoom`] is one room on a sans-IO [`Shard`] with str0m clients attached through an
//! in-memory network under simulated time: one publisher and N subscribers, connected (ICE +
//! DTLS) before the caller measures anything. It separates the work a benchmark wants to time
//! (the shard taking in one SRTP datagram and forwarding it, [`SimRoom::forward`]) from the work
//! it must not (the clients encrypting, decrypting and keeping their connections alive,
//! [`SimRoom::publish`]).
//!
//! Like the simulation tests it is modelled on (`media-plane/tests/media/sim.rs`), it reads the
//! clock once for its epoch and never again, opens no socket and never sleeps.

use media_plane::{Grants, JoinRequest, Shard, ShardConfig};
use protocol::{SessionId, UserId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use uuid::Uuid;

/// The shard's advertised address.
const SERVER: &str = "127.0.0.1:40000";
/// One Opus frame.
const FRAME: Duration = Duration::from_millis(20);

fn server() -> SocketAddr {
    SERVER.parse().expect("a literal socket address")
}

/// A str0m client of the room: a browser's stand-in.
#[derive(Debug)]
struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    /// The m-line it publishes on, if it publishes.
    send_mid: Option<Mid>,
    deadline: Instant,
    connected: bool,
    /// Datagrams to the shard, not yet delivered.
    outbox: Vec<Vec<u8>>,
}

impl Client {
    /// Joins `shard` as client number `n`: a publisher offers one sendrecv audio m-line, a
    /// subscriber one recvonly m-line.
    fn join(shard: &mut Shard, now: Instant, n: u32, publisher: bool) -> Self {
        let addr = SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 5000));
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("a host candidate"));
        let mut api = rtc.sdp_api();
        let direction = if publisher {
            Direction::SendRecv
        } else {
            Direction::RecvOnly
        };
        let mid = api.add_media(MediaKind::Audio, direction, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        let joined = shard
            .join(
                now,
                JoinRequest {
                    id: protocol::ParticipantId::from_uuid(Uuid::new_v4()),
                    session: SessionId::from_uuid(Uuid::from_u128(1)),
                    user: UserId::from_uuid(Uuid::from_u128(u128::from(n))),
                    grants: Grants {
                        publish: publisher,
                        subscribe: true,
                        admin: false,
                        music_ctl: false,
                    },
                    e2ee: false,
                    offer: offer.to_sdp_string(),
                    music: false,
                },
            )
            .expect("the shard accepts a str0m offer");
        let answer = SdpAnswer::from_sdp_string(&joined.answer).expect("the answer parses");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("the client accepts the answer");
        let mut client = Client {
            rtc,
            addr,
            send_mid: publisher.then_some(mid),
            deadline: now,
            connected: false,
            outbox: Vec::new(),
        };
        client.drain();
        client
    }

    /// Polls the client until it asks for a timeout.
    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output().expect("a client never fails") {
                Output::Timeout(t) => {
                    self.deadline = t;
                    break;
                }
                Output::Transmit(t) => {
                    if t.destination == server() {
                        self.outbox.push(t.contents.into());
                    }
                }
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(_) => {}
            }
        }
    }

    fn receive(&mut self, now: Instant, bytes: &[u8]) {
        let r = Receive::new(Protocol::Udp, server(), self.addr, bytes).expect("a datagram");
        self.rtc
            .handle_input(Input::Receive(now, r))
            .expect("the client takes the shard's datagrams");
        self.drain();
    }
}

/// One room on a [`Shard`]: a publisher and some subscribers, all connected.
#[derive(Debug)]
pub struct SimRoom {
    now: Instant,
    shard: Shard,
    publisher: Client,
    subscribers: Vec<Client>,
    /// Frames the publisher has written.
    frames: u64,
}

impl SimRoom {
    /// A room with one publisher and `subscribers` listeners, run in simulated time until every
    /// client is connected. Panics if they do not connect within 10 simulated seconds.
    pub fn new(subscribers: usize) -> Self {
        let now = Instant::now();
        let mut shard = Shard::new(ShardConfig::new(0, server(), 1), now).expect("a shard");
        let publisher = Client::join(&mut shard, now, 1, true);
        let subscribers = (0..subscribers)
            .map(|i| Client::join(&mut shard, now, 2 + i as u32, false))
            .collect();
        let mut room = SimRoom {
            now,
            shard,
            publisher,
            subscribers,
            frames: 0,
        };
        let deadline = now + Duration::from_secs(10);
        while !room.all_connected() {
            assert!(room.now < deadline, "clients connect to the shard");
            room.advance(Duration::from_millis(10));
        }
        room
    }

    /// The first datagram a str0m client sends to the shard after joining: a STUN binding
    /// request with `USERNAME`, `ICE-CONTROLLING`, `PRIORITY`, `MESSAGE-INTEGRITY`, `FINGERPRINT`.
    pub fn binding_request() -> Vec<u8> {
        let now = Instant::now();
        let mut shard = Shard::new(ShardConfig::new(0, server(), 1), now).expect("a shard");
        let mut client = Client::join(&mut shard, now, 1, true);
        client.rtc.handle_input(Input::Timeout(now)).expect("time");
        client.drain();
        client
            .outbox
            .into_iter()
            .find(|d| media_plane::stun::local_ufrag(d).is_some())
            .expect("the client sends a binding request")
    }

    /// Number of subscribers.
    pub fn subscribers(&self) -> usize {
        self.subscribers.len()
    }

    /// The shard.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// Runs the room for one frame time (delivering everything on the way), then has the
    /// publisher write one Opus frame of `payload_len` bytes; returns the SRTP datagram that
    /// carries it, not yet delivered to the shard. Nothing of this is the shard's forwarding work.
    pub fn publish(&mut self, payload_len: usize) -> Vec<u8> {
        self.advance(FRAME);
        let mid = self
            .publisher
            .send_mid
            .expect("the publisher has an m-line");
        let writer = self.publisher.rtc.writer(mid).expect("a writer");
        let pt = writer
            .payload_params()
            .next()
            .expect("Opus was negotiated")
            .pt();
        let media_time = MediaTime::from_millis(self.frames * 20);
        let mut payload = vec![0x5a; payload_len];
        payload[..8.min(payload_len)]
            .copy_from_slice(&self.frames.to_be_bytes()[..8.min(payload_len)]);
        // A speaking publisher (RFC 6464 level -20 dBov): rooms above six forward only speakers.
        writer
            .audio_level(-20, true)
            .write(pt, self.now, media_time, payload)
            .expect("the publisher writes");
        self.frames += 1;
        self.publisher.drain();
        // str0m queues written media and sends it when next driven: give it the current time.
        if !self.publisher.outbox.iter().any(|d| is_rtp(d)) {
            self.publisher
                .rtc
                .handle_input(Input::Timeout(self.now))
                .expect("time");
            self.publisher.drain();
        }
        // RTCP and STUN are the clients' upkeep: deliver them now. The RTP packet is returned.
        let mut rtp = None;
        for d in std::mem::take(&mut self.publisher.outbox) {
            if is_rtp(&d) && rtp.is_none() {
                rtp = Some(d);
            } else {
                self.shard
                    .handle_datagram(self.now, self.publisher.addr, &d);
            }
        }
        self.settle();
        rtp.expect("the publisher sent the frame")
    }

    /// The shard's work for one published packet, as the runtime does it: takes in `datagram`
    /// from the publisher, then runs the timeout it asks for at the same instant (str0m queues a
    /// forwarded packet in the subscriber's `Rtc` and emits it when driven by a timeout), then
    /// drains what is to be sent. Returns the number of SRTP packets that came out (encrypted,
    /// ready for the socket); they are dropped, not delivered (subscribers need not decrypt them
    /// to stay connected).
    /// Publishes and forwards frames until the shard forwards to every subscriber (in a room
    /// above six, once the publisher ranks as a speaker after the first 100 ms speaker tick) or
    /// half a second passed. Returns the packets out for the last frame.
    pub fn warm_up(&mut self, payload_len: usize) -> u64 {
        let mut out = 0;
        for _ in 0..25 {
            let frame = self.publish(payload_len);
            out = self.forward(&frame);
            if out == self.subscribers.len() as u64 {
                break;
            }
        }
        out
    }

    /// The shard's counters (how many forwarded packets took the fast path, say).
    pub fn stats(&self) -> media_plane::shard::ShardStats {
        self.shard.stats()
    }

    pub fn forward(&mut self, datagram: &[u8]) -> u64 {
        self.shard
            .handle_datagram(self.now, self.publisher.addr, datagram);
        if self.shard.poll_timeout() <= self.now {
            self.shard.handle_timeout(self.now);
        }
        let mut out = 0;
        while let Some(d) = self.shard.poll_transmit() {
            out += u64::from(is_rtp(&d.contents));
            std::hint::black_box(d);
        }
        out
    }

    fn all_connected(&self) -> bool {
        self.publisher.connected && self.subscribers.iter().all(|c| c.connected)
    }

    fn clients(&mut self) -> impl Iterator<Item = &mut Client> {
        std::iter::once(&mut self.publisher).chain(self.subscribers.iter_mut())
    }

    /// Runs simulated time forward by `d`, handling every deadline and delivering every datagram.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.settle();
            let mut next = self.shard.poll_timeout().min(end);
            for c in self.clients() {
                next = next.min(c.deadline);
            }
            self.now = next.max(self.now);
            let now = self.now;
            self.shard.handle_timeout(now);
            for c in self.clients() {
                if c.deadline <= now {
                    c.rtc.handle_input(Input::Timeout(now)).expect("time");
                    c.drain();
                }
            }
            if now >= end {
                break;
            }
        }
        self.settle();
    }

    /// Delivers datagrams both ways until the network is quiet.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            let now = self.now;
            for i in 0..=self.subscribers.len() {
                let c = if i == 0 {
                    &mut self.publisher
                } else {
                    &mut self.subscribers[i - 1]
                };
                for d in std::mem::take(&mut c.outbox) {
                    moved = true;
                    self.shard.handle_datagram(now, c.addr, &d);
                }
            }
            while let Some(d) = self.shard.poll_transmit() {
                moved = true;
                if let Some(c) = self.clients().find(|c| c.addr == d.destination) {
                    c.receive(now, &d.contents);
                }
            }
            while self.shard.poll_event().is_some() {}
            if !moved {
                break;
            }
        }
    }
}

/// Whether a datagram is RTP rather than RTCP (RFC 5761: RTCP packet types 192..=223), STUN or
/// DTLS (RFC 7983: first byte 128..=191).
fn is_rtp(d: &[u8]) -> bool {
    matches!(d, [128..=191, pt, ..] if !(192..=223).contains(pt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_room_forwards_to_every_subscriber_small_and_large() {
        for n in [1, 10] {
            let mut room = SimRoom::new(n);
            assert_eq!(room.warm_up(120), n as u64, "{n} subscribers");
            let frame = room.publish(120);
            assert_eq!(room.forward(&frame), n as u64);
        }
    }
}
