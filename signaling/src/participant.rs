//! Who is in a room, as the other participants see them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// A participant's server-assigned id. It is also the MediaStream id of every track the
/// participant publishes, which is how a client maps a forwarded track to a tile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParticipantId(Arc<str>);

impl ParticipantId {
    /// A fresh random id (`p-` + 16 hex digits): unguessable, so ids leak nothing.
    pub fn random() -> Self {
        Self(format!("p-{:016x}", rand::random::<u64>()).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ParticipantId {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a participant may do in a room. Carried in invitation tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the board: may hand over presenting and remove annotations of others.
    Host,
    /// Drives the shared viewer.
    Presenter,
    /// Speaks and is seen.
    Participant,
    /// Watches and listens; publishes nothing.
    Observer,
}

impl Role {
    /// Whether media this role sends is forwarded to the room.
    pub fn may_publish(self) -> bool {
        self != Role::Observer
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Presenter => "presenter",
            Role::Participant => "participant",
            Role::Observer => "observer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "host" => Ok(Role::Host),
            "presenter" => Ok(Role::Presenter),
            "participant" => Ok(Role::Participant),
            "observer" => Ok(Role::Observer),
            other => Err(format!(
                "unknown role '{other}' (host, presenter, participant, observer)"
            )),
        }
    }
}

/// A participant as shown to the others in the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: ParticipantId,
    pub name: String,
    pub role: Role,
    pub audio_muted: bool,
    pub video_muted: bool,
}
