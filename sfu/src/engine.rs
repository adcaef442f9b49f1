//! The media engine: one task that owns the shared UDP socket and every peer connection.
//!
//! Why one task: a forwarded packet goes from the publisher's connection to each
//! subscriber's connection and out of the socket with no lock, no channel and no task hop.
//! The service layer talks to the engine through [`SfuHandle`] (commands in) and a
//! per-peer channel of [`PeerEvent`]s (events out).
//!
//! Everything a client controls (SDP, datagrams) reaches `rtc` inside [`guarded`], so a
//! panic on hostile input costs that one peer, never the engine.

use crate::codec::VideoCodec;
use crate::demux::Demux;
use crate::feedback::{BandwidthEstimate, FeedbackForApplication};
use crate::forwarding::{DownTrack, KeyframeRequests, MediaKind, PacketHistory, Rewrite};
use crate::udp_batch::SendBatch;
use crate::{SfuConfig, SfuError, SfuMetrics};
use bytes::{Bytes, BytesMut};
use rtc::interceptor::{
    CongestionControlBuilder, Gcc, NackGeneratorBuilder, ReceiverReportBuilder, Registry,
    SenderReportBuilder, Slot, TwccSenderBuilder,
};
use rtc::media_stream::{MediaStreamTrack, MediaStreamTrackId};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId,
    RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// A media peer's state as the service layer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    Disconnected,
    Failed,
}

/// What the engine tells the service layer about one peer.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A renegotiation offer for the client; its answer goes to [`SfuHandle::answer`].
    Offer(String),
    /// The media connection changed state.
    Connection(ConnectionState),
    /// A message arrived on the peer's data channel.
    Data { text: bool, data: Bytes },
    /// The engine removed the peer (connection failed or never came up).
    Closed { reason: &'static str },
    /// A step of the join was reached (each at most once per peer), for connect timing.
    Milestone { milestone: Milestone, at: Instant },
}

/// The media-side steps of a join, in the order they normally happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    IceConnected,
    DtlsConnected,
    FirstRtpReceived,
    FirstRtpForwarded,
}

impl Milestone {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Milestone::IceConnected => "ice_connected",
            Milestone::DtlsConnected => "dtls_connected",
            Milestone::FirstRtpReceived => "first_rtp_received",
            Milestone::FirstRtpForwarded => "first_rtp_forwarded",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A participant's media connection request.
#[derive(Debug)]
pub struct JoinRequest {
    /// The participant id: unique on this server, and the MediaStream id of its tracks.
    pub peer_id: String,
    pub room: String,
    /// Whether tracks this peer sends are forwarded (observers: no).
    pub may_publish: bool,
    /// The client's SDP offer.
    pub offer: String,
    /// Where the engine sends this peer's events.
    pub events: mpsc::Sender<PeerEvent>,
}

enum Command {
    Join {
        request: JoinRequest,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    Candidate {
        peer_id: String,
        candidate: Option<RTCIceCandidateInit>,
    },
    Answer {
        peer_id: String,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    SendData {
        to: Vec<String>,
        data: Bytes,
    },
    Leave {
        peer_id: String,
    },
}

/// The service layer's handle on the engine. Cheap to clone.
#[derive(Clone)]
pub struct SfuHandle {
    commands: mpsc::Sender<Command>,
    local_addr: SocketAddr,
}

impl SfuHandle {
    /// The media port's address as advertised in candidates.
    pub fn media_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Creates the peer, applies the client's offer and returns the SDP answer.
    pub async fn join(&self, request: JoinRequest) -> Result<String, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Join { request, reply })
            .await
            .map_err(|_| SfuError::Stopped)?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// A trickled client candidate (`None`: end of candidates).
    pub async fn add_candidate(&self, peer_id: &str, candidate: Option<RTCIceCandidateInit>) {
        let _ = self
            .commands
            .send(Command::Candidate {
                peer_id: peer_id.to_owned(),
                candidate,
            })
            .await;
    }

    /// The client's answer to the last [`PeerEvent::Offer`].
    pub async fn answer(&self, peer_id: &str, sdp: String) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Answer {
                peer_id: peer_id.to_owned(),
                sdp,
                reply,
            })
            .await
            .map_err(|_| SfuError::Stopped)?;
        rx.await.map_err(|_| SfuError::Stopped)?
    }

    /// Sends a text message on the data channels of `to`.
    pub async fn send_data(&self, to: Vec<String>, data: Bytes) {
        let _ = self.commands.send(Command::SendData { to, data }).await;
    }

    /// Removes a peer and everything it published or subscribed to. Idempotent.
    pub async fn leave(&self, peer_id: &str) {
        let _ = self
            .commands
            .send(Command::Leave {
                peer_id: peer_id.to_owned(),
            })
            .await;
    }
}

/// The media engine before it runs.
pub struct Sfu {
    engine: Engine,
    commands: mpsc::Receiver<Command>,
}

impl Sfu {
    /// Binds the media socket and prepares the engine. The DTLS certificate is made here,
    /// once, not per peer: generating one costs milliseconds on every join.
    pub fn bind(config: SfuConfig, metrics: SfuMetrics) -> Result<(Self, SfuHandle), SfuError> {
        let socket = bind_udp(config.bind)?;
        let bound = socket.local_addr()?;
        let local_addr = SocketAddr::new(config.advertised_ip, bound.port());
        let provider = rtc::crypto::default_provider().map_err(|e| SfuError::Rtc(e.to_string()))?;
        let certificate = RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            CertificateParams::new(vec!["consilium".to_owned()])
                .map_err(|e| SfuError::Rtc(e.to_string()))?,
        )
        .map_err(|e| SfuError::Rtc(e.to_string()))?;
        let (tx, rx) = mpsc::channel(1024);
        let engine = Engine {
            socket,
            local_addr,
            config,
            certificate,
            metrics,
            peers: HashMap::new(),
            ids: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            demux: Demux::default(),
            deadlines: BTreeSet::new(),
            dirty: Vec::new(),
            next_key: 0,
            scratch: Vec::new(),
            batch: SendBatch::new(),
            estimates_sampled: Instant::now(),
        };
        Ok((
            Self {
                engine,
                commands: rx,
            },
            SfuHandle {
                commands: tx,
                local_addr,
            },
        ))
    }

    /// Runs until `shutdown` turns true or every handle is dropped.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Sfu {
            mut engine,
            mut commands,
        } = self;
        let mut buf = vec![0u8; 2048];
        let mut housekeeping = tokio::time::interval(Duration::from_millis(250));
        loop {
            let next = engine
                .deadlines
                .first()
                .map(|(t, _)| *t)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => engine.command(cmd),
                    None => break,
                },
                res = engine.socket.recv_from(&mut buf) => match res {
                    Ok((n, from)) => {
                        engine.datagram(from, &buf[..n]);
                        // Drain what else is queued before going back to select, sending
                        // each datagram's output before reading the next: queued output
                        // piles up in every subscriber's `rtc` handler queues, whose
                        // capacity never shrinks (a 65-datagram batch cost ~1 MiB per
                        // participant in a 14-person board).
                        for _ in 0..64 {
                            engine.flush();
                            match engine.socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => engine.datagram(from, &buf[..n]),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => {
                        // ICMP port unreachable from a vanished peer surfaces here on Linux.
                        tracing::debug!(error = %e, "media socket receive error");
                    }
                },
                _ = tokio::time::sleep_until(next.into()) => engine.timeouts(Instant::now()),
                _ = housekeeping.tick() => engine.housekeeping(Instant::now()),
            }
            engine.flush();
        }
        engine.close_all();
        tracing::info!("media engine stopped");
    }
}

fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, SfuError> {
    use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(SockProtocol::UDP),
    )?;
    // One socket carries every peer: large buffers absorb bursts of keyframes.
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into())?)
}

type PeerKey = u64;
type TrackKey = u64;

/// One forwarded track as one subscriber receives it.
struct Subscription {
    sender_id: RTCRtpSenderId,
    down: DownTrack,
    mime: String,
    payload_type: Option<u8>,
}

/// A subscriber's sending transceiver without a track, ready to carry the next one.
struct IdleSender {
    sender_id: RTCRtpSenderId,
    mime: String,
    /// Keeps the SSRC (the sender's interceptors are bound to it) and the sequence and
    /// timestamp continuity the subscriber's receiver has seen.
    down: DownTrack,
}

/// A receive slot of the client's offer that no track has taken yet (see
/// [`take_free_slots`]): the next subscription of its kind goes on it instead of on a new
/// m-section.
struct FreeSlot {
    id: RTCRtpTransceiverId,
    kind: RtpCodecKind,
}

/// DTLS datagrams kept per peer from before its ICE connected: a ClientHello (two datagrams
/// when it carries a post-quantum key share) and a retransmission of it.
const MAX_EARLY_DTLS: usize = 4;

/// Packets of history kept per published video track: a 1080p screen-share keyframe and the
/// frames after it, and about 2.5 s of a 1 Mbit/s camera (NACKs come within a few round
/// trips). Each kept packet holds its decrypted datagram (~1.5 KiB with allocator overhead):
/// 512 cost ~1 MiB per published camera.
const VIDEO_HISTORY_PACKETS: usize = 256;

/// And at most this old: nothing older is replayed to a joiner (see
/// [`MAX_KEYFRAME_REPLAY_AGE`]) or worth a NACK's retransmission; a 1 Mbit/s camera then
/// keeps ~120 packets instead of 256.
const VIDEO_HISTORY_AGE: Duration = Duration::from_secs(1);

/// How old the newest keyframe may be for a subscriber whose transport just came up to
/// start from it (it is asked for when the subscriber's ICE connects, so it normally
/// arrived a round trip or two ago); older, the subscriber asks for a fresh one instead of
/// being sent a burst of stale video.
const MAX_KEYFRAME_REPLAY_AGE: Duration = Duration::from_secs(1);

/// A keyframe asked for this recently, for a joiner, is still on its way or in the history
/// when the joiner's ICE is up: no second request (each costs the publisher a keyframe).
const KEYFRAME_PREFETCH_FRESH: Duration = Duration::from_millis(500);

/// A track a peer publishes, and who receives it.
struct PublishedTrack {
    publisher: PeerKey,
    receiver_id: RTCRtpReceiverId,
    media_ssrc: u32,
    kind: MediaKind,
    codec: RTCRtpCodec,
    subscribers: Vec<PeerKey>,
    keyframes: KeyframeRequests,
    /// Recent packets (video only): a joiner's first keyframe and NACK answers.
    history: Option<PacketHistory<MediaPacket>>,
}

struct MediaPeer {
    id: String,
    room: String,
    may_publish: bool,
    pc: RTCPeerConnection,
    events: mpsc::Sender<PeerEvent>,
    data_channel: Option<usize>,
    /// Incoming tracks by the connection's track id.
    published: HashMap<MediaStreamTrackId, TrackKey>,
    subscriptions: HashMap<TrackKey, Subscription>,
    /// Sending transceivers whose track went away, kept (inactive) for the next
    /// subscription of the same codec: an m-line per departed publisher would grow the SDP
    /// without end in a long meeting (past 64 KiB after ~56 joins and leaves).
    idle_senders: Vec<IdleSender>,
    /// Receive slots of the client's offer still without a track, in transceiver order.
    free_slots: Vec<FreeSlot>,
    /// Our sending tracks' ids, for routing a subscriber's PLI to the source.
    sender_tracks: HashMap<MediaStreamTrackId, TrackKey>,
    needs_offer: bool,
    /// Subscriptions included in the offer we are waiting on an answer for.
    offered: Option<Vec<TrackKey>>,
    state: ConnectionState,
    created: Instant,
    deadline: Option<Instant>,
    track_counter: u32,
    /// Milestones already reported (bit set by `Milestone::bit`).
    milestones: u8,
    /// When the last datagram from this peer arrived.
    last_heard: Instant,
    /// DTLS datagrams that arrived before ICE connected (see [`Engine::datagram`]).
    early_dtls: Vec<(SocketAddr, BytesMut)>,
    /// Where the last datagram came from and where the last one went: logged when a peer
    /// leaves without finishing its DTLS handshake, to tell a lost path from a lost flight.
    last_from: Option<SocketAddr>,
    last_sent_to: Option<SocketAddr>,
    /// The send-side bandwidth estimate of the connection (what the subscriber's link
    /// carries, from its transport-wide feedback), sampled into a histogram.
    estimate: BandwidthEstimate,
}

impl MediaPeer {
    fn emit(&self, event: PeerEvent) {
        if self.events.try_send(event).is_err() {
            tracing::warn!(peer = %self.id, "peer event channel full or closed");
        }
    }

    /// Reports a milestone the first time it is reached.
    fn reached(&mut self, milestone: Milestone, at: Instant) {
        if self.milestones & milestone.bit() == 0 {
            self.milestones |= milestone.bit();
            self.emit(PeerEvent::Milestone { milestone, at });
        }
    }
}

/// Runs `f` on `rtc` with client-controlled input; a panic becomes an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, SfuError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        tracing::error!(what, "webrtc stack panicked on client input");
        SfuError::Rtc(format!("{what} failed"))
    })
}

struct Engine {
    socket: UdpSocket,
    local_addr: SocketAddr,
    config: SfuConfig,
    certificate: RTCCertificate,
    metrics: SfuMetrics,
    peers: HashMap<PeerKey, MediaPeer>,
    ids: HashMap<String, PeerKey>,
    rooms: HashMap<String, Vec<PeerKey>>,
    tracks: HashMap<TrackKey, PublishedTrack>,
    demux: Demux<PeerKey>,
    deadlines: BTreeSet<(Instant, PeerKey)>,
    dirty: Vec<PeerKey>,
    next_key: u64,
    /// Reused per-datagram buffer of a peer's inbound messages.
    scratch: Vec<RTCMessage>,
    /// Outgoing datagrams of one flush, sent with one system call (`sendmmsg` on Linux).
    /// Filled by [`send_queued`] (a burst may pass through it before the flush) and empty
    /// after each flush.
    batch: SendBatch<BytesMut>,
    /// When the subscribers' bandwidth estimates were last sampled.
    estimates_sampled: Instant,
}

/// How often each subscriber's bandwidth estimate goes into the histogram: often enough for
/// a 15 s scrape to see every connection, rarely enough to cost nothing.
const ESTIMATE_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// The most datagrams a flush holds before sending them: bounds what waits in memory
/// when a flush has a burst to send (a keyframe replayed to a joiner).
const MAX_FLUSH_BATCH: usize = 256;

/// Sends a batch and counts what was dropped, as a per-datagram send would have.
fn send_counted(batch: &mut SendBatch<BytesMut>, socket: &UdpSocket, metrics: &SfuMetrics) {
    let report = batch.send(socket);
    if report.would_block > 0 {
        metrics
            .fast
            .dropped_socket_full
            .inc_by(report.would_block as u64);
    }
    if report.failed > 0 {
        metrics.fast.dropped_send_error.inc_by(report.failed as u64);
        if let Some(e) = &report.last_error {
            tracing::trace!(error = %e, failed = report.failed, "media send failed");
        }
    }
}

/// The payload type a negotiated sender sends `mime` with (the answer's, which may differ
/// from the publisher's).
fn negotiated_payload_type(
    pc: &mut RTCPeerConnection,
    sender_id: RTCRtpSenderId,
    mime: &str,
) -> Option<u8> {
    pc.rtp_sender(sender_id).and_then(|mut s| {
        let codecs = &s.get_parameters().rtp_parameters.codecs;
        codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
            .or(codecs.first())
            .map(|c| c.payload_type)
    })
}

/// After a joiner's offer is applied: turns the receive slots that got no track inactive
/// and returns those a later track can take with `add_track`.
///
/// `rtc` has no call that puts a sender on a chosen transceiver; `add_track` takes the
/// first transceiver of the kind that has no sender, and the client's own sending
/// m-sections have none on our side either. A slot is only usable if none of those comes
/// before it, which is why the web client puts its slots first in its offer.
fn take_free_slots(
    pc: &mut RTCPeerConnection,
    kinds: &HashMap<String, RtpCodecKind>,
) -> Vec<FreeSlot> {
    let mut free = Vec::new();
    let mut blocked: Vec<RtpCodecKind> = Vec::new();
    let ids: Vec<RTCRtpTransceiverId> = pc.get_transceivers().collect();
    for id in ids {
        let Some(mut t) = pc.rtp_transceiver(id) else {
            continue;
        };
        if t.sender().is_some() {
            continue;
        }
        let Some(kind) = t.mid().as_ref().and_then(|m| kinds.get(m)).copied() else {
            continue;
        };
        if t.direction() == RTCRtpTransceiverDirection::Sendonly {
            // Answered sendonly without a track, the browser would show a track that never
            // plays.
            t.set_direction(RTCRtpTransceiverDirection::Inactive);
            if !blocked.contains(&kind) {
                free.push(FreeSlot { id, kind });
            }
        } else if !blocked.contains(&kind) {
            blocked.push(kind);
        }
    }
    free
}

fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl Engine {
    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Join { request, reply } => {
                let started = Instant::now();
                let result = self.join(request);
                tracing::debug!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    ok = result.is_ok(),
                    "join answered"
                );
                let _ = reply.send(result);
            }
            Command::Candidate { peer_id, candidate } => {
                let Some(&key) = self.ids.get(&peer_id) else {
                    return;
                };
                let Some(peer) = self.peers.get_mut(&key) else {
                    return;
                };
                // ICE-lite learns the client's address from its checks; trickled candidates
                // are still applied so a full-ICE configuration would work unchanged.
                let candidate = candidate.unwrap_or_default();
                match guarded("add_remote_candidate", || {
                    peer.pc.add_remote_candidate(candidate)
                }) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(peer = %peer_id, error = %e, "candidate refused"),
                    Err(_) => self.remove(key, Some("webrtc failure")),
                }
            }
            Command::Answer {
                peer_id,
                sdp,
                reply,
            } => {
                let result = self.apply_answer(&peer_id, sdp);
                let _ = reply.send(result);
            }
            Command::SendData { to, data } => {
                let now = Instant::now();
                for id in to {
                    let Some(&key) = self.ids.get(&id) else {
                        continue;
                    };
                    let Some(peer) = self.peers.get_mut(&key) else {
                        continue;
                    };
                    let Some(dc_id) = peer.data_channel else {
                        continue;
                    };
                    if let Some(mut dc) = peer.pc.data_channel(dc_id) {
                        // The protocol is JSON in text frames (a browser then gets a
                        // string, not a Blob); anything else goes as binary.
                        let sent = match std::str::from_utf8(&data) {
                            Ok(text) => dc.send_text(now, text),
                            Err(_) => dc.send(now, BytesMut::from(&data[..])),
                        };
                        match sent {
                            Ok(()) => {
                                self.metrics
                                    .data_channel_messages
                                    .with_label_values(&["out"])
                                    .inc();
                                self.dirty.push(key);
                            }
                            Err(e) => {
                                tracing::debug!(peer = %id, error = %e, "data channel send failed")
                            }
                        }
                    }
                }
            }
            Command::Leave { peer_id } => {
                if let Some(&key) = self.ids.get(&peer_id) {
                    self.remove(key, None);
                }
            }
        }
    }

    fn build_peer_connection(
        &self,
        ufrag: &str,
        pwd: &str,
        estimate: BandwidthEstimate,
    ) -> Result<RTCPeerConnection, SfuError> {
        let rtc_err = |e: rtc::shared::error::Error| SfuError::Rtc(e.to_string());
        let setting_engine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
            // The browser sends its ClientHello the moment ICE succeeds: no timer wait.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_ice_timeouts(
                Some(self.config.ice_disconnected_timeout),
                Some(self.config.ice_failed_timeout),
                Some(Duration::from_secs(2)),
            )
            .build();
        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs().map_err(rtc_err)?;
        let registry = interceptors(
            &mut media_engine,
            self.config.bandwidth_estimation.then_some(estimate),
        )
        .map_err(rtc_err)?;
        let configuration = RTCConfigurationBuilder::new()
            .with_certificates(vec![self.certificate.clone()])
            .build();
        RTCPeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_setting_engine(setting_engine)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .map_err(rtc_err)
    }

    fn join(&mut self, request: JoinRequest) -> Result<String, SfuError> {
        if self.ids.contains_key(&request.peer_id) {
            return Err(SfuError::DuplicatePeer(request.peer_id));
        }
        let now = Instant::now();
        crate::sdp_check::check_msids(&request.offer).map_err(SfuError::BadSdp)?;
        let kinds =
            crate::sdp_check::media_kinds_by_mid(&request.offer).map_err(SfuError::BadSdp)?;
        let ufrag = random_token(16);
        let pwd = random_token(32);
        let estimate = BandwidthEstimate::default();
        let mut pc = self.build_peer_connection(&ufrag, &pwd, estimate.clone())?;
        let offer = RTCSessionDescription::offer(request.offer)
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let data_channel = guarded("create_data_channel", || {
            pc.create_data_channel(
                "consilium",
                Some(rtc::data_channel::RTCDataChannelInit {
                    ordered: true,
                    negotiated: Some(0),
                    ..Default::default()
                }),
            )
            .map(|dc| dc.id())
            .map_err(|e| SfuError::Rtc(e.to_string()))
        })??;

        let key = self.next_key;
        self.next_key += 1;
        self.demux.add_peer(ufrag, key);
        self.ids.insert(request.peer_id.clone(), key);
        let room_peers = self.rooms.entry(request.room.clone()).or_default();
        let existing: Vec<PeerKey> = room_peers.clone();
        room_peers.push(key);
        self.peers.insert(
            key,
            MediaPeer {
                id: request.peer_id,
                room: request.room,
                may_publish: request.may_publish,
                pc,
                events: request.events,
                data_channel: Some(data_channel),
                published: HashMap::new(),
                subscriptions: HashMap::new(),
                idle_senders: Vec::new(),
                free_slots: Vec::new(),
                sender_tracks: HashMap::new(),
                needs_offer: false,
                offered: None,
                state: ConnectionState::Connecting,
                created: now,
                deadline: None,
                track_counter: 0,
                milestones: 0,
                last_heard: now,
                early_dtls: Vec::new(),
                last_from: None,
                last_sent_to: None,
                estimate,
            },
        );
        self.metrics.peers.inc();
        // The new peer receives what the room already publishes, in the order it was
        // published. The tracks go on before the offer is applied: see `answer_join`.
        let mut room_tracks: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| existing.contains(&t.publisher))
            .map(|(k, _)| *k)
            .collect();
        room_tracks.sort_unstable();
        for track in room_tracks {
            self.subscribe(key, track);
        }
        let answer = match self.answer_join(key, offer, &kinds, now) {
            Ok(answer) => answer,
            Err(e) => {
                self.remove(key, None);
                return Err(e);
            }
        };
        self.prefetch_keyframes(key, now);
        self.pump(key, now);
        Ok(answer)
    }

    /// Answers a joiner's offer, with as many of the room's tracks in the answer as the
    /// offer has receive-only m-sections ("receive slots") of their kind.
    ///
    /// `join` has put each room track on a sendonly transceiver that has no mid yet. When
    /// `rtc` applies an offer, it matches each new remote recvonly m-section to such a
    /// transceiver of its kind (RFC 8829 §5.10, as browsers do): those tracks are in this
    /// answer and flow the moment DTLS is up, without the renegotiation round trip that
    /// otherwise follows the join. Tracks that find no slot are offered afterwards as before;
    /// slots that find no track are answered inactive and kept for later tracks.
    fn answer_join(
        &mut self,
        key: PeerKey,
        offer: RTCSessionDescription,
        kinds: &HashMap<String, RtpCodecKind>,
        now: Instant,
    ) -> Result<String, SfuError> {
        let local_addr = self.local_addr;
        let peer = self
            .peers
            .get_mut(&key)
            .ok_or_else(|| SfuError::Rtc("joining peer vanished".into()))?;
        let MediaPeer {
            pc,
            subscriptions,
            free_slots,
            needs_offer,
            ..
        } = peer;
        let answer = guarded("answer", || -> Result<String, SfuError> {
            pc.set_remote_description(now, offer)
                .map_err(|e| SfuError::BadSdp(e.to_string()))?;
            *free_slots = take_free_slots(pc, kinds);
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
            .new_candidate_host()
            .map_err(|e| SfuError::Rtc(e.to_string()))?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(|e| SfuError::Rtc(e.to_string()))?;
            pc.add_local_candidate(init)
                .map_err(|e| SfuError::Rtc(e.to_string()))?;
            let answer = pc
                .create_answer(None)
                .map_err(|e| SfuError::BadSdp(e.to_string()))?;
            pc.set_local_description(now, answer)
                .map_err(|e| SfuError::BadSdp(e.to_string()))?;
            pc.local_description()
                .map(|d| d.sdp)
                .ok_or_else(|| SfuError::Rtc("no local description".into()))
        })??;
        // A transceiver with a mid is in the answer: negotiated, it starts when DTLS is up.
        *needs_offer = false;
        for sub in subscriptions.values_mut() {
            let in_answer = pc
                .rtp_transceiver(RTCRtpTransceiverId::from(sub.sender_id))
                .is_some_and(|t| t.mid().is_some());
            if in_answer {
                sub.payload_type = negotiated_payload_type(pc, sub.sender_id, &sub.mime);
            } else {
                *needs_offer = true;
            }
        }
        Ok(answer)
    }

    fn apply_answer(&mut self, peer_id: &str, sdp: String) -> Result<(), SfuError> {
        let key = *self
            .ids
            .get(peer_id)
            .ok_or_else(|| SfuError::UnknownPeer(peer_id.to_owned()))?;
        let now = Instant::now();
        let peer = self
            .peers
            .get_mut(&key)
            .ok_or_else(|| SfuError::UnknownPeer(peer_id.to_owned()))?;
        let Some(offered) = peer.offered.take() else {
            return Err(SfuError::NoOfferOutstanding);
        };
        if let Err(e) = crate::sdp_check::check_msids(&sdp) {
            // Keep waiting: the client may send a corrected answer.
            peer.offered = Some(offered);
            return Err(SfuError::BadSdp(e));
        }
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let applied = guarded("set_remote_description", || {
            peer.pc.set_remote_description(now, answer)
        });
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Keep waiting: the client may send a corrected answer.
                peer.offered = Some(offered);
                return Err(SfuError::BadSdp(e.to_string()));
            }
            Err(e) => {
                self.remove(key, Some("webrtc failure"));
                return Err(e);
            }
        }
        for track in offered {
            let Some(sub) = peer.subscriptions.get_mut(&track) else {
                continue;
            };
            if sub.payload_type.is_none() {
                sub.payload_type = negotiated_payload_type(&mut peer.pc, sub.sender_id, &sub.mime);
            }
        }
        self.activate_subscriptions(key, now);
        self.pump(key, now);
        Ok(())
    }

    /// Starts forwarding what a peer has negotiated, once its transport is up: a keyframe
    /// forwarded before DTLS completes would be lost, and the subscriber would wait for
    /// the next one.
    fn activate_subscriptions(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.state != ConnectionState::Connected {
            return;
        }
        let mut keyframe_for = Vec::new();
        let mut replay = Vec::new();
        let fresh_since = now.checked_sub(MAX_KEYFRAME_REPLAY_AGE).unwrap_or(now);
        for (track, sub) in &mut peer.subscriptions {
            if sub.payload_type.is_some() && sub.down.negotiated() {
                let start = self
                    .tracks
                    .get(track)
                    .and_then(|t| t.history.as_ref())
                    .and_then(|h| Some((h.keyframe_since(fresh_since)?, h)))
                    .and_then(|(seq, h)| h.get(seq).cloned());
                match start {
                    Some(keyframe) => replay.push((*track, keyframe)),
                    None => keyframe_for.push(*track),
                }
            }
        }
        // The keyframe (asked for when ICE connected) starts the stream; `forward_to`
        // sends what of it and after it the history holds.
        for (track, keyframe) in replay {
            self.forward_to(key, track, &keyframe, &mut || true, now);
        }
        for track in keyframe_for {
            self.request_keyframe(track, now);
        }
    }

    /// Asks the publishers of a subscriber's video for a keyframe before its transport is
    /// up, so that one is in the track's [`PacketHistory`] when DTLS is done: at the join
    /// (the tracks on receive slots flow the moment DTLS is up, and a browser's ICE and
    /// DTLS now take ~10 ms on loopback, less than a publisher's encoder takes to make a
    /// keyframe), and again when ICE is up for tracks whose last request is older than
    /// [`KEYFRAME_PREFETCH_FRESH`] (a slow link's join, whose first keyframe would be too
    /// old to replay by then).
    fn prefetch_keyframes(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get(&key) else {
            return;
        };
        let fresh_since = now.checked_sub(KEYFRAME_PREFETCH_FRESH).unwrap_or(now);
        let tracks: Vec<TrackKey> = peer
            .subscriptions
            .iter()
            .filter(|(_, sub)| matches!(sub.down.kind(), MediaKind::Video(_)))
            .map(|(track, _)| *track)
            .filter(|track| {
                self.tracks
                    .get(track)
                    .is_some_and(|t| !t.keyframes.requested_since(fresh_since))
            })
            .collect();
        for track in tracks {
            self.request_keyframe(track, now);
        }
    }

    /// Gives `subscriber` a sending track that carries `track`.
    fn subscribe(&mut self, subscriber: PeerKey, track: TrackKey) {
        let Some(source) = self.tracks.get_mut(&track) else {
            return;
        };
        let Some(publisher_id) = self.peers.get(&source.publisher).map(|p| p.id.clone()) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&subscriber) else {
            return;
        };
        peer.track_counter += 1;
        let kind = match source.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video(_) => RtpCodecKind::Video,
        };
        let idle = peer
            .idle_senders
            .iter()
            .position(|i| i.mime.eq_ignore_ascii_case(&source.codec.mime_type))
            .map(|i| peer.idle_senders.swap_remove(i));
        let slot = match idle {
            Some(_) => None,
            None => peer
                .free_slots
                .iter()
                .position(|s| s.kind == kind)
                .map(|i| peer.free_slots.remove(i)),
        };
        let out_ssrc: u32 = idle
            .as_ref()
            .map_or_else(rand::random, |i| i.down.out_ssrc());
        let track_id = format!("{publisher_id}-{}-{}", kind, peer.track_counter);
        let local_track = MediaStreamTrack::new(
            publisher_id.clone(),
            track_id.clone(),
            track_id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(out_ssrc),
                    ..Default::default()
                },
                codec: source.codec.clone(),
                ..Default::default()
            }],
        );
        let added = match (idle, slot) {
            // A departed publisher's transceiver: inactive → sendonly with the new
            // stream id, which browsers take as a new remote track.
            (Some(mut idle), _) => {
                // Sendonly first: `rtc` hands out a sender only on a sending transceiver.
                if let Some(mut t) = peer
                    .pc
                    .rtp_transceiver(RTCRtpTransceiverId::from(idle.sender_id))
                {
                    t.set_direction(RTCRtpTransceiverDirection::Sendonly);
                }
                let reused = peer.pc.rtp_sender(idle.sender_id).map(|mut sender| {
                    let r = sender.replace_track(local_track);
                    sender.set_streams(vec![publisher_id.clone()]);
                    r
                });
                match reused {
                    Some(Ok(())) => {
                        idle.down.reuse(source.kind);
                        Ok((idle.sender_id, idle.down))
                    }
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err("idle sender vanished".to_owned()),
                }
            }
            // A receive slot of the client's offer: `add_track` takes it (it is the first
            // transceiver of its kind without a sender, see `take_free_slots`).
            (None, Some(slot)) => peer
                .pc
                .add_track(local_track)
                .map(|sender_id| {
                    if sender_id != RTCRtpSenderId::from(slot.id) {
                        tracing::error!(
                            peer = %peer.id,
                            slot = slot.id,
                            "add_track took another transceiver than the free slot"
                        );
                    }
                    (sender_id, DownTrack::new(source.kind, out_ssrc))
                })
                .map_err(|e| e.to_string()),
            // A new sendonly transceiver otherwise: `add_track` would reuse the client's own
            // (receiving) audio/video transceivers, which must keep carrying its uplink only.
            (None, None) => {
                let init = RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec![publisher_id.clone()],
                    send_encodings: vec![],
                };
                peer.pc
                    .add_transceiver_from_track(local_track, Some(init))
                    .map(|t| {
                        (
                            RTCRtpSenderId::from(t),
                            DownTrack::new(source.kind, out_ssrc),
                        )
                    })
                    .map_err(|e| e.to_string())
            }
        };
        match added {
            Ok((sender_id, down)) => {
                peer.subscriptions.insert(
                    track,
                    Subscription {
                        sender_id,
                        down,
                        mime: source.codec.mime_type.clone(),
                        payload_type: None,
                    },
                );
                peer.sender_tracks.insert(track_id, track);
                peer.needs_offer = true;
                source.subscribers.push(subscriber);
                self.metrics.subscriptions.inc();
            }
            Err(e) => tracing::warn!(peer = %peer.id, error = %e, "cannot add forwarded track"),
        }
    }

    fn request_keyframe(&mut self, track: TrackKey, now: Instant) {
        let Some(source) = self.tracks.get_mut(&track) else {
            return;
        };
        if source.keyframes.request(now) {
            Self::send_pli(&mut self.peers, &self.metrics, source);
            self.dirty.push(source.publisher);
        }
    }

    fn send_pli(
        peers: &mut HashMap<PeerKey, MediaPeer>,
        metrics: &SfuMetrics,
        source: &PublishedTrack,
    ) {
        let Some(publisher) = peers.get_mut(&source.publisher) else {
            return;
        };
        if let Some(mut receiver) = publisher.pc.rtp_receiver(source.receiver_id) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: source.media_ssrc,
            };
            if receiver
                .write_rtcp(Instant::now(), vec![Box::new(pli)])
                .is_ok()
            {
                metrics.keyframe_requests.inc();
            }
        }
    }

    fn datagram(&mut self, from: SocketAddr, data: &[u8]) {
        let Some(key) = self.demux.route(from, data) else {
            self.metrics.fast.dropped_unknown_source.inc();
            return;
        };
        let now = Instant::now();
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        peer.last_heard = now;
        peer.last_from = Some(from);
        // A browser sends its ClientHello the moment its first connectivity check succeeds,
        // before the check that nominates the pair reaches us; our ICE-lite agent is not
        // connected yet and `rtc` drops it, and the browser resends only after its DTLS
        // timer (measured: 225 ms at 100 ms RTT). Keep it and hand it over once ICE is up.
        let is_dtls = data.first().is_some_and(|b| (20..=63).contains(b));
        if is_dtls && peer.milestones & Milestone::IceConnected.bit() == 0 {
            if peer.early_dtls.len() < MAX_EARLY_DTLS {
                peer.early_dtls.push((from, BytesMut::from(data)));
            }
            return;
        }
        if !self.read(key, from, BytesMut::from(data), now) {
            return;
        }
        self.pump(key, now);
        self.replay_early_dtls(key, now);
    }

    /// Feeds one datagram to a peer's connection. Returns false if the peer was removed.
    fn read(&mut self, key: PeerKey, from: SocketAddr, message: BytesMut, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(&key) else {
            return false;
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message,
        };
        match guarded("handle_read", || peer.pc.handle_read(msg)) {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::trace!(peer = %peer.id, error = %e, "datagram refused");
                true
            }
            Err(_) => {
                self.remove(key, Some("webrtc failure"));
                false
            }
        }
    }

    /// Hands a peer the DTLS datagrams kept from before its ICE connected, once it has.
    fn replay_early_dtls(&mut self, key: PeerKey, now: Instant) {
        let early = match self.peers.get_mut(&key) {
            Some(peer)
                if peer.milestones & Milestone::IceConnected.bit() != 0
                    && !peer.early_dtls.is_empty() =>
            {
                std::mem::take(&mut peer.early_dtls)
            }
            _ => return,
        };
        for (from, datagram) in early {
            if !self.read(key, from, datagram, now) {
                return;
            }
        }
        self.pump(key, now);
    }

    /// Drains a peer's events and inbound messages, acting on each.
    fn pump(&mut self, key: PeerKey, now: Instant) {
        loop {
            let Some(peer) = self.peers.get_mut(&key) else {
                return;
            };
            let mut events = Vec::new();
            while let Some(event) = peer.pc.poll_event() {
                events.push(event);
            }
            let mut messages = std::mem::take(&mut self.scratch);
            while let Some(msg) = peer.pc.poll_read() {
                messages.push(msg.message);
            }
            if events.is_empty() && messages.is_empty() {
                self.scratch = messages;
                break;
            }
            for event in events {
                self.peer_event(key, event, now);
            }
            for message in messages.drain(..) {
                self.peer_message(key, message, now);
            }
            self.scratch = messages;
        }
        self.negotiate(key, now);
        self.dirty.push(key);
    }

    fn peer_event(&mut self, key: PeerKey, event: RTCPeerConnectionEvent, now: Instant) {
        match event {
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.publish(key, init.track_id, init.receiver_id, now);
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Connected,
            ) => {
                if let Some(peer) = self.peers.get_mut(&key) {
                    peer.reached(Milestone::IceConnected, now);
                    if peer.state == ConnectionState::Connecting {
                        self.prefetch_keyframes(key, now);
                    }
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(peer) = self.peers.get_mut(&key) else {
                    return;
                };
                if state == RTCPeerConnectionState::Connected {
                    peer.reached(Milestone::DtlsConnected, now);
                }
                let mapped = match state {
                    RTCPeerConnectionState::Connected => ConnectionState::Connected,
                    RTCPeerConnectionState::Disconnected => ConnectionState::Disconnected,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        ConnectionState::Failed
                    }
                    _ => ConnectionState::Connecting,
                };
                if mapped != peer.state {
                    peer.state = mapped;
                    tracing::debug!(peer = %peer.id, ?mapped, "media connection state");
                    peer.emit(PeerEvent::Connection(mapped));
                    if mapped == ConnectionState::Connected {
                        self.activate_subscriptions(key, now);
                    }
                }
                if mapped == ConnectionState::Failed {
                    self.remove(key, Some("media connection failed"));
                }
            }
            _ => {}
        }
    }

    fn publish(
        &mut self,
        key: PeerKey,
        track_id: MediaStreamTrackId,
        receiver_id: RTCRtpReceiverId,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if !peer.may_publish || peer.published.contains_key(&track_id) {
            return;
        }
        let Some(receiver) = peer.pc.rtp_receiver(receiver_id) else {
            return;
        };
        let track = receiver.track();
        let Some(media_ssrc) = track.ssrcs().next() else {
            return;
        };
        let Some(codec) = track.codec(media_ssrc).cloned() else {
            tracing::warn!(peer = %peer.id, "track without a negotiated codec; not forwarded");
            return;
        };
        let kind = match track.kind() {
            RtpCodecKind::Audio => MediaKind::Audio,
            _ => MediaKind::Video(VideoCodec::from_mime(&codec.mime_type)),
        };
        tracing::info!(peer = %peer.id, mime = %codec.mime_type, media_ssrc, ssrcs = ?track.ssrcs().collect::<Vec<_>>(), "track published");
        let track_key = self.next_key;
        self.next_key += 1;
        peer.published.insert(track_id, track_key);
        let room = peer.room.clone();
        self.metrics
            .tracks
            .with_label_values(&[kind_label(kind)])
            .inc();
        self.tracks.insert(
            track_key,
            PublishedTrack {
                publisher: key,
                receiver_id,
                media_ssrc,
                kind,
                codec,
                subscribers: Vec::new(),
                keyframes: KeyframeRequests::new(self.config.keyframe_request_interval),
                history: matches!(kind, MediaKind::Video(_)).then(|| {
                    PacketHistory::new(VIDEO_HISTORY_PACKETS).with_max_age(VIDEO_HISTORY_AGE)
                }),
            },
        );
        let others: Vec<PeerKey> = self
            .rooms
            .get(&room)
            .map(|r| r.iter().copied().filter(|k| *k != key).collect())
            .unwrap_or_default();
        for other in others {
            self.subscribe(other, track_key);
            self.negotiate(other, now);
        }
    }

    fn peer_message(&mut self, key: PeerKey, message: RTCMessage, now: Instant) {
        match message {
            RTCMessage::RtpPacket(track_id, packet) => {
                let Some(peer) = self.peers.get_mut(&key) else {
                    return;
                };
                if peer.milestones & Milestone::FirstRtpReceived.bit() == 0 {
                    peer.reached(Milestone::FirstRtpReceived, now);
                }
                let Some(&track_key) = peer.published.get(&track_id) else {
                    return;
                };
                if self.forward(track_key, packet, now) > 0
                    && let Some(peer) = self.peers.get_mut(&key)
                    && peer.milestones & Milestone::FirstRtpForwarded.bit() == 0
                {
                    peer.reached(Milestone::FirstRtpForwarded, Instant::now());
                }
            }
            RTCMessage::RtcpPacket(track_id, packets) => {
                let Some(peer) = self.peers.get(&key) else {
                    return;
                };
                // Feedback about a stream we forward to this peer.
                let Some(&source) = peer.sender_tracks.get(&track_id) else {
                    return;
                };
                for packet in packets {
                    let any = packet.as_any();
                    let kind = if any.is::<PictureLossIndication>() {
                        "pli"
                    } else if any.is::<FullIntraRequest>() {
                        "fir"
                    } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                        self.resend(key, source, nack, now);
                        "nack"
                    } else {
                        continue;
                    };
                    self.metrics.rtcp_feedback.with_label_values(&[kind]).inc();
                    if kind != "nack" {
                        self.request_keyframe(source, now);
                    }
                }
            }
            RTCMessage::DataChannelMessage(_, message) => {
                let Some(peer) = self.peers.get(&key) else {
                    return;
                };
                self.metrics
                    .data_channel_messages
                    .with_label_values(&["in"])
                    .inc();
                peer.emit(PeerEvent::Data {
                    text: message.is_string,
                    data: message.data.freeze(),
                });
            }
            _ => {}
        }
    }

    /// The per-packet path: one inbound RTP packet to every subscriber of its track.
    /// Returns to how many subscribers it went.
    fn forward(&mut self, track_key: TrackKey, packet: rtc::rtp::Packet, now: Instant) -> usize {
        let Some(source) = self.tracks.get_mut(&track_key) else {
            return 0;
        };
        let packet = MediaPacket::from(packet);
        let codec = source.kind.video_codec();
        // Lent out for the loop (forwarding never changes who subscribes), so the loop
        // needs no lookup of the track and no copy of the list.
        let subscribers = std::mem::take(&mut source.subscribers);
        // Whether the packet starts a keyframe is read at most once: always for a track
        // with history (its keyframes are indexed), else only if a subscriber waits for one.
        let mut is_keyframe: Option<bool> = source
            .history
            .is_some()
            .then(|| codec.is_keyframe_start(&packet.payload));
        let mut keyframe =
            || *is_keyframe.get_or_insert_with(|| codec.is_keyframe_start(&packet.payload));
        let mut forwarded = 0;
        for &subscriber in &subscribers {
            if self.forward_to(subscriber, track_key, &packet, &mut keyframe, now) {
                forwarded += 1;
            }
        }
        let keyframe_start = keyframe();
        if let Some(source) = self.tracks.get_mut(&track_key) {
            source.subscribers = subscribers;
            // After the loop: a subscriber that starts at this packet is sent the history
            // after it, which must not include it.
            if let Some(history) = &mut source.history {
                history.insert(packet.sequence_number, packet, keyframe_start, now);
            }
        }
        forwarded
    }

    /// Decides and writes one packet for one subscriber. Returns whether it was sent.
    ///
    /// When the packet starts this subscriber's video (a keyframe after waiting for one),
    /// the packets of the track's history after it follow at once: a reordering network
    /// delivered some of that keyframe before its first packet.
    fn forward_to(
        &mut self,
        subscriber: PeerKey,
        track_key: TrackKey,
        packet: &MediaPacket,
        keyframe: &mut dyn FnMut() -> bool,
        now: Instant,
    ) -> bool {
        let Engine {
            peers,
            tracks,
            metrics,
            dirty,
            socket,
            batch,
            ..
        } = self;
        let Some(peer) = peers.get_mut(&subscriber) else {
            return false;
        };
        let Some(sub) = peer.subscriptions.get_mut(&track_key) else {
            return false;
        };
        let was_waiting = sub.down.needs_keyframe();
        let decision = sub
            .down
            .forward(packet.sequence_number, packet.timestamp, &mut *keyframe);
        let rewrite = match decision {
            Ok(r) => r,
            Err(reason) => {
                metrics.fast.dropped(reason).inc();
                return false;
            }
        };
        let Some(pt) = sub.payload_type else {
            return false;
        };
        let sent = write_forwarded(
            peer.pc.rtp_sender(sub.sender_id),
            packet,
            rewrite,
            pt,
            now,
            metrics,
        );
        if was_waiting {
            let history = tracks.get(&track_key).and_then(|t| t.history.as_ref());
            for (i, early) in history
                .into_iter()
                .flat_map(|h| h.after(packet.sequence_number))
                .enumerate()
            {
                if i % BURST_DRAIN == BURST_DRAIN - 1 {
                    send_queued(batch, socket, &mut peer.pc, metrics);
                }
                let Ok(rewrite) = sub
                    .down
                    .forward(early.sequence_number, early.timestamp, || false)
                else {
                    continue;
                };
                write_forwarded(
                    peer.pc.rtp_sender(sub.sender_id),
                    early,
                    rewrite,
                    pt,
                    now,
                    metrics,
                );
            }
            // The next track's replay (a joiner starts all of them at once) starts empty.
            send_queued(batch, socket, &mut peer.pc, metrics);
        }
        dirty.push(subscriber);
        sent
    }

    /// Answers a subscriber's NACK from the track's history: also packets this subscriber
    /// was never sent (they were lost on the publisher's uplink and repaired since, or
    /// arrived reordered before its stream started), which a per-sender buffer could not.
    fn resend(
        &mut self,
        subscriber: PeerKey,
        track_key: TrackKey,
        nack: &TransportLayerNack,
        now: Instant,
    ) {
        let Engine {
            peers,
            tracks,
            metrics,
            dirty,
            socket,
            batch,
            ..
        } = self;
        let (Some(peer), Some(history)) = (
            peers.get_mut(&subscriber),
            tracks.get(&track_key).and_then(|t| t.history.as_ref()),
        ) else {
            return;
        };
        let Some(sub) = peer.subscriptions.get(&track_key) else {
            return;
        };
        let Some(pt) = sub.payload_type else {
            return;
        };
        let mut written = 0usize;
        for pair in &nack.nacks {
            for out_seq in *pair {
                let original = sub.down.source_of(out_seq).and_then(|seq| history.get(seq));
                let Some(original) = original else {
                    metrics.resent_missing.inc();
                    continue;
                };
                let rewrite = sub
                    .down
                    .resend(original.sequence_number, original.timestamp);
                if write_forwarded(
                    peer.pc.rtp_sender(sub.sender_id),
                    original,
                    rewrite,
                    pt,
                    now,
                    metrics,
                ) {
                    metrics.resent.inc();
                    written += 1;
                    if written.is_multiple_of(BURST_DRAIN) {
                        send_queued(batch, socket, &mut peer.pc, metrics);
                    }
                }
            }
        }
        dirty.push(subscriber);
    }

    /// Sends an offer to a peer whose forwarded tracks changed, one at a time.
    fn negotiate(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if !peer.needs_offer || peer.offered.is_some() {
            return;
        }
        let offer = guarded("create_offer", || -> Result<String, SfuError> {
            let offer = peer
                .pc
                .create_offer(None)
                .map_err(|e| SfuError::Rtc(e.to_string()))?;
            let sdp = offer.sdp.clone();
            peer.pc
                .set_local_description(now, offer)
                .map_err(|e| SfuError::Rtc(e.to_string()))?;
            Ok(sdp)
        });
        match offer {
            Ok(Ok(sdp)) => {
                peer.needs_offer = false;
                peer.offered = Some(peer.subscriptions.keys().copied().collect());
                peer.emit(PeerEvent::Offer(sdp));
            }
            Ok(Err(e)) => tracing::warn!(peer = %peer.id, error = %e, "renegotiation failed"),
            Err(_) => self.remove(key, Some("webrtc failure")),
        }
    }

    fn timeouts(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.deadline = None;
                if let Err(e) = peer.pc.handle_timeout(now) {
                    tracing::trace!(peer = %peer.id, error = %e, "handle_timeout");
                }
                self.pump(key, now);
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        if self.config.bandwidth_estimation
            && now.saturating_duration_since(self.estimates_sampled) >= ESTIMATE_SAMPLE_INTERVAL
        {
            self.estimates_sampled = now;
            for p in self.peers.values() {
                if let (false, Some(bps)) = (p.subscriptions.is_empty(), p.estimate.get()) {
                    self.metrics.subscriber_bandwidth.observe(bps as f64);
                }
            }
        }
        // Keyframe requests that were held back by the rate limit.
        let Engine {
            tracks,
            peers,
            metrics,
            dirty,
            ..
        } = self;
        for source in tracks.values_mut() {
            if source.keyframes.poll(now) {
                Self::send_pli(peers, metrics, source);
                dirty.push(source.publisher);
            }
        }
        // A peer that never connected (a blocked port) or went silent (a closed tab, a lost
        // network: the ICE-lite agent itself waits far longer) is not kept.
        let mut stale = Vec::new();
        for (key, p) in &self.peers {
            if p.state == ConnectionState::Connecting
                && now.saturating_duration_since(p.created) > self.config.connect_timeout
            {
                stale.push((*key, "media connection never came up"));
            } else if p.state != ConnectionState::Connecting
                && now.saturating_duration_since(p.last_heard) > self.config.ice_failed_timeout
            {
                stale.push((*key, "media connection went silent"));
            }
        }
        for (key, reason) in stale {
            self.remove(key, Some(reason));
        }
    }

    /// Sends what dirty peers queued, all peers' datagrams in one batch, and refreshes
    /// their timer deadlines.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for key in dirty.drain(..) {
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if let Some(to) =
                send_queued(&mut self.batch, &self.socket, &mut peer.pc, &self.metrics)
            {
                peer.last_sent_to = Some(to);
            }
            let next = peer.pc.poll_timeout();
            if next != peer.deadline {
                if let Some(old) = peer.deadline {
                    self.deadlines.remove(&(old, key));
                }
                if let Some(new) = next {
                    self.deadlines.insert((new, key));
                }
                peer.deadline = next;
            }
        }
        self.dirty = dirty;
        send_counted(&mut self.batch, &self.socket, &self.metrics);
    }

    /// Removes a peer; `reason` is set when the engine (not the client) decided it.
    fn remove(&mut self, key: PeerKey, reason: Option<&'static str>) {
        let Some(mut peer) = self.peers.remove(&key) else {
            return;
        };
        self.metrics.peers.dec();
        if peer.milestones & Milestone::IceConnected.bit() != 0
            && peer.milestones & Milestone::DtlsConnected.bit() == 0
        {
            tracing::warn!(
                peer = %peer.id,
                heard_from = ?peer.last_from,
                sent_to = ?peer.last_sent_to,
                "media peer removed after ICE connected, before DTLS completed"
            );
        }
        self.ids.remove(&peer.id);
        self.demux.remove_peer(key);
        if let Some(d) = peer.deadline {
            self.deadlines.remove(&(d, key));
        }
        if let Some(room) = self.rooms.get_mut(&peer.room) {
            room.retain(|k| *k != key);
            if room.is_empty() {
                self.rooms.remove(&peer.room);
            }
        }
        // Stop receiving what it subscribed to.
        for track in peer.subscriptions.keys() {
            if let Some(source) = self.tracks.get_mut(track) {
                source.subscribers.retain(|k| *k != key);
            }
            self.metrics.subscriptions.dec();
        }
        // Take what it published away from everyone else.
        let now = Instant::now();
        for track_key in peer.published.values() {
            let Some(source) = self.tracks.remove(track_key) else {
                continue;
            };
            self.metrics
                .tracks
                .with_label_values(&[kind_label(source.kind)])
                .dec();
            for subscriber in source.subscribers {
                let Some(other) = self.peers.get_mut(&subscriber) else {
                    continue;
                };
                if let Some(sub) = other.subscriptions.remove(track_key) {
                    self.metrics.subscriptions.dec();
                    other.sender_tracks.retain(|_, t| t != track_key);
                    // Inactive, not removed: the next publisher's track reuses it.
                    if let Some(mut t) = other
                        .pc
                        .rtp_transceiver(RTCRtpTransceiverId::from(sub.sender_id))
                    {
                        t.set_direction(RTCRtpTransceiverDirection::Inactive);
                    }
                    other.idle_senders.push(IdleSender {
                        sender_id: sub.sender_id,
                        mime: sub.mime,
                        down: sub.down,
                    });
                    other.needs_offer = true;
                }
                self.negotiate(subscriber, now);
                self.dirty.push(subscriber);
            }
        }
        // Send the DTLS close alert while we still can route it (with whatever of the
        // others' output `send_queued` has already put in the batch).
        let _ = peer.pc.close();
        send_queued(&mut self.batch, &self.socket, &mut peer.pc, &self.metrics);
        send_counted(&mut self.batch, &self.socket, &self.metrics);
        tracing::info!(peer = %peer.id, reason = reason.unwrap_or("left"), "media peer removed");
        if let Some(reason) = reason {
            peer.emit(PeerEvent::Closed { reason });
        }
    }

    fn close_all(&mut self) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.remove(key, Some("server shutting down"));
        }
    }
}

/// The interceptors of every connection: `rtc`'s defaults without the NACK responder,
/// whose per-sender copy of every packet sent would cost memory per subscription; NACKs
/// are answered from the one [`PacketHistory`] per published track instead. Send-side
/// congestion control (transport-wide sequence numbers on what the SFU sends, the
/// subscriber's feedback into a GCC estimator), when `estimate` is given, estimates each
/// subscriber's bandwidth into it; there is no pacer, so nothing is delayed: the estimate is
/// measured, not yet acted on (simulcast layer choice will use it).
fn interceptors(
    media_engine: &mut MediaEngine,
    estimate: Option<BandwidthEstimate>,
) -> Result<Registry, rtc::shared::error::Error> {
    for parameter in ["", "pli"] {
        media_engine.register_feedback(
            rtc::rtp_transceiver::rtp_sender::RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    // The generator NACKs what a publisher's uplink lost (repaired by RTX or resends).
    let registry = Registry::new().with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
    configure_simulcast_extension_headers(media_engine)?;
    let registry = configure_twcc_receiver_only(registry, media_engine)?;
    let registry = match &estimate {
        Some(_) => registry
            .with(
                Slot::CongestionControl,
                CongestionControlBuilder::new(Gcc::default())
                    .with_prune_horizon(CONGESTION_HISTORY)
                    .build(),
            )
            .with(Slot::TwccSender, TwccSenderBuilder::new().build()),
        None => registry,
    };
    Ok(registry
        .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
        .with(Slot::SenderReport, SenderReportBuilder::new().build())
        // Application-most: every interceptor has seen the feedback before it is marked.
        .with(
            Slot::from(14_000),
            FeedbackForApplication::with_estimate(estimate.unwrap_or_default()),
        ))
}

/// How long the congestion controller remembers what it sent, for the subscriber's feedback
/// to be matched against: feedback comes every 50–100 ms, so half a second covers a slow
/// link, where `rtc`'s 2 s default kept ≈ 0.1 MiB of packet records per subscriber.
const CONGESTION_HISTORY: Duration = Duration::from_millis(500);

/// Most packets written into one connection before its output is sent: `rtc`'s handler
/// queues keep the capacity of the largest burst they ever held for as long as the
/// connection lives (a joiner's keyframe replay of every track, a long NACK), which was
/// most of the server's memory per participant (docs/benchmarks.md).
const BURST_DRAIN: usize = 32;

/// Moves every datagram `pc` has queued into `batch`, sending the batch whenever it holds
/// [`MAX_FLUSH_BATCH`]; [`Engine::flush`] sends the rest.
fn send_queued(
    batch: &mut SendBatch<BytesMut>,
    socket: &UdpSocket,
    pc: &mut RTCPeerConnection,
    metrics: &SfuMetrics,
) -> Option<SocketAddr> {
    let mut last = None;
    while let Some(out) = pc.poll_write() {
        last = Some(out.transport.peer_addr);
        batch.push(out.transport.peer_addr, out.message);
        if batch.len() >= MAX_FLUSH_BATCH {
            send_counted(batch, socket, metrics);
        }
    }
    last
}

/// What of a publisher's RTP packet is forwarded and kept in its track's history. The
/// subscriber's header is built anew ([`write_forwarded`]), so the publisher's header
/// extensions (a heap allocation per packet, kept for as long as the history keeps the
/// packet) and CSRCs are dropped on arrival; a history slot is 64 bytes instead of 136.
#[derive(Debug, Clone)]
struct MediaPacket {
    payload: Bytes,
    timestamp: u32,
    sequence_number: u16,
    marker: bool,
    padding: bool,
}

impl From<rtc::rtp::Packet> for MediaPacket {
    fn from(p: rtc::rtp::Packet) -> Self {
        Self {
            payload: p.payload,
            timestamp: p.header.timestamp,
            sequence_number: p.header.sequence_number,
            marker: p.header.marker,
            padding: p.header.padding,
        }
    }
}

/// Writes one packet to a subscriber's sender under its rewritten header. The header is
/// built, not cloned: extension ids are per connection (the publisher's would mean other
/// things, or misroute by MID, on the subscriber's), and not copying them saves an
/// allocation per packet and subscriber.
fn write_forwarded(
    sender: Option<rtc::rtp_transceiver::rtp_sender::RTCRtpSender<'_>>,
    packet: &MediaPacket,
    rewrite: Rewrite,
    payload_type: u8,
    now: Instant,
    metrics: &SfuMetrics,
) -> bool {
    let Some(mut sender) = sender else {
        return false;
    };
    let out = rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            padding: packet.padding,
            marker: packet.marker,
            payload_type,
            sequence_number: rewrite.sequence_number,
            timestamp: rewrite.timestamp,
            ssrc: rewrite.ssrc,
            ..Default::default()
        },
        payload: packet.payload.clone(),
    };
    match sender.write_rtp(now, out) {
        Ok(()) => {
            metrics.forwarded_packets.inc();
            metrics.forwarded_bytes.inc_by(packet.payload.len() as u64);
            true
        }
        Err(e) => {
            tracing::trace!(error = %e, "write_rtp failed");
            metrics.fast.dropped_write_failed.inc();
            false
        }
    }
}

fn kind_label(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video(_) => "video",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::{
        Attribute, AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket,
    };
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::sender_report::SenderReport;
    use std::time::Duration;

    fn rtp(ssrc: u32, sequence_number: u16, payload_len: usize, now: Instant) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtp(rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: 96,
                    sequence_number,
                    timestamp: u32::from(sequence_number) * 3000,
                    ssrc,
                    ..Default::default()
                },
                payload: Bytes::from(vec![sequence_number as u8; payload_len]),
            })),
        }
    }

    fn rtcp(packet: Box<dyn rtc::rtcp::Packet>, now: Instant) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(vec![packet])),
        }
    }

    /// An offer with receive slots before and after the client's own sending m-section of
    /// a kind: `add_track` would take the sending section before a slot behind it, so only
    /// the slots ahead of it (and those of a kind the client does not send) are free, and
    /// every unfilled slot is answered inactive.
    #[test]
    fn only_slots_ahead_of_the_clients_own_sections_of_their_kind_are_free() {
        use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
        let now = Instant::now();
        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs().unwrap();
        let mut client = RTCPeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .build(now)
            .unwrap();
        let recvonly = |client: &mut RTCPeerConnection, kind| {
            client
                .add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .unwrap();
        };
        recvonly(&mut client, RtpCodecKind::Audio); // mid 0: free
        client
            .add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    streams: vec!["me".into()],
                    send_encodings: vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(1),
                            ..Default::default()
                        },
                        codec: RTCRtpCodec {
                            mime_type: MIME_TYPE_OPUS.to_owned(),
                            clock_rate: 48_000,
                            channels: 2,
                            ..Default::default()
                        },
                        ..Default::default()
                    }],
                }),
            )
            .unwrap(); // mid 1: the client's own audio
        recvonly(&mut client, RtpCodecKind::Audio); // mid 2: behind it, not free
        recvonly(&mut client, RtpCodecKind::Video); // mid 3: free
        let offer = client.create_offer(None).unwrap();
        client.set_local_description(now, offer.clone()).unwrap();
        let kinds = crate::sdp_check::media_kinds_by_mid(&offer.sdp).unwrap();

        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs().unwrap();
        let mut server = RTCPeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .build(now)
            .unwrap();
        server.set_remote_description(now, offer).unwrap();
        let free = take_free_slots(&mut server, &kinds);
        let mids: Vec<String> = free
            .iter()
            .map(|s| server.rtp_transceiver(s.id).unwrap().mid().clone().unwrap())
            .collect();
        assert_eq!(mids, ["0", "3"]);
        assert_eq!(
            free.iter().map(|s| s.kind).collect::<Vec<_>>(),
            [RtpCodecKind::Audio, RtpCodecKind::Video]
        );
        let answer = server.create_answer(None).unwrap();
        let directions: Vec<&str> = answer
            .sdp
            .split("\nm=")
            .skip(1)
            .map(|section| {
                ["sendonly", "recvonly", "sendrecv", "inactive"]
                    .into_iter()
                    .find(|d| section.contains(&format!("a={d}\r")))
                    .unwrap_or("none")
            })
            .collect();
        assert_eq!(directions, ["inactive", "recvonly", "inactive", "inactive"]);
    }

    /// The connection's real chain (with bandwidth estimation, whose transport-wide sequence
    /// numbering takes packets between the observing interceptors), past the patched
    /// `rtc-interceptor` (vendor/README.md):
    /// interceptors that only look at outbound packets see them in place instead of taking
    /// each into a queue of their own. Every forwarded packet must still leave the chain once,
    /// unchanged and in order, and the sender report must still count every one of them
    /// (receivers use its packet and octet counts, and its timestamps for lip sync).
    #[test]
    fn every_outbound_packet_leaves_the_chain_once_and_is_counted_by_the_sender_report() {
        let mut chain = interceptors(
            &mut MediaEngine::default(),
            Some(BandwidthEstimate::default()),
        )
        .expect("interceptors register")
        .build();
        let ssrc = 0x1234_5678;
        chain.bind_local_stream(&StreamInfo {
            ssrc,
            clock_rate: 90_000,
            ..Default::default()
        });
        let t0 = Instant::now();
        let mut sent = Vec::new();
        let mut octets = 0;
        for i in 0..200u16 {
            let len = 100 + usize::from(i);
            octets += len;
            chain
                .handle_write(rtp(ssrc, i, len, t0 + Duration::from_millis(u64::from(i))))
                .expect("write");
            // Drained at uneven intervals, as the engine does (per burst, per flush).
            if i % 7 == 0 {
                while let Some(out) = chain.poll_write() {
                    sent.push(out);
                }
            }
        }
        while let Some(out) = chain.poll_write() {
            sent.push(out);
        }
        let sequence: Vec<u16> = sent
            .iter()
            .map(|p| match &p.message.packet {
                Packet::Rtp(r) => {
                    assert_eq!(r.payload.len(), 100 + usize::from(r.header.sequence_number));
                    assert_eq!(r.header.ssrc, ssrc);
                    r.header.sequence_number
                }
                other => panic!("nothing but the written RTP before the report timer: {other:?}"),
            })
            .collect();
        assert_eq!(sequence, (0..200).collect::<Vec<_>>());

        chain
            .handle_timeout(t0 + Duration::from_secs(2))
            .expect("timeout");
        let mut reports = Vec::new();
        while let Some(out) = chain.poll_write() {
            if let Packet::Rtcp(packets) = out.message.packet {
                for p in packets {
                    if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                        reports.push((sr.ssrc, sr.packet_count, sr.octet_count));
                    }
                }
            }
        }
        assert_eq!(reports, vec![(ssrc, 200, octets as u32)]);
    }

    /// The read side of the same chain: a subscriber's PLI reaches the engine, a receiver
    /// report is the chain's own and ends there, RTP always passes.
    #[test]
    fn inbound_feedback_reaches_the_engine_and_reports_end_in_the_chain() {
        let mut chain = interceptors(&mut MediaEngine::default(), None)
            .expect("interceptors register")
            .build();
        let now = Instant::now();
        chain
            .handle_read(rtcp(
                Box::new(ReceiverReport {
                    ssrc: 7,
                    ..Default::default()
                }),
                now,
            ))
            .expect("read");
        chain
            .handle_read(rtcp(
                Box::new(PictureLossIndication {
                    sender_ssrc: 7,
                    media_ssrc: 9,
                }),
                now,
            ))
            .expect("read");
        chain.handle_read(rtp(9, 1, 10, now)).expect("read");
        let mut read = Vec::new();
        while let Some(p) = chain.poll_read() {
            read.push(p);
        }
        assert_eq!(read.len(), 2, "the PLI and the RTP packet");
        assert!(read[0].message.has(&Attribute::DeliverToApplication));
        assert!(
            matches!(&read[0].message.packet, Packet::Rtcp(p) if p[0].as_any().is::<PictureLossIndication>())
        );
        assert!(matches!(&read[1].message.packet, Packet::Rtp(_)));
    }
}
