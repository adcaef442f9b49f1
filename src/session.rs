//! One participant's signaling session: a WebSocket from open to close.
//!
//! The session is where the service layer meets the media layer: it admits the participant
//! to a room, asks the SFU for a media peer, relays renegotiation, room events and data
//! channel messages, and on any exit (leave, close, network loss, media failure, server
//! shutdown) removes the participant from both.
//!
//! A session can also begin with a join over HTTP ([`join_over_http`]): the join's answer
//! goes back in the HTTP response while the client's WebSocket, opened at the same time and
//! naming the same session key, takes the session over ([`attach`]); what the session says
//! meanwhile waits in its queues (`docs/protocol.md`, "Joining over HTTP").

use crate::AppState;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use consilium_sfu::{ConnectionState, IceCandidateInit, JoinRequest, PeerEvent, SfuError};
use consilium_signaling::collab::{Collaborator, collab_type};
use consilium_signaling::protocol::{
    IceCandidate, MAX_DATA_MESSAGE_BYTES, MAX_FRAME_BYTES, MediaConnectionState,
};
use consilium_signaling::rendezvous::KeyInUse;
use consilium_signaling::{
    ClientMessage, PROTOCOL_VERSION, ParticipantId, ServerMessage, SignalingError, validate,
};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A client that sends nothing (not even a pong) for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// How often the server pings, so that a silent but live client answers.
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Close code for a message over the size limit (RFC 6455).
const CLOSE_TOO_BIG: u16 = 1009;

/// By default, how long a join made over HTTP waits for its WebSocket before the participant
/// is taken out again, and how long a WebSocket naming a session key waits for that join
/// (`Config::attach_timeout`). Both requests leave the client together, so either wait is
/// normally a round trip or less.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

struct Joined {
    room: String,
    id: ParticipantId,
    /// Who the shared-viewer authority sees: its permissions follow the role.
    collaborator: Collaborator,
}

/// The server-side phases of one join, as offsets from the WebSocket accept (or, for a join
/// over HTTP, from the join request).
struct JoinTimeline {
    accepted: std::time::Instant,
    phases: Vec<(&'static str, Duration)>,
    logged: bool,
    client_reported: bool,
    /// The join came over HTTP: its WebSocket is accepted later, as a phase of its own.
    over_http: bool,
}

/// Every server phase; the join's log line is written once all are in (or at leave).
const SERVER_PHASES: usize = 7;

impl JoinTimeline {
    fn new() -> Self {
        Self {
            accepted: std::time::Instant::now(),
            phases: Vec::with_capacity(SERVER_PHASES),
            logged: false,
            client_reported: false,
            over_http: false,
        }
    }
}

enum Flow {
    Continue,
    Close(u16, &'static str),
}

/// A session with no socket yet, and the receiving ends of its queues: what a join over HTTP
/// leaves for its WebSocket to take over.
pub struct Parked {
    session: Session,
    outbox: mpsc::Receiver<ServerMessage>,
    peer_events: mpsc::Receiver<PeerEvent>,
}

impl Parked {
    fn new(state: AppState) -> Self {
        let (outbox_tx, outbox) = mpsc::channel::<ServerMessage>(256);
        let (peer_tx, peer_events) = mpsc::channel::<PeerEvent>(256);
        Parked {
            session: Session {
                state,
                joined: None,
                outbox_tx,
                peer_tx,
                timeline: JoinTimeline::new(),
            },
            outbox,
            peer_events,
        }
    }
}

/// A signaling WebSocket that joins on the socket itself (the `join` message).
pub async fn run(socket: WebSocket, state: AppState) {
    serve(socket, Parked::new(state)).await;
}

/// A signaling WebSocket that takes over the session a join over HTTP made under `key`,
/// waiting for that join if it has not arrived yet.
pub async fn attach(socket: WebSocket, state: AppState, key: String) {
    match state.joins.claim(&key, state.attach_timeout).await {
        Some(mut parked) => {
            parked
                .session
                .phase("ws_accepted", std::time::Instant::now());
            serve(socket, parked).await;
        }
        None => {
            let err = SignalingError::UnknownSession;
            tracing::info!(error = %err, "signaling socket named an unknown session");
            let mut socket = socket;
            let _ = socket
                .send(Message::Text(ServerMessage::error(&err).to_json().into()))
                .await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1008,
                    reason: Utf8Bytes::from_static("unknown session"),
                })))
                .await;
        }
    }
}

/// Joins a room from a `join` message that came in an HTTP request body, and leaves the
/// session under `key` for the WebSocket that will carry the rest of it. Returns the
/// `joined` message (with the answer) for the response.
pub async fn join_over_http(
    state: AppState,
    key: String,
    body: &str,
) -> Result<ServerMessage, SignalingError> {
    let mut parked = Parked::new(state.clone());
    parked.session.timeline.over_http = true;
    let result = async {
        if body.len() > MAX_FRAME_BYTES {
            return Err(SignalingError::BadMessage(format!(
                "a join is at most {MAX_FRAME_BYTES} bytes"
            )));
        }
        let ClientMessage::Join {
            v,
            room,
            name,
            token,
            offer,
        } = ClientMessage::parse(body)?
        else {
            return Err(SignalingError::BadMessage(
                "POST /join takes a join message; everything else goes over the WebSocket".into(),
            ));
        };
        state
            .metrics
            .signaling_messages
            .with_label_values(&["join"])
            .inc();
        if state.joins.is_offered(&key) {
            return Err(SignalingError::AlreadyJoined);
        }
        parked.session.join(v, room, name, token, offer).await
    }
    .await;
    let joined = match result {
        Ok(joined) => joined,
        Err(e) => {
            parked.session.refuse(&e);
            return Err(e);
        }
    };
    // The server's only candidate is in the answer.
    parked
        .session
        .send(ServerMessage::Candidate { candidate: None });
    match state.joins.offer(&key, parked) {
        Ok(ticket) => {
            let joins = state.joins.clone();
            let mut shutdown = state.shutdown.clone();
            let wait = state.attach_timeout;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(&mut shutdown) => {}
                }
                if let Some(mut parked) = joins.withdraw(&key, ticket) {
                    tracing::info!("joined over HTTP, but no signaling socket came: leaving");
                    parked.session.leave().await;
                }
            });
            Ok(joined)
        }
        Err(KeyInUse(mut parked)) => {
            // Another join under the same key got in first, while this one was joining.
            parked.session.leave().await;
            let e = SignalingError::AlreadyJoined;
            parked.session.refuse(&e);
            Err(e)
        }
    }
}

/// Serves one signaling WebSocket for `parked`'s session until either side ends it.
async fn serve(socket: WebSocket, parked: Parked) {
    let Parked {
        mut session,
        mut outbox,
        mut peer_events,
    } = parked;
    let state = session.state.clone();
    state.metrics.websockets.inc();
    let (mut sink, mut stream) = socket.split();
    let mut shutdown = state.shutdown.clone();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.reset();
    let mut last_heard = Instant::now();

    let close = loop {
        let flow = tokio::select! {
            frame = stream.next() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => session.text(&text).await,
                    Some(Ok(Message::Binary(data))) if data.len() > MAX_FRAME_BYTES => {
                        tracing::info!(bytes = data.len(), "signaling message over the limit");
                        Flow::Close(CLOSE_TOO_BIG, "message too big")
                    }
                    Some(Ok(Message::Binary(_))) => {
                        session.refuse(&SignalingError::BadMessage("binary frames are not used; send JSON text".into()));
                        Flow::Continue
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Ok(_)) => Flow::Continue, // ping/pong
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "signaling socket error");
                        // Over the transport limit: tell the client why, if it still listens.
                        break Some((CLOSE_TOO_BIG, "message too big"));
                    }
                }
            }
            Some(msg) = outbox.recv() => {
                if sink.send(Message::Text(msg.to_json().into())).await.is_err() {
                    break None;
                }
                Flow::Continue
            }
            Some(event) = peer_events.recv() => session.peer_event(event).await,
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    tracing::info!("signaling client silent; closing");
                    break Some((1001, "idle timeout"));
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
                Flow::Continue
            }
            _ = stopped(&mut shutdown) => break Some((1001, "server shutting down")),
        };
        if let Flow::Close(code, reason) = flow {
            break Some((code, reason));
        }
    };

    // Whatever is still queued for the client (an error, a goodbye) goes out first.
    while let Ok(msg) = outbox.try_recv() {
        if sink
            .send(Message::Text(msg.to_json().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    if let Some((code, reason)) = close {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
    }
    session.leave().await;
    state.metrics.websockets.dec();
}

struct Session {
    state: AppState,
    joined: Option<Joined>,
    outbox_tx: mpsc::Sender<ServerMessage>,
    peer_tx: mpsc::Sender<PeerEvent>,
    timeline: JoinTimeline,
}

impl Session {
    /// Records a server-side phase of the join reached at `at`.
    fn phase(&mut self, phase: &'static str, at: std::time::Instant) {
        let since = at.saturating_duration_since(self.timeline.accepted);
        self.state
            .metrics
            .connect_phase
            .with_label_values(&[phase, "server"])
            .observe(since.as_secs_f64());
        self.timeline.phases.push((phase, since));
        if self.timeline.phases.len() >= SERVER_PHASES {
            self.log_timeline();
        }
    }

    /// One structured line per join with every phase reached, in ms since accept.
    fn log_timeline(&mut self) {
        if self.timeline.logged || self.joined.is_none() {
            return;
        }
        self.timeline.logged = true;
        let phases: serde_json::Map<String, serde_json::Value> = self
            .timeline
            .phases
            .iter()
            .map(|(name, d)| {
                (
                    format!("{name}_ms"),
                    serde_json::json!((d.as_secs_f64() * 1e4).round() / 10.0),
                )
            })
            .collect();
        let participant = self.joined.as_ref().map(|j| j.id.to_string());
        tracing::info!(
            participant = participant.as_deref().unwrap_or(""),
            phases = %serde_json::Value::Object(phases),
            "join timeline"
        );
    }

    fn send(&self, msg: ServerMessage) {
        if self.outbox_tx.try_send(msg).is_err() {
            tracing::warn!("client outbox full; message dropped");
        }
    }

    fn refuse(&self, err: &SignalingError) {
        let code = serde_json::to_value(err.code())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.state
            .metrics
            .signaling_errors
            .with_label_values(&[&code])
            .inc();
        tracing::info!(%code, error = %err, "refused client request");
        self.send(ServerMessage::error(err));
    }

    async fn text(&mut self, text: &str) -> Flow {
        if text.len() > MAX_FRAME_BYTES {
            tracing::info!(bytes = text.len(), "signaling message over the limit");
            return Flow::Close(CLOSE_TOO_BIG, "message too big");
        }
        let msg = match ClientMessage::parse(text) {
            Ok(msg) => msg,
            Err(e) => {
                self.refuse(&e);
                return Flow::Continue;
            }
        };
        self.state
            .metrics
            .signaling_messages
            .with_label_values(&[message_type(&msg)])
            .inc();
        match self.handle(msg).await {
            Ok(flow) => flow,
            Err(e) => {
                self.refuse(&e);
                if e.is_fatal() {
                    Flow::Close(1002, "unsupported protocol version")
                } else {
                    Flow::Continue
                }
            }
        }
    }

    async fn handle(&mut self, msg: ClientMessage) -> Result<Flow, SignalingError> {
        match msg {
            ClientMessage::ClientTimings { timings } => {
                if self.joined.is_none() {
                    return Err(SignalingError::NotJoined);
                }
                if self.timeline.client_reported {
                    return Err(SignalingError::BadMessage(
                        "client_timings is sent once per join".into(),
                    ));
                }
                for (phase, ms) in timings.phases()? {
                    self.state
                        .metrics
                        .connect_phase
                        .with_label_values(&[phase, "client"])
                        .observe(ms / 1000.0);
                }
                self.timeline.client_reported = true;
                Ok(Flow::Continue)
            }
            ClientMessage::Ping => {
                self.send(ServerMessage::Pong);
                Ok(Flow::Continue)
            }
            ClientMessage::Join {
                v,
                room,
                name,
                token,
                offer,
            } => {
                let joined = self.join(v, room, name, token, offer).await?;
                self.send(joined);
                // The server's only candidate is in the answer.
                self.send(ServerMessage::Candidate { candidate: None });
                Ok(Flow::Continue)
            }
            ClientMessage::Candidate { candidate } => {
                let joined = self.joined.as_ref().ok_or(SignalingError::NotJoined)?;
                let init = candidate.map(to_rtc_candidate);
                self.state.sfu.add_candidate(joined.id.as_str(), init).await;
                Ok(Flow::Continue)
            }
            ClientMessage::Answer { sdp } => {
                let joined = self.joined.as_ref().ok_or(SignalingError::NotJoined)?;
                self.state
                    .sfu
                    .answer(joined.id.as_str(), sdp)
                    .await
                    .map_err(|e| match e {
                        SfuError::BadSdp(m) => SignalingError::BadSdp(m),
                        SfuError::NoOfferOutstanding => {
                            SignalingError::BadMessage("no offer is waiting for an answer".into())
                        }
                        other => {
                            tracing::error!(error = %other, "applying answer failed");
                            SignalingError::Internal
                        }
                    })?;
                Ok(Flow::Continue)
            }
            ClientMessage::MediaState {
                audio_muted,
                video_muted,
            } => {
                let joined = self.joined.as_ref().ok_or(SignalingError::NotJoined)?;
                self.state.rooms.set_media_state(
                    &joined.room,
                    &joined.id,
                    audio_muted,
                    video_muted,
                );
                Ok(Flow::Continue)
            }
            ClientMessage::Leave => {
                if self.joined.is_none() {
                    return Err(SignalingError::NotJoined);
                }
                self.leave().await;
                Ok(Flow::Close(1000, "left"))
            }
        }
    }

    /// Admits the participant and makes its media peer; returns the `joined` message with
    /// the answer, for the caller to deliver (on the socket, or in the HTTP response).
    async fn join(
        &mut self,
        v: u32,
        room: String,
        name: String,
        token: Option<String>,
        offer: String,
    ) -> Result<ServerMessage, SignalingError> {
        if self.joined.is_some() {
            return Err(SignalingError::AlreadyJoined);
        }
        let received = std::time::Instant::now();
        if v != PROTOCOL_VERSION {
            return Err(SignalingError::UnsupportedVersion(v));
        }
        validate::room_name(&room)?;
        let name = validate::display_name(&name)?;
        let claims = match &self.state.auth {
            Some(auth) => {
                let token = token.ok_or_else(|| {
                    SignalingError::Unauthorized("this server needs an invitation token".into())
                })?;
                Some(auth.verify(&token, &room, &name)?)
            }
            None => None,
        };
        let role = claims.as_ref().map(|c| c.role);
        let admission = self
            .state
            .rooms
            .admit(&room, &name, role, self.outbox_tx.clone())?;
        let request = JoinRequest {
            peer_id: admission.id.to_string(),
            room: room.clone(),
            may_publish: admission.role.may_publish(),
            offer,
            events: self.peer_tx.clone(),
        };
        let answer = match self.state.sfu.join(request).await {
            Ok(answer) => answer,
            Err(e) => {
                self.state.rooms.leave(&room, &admission.id);
                return Err(match e {
                    SfuError::BadSdp(m) => SignalingError::BadSdp(m),
                    other => {
                        tracing::error!(error = %other, "media join failed");
                        SignalingError::Internal
                    }
                });
            }
        };
        let over = if self.timeline.over_http {
            "http"
        } else {
            "websocket"
        };
        tracing::info!(%room, participant = %admission.id, role = admission.role.as_str(), over, "joined");
        let joined = ServerMessage::Joined {
            v: PROTOCOL_VERSION,
            participant_id: admission.id.clone(),
            room: room.clone(),
            role: admission.role,
            answer,
            participants: admission.others,
        };
        // A join refused and retried on the same socket restarts the timeline here.
        self.timeline.phases.clear();
        if !self.timeline.over_http {
            self.timeline.phases.push(("ws_accepted", Duration::ZERO));
        }
        self.phase("join_received", received);
        self.phase("answer_sent", std::time::Instant::now());
        self.state.rooms.announce(&room, &admission.id);
        self.joined = Some(Joined {
            room,
            collaborator: match &claims {
                Some(claims) => Collaborator {
                    id: admission.id.clone(),
                    role: admission.role,
                    name,
                    key: claims.author_key(),
                },
                None => Collaborator::unsigned(admission.id.clone(), admission.role, name),
            },
            id: admission.id,
        });
        Ok(joined)
    }

    async fn peer_event(&mut self, event: PeerEvent) -> Flow {
        let Some(joined) = &self.joined else {
            return Flow::Continue;
        };
        match event {
            PeerEvent::Offer(sdp) => {
                // Offers grow with the room (an m-section per forwarded track) and must stay
                // under the signaling frame limit: their size is worth seeing in the logs.
                tracing::debug!(bytes = sdp.len(), "renegotiation offer");
                self.send(ServerMessage::Offer { sdp })
            }
            PeerEvent::Connection(state) => self.send(ServerMessage::MediaConnection {
                state: match state {
                    ConnectionState::Connecting => MediaConnectionState::Connecting,
                    ConnectionState::Connected => MediaConnectionState::Connected,
                    ConnectionState::Disconnected => MediaConnectionState::Disconnected,
                    ConnectionState::Failed => MediaConnectionState::Failed,
                },
            }),
            PeerEvent::Data { text, data } => {
                let (room, who) = (joined.room.clone(), joined.collaborator.clone());
                self.relay_data(&room, &who, text, data).await;
            }
            PeerEvent::Milestone { milestone, at } => self.phase(milestone.as_str(), at),
            PeerEvent::Closed { reason } => {
                tracing::info!(participant = %joined.id, reason, "media peer closed by the server");
                self.send(ServerMessage::MediaConnection {
                    state: MediaConnectionState::Failed,
                });
                self.leave().await;
                return Flow::Close(1011, "media connection lost");
            }
        }
        Flow::Continue
    }

    /// Hands a shared-viewer message to the room's authority; relays any other data channel
    /// message to the rest of the room, stamped with its sender.
    async fn relay_data(&self, room: &str, who: &Collaborator, text: bool, data: Bytes) {
        let from = &who.id;
        let by_type = &self.state.metrics.data_channel_by_type;
        if data.len() > MAX_DATA_MESSAGE_BYTES {
            by_type.with_label_values(&["invalid"]).inc();
            let error = serde_json::json!({"error": {
                "code": "message_too_big",
                "message": format!("data channel messages are at most {MAX_DATA_MESSAGE_BYTES} bytes")
            }});
            self.state
                .sfu
                .send_data(vec![from.to_string()], Bytes::from(error.to_string()))
                .await;
            return;
        }
        let parsed = if text {
            serde_json::from_slice::<serde_json::Value>(&data)
                .ok()
                .filter(|v| v.is_object())
        } else {
            None
        };
        let Some(msg) = parsed else {
            by_type.with_label_values(&["invalid"]).inc();
            let error = serde_json::json!({"error": {
                "code": "bad_message",
                "message": "data channel messages are JSON objects in text frames"
            }});
            self.state
                .sfu
                .send_data(vec![from.to_string()], Bytes::from(error.to_string()))
                .await;
            return;
        };
        if let Some(kind) = collab_type(&msg) {
            by_type.with_label_values(&[kind]).inc();
            self.state.collab.handle(room, who, msg).await;
            return;
        }
        by_type.with_label_values(&["relay"]).inc();
        let envelope = serde_json::json!({"from": from, "msg": msg});
        let others: Vec<String> = self
            .state
            .rooms
            .others(room, from)
            .into_iter()
            .map(|id| id.to_string())
            .collect();
        if !others.is_empty() {
            self.state
                .sfu
                .send_data(others, Bytes::from(envelope.to_string()))
                .await;
        }
    }

    /// Leaves the room and the SFU. Idempotent.
    async fn leave(&mut self) {
        self.log_timeline();
        if let Some(joined) = self.joined.take() {
            self.state.rooms.leave(&joined.room, &joined.id);
            self.state.collab.leave(&joined.room, &joined.id).await;
            self.state.sfu.leave(joined.id.as_str()).await;
            tracing::info!(room = %joined.room, participant = %joined.id, "left");
        }
    }
}

async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        // The sender is gone: the server is going away too.
    }
}

fn to_rtc_candidate(c: IceCandidate) -> IceCandidateInit {
    IceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_m_line_index,
        username_fragment: c.username_fragment,
        ..Default::default()
    }
}

fn message_type(msg: &ClientMessage) -> &'static str {
    match msg {
        ClientMessage::Join { .. } => "join",
        ClientMessage::Candidate { .. } => "candidate",
        ClientMessage::Answer { .. } => "answer",
        ClientMessage::MediaState { .. } => "media_state",
        ClientMessage::ClientTimings { .. } => "client_timings",
        ClientMessage::Leave => "leave",
        ClientMessage::Ping => "ping",
    }
}
