//! Id newtypes. Each wraps the representation it has on the wire and parses on construction.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            /// The UUID inside.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId
);
uuid_id!(
    /// A group of people who move and talk together.
    GroupId
);
uuid_id!(
    /// A place (a geofence) of a group: arrivals and departures are alerted.
    PlaceId
);
uuid_id!(
    /// A file uploaded to a group, attached to a message.
    AttachmentId
);
uuid_id!(
    /// A media session (a room) of a group, hosted on one media node.
    SessionId
);
uuid_id!(
    /// One participation of a user in a session: minted by the media node at the WHIP join, the
    /// id of its WHIP resource and of its row in the control plane's participants table.
    ParticipantId
);

/// A media node's id: short, printable, chosen by the operator (`eu-1-a`) or generated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a node id is 1 to 64 characters of [A-Za-z0-9._-]")]
pub struct InvalidNodeId;

impl NodeId {
    /// Parses a node id: 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidNodeId> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok { Ok(Self(s)) } else { Err(InvalidNodeId) }
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidNodeId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = InvalidNodeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_rejects_empty_long_and_odd_characters() {
        assert!(NodeId::new("eu-1.a_b").is_ok());
        assert_eq!(NodeId::new(""), Err(InvalidNodeId));
        assert_eq!(NodeId::new("a".repeat(65)), Err(InvalidNodeId));
        assert_eq!(NodeId::new("a b"), Err(InvalidNodeId));
        assert!(serde_json::from_str::<NodeId>("\"x/y\"").is_err());
    }

    #[test]
    fn uuid_ids_round_trip_as_plain_strings() {
        let id = GroupId::from_uuid(uuid::Uuid::from_u128(7));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"00000000-0000-0000-0000-000000000007\"");
        assert_eq!(serde_json::from_str::<GroupId>(&json).unwrap(), id);
        assert_eq!(id.to_string().parse::<GroupId>().unwrap(), id);
    }
}
