//! How the media layer is set up.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Settings of the SFU.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// The one UDP socket every peer uses. Port 0 picks a free one (tests).
    pub bind: SocketAddr,
    /// The address put in the server's ICE candidate: the bind address, or the public
    /// address of a 1:1 NAT in front of the server.
    pub advertised_ip: IpAddr,
    /// No ICE traffic for this long: the peer is `disconnected`.
    pub ice_disconnected_timeout: Duration,
    /// No ICE traffic for this long: the peer is `failed` and removed.
    pub ice_failed_timeout: Duration,
    /// A peer that never connects is removed after this long.
    pub connect_timeout: Duration,
    /// At most one keyframe request per publisher track per this interval.
    pub keyframe_request_interval: Duration,
    /// Run send-side congestion control on every connection (transport-wide sequence numbers
    /// on what the SFU sends, the subscriber's feedback into a GCC estimator) to estimate each
    /// subscriber's bandwidth. Off by default: it costs 9–15 % more CPU per forwarded packet
    /// and ≈ 0.13 MiB per participant (docs/benchmarks.md), and nothing acts on the estimate
    /// yet (simulcast layer choice will).
    pub bandwidth_estimation: bool,
}

impl SfuConfig {
    /// Defaults for a server bound to `bind` and reachable at `advertised_ip`.
    pub fn new(bind: SocketAddr, advertised_ip: IpAddr) -> Self {
        Self {
            bind,
            advertised_ip,
            ice_disconnected_timeout: Duration::from_secs(4),
            ice_failed_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(20),
            keyframe_request_interval: Duration::from_millis(300),
            bandwidth_estimation: false,
        }
    }
}
