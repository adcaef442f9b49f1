//! Helpers shared by the integration tests: an in-process server, a signaling client over
//! tokio-tungstenite, real SDP offers from the `rtc` crate, and a hand-written HTTP GET.

#![allow(dead_code)]

pub mod http;
pub mod relay;

use consilium::{Config, Server};
use futures_util::{SinkExt, StreamExt};
use rtc::data_channel::RTCDataChannelInit;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// A signaling client socket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single expected event may take before the test fails (instead of hanging).
pub const WAIT: Duration = Duration::from_secs(10);

/// Server messages that arrive on their own (not as the reply to what the client just sent).
/// Waiting for a reply skips these; anything else is the reply.
const EVENTS: &[&str] = &[
    "candidate",
    "media_connection",
    "participant_joined",
    "participant_left",
    "participant_updated",
    "offer",
];

/// Starts a whole server on free loopback ports.
pub async fn start(jwt_secret: Option<&str>, room_cap: usize) -> Server {
    consilium::start(Config {
        jwt_secret: jwt_secret.map(str::to_owned),
        room_cap,
        ..Config::for_tests()
    })
    .await
    .expect("server starts")
}

/// Starts a server in open demo mode with the default room cap.
pub async fn start_open() -> Server {
    start(None, 50).await
}

/// Stops the server, failing the test if that hangs.
pub async fn stop(server: Server) {
    tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("server shuts down in time");
}

/// Opens a signaling WebSocket to `/ws`.
pub async fn connect(server: &Server) -> Ws {
    let url = format!("ws://{}/ws", server.http_addr);
    let (ws, _) = tokio::time::timeout(WAIT, connect_async(url))
        .await
        .expect("WebSocket connect in time")
        .expect("WebSocket upgrade");
    ws
}

/// Sends a text frame.
pub async fn send_text(ws: &mut Ws, text: impl Into<String>) {
    let text: String = text.into();
    ws.send(Message::text(text))
        .await
        .expect("sending a text frame");
}

/// Sends a JSON value as a text frame.
pub async fn send_json(ws: &mut Ws, value: &Value) {
    send_text(ws, value.to_string()).await;
}

/// What the client sees next, after skipping WebSocket pings/pongs.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    /// A Close frame, with its code if it had one.
    Close(Option<u16>),
    /// The stream ended (or failed) without a Close frame.
    Ended(String),
}

/// The next text message or close, skipping control frames. Fails on a timeout, a binary
/// frame or a text frame that is not JSON.
pub async fn next_incoming(ws: &mut Ws) -> Incoming {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the server answered in time");
        match frame {
            None => return Incoming::Ended("end of stream".into()),
            Some(Err(e)) => return Incoming::Ended(e.to_string()),
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("server sent non-JSON text {text:?}: {e}"));
                return Incoming::Json(value);
            }
            Some(Ok(Message::Close(frame))) => {
                return Incoming::Close(frame.map(|f| u16::from(f.code)));
            }
            Some(Ok(Message::Binary(b))) => {
                panic!("server sent a binary frame ({} bytes)", b.len())
            }
            Some(Ok(_)) => continue, // ping, pong, raw frame
        }
    }
}

/// The server's reply to what the client just sent: the next message that is not a room or
/// media event. Fails if the socket closes instead.
pub async fn reply(ws: &mut Ws) -> Value {
    loop {
        match next_incoming(ws).await {
            Incoming::Json(v) => {
                let kind = v["type"].as_str().unwrap_or_default();
                if EVENTS.contains(&kind) {
                    continue;
                }
                return v;
            }
            other => panic!("expected a reply, the socket closed: {other:?}"),
        }
    }
}

/// Waits for the reply and asserts it is `error` with `code`; returns the whole message.
#[track_caller]
pub fn assert_error(msg: &Value, code: &str) {
    assert_eq!(msg["type"], "error", "expected error {code}, got {msg}");
    assert_eq!(msg["code"], code, "wrong error code in {msg}");
    assert!(
        msg["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error has a human message: {msg}"
    );
}

/// Waits for the reply and asserts it is `error` with `code`.
pub async fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let msg = reply(ws).await;
    assert_error(&msg, code);
    msg
}

/// Asserts the socket is still open and served: `ping` is answered with `pong`.
pub async fn assert_open(ws: &mut Ws) {
    send_json(ws, &json!({"type": "ping"})).await;
    let msg = reply(ws).await;
    assert_eq!(msg, json!({"type": "pong"}), "ping answered with {msg}");
}

/// Asserts the server closes the socket (no reply other than room/media events comes first)
/// and returns the close code. After the Close frame the stream must end.
pub async fn expect_close(ws: &mut Ws) -> Option<u16> {
    let code = loop {
        match next_incoming(ws).await {
            Incoming::Json(v) => {
                let kind = v["type"].as_str().unwrap_or_default();
                assert!(
                    EVENTS.contains(&kind),
                    "expected the socket to close, got {v}"
                );
            }
            Incoming::Close(code) => break code,
            Incoming::Ended(why) => panic!("socket ended without a Close frame: {why}"),
        }
    };
    match next_incoming(ws).await {
        Incoming::Ended(_) => {}
        other => panic!("after the Close frame the stream must end, got {other:?}"),
    }
    code
}

/// A fresh, valid SDP offer as a browser client makes it: audio, video and the negotiated
/// `consilium` data channel.
pub fn offer() -> String {
    let mut media_engine = MediaEngine::default();
    media_engine
        .register_default_codecs()
        .expect("default codecs");
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media_engine)
        .build(Instant::now())
        .expect("peer connection");
    pc.add_transceiver_from_kind(RtpCodecKind::Audio, None)
        .expect("audio transceiver");
    pc.add_transceiver_from_kind(RtpCodecKind::Video, None)
        .expect("video transceiver");
    pc.create_data_channel(
        "consilium",
        Some(RTCDataChannelInit {
            ordered: true,
            negotiated: Some(0),
            ..Default::default()
        }),
    )
    .expect("data channel");
    let offer = pc.create_offer(None).expect("offer");
    pc.set_local_description(Instant::now(), offer)
        .expect("local description");
    pc.local_description().expect("local description").sdp
}

/// A `join` message.
pub fn join_msg(room: &str, name: &str, token: Option<&str>, offer: &str) -> Value {
    json!({"type": "join", "v": 1, "room": room, "name": name, "token": token, "offer": offer})
}

/// Sends a `join` with a fresh valid offer and returns the reply.
pub async fn join(ws: &mut Ws, room: &str, name: &str, token: Option<&str>) -> Value {
    send_json(ws, &join_msg(room, name, token, &offer())).await;
    reply(ws).await
}

/// Joins and asserts the server admitted the client; returns the `joined` message.
pub async fn join_ok(ws: &mut Ws, room: &str, name: &str, token: Option<&str>) -> Value {
    let msg = join(ws, room, name, token).await;
    assert_joined(&msg, room);
    msg
}

/// Asserts `msg` is a well-formed `joined` for `room`.
#[track_caller]
pub fn assert_joined(msg: &Value, room: &str) {
    assert_eq!(msg["type"], "joined", "expected joined, got {msg}");
    assert_eq!(msg["v"], 1, "{msg}");
    assert_eq!(msg["room"], room, "{msg}");
    assert!(
        msg["participant_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("p-")),
        "{msg}"
    );
    assert!(
        msg["answer"]
            .as_str()
            .is_some_and(|sdp| sdp.starts_with("v=0")),
        "joined carries an SDP answer: {msg}"
    );
    assert!(msg["participants"].is_array(), "{msg}");
}

/// A plain HTTP/1.1 GET over TCP; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    tokio::time::timeout(WAIT, async {
        let mut stream = TcpStream::connect(addr).await.expect("TCP connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        let text = String::from_utf8(raw).expect("UTF-8 response");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    })
    .await
    .expect("HTTP response in time")
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// The value of one sample line (`name{labels} value`) of a Prometheus text exposition.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Waits for a server message of type `kind`, skipping others; fails if the socket closes.
pub async fn wait_for(ws: &mut Ws, kind: &str) -> Value {
    loop {
        match next_incoming(ws).await {
            Incoming::Json(v) if v["type"] == kind => return v,
            Incoming::Json(_) => continue,
            other => panic!("waiting for {kind}, the socket closed: {other:?}"),
        }
    }
}

/// How long a synthetic participant may take to receive someone's media.
pub const MEDIA_WAIT: Duration = Duration::from_secs(15);

/// Waits until `p` has received audio and video from participant `from`.
pub async fn wait_for_media(p: &mut loadtest::Participant, from: &str) {
    use loadtest::{Event, Kind};
    let received = p.stats().received;
    let mut missing: Vec<Kind> = [Kind::Audio, Kind::Video]
        .into_iter()
        .filter(|k| !received.contains_key(&(from.to_owned(), *k)))
        .collect();
    if missing.is_empty() {
        return;
    }
    let found = p
        .wait_for(MEDIA_WAIT, |e| {
            if let Event::FirstRemoteRtp { publisher, kind } = e
                && publisher == from
            {
                missing.retain(|k| k != kind);
            }
            missing.is_empty()
        })
        .await;
    assert!(
        found.is_some(),
        "no audio+video from {from} within {MEDIA_WAIT:?}; stats: {:?}",
        p.stats().received.keys().collect::<Vec<_>>()
    );
}
