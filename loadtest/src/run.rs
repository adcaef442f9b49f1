//! `loadtest run`: rooms of real-media participants as a scenario describes them, measured
//! every second from both ends — what the subscribers receive (bit rate, loss, jitter,
//! one-way latency) and what the server spends (`/metrics`: CPU, memory, forwarded bytes).
//!
//! Fixed mode joins every room, lets the first keyframes settle and measures `duration`.
//! Ramp mode adds one room per step and measures each step's last window, until loss or
//! latency breaks a threshold: the last step that held is the server's capacity.

use crate::clips::{ClipError, EncodedMedia};
use crate::participant::{Event, Kind, Participant, ParticipantConfig};
use crate::report::Machine;
use crate::run_report::{Point, RunReport, StepReport, Window};
use crate::scenario::{Scenario, Seat};
use crate::stats::{LatencyHistogram, Percentiles};
use consilium_signaling::{Role, TokenAuthority};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Why a run could not be made (a run that is made but goes badly is a report, not an
/// error: its figures say what went wrong).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Clips(#[from] ClipError),
    #[error("the signaling URL {0:?} is not ws://host:port/path")]
    BadUrl(String),
    #[error("cannot read the server's metrics at http://{addr}/metrics: {reason}")]
    Metrics { addr: String, reason: String },
    #[error("no participant could join: {0}")]
    NobodyJoined(String),
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: Scenario,
    /// Signaling URL; `/metrics` is read from the same host and port.
    pub url: String,
    /// The server's JWT secret: lets observers join with the `observer` role (in open
    /// mode the server gives roles by join order, and nobody can ask to be an observer).
    pub jwt_secret: Option<String>,
    pub bind_ip: IpAddr,
    /// Where the VP8 clips are cached.
    pub clip_dir: PathBuf,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// Longest one join may take to connect its media before it counts as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// After the last join: time for the first keyframes and renegotiations to settle.
const SETTLE: Duration = Duration::from_secs(2);

/// A joined participant and where it sits.
struct Member {
    room: usize,
    seat: Seat,
    name: String,
    participant: Participant,
}

struct JoinResult {
    room: usize,
    seat: Seat,
    name: String,
    result: Result<(Participant, f64), String>,
}

/// Everything measured at one moment, cumulative since the start.
#[derive(Debug, Clone)]
struct Snapshot {
    t: f64,
    joined: usize,
    rx_bytes: u64,
    expected: u64,
    lost: u64,
    latency: LatencyHistogram,
    jitter_ms: f64,
    server: Option<ServerSample>,
    generator_cpu_s: f64,
    generator_lag: LatencyHistogram,
}

/// The server's process and forwarding counters from `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerSample {
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    /// `consilium_process_anonymous_memory_bytes`: RSS without the binary's code pages
    /// (NaN from a server that does not export it).
    pub anon_bytes: f64,
    pub forwarded_bytes: f64,
    /// Participants the server counts as observers: proof the role was taken.
    pub observers: f64,
}

/// The sum of every series of a metric in Prometheus text format (`None` if absent).
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

impl ServerSample {
    /// Reads the three series this report needs from a `/metrics` page.
    pub fn parse(text: &str) -> Option<Self> {
        Some(Self {
            cpu_seconds: metric_sum(text, "process_cpu_seconds_total")?,
            rss_bytes: metric_sum(text, "process_resident_memory_bytes")?,
            anon_bytes: metric_sum(text, "consilium_process_anonymous_memory_bytes")
                .unwrap_or(f64::NAN),
            forwarded_bytes: metric_sum(text, "consilium_forwarded_bytes_total").unwrap_or(0.0),
            observers: metric_sum(text, "consilium_participants_by_role{role=\"observer\"}")
                .unwrap_or(0.0),
        })
    }
}

/// `host:port` of a `ws://host:port/path` URL.
pub fn http_host_of(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split('/').next()?;
    if host.is_empty() {
        return None;
    }
    Some(if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    })
}

async fn fetch_metrics(host: &str, timeout: Duration) -> Result<String, String> {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(head.lines().next().unwrap_or("").to_owned());
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(timeout, go)
        .await
        .map_err(|_| "timeout".to_owned())?
}

/// CPU seconds this process has used (user + system), from /proc: whether the load
/// generator, not the server, was the limit.
fn own_cpu_seconds() -> f64 {
    cpu_seconds_of("self").unwrap_or(0.0)
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat` in clock ticks
/// (100 Hz on Linux).
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_seconds_from_stat(&stat)
}

fn cpu_seconds_from_stat(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map(|(_, a)| a)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // Field 3 of stat is fields[0] here; utime (14) is fields[11], stime (15) fields[12].
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// The pid of the local process listening on TCP `port` (the server, when it runs on this
/// machine): its CPU is then read from /proc at 10 ms resolution, because the `process`
/// collector of the prometheus crate (0.14) counts `process_cpu_seconds_total` in whole
/// seconds, too coarse for a few seconds' window.
pub fn local_listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let port_matches = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if *state == "0A" && port_matches {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

struct State {
    options: RunOptions,
    metrics_host: String,
    started: Instant,
    members: Vec<Member>,
    join_failures: Vec<String>,
    connect_ms: Vec<f64>,
    pending_joins: usize,
    joins_rx: mpsc::UnboundedReceiver<JoinResult>,
    joins_tx: mpsc::UnboundedSender<JoinResult>,
    snapshots: Vec<Snapshot>,
    bar: ProgressBar,
    lag: Arc<std::sync::Mutex<LatencyHistogram>>,
    media: Arc<EncodedMedia>,
    tokens: Option<TokenAuthority>,
    run_id: String,
    /// The server before the first join: memory growth is counted from it.
    baseline: Option<ServerSample>,
    /// The server's pid when it runs here (its CPU is then read from /proc).
    server_pid: Option<u32>,
}

impl State {
    fn room_name(&self, room: usize) -> String {
        format!("{}-{}-{room}", self.options.scenario.name, self.run_id)
    }

    /// Starts the joins of one room, `join_interval` apart, each in its own task.
    fn start_room(&mut self, room: usize) {
        let scenario = &self.options.scenario;
        for i in 0..scenario.participants {
            let seat = scenario.seat(i);
            let role = if seat.observer {
                "observer"
            } else if seat.screen {
                "presenter"
            } else if seat.camera {
                "specialist"
            } else {
                "listener"
            };
            let name = format!("{role}-{i}");
            let mut config =
                ParticipantConfig::new(&self.options.url, &self.room_name(room), &name);
            config.bind_ip = self.options.bind_ip;
            config.publish_audio = seat.audio;
            config.publish_video = seat.camera;
            config.publish_screen = seat.screen;
            config.media = Some(self.media.clone());
            config.keep_latency_samples = false;
            config.token = self.tokens.as_ref().map(|t| {
                let role = match (i, seat.observer) {
                    (_, true) => Role::Observer,
                    (0, _) => Role::Host,
                    _ => Role::Participant,
                };
                t.issue(&config.room, &name, role, Duration::from_secs(6 * 3600))
            });
            let delay = scenario.ramp.join_interval * i as u32;
            let tx = self.joins_tx.clone();
            self.pending_joins += 1;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let started = Instant::now();
                let result = async {
                    let mut p = Participant::join(config)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    p.wait_for(JOIN_TIMEOUT, |e| {
                        matches!(e, Event::MediaConnected | Event::Closed)
                    })
                    .await
                    .filter(|e| *e == Event::MediaConnected)
                    .ok_or_else(|| "media did not connect".to_owned())?;
                    Ok((p, started.elapsed().as_secs_f64() * 1000.0))
                };
                let result = tokio::time::timeout(JOIN_TIMEOUT, result)
                    .await
                    .unwrap_or_else(|_| Err("join timed out".into()));
                let _ = tx.send(JoinResult {
                    room,
                    seat,
                    name,
                    result,
                });
            });
        }
    }

    fn take_join(&mut self, j: JoinResult) {
        self.pending_joins -= 1;
        match j.result {
            Ok((participant, ms)) => {
                self.connect_ms.push(ms);
                self.members.push(Member {
                    room: j.room,
                    seat: j.seat,
                    name: j.name,
                    participant,
                });
            }
            Err(e) => self
                .join_failures
                .push(format!("room {} {}: {e}", j.room, j.name)),
        }
    }

    /// A snapshot that bounds a measured window: an overloaded server may answer
    /// `/metrics` late, and a window without server figures says nothing about it, so
    /// it is asked again (longer) before giving up.
    async fn window_snapshot(&mut self) -> Snapshot {
        let mut snap = self.snapshot().await;
        for _ in 0..3 {
            if snap.server.is_some() {
                break;
            }
            snap.server = self.server_sample(Duration::from_secs(5)).await;
        }
        snap
    }

    async fn server_sample(&self, timeout: Duration) -> Option<ServerSample> {
        let mut server = fetch_metrics(&self.metrics_host, timeout)
            .await
            .ok()
            .and_then(|t| ServerSample::parse(&t))?;
        if let Some(cpu) = self
            .server_pid
            .and_then(|pid| cpu_seconds_of(&pid.to_string()))
        {
            server.cpu_seconds = cpu;
        }
        Some(server)
    }

    async fn snapshot(&mut self) -> Snapshot {
        let mut s = Snapshot {
            t: self.started.elapsed().as_secs_f64(),
            joined: self.members.len(),
            rx_bytes: 0,
            expected: 0,
            lost: 0,
            latency: LatencyHistogram::default(),
            jitter_ms: 0.0,
            server: None,
            generator_cpu_s: own_cpu_seconds(),
            generator_lag: self.lag.lock().map(|l| l.clone()).unwrap_or_default(),
        };
        let (mut jitter_sum, mut jitter_n) = (0.0, 0usize);
        for m in &self.members {
            let stats = m.participant.stats();
            s.latency.merge(&stats.latency);
            for track in stats.tracks.values() {
                s.rx_bytes += track.bytes;
                s.expected += track.quality.expected();
                s.lost += track.quality.lost();
                jitter_sum += track.quality.jitter_ms(track.clock_rate());
                jitter_n += 1;
            }
        }
        s.jitter_ms = if jitter_n > 0 {
            jitter_sum / jitter_n as f64
        } else {
            0.0
        };
        // Short: the per-second plots must not stall on a slow server.
        s.server = self.server_sample(Duration::from_secs(2)).await;
        s
    }

    /// Keeps taking joins and sampling every second until `deadline` (or, with
    /// `until_joined`, until no join is pending).
    async fn wait(&mut self, deadline: Instant, until_joined: bool) {
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + next_second(self.started),
            Duration::from_secs(1),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if until_joined && self.pending_joins == 0 {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => return,
                Some(j) = self.joins_rx.recv() => self.take_join(j),
                _ = tick.tick() => {
                    let snap = self.snapshot().await;
                    self.show(&snap);
                    self.snapshots.push(snap);
                }
            }
        }
    }

    fn show(&self, snap: &Snapshot) {
        let Some(prev) = self.snapshots.last() else {
            return;
        };
        let w = Window::between(prev, snap, self.baseline);
        self.bar.set_message(format!(
            "{} joined · {:.1} Mbit/s · loss {:.2} % · p95 {:.1} ms · server {:.2} cores, {:.0} MiB",
            snap.joined,
            w.forwarded_mbps,
            w.loss_pct,
            w.media_latency_ms.p95,
            w.server_cpu_cores,
            w.server_rss_mib
        ));
    }
}

fn next_second(started: Instant) -> Duration {
    let e = started.elapsed().as_secs_f64();
    Duration::from_secs_f64(e.ceil() - e + 1e-3)
}

impl Window {
    /// The figures between two snapshots.
    fn between(a: &Snapshot, b: &Snapshot, baseline: Option<ServerSample>) -> Window {
        let secs = (b.t - a.t).max(1e-3);
        let expected = b.expected.saturating_sub(a.expected);
        let lost = b.lost.saturating_sub(a.lost);
        let forwarded_mbps = b.rx_bytes.saturating_sub(a.rx_bytes) as f64 * 8.0 / secs / 1e6;
        let (cpu, rss, server_mbps) = match (a.server, b.server) {
            (Some(sa), Some(sb)) => (
                (sb.cpu_seconds - sa.cpu_seconds) / secs,
                sb.rss_bytes,
                (sb.forwarded_bytes - sa.forwarded_bytes) * 8.0 / secs / 1e6,
            ),
            // The server did not answer `/metrics` (overloaded): unknown, not zero — NaN is
            // left out of the plots and written as null in report.json.
            _ => (
                f64::NAN,
                b.server.map_or(f64::NAN, |s| s.rss_bytes),
                f64::NAN,
            ),
        };
        let participants = b.joined;
        let rss_growth = baseline.map_or(rss, |base| (rss - base.rss_bytes).max(0.0));
        let anon = b.server.map_or(f64::NAN, |s| s.anon_bytes);
        let anon_growth = baseline.map_or(anon, |base| (anon - base.anon_bytes).max(0.0));
        Window {
            t_start_s: a.t,
            seconds: secs,
            participants,
            forwarded_mbps,
            server_forwarded_mbps: server_mbps,
            loss_pct: if expected > 0 {
                lost as f64 / expected as f64 * 100.0
            } else {
                0.0
            },
            jitter_ms: b.jitter_ms,
            media_latency_ms: b.latency.since(&a.latency).percentiles(),
            server_cpu_cores: cpu,
            forwarded_mbps_per_core: if cpu > 0.0 {
                forwarded_mbps / cpu
            } else if cpu.is_nan() {
                f64::NAN
            } else {
                0.0
            },
            server_rss_mib: rss / 1_048_576.0,
            rss_per_participant_mib: if participants > 0 {
                rss_growth / 1_048_576.0 / participants as f64
            } else {
                0.0
            },
            server_anon_mib: anon / 1_048_576.0,
            anon_per_participant_mib: if participants > 0 {
                anon_growth / 1_048_576.0 / participants as f64
            } else {
                0.0
            },
            cpu_per_participant: if participants > 0 {
                cpu / participants as f64
            } else {
                0.0
            },
            generator_cpu_cores: (b.generator_cpu_s - a.generator_cpu_s) / secs,
            generator_lag_ms: b.generator_lag.since(&a.generator_lag).percentiles(),
        }
    }
}

/// Runs a scenario against a server and returns its report.
pub async fn run(options: RunOptions) -> Result<RunReport, RunError> {
    let metrics_host =
        http_host_of(&options.url).ok_or_else(|| RunError::BadUrl(options.url.clone()))?;
    // Fail early and clearly if the server is not there.
    let first = fetch_metrics(&metrics_host, Duration::from_secs(5))
        .await
        .map_err(|reason| RunError::Metrics {
            addr: metrics_host.clone(),
            reason,
        })?;
    let server_pid = metrics_host
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .and_then(local_listener_pid);
    let clip_dir = options.clip_dir.clone();
    // ffmpeg and libopus take a while the first time: keep them off the runtime's threads.
    let media = Arc::new(
        tokio::task::spawn_blocking(move || EncodedMedia::prepare(&clip_dir))
            .await
            .map_err(|e| RunError::NobodyJoined(format!("preparing media panicked: {e}")))??,
    );
    let bar = if options.progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {prefix} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    let lag = Arc::new(std::sync::Mutex::new(LatencyHistogram::default()));
    let lag_task = tokio::spawn(measure_lag(lag.clone()));
    let (joins_tx, joins_rx) = mpsc::unbounded_channel();
    let tokens = options
        .jwt_secret
        .as_deref()
        .map(|s| TokenAuthority::new(s.as_bytes()));
    let mut st = State {
        metrics_host,
        started: Instant::now(),
        members: Vec::new(),
        join_failures: Vec::new(),
        connect_ms: Vec::new(),
        pending_joins: 0,
        joins_rx,
        joins_tx,
        snapshots: Vec::new(),
        bar,
        lag,
        media: media.clone(),
        tokens,
        run_id: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
        baseline: ServerSample::parse(&first),
        server_pid,
        options,
    };
    let first = st.snapshot().await;
    st.snapshots.push(first);
    let scenario = st.options.scenario.clone();
    let mut steps = Vec::new();
    let mut stop_reason = None;
    let window = if let Some(th) = scenario.thresholds.clone() {
        // Ramp: one room per step.
        let mut stable: Option<StepReport> = None;
        for room in 0..th.max_rooms {
            let step_start = Instant::now();
            st.bar
                .set_prefix(format!("step {}: {} room(s)", room + 1, room + 1));
            st.start_room(room);
            let measure_from = step_start + scenario.ramp.room_interval - th.window;
            st.wait(measure_from, false).await;
            let a = st.window_snapshot().await;
            st.wait(step_start + scenario.ramp.room_interval, false)
                .await;
            // Joins still pending at the end of the step are failures of this load.
            st.wait(Instant::now() + JOIN_TIMEOUT, true).await;
            let b = st.window_snapshot().await;
            let w = Window::between(&a, &b, st.baseline);
            let mut broke = Vec::new();
            if w.loss_pct > th.max_loss_pct {
                broke.push(format!("loss {:.2} % > {} %", w.loss_pct, th.max_loss_pct));
            }
            if w.media_latency_ms.p95 > th.max_latency_p95_ms {
                broke.push(format!(
                    "latency p95 {:.1} ms > {} ms",
                    w.media_latency_ms.p95, th.max_latency_p95_ms
                ));
            }
            let failed_here = st
                .join_failures
                .iter()
                .filter(|f| f.starts_with(&format!("room {room} ")))
                .count();
            if failed_here > 0 {
                broke.push(format!("{failed_here} join(s) failed"));
            }
            let step = StepReport {
                rooms: room + 1,
                window: w,
                within_thresholds: broke.is_empty(),
            };
            steps.push(step.clone());
            if !broke.is_empty() {
                stop_reason = Some(format!("{} room(s): {}", room + 1, broke.join(", ")));
                break;
            }
            stable = Some(step);
        }
        if stop_reason.is_none() {
            stop_reason = Some(format!("reached max_rooms = {}", th.max_rooms));
        }
        stable
            .or_else(|| steps.last().cloned())
            .map(|s| s.window)
            .unwrap_or_else(|| Window::between(&st.snapshots[0], &st.snapshots[0], None))
    } else {
        st.bar.set_prefix(format!(
            "joining {} room(s) × {}",
            scenario.rooms, scenario.participants
        ));
        for room in 0..scenario.rooms {
            st.start_room(room);
            if room + 1 < scenario.rooms {
                let next = Instant::now() + scenario.ramp.room_interval;
                st.wait(next, false).await;
            }
        }
        st.wait(Instant::now() + JOIN_TIMEOUT * 2, true).await;
        if st.members.is_empty() {
            lag_task.abort();
            st.bar.finish_and_clear();
            return Err(RunError::NobodyJoined(
                st.join_failures.first().cloned().unwrap_or_default(),
            ));
        }
        st.bar.set_prefix("settling");
        st.wait(Instant::now() + SETTLE, false).await;
        let a = st.window_snapshot().await;
        st.bar
            .set_prefix(format!("measuring {:?}", scenario.duration));
        st.wait(Instant::now() + scenario.duration, false).await;
        let b = st.window_snapshot().await;
        Window::between(&a, &b, st.baseline)
    };
    let completeness = completeness(&st.members);
    let timeline = st
        .snapshots
        .windows(2)
        .map(|w| {
            let win = Window::between(&w[0], &w[1], st.baseline);
            Point::from_window(w[1].t, &win)
        })
        .collect();
    let received_kbps = received_kbps(&st.members);
    st.bar.finish_and_clear();
    lag_task.abort();
    let report = RunReport::new(crate::run_report::RunInfo {
        server_cpu_source: match st.server_pid {
            Some(pid) if pid == std::process::id() => {
                "/proc (server in this process: includes the load generator)".to_owned()
            }
            Some(pid) => format!("/proc/{pid}/stat"),
            None => "/metrics process_cpu_seconds_total (whole seconds)".to_owned(),
        },
        scenario: scenario.clone(),
        url: st.options.url.clone(),
        observers_have_role: st.options.jwt_secret.is_some(),
        server_observers: st
            .snapshots
            .iter()
            .filter_map(|s| s.server.map(|s| s.observers as usize))
            .max()
            .unwrap_or(0),
        connect_ms: Percentiles::of(&st.connect_ms),
        window,
        steps,
        stop_reason,
        completeness,
        join_failures: st.join_failures.clone(),
        timeline,
        media: crate::run_report::MediaInfo {
            audio_kbps: media.audio.bitrate() / 1000.0,
            camera_kbps: media.camera.bitrate() / 1000.0,
            camera: format!(
                "{}x{} @ {:.0} fps",
                media.camera.width,
                media.camera.height,
                1.0 / media.camera.frame_interval.as_secs_f64()
            ),
            screen_kbps: media.screen.bitrate() / 1000.0,
            screen: format!(
                "{}x{} @ {:.0} fps",
                media.screen.width,
                media.screen.height,
                1.0 / media.screen.frame_interval.as_secs_f64()
            ),
            received_kbps,
        },
        machine: Machine::this(),
    });
    futures_util::future::join_all(st.members.into_iter().map(|m| m.participant.leave())).await;
    Ok(report)
}

/// Lateness of a 10 ms timer in the load generator's runtime: when it grows, the
/// generator (not the server) is what delays packets.
async fn measure_lag(lag: Arc<std::sync::Mutex<LatencyHistogram>>) {
    let period = Duration::from_millis(10);
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let late = Instant::now().saturating_duration_since(next);
        if let Ok(mut l) = lag.lock() {
            l.record(late.as_secs_f64() * 1000.0);
        }
        next = Instant::now() + period;
    }
}

/// Which subscriber got which publisher's tracks: every member must receive every other
/// member's published tracks (observers' rooms included).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Completeness {
    pub streams_expected: usize,
    pub streams_received: usize,
    /// `room r: subscriber ← publisher: what is missing`.
    pub missing: Vec<String>,
}

fn completeness(members: &[Member]) -> Completeness {
    let mut c = Completeness::default();
    for sub in members {
        let stats = sub.participant.stats();
        let mut got: HashMap<(&str, Kind), usize> = HashMap::new();
        for t in stats.tracks.values().filter(|t| t.packets > 0) {
            *got.entry((t.publisher.as_str(), t.kind)).or_default() += 1;
        }
        for publisher in members
            .iter()
            .filter(|p| p.room == sub.room && p.participant.id != sub.participant.id)
        {
            let want_audio = usize::from(publisher.seat.audio);
            let want_video =
                usize::from(publisher.seat.camera) + usize::from(publisher.seat.screen);
            let id = publisher.participant.id.as_str();
            let have_audio = got
                .get(&(id, Kind::Audio))
                .copied()
                .unwrap_or(0)
                .min(want_audio);
            let have_video = got
                .get(&(id, Kind::Video))
                .copied()
                .unwrap_or(0)
                .min(want_video);
            c.streams_expected += want_audio + want_video;
            c.streams_received += have_audio + have_video;
            if have_audio < want_audio || have_video < want_video {
                c.missing.push(format!(
                    "room {}: {} ← {}: audio {have_audio}/{want_audio}, video {have_video}/{want_video}",
                    sub.room, sub.name, publisher.name
                ));
            }
        }
    }
    c
}

/// Mean received bit rate per stream kind, over the whole run, in kbit/s: shows the media
/// arrived at the rates the clips were encoded at.
fn received_kbps(members: &[Member]) -> HashMap<String, f64> {
    let mut sums: HashMap<String, (f64, usize)> = HashMap::new();
    for m in members {
        let stats = m.participant.stats();
        for t in stats.tracks.values() {
            let Some(elapsed) = t.elapsed() else { continue };
            if elapsed < 1.0 {
                continue;
            }
            let publisher_seat = members
                .iter()
                .find(|p| p.participant.id == t.publisher)
                .map(|p| p.seat);
            let label = match (t.kind, publisher_seat) {
                (Kind::Audio, _) => "audio",
                // A presenter's two videos: the bigger one is the screen share.
                (Kind::Video, Some(s)) if s.screen => "presenter video",
                (Kind::Video, _) => "camera",
            };
            let e = sums.entry(label.to_owned()).or_default();
            e.0 += t.bytes as f64 * 8.0 / elapsed / 1000.0;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(k, (sum, n))| (k, sum / n as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_text() {
        let text = "# HELP process_cpu_seconds_total x\n# TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total 12.5\nprocess_resident_memory_bytes 1.048576e7\n\
                    consilium_forwarded_bytes_total 1000\n\
                    consilium_participants_by_role{role=\"observer\"} 2\n\
                    consilium_dropped_packets_total{reason=\"a\"} 2\nconsilium_dropped_packets_total{reason=\"b\"} 3\n\
                    consilium_forwarded_bytes_total_extra 99\n";
        let s = ServerSample::parse(text).unwrap();
        assert_eq!(s.cpu_seconds, 12.5);
        assert_eq!(s.rss_bytes, 10_485_760.0);
        assert_eq!(s.forwarded_bytes, 1000.0);
        assert_eq!(s.observers, 2.0);
        assert_eq!(
            metric_sum(text, "consilium_dropped_packets_total"),
            Some(5.0)
        );
        assert_eq!(metric_sum(text, "nothing"), None);
        assert!(ServerSample::parse("consilium_forwarded_bytes_total 1\n").is_none());
    }

    #[test]
    fn cpu_time_from_proc_stat() {
        let stat = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100";
        assert_eq!(cpu_seconds_from_stat(stat), Some(3.0));
        assert!(own_cpu_seconds() >= 0.0);
        assert_eq!(cpu_seconds_from_stat("garbage"), None);
    }

    #[tokio::test]
    async fn finds_the_local_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(local_listener_pid(port), Some(std::process::id()));
    }

    #[test]
    fn metrics_live_next_to_the_websocket() {
        assert_eq!(
            http_host_of("ws://127.0.0.1:8080/ws").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            http_host_of("ws://example.org/ws").as_deref(),
            Some("example.org:80")
        );
        assert_eq!(http_host_of("wss://example.org/ws"), None);
        assert_eq!(http_host_of("ws:///ws"), None);
    }

    fn snap(t: f64, bytes: u64, expected: u64, lost: u64, cpu: f64, rss_mib: f64) -> Snapshot {
        Snapshot {
            t,
            joined: 10,
            rx_bytes: bytes,
            expected,
            lost,
            latency: LatencyHistogram::default(),
            jitter_ms: 1.5,
            server: Some(ServerSample {
                cpu_seconds: cpu,
                rss_bytes: rss_mib * 1_048_576.0,
                anon_bytes: (rss_mib - 10.0) * 1_048_576.0,
                forwarded_bytes: bytes as f64,
                observers: 0.0,
            }),
            generator_cpu_s: 0.0,
            generator_lag: LatencyHistogram::default(),
        }
    }

    #[test]
    fn windows_turn_counters_into_rates() {
        let a = snap(10.0, 0, 1000, 0, 5.0, 30.0);
        let b = snap(20.0, 125_000_000, 11_000, 50, 10.0, 40.0);
        let w = Window::between(&a, &b, a.server);
        assert_eq!(w.seconds, 10.0);
        assert!((w.forwarded_mbps - 100.0).abs() < 1e-9);
        assert!((w.server_forwarded_mbps - 100.0).abs() < 1e-9);
        assert!((w.loss_pct - 0.5).abs() < 1e-9);
        assert!((w.server_cpu_cores - 0.5).abs() < 1e-9);
        assert!((w.forwarded_mbps_per_core - 200.0).abs() < 1e-9);
        assert_eq!(w.server_rss_mib, 40.0);
        assert!(
            (w.rss_per_participant_mib - 1.0).abs() < 1e-9,
            "(40 − 30) / 10"
        );
        assert_eq!(w.server_anon_mib, 30.0, "RSS without code pages");
        assert!((w.anon_per_participant_mib - 1.0).abs() < 1e-9);
        assert!((w.cpu_per_participant - 0.05).abs() < 1e-9);
        let lost_server = Snapshot {
            server: None,
            ..b.clone()
        };
        let w = Window::between(&a, &lost_server, None);
        assert!(w.server_cpu_cores.is_nan() && w.server_rss_mib.is_nan());
        assert!(w.forwarded_mbps > 0.0, "client figures stay");
        let json = serde_json::to_value(&w).unwrap();
        assert!(json["server_cpu_cores"].is_null());
    }
}
