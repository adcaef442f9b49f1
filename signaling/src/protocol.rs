//! The signaling messages of `docs/protocol.md`, typed.
//!
//! Parsing is strict about shape and lenient about nothing: a frame that is not a JSON object
//! with a known `type` becomes a [`SignalingError`] the session reports to the client, never a
//! panic and never a dropped connection.

use crate::{ErrorCode, ParticipantId, ParticipantInfo, Role, SignalingError};
use serde::{Deserialize, Serialize};

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest signaling frame accepted; a bigger one closes the socket with 1009. Session
/// descriptions carry an m-section per forwarded track: a renegotiation answer in a
/// 14-person board is ~24 KB, so 64 KiB (the old limit) broke rooms above ~35 participants,
/// under the default room cap of 50.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// Largest data-channel message: SCTP's default maximum message size in browsers.
pub const MAX_DATA_MESSAGE_BYTES: usize = 64 * 1024;

/// An ICE candidate as the browser's `RTCIceCandidateInit` serialises it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Join {
        #[serde(default = "default_version")]
        v: u32,
        room: String,
        name: String,
        #[serde(default)]
        token: Option<String>,
        offer: String,
    },
    Candidate {
        candidate: Option<IceCandidate>,
    },
    Answer {
        sdp: String,
    },
    MediaState {
        audio_muted: bool,
        video_muted: bool,
    },
    /// The client's own connect timeline, for the connect-time histograms.
    ClientTimings {
        timings: ClientTimings,
    },
    Leave,
    Ping,
}

/// Client-side moments of one join, in ms since navigation start. Each is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientTimings {
    #[serde(default)]
    pub ws_open: Option<f64>,
    #[serde(default)]
    pub media_ready: Option<f64>,
    #[serde(default)]
    pub joined: Option<f64>,
    #[serde(default)]
    pub ice_connected: Option<f64>,
    #[serde(default)]
    pub first_remote_audio: Option<f64>,
    #[serde(default)]
    pub first_remote_video_frame: Option<f64>,
}

impl ClientTimings {
    /// Longest plausible time since navigation: anything later is a broken clock.
    pub const MAX_MS: f64 = 600_000.0;

    /// The (phase, ms) pairs present, or an error naming the first implausible one.
    pub fn phases(&self) -> Result<Vec<(&'static str, f64)>, SignalingError> {
        let all = [
            ("ws_open", self.ws_open),
            ("media_ready", self.media_ready),
            ("joined", self.joined),
            ("ice_connected", self.ice_connected),
            ("first_remote_audio", self.first_remote_audio),
            ("first_remote_video_frame", self.first_remote_video_frame),
        ];
        let mut out = Vec::new();
        for (name, value) in all {
            let Some(ms) = value else { continue };
            if !ms.is_finite() || !(0.0..Self::MAX_MS).contains(&ms) {
                return Err(SignalingError::BadMessage(format!(
                    "client_timings.{name} must be between 0 and {} ms",
                    Self::MAX_MS
                )));
            }
            out.push((name, ms));
        }
        Ok(out)
    }
}

fn default_version() -> u32 {
    PROTOCOL_VERSION
}

const CLIENT_TYPES: &[&str] = &[
    "join",
    "candidate",
    "answer",
    "media_state",
    "client_timings",
    "leave",
    "ping",
];

impl ClientMessage {
    /// Parses one text frame, telling a malformed frame from an unknown type.
    pub fn parse(text: &str) -> Result<Self, SignalingError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| SignalingError::BadMessage(format!("not JSON: {e}")))?;
        let Some(object) = value.as_object() else {
            return Err(SignalingError::BadMessage("not a JSON object".into()));
        };
        let Some(kind) = object.get("type").and_then(|t| t.as_str()) else {
            return Err(SignalingError::BadMessage(
                "missing string field 'type'".into(),
            ));
        };
        if !CLIENT_TYPES.contains(&kind) {
            // Truncated so an attacker cannot make us echo megabytes.
            let shown: String = kind.chars().take(40).collect();
            return Err(SignalingError::UnknownType(shown));
        }
        serde_json::from_value(value).map_err(|e| SignalingError::BadMessage(e.to_string()))
    }
}

/// Server's view of one participant's media connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaConnectionState {
    Connecting,
    Connected,
    Disconnected,
    Failed,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Joined {
        v: u32,
        participant_id: ParticipantId,
        room: String,
        role: Role,
        answer: String,
        participants: Vec<ParticipantInfo>,
    },
    Offer {
        sdp: String,
    },
    Candidate {
        candidate: Option<IceCandidate>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: ParticipantId,
    },
    ParticipantUpdated {
        participant: ParticipantInfo,
    },
    MediaConnection {
        state: MediaConnectionState,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Pong,
}

impl ServerMessage {
    /// The error message for a refusal.
    pub fn error(err: &SignalingError) -> Self {
        ServerMessage::Error {
            code: err.code(),
            message: err.to_string(),
        }
    }

    /// Serialises to the JSON text frame. Infallible: every field is plain data.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"serialisation failed"}"#.to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_join_with_default_version() {
        let m =
            ClientMessage::parse(r#"{"type":"join","room":"r","name":"n","offer":"sdp"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                v: 1,
                room: "r".into(),
                name: "n".into(),
                token: None,
                offer: "sdp".into()
            }
        );
    }

    #[test]
    fn parses_browser_candidate_and_end_of_candidates() {
        let m = ClientMessage::parse(
            r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abc"}}"#,
        )
        .unwrap();
        let ClientMessage::Candidate { candidate: Some(c) } = m else {
            panic!("{m:?}")
        };
        assert_eq!(c.sdp_mid.as_deref(), Some("0"));
        assert_eq!(
            ClientMessage::parse(r#"{"type":"candidate","candidate":null}"#).unwrap(),
            ClientMessage::Candidate { candidate: None }
        );
    }

    #[test]
    fn tells_malformed_from_unknown() {
        let code = |t: &str| ClientMessage::parse(t).unwrap_err().code();
        assert_eq!(code("{"), ErrorCode::BadMessage);
        assert_eq!(code("[1,2]"), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"kind":"join"}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"join","room":"r"}"#), ErrorCode::BadMessage);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
    }

    #[test]
    fn client_timings_are_bounded() {
        let m = ClientMessage::parse(
            r#"{"type":"client_timings","timings":{"ws_open":12.5,"first_remote_video_frame":150}}"#,
        )
        .unwrap();
        let ClientMessage::ClientTimings { timings } = m else {
            panic!()
        };
        assert_eq!(
            timings.phases().unwrap(),
            vec![("ws_open", 12.5), ("first_remote_video_frame", 150.0)]
        );
        let bad = ClientTimings {
            joined: Some(-1.0),
            ..Default::default()
        };
        assert!(bad.phases().is_err());
        let bad = ClientTimings {
            joined: Some(1e9),
            ..Default::default()
        };
        assert!(bad.phases().is_err());
    }

    #[test]
    fn server_messages_use_wire_names() {
        let j = ServerMessage::ParticipantLeft {
            participant_id: "p-1".into(),
        }
        .to_json();
        assert_eq!(j, r#"{"type":"participant_left","participant_id":"p-1"}"#);
        let e = ServerMessage::error(&SignalingError::RoomFull {
            room: "r".into(),
            cap: 2,
        })
        .to_json();
        assert!(e.contains(r#""code":"room_full""#), "{e}");
    }
}
