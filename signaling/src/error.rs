//! Errors the service layer reports to clients, each with a stable wire code.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` message: stable strings a client can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    UnknownType,
    NotJoined,
    AlreadyJoined,
    UnsupportedVersion,
    BadRoom,
    BadName,
    Unauthorized,
    TokenExpired,
    Forbidden,
    RoomFull,
    BadSdp,
    UnknownSession,
    Internal,
}

/// A refusal of something a client asked for. `Display` is the human message sent to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalingError {
    #[error("malformed message: {0}")]
    BadMessage(String),
    #[error("unknown message type '{0}'")]
    UnknownType(String),
    #[error("join the room first")]
    NotJoined,
    #[error("already joined")]
    AlreadyJoined,
    #[error("protocol version {0} is not supported (this server speaks version 1)")]
    UnsupportedVersion(u32),
    #[error("bad room name: {0}")]
    BadRoom(&'static str),
    #[error("bad display name: {0}")]
    BadName(&'static str),
    #[error("not authorised: {0}")]
    Unauthorized(String),
    #[error("the invitation token has expired")]
    TokenExpired,
    #[error("the invitation token is for another {0}")]
    Forbidden(&'static str),
    #[error("room '{room}' is full ({cap} participants)")]
    RoomFull { room: String, cap: usize },
    #[error("session description refused: {0}")]
    BadSdp(String),
    #[error(
        "no join under this session key arrived in time; join over HTTP first, or join on this socket"
    )]
    UnknownSession,
    #[error("internal error")]
    Internal,
}

impl SignalingError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadMessage(_) => ErrorCode::BadMessage,
            Self::UnknownType(_) => ErrorCode::UnknownType,
            Self::NotJoined => ErrorCode::NotJoined,
            Self::AlreadyJoined => ErrorCode::AlreadyJoined,
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::BadRoom(_) => ErrorCode::BadRoom,
            Self::BadName(_) => ErrorCode::BadName,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::TokenExpired => ErrorCode::TokenExpired,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::RoomFull { .. } => ErrorCode::RoomFull,
            Self::BadSdp(_) => ErrorCode::BadSdp,
            Self::UnknownSession => ErrorCode::UnknownSession,
            Self::Internal => ErrorCode::Internal,
        }
    }

    /// The HTTP status of this refusal when the request came over HTTP (`POST /join`).
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadMessage(_)
            | Self::UnknownType(_)
            | Self::UnsupportedVersion(_)
            | Self::BadRoom(_)
            | Self::BadName(_)
            | Self::BadSdp(_) => 400,
            Self::Unauthorized(_) | Self::TokenExpired => 401,
            Self::Forbidden(_) => 403,
            Self::NotJoined | Self::UnknownSession => 404,
            Self::AlreadyJoined | Self::RoomFull { .. } => 409,
            Self::Internal => 500,
        }
    }

    /// Whether the socket must be closed after reporting this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::UnsupportedVersion(_))
    }
}
