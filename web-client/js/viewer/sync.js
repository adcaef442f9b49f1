// Sync: the shared viewer over the call's data channel (docs/collaboration.md). Sends `hello`
// with the last annotation seq seen whenever the channel opens (kept in sessionStorage per
// room together with the annotations, so a reconnect or reload resumes with `changes`);
// follows the presenter's `viewer` state and laser pointer; as presenter, sends the state
// coalesced to one message per animation frame and only when it changed. A follower who
// navigates on their own is detached until they click Follow. Also the presenter controls.

import { Emitter } from '../call/signaling.js';

const STORE_PREFIX = 'consilium.collab.';
/** Relayed (not a collaboration type): tells the others to reload the study list. */
export const STUDIES_CHANGED = 'studies_changed';

export class ViewerSync extends Emitter {
  /**
   * @param {import('../call/session.js').Session} session
   * @param {import('./viewer.js').Viewer} viewer
   * @param {import('../annotation/layer.js').AnnotationLayer} annotations
   */
  constructor(session, viewer, annotations) {
    super();
    this.session = session;
    this.viewer = viewer;
    this.annotations = annotations;
    this.room = session.room;
    this.presenter = null;
    this.requests = [];
    this.following = true;
    this.presenterState = null;
    this.seq = null;
    this.synced = false; // a snapshot or changes arrived on the current channel
    this._sentState = '';
    this._sentPointer = '';
    this._stateRaf = 0;
    this._pointerRaf = 0;
    this._pendingPointer = undefined;
    this.log = [];
    this._restore();

    this._offs = [
      session.on('data-open', () => this._hello()),
      session.on('data-close', () => {
        this.synced = false;
        this._render();
      }),
      session.on('data', (msg) => this._onMessage(msg)),
      session.on('participants', () => this._render()),
      // Tiles appear a moment after the participant (their media starts later).
      session.on('remote-media', () => setTimeout(() => this._render(), 0)),
      session.on('joined', () => this._render()),
      viewer.on('change', (ev) => this._onViewerChange(ev)),
      viewer.on('pointer', (p) => this._onPointer(p)),
    ];
    viewer.syncEl.addEventListener('click', (ev) => this._onClick(ev));
    viewer.syncEl.addEventListener('change', (ev) => this._onSelect(ev));
    if (session.dataChannel?.readyState === 'open') this._hello();
    this._render();
  }

  destroy() {
    for (const off of this._offs) off();
    clearTimeout(this._saveTimer);
    cancelAnimationFrame(this._stateRaf);
    cancelAnimationFrame(this._pointerRaf);
  }

  get me() {
    return this.session.participantId;
  }

  get isPresenter() {
    return !!this.presenter && this.presenter === this.me;
  }

  get isHost() {
    return this.session.role === 'host';
  }

  nameOf(id) {
    if (!id) return '';
    if (id === this.me) return this.session.name;
    return this.session.participants.get(id)?.name ?? 'Someone';
  }

  // ---------------------------------------------------------------- persistence

  _restore() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(STORE_PREFIX + this.room) || 'null');
      if (saved && Number.isFinite(saved.seq)) {
        this.seq = saved.seq;
        this.annotations.reset(saved.annotations ?? []);
        // `changes` does not repeat who presents and what: a reloaded page starts from what
        // it last knew, corrected by the next `viewer` / `presenter` message.
        this._saved = { presenter: saved.presenter ?? null, viewer: saved.viewer ?? null };
      }
    } catch {
      /* unreadable: start from a snapshot */
    }
  }

  _save() {
    try {
      const annotations = [...this.annotations.items.values()];
      sessionStorage.setItem(
        STORE_PREFIX + this.room,
        JSON.stringify({ seq: this.seq, annotations, presenter: this.presenter, viewer: this.presenterState }),
      );
    } catch {
      // Full or unavailable: without the annotations a `since` would be wrong.
      try {
        sessionStorage.removeItem(STORE_PREFIX + this.room);
      } catch {
        /* nothing to do */
      }
    }
  }

  /** The presenter's view changes per frame: persist it at most twice a second. */
  _saveSoon() {
    if (this._saveTimer) return;
    this._saveTimer = setTimeout(() => {
      this._saveTimer = null;
      if (this.seq !== null) this._save();
    }, 500);
  }

  _setSeq(seq) {
    if (Number.isFinite(seq) && (this.seq === null || seq > this.seq)) this.seq = seq;
  }

  // ---------------------------------------------------------------- protocol

  _send(msg) {
    return this.session.sendData(msg);
  }

  _hello() {
    this.synced = false;
    this._sentState = '';
    const sent = this._send({ type: 'hello', since: this.seq });
    this.log.push({ at: Math.round(performance.now()), type: 'sent hello', seq: this.seq, sent });
  }

  _onMessage(msg) {
    if (!msg || typeof msg !== 'object') return;
    // The last protocol messages, for debugging (window.consiliumViewer.syncLog()).
    this.log.push({ at: Math.round(performance.now()), type: msg.type ?? 'relay', seq: msg.seq, part: msg.part, more: msg.more, n: msg.annotations?.length ?? msg.events?.length, op: msg.op, code: msg.code });
    if (this.log.length > 200) this.log.splice(0, 100);
    if (msg.error && !msg.type) {
      // docs/protocol.md's answer to a frame the server could not read at all.
      console.warn('[consilium] data channel frame refused', msg.error);
      return;
    }
    if (msg.from !== undefined && msg.msg) {
      if (msg.msg.type === STUDIES_CHANGED) this.viewer.refresh();
      return;
    }
    switch (msg.type) {
      case 'snapshot':
        // A large snapshot comes in parts (`part` 0, 1, … while `more`); the first one
        // carries the viewer state and replaces what this page had.
        if (!msg.part) {
          this.annotations.reset(msg.annotations ?? []);
          this.annotations.setAuthorKey(msg.author_key);
          const first = !this._everSynced;
          this._setPresenter(msg.presenter ?? null, msg.requests ?? this.requests);
          if (msg.viewer && this.isPresenter && first) {
            // A page that starts presenting picks up where the room left off.
            this.viewer.applyState(msg.viewer).then(() => this._scheduleState());
          } else if (msg.viewer) this._onPresenterState(msg.viewer);
        } else this.annotations.append(msg.annotations ?? []);
        if (!msg.more) {
          this.seq = Number.isFinite(msg.seq) ? msg.seq : null;
          this._afterSync();
        }
        break;
      case 'changes':
        // Part 0 says who presents now and what they show (a resume missed both); a
        // server that predates those fields leaves us to what this tab saved.
        if (!msg.part) this.annotations.setAuthorKey(msg.author_key);
        if (!msg.part && 'presenter' in msg) {
          this._resumed = { presenter: msg.presenter ?? null, requests: msg.requests ?? [], viewer: msg.viewer ?? null };
        }
        for (const ev of msg.events ?? []) {
          this.annotations.apply(ev);
          this._setSeq(ev.seq);
        }
        if (!msg.more) {
          this._setSeq(msg.seq);
          const first = !this._everSynced;
          const resumed = this._resumed;
          this._resumed = null;
          this._afterSync();
          if (resumed) {
            this._saved = null;
            this._setPresenter(resumed.presenter, resumed.requests);
            if (resumed.viewer && this.isPresenter && first) {
              this.viewer.applyState(resumed.viewer).then(() => this._scheduleState());
            } else if (resumed.viewer && !this.isPresenter) this._onPresenterState(resumed.viewer);
          } else if (first) this._resumeSaved();
          // A presenter who left while we were away (our own former id after a reconnect,
          // too) presents no more; a new one shows itself with its next viewer/pointer.
          else if (this.presenter && this.presenter !== this.me && !this.session.participants.has(this.presenter)) {
            this._setPresenter(null, this.requests);
          }
        }
        break;
      case 'annotation':
        this.annotations.apply(msg);
        this._setSeq(msg.seq);
        this._save();
        this.emit('annotations');
        break;
      case 'viewer':
        // Only the presenter's view is relayed: its sender presents (heals a stale id).
        if (msg.by && msg.by !== this.presenter) this._setPresenter(msg.by, this.requests);
        this._onPresenterState(msg.state);
        this._saveSoon();
        break;
      case 'pointer':
        if (msg.by && msg.by !== this.presenter) this._setPresenter(msg.by, this.requests);
        this._onPresenterPointer(msg);
        break;
      case 'presenter':
        this._setPresenter(msg.presenter ?? null, msg.requests ?? []);
        this._saveSoon();
        break;
      case 'error':
        console.warn('[consilium] viewer sync refused', msg);
        if (msg.ref) this.annotations.reject(msg.ref);
        // not_presenter: a view or pointer update that crossed a hand-over; nothing to show.
        if (msg.code !== 'not_presenter') this.viewer.toast(msg.message || `Refused: ${msg.code}`, { kind: 'error' });
        break;
      default:
        break;
    }
  }

  /** After a reload answered by `changes`: the presenter and view this tab last had. */
  _resumeSaved() {
    const saved = this._saved;
    this._saved = null;
    if (!saved) return;
    // Our own former id, or someone who left, does not present any more.
    const known = saved.presenter && this.session.participants.has(saved.presenter);
    if (known && this.presenter === null) this._setPresenter(saved.presenter, this.requests);
    if (saved.viewer) this._onPresenterState(saved.viewer);
  }

  _afterSync() {
    this.synced = true;
    // After a reconnect: studies uploaded meanwhile were announced while we were away.
    if (this._everSynced) this.viewer.refresh();
    this._everSynced = true;
    this._save();
    this.annotations.resendPending();
    this.emit('annotations');
    this.emit('synced');
    this._render();
  }

  _setPresenter(id, requests) {
    const was = this.presenter;
    this.presenter = id;
    this.requests = Array.isArray(requests) ? requests : [];
    if (id !== was) {
      if (this.isPresenter) {
        // Start presenting from what this page shows now, even if it is what this page last
        // sent when it presented before: the others have followed someone else since.
        this.following = true;
        this._sentState = '';
        this._scheduleState();
      } else if (id && was === this.me) {
        this.following = true;
      }
      for (const vp of this.viewer.viewports) vp.setPointer(null);
    }
    this.emit('presenter', id);
    this._render();
  }

  _onPresenterState(state) {
    if (!state || typeof state !== 'object') return;
    this.presenterState = state;
    if (this.following && !this.isPresenter) this.viewer.applyState(state);
  }

  _onPresenterPointer({ viewport, x, y }) {
    if (!this.following || this.isPresenter) return;
    const name = this.nameOf(this.presenter);
    this.viewer.viewports.forEach((vp, i) => {
      vp.setPointer(i === viewport && Number.isFinite(x) && Number.isFinite(y) ? { x, y, name } : null);
    });
  }

  _onViewerChange({ local }) {
    if (this.isPresenter) {
      this._scheduleState();
      return;
    }
    if (local && this.following && this.presenter) {
      this.following = false;
      for (const vp of this.viewer.viewports) vp.setPointer(null);
      this._render();
    }
  }

  /** At most one `viewer` per animation frame, and only if it differs from the last sent. */
  _scheduleState() {
    if (this._stateRaf) return;
    this._stateRaf = requestAnimationFrame(() => {
      this._stateRaf = 0;
      if (!this.isPresenter) return;
      const state = this.viewer.getState();
      // Nothing open yet (the study list still loading): keep the room's last view.
      if (!state.viewports.some((v) => v.series)) return;
      const json = JSON.stringify(state);
      if (json === this._sentState) return;
      if (this._send({ type: 'viewer', state })) {
        this._sentState = json;
        this.presenterState = state;
        this._saveSoon();
      }
    });
  }

  _onPointer(p) {
    if (!this.isPresenter) return;
    this._pendingPointer = p;
    if (this._pointerRaf) return;
    this._pointerRaf = requestAnimationFrame(() => {
      this._pointerRaf = 0;
      const q = this._pendingPointer;
      const msg = q ? { type: 'pointer', viewport: q.viewport, x: Math.round(q.x * 10) / 10, y: Math.round(q.y * 10) / 10 } : { type: 'pointer', viewport: null, x: null, y: null };
      const json = JSON.stringify(msg);
      if (json === this._sentPointer) return;
      if (this._send(msg)) this._sentPointer = json;
    });
  }

  // ---------------------------------------------------------------- controls

  follow() {
    this.following = true;
    if (this.presenterState && !this.isPresenter) this.viewer.applyState(this.presenterState);
    this._render();
  }

  detach() {
    this.following = false;
    for (const vp of this.viewer.viewports) vp.setPointer(null);
    this._render();
  }

  presenterAction(action, to = undefined) {
    this._send(to ? { type: 'presenter', action, to } : { type: 'presenter', action });
  }

  _onClick(ev) {
    const b = ev.target.closest('button[data-sync]');
    if (!b) return;
    const a = b.dataset.sync;
    if (a === 'follow') this.follow();
    else if (a === 'detach') this.detach();
    else if (a === 'request') this.presenterAction('request');
    else if (a === 'release') this.presenterAction('release');
    else if (a === 'take') this.presenterAction('take');
    else if (a === 'grant') this.presenterAction('grant', b.dataset.to);
  }

  _onSelect(ev) {
    const sel = ev.target.closest('select[data-sync="handover"]');
    if (!sel || !sel.value) return;
    this.presenterAction('grant', sel.value);
    sel.value = '';
  }

  _render() {
    const el = this.viewer.syncEl;
    const root = this.viewer.root;
    const mode = this.isPresenter ? 'presenting' : !this.presenter ? 'none' : this.following ? 'following' : 'detached';
    root.dataset.syncMode = mode;
    root.dataset.following = String(this.following && !!this.presenter && !this.isPresenter);
    root.dataset.presenter = this.presenter ?? '';
    // Observers only watch: the server refuses their annotations, so no tools are offered.
    root.dataset.role = this.session.role ?? '';
    // The presenter's video tile is outlined, so everyone sees whose screen they follow.
    for (const tile of document.querySelectorAll('figure.tile[data-participant-id]')) {
      tile.dataset.presenting = String(!!this.presenter && tile.dataset.participantId === this.presenter);
    }
    const badge = document.createElement('span');
    badge.className = 'vw-presenter';
    badge.dataset.mode = mode;
    badge.textContent =
      mode === 'presenting' ? 'You are presenting' : mode === 'none' ? 'No presenter' : `${this.nameOf(this.presenter)} presents${mode === 'detached' ? ' · you browse alone' : ''}`;
    const btn = (sync, label, title, extra = '') => {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = `vw-btn ${extra}`.trim();
      b.dataset.sync = sync;
      b.textContent = label;
      b.title = title;
      return b;
    };
    const parts = [badge];
    if (mode === 'following') parts.push(btn('detach', 'Browse alone', 'Stop following the presenter and look around on your own'));
    if (mode === 'detached') parts.push(btn('follow', 'Follow presenter', `Go back to what ${this.nameOf(this.presenter)} shows`, 'vw-primary'));
    if (!this.isPresenter) {
      const asked = this.requests.includes(this.me);
      if (this.isHost) parts.push(btn('take', 'Present', 'Take over presenting'));
      else {
        const b = btn('request', asked ? 'Requested…' : 'Request to present', 'Ask the host to let you present');
        b.disabled = asked;
        parts.push(b);
      }
    } else {
      const others = [...this.session.participants.values()].filter((p) => p.role !== 'observer');
      if (others.length) {
        const sel = document.createElement('select');
        sel.className = 'vw-preset';
        sel.dataset.sync = 'handover';
        sel.setAttribute('aria-label', 'Hand over presenting');
        sel.innerHTML = '<option value="">Hand over to…</option>';
        for (const p of others) {
          const o = document.createElement('option');
          o.value = p.id;
          o.textContent = `${p.name}${this.requests.includes(p.id) ? ' (asks)' : ''}`;
          sel.append(o);
        }
        parts.push(sel);
      }
      parts.push(btn('release', 'Stop presenting', 'Let everyone browse on their own'));
    }
    if (this.isHost || this.isPresenter) {
      for (const id of this.requests.filter((r) => r !== this.me).slice(0, 2)) {
        parts.push(btn('grant', `Let ${this.nameOf(id)} present`, `${this.nameOf(id)} asks to present`, 'vw-primary'));
        parts.at(-1).dataset.to = id;
      }
    }
    el.replaceChildren(...parts);
  }
}
