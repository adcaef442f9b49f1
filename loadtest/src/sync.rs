//! Shared-viewer latency: how long a presenter's viewport change and an annotation take to
//! reach the other participants through the server's authority (docs/collaboration.md).
//!
//! One room: the first participant is the host and so the presenter, the others follow.
//! Every message carries its send time (µs since the Unix epoch, same clock: one process),
//! so each follower measures send → receive for every `viewer` and `annotation` it gets.

use crate::participant::{Event, Participant, ParticipantConfig};
use crate::stats::Percentiles;
use anyhow::{Context, bail};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to run.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub url: String,
    pub room: String,
    /// Participants besides the presenter.
    pub followers: usize,
    /// How long the presenter keeps changing the view.
    pub duration: Duration,
    /// Viewport changes per second (a client coalesces to one per animation frame).
    pub viewer_rate: f64,
    /// Annotations per second (the server allows a burst of 30, then 10 a second).
    pub annotation_rate: f64,
    /// Whether participants also publish audio and video, as in a real board.
    pub media: bool,
}

/// What was measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncReport {
    pub followers: usize,
    pub duration_s: f64,
    pub viewer_sent: usize,
    pub viewer_received: usize,
    pub viewer_latency_ms: Percentiles,
    pub annotations_sent: usize,
    pub annotations_received: usize,
    pub annotation_latency_ms: Percentiles,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn config(options: &SyncOptions, name: &str) -> ParticipantConfig {
    ParticipantConfig {
        publish_audio: options.media,
        publish_video: options.media,
        ..ParticipantConfig::new(&options.url, &options.room, name)
    }
}

/// Joins, waits until everyone's channel is synced (a `snapshot`), and returns the
/// participant.
async fn join_synced(options: &SyncOptions, name: &str) -> anyhow::Result<Participant> {
    let mut p = Participant::join(config(options, name))
        .await
        .with_context(|| format!("{name} joining"))?;
    p.wait_for(Duration::from_secs(15), |e| *e == Event::MediaConnected)
        .await
        .with_context(|| format!("{name}: media never connected"))?;
    // The channel opens with the transport; `hello` until the snapshot comes back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.send_data(&json!({"type": "hello", "since": null}));
        let got = p
            .wait_for(
                Duration::from_millis(300),
                |e| matches!(e, Event::Data(v) if v["type"] == "snapshot"),
            )
            .await;
        if got.is_some() {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("{name}: no snapshot from the server");
        }
    }
}

/// Runs the benchmark.
pub async fn run(options: &SyncOptions) -> anyhow::Result<SyncReport> {
    let presenter = join_synced(options, "Presenter").await?;
    let mut followers = Vec::new();
    for i in 0..options.followers {
        followers.push(join_synced(options, &format!("Follower-{i}")).await?);
    }
    // Followers record latencies on their own tasks while the presenter sends.
    let listen_for = options.duration + Duration::from_secs(2);
    let tasks: Vec<_> = followers
        .into_iter()
        .map(|mut f| {
            tokio::spawn(async move {
                let (mut viewer, mut annotations) = (Vec::new(), Vec::new());
                let end = tokio::time::Instant::now() + listen_for;
                loop {
                    let left = end.saturating_duration_since(tokio::time::Instant::now());
                    let Some(event) = f.next_event(left).await else {
                        break;
                    };
                    let Event::Data(v) = event else { continue };
                    let sent = match v["type"].as_str() {
                        Some("viewer") => v["state"]["sent_us"].as_u64().map(|t| (t, true)),
                        Some("annotation") => v["annotation"]["text"]
                            .as_str()
                            .and_then(|t| t.strip_prefix("sent_us="))
                            .and_then(|t| t.parse().ok())
                            .map(|t| (t, false)),
                        _ => None,
                    };
                    if let Some((t, is_viewer)) = sent {
                        let ms = now_micros().saturating_sub(t) as f64 / 1000.0;
                        if is_viewer {
                            viewer.push(ms);
                        } else {
                            annotations.push(ms);
                        }
                    }
                }
                f.leave().await;
                (viewer, annotations)
            })
        })
        .collect();

    let started = Instant::now();
    let (mut viewer_sent, mut annotations_sent) = (0usize, 0usize);
    let viewer_every = Duration::from_secs_f64(1.0 / options.viewer_rate.max(0.1));
    let annotation_every = Duration::from_secs_f64(1.0 / options.annotation_rate.max(0.01));
    let mut next_viewer = started;
    let mut next_annotation = started;
    while started.elapsed() < options.duration {
        let now = Instant::now();
        if now >= next_viewer {
            viewer_sent += 1;
            presenter.send_data(&json!({"type": "viewer", "state": {
                "layout": "1x1", "active": 0,
                "viewports": [{"study": "1.2.826.0.1.3680043.10.1", "series": "1.2.826.0.1.3680043.10.1.1",
                    "slice": viewer_sent % 120, "ww": 400, "wc": 40, "zoom": 1.0, "pan": [0, 0], "invert": false}],
                "sent_us": now_micros(),
            }}));
            next_viewer += viewer_every;
        }
        if now >= next_annotation {
            annotations_sent += 1;
            presenter.send_data(&json!({"type": "annotate", "op": "add", "ref": format!("r{annotations_sent}"),
                "annotation": {"kind": "text", "study": "1.2.826.0.1.3680043.10.1",
                    "series": "1.2.826.0.1.3680043.10.1.1", "sop": "1.2.826.0.1.3680043.10.1.1.1",
                    "frame": 1, "points": [[100.0, 100.0]], "text": format!("sent_us={}", now_micros()),
                    "color": "#ffcc00", "stats": null}}));
            next_annotation += annotation_every;
        }
        let wake = next_viewer.min(next_annotation);
        tokio::time::sleep_until(wake.into()).await;
    }
    let duration_s = started.elapsed().as_secs_f64();
    let (mut viewer, mut annotations) = (Vec::new(), Vec::new());
    for task in tasks {
        let (v, a) = task.await.context("a follower task")?;
        viewer.extend(v);
        annotations.extend(a);
    }
    presenter.leave().await;
    Ok(SyncReport {
        followers: options.followers,
        duration_s,
        viewer_sent,
        viewer_received: viewer.len(),
        viewer_latency_ms: Percentiles::of(&viewer),
        annotations_sent,
        annotations_received: annotations.len(),
        annotation_latency_ms: Percentiles::of(&annotations),
    })
}
