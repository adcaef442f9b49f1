//! The report of `loadtest run`: `report.json` (the figures), a terminal summary and a
//! self-contained `report.html` with plots over time, drawn with the helpers of
//! [`crate::report`] so every report looks alike.

use crate::report::{Machine, Series, escape, html_head, line_chart_svg};
use crate::run::Completeness;
use crate::scenario::Scenario;
use crate::stats::Percentiles;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// The figures of one measured stretch of time (a fixed run's `duration`, a ramp step's
/// window, or one second of the timeline).
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Seconds since the run started, where the window begins.
    pub t_start_s: f64,
    pub seconds: f64,
    /// Connected participants at the end of the window.
    pub participants: usize,
    /// Payload bytes all subscribers received, in Mbit/s.
    pub forwarded_mbps: f64,
    /// The server's own count (`consilium_forwarded_bytes_total`), to cross-check.
    pub server_forwarded_mbps: f64,
    /// RTP packets missing by sequence number, over every received stream.
    pub loss_pct: f64,
    /// Mean RFC 3550 interarrival jitter of the received streams.
    pub jitter_ms: f64,
    /// One-way, sender's send call → receiver's decryption, through the SFU.
    pub media_latency_ms: Percentiles,
    /// `process_cpu_seconds_total` per second.
    pub server_cpu_cores: f64,
    pub forwarded_mbps_per_core: f64,
    pub server_rss_mib: f64,
    /// RSS growth since before the first join, per participant.
    pub rss_per_participant_mib: f64,
    /// The server's anonymous memory (RSS without the binary's code pages, which are faulted
    /// in as code first runs and do not grow with participants); NaN if not exported.
    pub server_anon_mib: f64,
    /// Its growth since before the first join, per participant: what a participant costs.
    pub anon_per_participant_mib: f64,
    /// Server cores per participant.
    pub cpu_per_participant: f64,
    /// The load generator's own CPU: near its core count, it is the limit, not the server.
    pub generator_cpu_cores: f64,
    /// Lateness of a 10 ms timer in the generator: its scheduling delay added to latency.
    pub generator_lag_ms: Percentiles,
}

/// One step of a ramp: the window measured with `rooms` rooms in.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub rooms: usize,
    pub within_thresholds: bool,
    #[serde(flatten)]
    pub window: Window,
}

/// One second of the run, for the plots.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t_s: f64,
    pub participants: usize,
    pub forwarded_mbps: f64,
    pub server_forwarded_mbps: f64,
    pub loss_pct: f64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub server_cpu_cores: f64,
    pub server_rss_mib: f64,
    pub generator_cpu_cores: f64,
}

impl Point {
    pub fn from_window(t_s: f64, w: &Window) -> Self {
        Self {
            t_s,
            participants: w.participants,
            forwarded_mbps: w.forwarded_mbps,
            server_forwarded_mbps: w.server_forwarded_mbps,
            loss_pct: w.loss_pct,
            latency_p50_ms: w.media_latency_ms.p50,
            latency_p95_ms: w.media_latency_ms.p95,
            server_cpu_cores: w.server_cpu_cores,
            server_rss_mib: w.server_rss_mib,
            generator_cpu_cores: w.generator_cpu_cores,
        }
    }
}

/// What was published.
#[derive(Debug, Clone, Serialize)]
pub struct MediaInfo {
    pub audio_kbps: f64,
    pub camera: String,
    pub camera_kbps: f64,
    pub screen: String,
    pub screen_kbps: f64,
    /// Mean received rate per stream, by kind (`presenter video` mixes camera and screen).
    pub received_kbps: HashMap<String, f64>,
}

/// Everything the runner hands to the report.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Where the server's CPU time was read.
    pub server_cpu_source: String,
    pub scenario: Scenario,
    pub url: String,
    pub observers_have_role: bool,
    /// Most observers the server's `consilium_participants_by_role` showed at once.
    pub server_observers: usize,
    pub connect_ms: Percentiles,
    pub window: Window,
    pub steps: Vec<StepReport>,
    pub stop_reason: Option<String>,
    pub completeness: Completeness,
    pub join_failures: Vec<String>,
    pub timeline: Vec<Point>,
    pub media: MediaInfo,
    pub machine: Machine,
}

/// Everything `report.json` holds. The top-level figures are the measured window of a
/// fixed run, or of the largest ramp step that stayed within the thresholds.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub mode: &'static str,
    pub url: String,
    pub rooms: usize,
    /// Join start → media connected (ICE + DTLS), every join.
    pub connect_ms: Percentiles,
    #[serde(flatten)]
    pub window: Window,
    pub streams_expected: usize,
    pub streams_received: usize,
    pub missing_streams: Vec<String>,
    pub join_failures: Vec<String>,
    /// `observer` when observers joined with that role (a JWT secret was given), else
    /// `participant` (open mode: receive-only participants).
    pub observers_joined_as: &'static str,
    pub server_cpu_source: String,
    /// Most observers the server counted at once (`consilium_participants_by_role`).
    pub server_observers: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Ramp: the step nearest half the largest stable load (its latency is the SFU's
    /// added latency away from saturation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_load: Option<StepReport>,
    /// Ramp: the marginal cost of one more participant, fitted over the steps that held
    /// (free of the fixed start-up memory and idle CPU that `*_per_participant` include).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marginal: Option<Marginal>,
    pub media: MediaInfo,
    pub scenario_config: ScenarioSummary,
    pub machine: Machine,
    pub timeline: Vec<Point>,
}

/// Least-squares slopes of server RSS and CPU against participants over ramp steps.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Marginal {
    pub rss_mib_per_participant: f64,
    pub cpu_cores_per_participant: f64,
    pub steps: usize,
}

impl Marginal {
    /// `None` with fewer than two distinct loads.
    pub fn fit(steps: &[StepReport]) -> Option<Self> {
        let pts: Vec<(f64, f64, f64)> = steps
            .iter()
            .filter(|s| s.within_thresholds)
            .map(|s| {
                (
                    s.window.participants as f64,
                    s.window.server_rss_mib,
                    s.window.server_cpu_cores,
                )
            })
            .collect();
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if pts.len() < 2 || sxx <= 0.0 {
            return None;
        }
        let slope = |f: fn(&(f64, f64, f64)) -> f64| {
            let my = pts.iter().map(f).sum::<f64>() / n;
            pts.iter().map(|p| (p.0 - mx) * (f(p) - my)).sum::<f64>() / sxx
        };
        Some(Self {
            rss_mib_per_participant: slope(|p| p.1),
            cpu_cores_per_participant: slope(|p| p.2),
            steps: pts.len(),
        })
    }
}

/// The scenario as run.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioSummary {
    pub rooms: usize,
    pub participants_per_room: usize,
    pub publishers: usize,
    pub screen_share: usize,
    pub observers: usize,
    pub duration_s: f64,
    pub join_interval_ms: f64,
    pub room_interval_s: f64,
    pub streams_per_room: usize,
}

impl RunReport {
    pub fn new(info: RunInfo) -> Self {
        let s = &info.scenario;
        let ramp = s.thresholds.is_some();
        let largest = info
            .steps
            .iter()
            .filter(|st| st.within_thresholds)
            .map(|st| st.rooms)
            .max();
        let half_load = largest.and_then(|max| {
            let target = max.div_ceil(2);
            info.steps
                .iter()
                .filter(|st| st.within_thresholds)
                .min_by_key(|st| st.rooms.abs_diff(target))
                .cloned()
        });
        let marginal = Marginal::fit(&info.steps);
        Self {
            scenario: s.name.clone(),
            mode: if ramp { "ramp" } else { "fixed" },
            url: info.url,
            rooms: if ramp { largest.unwrap_or(0) } else { s.rooms },
            connect_ms: info.connect_ms,
            window: info.window,
            streams_expected: info.completeness.streams_expected,
            streams_received: info.completeness.streams_received,
            missing_streams: info.completeness.missing,
            join_failures: info.join_failures,
            observers_joined_as: if info.observers_have_role {
                "observer"
            } else {
                "participant"
            },
            server_cpu_source: info.server_cpu_source,
            server_observers: info.server_observers,
            steps: info.steps,
            stop_reason: info.stop_reason,
            half_load,
            marginal,
            media: info.media,
            scenario_config: ScenarioSummary {
                rooms: s.rooms,
                participants_per_room: s.participants,
                publishers: s.publishers,
                screen_share: s.screen_share,
                observers: s.observers,
                duration_s: s.duration.as_secs_f64(),
                join_interval_ms: s.ramp.join_interval.as_secs_f64() * 1000.0,
                room_interval_s: s.ramp.room_interval.as_secs_f64(),
                streams_per_room: s.streams_per_room(),
            },
            machine: info.machine,
            timeline: info.timeline,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let w = &self.window;
        let p = |p: &Percentiles| format!("{:.1} / {:.1} / {:.1}", p.p50, p.p95, p.p99);
        vec![
            ("participants", w.participants.to_string()),
            (
                "streams received / expected",
                format!("{} / {}", self.streams_received, self.streams_expected),
            ),
            ("connect ms p50 / p95 / p99", p(&self.connect_ms)),
            ("media latency ms p50 / p95 / p99", p(&w.media_latency_ms)),
            ("loss %", format!("{:.3}", w.loss_pct)),
            ("jitter ms", format!("{:.2}", w.jitter_ms)),
            (
                "forwarded Mbit/s (clients / server)",
                format!("{:.1} / {:.1}", w.forwarded_mbps, w.server_forwarded_mbps),
            ),
            ("server CPU cores", format!("{:.2}", w.server_cpu_cores)),
            (
                "forwarded Mbit/s per core",
                format!("{:.0}", w.forwarded_mbps_per_core),
            ),
            ("server RSS MiB", format!("{:.1}", w.server_rss_mib)),
            (
                "RSS per participant MiB",
                format!("{:.2}", w.rss_per_participant_mib),
            ),
            (
                "anonymous memory MiB (per participant)",
                format!(
                    "{:.1} ({:.2})",
                    w.server_anon_mib, w.anon_per_participant_mib
                ),
            ),
            (
                "CPU per participant (ms/s)",
                format!("{:.2}", w.cpu_per_participant * 1000.0),
            ),
            (
                "generator CPU cores / lag p95 ms",
                format!(
                    "{:.2} / {:.1}",
                    w.generator_cpu_cores, w.generator_lag_ms.p95
                ),
            ),
        ]
    }

    /// The terminal summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} ({}): {} room(s), {:.0} s measured, {} cores, {}",
            self.scenario,
            self.mode,
            self.rooms,
            self.window.seconds,
            self.machine.cores,
            self.machine.date
        );
        for (name, value) in self.rows() {
            let _ = writeln!(out, "  {name:<38} {value:>24}");
        }
        if !self.steps.is_empty() {
            let _ = writeln!(
                out,
                "\n  {:>5} {:>6} {:>9} {:>8} {:>8} {:>7} {:>8}  ok",
                "rooms", "people", "Mbit/s", "loss %", "p95 ms", "cores", "RSS MiB"
            );
            for st in &self.steps {
                let w = &st.window;
                let _ = writeln!(
                    out,
                    "  {:>5} {:>6} {:>9.1} {:>8.3} {:>8.1} {:>7.2} {:>8.1}  {}",
                    st.rooms,
                    w.participants,
                    w.forwarded_mbps,
                    w.loss_pct,
                    w.media_latency_ms.p95,
                    w.server_cpu_cores,
                    w.server_rss_mib,
                    if st.within_thresholds { "yes" } else { "NO" }
                );
            }
        }
        if let Some(m) = &self.marginal {
            let _ = writeln!(
                out,
                "\n  per extra participant (fit over {} steps): {:.3} MiB RSS, {:.2} ms/s server CPU",
                m.steps,
                m.rss_mib_per_participant,
                m.cpu_cores_per_participant * 1000.0
            );
        }
        if let Some(h) = &self.half_load {
            let _ = writeln!(
                out,
                "  at half load ({} rooms): latency p50 {:.1} ms, p95 {:.1} ms",
                h.rooms, h.window.media_latency_ms.p50, h.window.media_latency_ms.p95
            );
        }
        if let Some(r) = &self.stop_reason {
            let _ = writeln!(out, "\n  stopped: {r}");
        }
        for (title, list) in [
            ("missing streams", &self.missing_streams),
            ("failed joins", &self.join_failures),
        ] {
            if !list.is_empty() {
                let _ = writeln!(out, "\n  {title} ({}):", list.len());
                for m in list.iter().take(10) {
                    let _ = writeln!(out, "    {m}");
                }
            }
        }
        out
    }

    /// How the server's CPU and memory grow with participants, one point per ramp step
    /// (none without steps): `(file name, SVG)`, drawn in `report.html` and written beside it
    /// so docs/benchmarks.md can show them.
    pub fn ramp_charts(&self) -> Vec<(&'static str, String)> {
        ramp_charts(&self.steps)
    }

    /// A self-contained page: the summary, the ramp steps and plots over time.
    pub fn html(&self) -> String {
        let title = format!("Load test — {}", escape(&self.scenario));
        let mut h = html_head(&title);
        let c = &self.scenario_config;
        let _ = writeln!(
            h,
            "<p class=\"meta\">{} · {} mode · {} room(s) of {} ({} with camera, {} sharing a screen, {} observers joined as {}) · {} cores ({} {}) · {}</p>",
            escape(&self.url),
            self.mode,
            self.rooms,
            c.participants_per_room,
            c.publishers,
            c.screen_share,
            c.observers,
            self.observers_joined_as,
            self.machine.cores,
            self.machine.os,
            self.machine.arch,
            self.machine.date
        );
        let _ = writeln!(
            h,
            "<p class=\"meta\">media: Opus {:.0} kbit/s · camera VP8 {} {:.0} kbit/s · screen VP8 {} {:.0} kbit/s</p>",
            self.media.audio_kbps,
            escape(&self.media.camera),
            self.media.camera_kbps,
            escape(&self.media.screen),
            self.media.screen_kbps
        );
        h.push_str("<table><tr><th>figure</th><th>value</th></tr>\n");
        for (name, value) in self.rows() {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(name),
                escape(&value)
            );
        }
        h.push_str("</table>\n");
        if let Some(r) = &self.stop_reason {
            let _ = writeln!(h, "<p><b>Stopped:</b> {}</p>", escape(r));
        }
        if let Some(m) = &self.marginal {
            let _ = writeln!(
                h,
                "<p>Per extra participant (fit over {} steps): {:.3} MiB RSS, {:.2} ms/s server CPU.</p>",
                m.steps,
                m.rss_mib_per_participant,
                m.cpu_cores_per_participant * 1000.0
            );
        }
        if !self.steps.is_empty() {
            h.push_str("<h2>Ramp steps</h2>\n<table><tr><th>rooms</th><th>participants</th><th>Mbit/s</th><th>loss %</th><th>latency p95 ms</th><th>server cores</th><th>Mbit/s per core</th><th>RSS MiB</th><th>within thresholds</th></tr>\n");
            for st in &self.steps {
                let w = &st.window;
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.3}</td><td>{:.1}</td><td>{:.2}</td><td>{:.0}</td><td>{:.1}</td><td>{}</td></tr>",
                    st.rooms,
                    w.participants,
                    w.forwarded_mbps,
                    w.loss_pct,
                    w.media_latency_ms.p95,
                    w.server_cpu_cores,
                    w.forwarded_mbps_per_core,
                    w.server_rss_mib,
                    if st.within_thresholds { "yes" } else { "no" }
                );
            }
            h.push_str("</table>\n");
            for (_, svg) in self.ramp_charts() {
                h.push_str(&svg);
            }
        }
        h.push_str("<h2>Over time</h2>\n");
        let series = |f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
            self.timeline.iter().map(|p| (p.t_s, f(p))).collect()
        };
        let charts: Vec<(&str, &str, Vec<Series<'_>>)> = vec![
            (
                "Participants",
                "connected",
                vec![Series {
                    name: "participants",
                    color: "#4a7fb5",
                    points: series(|p| p.participants as f64),
                }],
            ),
            (
                "Forwarded bit rate",
                "Mbit/s",
                vec![
                    Series {
                        name: "received by clients",
                        color: "#4a7fb5",
                        points: series(|p| p.forwarded_mbps),
                    },
                    Series {
                        name: "server counter",
                        color: "#d08000",
                        points: series(|p| p.server_forwarded_mbps),
                    },
                ],
            ),
            (
                "Packet loss",
                "%",
                vec![Series {
                    name: "loss",
                    color: "#c03030",
                    points: series(|p| p.loss_pct),
                }],
            ),
            (
                "Media latency (one way)",
                "ms",
                vec![
                    Series {
                        name: "p50",
                        color: "#2a9d3a",
                        points: series(|p| p.latency_p50_ms),
                    },
                    Series {
                        name: "p95",
                        color: "#d08000",
                        points: series(|p| p.latency_p95_ms),
                    },
                ],
            ),
            (
                "CPU",
                "cores",
                vec![
                    Series {
                        name: "server",
                        color: "#4a7fb5",
                        points: series(|p| p.server_cpu_cores),
                    },
                    Series {
                        name: "load generator",
                        color: "#999999",
                        points: series(|p| p.generator_cpu_cores),
                    },
                ],
            ),
            (
                "Server memory",
                "RSS MiB",
                vec![Series {
                    name: "RSS",
                    color: "#7a4ab5",
                    points: series(|p| p.server_rss_mib),
                }],
            ),
        ];
        for (title, unit, lines) in charts {
            h.push_str(&line_chart_svg(title, "seconds", unit, &lines));
        }
        let mut lists = BTreeMap::new();
        lists.insert("Missing streams", &self.missing_streams);
        lists.insert("Failed joins", &self.join_failures);
        for (title, list) in lists {
            if list.is_empty() {
                continue;
            }
            let _ = writeln!(h, "<h2>{title}</h2>\n<ul>");
            for m in list {
                let _ = writeln!(h, "<li>{}</li>", escape(m));
            }
            h.push_str("</ul>\n");
        }
        h.push_str("</body></html>\n");
        h
    }
}

/// [`RunReport::ramp_charts`] of these steps.
fn ramp_charts(steps: &[StepReport]) -> Vec<(&'static str, String)> {
    if steps.is_empty() {
        return Vec::new();
    }
    let points = |f: fn(&Window) -> f64| -> Vec<(f64, f64)> {
        steps
            .iter()
            .map(|st| (st.window.participants as f64, f(&st.window)))
            .collect()
    };
    vec![
        (
            "ramp-cpu.svg",
            line_chart_svg(
                "Server CPU against participants (ramp steps)",
                "participants",
                "server cores, Gbit/s forwarded per core",
                &[
                    Series {
                        name: "server cores",
                        color: "#4a7fb5",
                        points: points(|w| w.server_cpu_cores),
                    },
                    Series {
                        name: "Gbit/s per core",
                        color: "#d08000",
                        points: points(|w| w.forwarded_mbps_per_core / 1000.0),
                    },
                ],
            ),
        ),
        (
            "ramp-memory.svg",
            line_chart_svg(
                "Server memory against participants (ramp steps)",
                "participants",
                "MiB",
                &[
                    Series {
                        name: "RSS",
                        color: "#7a4ab5",
                        points: points(|w| w.server_rss_mib),
                    },
                    Series {
                        name: "anonymous",
                        color: "#2a9d3a",
                        points: points(|w| w.server_anon_mib),
                    },
                ],
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(rooms: usize, ok: bool, participants: usize, rss: f64, cpu: f64) -> StepReport {
        StepReport {
            rooms,
            within_thresholds: ok,
            window: Window {
                t_start_s: 0.0,
                seconds: 5.0,
                participants,
                forwarded_mbps: 0.0,
                server_forwarded_mbps: 0.0,
                loss_pct: 0.0,
                jitter_ms: 0.0,
                media_latency_ms: Percentiles::default(),
                server_cpu_cores: cpu,
                forwarded_mbps_per_core: 0.0,
                server_rss_mib: rss,
                rss_per_participant_mib: 0.0,
                server_anon_mib: f64::NAN,
                anon_per_participant_mib: 0.0,
                cpu_per_participant: 0.0,
                generator_cpu_cores: 0.0,
                generator_lag_ms: Percentiles::default(),
            },
        }
    }

    #[test]
    fn marginal_cost_is_the_slope_over_steps_that_held() {
        let steps = [
            step(1, true, 14, 30.0 + 14.0 * 0.5, 0.01 + 14.0 * 0.02),
            step(2, true, 28, 30.0 + 28.0 * 0.5, 0.01 + 28.0 * 0.02),
            step(3, true, 42, 30.0 + 42.0 * 0.5, 0.01 + 42.0 * 0.02),
            step(4, false, 56, 500.0, 5.0),
        ];
        let m = Marginal::fit(&steps).unwrap();
        assert_eq!(m.steps, 3);
        assert!((m.rss_mib_per_participant - 0.5).abs() < 1e-9);
        assert!((m.cpu_cores_per_participant - 0.02).abs() < 1e-9);
        assert!(Marginal::fit(&steps[..1]).is_none());
        assert!(Marginal::fit(&[]).is_none());
    }

    #[test]
    fn ramp_charts_plot_every_step_against_participants() {
        assert!(
            ramp_charts(&[]).is_empty(),
            "a fixed-size run has no ramp charts"
        );
        let steps = [
            step(1, true, 14, 37.0, 0.3),
            step(2, true, 28, 51.0, 0.6),
            step(3, false, 42, 65.0, 0.9),
        ];
        let charts = ramp_charts(&steps);
        let names: Vec<&str> = charts.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["ramp-cpu.svg", "ramp-memory.svg"]);
        for (_, svg) in &charts {
            assert!(svg.starts_with("<svg") && svg.contains("participants · "));
            // Every step is a vertex of the first line (the step that broke the thresholds too).
            let first = svg
                .split("points=\"")
                .nth(1)
                .expect("a line")
                .split('"')
                .next()
                .unwrap();
            assert_eq!(first.split(' ').count(), 3, "{first}");
        }
    }
}
