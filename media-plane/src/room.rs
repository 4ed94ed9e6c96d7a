//! A room: the participants of one session on this shard, and who of them is speaking.
//! A room lives on exactly one shard.

use crate::music::Player;
use crate::participant::ParticipantKey;
use crate::speakers::{SpeakerConfig, SpeakerDetector};

#[derive(Debug)]
pub(crate) struct Room {
    /// Participants in join order.
    pub members: Vec<ParticipantKey>,
    pub speakers: SpeakerDetector,
    /// End-to-end encrypted: payloads are forwarded byte for byte or not at all (RED is neither
    /// stripped nor renamed), and the room is never mixed.
    pub e2ee: bool,
    /// A music session's room: its music.
    pub music: Option<Player>,
}

impl Room {
    pub fn new(speakers: SpeakerConfig, e2ee: bool, music: Option<Player>) -> Self {
        Self {
            members: Vec::new(),
            speakers: SpeakerDetector::new(speakers),
            e2ee,
            music,
        }
    }

    pub fn remove(&mut self, key: ParticipantKey) {
        self.members.retain(|&m| m != key);
    }
}
