//! Consilium's media layer: a selective forwarding unit on one UDP port.
//!
//! Every participant has one WebRTC peer connection with the server. Audio and video a
//! participant publishes are forwarded, never decoded or mixed, to every other participant
//! of the same room; the data channel's messages go up to the service layer, which decides
//! where they go.
//!
//! The split follows str0m and LiveKit: [`forwarding`], [`codec`] and [`demux`] are pure
//! decisions tested without sockets; [`engine`] owns the one UDP socket, the sans-I/O peer
//! connections of the `rtc` crate, and the clock, and only moves bytes between them.

pub mod codec;
pub mod config;
pub mod demux;
pub mod engine;
pub mod error;
pub mod feedback;
pub mod forwarding;
pub mod metrics;
pub mod sdp_check;
pub mod udp_batch;

pub use config::SfuConfig;
pub use engine::{ConnectionState, JoinRequest, Milestone, PeerEvent, Sfu, SfuHandle};
pub use error::SfuError;
pub use metrics::SfuMetrics;
/// A trickled ICE candidate, as the `rtc` stack takes it.
pub use rtc::peer_connection::transport::RTCIceCandidateInit as IceCandidateInit;
