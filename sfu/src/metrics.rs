//! Prometheus metrics of the media layer, registered into the server's registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Counters and gauges the engine updates as it forwards.
#[derive(Clone)]
pub struct SfuMetrics {
    pub peers: IntGauge,
    pub tracks: IntGaugeVec,
    pub subscriptions: IntGauge,
    pub forwarded_packets: IntCounter,
    pub forwarded_bytes: IntCounter,
    pub dropped_packets: IntCounterVec,
    pub rtcp_feedback: IntCounterVec,
    pub keyframe_requests: IntCounter,
    pub data_channel_messages: IntCounterVec,
}

impl SfuMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            peers: IntGauge::new("consilium_media_peers", "Media peer connections")?,
            tracks: IntGaugeVec::new(
                Opts::new("consilium_tracks", "Published tracks being forwarded"),
                &["kind"],
            )?,
            subscriptions: IntGauge::new(
                "consilium_subscriptions",
                "Forwarded tracks (one per published track and subscriber)",
            )?,
            forwarded_packets: IntCounter::new(
                "consilium_forwarded_packets_total",
                "RTP packets forwarded to subscribers",
            )?,
            forwarded_bytes: IntCounter::new(
                "consilium_forwarded_bytes_total",
                "RTP payload bytes forwarded to subscribers",
            )?,
            dropped_packets: IntCounterVec::new(
                Opts::new(
                    "consilium_dropped_packets_total",
                    "Packets not forwarded, by reason",
                ),
                &["reason"],
            )?,
            rtcp_feedback: IntCounterVec::new(
                Opts::new(
                    "consilium_rtcp_feedback_total",
                    "RTCP feedback received from subscribers, by type",
                ),
                &["type"],
            )?,
            keyframe_requests: IntCounter::new(
                "consilium_keyframe_requests_total",
                "PLIs sent to publishers",
            )?,
            data_channel_messages: IntCounterVec::new(
                Opts::new(
                    "consilium_data_channel_messages_total",
                    "Data channel messages, by direction",
                ),
                &["direction"],
            )?,
        };
        registry.register(Box::new(m.peers.clone()))?;
        registry.register(Box::new(m.tracks.clone()))?;
        registry.register(Box::new(m.subscriptions.clone()))?;
        registry.register(Box::new(m.forwarded_packets.clone()))?;
        registry.register(Box::new(m.forwarded_bytes.clone()))?;
        registry.register(Box::new(m.dropped_packets.clone()))?;
        registry.register(Box::new(m.rtcp_feedback.clone()))?;
        registry.register(Box::new(m.keyframe_requests.clone()))?;
        registry.register(Box::new(m.data_channel_messages.clone()))?;
        Ok(m)
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry accepts every metric")
    }
}
