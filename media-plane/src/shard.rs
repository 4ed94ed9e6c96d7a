//! The sans-IO core of one CPU core: its rooms, their participants, demultiplexing and forwarding.
//!
//! A [`Shard`] owns no socket, thread or clock. Inputs carry `now`; outputs are datagrams to send
//! ([`Shard::poll_transmit`]), events ([`Shard::poll_event`]) and the next instant it wants to be
//! woken ([`Shard::poll_timeout`]). The glommio runtime (`runtime.rs`) is a thin shell around it and
//! tests drive it with simulated time and in-memory peers.
//!
//! Demultiplexing is O(1): a STUN binding request names the participant by the local ICE ufrag we
//! minted for it; every other datagram is looked up by its source address, learned from a STUN
//! request that str0m accepted. Only participants whose deadline passed are polled on a timeout.
//!
//! str0m's rule holds everywhere: every mutation of an `Rtc` is followed by a full drain of
//! `poll_output` before the next one.

mod control;
pub(crate) mod fast;
pub mod keyframe;
mod music;

pub use music::{MUSIC_SOURCE, MusicRefusal};
pub(crate) mod loss;
pub mod ratelimit;

use crate::forwarder::{DownSlot, SourceKey};
use crate::participant::{Grants, LeaveReason, MuteChange, Participant, ParticipantKey};
use crate::red;
use crate::room::Room;
use crate::speakers::{Speaker, SpeakerConfig};
use crate::stun;
use keyframe::KeyframeThrottle;
use loss::{EgressCounts, LossCounter};
use protocol::room::CONTROL_LABEL;
use protocol::{ParticipantId, SessionId, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratelimit::ControlBudget;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::SdpOffer;
use str0m::config::DtlsCert;
use str0m::format::{Codec, CodecConfig, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};

/// A participant that has not completed ICE + DTLS by then is removed.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many m-lines in an offer; more is refused as abuse.
pub const MAX_MEDIA_LINES: usize = 16;
/// Source addresses remembered per participant (ICE may move between a few).
pub const MAX_ADDRS_PER_PARTICIPANT: usize = 8;
/// Incoming streams (SSRCs) whose loss is tracked per participant.
pub const MAX_STREAMS_PER_PARTICIPANT: usize = 4;
/// Period of the housekeeping pass (join timeouts).
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often str0m reports each connection's stream statistics (NACKs, retransmissions).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// How a shard is set up.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Index of the core this shard runs on; part of every ufrag it mints.
    pub index: u16,
    /// The address advertised in ICE candidates; received datagrams are addressed to it.
    pub advertised: SocketAddr,
    /// Seed of the shard's RNG (ufrags, ICE passwords, initial sequence numbers).
    pub seed: u64,
    /// How active speakers are detected.
    pub speakers: SpeakerConfig,
    /// Rooms with more participants than this forward only the `top_n` loudest speakers to each
    /// listener.
    pub top_n_above: usize,
    /// Speakers each listener receives in a large room.
    pub top_n: usize,
    /// A publisher is sent at most one keyframe request (PLI, FIR) per interval, however many
    /// subscribers ask.
    pub keyframe_interval: Duration,
}

impl ShardConfig {
    /// Defaults: rooms above 6 participants forward the 3 loudest speakers.
    pub fn new(index: u16, advertised: SocketAddr, seed: u64) -> Self {
        Self {
            index,
            advertised,
            seed,
            speakers: SpeakerConfig::default(),
            top_n_above: 6,
            top_n: 3,
            keyframe_interval: keyframe::KEYFRAME_INTERVAL,
        }
    }
}

/// A request to join a room on this shard (already authorised by the caller).
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The participation's id, minted by the caller (the WHIP resource id).
    pub id: ParticipantId,
    pub session: SessionId,
    pub user: UserId,
    pub grants: Grants,
    /// The session is end-to-end encrypted (from the join token). The first joiner sets the
    /// room's flag; a join that disagrees with it is refused.
    pub e2ee: bool,
    /// The SDP offer of the WHIP POST.
    pub offer: String,
    /// The session is a music session (from the join token's `kind`): its room has music, which
    /// each participant receives on its first receiving m-line.
    pub music: bool,
}

/// A successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub participant: ParticipantKey,
    /// The SDP answer, with our only candidate in it.
    pub answer: String,
}

/// Why a join was refused. Messages are safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the SDP offer could not be parsed")]
    MalformedOffer,
    #[error("the SDP offer was refused: {0}")]
    RefusedOffer(String),
    #[error("the SDP offer has no audio m-line")]
    NoAudio,
    #[error("the SDP offer has more than {MAX_MEDIA_LINES} m-lines")]
    TooManyMediaLines,
    #[error("{}", e2ee_mismatch(*room))]
    E2eeMismatch {
        /// The room's flag.
        room: bool,
    },
    #[error("the shard cannot create a connection: {0}")]
    Internal(String),
}

fn e2ee_mismatch(room: bool) -> &'static str {
    if room {
        "the room is end-to-end encrypted and the join token is not"
    } else {
        "the join token is end-to-end encrypted and the room is not"
    }
}

/// Something that happened on the shard, for the node to report.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardEvent {
    Joined {
        session: SessionId,
        participant: ParticipantKey,
        id: ParticipantId,
        user: UserId,
    },
    Connected {
        session: SessionId,
        participant: ParticipantKey,
    },
    Left {
        session: SessionId,
        participant: ParticipantKey,
        id: ParticipantId,
        user: UserId,
        reason: LeaveReason,
    },
    RoomClosed {
        session: SessionId,
    },
    /// A participant's mute state changed.
    Muted {
        session: SessionId,
        participant: ParticipantKey,
        id: ParticipantId,
        user: UserId,
        microphone: bool,
        speaker: bool,
    },
    /// The room's active speakers changed (loudest first).
    Speakers {
        session: SessionId,
        speakers: Vec<Speaker>,
    },
    /// The room's music changed: by a member (on the data channel, or `participant` is `None`
    /// through the REST API), or a track ended (reported as the last changer's).
    Music {
        session: SessionId,
        user: UserId,
        participant: Option<ParticipantId>,
        state: protocol::music::MusicState,
        /// When `state.position_ms` holds.
        at: Instant,
    },
}

/// A datagram to send from the shard's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// Counters of a shard, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Datagrams no participant claimed (unknown ufrag or source address).
    pub unclaimed: u64,
    /// Datagrams that could not be parsed or that str0m refused.
    pub malformed: u64,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    /// Of those, sealed by the fast path rather than str0m (`shard/fast.rs`).
    pub rtp_forwarded_fast: u64,
    /// NACK feedback packets received from subscribers.
    pub nacks_received: u64,
    /// Packets retransmitted to subscribers (RTX), as of str0m's last stats report.
    pub rtp_retransmitted: u64,
    /// Packets publishers sent that never reached us (see `LossCounter`).
    pub rtp_lost: u64,
    /// Keyframe requests (PLI or FIR) received from subscribers.
    pub keyframe_requests_received: u64,
    /// Keyframe requests relayed to a publisher.
    pub keyframe_requests_forwarded: u64,
    /// Keyframe requests not relayed: within the publisher's interval, for a slot carrying no
    /// one, or for a publisher that did not negotiate that kind of request.
    pub keyframe_requests_dropped: u64,
    /// Room-control messages dropped because their sender was over its budget.
    pub control_rate_limited: u64,
    /// Music packets sent to listeners.
    pub music_packets_out: u64,
    /// Music frames skipped because the core got to them too late.
    pub music_frames_skipped: u64,
}

/// The RTCP feedback for Opus we answer: what the offer asks for, as far as we can honour it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct OpusFeedback {
    /// Generic NACK (RFC 4585), answered by retransmission over RTX (RFC 4588).
    nack: bool,
    /// Picture loss indication and full intra request: meaningless for Opus, but answered when
    /// offered, so that a publisher that asks for them gets subscribers' requests relayed
    /// (throttled) like any codec's; the path is ready for video.
    pli: bool,
    fir: bool,
}

impl OpusFeedback {
    /// What to answer for Opus, from every Opus payload type of the offer's enabled m-lines
    /// (str0m negotiates one set of parameters per codec, so all of them must agree).
    ///
    /// NACK is answered only when the offer also pairs an `rtx` payload type (`apt=<opus>`) with
    /// Opus: str0m 0.25 resends only over RTX (it does not even keep sent packets without an RTX
    /// payload type) and adopts the RTX type the offer pairs with Opus. Answering `nack` without
    /// it would promise retransmissions that never come. Browsers offer neither NACK nor RTX for
    /// audio today; resending on the main SSRC (in band, which is what they would need) is str0m
    /// PR #980, not in a release yet.
    fn of(offer: &SdpOffer) -> Self {
        // The parsed offer is reachable through `SdpOffer`'s `Deref` (str0m does not name the
        // type); its m-lines give the payload parameters as the peer wrote them.
        let opus: Vec<PayloadParams> = offer
            .media_lines
            .iter()
            .filter(|m| !m.disabled)
            .flat_map(|m| m.rtp_params())
            .filter(|p| p.spec().codec == Codec::Opus)
            .collect();
        let all = |f: fn(&PayloadParams) -> bool| !opus.is_empty() && opus.iter().all(f);
        Self {
            nack: all(|p| p.fb_nack() && p.resend().is_some()),
            pli: all(PayloadParams::fb_pli),
            fir: all(PayloadParams::fb_fir),
        }
    }
}

/// The sans-IO core of one CPU core.
#[derive(Debug)]
pub struct Shard {
    config: ShardConfig,
    rng: StdRng,
    dtls_cert: DtlsCert,
    next_key: ParticipantKey,
    participants: HashMap<ParticipantKey, Participant>,
    rooms: HashMap<SessionId, Room>,
    by_ufrag: HashMap<Vec<u8>, ParticipantKey>,
    by_addr: HashMap<SocketAddr, ParticipantKey>,
    timers: BinaryHeap<Reverse<(Instant, ParticipantKey)>>,
    housekeeping_at: Instant,
    speakers_at: Instant,
    transmits: VecDeque<Datagram>,
    events: VecDeque<ShardEvent>,
    forwards: VecDeque<(ParticipantKey, RtpPacket)>,
    /// Participants whose control channel just opened.
    control_opened: VecDeque<ParticipantKey>,
    /// Control messages received, to handle after the current drain.
    control_in: VecDeque<(ParticipantKey, Vec<u8>)>,
    /// Keyframe requests from subscribers: (publisher, its SSRC, kind), or `None` for a request
    /// about a slot that carries no one.
    keyframes_in: VecDeque<Option<(SourceKey, KeyframeRequestKind)>>,
    /// Participants marked as leaving, removed at the end of the current input.
    to_reap: Vec<ParticipantKey>,
    scratch: Vec<ParticipantKey>,
    fanout: Vec<ParticipantKey>,
    /// The earliest music frame due in any room.
    music_due: Option<Instant>,
    /// The latest `now` given, for what happens without one (a leave).
    last_now: Instant,
    stats: ShardStats,
}

impl Shard {
    /// A shard with no rooms. Generates the DTLS certificate all its connections share.
    pub fn new(config: ShardConfig, now: Instant) -> Result<Self, JoinError> {
        let provider = str0m::crypto::from_feature_flags();
        let dtls_cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| JoinError::Internal("no DTLS certificate".into()))?;
        provider.install_process_default();
        let speakers_at = now + config.speakers.interval;
        Ok(Self {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            dtls_cert,
            next_key: 1,
            participants: HashMap::new(),
            rooms: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            timers: BinaryHeap::new(),
            housekeeping_at: now + HOUSEKEEPING,
            speakers_at,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            forwards: VecDeque::new(),
            control_opened: VecDeque::new(),
            control_in: VecDeque::new(),
            keyframes_in: VecDeque::new(),
            to_reap: Vec::new(),
            scratch: Vec::new(),
            fanout: Vec::new(),
            music_due: None,
            last_now: now,
            stats: ShardStats::default(),
        })
    }

    /// The shard's configuration.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// Number of rooms on this shard.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Number of participants on this shard.
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// Whether this shard hosts the room of `session`.
    pub fn has_room(&self, session: SessionId) -> bool {
        self.rooms.contains_key(&session)
    }

    /// Counters since the shard started.
    pub fn stats(&self) -> ShardStats {
        self.stats
    }

    /// Adds a participant to the room of `req.session` (creating the room), answering its offer.
    pub fn join(&mut self, now: Instant, req: JoinRequest) -> Result<Joined, JoinError> {
        self.last_now = now;
        if let Some(room) = self.rooms.get(&req.session)
            && room.e2ee != req.e2ee
        {
            return Err(JoinError::E2eeMismatch { room: room.e2ee });
        }
        let offer = SdpOffer::from_sdp_string(&req.offer).map_err(|_| JoinError::MalformedOffer)?;
        let m_lines = req.offer.lines().filter(|l| l.starts_with("m=")).count();
        if m_lines > MAX_MEDIA_LINES {
            return Err(JoinError::TooManyMediaLines);
        }
        let key = self.next_key;
        self.next_key += 1;
        let ufrag = format!(
            "{:04x}{:012x}",
            self.config.index,
            self.rng.r#gen::<u64>() >> 16
        );
        let pass: String = (0..24)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[self.rng.gen_range(0..36)]))
            .collect();
        let mut config = Rtc::builder()
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .set_stats_interval(Some(STATS_INTERVAL))
            .clear_codecs()
            .enable_opus(true, true)
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass,
            })
            .set_dtls_cert(self.dtls_cert.clone())
            // str0m's provider, with the DTLS export copied for the fast path.
            .set_crypto_provider(rtp_fast::capture::crypto_provider());
        // Answer only the Opus feedback the offer asks for and we can honour (see
        // `OpusFeedback::of`): str0m writes our local flags into the answer as they are.
        // Parsed with str0m's own code, which accept_offer runs anyway; guarded the same way.
        let feedback =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| OpusFeedback::of(&offer)))
                .map_err(|_| JoinError::RefusedOffer("the offer could not be negotiated".into()))?;
        let params = config
            .codec_config()
            .params()
            .iter()
            .cloned()
            .map(|mut p| {
                if p.spec().codec == Codec::Opus {
                    p.set_fb_nack(feedback.nack);
                    p.set_fb_pli(feedback.pli);
                    p.set_fb_fir(feedback.fir);
                }
                p
            })
            .collect();
        *config.codec_config() = CodecConfig::new_from_payload_params(params);
        let (mut rtc, keys) = rtp_fast::capture::capturing(|| config.build(now));
        let candidate = Candidate::host(self.config.advertised, "udp")
            .map_err(|e| JoinError::Internal(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        // str0m treats an offer it cannot negotiate as a bug in places (e.g. exhausted payload
        // types); a client's bytes must not take the core down with it.
        let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rtc.sdp_api().accept_offer(offer)
        }))
        .map_err(|_| JoinError::RefusedOffer("the offer could not be negotiated".into()))?
        .map_err(|e| JoinError::RefusedOffer(e.to_string()))?
        .to_sdp_string();

        // The m-lines the answer accepted, from the offer's mids (str0m reports `MediaAdded` only
        // once the connection is up; the answer is needed now).
        let audio_mids: Vec<(Mid, bool, bool)> = req
            .offer
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
            .filter_map(|mid| rtc.media(Mid::from(mid)))
            .filter(|m| m.kind() == MediaKind::Audio && !m.disabled())
            .map(|m| {
                (
                    m.mid(),
                    m.direction().is_sending(),
                    m.direction().is_receiving(),
                )
            })
            .collect();
        let deadline;
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    deadline = Some(t);
                    break;
                }
                Ok(_) => {}
                Err(e) => return Err(JoinError::RefusedOffer(e.to_string())),
            }
        }
        if audio_mids.is_empty() {
            return Err(JoinError::NoAudio);
        }
        let (opus_pt, red_pt) = rtc
            .codec_config()
            .params()
            .iter()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| (p.pt(), p.red()))
            .ok_or(JoinError::NoAudio)?;
        let mut slots = Vec::new();
        if req.grants.subscribe {
            for &(mid, sending, _) in &audio_mids {
                if sending {
                    let seq = self.rng.r#gen::<u16>();
                    let ts = self.rng.r#gen::<u32>();
                    slots.push(DownSlot::new(mid, opus_pt, seq, ts));
                }
            }
        }

        // In a music room the first receiving slot carries the music, never a voice.
        let music_slot = (req.music && !slots.is_empty()).then_some(0);
        let participant = Participant {
            music_slot,
            id: req.id,
            session: req.session,
            user: req.user,
            rtc: Box::new(rtc),
            grants: req.grants,
            opus_pt,
            red_pt,
            egress: vec![EgressCounts::default(); slots.len()],
            slots,
            upstream: Vec::new(),
            keyframes: KeyframeThrottle::default(),
            control_budget: ControlBudget::default(),
            ufrag: ufrag.clone().into_bytes(),
            addrs: Vec::new(),
            joined_at: now,
            connected: false,
            mic_muted: false,
            speaker_muted: false,
            can_speak: true,
            hand_raised: false,
            control: None,
            keys,
            fast: fast::Fast::default(),
            nack: feedback.nack,
            ext_ids: rtp_fast::rtp::ExtIds::from_sdp(&answer),
            media_addr: None,
            deadline,
            leaving: None,
        };
        self.by_ufrag.insert(participant.ufrag.clone(), key);
        self.participants.insert(key, participant);
        if let Some(t) = deadline {
            self.timers.push(Reverse((t, key)));
        }
        let speakers = self.config.speakers;
        let music = req
            .music
            .then(|| crate::music::Player::new(now, self.rng.r#gen::<u32>()));
        self.rooms
            .entry(req.session)
            .or_insert_with(|| Room::new(speakers, req.e2ee, music))
            .members
            .push(key);
        self.events.push_back(ShardEvent::Joined {
            session: req.session,
            participant: key,
            id: req.id,
            user: req.user,
        });
        Ok(Joined {
            participant: key,
            answer,
        })
    }

    /// Mutes a participant's microphone (nothing it sends is forwarded) and/or speaker (it is sent
    /// nothing). Returns the new state, or `None` if the participant is not here.
    pub fn set_mute(
        &mut self,
        participant: ParticipantKey,
        change: MuteChange,
    ) -> Option<(bool, bool)> {
        let p = self.participants.get_mut(&participant)?;
        let before = (p.mic_muted, p.speaker_muted);
        p.mic_muted = change.microphone.unwrap_or(p.mic_muted);
        p.speaker_muted = change.speaker.unwrap_or(p.speaker_muted);
        let after = (p.mic_muted, p.speaker_muted);
        let (session, id, user) = (p.session, p.id, p.user);
        if after == before {
            return Some(after);
        }
        if p.mic_muted && !before.0 {
            // A muted publisher gives its slots back and stops counting as a speaker.
            self.release_source(session, participant);
        }
        self.emit(ShardEvent::Muted {
            session,
            participant,
            id,
            user,
            microphone: after.0,
            speaker: after.1,
        });
        Some(after)
    }

    /// Reports an event to the node and, where it concerns them, to the room's members.
    fn emit(&mut self, event: ShardEvent) {
        self.tell_room(&event);
        self.events.push_back(event);
    }

    /// Frees every slot that carries `source` in its room and drops it from the speakers.
    fn release_source(&mut self, session: SessionId, source: ParticipantKey) {
        let Some(room) = self.rooms.get_mut(&session) else {
            return;
        };
        for m in &room.members {
            if let Some(other) = self.participants.get_mut(m) {
                for s in &mut other.slots {
                    if s.source().is_some_and(|src| src.participant == source) {
                        s.release();
                    }
                }
            }
        }
        if room.speakers.remove(source) {
            let speakers = room.speakers.ranking().to_vec();
            self.emit(ShardEvent::Speakers { session, speakers });
        }
    }

    /// Removes a participant at its own request. Returns whether it was here.
    pub fn leave(&mut self, participant: ParticipantKey) -> bool {
        self.remove(participant, LeaveReason::Requested)
    }

    /// Feeds one datagram received on the shard's socket.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, buf: &[u8]) {
        self.last_now = now;
        self.stats.datagrams_in += 1;
        let ufrag = stun::local_ufrag(buf);
        let key = match ufrag {
            Some(u) => self.by_ufrag.get(u).copied(),
            None => self.by_addr.get(&source).copied(),
        };
        let Some(key) = key else {
            self.stats.unclaimed += 1;
            return;
        };
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.config.advertised, buf) else {
            self.stats.malformed += 1;
            return;
        };
        let input = Input::Receive(now, receive);
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if !p.rtc.accepts(&input) {
            self.stats.malformed += 1;
            return;
        }
        // str0m checks a request's integrity with the ICE password; learning the address of an
        // accepted request is what lets the DTLS and SRTP that follow find their participant.
        let learn = ufrag.is_some() && !p.addrs.contains(&source);
        let mut forget = None;
        if learn {
            // A peer that knows its ICE password could bind any number of source addresses:
            // keep the latest few.
            if p.addrs.len() >= MAX_ADDRS_PER_PARTICIPANT {
                forget = Some(p.addrs.remove(0));
            }
            p.addrs.push(source);
        }
        if p.rtc.handle_input(input).is_err() {
            self.stats.malformed += 1;
        }
        if let Some(a) = forget
            && self.by_addr.get(&a) == Some(&key)
        {
            self.by_addr.remove(&a);
        }
        if learn
            && let Some(old) = self.by_addr.insert(source, key)
            && old != key
            && let Some(o) = self.participants.get_mut(&old)
        {
            o.addrs.retain(|a| *a != source);
        }
        self.drain(key);
        self.forward(now);
        self.relay_keyframe_requests(now);
        self.process_control(now);
        self.reap();
    }

    /// Drives every participant whose deadline has passed, and housekeeping.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = now;
        self.scratch.clear();
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(p) = self.participants.get_mut(&key) else {
                continue;
            };
            match p.deadline {
                Some(d) if d <= now => {
                    // Due; clearing it makes any other entry of this participant a no-op.
                    p.deadline = None;
                    self.scratch.push(key);
                }
                // Its deadline moved later without a new entry (see `drain`): queue that one.
                Some(d) => self.timers.push(Reverse((d, key))),
                None => {}
            }
        }
        let due = std::mem::take(&mut self.scratch);
        for &key in &due {
            if let Some(p) = self.participants.get_mut(&key) {
                if p.rtc.handle_input(Input::Timeout(now)).is_err() {
                    mark(&mut self.to_reap, key, p, LeaveReason::Failed);
                }
                self.drain(key);
            }
        }
        self.scratch = due;
        if self.music_due.is_some_and(|t| t <= now) {
            self.play_music(now);
        }
        if now >= self.speakers_at {
            self.speakers_at = now + self.config.speakers.interval;
            let changed: Vec<ShardEvent> = self
                .rooms
                .iter_mut()
                .filter_map(|(&session, room)| {
                    room.speakers.tick(now).map(|r| ShardEvent::Speakers {
                        session,
                        speakers: r.to_vec(),
                    })
                })
                .collect();
            for e in changed {
                self.emit(e);
            }
        }
        if now >= self.housekeeping_at {
            self.housekeeping_at = now + HOUSEKEEPING;
            for (&key, p) in self.participants.iter_mut() {
                if !p.connected && now.saturating_duration_since(p.joined_at) >= JOIN_TIMEOUT {
                    mark(&mut self.to_reap, key, p, LeaveReason::NeverConnected);
                }
            }
        }
        self.forward(now);
        self.relay_keyframe_requests(now);
        self.process_control(now);
        self.reap();
    }

    /// Relays subscribers' keyframe requests to their publishers, at most one per publisher per
    /// `keyframe_interval`, and only the kinds the publisher negotiated (str0m would send any).
    fn relay_keyframe_requests(&mut self, now: Instant) {
        while let Some(req) = self.keyframes_in.pop_front() {
            let interval = self.config.keyframe_interval;
            let relayed = req.is_some_and(|(source, kind)| {
                let Some(p) = self.participants.get_mut(&source.participant) else {
                    return false;
                };
                let negotiated = p.rtc.codec_config().params().iter().any(|c| {
                    c.pt() == p.opus_pt
                        && match kind {
                            KeyframeRequestKind::Pli => c.fb_pli(),
                            KeyframeRequestKind::Fir => c.fb_fir(),
                        }
                });
                if p.leaving.is_some() || !negotiated || !p.keyframes.allow(now, interval) {
                    return false;
                }
                let mut api = p.rtc.direct_api();
                let Some(rx) = api.stream_rx(&source.ssrc.into()) else {
                    return false;
                };
                rx.request_keyframe(kind);
                // The request goes out with the next timeout, which is now.
                if p.rtc.handle_input(Input::Timeout(now)).is_err() {
                    mark(
                        &mut self.to_reap,
                        source.participant,
                        p,
                        LeaveReason::Failed,
                    );
                }
                true
            });
            if relayed {
                self.stats.keyframe_requests_forwarded += 1;
                if let Some((source, _)) = req {
                    self.drain(source.participant);
                }
            } else {
                self.stats.keyframe_requests_dropped += 1;
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ShardEvent> {
        self.events.pop_front()
    }

    /// When [`Shard::handle_timeout`] should be called next.
    pub fn poll_timeout(&mut self) -> Instant {
        while let Some(Reverse((t, key))) = self.timers.peek().copied() {
            match self.participants.get(&key).and_then(|p| p.deadline) {
                Some(d) if d <= t => {
                    let t = d.min(self.housekeeping_at).min(self.speakers_at);
                    return self.music_due.map_or(t, |m| m.min(t));
                }
                Some(d) => {
                    // Moved later: the entry stands for the later deadline now.
                    self.timers.pop();
                    self.timers.push(Reverse((d, key)));
                }
                None => {
                    self.timers.pop();
                }
            }
        }
        let t = self.housekeeping_at.min(self.speakers_at);
        self.music_due.map_or(t, |m| m.min(t))
    }

    /// Drains one participant's `Rtc` until it asks for a timeout.
    fn drain(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    // A heap entry at or before the deadline always exists for a participant
                    // that has one: push only when it moves earlier. A later move is found
                    // when the earlier entry comes up (`handle_timeout`, `poll_timeout`), so
                    // the heap holds about one entry per participant, not one per packet.
                    let earlier = p.deadline.is_none_or(|d| t < d);
                    p.deadline = Some(t);
                    if earlier {
                        self.timers.push(Reverse((t, key)));
                    }
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    if fast::is_media_or_dtls(&t.contents) {
                        p.media_addr = Some(t.destination);
                    }
                    self.stats.datagrams_out += 1;
                    self.transmits.push_back(Datagram {
                        destination: t.destination,
                        contents: t.contents.into(),
                    });
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        p.connected = true;
                        self.events.push_back(ShardEvent::Connected {
                            session: p.session,
                            participant: key,
                        });
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        let why = if p.connected {
                            LeaveReason::Disconnected
                        } else {
                            LeaveReason::NeverConnected
                        };
                        mark(&mut self.to_reap, key, p, why);
                    }
                    Event::ChannelOpen(id, label) if label == CONTROL_LABEL => {
                        p.control = Some(id);
                        self.control_opened.push_back(key);
                    }
                    Event::ChannelData(d) if Some(d.id) == p.control => {
                        self.control_in.push_back((key, d.data));
                    }
                    Event::ChannelClose(id) if Some(id) == p.control => p.control = None,
                    Event::MediaEgressStats(s) => {
                        if let Some(i) = p.slots.iter().position(|slot| slot.mid == s.mid) {
                            let (nacks, resent) = p.egress[i].report(s.nacks, s.packets);
                            self.stats.nacks_received += nacks;
                            self.stats.rtp_retransmitted += resent;
                        }
                    }
                    Event::KeyframeRequest(req) => {
                        self.stats.keyframe_requests_received += 1;
                        let source = p
                            .slots
                            .iter()
                            .find(|s| s.mid == req.mid)
                            .and_then(|s| s.source());
                        self.keyframes_in.push_back(source.map(|s| (s, req.kind)));
                    }
                    Event::RtpPacket(pkt) => {
                        self.stats.rtp_in += 1;
                        let ssrc = *pkt.header.ssrc;
                        let i = match p.upstream.iter().position(|(s, _)| *s == ssrc) {
                            Some(i) => i,
                            None => {
                                // A peer may switch SSRCs; keep the latest few.
                                if p.upstream.len() >= MAX_STREAMS_PER_PARTICIPANT {
                                    p.upstream.remove(0);
                                }
                                p.upstream.push((ssrc, LossCounter::default()));
                                p.upstream.len() - 1
                            }
                        };
                        self.stats.rtp_lost += p.upstream[i].1.observe(*pkt.seq_no);
                        if p.grants.publish {
                            self.forwards.push_back((key, pkt));
                        }
                    }
                    _ => {}
                },
                Err(_) => {
                    mark(&mut self.to_reap, key, p, LeaveReason::Failed);
                    break;
                }
            }
        }
        if !p.rtc.is_alive() {
            let why = if p.connected {
                LeaveReason::Disconnected
            } else {
                LeaveReason::NeverConnected
            };
            mark(&mut self.to_reap, key, p, why);
        }
    }

    /// Forwards queued publisher packets to the other subscribers of the room: to all of them in a
    /// small room, to those for whom the publisher is among the `top_n` loudest in a large one.
    fn forward(&mut self, now: Instant) {
        while let Some((from, pkt)) = self.forwards.pop_front() {
            let Some((session, from_red, from_opus)) = self
                .participants
                .get(&from)
                .filter(|p| !p.mic_muted && p.can_speak)
                .map(|p| (p.session, p.red_pt, p.opus_pt))
            else {
                continue;
            };
            let Some(room) = self.rooms.get_mut(&session) else {
                continue;
            };
            let hdr = &pkt.header;
            let level = hdr.ext_vals.audio_level.map(i8::unsigned_abs);
            room.speakers
                .observe(now, from, level, hdr.ext_vals.voice_activity);
            let source = SourceKey {
                participant: from,
                ssrc: *hdr.ssrc,
            };
            let (in_seq, in_ts) = (*pkt.seq_no, hdr.timestamp);
            let is_red = from_red == Some(hdr.payload_type);
            // The primary encoding of a RED packet, for subscribers without RED (made once).
            let mut primary: Option<Option<Arc<[u8]>>> = None;
            let ext = ExtensionValues {
                audio_level: hdr.ext_vals.audio_level,
                voice_activity: hdr.ext_vals.voice_activity,
                ..Default::default()
            };
            let large = room.members.len() > self.config.top_n_above;
            let e2ee = room.e2ee;
            let top_n = self.config.top_n;
            let speakers = &room.speakers;
            // May `who` take a slot of `listener` now?
            let wanted = |who: ParticipantKey, listener: ParticipantKey| {
                if large {
                    speakers.in_top(who, listener, top_n)
                } else {
                    speakers.ranking().iter().any(|s| s.participant == who)
                }
            };
            if large && !speakers.in_top(from, ParticipantKey::MAX, top_n + 1) {
                // Not among anyone's `top_n` loudest others: nobody gets it.
                continue;
            }
            let mut written = std::mem::take(&mut self.fanout);
            written.clear();
            for &to in &room.members {
                if to == from {
                    continue;
                }
                let Some(sub) = self.participants.get_mut(&to) else {
                    continue;
                };
                if !sub.connected || sub.leaving.is_some() || sub.speaker_muted {
                    continue;
                }
                if large && !wanted(from, to) {
                    continue;
                }
                let music_slot = sub.music_slot;
                let voice = |i: usize| Some(i) != music_slot;
                let slot = match sub.slots.iter().position(|s| s.source() == Some(source)) {
                    Some(i) => Some(i),
                    None => (0..sub.slots.len())
                        .find(|&i| voice(i) && sub.slots[i].source().is_none())
                        // Full: a speaker displaces a slot whose publisher is not wanted now.
                        .or_else(|| {
                            wanted(from, to)
                                .then(|| {
                                    (0..sub.slots.len()).find(|&i| {
                                        voice(i)
                                            && sub.slots[i]
                                                .source()
                                                .is_some_and(|src| !wanted(src.participant, to))
                                    })
                                })
                                .flatten()
                        })
                        .inspect(|&i| sub.slots[i].assign(source, in_seq, in_ts)),
                };
                let Some(index) = slot else {
                    continue;
                };
                let slot = &mut sub.slots[index];
                let Some((seq, ts)) = slot.rewrite(source, in_seq, in_ts) else {
                    continue;
                };
                let (mid, opus_pt) = (slot.mid, slot.pt);
                // In an end-to-end encrypted room the payload is the clients' ciphertext (with
                // insertable streams, RED headers included): it goes out as it came or not at all.
                let (pt, payload) = match (is_red, sub.red_pt) {
                    (false, _) => (opus_pt, pkt.payload.clone()),
                    (true, Some(red_pt)) if sub.opus_pt == from_opus => {
                        (red_pt, pkt.payload.clone())
                    }
                    (true, _) if e2ee => continue,
                    (true, Some(red_pt)) => {
                        // The blocks name the publisher's Opus type: rename it to the subscriber's.
                        match red::rename_pt(&pkt.payload, *from_opus, *sub.opus_pt) {
                            Some(p) => (red_pt, Arc::from(p)),
                            None => continue,
                        }
                    }
                    (true, None) => {
                        let stripped = primary.get_or_insert_with(|| {
                            red::primary(&pkt.payload).map(|(_, data)| Arc::from(data))
                        });
                        match stripped {
                            Some(data) => (opus_pt, data.clone()),
                            None => continue,
                        }
                    }
                };
                let fast = sub.seal_fast(&fast::Packet {
                    slot: index,
                    mid,
                    pt: *pt,
                    seq,
                    timestamp: ts,
                    marker: hdr.marker,
                    level: ext.audio_level,
                    voice: ext.voice_activity,
                    payload: &payload,
                });
                if let Some((destination, contents)) = fast {
                    self.transmits.push_back(Datagram {
                        destination,
                        contents,
                    });
                    self.stats.datagrams_out += 1;
                    self.stats.rtp_forwarded += 1;
                    self.stats.rtp_forwarded_fast += 1;
                    continue;
                }
                let mut api = sub.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                    continue;
                };
                tx.write_rtp(
                    RtpWrite::new(pt, seq.into(), ts, now, payload)
                        .nackable(true)
                        .marker(hdr.marker)
                        .ext_vals(ext.clone()),
                );
                self.stats.rtp_forwarded += 1;
                sub.egress[index].written += 1;
                written.push(to);
            }
            self.release_written(now, &written);
            self.fanout = written;
        }
    }

    /// Lets the packets just written to `to` leave: str0m's pacer sends only what a timeout
    /// snapshotted, so each gets the timeout now rather than a timer tick later, then one drain
    /// (a drain between the writes and the timeout only polls every subsystem for nothing: a
    /// third of the per-subscriber cost at a few hundred participants).
    fn release_written(&mut self, now: Instant, to: &[ParticipantKey]) {
        for &key in to {
            if let Some(sub) = self.participants.get_mut(&key) {
                if sub.rtc.handle_input(Input::Timeout(now)).is_err() {
                    mark(&mut self.to_reap, key, sub, LeaveReason::Failed);
                }
                self.drain(key);
            }
        }
    }

    /// Removes participants marked as leaving.
    fn reap(&mut self) {
        while let Some(key) = self.to_reap.pop() {
            if let Some(reason) = self.participants.get(&key).and_then(|p| p.leaving) {
                self.remove(key, reason);
            }
        }
    }

    fn remove(&mut self, key: ParticipantKey, reason: LeaveReason) -> bool {
        let Some(mut p) = self.participants.remove(&key) else {
            return false;
        };
        p.rtc.disconnect();
        self.by_ufrag.remove(&p.ufrag);
        for a in &p.addrs {
            if self.by_addr.get(a) == Some(&key) {
                self.by_addr.remove(a);
            }
        }
        self.emit(ShardEvent::Left {
            session: p.session,
            participant: key,
            id: p.id,
            user: p.user,
            reason,
        });
        self.release_source(p.session, key);
        if let Some(room) = self.rooms.get_mut(&p.session) {
            room.remove(key);
            if room.members.is_empty() {
                let music = self.rooms.remove(&p.session).and_then(|r| r.music);
                // The queue goes with the room: say so, as the last listener's doing.
                if music.is_some_and(|m| m.changed_by().is_some()) {
                    self.events.push_back(ShardEvent::Music {
                        session: p.session,
                        user: p.user,
                        participant: Some(p.id),
                        state: protocol::music::MusicState::default(),
                        at: self.last_now,
                    });
                }
                self.refresh_music_due();
                self.events
                    .push_back(ShardEvent::RoomClosed { session: p.session });
            }
        }
        true
    }
}

/// Marks a participant as leaving (the first reason wins) and queues it for removal.
fn mark(
    to_reap: &mut Vec<ParticipantKey>,
    key: ParticipantKey,
    p: &mut Participant,
    why: LeaveReason,
) {
    if p.leaving.is_none() {
        p.leaving = Some(why);
        to_reap.push(key);
    }
}
