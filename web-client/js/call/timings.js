// Client-side timings, in ms since navigation start (performance.timeOrigin).
// Each mark is recorded once: the first occurrence wins, later calls are ignored.
//
//   wsOpen                 signaling WebSocket open
//   mediaReady             getUserMedia resolved (or failed and we go on without media)
//   joinSent               `join` sent
//   joined                 `joined` received
//   iceConnected           ICE connection state connected/completed
//   pcConnected            RTCPeerConnection connectionState connected (ICE + DTLS)
//   firstRemoteVideoFrame  first remote video frame presented
//   firstRemoteAudio       first remote audio received

import { Emitter } from './signaling.js';

export const timings = {};
const events = new Emitter();

/** Calls fn(name, ms) for every new mark. Returns an unsubscribe function. */
export function onMark(fn) {
  return events.on('mark', ({ name, t }) => fn(name, t));
}

export function mark(name) {
  if (Object.prototype.hasOwnProperty.call(timings, name)) return timings[name];
  const t = Math.round(performance.now() * 10) / 10;
  timings[name] = t;
  try {
    performance.mark(`consilium:${name}`);
  } catch {
    /* user timing unavailable: the number above is what matters */
  }
  events.emit('mark', { name, t });
  return t;
}
