//! Every refusal rule of `docs/protocol.md`, checked against the real server over a real
//! WebSocket: the exact error code, and whether the socket stays open (a `ping` is still
//! answered with `pong`) or is closed (and with which close code).

mod common;

use common::*;
use consilium_signaling::{Claims, Role, TokenAuthority};
use futures_util::SinkExt;
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret";
const MAX_FRAME: usize = consilium_signaling::protocol::MAX_FRAME_BYTES;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `{"type":"ping"}` padded with insignificant whitespace to exactly `len` bytes.
fn padded_ping(len: usize) -> String {
    let head = r#"{"type":"ping""#;
    let mut text = String::with_capacity(len);
    text.push_str(head);
    text.push_str(&" ".repeat(len - head.len() - 1));
    text.push('}');
    assert_eq!(text.len(), len);
    text
}

// ---------------------------------------------------------------------------------------
// Malformed frames
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_is_bad_message_and_socket_stays_open() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    for text in [
        "{",
        "not json at all",
        r#"{"type":"ping""#,
        "",
        "{\"type\":\"ping\"}}",
    ] {
        send_text(&mut ws, text).await;
        expect_error(&mut ws, "bad_message").await;
        assert_open(&mut ws).await;
    }
    stop(server).await;
}

#[tokio::test]
async fn json_that_is_not_an_object_is_bad_message() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    for text in [
        r#"[{"type":"ping"}]"#,
        "[1,2]",
        r#""ping""#,
        "null",
        "42",
        "true",
    ] {
        send_text(&mut ws, text).await;
        expect_error(&mut ws, "bad_message").await;
    }
    assert_open(&mut ws).await;
    stop(server).await;
}

#[tokio::test]
async fn missing_or_non_string_type_is_bad_message() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    for msg in [
        json!({}),
        json!({"kind": "join"}),
        json!({"type": 7}),
        json!({"type": null}),
        json!({"type": ["ping"]}),
        json!({"type": {"name": "ping"}}),
    ] {
        send_json(&mut ws, &msg).await;
        expect_error(&mut ws, "bad_message").await;
    }
    assert_open(&mut ws).await;
    stop(server).await;
}

#[tokio::test]
async fn join_missing_or_ill_typed_field_is_bad_message() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    let offer = offer();
    for msg in [
        // No offer.
        json!({"type": "join", "room": "board", "name": "Dr A"}),
        // No room, no name.
        json!({"type": "join", "name": "Dr A", "offer": offer}),
        json!({"type": "join", "room": "board", "offer": offer}),
        // Ill-typed fields.
        json!({"type": "join", "room": "board", "name": "Dr A", "offer": 5}),
        json!({"type": "join", "room": 1, "name": "Dr A", "offer": offer}),
        json!({"type": "join", "room": "board", "name": "Dr A", "token": 3, "offer": offer}),
        json!({"type": "join", "v": "1", "room": "board", "name": "Dr A", "offer": offer}),
        json!({"type": "join", "v": -1, "room": "board", "name": "Dr A", "offer": offer}),
    ] {
        send_json(&mut ws, &msg).await;
        expect_error(&mut ws, "bad_message").await;
        assert_open(&mut ws).await;
    }
    // None of those joined: a correct join still works.
    join_ok(&mut ws, "board", "Dr A", None).await;
    stop(server).await;
}

#[tokio::test]
async fn unknown_type_is_refused_and_socket_stays_open() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    for kind in ["dance", "JOIN", "Ping", "joined", "pong", "error"] {
        send_json(&mut ws, &json!({"type": kind})).await;
        expect_error(&mut ws, "unknown_type").await;
        assert_open(&mut ws).await;
    }
    // A long unknown type is not echoed back in full.
    let long = "x".repeat(10_000);
    send_json(&mut ws, &json!({"type": long})).await;
    let msg = expect_error(&mut ws, "unknown_type").await;
    assert!(
        msg.to_string().len() < 1_000,
        "the error echoes the whole type: {} bytes",
        msg.to_string().len()
    );
    assert_open(&mut ws).await;
    stop(server).await;
}

#[tokio::test]
async fn binary_frame_is_bad_message_and_socket_stays_open() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    ws.send(Message::binary(br#"{"type":"ping"}"#.to_vec()))
        .await
        .unwrap();
    expect_error(&mut ws, "bad_message").await;
    ws.send(Message::binary(Vec::new())).await.unwrap();
    expect_error(&mut ws, "bad_message").await;
    // At the size limit: still only refused.
    ws.send(Message::binary(padded_ping(MAX_FRAME).into_bytes()))
        .await
        .unwrap();
    expect_error(&mut ws, "bad_message").await;
    assert_open(&mut ws).await;
    stop(server).await;
}

// ---------------------------------------------------------------------------------------
// Size limit
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn message_of_exactly_64_kib_is_accepted() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    send_text(&mut ws, padded_ping(MAX_FRAME)).await;
    let msg = reply(&mut ws).await;
    assert_eq!(msg, json!({"type": "pong"}));
    stop(server).await;
}

#[tokio::test]
async fn message_over_64_kib_closes_with_1009() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    send_text(&mut ws, padded_ping(MAX_FRAME + 1)).await;
    assert_eq!(expect_close(&mut ws).await, Some(1009));
    stop(server).await;
}

/// A big room's session descriptions (an m-section per forwarded track) pass 64 KiB: such
/// a frame is read and answered, not treated as oversized.
#[tokio::test]
async fn a_100_kb_answer_is_read_not_refused_as_too_big() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    join_ok(&mut ws, "board", "Dr A", None).await;
    let sdp = format!("v=0\r\n{}", "a=x\r\n".repeat(100 * 1024 / 5));
    assert!(sdp.len() > 64 * 1024 && sdp.len() < MAX_FRAME);
    send_json(&mut ws, &serde_json::json!({"type": "answer", "sdp": sdp})).await;
    // No offer was pending: refused with a reason, and the socket stays open.
    let msg = reply(&mut ws).await;
    assert_eq!(msg["type"], "error", "{msg}");
    assert_open(&mut ws).await;
    stop(server).await;
}

#[tokio::test]
async fn oversized_join_after_joining_closes_with_1009() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    join_ok(&mut ws, "board", "Dr A", None).await;
    let huge_offer = "a".repeat(MAX_FRAME);
    send_json(&mut ws, &join_msg("board", "Dr A", None, &huge_offer)).await;
    assert_eq!(expect_close(&mut ws).await, Some(1009));
    stop(server).await;
}

#[tokio::test]
async fn message_over_the_transport_limit_closes_with_1009() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    // Over the 1 MiB the WebSocket layer buffers: refused before the session sees it. The
    // server may stop reading mid-frame, so a failed send is not an error here.
    let _ = ws.send(Message::text(padded_ping(2 * 1024 * 1024))).await;
    assert_eq!(expect_close(&mut ws).await, Some(1009));
    stop(server).await;
}

#[tokio::test]
async fn binary_frame_over_the_limit_closes_with_1009() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    ws.send(Message::binary(padded_ping(MAX_FRAME + 1).into_bytes()))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut ws).await, Some(1009));
    stop(server).await;
}

// ---------------------------------------------------------------------------------------
// Order of messages
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn messages_before_join_are_not_joined() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    // Ping is allowed before join.
    assert_open(&mut ws).await;
    for msg in [
        json!({"type": "candidate", "candidate": null}),
        json!({"type": "candidate", "candidate": {
            "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host",
            "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"}}),
        json!({"type": "answer", "sdp": offer()}),
        json!({"type": "media_state", "audio_muted": true, "video_muted": false}),
        json!({"type": "leave"}),
    ] {
        send_json(&mut ws, &msg).await;
        expect_error(&mut ws, "not_joined").await;
        assert_open(&mut ws).await;
    }
    // Still allowed to join afterwards.
    join_ok(&mut ws, "board", "Dr A", None).await;
    stop(server).await;
}

#[tokio::test]
async fn second_join_is_already_joined() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    join_ok(&mut ws, "board", "Dr A", None).await;
    // The same join again, and a join to another room: both refused.
    let msg = join(&mut ws, "board", "Dr A", None).await;
    assert_error(&msg, "already_joined");
    assert_open(&mut ws).await;
    let msg = join(&mut ws, "other-room", "Dr A", None).await;
    assert_error(&msg, "already_joined");
    assert_open(&mut ws).await;
    // Still one participant: a second client sees exactly one other.
    let mut other = connect(&server).await;
    let joined = join_ok(&mut other, "board", "Dr B", None).await;
    assert_eq!(
        joined["participants"].as_array().unwrap().len(),
        1,
        "{joined}"
    );
    stop(server).await;
}

// ---------------------------------------------------------------------------------------
// Version
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unsupported_version_is_refused_and_socket_closes() {
    let server = start_open().await;
    for v in [2, 0] {
        let mut ws = connect(&server).await;
        let mut msg = join_msg("board", "Dr A", None, &offer());
        msg["v"] = json!(v);
        send_json(&mut ws, &msg).await;
        expect_error(&mut ws, "unsupported_version").await;
        let code = expect_close(&mut ws).await;
        assert!(
            code.is_some_and(|c| c != 1000),
            "closed with {code:?}, not an error close code"
        );
    }
    // Explicit v: 1 is accepted.
    let mut ws = connect(&server).await;
    send_json(&mut ws, &join_msg("board", "Dr A", None, &offer())).await;
    let msg = reply(&mut ws).await;
    assert_joined(&msg, "board");
    stop(server).await;
}

#[tokio::test]
async fn join_without_version_is_version_1() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    let mut msg = join_msg("board", "Dr A", None, &offer());
    msg.as_object_mut().unwrap().remove("v");
    send_json(&mut ws, &msg).await;
    assert_joined(&reply(&mut ws).await, "board");
    stop(server).await;
}

// ---------------------------------------------------------------------------------------
// SDP
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn garbage_sdp_is_bad_sdp_and_join_can_be_retried() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    for bad in ["garbage", "", "v=0\r\n", "v=1\r\nthis is not sdp\r\n"] {
        send_json(&mut ws, &join_msg("board", "Dr A", None, bad)).await;
        expect_error(&mut ws, "bad_sdp").await;
        assert_open(&mut ws).await;
    }
    let joined = join_ok(&mut ws, "board", "Dr A", None).await;
    // The failed attempts left no trace in the room: this is its first participant.
    assert_eq!(joined["role"], "host", "{joined}");
    assert_eq!(joined["participants"], json!([]), "{joined}");
    stop(server).await;
}

#[tokio::test]
async fn an_offer_whose_msid_would_lose_its_video_is_bad_sdp() {
    // `rtc` takes these and then forwards audio but never video: refused with the reason.
    let server = start_open().await;
    let mut ws = connect(&server).await;
    let sdp = offer();
    let with_msid = |audio: &str, video: &str| {
        let mut out = String::new();
        let mut sections = 0;
        for line in sdp.split_inclusive("\r\n") {
            out.push_str(line);
            if line.starts_with("m=audio") || line.starts_with("m=video") {
                sections += 1;
                let msid = if sections == 1 { audio } else { video };
                out.push_str(&format!("a=msid:{msid}\r\n"));
            }
        }
        out
    };
    for (bad, why) in [
        (with_msid("Dr A-local Dr A-local-audio", "s v"), "no spaces"),
        (with_msid("s t", "s t"), "same track id"),
    ] {
        send_json(&mut ws, &join_msg("board", "Dr A", None, &bad)).await;
        let msg = expect_error(&mut ws, "bad_sdp").await;
        assert!(msg["message"].as_str().unwrap().contains(why), "{msg}");
        assert_open(&mut ws).await;
    }
    // Well-formed ids pass.
    send_json(
        &mut ws,
        &join_msg("board", "Dr A", None, &with_msid("s a", "s v")),
    )
    .await;
    let joined = reply(&mut ws).await;
    assert_joined(&joined, "board");
    stop(server).await;
}

#[tokio::test]
async fn truncated_offer_is_bad_sdp_and_join_can_be_retried() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    let sdp = offer();
    let first_media = sdp.find("\r\nm=").expect("an m= line") + 2;
    let cuts = [
        // In the middle of a line, half way through.
        {
            let mut cut = sdp.len() / 2;
            while !sdp.is_char_boundary(cut) || sdp[..cut].ends_with('\n') {
                cut += 1;
            }
            &sdp[..cut]
        },
        // In the middle of the first m= line.
        &sdp[..first_media + 5],
    ];
    for truncated in cuts {
        send_json(&mut ws, &join_msg("board", "Dr A", None, truncated)).await;
        let msg = reply(&mut ws).await;
        assert_error(&msg, "bad_sdp");
        assert_open(&mut ws).await;
    }
    join_ok(&mut ws, "board", "Dr A", None).await;
    stop(server).await;
}

// ---------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_room_names_are_refused() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    let too_long = "a".repeat(65);
    for room in [
        "",
        "bad room!",
        too_long.as_str(),
        "../x",
        "a/b",
        "raum-ü",
        "tab\there",
    ] {
        let msg = join(&mut ws, room, "Dr A", None).await;
        assert_error(&msg, "bad_room");
        assert_open(&mut ws).await;
    }
    // 64 characters of the allowed alphabet are fine, and the socket may retry.
    let longest = format!("{}.-_", "A9z".repeat(20));
    assert_eq!(longest.chars().count(), 63);
    let longest = format!("{longest}x");
    join_ok(&mut ws, &longest, "Dr A", None).await;
    stop(server).await;
}

#[tokio::test]
async fn bad_display_names_are_refused() {
    let server = start_open().await;
    let mut ws = connect(&server).await;
    let too_long = "a".repeat(65);
    let too_long_wide = "é".repeat(65);
    for name in [
        "",
        " ",
        " \t \n ",
        too_long.as_str(),
        too_long_wide.as_str(),
        "Dr\u{0}Ada",
        "Dr\u{7}Ada",
        "Dr\tAda",
        "Dr\nAda",
        "Dr\u{7f}Ada",
    ] {
        let msg = join(&mut ws, "board", name, None).await;
        assert_error(&msg, "bad_name");
        assert_open(&mut ws).await;
    }
    // 64 characters (128 bytes) are fine; the name is counted in characters.
    let longest = "é".repeat(64);
    join_ok(&mut ws, "board", &longest, None).await;
    stop(server).await;
}

// ---------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------

async fn start_with_auth() -> consilium::Server {
    start(Some(SECRET), 50).await
}

fn authority() -> TokenAuthority {
    TokenAuthority::new(SECRET.as_bytes())
}

#[tokio::test]
async fn auth_without_token_is_unauthorized() {
    let server = start_with_auth().await;
    let mut ws = connect(&server).await;
    // `token: null` and no `token` field at all.
    let msg = join(&mut ws, "board", "Dr A", None).await;
    assert_error(&msg, "unauthorized");
    assert_open(&mut ws).await;
    let mut msg = join_msg("board", "Dr A", None, &offer());
    msg.as_object_mut().unwrap().remove("token");
    send_json(&mut ws, &msg).await;
    expect_error(&mut ws, "unauthorized").await;
    assert_open(&mut ws).await;
    stop(server).await;
}

#[tokio::test]
async fn auth_malformed_token_is_unauthorized() {
    let server = start_with_auth().await;
    let mut ws = connect(&server).await;
    for token in ["", "garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        let msg = join(&mut ws, "board", "Dr A", Some(token)).await;
        assert_error(&msg, "unauthorized");
        assert_open(&mut ws).await;
    }
    stop(server).await;
}

#[tokio::test]
async fn auth_forged_token_is_unauthorized() {
    let server = start_with_auth().await;
    let mut ws = connect(&server).await;
    let forged = TokenAuthority::new(b"another-secret").issue(
        "board",
        "Dr A",
        Role::Host,
        Duration::from_secs(600),
    );
    let msg = join(&mut ws, "board", "Dr A", Some(&forged)).await;
    assert_error(&msg, "unauthorized");
    assert_open(&mut ws).await;
    stop(server).await;
}

#[tokio::test]
async fn auth_expired_token_is_token_expired() {
    let server = start_with_auth().await;
    let mut ws = connect(&server).await;
    let now = now_secs();
    let expired = authority().sign(&Claims {
        room: "board".into(),
        name: "Dr A".into(),
        role: Role::Host,
        exp: now - 3600,
        iat: now - 7200,
        sub: None,
    });
    let msg = join(&mut ws, "board", "Dr A", Some(&expired)).await;
    assert_error(&msg, "token_expired");
    assert_open(&mut ws).await;
    stop(server).await;
}

#[tokio::test]
async fn auth_token_for_another_room_is_forbidden() {
    let server = start_with_auth().await;
    let mut ws = connect(&server).await;
    let token = authority().issue("board", "Dr A", Role::Host, Duration::from_secs(600));
    let msg = join(&mut ws, "other-board", "Dr A", Some(&token)).await;
    assert_error(&msg, "forbidden");
    assert_open(&mut ws).await;
    stop(server).await;
}

#[tokio::test]
async fn auth_token_for_another_name_is_forbidden() {
    let server = start_with_auth().await;
    let mut ws = connect(&server).await;
    let token = authority().issue("board", "Dr A", Role::Host, Duration::from_secs(600));
    let msg = join(&mut ws, "board", "Dr B", Some(&token)).await;
    assert_error(&msg, "forbidden");
    assert_open(&mut ws).await;
    stop(server).await;
}

#[tokio::test]
async fn auth_valid_token_joins_with_its_role() {
    let server = start_with_auth().await;
    let mut ws = connect(&server).await;
    // The first in the room, yet an observer: the token's role wins.
    let token = authority().issue("board", "Dr A", Role::Observer, Duration::from_secs(600));
    let joined = join_ok(&mut ws, "board", "Dr A", Some(&token)).await;
    assert_eq!(joined["role"], "observer", "{joined}");
    let mut ws2 = connect(&server).await;
    let token = authority().issue("board", "Dr B", Role::Presenter, Duration::from_secs(600));
    let joined = join_ok(&mut ws2, "board", "Dr B", Some(&token)).await;
    assert_eq!(joined["role"], "presenter", "{joined}");
    assert_eq!(joined["participants"][0]["name"], "Dr A", "{joined}");
    assert_eq!(joined["participants"][0]["role"], "observer", "{joined}");
    stop(server).await;
}

#[tokio::test]
async fn auth_refusal_then_valid_token_on_same_socket_joins() {
    let server = start_with_auth().await;
    let mut ws = connect(&server).await;
    let msg = join(&mut ws, "board", "Dr A", Some("garbage")).await;
    assert_error(&msg, "unauthorized");
    let token = authority().issue("board", "Dr A", Role::Participant, Duration::from_secs(600));
    let joined = join_ok(&mut ws, "board", "Dr A", Some(&token)).await;
    assert_eq!(joined["role"], "participant", "{joined}");
    stop(server).await;
}

// ---------------------------------------------------------------------------------------
// Room cap
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn room_full_then_admits_after_a_leave_message() {
    let server = start(None, 2).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    let mut c = connect(&server).await;
    assert_eq!(join_ok(&mut a, "board", "Dr A", None).await["role"], "host");
    assert_eq!(
        join_ok(&mut b, "board", "Dr B", None).await["role"],
        "participant"
    );
    let msg = join(&mut c, "board", "Dr C", None).await;
    assert_error(&msg, "room_full");
    assert_open(&mut c).await;
    // The cap is per room.
    let mut d = connect(&server).await;
    join_ok(&mut d, "another-board", "Dr D", None).await;

    send_json(&mut a, &json!({"type": "leave"})).await;
    // The server leaves the room, then closes the socket.
    expect_close(&mut a).await;
    let joined = join_ok(&mut c, "board", "Dr C", None).await;
    let names: Vec<&str> = joined["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Dr B"], "{joined}");
    stop(server).await;
}

#[tokio::test]
async fn room_full_then_admits_after_a_socket_closes() {
    let server = start(None, 2).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    let mut c = connect(&server).await;
    let a_id = join_ok(&mut a, "board", "Dr A", None).await["participant_id"].clone();
    join_ok(&mut b, "board", "Dr B", None).await;
    let msg = join(&mut c, "board", "Dr C", None).await;
    assert_error(&msg, "room_full");
    assert_open(&mut c).await;

    a.close(None).await.unwrap();
    // B learns that A left once the server has removed A from the room.
    let left = wait_for(&mut b, "participant_left").await;
    assert_eq!(left["participant_id"], a_id, "{left}");
    join_ok(&mut c, "board", "Dr C", None).await;
    // Full again.
    let mut e = connect(&server).await;
    let msg = join(&mut e, "board", "Dr E", None).await;
    assert_error(&msg, "room_full");
    stop(server).await;
}

// ---------------------------------------------------------------------------------------
// Robustness and observability
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn server_survives_abuse_and_healthz_answers() {
    let server = start(None, 50).await;
    let mut ws = connect(&server).await;
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let texts: Vec<String> = vec![
        "{".into(),
        "\u{0}".into(),
        "\u{feff}{\"type\":\"ping\"}".into(),
        deep,
        deep_obj,
        r#"{"type":"join","v":99999999999999999999,"room":"r","name":"n","offer":""}"#.into(),
        r#"{"type":"join","v":1e3,"room":"r","name":"n","offer":""}"#.into(),
        r#"{"type":"media_state","audio_muted":"yes","video_muted":0}"#.into(),
        r#"{"type":"candidate","candidate":{"candidate":5}}"#.into(),
        r#"{"type":"candidate"}"#.into(),
        r#"{"type":"\ud800"}"#.into(),
    ];
    for text in texts {
        send_text(&mut ws, text).await;
        assert_eq!(reply(&mut ws).await["type"], "error");
    }
    // Strange SDP that parses partly.
    for sdp in [
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 300000\r\n",
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3 4\r\n",
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:\r\na=sctp-port:-1\r\n",
    ] {
        send_json(&mut ws, &join_msg("board", "Dr A", None, sdp)).await;
        assert_eq!(reply(&mut ws).await["type"], "error");
        assert_open(&mut ws).await;
    }
    // After joining: garbage candidates, an answer nobody asked for, mute flapping.
    join_ok(&mut ws, "board", "Dr A", None).await;
    for candidate in [
        json!({"candidate": "garbage", "sdpMid": "0", "sdpMLineIndex": 0}),
        json!({"candidate": "candidate:1 1 udp 1 999.1.1.1 70000 typ host", "sdpMLineIndex": 65535}),
        json!({"candidate": "", "sdpMid": "no-such-mid"}),
        json!(null),
    ] {
        send_json(
            &mut ws,
            &json!({"type": "candidate", "candidate": candidate}),
        )
        .await;
    }
    assert_open(&mut ws).await;
    send_json(&mut ws, &json!({"type": "answer", "sdp": "garbage"})).await;
    assert_eq!(reply(&mut ws).await["type"], "error");
    send_json(&mut ws, &json!({"type": "answer", "sdp": offer()})).await;
    assert_eq!(reply(&mut ws).await["type"], "error");
    for i in 0..50 {
        send_json(
            &mut ws,
            &json!({"type": "media_state", "audio_muted": i % 2 == 0, "video_muted": i % 3 == 0}),
        )
        .await;
    }
    assert_open(&mut ws).await;
    // Abrupt ends: a socket dropped mid-join, one closed right after an oversized frame.
    let mut dropped = connect(&server).await;
    send_json(&mut dropped, &join_msg("board", "Dr B", None, &offer())).await;
    drop(dropped);
    let mut big = connect(&server).await;
    send_text(&mut big, padded_ping(MAX_FRAME + 1)).await;
    assert_eq!(expect_close(&mut big).await, Some(1009));
    ws.close(None).await.unwrap();
    drop(ws);

    let (status, body) = http_get(server.http_addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("healthz is JSON");
    assert_eq!(health["status"], "ok", "{body}");

    // Every session ended cleanly (a panicking session would never decrement the gauge) and
    // the room is empty again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(server.http_addr, "/metrics").await;
        assert_eq!(status, 200);
        let open = metric(&body, "consilium_websockets");
        let participants = metric(&body, "consilium_participants");
        if open == Some(0.0) && participants == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions still open after all clients left: websockets {open:?}, participants {participants:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it still serves.
    let mut fresh = connect(&server).await;
    let joined = join_ok(&mut fresh, "board", "Dr C", None).await;
    assert_eq!(joined["participants"], json!([]), "{joined}");
    stop(server).await;
}

#[tokio::test]
async fn metrics_count_signaling_errors_by_code() {
    let server = start_open().await;
    let series = r#"consilium_signaling_errors_total{code="bad_message"}"#;
    let (status, body) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&body, series), None, "no error yet:\n{body}");

    let mut ws = connect(&server).await;
    send_text(&mut ws, "{").await;
    expect_error(&mut ws, "bad_message").await;
    let (_, body) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(metric(&body, series), Some(1.0), "{body}");

    send_text(&mut ws, "[]").await;
    expect_error(&mut ws, "bad_message").await;
    send_json(&mut ws, &json!({"type": "dance"})).await;
    expect_error(&mut ws, "unknown_type").await;
    send_json(&mut ws, &json!({"type": "leave"})).await;
    expect_error(&mut ws, "not_joined").await;
    let (_, body) = http_get(server.http_addr, "/metrics").await;
    assert_eq!(metric(&body, series), Some(2.0), "{body}");
    assert_eq!(
        metric(
            &body,
            r#"consilium_signaling_errors_total{code="unknown_type"}"#
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            r#"consilium_signaling_errors_total{code="not_joined"}"#
        ),
        Some(1.0),
        "{body}"
    );
    stop(server).await;
}
