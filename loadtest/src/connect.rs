//! The connect-time scenario: many joins into rooms where someone already publishes,
//! each timed from its start to the first RTP packet it receives from the room.
//!
//! Each room gets one long-lived publisher first. Then `concurrency` workers each own a
//! place in a room (`room_size - 1` workers per room) and join, wait for the first remote
//! RTP, leave and join again, until `joins` joins were made.

use crate::participant::{Event, Participant, ParticipantConfig};
use crate::report::{JoinSample, Machine, Report, RunInfo};
use anyhow::{Context, bail};
use futures_util::StreamExt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How to run the scenario.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub url: String,
    pub joins: usize,
    pub concurrency: usize,
    /// Participants per room: one publisher and `room_size - 1` measured joiners at a time.
    pub room_size: usize,
    /// Most a join may take, from its start to the first remote RTP.
    pub timeout: Duration,
    /// Measured joiners only receive (they publish audio+video by default, as browsers do).
    pub receive_only: bool,
    pub bind_ip: IpAddr,
    pub label: Option<String>,
    /// Joiners join with `POST /join`, the WebSocket opening alongside.
    pub join_over_http: bool,
    /// Receive slots in each joiner's offer ([`ParticipantConfig::receive_slots`]).
    pub receive_slots: usize,
    /// Print progress to stderr.
    pub progress: bool,
}

/// Rooms needed so `concurrency` joiners fit `room_size - 1` to a room.
pub fn rooms_needed(concurrency: usize, room_size: usize) -> usize {
    concurrency
        .div_ceil(room_size.saturating_sub(1).max(1))
        .max(1)
}

/// The room worker `worker` joins.
pub fn room_of(worker: usize, room_size: usize) -> usize {
    worker / room_size.saturating_sub(1).max(1)
}

/// Runs the scenario and returns its report.
pub async fn run(options: &ConnectOptions) -> anyhow::Result<Report> {
    if options.room_size < 2 {
        bail!("--room-size must be at least 2 (a publisher and a joiner)");
    }
    if options.joins == 0 || options.concurrency == 0 {
        bail!("--joins and --concurrency must be at least 1");
    }
    let concurrency = options.concurrency.min(options.joins);
    let rooms = rooms_needed(concurrency, options.room_size);
    let run_id = format!("{:08x}", rand::random::<u32>());
    let room_name = |r: usize| format!("lt-{run_id}-{r}");

    // 1. A publisher in every room, connected and sending before anyone is measured.
    if options.progress {
        eprintln!("starting {rooms} publisher(s) …");
    }
    let publishers: Vec<anyhow::Result<Participant>> =
        futures_util::stream::iter((0..rooms).map(|r| {
            let mut config =
                ParticipantConfig::new(&options.url, &room_name(r), &format!("publisher-{r}"));
            config.bind_ip = options.bind_ip;
            let timeout = options.timeout;
            async move {
                let mut p = Participant::join(config).await?;
                p.wait_for(timeout, |e| matches!(e, Event::MediaConnected))
                    .await
                    .context("publisher media did not connect")?;
                Ok(p)
            }
        }))
        .buffer_unordered(concurrency.min(16))
        .collect()
        .await;
    let mut ready = Vec::new();
    let mut first_error = None;
    for p in publishers {
        match p {
            Ok(p) => ready.push(p),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        for p in ready {
            p.leave().await;
        }
        return Err(e.context("starting the publishers"));
    }
    // Let the SFU see the publishers' first packets (a track is published on its first RTP).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. The measured joins.
    if options.progress {
        eprintln!(
            "{} joins, {} at a time, {} room(s) of {} …",
            options.joins, concurrency, rooms, options.room_size
        );
    }
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let ticker = options.progress.then(|| {
        let (done, failed, joins) = (done.clone(), failed.clone(), options.joins);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(2));
            every.tick().await;
            loop {
                every.tick().await;
                eprintln!(
                    "  {}/{} joins done, {} failed",
                    done.load(Ordering::Relaxed),
                    joins,
                    failed.load(Ordering::Relaxed)
                );
            }
        })
    });
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let room = room_name(room_of(w, options.room_size));
        let (next, done, failed) = (next.clone(), done.clone(), failed.clone());
        let options = options.clone();
        workers.spawn(async move {
            let mut samples = Vec::new();
            let mut failures = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= options.joins {
                    break;
                }
                let mut config =
                    ParticipantConfig::new(&options.url, &room, &format!("joiner-{i}"));
                config.bind_ip = options.bind_ip;
                config.publish_audio = !options.receive_only;
                config.publish_video = !options.receive_only;
                config.join_over_http = options.join_over_http;
                config.receive_slots = options.receive_slots;
                match measure_one(config, options.timeout).await {
                    Ok(s) => samples.push(s),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.push(e);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (samples, failures)
        });
    }
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    while let Some(res) = workers.join_next().await {
        let (s, f) = res.context("a join worker panicked")?;
        samples.extend(s);
        failures.extend(f);
    }
    let duration_s = started.elapsed().as_secs_f64();
    if let Some(t) = ticker {
        t.abort();
    }
    futures_util::future::join_all(ready.into_iter().map(Participant::leave)).await;
    Ok(Report::new(
        RunInfo {
            url: options.url.clone(),
            label: options.label.clone(),
            joins: options.joins,
            concurrency,
            room_size: options.room_size,
            receive_only: options.receive_only,
            join_over_http: options.join_over_http,
            receive_slots: options.receive_slots,
            duration_s,
            machine: Machine::this(),
        },
        &samples,
        &failures,
    ))
}

/// One join: start → first remote RTP, then leave. Errors are short reasons for the report.
async fn measure_one(config: ParticipantConfig, timeout: Duration) -> Result<JoinSample, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut p = match tokio::time::timeout_at(deadline, Participant::join(config)).await {
        Err(_) => return Err("timeout before joined".into()),
        Ok(Err(e)) => return Err(format!("join failed: {}", root_cause(&e))),
        Ok(Ok(p)) => p,
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let event = p
        .wait_for(left, |e| {
            matches!(e, Event::FirstRemoteRtp { .. } | Event::Closed)
        })
        .await;
    let stats = p.stats();
    let result = match event {
        Some(Event::FirstRemoteRtp { .. }) => {
            JoinSample::from_timings(&stats.timings).ok_or_else(|| "incomplete timings".to_owned())
        }
        Some(_) => Err("signaling closed before the first remote RTP".into()),
        None if stats.timings.media_connected.is_some() => {
            Err("timeout: media connected, no remote RTP".into())
        }
        None => Err("timeout: media never connected".into()),
    };
    p.leave().await;
    result
}

fn root_cause(e: &anyhow::Error) -> String {
    let text = e.root_cause().to_string();
    // Keep reasons groupable: drop per-attempt details such as ports.
    text.split(" (os error").next().unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_fill_rooms_of_the_given_size() {
        assert_eq!(rooms_needed(50, 2), 50);
        assert_eq!(rooms_needed(50, 3), 25);
        assert_eq!(rooms_needed(50, 4), 17);
        assert_eq!(rooms_needed(1, 2), 1);
        assert_eq!(rooms_needed(1, 10), 1);
        assert_eq!((0..50).map(|w| room_of(w, 2)).max(), Some(49));
        assert_eq!(room_of(0, 4), 0);
        assert_eq!(room_of(2, 4), 0);
        assert_eq!(room_of(3, 4), 1);
        // No room ever holds more than room_size - 1 joiners (plus its publisher).
        for size in 2..8 {
            for c in 1..60 {
                let mut per_room = vec![0; rooms_needed(c, size)];
                for w in 0..c {
                    per_room[room_of(w, size)] += 1;
                }
                assert!(
                    per_room.iter().all(|&n| n >= 1 && n < size),
                    "{c} in rooms of {size}"
                );
            }
        }
    }
}
