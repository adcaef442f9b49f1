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
 * The WebSocket index.html opened at page start for a deep link, if it is for `url` and still
 * usable: {ws, openedAt, messages, detach()}. Taken once; a rejoin opens a fresh socket.
 */
function takeEarlySocket(url) {
  const early = globalThis.__consiliumEarlySocket;
  if (!early) return null;
  globalThis.__consiliumEarlySocket = null;
  const ws = early.ws;
  if (ws && ws.url === url && (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN)) {
    return early;
  }
  early.detach?.();
  try {
    ws?.close();
  } catch {
    /* already closed */
  }
  return null;
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
  }

  /**
   * Opens the socket (or adopts the one the page opened at start). Resolves on open,
   * rejects if it closes or errors first.
   */
  open() {
    if (this.ws) throw new Error('signaling socket already opened');
    const early = takeEarlySocket(this.url);
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
      ws.addEventListener('open', () => onOpen(performance.now()));
      ws.addEventListener('message', (ev) => this.#onMessage(ev));
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
        for (const ev of early.messages.splice(0)) this.#onMessage(ev);
      }
    });
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  #onMessage(ev) {
    if (typeof ev.data !== 'string') {
      console.warn('[consilium] ignoring binary signaling frame');
      return;
    }
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      console.warn('[consilium] ignoring malformed signaling frame', ev.data);
      return;
    }
    if (!msg || typeof msg !== 'object' || typeof msg.type !== 'string') {
      console.warn('[consilium] ignoring signaling frame without type', msg);
      return;
    }
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
