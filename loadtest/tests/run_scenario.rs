//! `loadtest run` end to end: the real server in-process (with a JWT secret, so observers
//! join with the observer role), a short scenario of real Opus and VP8 through the SFU,
//! and the report it writes. Checks behaviour on loopback, not performance.

use consilium::Config;
use loadtest::run::{RunOptions, run};
use loadtest::scenario::Scenario;
use serde_json::Value;
use std::net::IpAddr;

const SCENARIO: &str = r#"
name = "it-short"
rooms = 2
participants = 3
publishers = 2
screen_share = 1
observers = 1
duration = "5s"

[ramp]
join_interval = "50ms"
room_interval = "200ms"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_scenario_delivers_every_stream_and_writes_the_report() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let secret = "loadtest-run-secret";
    let server = consilium::start(Config {
        jwt_secret: Some(secret.to_owned()),
        ..Config::for_tests()
    })
    .await
    .expect("server starts");
    let report = run(RunOptions {
        scenario: Scenario::parse(SCENARIO).expect("scenario"),
        url: format!("ws://{}/ws", server.http_addr),
        jwt_secret: Some(secret.to_owned()),
        bind_ip: IpAddr::from([127, 0, 0, 1]),
        clip_dir: loadtest::clips::default_cache_dir(),
        progress: false,
    })
    .await
    .expect("the run completes");
    server.shutdown().await;

    let table = report.table();
    assert!(report.join_failures.is_empty(), "{table}");
    assert_eq!(report.window.participants, 6, "{table}");
    // Per room: the presenter sends audio + camera + screen to 2, the specialist audio +
    // camera to 2, the observer nothing: 10 streams, 20 in two rooms.
    assert_eq!(report.streams_expected, 20, "{table}");
    assert!(report.missing_streams.is_empty(), "{table}");
    assert_eq!(report.streams_received, 20, "{table}");
    assert_eq!(report.observers_joined_as, "observer");
    assert_eq!(
        report.server_observers, 2,
        "the server gave both observers the role"
    );
    let w = &report.window;
    assert!(w.media_latency_ms.count > 1000, "{table}");
    assert!(w.media_latency_ms.p95 < 500.0, "{table}");
    assert!(w.loss_pct < 5.0, "{table}");
    assert!(w.jitter_ms < 100.0, "{table}");
    // About 2×(2 audio + 2 camera + 1 screen) × 2 receivers of ~32k/1M/1.2M bit/s.
    assert!(w.forwarded_mbps > 1.0 && w.forwarded_mbps < 50.0, "{table}");
    // The server's own count agrees with what the clients received (within 25 %: the
    // windows are sampled at slightly different moments).
    let ratio = w.server_forwarded_mbps / w.forwarded_mbps;
    assert!((0.75..1.25).contains(&ratio), "{table}");
    assert!(w.server_rss_mib > 1.0, "{table}");
    assert!(w.server_cpu_cores > 0.0, "{table}");
    assert!(report.connect_ms.count == 6 && report.connect_ms.p95 > 0.0);
    assert!(report.timeline.len() >= 5);
    assert!(report.media.camera.starts_with("640x360"));
    assert!(report.media.screen.starts_with("1920x1080"));

    let dir = std::env::temp_dir().join(format!("loadtest-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.json"), report.to_json()).unwrap();
    std::fs::write(dir.join("report.html"), report.html()).unwrap();
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    for key in [
        "participants",
        "loss_pct",
        "jitter_ms",
        "forwarded_mbps",
        "server_cpu_cores",
        "forwarded_mbps_per_core",
        "server_rss_mib",
        "rss_per_participant_mib",
    ] {
        assert!(json[key].is_number(), "report.json has {key}: {json:#}");
    }
    for key in ["connect_ms", "media_latency_ms"] {
        for p in ["p50", "p95", "p99"] {
            assert!(json[key][p].is_number(), "report.json has {key}.{p}");
        }
    }
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    for chart in [
        "Participants",
        "Forwarded bit rate",
        "Packet loss",
        "Media latency",
        "CPU",
        "Server memory",
    ] {
        assert!(html.contains(chart), "report.html plots {chart}");
    }
    assert!(html.matches("<polyline").count() >= 6);
    let _ = std::fs::remove_dir_all(&dir);
}
