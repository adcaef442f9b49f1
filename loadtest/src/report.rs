//! Connect-time reports: the numbers (`report.json`), a terminal table and a
//! self-contained HTML page with a hand-written SVG histogram.

use crate::participant::JoinTimings;
use crate::stats::Percentiles;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The moments of one completed join, in ms since it started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JoinSample {
    pub ws_open_ms: f64,
    pub joined_ms: f64,
    pub ice_connected_ms: f64,
    pub media_connected_ms: f64,
    /// The headline: join started → first RTP packet from another participant.
    pub first_remote_rtp_ms: f64,
}

fn ms_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

impl JoinSample {
    /// `None` unless every moment was reached.
    pub fn from_timings(t: &JoinTimings) -> Option<Self> {
        let started = t.started?;
        Some(Self {
            ws_open_ms: ms_between(started, t.ws_open?),
            joined_ms: ms_between(started, t.joined?),
            ice_connected_ms: ms_between(started, t.ice_connected?),
            media_connected_ms: ms_between(started, t.media_connected?),
            first_remote_rtp_ms: ms_between(started, t.first_remote_rtp?),
        })
    }
}

/// Each moment, measured from the start of the join.
#[derive(Debug, Clone, Serialize)]
pub struct Phases {
    pub ws_open_ms: Percentiles,
    pub joined_ms: Percentiles,
    pub ice_connected_ms: Percentiles,
    pub media_connected_ms: Percentiles,
    pub first_remote_rtp_ms: Percentiles,
}

/// The time spent between consecutive moments, to find the slow step.
#[derive(Debug, Clone, Serialize)]
pub struct Steps {
    /// start → WebSocket open (TCP connect + HTTP upgrade).
    pub ws_open_ms: Percentiles,
    /// WebSocket open → `joined` (offer built, sent, admitted, answered); for joins over
    /// HTTP, start → `joined` (the socket opens alongside).
    pub join_ms: Percentiles,
    /// `joined` → peer connection connected (ICE + DTLS).
    pub media_connect_ms: Percentiles,
    /// `joined` → ICE connected (first successful check).
    pub ice_ms: Percentiles,
    /// ICE connected → DTLS done (peer connection connected).
    pub dtls_ms: Percentiles,
    /// connected → first remote RTP (renegotiation, forwarding).
    pub first_rtp_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub os: &'static str,
    pub arch: &'static str,
    /// UTC date of the run, `YYYY-MM-DD`.
    pub date: String,
}

impl Machine {
    pub fn this() -> Self {
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            date: utc_date(SystemTime::now()),
        }
    }
}

/// How the run was set up.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub url: String,
    pub label: Option<String>,
    pub joins: usize,
    pub concurrency: usize,
    pub room_size: usize,
    pub receive_only: bool,
    /// The joins used `POST /join` (the socket opening alongside) instead of a `join`
    /// message on the open socket.
    pub join_over_http: bool,
    /// Receive slots in each joiner's offer (0: the room's tracks came by renegotiation).
    pub receive_slots: usize,
    pub duration_s: f64,
    pub machine: Machine,
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub url: String,
    /// Joins attempted.
    pub joins: usize,
    pub completed: usize,
    pub failures: usize,
    pub concurrency: usize,
    pub room_size: usize,
    pub receive_only: bool,
    /// How the joins joined: "http" (`POST /join`, the WebSocket opening alongside) or
    /// "websocket" (a `join` message on the open socket).
    pub join: &'static str,
    /// Receive slots in each joiner's offer (0: the room's tracks came by renegotiation).
    pub receive_slots: usize,
    /// start of the join → first remote RTP, the headline figure.
    pub connect_ms: Percentiles,
    pub phases: Phases,
    pub steps: Steps,
    pub failure_reasons: BTreeMap<String, usize>,
    pub duration_s: f64,
    pub machine: Machine,
    /// Every completed join's connect_ms, in completion order.
    pub connect_samples_ms: Vec<f64>,
}

impl Report {
    pub fn new(info: RunInfo, samples: &[JoinSample], failures: &[String]) -> Self {
        let col =
            |f: fn(&JoinSample) -> f64| Percentiles::of(&samples.iter().map(f).collect::<Vec<_>>());
        let connect: Vec<f64> = samples.iter().map(|s| s.first_remote_rtp_ms).collect();
        let mut failure_reasons = BTreeMap::new();
        for f in failures {
            *failure_reasons.entry(f.clone()).or_insert(0) += 1;
        }
        Self {
            label: info.label,
            url: info.url,
            joins: info.joins,
            completed: samples.len(),
            failures: failures.len(),
            concurrency: info.concurrency,
            room_size: info.room_size,
            receive_only: info.receive_only,
            join: if info.join_over_http {
                "http"
            } else {
                "websocket"
            },
            receive_slots: info.receive_slots,
            connect_ms: Percentiles::of(&connect),
            phases: Phases {
                ws_open_ms: col(|s| s.ws_open_ms),
                joined_ms: col(|s| s.joined_ms),
                ice_connected_ms: col(|s| s.ice_connected_ms),
                media_connected_ms: col(|s| s.media_connected_ms),
                first_remote_rtp_ms: col(|s| s.first_remote_rtp_ms),
            },
            steps: Steps {
                ws_open_ms: col(|s| s.ws_open_ms),
                // Over HTTP the answer does not wait for the socket (which opens alongside):
                // the join step is then the whole start → joined.
                join_ms: if info.join_over_http {
                    col(|s| s.joined_ms)
                } else {
                    col(|s| s.joined_ms - s.ws_open_ms)
                },
                media_connect_ms: col(|s| s.media_connected_ms - s.joined_ms),
                ice_ms: col(|s| s.ice_connected_ms - s.joined_ms),
                dtls_ms: col(|s| s.media_connected_ms - s.ice_connected_ms),
                first_rtp_ms: col(|s| s.first_remote_rtp_ms - s.media_connected_ms),
            },
            failure_reasons,
            duration_s: info.duration_s,
            machine: info.machine,
            connect_samples_ms: connect,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    fn phase_rows(&self) -> Vec<(&'static str, &Percentiles)> {
        vec![
            ("ws_open", &self.phases.ws_open_ms),
            ("joined", &self.phases.joined_ms),
            ("ice_connected", &self.phases.ice_connected_ms),
            ("media_connected", &self.phases.media_connected_ms),
            (
                "first_remote_rtp = connect",
                &self.phases.first_remote_rtp_ms,
            ),
        ]
    }

    fn step_rows(&self) -> Vec<(&'static str, &Percentiles)> {
        vec![
            ("start → ws_open", &self.steps.ws_open_ms),
            (
                if self.join == "http" {
                    "start → joined (POST /join)"
                } else {
                    "ws_open → joined"
                },
                &self.steps.join_ms,
            ),
            ("joined → ice_connected", &self.steps.ice_ms),
            ("ice_connected → media_connected", &self.steps.dtls_ms),
            ("(joined → media_connected)", &self.steps.media_connect_ms),
            ("media_connected → first RTP", &self.steps.first_rtp_ms),
        ]
    }

    /// The terminal summary.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} joins ({} completed, {} failed), concurrency {}, room size {}, {:.1} s, {} cores, {}",
            self.joins,
            self.completed,
            self.failures,
            self.concurrency,
            self.room_size,
            self.duration_s,
            self.machine.cores,
            self.machine.date
        );
        for (title, rows) in [
            ("ms since join start", self.phase_rows()),
            ("ms per step", self.step_rows()),
        ] {
            let _ = writeln!(
                out,
                "\n{title:<34} {:>8} {:>8} {:>8} {:>8}",
                "p50", "p95", "p99", "max"
            );
            for (name, p) in rows {
                let _ = writeln!(
                    out,
                    "{name:<34} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                    p.p50, p.p95, p.p99, p.max
                );
            }
        }
        if !self.failure_reasons.is_empty() {
            let _ = writeln!(out, "\nfailures:");
            for (reason, n) in &self.failure_reasons {
                let _ = writeln!(out, "  {n:>5} × {reason}");
            }
        }
        out
    }

    /// A self-contained page: the tables and an inline SVG histogram of connect_ms.
    pub fn html(&self) -> String {
        let mut h = String::new();
        let title = match &self.label {
            Some(l) => format!("Connect time — {}", escape(l)),
            None => "Connect time".to_owned(),
        };
        h.push_str(&html_head(&title));
        let _ = writeln!(
            h,
            "<p class=\"meta\">{} · {} joins, {} completed, <b>{} failed</b> · concurrency {} · room size {}{} · {:.1} s · {} cores ({} {}) · {}</p>",
            escape(&self.url),
            self.joins,
            self.completed,
            self.failures,
            self.concurrency,
            self.room_size,
            if self.receive_only {
                " · receive-only joiners"
            } else {
                ""
            },
            self.duration_s,
            self.machine.cores,
            self.machine.os,
            self.machine.arch,
            self.machine.date
        );
        let _ = writeln!(
            h,
            "<p><b>connect_ms</b> (join start → first remote RTP): p50 {:.1} · p95 {:.1} · p99 {:.1} · max {:.1}</p>",
            self.connect_ms.p50, self.connect_ms.p95, self.connect_ms.p99, self.connect_ms.max
        );
        h.push_str(&histogram_svg(
            &self.connect_samples_ms,
            &self.connect_ms,
            720.0,
            260.0,
        ));
        for (title, rows) in [
            ("Milliseconds since the join started", self.phase_rows()),
            ("Milliseconds per step", self.step_rows()),
        ] {
            let _ = writeln!(
                h,
                "<h2>{title}</h2>\n<table><tr><th>phase</th><th>p50</th><th>p95</th><th>p99</th><th>max</th><th>n</th></tr>"
            );
            for (name, p) in rows {
                let _ = writeln!(
                    h,
                    "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
                    escape(name),
                    p.p50,
                    p.p95,
                    p.p99,
                    p.max,
                    p.count
                );
            }
            h.push_str("</table>\n");
        }
        if !self.failure_reasons.is_empty() {
            h.push_str("<h2>Failures</h2>\n<table><tr><th>reason</th><th>count</th></tr>\n");
            for (reason, n) in &self.failure_reasons {
                let _ = writeln!(h, "<tr><td>{}</td><td>{n}</td></tr>", escape(reason));
            }
            h.push_str("</table>\n");
        }
        h.push_str("</body></html>\n");
        h
    }
}

/// Equal-width bins from 0: `counts[i]` holds values in `[i·bin, (i+1)·bin)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub bin: f64,
    pub counts: Vec<usize>,
}

/// A "nice" bin width (1, 2 or 5 × 10^k) giving at most `max_bins` bins.
pub fn histogram(values: &[f64], max_bins: usize) -> Histogram {
    let max = values.iter().copied().fold(0.0f64, f64::max);
    if values.is_empty() || max <= 0.0 || max_bins == 0 {
        return Histogram {
            bin: 1.0,
            counts: if values.is_empty() {
                vec![]
            } else {
                vec![values.len()]
            },
        };
    }
    let raw = max / max_bins as f64;
    let mut bin = 10f64.powf(raw.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if bin * step * max_bins as f64 > max {
            bin *= step;
            break;
        }
    }
    let n = ((max / bin).floor() as usize + 1).max(1);
    let mut counts = vec![0; n];
    for v in values {
        let i = ((v.max(0.0) / bin).floor() as usize).min(n - 1);
        counts[i] += 1;
    }
    Histogram { bin, counts }
}

fn histogram_svg(values: &[f64], p: &Percentiles, width: f64, height: f64) -> String {
    let mut s = String::new();
    let (left, right, top, bottom) = (48.0, 16.0, 16.0, 40.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"histogram of connect_ms\">"
    );
    let hist = histogram(values, 40);
    if hist.counts.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no completed joins</text></svg>",
            width / 2.0,
            height / 2.0
        );
        return s;
    }
    let peak = *hist.counts.iter().max().unwrap_or(&1).max(&1) as f64;
    let span = hist.bin * hist.counts.len() as f64;
    let x = |ms: f64| left + ms / span * plot_w;
    let bar_w = plot_w / hist.counts.len() as f64;
    for (i, &c) in hist.counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let h = c as f64 / peak * plot_h;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a7fb5\"><title>{:.0}–{:.0} ms: {c}</title></rect>",
            left + i as f64 * bar_w + 0.5,
            top + plot_h - h,
            (bar_w - 1.0).max(0.5),
            h,
            i as f64 * hist.bin,
            (i + 1) as f64 * hist.bin
        );
    }
    // Axes, ticks and labels.
    let _ = writeln!(
        s,
        "<g stroke=\"#333\"><line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{0}\"/></g>",
        top + plot_h,
        left + plot_w
    );
    let ticks = 5usize.min(hist.counts.len());
    let tick_every = hist.counts.len().div_ceil(ticks.max(1));
    let mut i = 0;
    while i <= hist.counts.len() {
        let ms = i as f64 * hist.bin;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            x(ms),
            top + plot_h + 14.0,
            trim_number(ms)
        );
        i += tick_every.max(1);
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">connect_ms (join start → first remote RTP)</text>",
        left + plot_w / 2.0,
        height - 6.0
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">0</text>",
        left - 4.0,
        top + 10.0,
        peak,
        left - 4.0,
        top + plot_h
    );
    for (name, value, color) in [
        ("p50", p.p50, "#2a9d3a"),
        ("p95", p.p95, "#d08000"),
        ("p99", p.p99, "#c03030"),
    ] {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"{color}\" stroke-dasharray=\"4 3\"/><text x=\"{2:.1}\" y=\"{3:.1}\" font-size=\"11\" fill=\"{color}\">{name} {value:.0}</text>",
            x(value),
            top + plot_h,
            x(value) + 3.0,
            top + 10.0
                + match name {
                    "p50" => 0.0,
                    "p95" => 13.0,
                    _ => 26.0,
                }
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The start of a self-contained report page (no scripts, no external resources), shared
/// by every report so they look alike.
pub(crate) fn html_head(title: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:60em}}\
         table{{border-collapse:collapse;margin:1em 0}}th,td{{padding:.25em .75em;border-bottom:1px solid #ddd}}\
         td{{text-align:right;font-variant-numeric:tabular-nums}}td:first-child,th:first-child{{text-align:left}}\
         .meta{{color:#555}}</style></head><body>\n<h1>{title}</h1>\n"
    )
}

/// One line of a [`line_chart_svg`]: a name for the legend, a colour, (x, y) points.
pub(crate) struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// A hand-written SVG line chart of values over time (x in seconds), from 0 on both axes,
/// with a legend; `y_label` names the unit.
pub(crate) fn line_chart_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> String {
    let (width, height) = (720.0, 220.0);
    let (left, right, top, bottom) = (56.0, 16.0, 28.0, 36.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{}\">",
        escape(title)
    );
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        escape(title)
    );
    let all = series.iter().flat_map(|l| l.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
    let y_peak = all
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // Headroom and a round top value so the axis label reads well.
    let y_max = nice_ceiling(y_peak * 1.1);
    let x = |v: f64| left + v / x_max * plot_w;
    let y = |v: f64| top + plot_h - (v / y_max).clamp(0.0, 1.0) * plot_h;
    let _ = writeln!(
        s,
        "<g stroke=\"#333\"><line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\"/><line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{0}\"/></g>",
        top + plot_h,
        left + plot_w
    );
    for frac in [0.0, 0.5, 1.0] {
        let v = y_max * frac;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            left - 4.0,
            y(v) + 4.0,
            trim_number((v * 100.0).round() / 100.0)
        );
        let t = x_max * frac;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            x(t),
            top + plot_h + 14.0,
            trim_number(t.round())
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{} · {}</text>",
        left + plot_w / 2.0,
        height - 6.0,
        escape(x_label),
        escape(y_label)
    );
    for (i, line) in series.iter().enumerate() {
        let path: Vec<String> = line
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                line.color,
                path.join(" ")
            );
        }
        let lx = left + plot_w - 160.0 * (series.len() - i) as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{lx:.1}\" y=\"8\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"17\" font-size=\"11\">{}</text>",
            line.color,
            lx + 14.0,
            escape(line.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The smallest 1, 2 or 5 × 10^k at or above `v` (1 for nothing to show).
fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return 1.0;
    }
    let base = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * base)
}

fn trim_number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `YYYY-MM-DD` (UTC) of a moment, without a calendar library.
pub fn utc_date(t: SystemTime) -> String {
    let days = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    fn sample(i: f64) -> JoinSample {
        JoinSample {
            ws_open_ms: 1.0 + i * 0.125,
            joined_ms: 5.0 + i * 0.25,
            ice_connected_ms: 10.0 + i * 0.25,
            media_connected_ms: 20.0 + i * 0.5,
            first_remote_rtp_ms: 30.0 + i * 0.75,
        }
    }

    fn report() -> Report {
        let samples: Vec<JoinSample> = (1..=100).map(|i| sample(i as f64)).collect();
        let failures = vec![
            "timeout".to_owned(),
            "timeout".to_owned(),
            "join refused: room_full".to_owned(),
        ];
        Report::new(
            RunInfo {
                url: "ws://127.0.0.1:8080/ws".into(),
                label: Some("loopback <test>".into()),
                joins: 103,
                concurrency: 50,
                room_size: 2,
                receive_only: false,
                join_over_http: false,
                receive_slots: 0,
                duration_s: 12.5,
                machine: Machine {
                    cores: 2,
                    os: "linux",
                    arch: "x86_64",
                    date: "2025-01-02".into(),
                },
            },
            &samples,
            &failures,
        )
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v: Value = serde_json::from_str(&report().to_json()).unwrap();
        for key in ["p50", "p95", "p99", "max"] {
            assert!(v["connect_ms"][key].is_f64(), "connect_ms.{key}");
            for phase in [
                "ws_open_ms",
                "joined_ms",
                "ice_connected_ms",
                "media_connected_ms",
                "first_remote_rtp_ms",
            ] {
                assert!(v["phases"][phase][key].is_f64(), "phases.{phase}.{key}");
            }
            for step in [
                "ws_open_ms",
                "join_ms",
                "ice_ms",
                "dtls_ms",
                "media_connect_ms",
                "first_rtp_ms",
            ] {
                assert!(v["steps"][step][key].is_f64(), "steps.{step}.{key}");
            }
        }
        assert_eq!(v["connect_ms"]["p50"], 67.5);
        assert_eq!(v["connect_ms"]["max"], 105.0);
        assert_eq!(v["phases"]["first_remote_rtp_ms"], v["connect_ms"]);
        assert_eq!(v["joins"], 103);
        assert_eq!(v["completed"], 100);
        assert_eq!(v["failures"], 3);
        assert_eq!(v["failure_reasons"]["timeout"], 2);
        assert_eq!(v["concurrency"], 50);
        assert_eq!(v["url"], "ws://127.0.0.1:8080/ws");
        assert_eq!(v["machine"]["cores"], 2);
        assert_eq!(v["machine"]["date"], "2025-01-02");
        assert_eq!(v["connect_samples_ms"].as_array().unwrap().len(), 100);
        // Steps are the differences between consecutive phases.
        let step = v["steps"]["media_connect_ms"]["p50"].as_f64().unwrap();
        assert_eq!(step, 27.5);
    }

    #[test]
    fn html_is_self_contained_with_an_svg_histogram() {
        let html = report().html();
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("<svg") && html.contains("<rect"));
        assert!(!html.contains("<script"), "no JavaScript");
        assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
        assert!(html.contains("loopback &lt;test&gt;"), "text is escaped");
        assert!(html.contains("first_remote_rtp = connect"));
        assert!(html.contains("room_full"));
        let table = report().table();
        assert!(table.contains("media_connected") && table.contains("67.5"));
    }

    #[test]
    fn empty_report_does_not_panic() {
        let r = Report::new(
            RunInfo {
                url: "u".into(),
                label: None,
                joins: 1,
                concurrency: 1,
                room_size: 2,
                receive_only: true,
                join_over_http: true,
                receive_slots: 0,
                duration_s: 0.0,
                machine: Machine::this(),
            },
            &[],
            &["timeout".into()],
        );
        assert!(r.html().contains("no completed joins"));
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["connect_ms"]["p50"], 0.0);
        assert!(v.get("label").is_none());
    }

    #[test]
    fn histogram_bins_are_nice_and_hold_every_value() {
        let values: Vec<f64> = (0..200).map(|i| 20.0 + (i % 50) as f64).collect();
        let h = histogram(&values, 40);
        assert_eq!(h.bin, 2.0, "max 69 over ≤ 40 bins");
        assert!(h.counts.len() <= 40);
        assert_eq!(h.counts.iter().sum::<usize>(), 200);
        assert_eq!(h.counts[0], 0);
        assert_eq!(h.counts[10], 8, "20 and 21, four times each");
        let wide = histogram(&[1.0, 950.0], 40);
        assert_eq!(wide.bin, 50.0);
        assert_eq!(wide.counts.len(), 20);
        assert_eq!(histogram(&[], 40).counts, Vec::<usize>::new());
        assert_eq!(histogram(&[0.0, 0.0], 40).counts, vec![2]);
    }

    #[test]
    fn line_charts_scale_to_their_data() {
        let svg = line_chart_svg(
            "bit rate <x>",
            "seconds",
            "Mbit/s",
            &[
                Series {
                    name: "client",
                    color: "#4a7fb5",
                    points: vec![(0.0, 0.0), (10.0, 42.0), (20.0, 84.0)],
                },
                Series {
                    name: "server",
                    color: "#d08000",
                    points: vec![],
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
        assert!(svg.contains("bit rate &lt;x&gt;"));
        assert!(svg.contains("seconds · Mbit/s"));
        assert!(svg.contains(">100<"), "84 × 1.1 rounds up to 100");
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.011), 0.02);
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(
            utc_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29"
        );
        assert_eq!(
            utc_date(UNIX_EPOCH + Duration::from_secs(1_735_689_599)),
            "2024-12-31"
        );
        assert_eq!(
            utc_date(UNIX_EPOCH + Duration::from_secs(1_735_689_600)),
            "2025-01-01"
        );
    }

    #[test]
    fn samples_from_timings() {
        let t0 = Instant::now();
        let t = JoinTimings {
            started: Some(t0),
            ws_open: Some(t0 + Duration::from_millis(2)),
            joined: Some(t0 + Duration::from_millis(6)),
            ice_connected: Some(t0 + Duration::from_millis(12)),
            media_connected: Some(t0 + Duration::from_millis(20)),
            first_remote_rtp: Some(t0 + Duration::from_millis(31)),
        };
        let s = JoinSample::from_timings(&t).unwrap();
        assert_eq!(s.first_remote_rtp_ms, 31.0);
        assert_eq!(s.ws_open_ms, 2.0);
        assert_eq!(s.ice_connected_ms, 12.0);
        assert!(
            JoinSample::from_timings(&JoinTimings {
                first_remote_rtp: None,
                ..t
            })
            .is_none()
        );
    }
}
