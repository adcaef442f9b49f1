// Connection indicator: #connection-state with data-state in
// idle | connecting | connected | reconnecting | failed | left, and readable text.

import { onMark, timings } from './timings.js';

const TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  failed: 'Connection failed',
  left: 'You left the consultation',
};

export class ConnectionIndicator {
  /** @param {HTMLElement} el */
  constructor(el) {
    this.el = el;
    this.textEl = el.querySelector('.state-text') ?? el;
    this.state = 'idle';
    this._offSession = null;
    onMark((name) => {
      if (name === 'first_remote_video_frame') this.render();
    });
    this.render();
  }

  /** Follows a session's state (replacing the previous one). */
  follow(session) {
    this._offSession?.();
    this._offSession = session.on('state', (s) => this.set(s));
    this.set(session.state);
  }

  set(state) {
    this.state = state;
    this.render();
  }

  render() {
    const s = this.state;
    this.el.dataset.state = s;
    let text = TEXT[s] ?? s;
    if (s === 'connected' && 'first_remote_video_frame' in timings) {
      text = `Connected in ${Math.round(timings.first_remote_video_frame)} ms`;
    }
    this.textEl.textContent = text;
  }
}
