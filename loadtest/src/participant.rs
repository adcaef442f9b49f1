//! A synthetic participant: a real WebRTC peer (the `rtc` stack on its own UDP socket)
//! that joins through the normal signaling, publishes audio and video, subscribes to
//! everyone else, and records what it receives and when.
//!
//! It publishes synthetic frames by default (cheap, for behaviour tests) or real encoded
//! Opus and VP8 ([`ParticipantConfig::media`]) for capacity runs, and measures per received
//! stream what a receiver report would: loss, jitter, and one-way latency.

use crate::clips::EncodedMedia;
use crate::media::{MediaSource, SyntheticAudio, SyntheticVideo, read_send_time};
use crate::stats::{LatencyHistogram, StreamQuality};
use crate::voice::ClipAudio;
use crate::vp8::ClipVideo;
use anyhow::{Context, anyhow, bail};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::{MediaStreamTrack, MediaStreamTrackId};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// How to join.
#[derive(Debug, Clone)]
pub struct ParticipantConfig {
    /// Signaling URL, e.g. `ws://127.0.0.1:8080/ws`.
    pub ws_url: String,
    pub room: String,
    pub name: String,
    pub token: Option<String>,
    pub publish_audio: bool,
    pub publish_video: bool,
    /// Also publish a screen share (a second video track), as a presenter does.
    pub publish_screen: bool,
    /// Real encoded media to publish; `None` sends synthetic VP8/Opus-shaped filler.
    pub media: Option<Arc<EncodedMedia>>,
    /// Keep every latency sample in [`ReceivedStream::latencies_ms`]; long runs turn this
    /// off and use the histogram in [`Stats::latency`], which stays a few KiB.
    pub keep_latency_samples: bool,
    /// Local address for the media socket (loopback in tests).
    pub bind_ip: IpAddr,
    /// Discard every n-th RTP datagram that arrives once media is up: downlink loss that
    /// the SFU must repair on NACK (the peer's NACK generator asks for what is missing).
    pub drop_every_nth_rtp: Option<u32>,
    /// Join with `POST /join` while the WebSocket opens alongside (`docs/protocol.md`,
    /// "Joining over HTTP") instead of with a `join` message on the open socket.
    pub join_over_http: bool,
    /// Receive-only audio and video m-section pairs at the head of the offer, as the web
    /// client makes (`docs/protocol.md`, "Receive slots"): the server's answer puts the
    /// room's first tracks on them, with no renegotiation. 0: every remote track comes by
    /// renegotiation.
    pub receive_slots: usize,
}

impl ParticipantConfig {
    /// Publishes audio and video, binds loopback.
    pub fn new(ws_url: &str, room: &str, name: &str) -> Self {
        Self {
            ws_url: ws_url.to_owned(),
            room: room.to_owned(),
            name: name.to_owned(),
            token: None,
            publish_audio: true,
            publish_video: true,
            publish_screen: false,
            media: None,
            keep_latency_samples: true,
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            drop_every_nth_rtp: None,
            join_over_http: false,
            receive_slots: 0,
        }
    }
}

/// Media kinds as the participant reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Audio,
    Video,
}

/// Something that happened to the participant.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ParticipantJoined {
        id: String,
        name: String,
    },
    ParticipantLeft {
        id: String,
    },
    MediaConnected,
    /// The first RTP packet of a remote participant's track arrived.
    FirstRemoteRtp {
        publisher: String,
        kind: Kind,
    },
    /// A data channel message relayed by the server.
    Data(Value),
    /// A signaling `error` message.
    Error {
        code: String,
        message: String,
    },
    /// The signaling socket closed.
    Closed,
}

/// What one remote stream delivered.
#[derive(Debug, Clone, Default)]
pub struct ReceivedStream {
    pub packets: u64,
    pub bytes: u64,
    pub first_at: Option<Instant>,
    /// One-way latencies (ms) measured from send-time trailers, when present.
    pub latencies_ms: Vec<f64>,
    pub highest_seq: Option<u16>,
}

/// Moments of one join, for connect-time measurement.
#[derive(Debug, Clone, Default)]
pub struct JoinTimings {
    pub started: Option<Instant>,
    pub ws_open: Option<Instant>,
    pub joined: Option<Instant>,
    /// ICE connected (a check succeeded); `media_connected` adds DTLS.
    pub ice_connected: Option<Instant>,
    pub media_connected: Option<Instant>,
    pub first_remote_rtp: Option<Instant>,
}

/// One received track (a publisher may send two videos: camera and screen share).
#[derive(Debug, Clone)]
pub struct TrackStats {
    pub publisher: String,
    pub kind: Kind,
    pub packets: u64,
    /// RTP payload bytes, as the SFU's `consilium_forwarded_bytes_total` counts them.
    pub bytes: u64,
    pub quality: StreamQuality,
    first_at: Instant,
    last_at: Instant,
    /// This track's key in [`Stats::received`], made once.
    received_key: (String, Kind),
}

impl TrackStats {
    /// Seconds from the first to the last packet, once there are two.
    pub fn elapsed(&self) -> Option<f64> {
        let s = self
            .last_at
            .saturating_duration_since(self.first_at)
            .as_secs_f64();
        (s > 0.0).then_some(s)
    }

    /// The RTP clock of the track's codec (Opus 48 kHz, video 90 kHz).
    pub fn clock_rate(&self) -> f64 {
        match self.kind {
            Kind::Audio => 48_000.0,
            Kind::Video => 90_000.0,
        }
    }
}

/// Everything the participant has measured so far.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub received: HashMap<(String, Kind), ReceivedStream>,
    /// Per received track, by this connection's track id.
    pub tracks: HashMap<String, TrackStats>,
    /// One-way latency of every received packet that carried a send-time trailer.
    pub latency: LatencyHistogram,
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub plis_received: u64,
    /// RTP datagrams discarded on arrival by [`ParticipantConfig::drop_every_nth_rtp`].
    pub rtp_dropped_on_purpose: u64,
    pub timings: JoinTimings,
    /// Offers the server sent after the join (renegotiations), and the last one's SDP.
    pub server_offers: u64,
    pub last_server_offer: Option<String>,
}

enum Command {
    SendData(String),
    RequestKeyframes,
    Leave,
}

/// A joined synthetic participant. Dropping it leaves the room.
pub struct Participant {
    pub id: String,
    /// The participants already in the room when this one joined (id, name).
    pub others: Vec<(String, String)>,
    /// Our join's offer and the server's answer to it.
    pub offer: String,
    pub answer: String,
    events: mpsc::UnboundedReceiver<Event>,
    commands: mpsc::UnboundedSender<Command>,
    stats: Arc<Mutex<Stats>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Participant {
    /// Connects, joins and starts the media loop. Fails on a signaling `error`.
    pub async fn join(config: ParticipantConfig) -> anyhow::Result<Participant> {
        let started = Instant::now();
        let socket = UdpSocket::bind(SocketAddr::new(config.bind_ip, 0)).await?;
        let local_addr = socket.local_addr()?;
        let mut peer = ClientPeer::new(&config, local_addr)?;
        let offer = peer.offer()?;
        let join = json!({
            "type": "join", "v": 1, "room": config.room, "name": config.name,
            "token": config.token, "offer": &offer,
        })
        .to_string();
        let (signal, joined, ws_open) = if config.join_over_http {
            // Both requests leave now; the answer comes back on the POST, and the socket,
            // naming the same key, takes the session over when it is open.
            let key = session_key();
            let ws_url = with_session_key(&config.ws_url, &key);
            let connecting = tokio::spawn(async move { connect_ws(&ws_url).await });
            match post_join(&config.ws_url, &key, &join).await {
                Ok(joined) => (Signal::Connecting(connecting), joined, None),
                Err(e) => {
                    connecting.abort();
                    return Err(e);
                }
            }
        } else {
            let mut ws = connect_ws(&config.ws_url).await?;
            let ws_open = Instant::now();
            ws.send(Message::Text(join.into())).await?;
            let joined = loop {
                let msg = next_json(&mut ws).await?;
                match msg["type"].as_str() {
                    Some("joined") => break msg,
                    Some("error") => bail!("join refused: {}", refusal(&msg)),
                    _ => continue,
                }
            };
            (Signal::Open(Box::new(ws)), joined, Some(ws_open))
        };
        let joined_at = Instant::now();
        let id = joined["participant_id"]
            .as_str()
            .ok_or_else(|| anyhow!("joined without participant_id"))?
            .to_owned();
        let answer = joined["answer"]
            .as_str()
            .ok_or_else(|| anyhow!("joined without answer"))?
            .to_owned();
        peer.apply_answer(answer.clone())?;
        // Trickle our one candidate, as a browser would.
        let candidate =
            json!({"type": "candidate", "candidate": peer.local_candidate.clone()}).to_string();
        let (ws, connecting, unsent) = match signal {
            Signal::Open(mut ws) => {
                ws.send(Message::Text(candidate.into())).await?;
                (Some(*ws), None, Vec::new())
            }
            Signal::Connecting(task) => (None, Some(task), vec![candidate]),
        };
        let others = joined["participants"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        Some((p["id"].as_str()?.to_owned(), p["name"].as_str()?.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let stats = Arc::new(Mutex::new(Stats {
            timings: JoinTimings {
                started: Some(started),
                ws_open,
                joined: Some(joined_at),
                ..Default::default()
            },
            ..Default::default()
        }));
        let (event_tx, events) = mpsc::unbounded_channel();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(
            Loop {
                ws,
                connecting,
                unsent,
                socket,
                local_addr,
                peer,
                events: event_tx,
                stats: stats.clone(),
                drop_every_nth_rtp: config.drop_every_nth_rtp,
                rtp_seen: 0,
            }
            .run(command_rx),
        );
        Ok(Participant {
            id,
            others,
            offer,
            answer,
            events,
            commands,
            stats,
            task: Some(task),
        })
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for an event `want` accepts, discarding others; `None` after `timeout`.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&Event) -> bool,
    ) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event(left).await?;
            if want(&event) {
                return Some(event);
            }
        }
    }

    /// A copy of the statistics so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sends a JSON text message on the data channel.
    pub fn send_data(&self, message: &Value) {
        let _ = self.commands.send(Command::SendData(message.to_string()));
    }

    /// Asks for a keyframe (PLI) on every video track received so far, as a decoder that
    /// lost its picture does.
    pub fn request_keyframes(&self) {
        let _ = self.commands.send(Command::RequestKeyframes);
    }

    /// Leaves the room and waits for the loop to end.
    pub async fn leave(mut self) {
        let _ = self.commands.send(Command::Leave);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Leave);
    }
}

/// The signaling socket as a join leaves it: open, or still connecting (a join over HTTP).
enum Signal {
    Open(Box<Ws>),
    Connecting(tokio::task::JoinHandle<anyhow::Result<Ws>>),
}

async fn connect_ws(url: &str) -> anyhow::Result<Ws> {
    // TCP_NODELAY, as browsers set it: small signaling messages must not wait for the
    // ACK of the previous one (Nagle + delayed ACK = 40 ms stalls on Linux).
    // A small read buffer: tungstenite zero-fills all of it (128 KiB by default) before
    // every read, which was 13 % of the load generator's CPU in a connect benchmark.
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config), true)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// A fresh session key: 32 characters of a URL-safe alphabet (190 bits).
fn session_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn with_session_key(ws_url: &str, key: &str) -> String {
    let sep = if ws_url.contains('?') { '&' } else { '?' };
    format!("{ws_url}{sep}session={key}")
}

/// `code (message)` of a signaling `error` message.
fn refusal(msg: &Value) -> String {
    format!(
        "{} ({})",
        msg["code"].as_str().unwrap_or(""),
        msg["message"].as_str().unwrap_or("")
    )
}

/// Where `POST /join` is for a signaling URL: `ws://host:port/prefix/ws` →
/// (`host:port`, `/prefix/join`).
fn join_endpoint(ws_url: &str) -> anyhow::Result<(String, String)> {
    let rest = ws_url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("joining over HTTP needs a ws:// URL, not {ws_url}"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.split('?').next().unwrap_or("");
    let prefix = path
        .strip_suffix("ws")
        .ok_or_else(|| anyhow!("the signaling URL's path ends in /ws: {ws_url}"))?;
    Ok((authority.to_owned(), format!("/{prefix}join")))
}

/// `POST /join?session=KEY` with the `join` message; the `joined` message it returns.
/// HTTP/1.1 by hand on a fresh connection (`Connection: close`), as a cold client's first
/// request would be: the TCP handshake and one request, two round trips.
async fn post_join(ws_url: &str, key: &str, join: &str) -> anyhow::Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (authority, path) = join_endpoint(ws_url)?;
    let mut tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    tcp.set_nodelay(true)?;
    let request = format!(
        "POST {path}?session={key} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{join}",
        join.len()
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("POST /join: no HTTP response"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("POST /join: bad status line"))?;
    let msg: Value = serde_json::from_str(body)
        .with_context(|| format!("POST /join: {status} without a JSON body"))?;
    if status != 200 {
        bail!("join refused: {}", refusal(&msg));
    }
    if msg["type"] != "joined" {
        bail!("POST /join answered {}, not joined", msg["type"]);
    }
    Ok(msg)
}

/// The next message of the socket, once there is one (never, while it is still opening).
async fn next_message(
    ws: &mut Option<Ws>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(_))) | None => bail!("signaling socket closed"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

struct Outgoing {
    sender: RTCRtpSenderId,
    ssrc: u32,
    source: Box<dyn MediaSource + Send>,
    kind: Kind,
    /// When the next frame is due.
    due: Instant,
}

/// The client side of the WebRTC connection.
struct ClientPeer {
    pc: RTCPeerConnection,
    outgoing: Vec<Outgoing>,
    data_channel: usize,
    local_candidate: Value,
    /// Remote tracks by this connection's track id: (publisher, kind).
    remote: HashMap<MediaStreamTrackId, (String, Kind)>,
    /// Receivers of remote video, for keyframe requests.
    video_receivers: Vec<rtc::rtp_transceiver::RTCRtpReceiverId>,
    keep_latency_samples: bool,
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

/// One DTLS certificate for every synthetic participant of this process: making one (an
/// ECDSA key and a signature) per join was load-generator CPU that a connect benchmark
/// would count against the server. Each peer still has its own DTLS keys per handshake.
fn shared_certificate() -> anyhow::Result<RTCCertificate> {
    static CERT: std::sync::OnceLock<Result<RTCCertificate, String>> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        let provider = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
        RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            CertificateParams::new(vec!["consilium-loadtest".to_owned()])
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|e| anyhow!("making the DTLS certificate: {e}"))
}

impl ClientPeer {
    fn new(config: &ParticipantConfig, local_addr: SocketAddr) -> anyhow::Result<Self> {
        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs()?;
        // `rtc` hands inbound RTCP to the application only when an interceptor marks it:
        // without this, keyframe requests would never reach the publisher's encoder.
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?.with(
            Slot::from(14_000),
            consilium_sfu::feedback::FeedbackForApplication::default(),
        );
        // `rtc` paces its connectivity checks at 200 ms and nominates a pair only at the
        // next pacing tick after its check succeeded, so a join would wait up to 200 ms
        // for nothing; a browser nominates at once. Check every 25 ms (same 1.4 s budget).
        let setting_engine = SettingEngineBuilder::new()
            .with_ice_connection_attempts(Some(Duration::from_millis(25)), Some(56))
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![shared_certificate()?])
                    .build(),
            )
            .with_setting_engine(setting_engine)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(Instant::now())?;
        // The stream and track ids go into the SDP's `msid` (RFC 8830: tokens, no spaces),
        // and display names have spaces ("Dr A").
        let id_safe: String = config
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let stream = format!("{id_safe}-local");
        let mut outgoing = Vec::new();
        let mut tracks: Vec<(Kind, &str, RTCRtpCodec, Box<dyn MediaSource + Send>)> = Vec::new();
        // Publishers sharing a clip start at different places in it.
        let start: usize = rand::random::<u16>().into();
        let audio: Box<dyn MediaSource + Send> = match &config.media {
            Some(m) => Box::new(ClipAudio::new(m.audio.clone(), start)),
            None => Box::new(SyntheticAudio::default()),
        };
        let camera: Box<dyn MediaSource + Send> = match &config.media {
            Some(m) => Box::new(ClipVideo::new(m.camera.clone(), start)),
            None => Box::new(SyntheticVideo::default()),
        };
        if config.publish_audio {
            tracks.push((Kind::Audio, "audio", opus(), audio));
        }
        if config.publish_video {
            tracks.push((Kind::Video, "video", vp8(), camera));
        }
        if config.publish_screen {
            let screen: Box<dyn MediaSource + Send> = match &config.media {
                Some(m) => Box::new(ClipVideo::new(m.screen.clone(), start)),
                None => Box::new(SyntheticVideo::default()),
            };
            tracks.push((Kind::Video, "screen", vp8(), screen));
        }
        // The slots offer what the synthetic publishers send (Opus, VP8), as a browser's
        // offer what it can send: offering every codec `rtc` knows made each slot's
        // m-section ~30 codecs long, and the server's join 6 ms slower per slot pair
        // (rtc's SDP codec parsing is quadratic in a section's payload types).
        for _ in 0..config.receive_slots {
            for (kind, codec, payload_type) in [
                (RtpCodecKind::Audio, opus(), 111),
                (RtpCodecKind::Video, vp8(), 96),
            ] {
                let slot = pc.add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )?;
                if let Some(mut t) = pc.rtp_transceiver(slot) {
                    t.set_codec_preferences(vec![RTCRtpCodecParameters {
                        rtp_codec: codec,
                        payload_type,
                    }])?;
                }
            }
        }
        for (kind, label, codec, source) in tracks {
            let ssrc: u32 = rand::random();
            let rtc_kind = match kind {
                Kind::Audio => RtpCodecKind::Audio,
                Kind::Video => RtpCodecKind::Video,
            };
            let track = MediaStreamTrack::new(
                stream.clone(),
                format!("{stream}-{label}"),
                format!("{stream}-{label}"),
                rtc_kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec,
                    ..Default::default()
                }],
            );
            let transceiver = pc.add_transceiver_from_track(
                track,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![stream.clone()],
                    send_encodings: vec![],
                }),
            )?;
            outgoing.push(Outgoing {
                sender: RTCRtpSenderId::from(transceiver),
                ssrc,
                source,
                kind,
                due: Instant::now(),
            });
        }
        let data_channel = pc
            .create_data_channel(
                "consilium",
                Some(rtc::data_channel::RTCDataChannelInit {
                    ordered: true,
                    negotiated: Some(0),
                    ..Default::default()
                }),
            )?
            .id();
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: local_addr.ip().to_string(),
                port: local_addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        let init = RTCIceCandidate::from(&candidate).to_json()?;
        let local_candidate = json!({
            "candidate": init.candidate,
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        });
        Ok(Self {
            pc,
            outgoing,
            data_channel,
            local_candidate,
            remote: HashMap::new(),
            video_receivers: Vec::new(),
            keep_latency_samples: config.keep_latency_samples,
        })
    }

    fn offer(&mut self) -> anyhow::Result<String> {
        let offer = self.pc.create_offer(None)?;
        let sdp = offer.sdp.clone();
        self.pc.set_local_description(Instant::now(), offer)?;
        // Gathering is ours: the one host candidate of our socket, then end-of-candidates.
        let candidate: rtc::peer_connection::transport::RTCIceCandidateInit =
            serde_json::from_value(self.local_candidate_json())?;
        self.pc.add_local_candidate(candidate)?;
        Ok(sdp)
    }

    fn local_candidate_json(&self) -> Value {
        self.local_candidate.clone()
    }

    fn apply_answer(&mut self, sdp: String) -> anyhow::Result<()> {
        self.pc
            .set_remote_description(Instant::now(), RTCSessionDescription::answer(sdp)?)?;
        Ok(())
    }

    fn answer_offer(&mut self, sdp: String) -> anyhow::Result<String> {
        let now = Instant::now();
        self.pc
            .set_remote_description(now, RTCSessionDescription::offer(sdp)?)?;
        let answer = self.pc.create_answer(None)?;
        let sdp = answer.sdp.clone();
        self.pc.set_local_description(now, answer)?;
        Ok(sdp)
    }
}

struct Loop {
    /// The signaling socket, once open.
    ws: Option<Ws>,
    /// The socket of a join over HTTP while it opens.
    connecting: Option<tokio::task::JoinHandle<anyhow::Result<Ws>>>,
    /// What was to go out on the socket before it was open.
    unsent: Vec<String>,
    socket: UdpSocket,
    local_addr: SocketAddr,
    peer: ClientPeer,
    events: mpsc::UnboundedSender<Event>,
    stats: Arc<Mutex<Stats>>,
    drop_every_nth_rtp: Option<u32>,
    /// RTP datagrams seen since media came up (for `drop_every_nth_rtp`).
    rtp_seen: u64,
}

impl Loop {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut buf = vec![0u8; 2048];
        let mut connected = false;
        loop {
            self.drain();
            self.flush().await;
            let deadline = self
                .peer
                .pc
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            let media_due = self
                .peer
                .outgoing
                .iter()
                .map(|o| o.due)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                opened = async { self.connecting.as_mut().expect("guarded").await }, if self.connecting.is_some() => {
                    self.connecting = None;
                    match opened {
                        Ok(Ok(ws)) => {
                            if let Ok(mut s) = self.stats.lock() {
                                s.timings.ws_open = Some(Instant::now());
                            }
                            self.ws = Some(ws);
                            for text in std::mem::take(&mut self.unsent) {
                                if let Err(e) = self.send_signal(text).await {
                                    tracing::warn!(error = %e, "signaling send failed");
                                }
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "signaling socket never opened");
                            let _ = self.events.send(Event::Closed);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                msg = next_message(&mut self.ws) => {
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            if let Err(e) = self.signaling(&t).await {
                                tracing::warn!(error = %e, "signaling message failed");
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            let _ = self.events.send(Event::Closed);
                            break;
                        }
                        Some(Ok(_)) => {}
                    }
                }
                res = self.socket.recv_from(&mut buf) => {
                    if let Ok((n, from)) = res {
                        if connected && self.drop_on_purpose(&buf[..n]) {
                            continue;
                        }
                        let _ = self.peer.pc.handle_read(TaggedBytesMut {
                            now: Instant::now(),
                            transport: TransportContext {
                                local_addr: self.local_addr,
                                peer_addr: from,
                                ecn: None,
                                transport_protocol: TransportProtocol::UDP,
                            },
                            message: BytesMut::from(&buf[..n]),
                        });
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let _ = self.peer.pc.handle_timeout(Instant::now());
                }
                _ = tokio::time::sleep_until(media_due.into()), if connected => self.send_media(),
                cmd = commands.recv() => match cmd {
                    Some(Command::SendData(text)) => {
                        if let Some(mut dc) = self.peer.pc.data_channel(self.peer.data_channel) {
                            let _ = dc.send_text(Instant::now(), text);
                        }
                    }
                    Some(Command::RequestKeyframes) => self.request_keyframes(),
                    Some(Command::Leave) | None => {
                        // A socket still opening is given a moment, so that the leave is
                        // said rather than left to the server's attach timeout.
                        if let Some(task) = self.connecting.take()
                            && let Ok(Ok(Ok(ws))) =
                                tokio::time::timeout(Duration::from_secs(2), task).await
                        {
                            self.ws = Some(ws);
                        }
                        if let Some(ws) = &mut self.ws {
                            let _ = ws.send(Message::Text(r#"{"type":"leave"}"#.into())).await;
                            let _ = ws.close(None).await;
                        }
                        let _ = self.peer.pc.close();
                        self.flush().await;
                        break;
                    }
                },
            }
            if !connected {
                connected = self
                    .stats
                    .lock()
                    .map(|s| s.timings.media_connected.is_some())
                    .unwrap_or(false);
                if connected {
                    let now = Instant::now();
                    for out in &mut self.peer.outgoing {
                        out.due = now;
                    }
                }
            }
        }
    }

    /// Sends on the signaling socket, or keeps the message until it is open.
    async fn send_signal(&mut self, text: String) -> anyhow::Result<()> {
        match &mut self.ws {
            Some(ws) => ws.send(Message::Text(text.into())).await?,
            None => self.unsent.push(text),
        }
        Ok(())
    }

    async fn signaling(&mut self, text: &str) -> anyhow::Result<()> {
        let msg: Value = serde_json::from_str(text)?;
        match msg["type"].as_str().unwrap_or("") {
            "offer" => {
                let sdp = msg["sdp"].as_str().unwrap_or_default().to_owned();
                if let Ok(mut s) = self.stats.lock() {
                    s.server_offers += 1;
                    s.last_server_offer = Some(sdp.clone());
                }
                let answer = self.peer.answer_offer(sdp)?;
                self.send_signal(json!({"type": "answer", "sdp": answer}).to_string())
                    .await?;
            }
            "participant_joined" => {
                let p = &msg["participant"];
                let _ = self.events.send(Event::ParticipantJoined {
                    id: p["id"].as_str().unwrap_or_default().to_owned(),
                    name: p["name"].as_str().unwrap_or_default().to_owned(),
                });
            }
            "participant_left" => {
                let _ = self.events.send(Event::ParticipantLeft {
                    id: msg["participant_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
            "error" => {
                let _ = self.events.send(Event::Error {
                    code: msg["code"].as_str().unwrap_or_default().to_owned(),
                    message: msg["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn request_keyframes(&mut self) {
        for &id in &self.peer.video_receivers {
            let Some(mut receiver) = self.peer.pc.rtp_receiver(id) else {
                continue;
            };
            let Some(media_ssrc) = receiver.track().ssrcs().next() else {
                continue;
            };
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            let _ = receiver.write_rtcp(Instant::now(), vec![Box::new(pli)]);
        }
    }

    /// Whether this datagram is the n-th RTP one (RFC 5761: RTCP has payload types
    /// 192–223 in the second byte, RTP not) and is to be lost on purpose.
    fn drop_on_purpose(&mut self, datagram: &[u8]) -> bool {
        let Some(n) = self.drop_every_nth_rtp else {
            return false;
        };
        let is_rtp = datagram.len() >= 12
            && (128..=191).contains(&datagram[0])
            && !(192..=223).contains(&datagram[1]);
        if !is_rtp {
            return false;
        }
        self.rtp_seen += 1;
        if !self.rtp_seen.is_multiple_of(u64::from(n.max(1))) {
            return false;
        }
        if let Ok(mut s) = self.stats.lock() {
            s.rtp_dropped_on_purpose += 1;
        }
        true
    }

    /// Handles everything the connection has for us.
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.peer.pc.poll_event() {
                progressed = true;
                self.event(event);
            }
            // `rtc` starts the DTLS handshake on ICE success without queuing its output
            // until the next timer (a ~200 ms stall); a timeout pass flushes it now.
            if progressed {
                let _ = self.peer.pc.handle_timeout(Instant::now());
            }
            while let Some(msg) = self.peer.pc.poll_read() {
                progressed = true;
                self.message(msg.message, msg.now);
            }
            if !progressed {
                break;
            }
        }
    }

    fn event(&mut self, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Connected,
            ) => {
                if let Ok(mut s) = self.stats.lock() {
                    s.timings.ice_connected.get_or_insert(Instant::now());
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) => {
                if let Ok(mut s) = self.stats.lock() {
                    s.timings.media_connected.get_or_insert(Instant::now());
                }
                let _ = self.events.send(Event::MediaConnected);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                let Some(publisher) = init.stream_ids.first().cloned() else {
                    return;
                };
                let kind = match self
                    .peer
                    .pc
                    .rtp_receiver(init.receiver_id)
                    .map(|r| r.track().kind())
                {
                    Some(RtpCodecKind::Audio) => Kind::Audio,
                    _ => Kind::Video,
                };
                if kind == Kind::Video {
                    self.peer.video_receivers.push(init.receiver_id);
                }
                self.peer.remote.insert(init.track_id, (publisher, kind));
            }
            _ => {}
        }
    }

    fn message(&mut self, message: RTCMessage, at: Instant) {
        match message {
            RTCMessage::RtpPacket(track_id, packet) => {
                // Per received packet, 1 900 a second per participant in a board: one lookup
                // per map and no allocation (the generator is the limit of the capacity ramp).
                let Some((publisher, kind)) = self.peer.remote.get(&track_id) else {
                    return;
                };
                let kind = *kind;
                let latency = read_send_time(&packet.payload);
                let Ok(mut stats) = self.stats.lock() else {
                    return;
                };
                let stats = &mut *stats;
                let track = stats.tracks.entry(track_id).or_insert_with(|| TrackStats {
                    publisher: publisher.clone(),
                    kind,
                    packets: 0,
                    bytes: 0,
                    quality: StreamQuality::default(),
                    first_at: at,
                    last_at: at,
                    received_key: (publisher.clone(), kind),
                });
                track.packets += 1;
                track.last_at = at;
                track.bytes += packet.payload.len() as u64;
                let clock = track.clock_rate();
                track.quality.record(
                    packet.header.sequence_number,
                    packet.header.timestamp,
                    at.saturating_duration_since(track.first_at).as_secs_f64(),
                    clock,
                );
                if let Some(ms) = latency {
                    stats.latency.record(ms);
                }
                let stream = match stats.received.get_mut(&track.received_key) {
                    Some(stream) => stream,
                    None => stats
                        .received
                        .entry(track.received_key.clone())
                        .or_default(),
                };
                stream.packets += 1;
                stream.bytes += packet.payload.len() as u64;
                stream.highest_seq = Some(packet.header.sequence_number);
                if let (Some(ms), true) = (latency, self.peer.keep_latency_samples) {
                    stream.latencies_ms.push(ms);
                }
                if stream.first_at.is_none() {
                    stream.first_at = Some(at);
                    stats.timings.first_remote_rtp.get_or_insert(at);
                    let _ = self.events.send(Event::FirstRemoteRtp {
                        publisher: publisher.clone(),
                        kind,
                    });
                }
            }
            RTCMessage::RtcpPacket(_, packets) => {
                let plis: Vec<u32> = packets
                    .iter()
                    .filter_map(|p| p.as_any().downcast_ref::<PictureLossIndication>())
                    .map(|pli| pli.media_ssrc)
                    .collect();
                if !plis.is_empty() {
                    if let Ok(mut s) = self.stats.lock() {
                        s.plis_received += 1;
                    }
                    // A PLI names the track it is about; one without a known SSRC asks
                    // for every video.
                    let known = self.peer.outgoing.iter().any(|o| plis.contains(&o.ssrc));
                    for out in &mut self.peer.outgoing {
                        if out.kind == Kind::Video && (!known || plis.contains(&out.ssrc)) {
                            out.source.request_keyframe();
                        }
                    }
                }
            }
            RTCMessage::DataChannelMessage(_, message) => {
                if let Ok(value) = serde_json::from_slice::<Value>(&message.data) {
                    let _ = self.events.send(Event::Data(value));
                }
            }
            _ => {}
        }
    }

    /// Sends the frames that are due and schedules the next ones (a frame more than one
    /// interval late is skipped, as a real capturer drops frames).
    fn send_media(&mut self) {
        let now = Instant::now();
        let mut sent = 0;
        let mut sent_bytes = 0;
        for out in self.peer.outgoing.iter_mut().filter(|o| o.due <= now) {
            let interval = out.source.frame_interval();
            out.due += interval;
            if out.due + interval < now {
                out.due = now + interval;
            }
            let Some(mut sender) = self.peer.pc.rtp_sender(out.sender) else {
                continue;
            };
            let Some(pt) = sender
                .get_parameters()
                .rtp_parameters
                .codecs
                .first()
                .map(|c| c.payload_type)
            else {
                continue;
            };
            for packet in out.source.next_packets(out.ssrc, pt) {
                let len = packet.payload.len() as u64;
                if sender.write_rtp(now, packet).is_ok() {
                    sent += 1;
                    sent_bytes += len;
                }
            }
        }
        if let Ok(mut s) = self.stats.lock() {
            s.sent_packets += sent;
            s.sent_bytes += sent_bytes;
        }
    }

    async fn flush(&mut self) {
        while let Some(out) = self.peer.pc.poll_write() {
            let _ = self
                .socket
                .send_to(&out.message, out.transport.peer_addr)
                .await;
        }
    }
}
