// Tiles: one tile per remote participant that has live media, plus the self view.
// A tile exists while the participant is known (joined / participant_joined) AND
// their MediaStream has live tracks; it is reconciled on every change.

import { Emitter } from './signaling.js';
import { mark, timings } from './timings.js';

const ICON_MIC_OFF =
  '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M9 5a3 3 0 0 1 6 0v5M15 13.5A3 3 0 0 1 9 11V9M5 11a7 7 0 0 0 11.5 5.4M19 11a7 7 0 0 1-.6 2.8M12 18v3M3 3l18 18"/></svg>';
const ICON_CAM_OFF =
  '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M3 3l18 18M10.5 6H14a2 2 0 0 1 2 2v3.5l5-3.5v8M16 16a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V8a2 2 0 0 1 2-2"/></svg>';

export function initials(name) {
  const parts = String(name || '?')
    .replace(/^(dr|prof|mr|mrs|ms)\.?\s+/i, '')
    .split(/\s+/)
    .filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[parts.length - 1][0] : (parts[0] || '?').slice(0, 2);
  return letters.toUpperCase();
}

// Track objects → serial numbers: two receivers may expose tracks with the same id.
const trackKeys = new WeakMap();
let nextTrackKey = 1;
function trackKey(track) {
  if (!trackKeys.has(track)) trackKeys.set(track, nextTrackKey++);
  return trackKeys.get(track);
}

/** The tracks of a stream, as one comparable string. */
function signatureOf(stream) {
  return (stream?.getTracks() ?? [])
    .map(trackKey)
    .sort((x, y) => x - y)
    .join(',');
}

const TILE_AVATAR_HTML = '<div class="tile-avatar" aria-hidden="true"><span></span></div>';
const TILE_LABEL_HTML = `<figcaption class="tile-label">
  <span class="tile-name"></span>
  <span class="tile-role"></span>
  <span class="tile-icon tile-mic-off" role="img" aria-label="Microphone muted" title="Microphone muted">${ICON_MIC_OFF}</span>
  <span class="tile-icon tile-cam-off" role="img" aria-label="Camera off" title="Camera off">${ICON_CAM_OFF}</span>
</figcaption>`;

const ROLE_LABELS = { host: 'Host', presenter: 'Presenter', observer: 'Observer' };

/** Calls play(); if autoplay with sound is refused, plays muted and reports it. */
function safePlay(video, onBlocked) {
  const p = video.play();
  if (!p || !p.catch) return;
  p.catch((err) => {
    if (err?.name !== 'NotAllowedError') return; // AbortError: a newer load replaced it
    video.muted = true;
    video.play().catch(() => {});
    onBlocked?.();
  });
}

/**
 * Records the first remote video frame presented: the time requestVideoFrameCallback hands
 * to its callback where available, else the 'playing' (or first 'resize') event.
 */
function watchFirstFrame(video) {
  if ('first_remote_video_frame' in timings) return;
  if (typeof video.requestVideoFrameCallback === 'function') {
    video.requestVideoFrameCallback((now) => mark('first_remote_video_frame', now));
  } else {
    video.addEventListener(
      'playing',
      () => {
        if (video.videoWidth > 0) mark('first_remote_video_frame');
        else video.addEventListener('resize', () => mark('first_remote_video_frame'), { once: true });
      },
      { once: true },
    );
  }
}

export class TileGrid extends Emitter {
  /**
   * @param {HTMLElement} container  the grid element
   * @param {import('./session.js').Session} session
   */
  constructor(container, session) {
    super();
    this.container = container;
    this.session = session;
    /** participant id → {el, video, stream, signature} */
    this.tiles = new Map();
    this.soundBlocked = false;
    this._timer = null;
    this._offs = [
      session.on('participants', () => this._schedule()),
      session.on('remote-media', () => this._schedule()),
    ];
    // The head script's early tiles stay where they are (moving a playing video pauses it).
    for (const el of [...this.container.children]) if (!el.classList.contains('tile-early')) el.remove();
    this.sync();
  }

  destroy() {
    for (const off of this._offs) off();
    clearTimeout(this._timer);
    for (const id of [...this.tiles.keys()]) this._remove(id);
    for (const el of this._earlyTiles()) {
      el.querySelector('video').srcObject = null;
      el.remove();
    }
  }

  /**
   * The early tiles (index.html's head script) not yet adopted: each plays one receive slot
   * pair of the early PeerConnection, hidden until the answer put a video track on it.
   */
  _earlyTiles() {
    return [...this.container.querySelectorAll(':scope > .tile-early')];
  }

  /**
   * An early tile playing one of `stream`'s tracks, made a plain tile; or null. (A track
   * that came by renegotiation may be seen before its pair's other one: its tile is
   * adopted all the same, and gets the stream as its srcObject below.)
   */
  _adoptEarlyTile(stream) {
    const tracks = stream.getTracks();
    for (const el of this._earlyTiles()) {
      const video = el.querySelector('video');
      if (!video?.srcObject?.getTracks().some((t) => tracks.includes(t))) continue;
      el.classList.remove('tile-early');
      el.hidden = false;
      el.querySelector('.tile-media').insertAdjacentHTML('beforeend', TILE_AVATAR_HTML);
      el.insertAdjacentHTML('beforeend', TILE_LABEL_HTML);
      return { el, video };
    }
    return null;
  }

  /** After autoplay with sound was refused: called from a user gesture. */
  enableSound() {
    this.soundBlocked = false;
    for (const { video } of this.tiles.values()) {
      video.muted = false;
      video.play().catch(() => {});
    }
  }

  _schedule() {
    if (this._timer) return;
    this._timer = setTimeout(() => {
      this._timer = null;
      this.sync();
    }, 0);
  }

  sync() {
    const { participants, remoteStreams } = this.session;
    const keep = new Set();
    for (const [id, p] of participants) {
      const stream = remoteStreams.get(id);
      if (!stream || !stream.getTracks().some((t) => t.readyState === 'live')) continue;
      keep.add(id);
      this._upsert(id, p, stream);
    }
    for (const id of [...this.tiles.keys()]) if (!keep.has(id)) this._remove(id);
    // An early tile nobody adopted counts while it shows something (its answer gave it a
    // track that is not over).
    let early = 0;
    for (const el of this._earlyTiles()) {
      if (!el.querySelector('video').srcObject?.getVideoTracks().some((t) => t.readyState === 'live')) el.hidden = true;
      if (!el.hidden) early++;
    }
    const count = this.tiles.size + early;
    this.container.dataset.count = String(count);
    this.emit('count', count);
  }

  _upsert(id, p, stream) {
    let tile = this.tiles.get(id);
    if (!tile) {
      const early = this._adoptEarlyTile(stream);
      if (early) {
        // Already playing these tracks (its own MediaStream of them): no new srcObject, so
        // the picture on screen goes on; only the sound is turned on below.
        tile = { ...early, stream, signature: signatureOf(early.video.srcObject), adopted: true };
      } else {
        const el = document.createElement('figure');
        el.className = 'tile';
        el.innerHTML = `<div class="tile-media"><video autoplay playsinline></video>${TILE_AVATAR_HTML}</div>${TILE_LABEL_HTML}`;
        tile = { el, video: el.querySelector('video'), stream: null, signature: '' };
        this.container.append(el);
      }
      tile.el.dataset.participantId = id;
      tile.video.dataset.participantId = id;
      this.tiles.set(id, tile);
    }
    const { el, video } = tile;
    const name = p.name || 'Participant';
    video.dataset.participant = name;
    video.setAttribute('aria-label', `Video of ${name}`);
    el.querySelector('.tile-name').textContent = name;
    el.querySelector('.tile-role').textContent = ROLE_LABELS[p.role] ?? '';
    el.querySelector('.tile-avatar span').textContent = initials(name);
    const hasVideo = stream.getVideoTracks().some((t) => t.readyState === 'live');
    el.dataset.audioMuted = String(!!p.audio_muted);
    el.dataset.videoMuted = String(!!p.video_muted);
    el.dataset.hasVideo = String(hasVideo);

    // Re-assign srcObject whenever the set of tracks changed: every browser then picks
    // up added/removed tracks (in-place addTrack on a playing stream is not reliable).
    const signature = signatureOf(stream);
    const adopted = tile.adopted;
    tile.adopted = false;
    if (adopted || tile.stream !== stream || tile.signature !== signature) {
      if (tile.stream !== stream || tile.signature !== signature) video.srcObject = stream;
      tile.stream = stream;
      tile.signature = signature;
      video.muted = this.soundBlocked;
      watchFirstFrame(video);
      safePlay(video, () => {
        if (!this.soundBlocked) {
          this.soundBlocked = true;
          this.emit('sound-blocked');
        }
      });
    }
  }

  _remove(id) {
    const tile = this.tiles.get(id);
    if (!tile) return;
    tile.video.srcObject = null;
    tile.el.remove();
    this.tiles.delete(id);
  }
}

/** The local preview: a muted, mirrored video without data-participant. */
export class SelfView {
  constructor(container, session) {
    this.container = container;
    this.session = session;
    container.innerHTML = `
      <video data-self="true" autoplay playsinline muted aria-label="Your camera preview"></video>
      <div class="tile-avatar" aria-hidden="true"><span></span></div>
      <span class="self-label">You</span>`;
    this.video = container.querySelector('video');
    this.video.muted = true; // the attribute alone is not enough in every browser
    container.querySelector('.tile-avatar span').textContent = initials(session.name);
    this._off = session.on('local-media', () => this.update());
    this.update();
  }

  update() {
    const { localStream, videoMuted } = this.session;
    if (localStream && this.video.srcObject !== localStream) {
      this.video.srcObject = localStream;
      this.video.play().catch(() => {});
    }
    const hasVideo = !!localStream?.getVideoTracks().some((t) => t.readyState === 'live');
    this.container.dataset.videoMuted = String(videoMuted || !hasVideo);
  }

  destroy() {
    this._off();
    this.video.srcObject = null;
    this.container.replaceChildren();
  }
}
