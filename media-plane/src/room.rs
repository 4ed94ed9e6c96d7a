//! A room: the participants of one session on this shard, and who of them is speaking.
//! A room lives on exactly one shard.

use crate::participant::ParticipantKey;
use crate::speakers::{SpeakerConfig, SpeakerDetector};

#[derive(Debug)]
pub(crate) struct Room {
    /// Participants in join order.
    pub members: Vec<ParticipantKey>,
    pub speakers: SpeakerDetector,
}

impl Room {
    pub fn new(speakers: SpeakerConfig) -> Self {
        Self {
            members: Vec::new(),
            speakers: SpeakerDetector::new(speakers),
        }
    }

    pub fn remove(&mut self, key: ParticipantKey) {
        self.members.retain(|&m| m != key);
    }
}
