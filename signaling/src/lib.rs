//! Consilium's service layer: what participants say to the server and what a room is.
//!
//! This crate knows nothing about media. It holds the signaling protocol (typed JSON
//! messages, see `docs/protocol.md`), the validation of untrusted names, the join tokens,
//! and the room registry that decides who is in which room. The media layer (`consilium-sfu`)
//! is told about participants by the binary that wires the two together.
//!
//! [`collab`] is the authority over a room's shared DICOM viewer and annotations
//! (`docs/collaboration.md`): a pure state machine the binary feeds and persists.

pub mod auth;
pub mod collab;
pub mod collab_proto;
pub mod error;
pub mod participant;
pub mod protocol;
pub mod rendezvous;
pub mod room;
pub mod validate;

pub use auth::{Claims, TokenAuthority, check_sub};
pub use error::{ErrorCode, SignalingError};
pub use participant::{ParticipantId, ParticipantInfo, Role};
pub use protocol::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
pub use room::{Admission, RoomRegistry};
