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
    /// Anonymous resident memory (heap, stacks; `RssAnon` of /proc/self/status), read at
    /// each scrape. `process_resident_memory_bytes` also counts the binary's code pages,
    /// which are faulted in as code paths first run and do not grow with participants: this
    /// one is what rooms and participants cost.
    pub anonymous_memory: IntGauge,
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
        let anonymous_memory = IntGauge::new(
            "consilium_process_anonymous_memory_bytes",
            "Anonymous resident memory of the process (heap and stacks, no code pages)",
        )?;
        registry.register(Box::new(anonymous_memory.clone()))?;
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
            anonymous_memory,
            sfu,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Some(bytes) = anonymous_rss() {
            self.anonymous_memory.set(bytes);
        }
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `RssAnon` of /proc/self/status in bytes (Linux; `None` elsewhere or if unreadable).
fn anonymous_rss() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss_anon(&status)
}

fn parse_rss_anon(status: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_memory_is_read_from_proc_status() {
        let status =
            "Name:\tconsilium\nVmRSS:\t   40000 kB\nRssAnon:\t   28000 kB\nRssFile:\t   12000 kB\n";
        assert_eq!(parse_rss_anon(status), Some(28000 * 1024));
        assert_eq!(parse_rss_anon("VmRSS: 1 kB\n"), None);
        #[cfg(target_os = "linux")]
        {
            let m = Metrics::new().unwrap();
            let text = m.render();
            let line = text
                .lines()
                .find(|l| l.starts_with("consilium_process_anonymous_memory_bytes "))
                .expect("the gauge is exported");
            let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(v > 0.0, "{line}");
        }
    }
}
