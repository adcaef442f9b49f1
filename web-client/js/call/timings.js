// Client-side timings, in ms since navigation start (performance.timeOrigin).
// Each mark is recorded once per page: the first occurrence wins, later calls are ignored.
// The names are those of the `client_timings` signaling message (docs/protocol.md), so
// window.consilium.timings, the message and the server's histogram labels all agree.
//
//   ws_open                  signaling WebSocket open
//   media_ready              getUserMedia resolved (or failed and we go on without media)
//   join_sent                `join` sent (for a deep link by index.html's head script)  (local only)
//   joined                   `joined` received (when it arrived, also if it waited in the
//                            head script's buffer for the modules to load)
//   ice_connected            ICE connection state connected/completed
//   pc_connected             RTCPeerConnection connectionState connected    (local only)
//   first_remote_audio       first remote audio received
//   first_remote_video_frame first remote video frame presented (requestVideoFrameCallback)

import { Emitter } from './signaling.js';

export const timings = {};
const events = new Emitter();

/** The marks sent to the server in `client_timings`, in protocol order. */
export const CLIENT_TIMINGS_PHASES = [
  'ws_open',
  'joined',
  'ice_connected',
  'first_remote_video_frame',
  'first_remote_audio',
  'media_ready',
];

/** The server refuses values outside [0, 600 000) ms; such a mark is left out instead. */
export const CLIENT_TIMINGS_MAX_MS = 600_000;

/** Calls fn(name, ms) for every new mark. Returns an unsubscribe function. */
export function onMark(fn) {
  return events.on('mark', ({ name, t }) => fn(name, t));
}

/**
 * Records `name` at `at` (a performance.now()-style timestamp, e.g. the one a
 * requestVideoFrameCallback callback receives), or now. Returns the recorded time.
 */
export function mark(name, at = performance.now()) {
  if (Object.prototype.hasOwnProperty.call(timings, name)) return timings[name];
  const t = Math.round(at * 10) / 10;
  timings[name] = t;
  try {
    performance.mark(`consilium:${name}`, { startTime: at });
  } catch {
    /* user timing unavailable: the number above is what matters */
  }
  events.emit('mark', { name, t });
  return t;
}

/** The `timings` object of the `client_timings` message: the plausible marks recorded so far. */
export function clientTimings(src = timings) {
  const out = {};
  for (const name of CLIENT_TIMINGS_PHASES) {
    const v = src[name];
    if (typeof v === 'number' && Number.isFinite(v) && v >= 0 && v < CLIENT_TIMINGS_MAX_MS) out[name] = v;
  }
  return out;
}

let reported = false;

/**
 * The `client_timings` payload, once per page (later calls return null): the marks are
 * per page too, so a second call in the same page would report the same moments again.
 */
export function takeClientTimings() {
  if (reported) return null;
  reported = true;
  return clientTimings();
}
