//! Joining over HTTP (`POST /join?session=KEY`, `docs/protocol.md`): the answer comes back
//! in the response while the WebSocket naming the same key, opened alongside, carries the
//! rest of the session. Real server, real `rtc` peers, real sockets.

mod common;

use common::http::{Resp, request};
use common::{WAIT, join_msg, offer};
use consilium::{Config, Server};
use consilium_signaling::{Role, TokenAuthority};
use futures_util::{SinkExt, StreamExt};
use loadtest::{Event, Participant, ParticipantConfig};
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "Test-session-key_0123456789";

async fn post_join(server: &Server, query: &str, body: &str) -> Resp {
    request(
        server,
        "POST",
        &format!("/join{query}"),
        &[("Content-Type", "application/json".to_owned())],
        body.as_bytes(),
    )
    .await
}

#[track_caller]
fn assert_refused(resp: &Resp, status: u16, code: &str) {
    let body = resp.json();
    assert_eq!(resp.status, status, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

async fn start_with(attach_timeout: Duration, jwt_secret: Option<&str>) -> Server {
    consilium::start(Config {
        attach_timeout,
        jwt_secret: jwt_secret.map(str::to_owned),
        ..Config::for_tests()
    })
    .await
    .expect("server starts")
}

async fn participants(server: &Server) -> f64 {
    let (_, body) = common::http_get(server.http_addr, "/metrics").await;
    common::metric(&body, "consilium_participants").unwrap_or(0.0)
}

async fn wait_for_participants(server: &Server, n: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while participants(server).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {n} participants"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_joined_over_http_receives_and_is_received() {
    let server = start_with(Duration::from_secs(10), None).await;
    let url = format!("ws://{}/ws", server.http_addr);
    // The publisher joins on its socket; the joiner over HTTP, its socket opening alongside.
    let mut publisher = Participant::join(ParticipantConfig::new(&url, "board", "Dr Socket"))
        .await
        .unwrap();
    let mut config = ParticipantConfig::new(&url, "board", "Dr Http");
    config.join_over_http = true;
    let mut joiner = Participant::join(config).await.unwrap();
    assert_eq!(
        joiner.others.len(),
        1,
        "the joined message lists the publisher"
    );

    // The publisher's tracks reach the joiner through the renegotiation that waited for the
    // joiner's socket, and the joiner's reach the publisher.
    for (p, who) in [(&mut joiner, "joiner"), (&mut publisher, "publisher")] {
        let mut kinds = std::collections::HashSet::new();
        while kinds.len() < 2 {
            let got = p
                .wait_for(WAIT, |e| matches!(e, Event::FirstRemoteRtp { .. }))
                .await;
            let Some(Event::FirstRemoteRtp { kind, .. }) = got else {
                panic!(
                    "the {who} got only {kinds:?} from the other: {:?}",
                    p.stats().received.keys().collect::<Vec<_>>()
                );
            };
            kinds.insert(kind);
        }
    }
    let timings = joiner.stats().timings;
    assert!(timings.ws_open.is_some(), "the joiner's socket opened");

    // The socket carries the session: leaving on it takes the joiner out of the room.
    let joiner_id = joiner.id.clone();
    joiner.leave().await;
    let left = publisher
        .wait_for(
            WAIT,
            |e| matches!(e, Event::ParticipantLeft { id } if *id == joiner_id),
        )
        .await;
    assert!(left.is_some(), "the publisher saw the joiner leave");
    publisher.leave().await;

    // The server's join timeline has the socket's acceptance as a phase of its own.
    let (_, metrics) = common::http_get(server.http_addr, "/metrics").await;
    assert!(
        metrics.contains(r#"phase="ws_accepted""#),
        "ws_accepted phase recorded"
    );
    common::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_opens_first_waits_for_its_join() {
    let server = start_with(Duration::from_secs(10), None).await;
    let mut ws = socket_for_key(&server).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = post_join(
        &server,
        &format!("?session={KEY}"),
        &join_msg("board", "Dr A", None, &offer()).to_string(),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let joined = resp.json();
    common::assert_joined(&joined, "board");
    // The session speaks on the socket now: a ping is answered, a second join refused.
    ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    let pong = next_of_type(&mut ws, "pong").await;
    assert_eq!(pong["type"], "pong");
    let again = join_msg("board", "Dr A", None, &offer()).to_string();
    ws.send(Message::Text(again.into())).await.unwrap();
    let refused = next_of_type(&mut ws, "error").await;
    assert_eq!(refused["code"], "already_joined", "{refused}");
    // Closing the socket leaves the room.
    ws.close(None).await.unwrap();
    wait_for_participants(&server, 0.0).await;
    common::stop(server).await;
}

/// A POST of `body`; the status and the JSON body of the answer, read up to the end of that
/// JSON (the connection may stay open after it).
async fn post_raw(server: &Server, path: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            if let Some((_, body)) = text.split_once("\r\n\r\n")
                && serde_json::from_str::<Value>(body).is_ok()
            {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).expect("a JSON body"))
}

/// A signaling socket naming the session key `KEY`.
async fn socket_for_key(server: &Server) -> common::Ws {
    let (ws, _) = connect_async(format!("ws://{}/ws?session={KEY}", server.http_addr))
        .await
        .unwrap();
    ws
}

async fn next_of_type(ws: &mut common::Ws, kind: &str) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == kind {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_socket_never_comes_is_taken_out_again() {
    let server = start_with(Duration::from_millis(300), None).await;
    let resp = post_join(
        &server,
        &format!("?session={KEY}"),
        &join_msg("board", "Dr A", None, &offer()).to_string(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.json());
    assert_eq!(participants(&server).await, 1.0);
    wait_for_participants(&server, 0.0).await;
    // The key is spent: a socket naming it now finds nothing.
    let mut ws = socket_for_key(&server).await;
    let refused = next_of_type(&mut ws, "error").await;
    assert_eq!(refused["code"], "unknown_session", "{refused}");
    common::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_naming_a_session_nobody_joins_is_told_and_closed() {
    let server = start_with(Duration::from_millis(300), None).await;
    let mut ws = socket_for_key(&server).await;
    let refused = next_of_type(&mut ws, "error").await;
    assert_eq!(refused["code"], "unknown_session", "{refused}");
    assert_eq!(common::expect_close(&mut ws).await, Some(1008));
    common::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_joins_over_http_get_a_status_and_the_error_message() {
    let server = start_with(Duration::from_secs(10), Some("s3cret")).await;
    let query = format!("?session={KEY}");
    let good = |token: Option<&str>| join_msg("board", "Dr A", token, &offer()).to_string();

    // No key, a key too short, a key with characters outside the alphabet.
    assert_refused(
        &post_join(&server, "", &good(None)).await,
        400,
        "bad_message",
    );
    assert_refused(
        &post_join(&server, "?session=short", &good(None)).await,
        400,
        "bad_message",
    );
    assert_refused(
        &post_join(
            &server,
            "?session=Test-session-key_01234%2F6789",
            &good(None),
        )
        .await,
        400,
        "bad_message",
    );
    // Just over the size limit (256 KiB: so the server has read it all and the socket closes
    // cleanly), and not UTF-8.
    let (status, body) = post_raw(
        &server,
        &format!("/join{query}"),
        &vec![b' '; 256 * 1024 + 100],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "bad_message", "{body}");
    let not_utf8 = request(
        &server,
        "POST",
        &format!("/join{query}"),
        &[("Content-Type", "application/json".to_owned())],
        &[0xff, 0xfe, b'{'],
    )
    .await;
    assert_refused(&not_utf8, 400, "bad_message");
    // Not JSON, not a join, a bad room, a bad offer.
    assert_refused(&post_join(&server, &query, "{").await, 400, "bad_message");
    assert_refused(
        &post_join(&server, &query, r#"{"type":"ping"}"#).await,
        400,
        "bad_message",
    );
    assert_refused(
        &post_join(
            &server,
            &query,
            &join_msg("no/slashes", "Dr A", None, &offer()).to_string(),
        )
        .await,
        400,
        "bad_room",
    );
    // Authorisation as on the socket: no token, then a token for another room.
    assert_refused(
        &post_join(&server, &query, &good(None)).await,
        401,
        "unauthorized",
    );
    let authority = TokenAuthority::new(b"s3cret");
    let elsewhere = authority.issue("other", "Dr A", Role::Participant, Duration::from_secs(60));
    assert_refused(
        &post_join(&server, &query, &good(Some(&elsewhere))).await,
        403,
        "forbidden",
    );
    let bad_sdp = serde_json::json!({
        "type": "join", "v": 1, "room": "board", "name": "Dr A",
        "token": authority.issue("board", "Dr A", Role::Participant, Duration::from_secs(60)),
        "offer": "v=0 not an offer",
    });
    assert_refused(
        &post_join(&server, &query, &bad_sdp.to_string()).await,
        400,
        "bad_sdp",
    );
    assert_eq!(participants(&server).await, 0.0, "nobody was admitted");

    // A good join, then a second one under the same key while the first waits for its socket.
    let token = authority.issue("board", "Dr A", Role::Participant, Duration::from_secs(60));
    let first = post_join(&server, &query, &good(Some(&token))).await;
    assert_eq!(first.status, 200, "{}", first.json());
    let token_b = authority.issue("board", "Dr B", Role::Participant, Duration::from_secs(60));
    let second = post_join(
        &server,
        &query,
        &join_msg("board", "Dr B", Some(&token_b), &offer()).to_string(),
    )
    .await;
    assert_refused(&second, 409, "already_joined");
    assert_eq!(participants(&server).await, 1.0, "only the first is in");
    common::stop(server).await;
}
