//! Receive slots (docs/protocol.md): a joiner's offer carries receive-only m-sections, the
//! server's answer puts the room's tracks on them, and what does not fit, or comes later,
//! goes by renegotiation, onto a left-over slot first. Real server, real WebRTC peers over
//! loopback UDP.

mod common;

use common::wait_for_media;
use loadtest::{Participant, ParticipantConfig};

fn with_slots(url: &str, room: &str, name: &str, slots: usize) -> ParticipantConfig {
    ParticipantConfig {
        receive_slots: slots,
        ..ParticipantConfig::new(url, room, name)
    }
}

/// One audio or video m-section of a session description.
#[derive(Debug, Clone, PartialEq)]
struct Section {
    kind: String,
    direction: String,
    /// The MediaStream id of `a=msid`: whose track it carries.
    stream: Option<String>,
}

fn sections(sdp: &str) -> Vec<Section> {
    sdp.split("\nm=")
        .skip(1)
        .filter(|s| s.starts_with("audio") || s.starts_with("video"))
        .map(|s| {
            let attr = |prefix: &str| {
                s.lines()
                    .find_map(|l| l.trim_end().strip_prefix(prefix).map(str::to_owned))
            };
            let direction = ["sendrecv", "sendonly", "recvonly", "inactive"]
                .into_iter()
                .find(|d| s.lines().any(|l| l.trim_end() == format!("a={d}")))
                .unwrap_or("none");
            Section {
                kind: s.split(' ').next().unwrap_or_default().to_owned(),
                direction: direction.to_owned(),
                stream: attr("a=msid:")
                    .and_then(|v| v.split(' ').next().map(str::to_owned))
                    .filter(|v| v != "-"),
            }
        })
        .collect()
}

/// Two participants who publish to each other (so both have published tracks).
async fn publishing_pair(url: &str, room: &str) -> (Participant, Participant) {
    let mut a = Participant::join(ParticipantConfig::new(url, room, "A"))
        .await
        .expect("A joins");
    let mut b = Participant::join(ParticipantConfig::new(url, room, "B"))
        .await
        .expect("B joins");
    wait_for_media(&mut a, &b.id).await;
    wait_for_media(&mut b, &a.id).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_carries_the_rooms_tracks_on_the_slots_and_needs_no_renegotiation() {
    let server = common::start_open().await;
    let url = format!("ws://{}/ws", server.http_addr);
    let (a, b) = publishing_pair(&url, "slots-1").await;
    let mut joiner = Participant::join(with_slots(&url, "slots-1", "Joiner", 2))
        .await
        .expect("joiner joins");

    // The slots come first in the offer: two audio+video pairs, each sendonly in the answer
    // with a publisher's stream id, A's (published first) on the first pair.
    let answered = sections(&joiner.answer);
    let slots: Vec<(&str, &str, Option<&str>)> = answered[..4]
        .iter()
        .map(|s| (s.kind.as_str(), s.direction.as_str(), s.stream.as_deref()))
        .collect();
    assert_eq!(
        slots,
        vec![
            ("audio", "sendonly", Some(a.id.as_str())),
            ("video", "sendonly", Some(a.id.as_str())),
            ("audio", "sendonly", Some(b.id.as_str())),
            ("video", "sendonly", Some(b.id.as_str())),
        ],
        "answer: {answered:?}"
    );
    // Our own sending sections stay what they were.
    assert_eq!(answered[4].direction, "recvonly");
    assert_eq!(answered[5].direction, "recvonly");

    wait_for_media(&mut joiner, &a.id).await;
    wait_for_media(&mut joiner, &b.id).await;
    assert_eq!(
        joiner.stats().server_offers,
        0,
        "everything came in the answer"
    );
    common::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_beyond_the_slots_come_by_renegotiation() {
    let server = common::start_open().await;
    let url = format!("ws://{}/ws", server.http_addr);
    let (a, b) = publishing_pair(&url, "slots-2").await;
    let mut joiner = Participant::join(with_slots(&url, "slots-2", "Joiner", 1))
        .await
        .expect("joiner joins");
    let answered = sections(&joiner.answer);
    assert_eq!(answered[0].stream.as_deref(), Some(a.id.as_str()));
    assert_eq!(answered[1].stream.as_deref(), Some(a.id.as_str()));
    assert!(
        answered.iter().all(|s| s.stream.as_deref() != Some(&b.id)),
        "B's tracks found no slot: {answered:?}"
    );
    wait_for_media(&mut joiner, &a.id).await;
    wait_for_media(&mut joiner, &b.id).await;
    let stats = joiner.stats();
    assert!(stats.server_offers >= 1);
    // B's tracks on two new m-sections after ours.
    let offered = sections(stats.last_server_offer.as_deref().unwrap_or_default());
    assert_eq!(offered.len(), answered.len() + 2, "offer: {offered:?}");
    assert!(
        offered[answered.len()..]
            .iter()
            .all(|s| s.direction == "sendonly" && s.stream.as_deref() == Some(&b.id))
    );
    common::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_participants_take_the_free_slots_before_new_m_sections() {
    let server = common::start_open().await;
    let url = format!("ws://{}/ws", server.http_addr);
    let mut joiner = Participant::join(with_slots(&url, "slots-3", "Early", 2))
        .await
        .expect("joiner joins an empty room");
    let answered = sections(&joiner.answer);
    assert_eq!(answered.len(), 6, "two slot pairs and our audio and video");
    for slot in &answered[..4] {
        assert_eq!(
            (slot.direction.as_str(), slot.stream.as_deref()),
            ("inactive", None),
            "an empty room's answer leaves the slots inactive: {answered:?}"
        );
    }

    // Two later participants fill the two slot pairs, in the order they came; the
    // description does not grow.
    let mut later = Vec::new();
    for (i, name) in ["First", "Second"].into_iter().enumerate() {
        let p = Participant::join(ParticipantConfig::new(&url, "slots-3", name))
            .await
            .expect("joins");
        wait_for_media(&mut joiner, &p.id).await;
        let offered = sections(
            joiner
                .stats()
                .last_server_offer
                .as_deref()
                .unwrap_or_default(),
        );
        assert_eq!(offered.len(), 6, "offer: {offered:?}");
        assert_eq!(offered[2 * i].stream.as_deref(), Some(p.id.as_str()));
        assert_eq!(offered[2 * i + 1].stream.as_deref(), Some(p.id.as_str()));
        assert_eq!(offered[2 * i].direction, "sendonly");
        // Our own sections are not touched: still only receiving on the server's side.
        assert_eq!(offered[4].direction, "recvonly");
        assert_eq!(offered[5].direction, "recvonly");
        later.push(p);
    }
    // The slots are used up: the third gets new m-sections.
    let third = Participant::join(ParticipantConfig::new(&url, "slots-3", "Third"))
        .await
        .expect("joins");
    wait_for_media(&mut joiner, &third.id).await;
    let offered = sections(
        joiner
            .stats()
            .last_server_offer
            .as_deref()
            .unwrap_or_default(),
    );
    assert_eq!(offered.len(), 8, "offer: {offered:?}");
    assert_eq!(offered[6].stream.as_deref(), Some(third.id.as_str()));
    // And the others still receive our media: our own sections kept carrying it.
    let mut first = later.remove(0);
    wait_for_media(&mut first, &joiner.id).await;
    common::stop(server).await;
}
