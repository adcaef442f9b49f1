//! The server's Prometheus registry: service-layer metrics here, media metrics from the
//! SFU, process CPU/memory/fds from the `process` collector.

use consilium_sfu::SfuMetrics;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// All metrics of one server.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub rooms: IntGauge,
    pub participants: IntGauge,
    pub participants_by_role: IntGaugeVec,
    pub websockets: IntGauge,
    pub signaling_messages: IntCounterVec,
    pub signaling_errors: IntCounterVec,
    /// Time from the start of a join to each of its phases: `side="server"` from the
    /// WebSocket accept, `side="client"` from the page's navigation start.
    pub connect_phase: HistogramVec,
    /// Data-channel messages received, by the shared-viewer type they have (`relay` for the
    /// ones relayed as they are, `invalid` for non-JSON or oversized ones): which part of
    /// the viewer protocol carries the load.
    pub data_channel_by_type: IntCounterVec,
    /// Annotation changes by `op` and `outcome` (`stored`, `refused`, `storage_failed`): a
    /// rising `storage_failed` means the disk under `data_dir` needs attention.
    pub annotation_ops: IntCounterVec,
    /// Shared-viewer `error` messages sent, by code.
    pub collab_errors: IntCounterVec,
    pub sfu: SfuMetrics,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let rooms = IntGauge::new("consilium_rooms", "Rooms with at least one participant")?;
        let participants = IntGauge::new("consilium_participants", "Participants in rooms")?;
        let participants_by_role = IntGaugeVec::new(
            Opts::new(
                "consilium_participants_by_role",
                "Participants in rooms, by role",
            ),
            &["role"],
        )?;
        registry.register(Box::new(participants_by_role.clone()))?;
        let websockets = IntGauge::new("consilium_websockets", "Open signaling WebSockets")?;
        let signaling_messages = IntCounterVec::new(
            Opts::new(
                "consilium_signaling_messages_total",
                "Signaling messages received, by type",
            ),
            &["type"],
        )?;
        let signaling_errors = IntCounterVec::new(
            Opts::new(
                "consilium_signaling_errors_total",
                "Error messages sent to clients, by code",
            ),
            &["code"],
        )?;
        let connect_phase = HistogramVec::new(
            HistogramOpts::new(
                "consilium_connect_phase_seconds",
                "Time from the start of a join to each phase of it",
            )
            .buckets(vec![
                0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6,
                0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
            ]),
            &["phase", "side"],
        )?;
        registry.register(Box::new(connect_phase.clone()))?;
        let data_channel_by_type = IntCounterVec::new(
            Opts::new(
                "consilium_data_channel_messages_by_type_total",
                "Data channel messages received from clients, by shared-viewer type",
            ),
            &["type"],
        )?;
        registry.register(Box::new(data_channel_by_type.clone()))?;
        let annotation_ops = IntCounterVec::new(
            Opts::new(
                "consilium_annotation_ops_total",
                "Annotation changes, by operation and outcome",
            ),
            &["op", "outcome"],
        )?;
        registry.register(Box::new(annotation_ops.clone()))?;
        let collab_errors = IntCounterVec::new(
            Opts::new(
                "consilium_collab_errors_total",
                "Shared-viewer error messages sent to clients, by code",
            ),
            &["code"],
        )?;
        registry.register(Box::new(collab_errors.clone()))?;
        registry.register(Box::new(rooms.clone()))?;
        registry.register(Box::new(participants.clone()))?;
        registry.register(Box::new(websockets.clone()))?;
        registry.register(Box::new(signaling_messages.clone()))?;
        registry.register(Box::new(signaling_errors.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let sfu = SfuMetrics::register(&registry)?;
        Ok(Self {
            registry,
            rooms,
            participants,
            participants_by_role,
            websockets,
            signaling_messages,
            signaling_errors,
            connect_phase,
            data_channel_by_type,
            annotation_ops,
            collab_errors,
            sfu,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
