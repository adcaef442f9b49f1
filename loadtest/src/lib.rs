//! Synthetic Consilium participants for tests and benchmarks.
//!
//! A [`participant::Participant`] is a real WebRTC peer on its own UDP socket that joins
//! through the normal signaling, publishes, subscribes and measures: the integration tests
//! use it to prove the media path end to end, the `loadtest` binary to measure connect
//! time and capacity ([`connect`], [`report`]) and to emulate a WAN in user space ([`wan`]).

pub mod clips;
pub mod connect;
pub mod media;
pub mod participant;
pub mod report;
pub mod run;
pub mod run_report;
pub mod scenario;
pub mod stats;
pub mod sync;
pub mod units;
pub mod voice;
pub mod vp8;
pub mod wan;

pub use participant::{Event, Kind, Participant, ParticipantConfig};
