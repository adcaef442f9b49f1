//! Connect-time instrumentation: every phase of a join is measured, in order, and exported
//! as `consilium_connect_phase_seconds{phase,side}`; clients report their own timeline.

mod common;

use common::{WAIT, expect_error, http_get, join_ok, metric, send_json};
use loadtest::{Event, Kind, Participant, ParticipantConfig};
use serde_json::json;

fn series(phase: &str, side: &str, what: &str) -> String {
    format!("consilium_connect_phase_seconds_{what}{{phase=\"{phase}\",side=\"{side}\"}}")
}

async fn first_media(p: &mut Participant, from: &str) {
    let got = p
        .wait_for(WAIT, |e| {
            matches!(e, Event::FirstRemoteRtp { publisher, kind: Kind::Video } if publisher == from)
        })
        .await;
    assert!(
        got.is_some()
            || p.stats()
                .received
                .contains_key(&(from.to_owned(), Kind::Video))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_phase_is_measured_once_per_join_and_in_order() {
    let server = common::start_open().await;
    let url = format!("ws://{}/ws", server.http_addr);
    let mut a = Participant::join(ParticipantConfig::new(&url, "timed", "A"))
        .await
        .unwrap();
    let mut b = Participant::join(ParticipantConfig::new(&url, "timed", "B"))
        .await
        .unwrap();
    first_media(&mut a, &b.id).await;
    first_media(&mut b, &a.id).await;

    let phases = [
        "join_received",
        "answer_sent",
        "ice_connected",
        "dtls_connected",
        "first_rtp_received",
        "first_rtp_forwarded",
    ];
    // The last milestone may still be in flight to the session: poll briefly.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = http_get(server.http_addr, "/metrics").await.1;
        if metric(&metrics, &series("first_rtp_forwarded", "server", "count")) == Some(2.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut previous = 0.0;
    for phase in phases {
        let count = metric(&metrics, &series(phase, "server", "count"));
        assert_eq!(count, Some(2.0), "{phase} once per join:\n{metrics}");
        // Sums over the same two joins: a later phase has a larger sum.
        let sum = metric(&metrics, &series(phase, "server", "sum")).unwrap();
        assert!(
            sum >= previous,
            "{phase} ({sum} s) came before the phase preceding it ({previous} s)"
        );
        previous = sum;
    }
    common::stop(server).await;
}

#[tokio::test]
async fn client_timings_land_in_the_client_side_histogram() {
    let server = common::start_open().await;
    let mut ws = common::connect(&server).await;
    send_json(
        &mut ws,
        &json!({"type": "client_timings", "timings": {"joined": 5.0}}),
    )
    .await;
    expect_error(&mut ws, "not_joined").await;

    join_ok(&mut ws, "timings", "Dr T", None).await;
    send_json(
        &mut ws,
        &json!({"type": "client_timings", "timings": {"joined": -3.0}}),
    )
    .await;
    expect_error(&mut ws, "bad_message").await;
    send_json(
        &mut ws,
        &json!({"type": "client_timings", "timings": {
            "ws_open": 12.5, "joined": 40.0, "ice_connected": 80.0,
            "first_remote_video_frame": 150.0
        }}),
    )
    .await;
    send_json(
        &mut ws,
        &json!({"type": "client_timings", "timings": {"joined": 41.0}}),
    )
    .await;
    expect_error(&mut ws, "bad_message").await;

    let metrics = http_get(server.http_addr, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            &series("first_remote_video_frame", "client", "count")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            &series("first_remote_video_frame", "client", "sum")
        ),
        Some(0.15)
    );
    assert_eq!(
        metric(&metrics, &series("joined", "client", "count")),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, &series("media_ready", "client", "count")),
        None
    );
    common::stop(server).await;
}
