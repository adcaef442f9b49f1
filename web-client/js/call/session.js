// Session: one participant's call. Owns the signaling socket, the single RTCPeerConnection
// (RECEIVE_SLOTS pairs of recvonly transceivers that the server's answer fills with the
// room's tracks, own audio/video as sendonly transceivers, everyone else's further tracks
// added by the server through renegotiation, and the negotiated "consilium" data channel),
// the list of other participants and, per participant, a MediaStream of their live remote
// tracks.
//
// Protocol: docs/protocol.md. The client makes exactly one offer (inside `join`); after
// `joined` it only answers the server's offers. For a deep link, index.html's head script
// makes that PeerConnection and sends that `join` before the modules load: the first
// attempt adopts them (_adoptEarlyCall); a rejoin makes its own.
//
// Events (via .on): state, participants, remote-media, local-media, joined, error,
// media-error, data, data-open, data-close, ended.

import { Emitter, Signaling, signalingUrl } from './signaling.js';
import { mark, onMark, takeClientTimings, timings } from './timings.js';

/** Delays before each automatic rejoin after the connection was lost. */
const UTF8 = new TextDecoder();
const RETRY_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
const PING_INTERVAL_MS = 15_000;
/**
 * No frame at all from the server for this long (despite pings) = connection dead.
 * Generous: background tabs may run timers only once a minute.
 */
const SILENCE_LIMIT_MS = 75_000;
const FIRST_AUDIO_POLL_MS = 100;
const FIRST_AUDIO_POLL_LIMIT_MS = 60_000;
/**
 * Receive-only audio and video m-section pairs of the join's offer (docs/protocol.md,
 * "Receive slots"): the server answers with the first participants' tracks on them, so
 * their media needs no renegotiation, and later participants take the slots left over.
 * One pair: the first remote video is what the connect time waits for, and each pair costs
 * every join (about 5 KB of offer, and 10–20 ms of Chromium's and the server's SDP work on
 * the benchmark host: 3 pairs made the join slower than the renegotiation they saved,
 * docs/benchmarks.md, session 12). Keep in step with RECEIVE_SLOTS in index.html's head
 * script; window.__consiliumReceiveSlots, set before the page loads, overrides both (tests
 * and benchmarks).
 */
const RECEIVE_SLOTS = 1;
const receiveSlots = () =>
  typeof globalThis.__consiliumReceiveSlots === 'number' ? globalThis.__consiliumReceiveSlots : RECEIVE_SLOTS;
/** `client_timings` goes out at the first remote video frame, or this long after start. */
const CLIENT_TIMINGS_DEADLINE_MS = 10_000;

const VIDEO_CONSTRAINTS = {
  width: { ideal: 1280 },
  height: { ideal: 720 },
  frameRate: { ideal: 30 },
};

/** States shown by the connection indicator. */
export const STATES = ['idle', 'connecting', 'connected', 'reconnecting', 'failed', 'left'];

export class Session extends Emitter {
  /**
   * @param {{room: string, name: string, token?: string|null, url?: string}} opts
   */
  constructor({ room, name, token = null, url = signalingUrl() }) {
    super();
    this.room = room;
    this.name = name;
    this.token = token || null;
    this.url = url;

    /** Other participants in the room: id → participant object from the server. */
    this.participants = new Map();
    /** Participant id → MediaStream holding that participant's live remote tracks. */
    this.remoteStreams = new Map();

    /** @type {MediaStream | null} */
    this.localStream = null;
    this.audioMuted = false;
    this.videoMuted = false;

    /** @type {RTCPeerConnection | null} */
    this.pc = null;
    /** @type {Signaling | null} */
    this.signaling = null;
    /** @type {RTCDataChannel | null} */
    this.dataChannel = null;

    this.participantId = null;
    this.role = null;
    this.joined = false;
    this.state = 'idle';
    /** Last `error` from the server, {code, message}. */
    this.lastError = null;
    /** The server's view of our media connection (`media_connection`). */
    this.serverMediaState = null;
    this.timings = timings;

    this._gen = 0; // bumped per connection attempt; stale callbacks compare and bail out
    this._started = false;
    this._ended = null; // 'left' | 'failed' once the session is over
    this._reconnecting = false;
    this._retry = 0;
    this._retryTimer = null;
    this._pingTimer = null;
    this._lastServerFrameAt = 0;
    this._queue = Promise.resolve();
    this._pendingLocalCandidates = [];
    this._pendingRemoteCandidates = [];
    this._midOwner = new Map(); // transceiver mid → participant id (from track events)
    this._reconcileTimer = null;
    this._mediaPromise = null;
    /** msid of our own tracks; stable, so tracks can be attached after the offer was made. */
    this._sendStream = null;
    /** Our sendonly transceivers, by kind, in the current PeerConnection. */
    this._sendTransceivers = {};
    this._startedAt = 0;
    this._clientTimings = null; // {off(), timer} while waiting to send `client_timings`
    this._clientTimingsInFlight = false; // sent, and the `pong` that follows not yet back
    /**
     * Whether the current attempt adopted the PeerConnection and `join` of index.html's head
     * script (a deep link's first attempt), rather than making its own.
     */
    this.earlyJoin = false;
  }

  /** Starts the call: WebSocket and camera/microphone are opened in parallel. */
  async start() {
    if (this._started) return;
    this._started = true;
    this._startedAt = performance.now();
    this._update();
    this._mediaPromise = this._acquireMedia().catch((err) => {
      console.warn('[consilium] local media failed', err);
      return null;
    });
    await this._connect();
  }

  /** Leaves the room on purpose. */
  leave() {
    if (this._ended) return;
    this.signaling?.leave();
    this._teardownAttempt();
    this._finish('left');
  }

  setAudioMuted(muted) {
    this.audioMuted = !!muted;
    for (const t of this.localStream?.getAudioTracks() ?? []) t.enabled = !this.audioMuted;
    this._sendMediaState();
    this.emit('local-media');
  }

  setVideoMuted(muted) {
    this.videoMuted = !!muted;
    for (const t of this.localStream?.getVideoTracks() ?? []) t.enabled = !this.videoMuted;
    this._sendMediaState();
    this.emit('local-media');
  }

  /** Sends a JSON object on the data channel; the server relays it to the room. */
  sendData(obj) {
    if (this.dataChannel?.readyState !== 'open') return false;
    this.dataChannel.send(JSON.stringify(obj));
    return true;
  }

  // ---------------------------------------------------------------- connection attempts

  async _connect() {
    const gen = ++this._gen;
    this.joined = false;
    const sig = new Signaling(this.url);
    this.signaling = sig;
    // A deep link's first attempt: index.html's head script may have opened the socket, built
    // the PeerConnection and sent (or be about to send) `join` on it. Adopted before the
    // socket's buffered messages (`joined`...) are replayed by sig.open().
    const call = sig.takeEarly({ room: this.room, name: this.name, token: this.token })?.call ?? null;
    this.earlyJoin = !!call;
    if (call) this._adoptEarlyCall(gen, call);
    this._bindSignaling(sig, gen);
    const wsOpen = sig.open().then(() => mark('ws_open', sig.openedAt ?? undefined));
    wsOpen.catch(() => {}); // awaited below; the close handler also reports it
    this._update();

    // The offer does not wait for the camera and microphone: its audio and video
    // transceivers are created without tracks if getUserMedia has not resolved yet and get
    // them by replaceTrack (no renegotiation) when it does. So the join, the answer, ICE and
    // DTLS, and receiving the others, all overlap with getUserMedia (and its permission
    // prompt). Offer creation overlaps with the WebSocket handshake.
    let joinSentAt = null;
    try {
      if (call) joinSentAt = await this._earlyJoinSent(call, wsOpen);
      if (gen !== this._gen) return;
      if (joinSentAt === null) {
        const [offerSdp] = await Promise.all([this._createPeerConnection(gen), wsOpen]);
        if (gen !== this._gen) return;
        sig.join({ room: this.room, name: this.name, token: this.token, offer: offerSdp });
        joinSentAt = performance.now();
      }
    } catch (err) {
      console.warn('[consilium] connection attempt failed', err);
      this._connectionLost(gen);
      return;
    }
    if (gen !== this._gen) return;
    mark('join_sent', joinSentAt);
    this._startPing(gen);
    this._update();
  }

  /**
   * Takes over the head script's PeerConnection (see index.html): the same transceivers and
   * data channel _createPeerConnection makes, so from here on nothing tells them apart.
   * Synchronous, so that no event of the PeerConnection and no buffered message is missed.
   */
  _adoptEarlyCall(gen, call) {
    call.detach();
    this._sendStream = call.stream; // msid of the offer; a rejoin's fresh offer keeps it
    this._sendTransceivers = { audio: call.transceivers.audio, video: call.transceivers.video };
    this._setupPeerConnection(gen, call.pc, call.dc);
    // Candidates gathered before this module loaded, in order (null = end of candidates).
    for (const c of call.candidates.splice(0)) this._onLocalCandidate(c);
    // The head script may have applied the answer: ICE, DTLS and the data channel may be up
    // already, and what they did is replayed at the moments it happened.
    if (call.iceConnectedAt != null) mark('ice_connected', call.iceConnectedAt);
    if (call.connectedAt != null) {
      mark('pc_connected', call.connectedAt);
      this._onPcState(gen, 'connected');
    }
    // The others' tracks the answer put on our receive slots, and their first sound.
    for (const ev of call.tracks?.splice(0) ?? []) this._onTrack(ev);
    if (call.firstAudioAt != null) mark('first_remote_audio', call.firstAudioAt);
    // The first frame an early tile (index.html) presented, now or when it comes.
    const firstFrame = (t) => mark('first_remote_video_frame', t);
    if (call.firstFrameAt != null) firstFrame(call.firstFrameAt);
    else call.onFirstFrame = firstFrame;
    for (const data of call.dcMessages?.splice(0) ?? []) this._onDataMessage(data);
    if (call.dc.readyState === 'open') queueMicrotask(() => gen === this._gen && this.emit('data-open', call.dc));
  }

  /**
   * When the head script's join left (performance.now()), once the socket is adopted and
   * open. If the script could not make or send its offer, its PeerConnection is dropped;
   * for a join over HTTP (the head script's way) this throws and the attempt starts over on
   * a fresh socket, otherwise it returns null and the caller makes a fresh PeerConnection
   * and sends `join` itself, on the same socket.
   */
  async _earlyJoinSent(call, wsOpen) {
    let sentAt;
    try {
      sentAt = await call.sent;
    } catch (err) {
      console.warn('[consilium] the early join failed, joining without it', err);
      call.dropTiles?.();
      if (this.pc === call.pc) {
        this._closePeerConnection();
        this.earlyJoin = false;
      }
      // Its socket names the session key of a join that never left: no `join` goes on it,
      // the caller starts over on a fresh socket.
      if (call.overHttp) throw err;
      return null;
    }
    await wsOpen;
    return sentAt;
  }

  async _createPeerConnection(gen) {
    // Keep in step with the head script of index.html, which builds the same for a deep link.
    const pc = new RTCPeerConnection();
    // Receive slots first (see RECEIVE_SLOTS), then always one sendonly audio and one
    // sendonly video transceiver (the server publishes a track on its first RTP packet, so
    // one that never gets a track stays invisible).
    this._sendStream ??= new MediaStream();
    const stream = this.localStream; // null until getUserMedia resolves
    this._sendTransceivers = {};
    const slotCodecs = { audio: sendCodecs('audio'), video: sendCodecs('video') };
    for (let i = 0; i < receiveSlots(); i++) {
      for (const kind of ['audio', 'video']) {
        const slot = pc.addTransceiver(kind, { direction: 'recvonly' });
        try {
          if (slotCodecs[kind]) slot.setCodecPreferences(slotCodecs[kind]);
        } catch {
          /* offered with the receive codecs */
        }
      }
    }
    for (const kind of ['audio', 'video']) {
      const track = stream?.getTracks().find((t) => t.kind === kind) ?? null;
      this._sendTransceivers[kind] = pc.addTransceiver(track ?? kind, {
        direction: 'sendonly',
        streams: [this._sendStream],
      });
    }
    const dc = pc.createDataChannel('consilium', { negotiated: true, id: 0, ordered: true });
    // The server may send its UTF-8 JSON as binary messages; Firefox's default is 'blob'.
    dc.binaryType = 'arraybuffer';
    this._setupPeerConnection(gen, pc, dc);

    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    return pc.localDescription.sdp;
  }

  /**
   * Makes pc (with our send transceivers in this._sendTransceivers) and its data channel dc
   * the current ones: listeners, and the local tracks now or when getUserMedia resolves.
   */
  _setupPeerConnection(gen, pc, dc) {
    this.pc = pc;
    this.dataChannel = dc;
    if (this.localStream) {
      this._attachLocalTracks(this.localStream);
    } else {
      this._mediaPromise.then((s) => {
        if (s && gen === this._gen && this.pc === pc) this._attachLocalTracks(s);
      });
    }

    // The viewer sync says `hello` on every (re)opened channel.
    dc.addEventListener('open', () => {
      if (gen === this._gen) this.emit('data-open', dc);
    });
    dc.addEventListener('close', () => {
      if (gen === this._gen) this.emit('data-close', dc);
    });
    dc.addEventListener('message', (ev) => {
      if (gen === this._gen) this._onDataMessage(ev.data);
    });

    this._sentEndOfCandidates = false;
    pc.addEventListener('icecandidate', (ev) => {
      if (gen === this._gen) this._onLocalCandidate(ev.candidate);
    });

    pc.addEventListener('track', (ev) => {
      if (gen !== this._gen) return;
      this._onTrack(ev);
    });
    pc.addEventListener('iceconnectionstatechange', () => {
      if (gen !== this._gen) return;
      const s = pc.iceConnectionState;
      if (s === 'connected' || s === 'completed') mark('ice_connected');
      if (pc.connectionState === undefined) this._onPcState(gen, iceToConnectionState(s));
      this._update();
    });
    pc.addEventListener('connectionstatechange', () => {
      if (gen !== this._gen) return;
      this._onPcState(gen, pc.connectionState);
    });
  }

  _onDataMessage(data) {
    try {
      const text = typeof data === 'string' ? data : UTF8.decode(data);
      this.emit('data', JSON.parse(text));
    } catch {
      console.warn('[consilium] non-JSON data channel message', data);
    }
  }

  /** A local ICE candidate (null = end of candidates): trickled after `joined`. */
  _onLocalCandidate(candidate) {
    // null (or an empty candidate string) = end of candidates.
    const c = candidate && candidate.candidate ? candidate : null;
    if (!c && this._sentEndOfCandidates) return;
    if (!c) this._sentEndOfCandidates = true;
    if (this.joined) this.signaling?.candidate(c);
    else this._pendingLocalCandidates.push(c);
  }

  _closePeerConnection() {
    try {
      this.dataChannel?.close();
      this.pc?.close();
    } catch {
      /* already closed */
    }
    this.dataChannel = null;
    this.pc = null;
    this._sendTransceivers = {};
  }

  /** Puts the local tracks on our sendonly transceivers (no renegotiation needed). */
  _attachLocalTracks(stream) {
    for (const [kind, transceiver] of Object.entries(this._sendTransceivers)) {
      const track = stream.getTracks().find((t) => t.kind === kind);
      if (!track || transceiver.sender.track === track) continue;
      transceiver.sender.replaceTrack(track).catch((err) => {
        console.warn(`[consilium] cannot send the local ${kind} track`, err);
      });
    }
  }

  _onPcState(gen, s) {
    if (s === 'connected') {
      mark('pc_connected');
      this._retry = 0;
      this._reconnecting = false;
    } else if (s === 'failed') {
      // The server only offers ICE restarts implicitly by a new join: start over.
      this._connectionLost(gen);
      return;
    }
    this._update();
  }

  _bindSignaling(sig, gen) {
    const on = (type, fn) =>
      sig.on(type, (msg) => {
        if (gen === this._gen) fn(msg);
      });
    on('message', () => {
      this._lastServerFrameAt = performance.now();
    });
    on('joined', (msg) => {
      mark('joined', sig.receivedAt ?? undefined); // when it arrived, maybe before this module loaded
      this._enqueue(gen, () => this._onJoined(msg));
    });
    on('offer', (msg) => this._enqueue(gen, () => this._onOffer(msg)));
    on('candidate', (msg) => this._enqueue(gen, () => this._onRemoteCandidate(msg.candidate)));
    on('participant_joined', (msg) => this._putParticipant(msg.participant));
    on('participant_updated', (msg) => this._putParticipant(msg.participant));
    on('participant_left', (msg) => {
      if (this.participants.delete(msg.participant_id)) this.emit('participants');
    });
    on('media_connection', (msg) => {
      this.serverMediaState = msg.state;
    });
    on('error', (msg) => this._onServerError(msg));
    on('pong', () => {
      this._clientTimingsInFlight = false;
    });
    on('close', (ev) => {
      if (ev.byUs) return;
      console.warn(`[consilium] signaling closed (${ev.code} ${ev.reason || ''})`);
      this._connectionLost(gen);
    });
  }

  _enqueue(gen, fn) {
    this._queue = this._queue
      .then(() => (gen === this._gen ? fn() : undefined))
      .catch((err) => {
        console.error('[consilium] signaling step failed', err);
        this.emit('error', { code: 'client', message: String(err?.message ?? err) });
      });
  }

  async _onJoined(msg) {
    const pc = this.pc;
    this.participantId = msg.participant_id;
    this.role = msg.role ?? null;
    this.participants.clear();
    for (const p of msg.participants ?? []) {
      if (p && p.id && p.id !== this.participantId) this.participants.set(p.id, p);
    }
    this.emit('participants');

    try {
      // Unless index.html's head script has applied it (a deep link's join over HTTP).
      if (pc.signalingState === 'have-local-offer') {
        await pc.setRemoteDescription({ type: 'answer', sdp: msg.answer });
      }
    } catch (err) {
      // Retrying would get the same answer: give up with a clear message.
      console.error('[consilium] cannot apply the server answer', err);
      const e = { code: 'bad_sdp', message: `The browser rejected the server's answer: ${err?.message ?? err}` };
      this.emit('error', e);
      this.signaling?.leave();
      this._teardownAttempt();
      this._finish('failed', e);
      return;
    }
    this.joined = true;
    for (const c of this._pendingRemoteCandidates.splice(0)) await this._addRemoteCandidate(c);
    for (const c of this._pendingLocalCandidates.splice(0)) this.signaling?.candidate(c);
    if (this.audioMuted || this.videoMuted) this._sendMediaState();
    this.emit('joined', msg);
    this._update();
    this._armClientTimings(this._gen);
  }

  // ---------------------------------------------------------------- client_timings

  /**
   * Sends `client_timings` once per page, after `joined`: at the first remote video frame,
   * or CLIENT_TIMINGS_DEADLINE_MS after the session started with whatever was recorded.
   */
  _armClientTimings(gen) {
    this._disarmClientTimings();
    const send = () => {
      if (gen !== this._gen || !this.joined) return;
      this._disarmClientTimings();
      const payload = takeClientTimings();
      if (!payload) return; // already reported on this page
      if (this.signaling?.clientTimings(payload)) {
        // The server answers nothing on success. A server that predates the message answers
        // `error` (unknown_type): the ping that follows bounds the window in which an error
        // is taken as that reply, see _isClientTimingsReply.
        this._clientTimingsInFlight = true;
        this.signaling.ping();
      }
    };
    if ('first_remote_video_frame' in timings) {
      send();
      return;
    }
    const off = onMark((name) => {
      if (name === 'first_remote_video_frame') send();
    });
    const wait = Math.max(0, this._startedAt + CLIENT_TIMINGS_DEADLINE_MS - performance.now());
    this._clientTimings = { off, timer: setTimeout(send, wait) };
  }

  _disarmClientTimings() {
    if (!this._clientTimings) return;
    this._clientTimings.off();
    clearTimeout(this._clientTimings.timer);
    this._clientTimings = null;
  }

  /** Whether a server `error` refuses our `client_timings` (telemetry: never shown). */
  _isClientTimingsReply({ code, message }) {
    if (code !== 'unknown_type' && code !== 'bad_message') return false;
    if (typeof message === 'string' && message.includes('client_timings')) return true;
    return this._clientTimingsInFlight;
  }

  async _onOffer(msg) {
    const pc = this.pc;
    const gen = this._gen;
    // The first renegotiation brings the others' tracks: when it is taken up and answered
    // is on the way to the first remote frame (benchmark figures, not client_timings).
    mark('offer_taken');
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
    } catch (err) {
      // The protocol has no way to refuse an offer and the server waits for our answer:
      // start over with a fresh join rather than stay half-negotiated.
      console.error('[consilium] cannot answer the server offer, rejoining', err);
      this._connectionLost(gen);
      return;
    }
    this.signaling?.answer(pc.localDescription.sdp);
    mark('answer_sent');
    for (const c of this._pendingRemoteCandidates.splice(0)) await this._addRemoteCandidate(c);
    this._reconcileRemoteMedia();
  }

  async _onRemoteCandidate(c) {
    // The server's candidates are already in its SDP and it ends with `null`. We do not
    // signal end-of-candidates to the browser: older Safari rejects it and it gains nothing.
    if (!c || !c.candidate) return;
    if (!this.pc?.remoteDescription) this._pendingRemoteCandidates.push(c);
    else await this._addRemoteCandidate(c);
  }

  async _addRemoteCandidate(c) {
    try {
      await this.pc.addIceCandidate(c);
    } catch (err) {
      console.warn('[consilium] addIceCandidate failed', c, err);
    }
  }

  _onServerError(msg) {
    if (this.joined && this._isClientTimingsReply(msg)) {
      console.info('[consilium] the server did not take client_timings:', msg.code, msg.message);
      return;
    }
    const err = { code: msg.code ?? 'unknown', message: msg.message ?? 'The server refused the request.' };
    this.lastError = err;
    console.warn('[consilium] server error', err);
    this.emit('error', err);
    // Before `joined` an error means the join was refused (bad room, token, room full...):
    // retrying automatically would get the same answer, so the session ends here.
    if (!this.joined) {
      this._teardownAttempt();
      this._finish('failed', err);
    }
  }

  _connectionLost(gen) {
    if (gen !== this._gen || this._ended) return;
    this._teardownAttempt();
    if (this._retry >= RETRY_DELAYS_MS.length) {
      this._finish('failed', {
        code: 'connection_lost',
        message: 'The connection to the consultation server was lost.',
      });
      return;
    }
    const delay = RETRY_DELAYS_MS[this._retry++];
    this._reconnecting = true;
    this._update();
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (!this._ended) this._connect();
    }, delay);
  }

  /** Drops the current socket and PeerConnection (local media is kept for a rejoin). */
  _teardownAttempt() {
    this._gen++;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._disarmClientTimings();
    this._clientTimingsInFlight = false;
    clearTimeout(this._reconcileTimer);
    this.signaling?.close();
    this.signaling = null;
    this._closePeerConnection();
    this.joined = false;
    this.participantId = null;
    this._queue = Promise.resolve();
    this._pendingLocalCandidates = [];
    this._pendingRemoteCandidates = [];
    this._midOwner.clear();
    if (this.participants.size) {
      this.participants.clear();
      this.emit('participants');
    }
    if (this.remoteStreams.size) {
      this.remoteStreams.clear();
      this.emit('remote-media');
    }
  }

  _finish(state, error = null) {
    if (this._ended) return;
    clearTimeout(this._retryTimer);
    this._ended = state;
    this._reconnecting = false;
    for (const t of this.localStream?.getTracks() ?? []) t.stop();
    this._update();
    this.emit('ended', { state, error });
  }

  _startPing(gen) {
    clearInterval(this._pingTimer);
    this._lastServerFrameAt = performance.now();
    this._pingTimer = setInterval(() => {
      if (gen !== this._gen) return;
      if (performance.now() - this._lastServerFrameAt > SILENCE_LIMIT_MS) {
        console.warn('[consilium] signaling silent, reconnecting');
        this._connectionLost(gen);
        return;
      }
      this.signaling?.ping();
    }, PING_INTERVAL_MS);
  }

  _sendMediaState() {
    if (!this.joined) return; // sent right after `joined` if needed
    this.signaling?.mediaState({ audioMuted: this.audioMuted, videoMuted: this.videoMuted });
  }

  _putParticipant(p) {
    if (!p || !p.id || p.id === this.participantId) return;
    this.participants.set(p.id, p);
    this.emit('participants');
  }

  // ---------------------------------------------------------------- state

  _computeState() {
    if (this._ended) return this._ended;
    if (!this._started) return 'idle';
    if (this._reconnecting) return 'reconnecting';
    const pc = this.pc;
    const pcState = pc ? pc.connectionState ?? iceToConnectionState(pc.iceConnectionState) : 'new';
    if (this.joined && this.signaling?.isOpen) {
      if (pcState === 'connected') return 'connected';
      if (pcState === 'disconnected') return 'reconnecting';
    }
    return 'connecting';
  }

  _update() {
    const s = this._computeState();
    if (s === this.state) return;
    this.state = s;
    this.emit('state', s);
  }

  // ---------------------------------------------------------------- local media

  async _acquireMedia() {
    const md = navigator.mediaDevices;
    let stream = null;
    let lastErr = null;
    if (!md?.getUserMedia) {
      lastErr = new Error(
        window.isSecureContext
          ? 'This browser cannot access a camera or microphone.'
          : 'Camera and microphone need a secure (HTTPS) connection.',
      );
    } else {
      // Full audio+video first; fall back to whatever works so a participant without a
      // camera (or with a busy one) can still take part.
      for (const c of [
        { audio: true, video: VIDEO_CONSTRAINTS },
        { audio: true, video: false },
        { audio: false, video: VIDEO_CONSTRAINTS },
      ]) {
        try {
          stream = await md.getUserMedia(c);
          break;
        } catch (err) {
          lastErr = err;
          if (err?.name === 'NotAllowedError' || err?.name === 'SecurityError') break;
        }
      }
    }
    mark('media_ready');
    if (!stream) {
      stream = new MediaStream(); // receive-only participation
      this.emit('media-error', {
        message: `Joining without camera and microphone: ${lastErr?.message || lastErr?.name || 'unavailable'}`,
      });
    } else if (!stream.getVideoTracks().length || !stream.getAudioTracks().length) {
      this.emit('media-error', {
        message: stream.getVideoTracks().length
          ? 'No microphone available: others will not hear you.'
          : 'No camera available: joining with audio only.',
      });
    }
    if (this._ended) {
      for (const t of stream.getTracks()) t.stop();
    }
    for (const t of stream.getAudioTracks()) t.enabled = !this.audioMuted;
    for (const t of stream.getVideoTracks()) t.enabled = !this.videoMuted;
    this.localStream = stream;
    this.emit('local-media');
    return stream;
  }

  // ---------------------------------------------------------------- remote media

  _onTrack(ev) {
    const stream = ev.streams[0];
    const pid = stream?.id;
    const mid = ev.transceiver?.mid;
    if (!pid) {
      console.warn('[consilium] remote track without a stream id (msid), ignored', ev.track);
      return;
    }
    if (mid) this._midOwner.set(mid, pid);
    const track = ev.track;
    track.addEventListener('ended', () => this._scheduleReconcile());
    stream.addEventListener('removetrack', () => this._scheduleReconcile());
    if (track.kind === 'audio') this._watchFirstAudio(track);
    if (this._attachTrack(pid, track)) this.emit('remote-media');
  }

  /** Puts track into pid's stream (taking it out of any other). Returns true if changed. */
  _attachTrack(pid, track) {
    let changed = false;
    for (const [other, s] of this.remoteStreams) {
      if (other !== pid && s.getTracks().includes(track)) {
        s.removeTrack(track);
        if (!s.getTracks().length) this.remoteStreams.delete(other);
        changed = true;
      }
    }
    let s = this.remoteStreams.get(pid);
    if (!s) {
      s = new MediaStream();
      this.remoteStreams.set(pid, s);
    }
    if (!s.getTracks().includes(track)) {
      s.addTrack(track);
      changed = true;
    }
    return changed;
  }

  _scheduleReconcile() {
    clearTimeout(this._reconcileTimer);
    this._reconcileTimer = setTimeout(() => this._reconcileRemoteMedia(), 0);
  }

  /**
   * After each completed negotiation, rebuilds participant → tracks from the transceivers
   * that actually receive, using the msid of each m-section. Handles removed tracks
   * (inactive/stopped transceivers) and transceivers the server reused for someone else.
   */
  _reconcileRemoteMedia() {
    const pc = this.pc;
    if (!pc || pc.signalingState !== 'stable' || !pc.remoteDescription) return;
    const msidByMid = parseMsidByMid(pc.remoteDescription.sdp);
    const desired = new Map();
    for (const t of pc.getTransceivers()) {
      if (!t.mid || t.stopped || t.currentDirection === 'stopped') continue;
      if (t.currentDirection !== 'recvonly' && t.currentDirection !== 'sendrecv') continue;
      const track = t.receiver.track;
      if (!track || track.readyState === 'ended') continue;
      const pid = msidByMid.get(t.mid) ?? this._midOwner.get(t.mid);
      if (!pid) continue;
      if (!desired.has(pid)) desired.set(pid, []);
      desired.get(pid).push(track);
    }
    let changed = false;
    for (const [pid, s] of this.remoteStreams) {
      const want = desired.get(pid) ?? [];
      for (const track of s.getTracks()) {
        if (!want.includes(track)) {
          s.removeTrack(track);
          changed = true;
        }
      }
      if (!s.getTracks().length) {
        this.remoteStreams.delete(pid);
        changed = true;
      }
    }
    for (const [pid, tracks] of desired) {
      for (const track of tracks) if (this._attachTrack(pid, track)) changed = true;
    }
    if (changed) this.emit('remote-media');
  }

  /** Records the first remote audio: track unmute, or packets seen in the stats. */
  _watchFirstAudio(track) {
    if ('first_remote_audio' in timings) return;
    track.addEventListener('unmute', () => mark('first_remote_audio'), { once: true });
    if (this._audioPoll) return;
    const gen = this._gen;
    const started = performance.now();
    this._audioPoll = setInterval(async () => {
      const pc = this.pc;
      const stop = () => {
        clearInterval(this._audioPoll);
        this._audioPoll = null;
      };
      if ('first_remote_audio' in timings || gen !== this._gen || !pc) return stop();
      if (performance.now() - started > FIRST_AUDIO_POLL_LIMIT_MS) return stop();
      try {
        const stats = await pc.getStats();
        stats.forEach((r) => {
          if (r.type === 'inbound-rtp' && r.kind === 'audio' && r.packetsReceived > 0) {
            mark('first_remote_audio');
          }
        });
      } catch {
        /* pc closed meanwhile */
      }
    }, FIRST_AUDIO_POLL_MS);
  }
}

/**
 * The codecs a receive slot offers: those we could also send. Left alone, a slot offers the
 * receive codecs (Chromium's include decode-only ones such as VP9 profile 1); m-sections of
 * one kind offering different codec lists make the server's WebRTC stack answer our own
 * video m-section with a payload type listed twice, which the browser refuses. The
 * forwarded tracks are in a codec someone sends, so nothing is lost. Keep in step with
 * sendCodecs in index.html's head script.
 */
export function sendCodecs(kind) {
  const send = globalThis.RTCRtpSender?.getCapabilities?.(kind)?.codecs;
  const recv = globalThis.RTCRtpReceiver?.getCapabilities?.(kind)?.codecs;
  if (!send || !recv) return null;
  const key = (c) => [c.mimeType.toLowerCase(), c.clockRate, c.channels ?? '', c.sdpFmtpLine ?? ''].join(' ');
  const sendable = new Set(send.map(key));
  const list = recv.filter((c) => sendable.has(key(c)));
  return list.length ? list : null;
}

function iceToConnectionState(ice) {
  switch (ice) {
    case 'checking':
      return 'connecting';
    case 'connected':
    case 'completed':
      return 'connected';
    default:
      return ice; // new, disconnected, failed, closed
  }
}

/** Maps each m-section's mid to its MediaStream id (a=msid, else a=ssrc … msid:). */
export function parseMsidByMid(sdp) {
  const map = new Map();
  for (const section of sdp.split(/\r?\n(?=m=)/).slice(1)) {
    const mid = /^a=mid:(\S+)/m.exec(section)?.[1];
    const msid = /^a=msid:(\S+)/m.exec(section)?.[1] ?? /^a=ssrc:\d+ msid:(\S+)/m.exec(section)?.[1];
    if (mid && msid && msid !== '-') map.set(mid, msid);
  }
  return map;
}
