//! The media path end to end: the real server in-process, real WebRTC peers over real UDP
//! sockets on loopback, through the real signaling.

mod common;

use consilium::{Config, Server};
use loadtest::{Event, Kind, Participant, ParticipantConfig};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn server() -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    consilium::start(Config::for_tests())
        .await
        .expect("server starts")
}

fn ws_url(server: &Server) -> String {
    format!("ws://{}/ws", server.http_addr)
}

use common::wait_for_media;

async fn http_get(server: &Server, path: &str) -> String {
    common::http_get(server.http_addr, path).await.1
}

fn metric(text: &str, series: &str) -> f64 {
    common::metric(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_audio_and_video_and_see_each_other_leave() {
    let server = server().await;
    let url = ws_url(&server);
    let mut alice = Participant::join(ParticipantConfig::new(&url, "board-1", "Alice"))
        .await
        .expect("alice joins");
    assert!(alice.others.is_empty());
    let mut bob = Participant::join(ParticipantConfig::new(&url, "board-1", "Bob"))
        .await
        .expect("bob joins");
    assert_eq!(bob.others, vec![(alice.id.clone(), "Alice".to_owned())]);
    let joined = alice
        .wait_for(WAIT, |e| matches!(e, Event::ParticipantJoined { .. }))
        .await;
    assert_eq!(
        joined,
        Some(Event::ParticipantJoined {
            id: bob.id.clone(),
            name: "Bob".into()
        })
    );

    wait_for_media(&mut alice, &bob.id).await;
    wait_for_media(&mut bob, &alice.id).await;

    // Media keeps flowing, in order, with sane latency.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (me, other) in [(&alice, &bob.id), (&bob, &alice.id)] {
        let stats = me.stats();
        let audio = &stats.received[&(other.clone(), Kind::Audio)];
        let video = &stats.received[&(other.clone(), Kind::Video)];
        assert!(audio.packets >= 10, "audio packets: {}", audio.packets);
        assert!(video.packets >= 10, "video packets: {}", video.packets);
        assert!(
            audio.latencies_ms.iter().all(|ms| *ms < 1000.0),
            "latency through loopback SFU"
        );
        assert!(
            !me.stats()
                .received
                .contains_key(&(me.id.clone(), Kind::Audio)),
            "no echo"
        );
    }
    // A subscriber's keyframe request (its decoder lost the picture) reaches the
    // publisher through the SFU.
    let plis_before = alice.stats().plis_received;
    bob.request_keyframes();
    let mut relayed = false;
    for _ in 0..50 {
        if alice.stats().plis_received > plis_before {
            relayed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(relayed, "bob's PLI did not reach alice");
    let metrics = http_get(&server, "/metrics").await;
    assert!(metric(&metrics, "consilium_rtcp_feedback_total{type=\"pli\"}") >= 1.0);
    assert!(metric(&metrics, "consilium_keyframe_requests_total") >= 1.0);

    // Data channel: relayed to the other, stamped with the sender.
    alice.send_data(&json!({"kind": "viewer", "slice": 42}));
    let data = bob
        .wait_for(WAIT, |e| matches!(e, Event::Data(_)))
        .await
        .expect("bob receives alice's data channel message");
    assert_eq!(
        data,
        Event::Data(json!({"from": alice.id, "msg": {"kind": "viewer", "slice": 42}}))
    );

    let metrics = http_get(&server, "/metrics").await;
    assert!(metric(&metrics, "consilium_forwarded_packets_total") >= 40.0);
    assert_eq!(metric(&metrics, "consilium_participants"), 2.0);
    assert_eq!(metric(&metrics, "consilium_subscriptions"), 4.0);

    let bob_id = bob.id.clone();
    bob.leave().await;
    let left = alice
        .wait_for(WAIT, |e| matches!(e, Event::ParticipantLeft { .. }))
        .await;
    assert_eq!(left, Some(Event::ParticipantLeft { id: bob_id }));

    // Bob's tracks and subscriptions are gone from the SFU.
    let mut cleaned = false;
    for _ in 0..50 {
        let metrics = http_get(&server, "/metrics").await;
        if metric(&metrics, "consilium_subscriptions") == 0.0
            && metric(&metrics, "consilium_media_peers") == 1.0
        {
            cleaned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cleaned, "bob's media state was not cleaned up");
    alice.leave().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_receives_tracks_published_before_it_came() {
    let server = server().await;
    let url = ws_url(&server);
    let mut first = Participant::join(ParticipantConfig::new(&url, "board-2", "First"))
        .await
        .unwrap();
    let second = Participant::join(ParticipantConfig::new(&url, "board-2", "Second"))
        .await
        .unwrap();
    wait_for_media(&mut first, &second.id).await;
    let mut late = Participant::join(ParticipantConfig::new(&url, "board-2", "Late"))
        .await
        .unwrap();
    assert_eq!(late.others.len(), 2);
    wait_for_media(&mut late, &first.id).await;
    wait_for_media(&mut late, &second.id).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_isolated() {
    let server = server().await;
    let url = ws_url(&server);
    let mut a = Participant::join(ParticipantConfig::new(&url, "room-a", "A"))
        .await
        .unwrap();
    let _b = Participant::join(ParticipantConfig::new(&url, "room-b", "B"))
        .await
        .unwrap();
    let mut a2 = Participant::join(ParticipantConfig::new(&url, "room-a", "A2"))
        .await
        .unwrap();
    wait_for_media(&mut a, &a2.id).await;
    wait_for_media(&mut a2, &a.id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let publishers: Vec<String> = a.stats().received.keys().map(|(p, _)| p.clone()).collect();
    assert!(publishers.iter().all(|p| *p == a2.id), "{publishers:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_media_never_connects_is_removed() {
    let server = consilium::start(Config {
        media_connect_timeout: Duration::from_millis(800),
        ..Config::for_tests()
    })
    .await
    .unwrap();
    // A real peer that stays, and a signaling-only client whose ICE never starts.
    let mut stays = Participant::join(ParticipantConfig::new(&ws_url(&server), "gone", "Stays"))
        .await
        .unwrap();
    let mut ws = common::connect(&server).await;
    let joined = common::join_ok(&mut ws, "gone", "Ghost", None).await;
    let ghost = joined["participant_id"].as_str().unwrap().to_owned();
    let failed = common::wait_for(&mut ws, "media_connection").await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(common::expect_close(&mut ws).await, Some(1011));
    let left = stays
        .wait_for(WAIT, |e| matches!(e, Event::ParticipantLeft { .. }))
        .await;
    assert_eq!(left, Some(Event::ParticipantLeft { id: ghost }));
    let metrics = http_get(&server, "/metrics").await;
    assert_eq!(metric(&metrics, "consilium_participants"), 1.0);
    assert_eq!(metric(&metrics, "consilium_media_peers"), 1.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_channel_refuses_non_json_and_oversized_messages_without_relaying() {
    let server = server().await;
    let url = ws_url(&server);
    let mut a = Participant::join(ParticipantConfig::new(&url, "dc", "A"))
        .await
        .unwrap();
    let mut b = Participant::join(ParticipantConfig::new(&url, "dc", "B"))
        .await
        .unwrap();
    wait_for_media(&mut a, &b.id).await;
    a.send_data(&json!("just a string"));
    let reply = a.wait_for(WAIT, |e| matches!(e, Event::Data(_))).await;
    let Some(Event::Data(reply)) = reply else {
        panic!("no error reply")
    };
    assert_eq!(reply["error"]["code"], "bad_message", "{reply}");
    // Over 64 KiB: refused by SCTP's negotiated maximum or by the server (which answers
    // `message_too_big`); either way never relayed.
    a.send_data(&json!({"blob": "x".repeat(70 * 1024)}));
    // A valid message still goes through, and it is the first thing B receives.
    a.send_data(&json!({"ok": 1}));
    let got = b.wait_for(WAIT, |e| matches!(e, Event::Data(_))).await;
    assert_eq!(
        got,
        Some(Event::Data(json!({"from": a.id, "msg": {"ok": 1}})))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_lost_on_the_way_to_a_subscriber_is_resent_on_its_nack() {
    let server = server().await;
    let url = ws_url(&server);
    let publisher = Participant::join(ParticipantConfig::new(&url, "lossy", "Publisher"))
        .await
        .unwrap();
    // One RTP datagram in 8 is lost on the subscriber's downlink; its NACK generator asks
    // for them, and only the SFU can answer (the publisher never sent it anything).
    let mut subscriber = Participant::join(ParticipantConfig {
        publish_audio: false,
        publish_video: false,
        drop_every_nth_rtp: Some(8),
        ..ParticipantConfig::new(&url, "lossy", "Subscriber")
    })
    .await
    .unwrap();
    wait_for_media(&mut subscriber, &publisher.id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let stats = subscriber.stats();
    let video = stats
        .tracks
        .values()
        .find(|t| t.publisher == publisher.id && t.kind == Kind::Video)
        .expect("a video track from the publisher");
    assert!(
        stats.rtp_dropped_on_purpose >= 20,
        "the emulated loss happened: {} dropped",
        stats.rtp_dropped_on_purpose
    );
    assert!(
        video.packets >= 50,
        "video flowed: {} packets",
        video.packets
    );
    // What is still missing is at most what was lost in the last NACK round trip.
    assert!(
        video.quality.lost() <= 3,
        "video packets never repaired: {} of {} expected ({} RTP datagrams dropped)",
        video.quality.lost(),
        video.quality.expected(),
        stats.rtp_dropped_on_purpose
    );
    let metrics = http_get(&server, "/metrics").await;
    assert!(
        metric(
            &metrics,
            "consilium_nack_retransmissions_total{outcome=\"sent\"}"
        ) >= 5.0,
        "the SFU answered NACKs from its history"
    );
    server.shutdown().await;
}

/// With bandwidth estimation on, the SFU numbers what it sends to each subscriber
/// (transport-wide sequence numbers), the subscriber's feedback reaches the congestion
/// controller, and every subscriber's estimate is sampled into the histogram operators
/// watch (docs/operations.md). Off, the default, nothing is estimated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscribers_bandwidth_is_estimated_from_its_feedback_when_enabled() {
    for enabled in [true, false] {
        let server = consilium::start(Config {
            bandwidth_estimation: enabled,
            ..Config::for_tests()
        })
        .await
        .expect("server starts");
        let url = ws_url(&server);
        let mut alice = Participant::join(ParticipantConfig::new(&url, "bwe", "Alice"))
            .await
            .expect("alice joins");
        let mut bob = Participant::join(ParticipantConfig::new(&url, "bwe", "Bob"))
            .await
            .expect("bob joins");
        wait_for_media(&mut alice, &bob.id).await;
        wait_for_media(&mut bob, &alice.id).await;
        // Estimates are sampled every 5 s; both subscribers are in the first sample that
        // finds their transport up.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let series = "consilium_subscriber_bandwidth_estimate_bits_count";
        if enabled {
            loop {
                let text = http_get(&server, "/metrics").await;
                let count = metric(&text, series);
                if count >= 2.0 {
                    let mean =
                        metric(&text, "consilium_subscriber_bandwidth_estimate_bits_sum") / count;
                    // GCC never estimates below its 100 kbit/s floor.
                    assert!(mean >= 100_000.0, "mean estimate {mean} bit/s");
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no estimate sampled within 15 s: {series} = {count}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let text = http_get(&server, "/metrics").await;
            assert_eq!(metric(&text, series), 0.0, "estimated while switched off");
        }
        alice.leave().await;
        bob.leave().await;
        server.shutdown().await;
    }
}
