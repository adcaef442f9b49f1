// Signaling: a thin WebSocket wrapper for the Consilium protocol (docs/protocol.md).
// One JSON object per text frame, each with a "type". Incoming messages are emitted
// under their type; outgoing messages go through the typed helpers below.

/** Minimal event emitter: on/off/once/emit, listener errors are isolated. */
export class Emitter {
  #handlers = new Map();

  on(type, fn) {
    if (!this.#handlers.has(type)) this.#handlers.set(type, new Set());
    this.#handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.#handlers.get(type)?.delete(fn);
  }

  once(type, fn) {
    const off = this.on(type, (detail) => {
      off();
      fn(detail);
    });
    return off;
  }

  emit(type, detail) {
    const set = this.#handlers.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(detail);
      } catch (err) {
        console.error(`[consilium] listener for "${type}" failed`, err);
      }
    }
  }
}

/** ws: or wss: URL of the signaling endpoint on the page's own host. */
export function signalingUrl(loc = window.location) {
  const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${loc.host}/ws`;
}

export const PROTOCOL_VERSION = 1;

/**
 * What index.html's head script started for a deep link, if its socket is for `url` and
 * still usable: {ws, openedAt, messages: [{data, at}], detach(), relay(sink), overHttp, call}.
 * `call` is the PeerConnection whose join that script sends (over HTTP, `POST /join`, the
 * socket naming the session key), see Session#_adoptEarlyCall; `relay` hands the socket's
 * messages over in order after the POST's reply.
 * Taken once per page: a rejoin opens a fresh socket.
 */
function takeEarlySocket(url) {
  const early = globalThis.__consiliumEarlySocket;
  if (!early) return null;
  globalThis.__consiliumEarlySocket = null;
  const ws = early.ws;
  // The socket of a join over HTTP names its session key: /ws?session=KEY.
  const base = ws?.url.split('?')[0];
  if (ws && base === url && (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN)) {
    return early;
  }
  discardEarly(early);
  return null;
}

/** Closes what the head script started (its `join`, if sent, dies with the socket). */
function discardEarly(early) {
  early.detach?.();
  early.call?.detach?.();
  early.call?.dropTiles?.();
  try {
    early.call?.pc.close();
  } catch {
    /* already closed */
  }
  try {
    early.ws?.close();
  } catch {
    /* already closed */
  }
}

/** Whether the head script's `join` is the one the session would send. */
function sameJoin(a, b) {
  return a.room === b.room && a.name === b.name && (a.token || null) === (b.token || null);
}

export class Signaling extends Emitter {
  /** @param {string} url */
  constructor(url) {
    super();
    this.url = url;
    /** @type {WebSocket | null} */
    this.ws = null;
    this.closedByUs = false;
    /** performance.now() when the socket opened. */
    this.openedAt = null;
    /**
     * performance.now() when the message being emitted arrived: earlier than now for one the
     * head script buffered before this module loaded.
     */
    this.receivedAt = null;
    /** What the head script started, once looked for (undefined before), see takeEarly(). */
    this._early = undefined;
  }

  /**
   * Takes, once, what index.html's head script started for a deep link: its socket, which
   * open() then adopts, and its `call` if that call's `join` has the fields of `join`
   * ({room, name, token}). Returns null if there is nothing usable (no deep link, socket
   * closed, already taken by an earlier attempt); a `call` for another join makes the whole
   * early start unusable (its `join` may already be on the socket), so it is closed.
   */
  takeEarly(join = null) {
    if (this._early !== undefined) return this._early;
    let early = takeEarlySocket(this.url);
    // A socket that names a session key carries only that join's session (no `join` on it).
    if (early && (early.call || early.overHttp) && !(early.call && join && sameJoin(early.call.join, join))) {
      discardEarly(early);
      early = null;
    }
    this._early = early;
    return early;
  }

  /**
   * Opens the socket (or adopts the one the page opened at start). Resolves on open,
   * rejects if it closes or errors first.
   */
  open() {
    if (this.ws) throw new Error('signaling socket already opened');
    const early = this.takeEarly();
    const ws = early ? early.ws : new WebSocket(this.url);
    this.ws = ws;
    return new Promise((resolve, reject) => {
      let opened = false;
      const onOpen = (at) => {
        if (opened) return;
        opened = true;
        this.openedAt = at;
        this.emit('open');
        resolve();
      };
      // The event's own time: the head script's listener (registered first) may already have
      // sent `join` in the microtasks between its callback and this one.
      ws.addEventListener('open', (ev) => onOpen(eventTime(ev)));
      // A join over HTTP: the head script orders the socket's messages after the POST's
      // reply and hands them over; otherwise they are the socket's own.
      if (early?.relay) early.relay((data, at) => this.#onMessage(data, at));
      else ws.addEventListener('message', (ev) => this.#onMessage(ev.data, performance.now()));
      ws.addEventListener('error', () => {
        if (!opened) reject(new Error(`cannot connect to ${this.url}`));
      });
      ws.addEventListener('close', (ev) => {
        if (!opened) reject(new Error(`cannot connect to ${this.url} (close ${ev.code})`));
        this.emit('close', {
          code: ev.code,
          reason: ev.reason,
          wasClean: ev.wasClean,
          byUs: this.closedByUs,
        });
      });
      if (early) {
        // Events the early socket already dispatched are not dispatched again.
        early.detach();
        if (ws.readyState === WebSocket.OPEN) onOpen(early.openedAt ?? performance.now());
        if (!early.relay) for (const m of early.messages.splice(0)) this.#onMessage(m.data, m.at);
      }
    });
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  #onMessage(data, receivedAt) {
    if (typeof data !== 'string') {
      console.warn('[consilium] ignoring binary signaling frame');
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      console.warn('[consilium] ignoring malformed signaling frame', data);
      return;
    }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') {
      console.warn('[consilium] ignoring signaling frame without type', msg);
      return;
    }
    this.receivedAt = receivedAt;
    this.emit('message', msg);
    this.emit(msg.type, msg);
  }

  /** Sends {type, ...fields}. Returns false when the socket is not open. */
  send(type, fields = {}) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify({ type, ...fields }));
    return true;
  }

  join({ room, name, token = null, offer }) {
    return this.send('join', { v: PROTOCOL_VERSION, room, name, token: token || null, offer });
  }

  /** @param {RTCIceCandidate | RTCIceCandidateInit | null} c  null = end of candidates */
  candidate(c) {
    const candidate = c
      ? {
          candidate: c.candidate,
          sdpMid: c.sdpMid ?? null,
          sdpMLineIndex: c.sdpMLineIndex ?? null,
          usernameFragment: c.usernameFragment ?? null,
        }
      : null;
    return this.send('candidate', { candidate });
  }

  answer(sdp) {
    return this.send('answer', { sdp });
  }

  mediaState({ audioMuted, videoMuted }) {
    return this.send('media_state', { audio_muted: !!audioMuted, video_muted: !!videoMuted });
  }

  /** @param {Record<string, number>} timings  ms since navigation start, see timings.js */
  clientTimings(timings) {
    return this.send('client_timings', { timings });
  }

  leave() {
    return this.send('leave');
  }

  ping() {
    return this.send('ping');
  }

  close(code = 1000, reason = '') {
    this.closedByUs = true;
    const ws = this.ws;
    if (ws && ws.readyState !== WebSocket.CLOSED && ws.readyState !== WebSocket.CLOSING) {
      ws.close(code, reason);
    }
  }
}

/** When an event happened, on the performance.now() clock (Event.timeStamp is on it). */
function eventTime(ev) {
  const t = ev?.timeStamp;
  return typeof t === 'number' && t > 0 && t <= performance.now() ? t : performance.now();
}
