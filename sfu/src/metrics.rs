//! Prometheus metrics of the media layer, registered into the server's registry.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

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
    /// Packets resent to subscribers on their NACK, from the track's history.
    pub resent: IntCounter,
    /// NACKed packets that could not be resent (too old, or never received).
    pub resent_missing: IntCounter,
    pub data_channel_messages: IntCounterVec,
    /// Each subscriber's estimated bandwidth (the send-side congestion controller's target),
    /// sampled every few seconds: the low quantiles are the weak links of a board.
    pub subscriber_bandwidth: Histogram,
    /// The per-packet counters, resolved once: a label lookup hashes on every call.
    pub fast: FastCounters,
}

/// Children of the labelled counters that the per-packet path increments.
#[derive(Clone)]
pub struct FastCounters {
    pub dropped_unknown_source: IntCounter,
    pub dropped_not_negotiated: IntCounter,
    pub dropped_waiting_for_keyframe: IntCounter,
    pub dropped_before_start: IntCounter,
    pub dropped_write_failed: IntCounter,
    pub dropped_socket_full: IntCounter,
    pub dropped_send_error: IntCounter,
}

impl FastCounters {
    /// The counter for a forwarding decision's drop reason.
    pub fn dropped(&self, reason: crate::forwarding::DropReason) -> &IntCounter {
        use crate::forwarding::DropReason;
        match reason {
            DropReason::NotNegotiated => &self.dropped_not_negotiated,
            DropReason::WaitingForKeyframe => &self.dropped_waiting_for_keyframe,
            DropReason::BeforeStart => &self.dropped_before_start,
        }
    }
}

impl SfuMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let dropped_packets = IntCounterVec::new(
            Opts::new(
                "consilium_dropped_packets_total",
                "Packets not forwarded, by reason",
            ),
            &["reason"],
        )?;
        let drop = |reason: &str| dropped_packets.with_label_values(&[reason]);
        let fast = FastCounters {
            dropped_unknown_source: drop("unknown_source"),
            dropped_not_negotiated: drop("not_negotiated"),
            dropped_waiting_for_keyframe: drop("waiting_for_keyframe"),
            dropped_before_start: drop("before_start"),
            dropped_write_failed: drop("write_failed"),
            dropped_socket_full: drop("socket_full"),
            dropped_send_error: drop("send_error"),
        };
        let retransmissions = IntCounterVec::new(
            Opts::new(
                "consilium_nack_retransmissions_total",
                "Packets subscribers asked to have resent (NACK), by outcome",
            ),
            &["outcome"],
        )?;
        let m = Self {
            fast,
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
            dropped_packets,
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
            resent: retransmissions.with_label_values(&["sent"]),
            resent_missing: retransmissions.with_label_values(&["not_in_history"]),
            data_channel_messages: IntCounterVec::new(
                Opts::new(
                    "consilium_data_channel_messages_total",
                    "Data channel messages, by direction",
                ),
                &["direction"],
            )?,
            subscriber_bandwidth: Histogram::with_opts(
                HistogramOpts::new(
                    "consilium_subscriber_bandwidth_estimate_bits",
                    "Estimated bandwidth towards each subscriber (send-side congestion control, \
                     from its transport-wide feedback), in bit/s, sampled every 5 s",
                )
                .buckets(vec![250e3, 500e3, 1e6, 2e6, 4e6, 8e6, 16e6, 32e6, 64e6]),
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
        registry.register(Box::new(retransmissions))?;
        registry.register(Box::new(m.data_channel_messages.clone()))?;
        registry.register(Box::new(m.subscriber_bandwidth.clone()))?;
        Ok(m)
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry accepts every metric")
    }
}
