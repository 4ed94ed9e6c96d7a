//! Shared music of a room: tracks made once from uploaded files ([`transcode`]) and paced out
//! to every listener together ([`player`]). Both are pure; the shard sends the frames, the HTTP
//! side hands it the tracks.

pub mod player;
pub mod transcode;

pub use player::{Frame, MusicError, Player, Track};
pub use transcode::{Encoded, TranscodeError, transcode, transcode_guarded};
