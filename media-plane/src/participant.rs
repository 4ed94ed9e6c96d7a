//! A participant: one WebRTC peer connection (a str0m `Rtc`) in one room, and the slots through
//! which it receives the other participants' audio.

use crate::forwarder::DownSlot;
use crate::shard::keyframe::KeyframeThrottle;
use crate::shard::loss::{EgressCounts, LossCounter};
use crate::shard::ratelimit::ControlBudget;
use protocol::{ParticipantId, SessionId, UserId};
use std::net::SocketAddr;
use std::time::Instant;
use str0m::Rtc;
use str0m::channel::ChannelId;
use str0m::media::Pt;

/// Key of a participant inside its shard. Never reused within a shard's lifetime.
pub type ParticipantKey = u64;

/// What a participant may do, from its join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grants {
    /// May publish audio.
    pub publish: bool,
    /// May receive the others' audio.
    pub subscribe: bool,
    /// May moderate the room (mute others, allow to speak, remove).
    pub admin: bool,
    /// May control the room's music (play, pause, seek, skip, clear).
    pub music_ctl: bool,
}

/// A change of a participant's mute state; `None` leaves that side as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuteChange {
    pub microphone: Option<bool>,
    pub speaker: Option<bool>,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The client deleted its WHIP resource.
    Requested,
    /// ICE consent was lost or the peer connection closed.
    Disconnected,
    /// ICE never completed within the join timeout.
    NeverConnected,
    /// str0m reported an error for this connection.
    Failed,
    /// An admin removed the participant.
    Removed,
}

#[derive(Debug)]
pub(crate) struct Participant {
    pub id: ParticipantId,
    pub session: SessionId,
    pub user: UserId,
    /// Boxed: the `Rtc` is kilobytes, and the participant map is walked per forwarded packet;
    /// inline it made each entry 10 KB and every subscriber lookup a cache miss.
    pub rtc: Box<Rtc>,
    pub grants: Grants,
    /// This peer's payload type for Opus.
    pub opus_pt: Pt,
    /// This peer's payload type for RFC 2198 RED over Opus, if it negotiated RED.
    pub red_pt: Option<Pt>,
    pub slots: Vec<DownSlot>,
    /// In a music room: the slot that carries the music (the first receiving one); voices use
    /// the others.
    pub music_slot: Option<usize>,
    /// What str0m's stats of each slot's stream already added to the shard's counters, by slot.
    pub egress: Vec<EgressCounts>,
    /// Loss of each stream this peer sends us, by SSRC (one, unless it restarts its stream).
    pub upstream: Vec<(u32, LossCounter)>,
    /// Gate of the keyframe requests relayed to this peer as a publisher.
    pub keyframes: KeyframeThrottle,
    /// Budget of its room-control messages.
    pub control_budget: ControlBudget,
    pub ufrag: Vec<u8>,
    pub addrs: Vec<SocketAddr>,
    pub joined_at: Instant,
    pub connected: bool,
    /// The server forwards nothing this participant sends.
    pub mic_muted: bool,
    /// The server sends this participant nothing (deafened).
    pub speaker_muted: bool,
    /// An admin may take the floor away; publishing needs both this and the publish grant.
    pub can_speak: bool,
    pub hand_raised: bool,
    /// The room control data channel, once the client has opened it.
    pub control: Option<ChannelId>,
    /// Where its connection's DTLS-SRTP keys land (the fast path seals with them).
    pub keys: rtp_fast::KeyCapture,
    /// The forwarding fast path of this subscriber (`shard/fast.rs`).
    pub fast: crate::shard::fast::Fast,
    /// It negotiated NACK for Opus: retransmissions need str0m's send path.
    pub nack: bool,
    /// The header extension ids of its session.
    pub ext_ids: rtp_fast::rtp::ExtIds,
    /// Where str0m sends its DTLS and media: the selected candidate pair's remote address.
    pub media_addr: Option<SocketAddr>,
    /// The deadline str0m asked for last; heap entries with another deadline are stale.
    pub deadline: Option<Instant>,
    pub leaving: Option<LeaveReason>,
}

impl LeaveReason {
    /// The reason as reported in session events.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Requested => "requested",
            LeaveReason::Disconnected => "disconnected",
            LeaveReason::NeverConnected => "never_connected",
            LeaveReason::Failed => "failed",
            LeaveReason::Removed => "removed",
        }
    }
}
