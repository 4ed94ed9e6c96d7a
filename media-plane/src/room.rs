//! A room: the participants of one session on this shard. A room lives on exactly one shard.

use crate::participant::ParticipantKey;

#[derive(Debug, Default)]
pub(crate) struct Room {
    /// Participants in join order.
    pub members: Vec<ParticipantKey>,
}

impl Room {
    pub fn remove(&mut self, key: ParticipantKey) {
        self.members.retain(|&m| m != key);
    }
}
