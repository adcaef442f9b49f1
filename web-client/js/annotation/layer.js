// Annotation layer: the room's annotations drawn on the viewports (image-pixel coordinates,
// so they stay on the anatomy through zoom and pan), the drawing tools (arrow, length,
// ellipse ROI, freehand outline, text) and select/edit/delete (edit.js). What this page draws
// or edits is shown at once, sent as `annotate` with a `ref`, and replaced by the server's
// `annotation` echo carrying that ref, or rolled back by an `error` carrying it
// (docs/collaboration.md); the server's order is the truth.

import { AnnotationEditor } from './edit.js';
import { computeStats, distToSegment, pointInPolygon, simplify, statsLines } from './geometry.js';

export const TOOLS = ['arrow', 'line', 'ellipse', 'freehand', 'text', 'select'];

const PALETTE = ['#ffd43b', '#4dabf7', '#69db7c', '#ff8787', '#da77f2', '#ffa94d', '#3bc9db', '#f783ac'];

/** A stable colour per author name, so someone keeps theirs across reconnects. */
export function colorFor(name) {
  let h = 2166136261;
  for (const ch of String(name)) h = Math.imul(h ^ ch.codePointAt(0), 16777619);
  return PALETTE[(h >>> 0) % PALETTE.length];
}

let refCounter = 0;
function newRef() {
  refCounter++;
  const rnd = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
  return `r${Date.now().toString(36)}${rnd}${refCounter}`;
}

export class AnnotationLayer {
  /**
   * @param {import('../viewer/viewer.js').Viewer} viewer
   * @param {{send: (msg: object) => boolean, me: () => {id: string|null, name: string, role: string|null}}} opts
   */
  constructor(viewer, { send, me }) {
    this.viewer = viewer;
    this.send = send;
    this.me = me;
    /** Server annotations by id, in seq order (Map keeps insertion order). */
    this.items = new Map();
    /** This page's annotations not yet echoed: ref → {annotation, sent} */
    this.pending = new Map();
    /** This page's edits not yet echoed: ref → {id}. */
    this.edits = new Map();
    /** The server's version of each annotation with an edit in flight, to roll back to. */
    this.confirmed = new Map();
    /** What this page's own annotations carry as `author_key` (from snapshot/changes). */
    this.authorKey = null;
    this.selected = null;
    this.draft = null; // the shape being drawn: {vp, kind, points}
    this.editor = new AnnotationEditor(this);
    viewer.drawAnnotations = (vp, ctx) => this.draw(vp, ctx);
    viewer.annotatedSlices = (series) => this.slicesOf(series);
    viewer.annotationInput = this;
    viewer.on('tool', (t) => {
      if (t !== 'select') this.select(null);
    });
  }

  // ---------------------------------------------------------------- model

  /** All annotations: the server's, then this page's pending ones (test hook). */
  list() {
    return [...this.items.values(), ...[...this.pending.values()].map((p) => ({ ...p.annotation, pending: true, ref: p.ref }))];
  }

  reset(list) {
    this.items.clear();
    this.edits.clear();
    this.confirmed.clear();
    for (const a of list ?? []) if (a?.id !== undefined) this.items.set(a.id, a);
    if (this.selected !== null && !this.items.has(this.selected)) this.select(null);
    this._updateDeleteButton();
    this._redraw();
  }

  /** The server told this page its author key (every snapshot and changes). */
  setAuthorKey(key) {
    if (typeof key !== 'string' || !key || key === this.authorKey) return;
    this.authorKey = key;
    this._updateDeleteButton();
    this._redraw();
  }

  append(list) {
    for (const a of list ?? []) if (a?.id !== undefined) this.items.set(a.id, a);
    this._redraw();
  }

  /** One `annotation` event (live, or from `changes`). */
  apply(ev) {
    if (ev.op === 'add' || ev.op === 'update') {
      const a = ev.annotation;
      if (!a || a.id === undefined) return;
      if (ev.ref && this.pending.has(ev.ref)) this.pending.delete(ev.ref);
      this.items.set(a.id, a);
      if (this.confirmed.has(a.id)) this.confirmed.set(a.id, a);
    } else if (ev.op === 'delete') {
      this.items.delete(ev.id);
      this.confirmed.delete(ev.id);
      if (this.selected === ev.id) this.select(null);
    }
    if (ev.ref && this.edits.has(ev.ref)) this._settle(ev.ref, false);
    this._updateDeleteButton();
    this._redraw();
  }

  /** The server refused the message with this ref: an add is dropped, an edit undone. */
  reject(ref) {
    if (!ref) return;
    if (this.pending.delete(ref)) this._redraw();
    else if (this.edits.has(ref)) {
      this._settle(ref, true);
      this._redraw();
    }
  }

  /** An edit was answered; once none is left in flight, show the server's version. */
  _settle(ref, rollback) {
    const { id } = this.edits.get(ref);
    this.edits.delete(ref);
    if ([...this.edits.values()].some((e) => e.id === id)) return;
    const base = this.confirmed.get(id);
    this.confirmed.delete(id);
    if (rollback && base && this.items.has(id)) this.items.set(id, base);
  }

  /**
   * Applies `patch` (points, text, color, stats, window) to annotation `id` at once and asks
   * the server for it; false when it may not or cannot be sent.
   */
  update(id, patch) {
    const a = this.items.get(id);
    if (!a || !this.canEdit(a)) return false;
    const ref = newRef();
    if (!this.send({ type: 'annotate', op: 'update', id, ref, annotation: patch })) {
      this.viewer.toast('Not connected: the change was not saved.', { kind: 'error' });
      return false;
    }
    if (!this.confirmed.has(id)) this.confirmed.set(id, a);
    this.edits.set(ref, { id });
    this.items.set(id, { ...a, ...patch, editing: true });
    this._redraw();
    return true;
  }

  /** Sends what the server has not acknowledged yet (after a reconnect). */
  resendPending() {
    // Edits in flight on the old connection were either stored (the snapshot or changes
    // just applied the server's version) or lost: undo what still shows as unconfirmed.
    for (const [id, base] of this.confirmed) if (this.items.get(id)?.editing) this.items.set(id, base);
    this.edits.clear();
    this.confirmed.clear();
    // One whose echo was lost with the old connection is already among the server's: keep
    // that one rather than store it twice.
    const key = (a) => `${a.author_name}|${a.kind}|${a.sop}|${a.frame ?? 1}|${JSON.stringify(a.points)}|${a.text ?? ''}`;
    const stored = new Set([...this.items.values()].map(key));
    for (const [ref, p] of this.pending) if (stored.has(key(p.annotation))) this.pending.delete(ref);
    for (const p of this.pending.values()) {
      p.sent = this.send({ type: 'annotate', op: 'add', ref: p.ref, annotation: p.annotation });
    }
  }

  /** Whether this page's author may edit `a`: the server's rule (author key), not a guess. */
  canEdit(a) {
    if (!a || a.pending || a.id === undefined) return false;
    if (a.author_key && this.authorKey) return a.author_key === this.authorKey;
    return a.author === this.me().id; // a server from before author keys
  }

  canDelete(a) {
    return this.canEdit(a) || (!!a && !a.pending && this.me().role === 'host');
  }

  isOnImage(vp, a) {
    const s = vp.series;
    const sl = vp.slice;
    return !!(s && sl && a.series === s.uid && a.sop === sl.sop && (a.frame ?? 1) === sl.frame);
  }

  /** The window `vp` shows (stored with an annotation for the GSPS export), if grey-scale. */
  windowOf(vp) {
    if (!vp.series || vp.series.isColor) return undefined;
    const r = (v) => Math.round(v * 100) / 100;
    return { ww: r(Math.max(0.01, vp.state.ww)), wc: r(vp.state.wc) };
  }

  select(id) {
    if (this.selected === id) return;
    this.selected = id;
    this.viewer.root.dataset.selectedAnnotation = id ?? '';
    this._updateDeleteButton();
    this._redraw();
  }

  _updateDeleteButton() {
    const btn = this.viewer.toolbar.querySelector('[data-action="delete-annotation"]');
    if (btn) btn.disabled = !this.canDelete(this.items.get(this.selected));
  }

  deleteSelected() {
    const a = this.items.get(this.selected);
    if (!a) return false;
    if (!this.canDelete(a)) {
      this.viewer.toast(`Only ${a.author_name || 'its author'} or the host can delete this annotation.`, { kind: 'error' });
      return true;
    }
    this.send({ type: 'annotate', op: 'delete', id: a.id, ref: newRef() });
    return true;
  }

  _add(vp, kind, points, text = null) {
    const s = vp.series;
    const sl = vp.slice;
    if (!s || !sl) return;
    const me = this.me();
    const annotation = {
      kind,
      study: s.study,
      series: s.uid,
      sop: sl.sop,
      frame: sl.frame,
      points: points.map(([x, y]) => [round2(x), round2(y)]),
      text,
      color: colorFor(me.name),
      stats: computeStats(kind, s, vp.state.slice, vp.frame, points),
    };
    const window = this.windowOf(vp);
    if (window) annotation.window = window;
    const ref = newRef();
    const sent = this.send({ type: 'annotate', op: 'add', ref, annotation });
    this.pending.set(ref, { ref, annotation: { ...annotation, author: me.id, author_name: me.name, author_key: this.authorKey }, sent });
    this._redraw();
  }

  _redraw() {
    for (const vp of this.viewer.viewports) vp.invalidateOverlay();
  }

  // ---------------------------------------------------------------- input

  handles(tool) {
    return TOOLS.includes(tool);
  }

  onKey(ev) {
    if ((ev.key === 'Delete' || ev.key === 'Backspace') && this.selected !== null) return this.deleteSelected();
    if ((ev.key === 'c' || ev.key === 'C') && this.selected !== null) return this.editor.recolor();
    if (ev.key === 'Enter' && this.selected !== null) {
      return this.editor.retype(this.viewer.viewports[this.viewer.active]);
    }
    if (ev.key === 'Escape') {
      if (this.draft) {
        this.draft = null;
        this._redraw();
      } else this.select(null);
      return true;
    }
    return false;
  }

  pointerDown(vp, ev) {
    const tool = this.viewer.tool;
    const el = vp.el;
    const pt = () => vp.clientToImage(ev.clientX, ev.clientY);
    if (tool === 'select') {
      this.editor.pointerDown(vp, ev);
      return;
    }
    if (tool === 'text') {
      const point = pt();
      this.textInput(vp, ev.clientX, ev.clientY, { onCommit: (text) => text && this._add(vp, 'text', [point], text) });
      return;
    }
    const start = pt();
    this.draft = { vp, kind: tool, points: tool === 'freehand' ? [start] : [start, start] };
    el.setPointerCapture(ev.pointerId);
    const move = (e) => {
      const p = vp.clientToImage(e.clientX, e.clientY);
      if (tool === 'freehand') this.draft.points.push(p);
      else this.draft.points[1] = p;
      vp.invalidateOverlay();
    };
    const up = () => {
      el.removeEventListener('pointermove', move);
      el.removeEventListener('pointerup', up);
      el.removeEventListener('pointercancel', cancel);
      const d = this.draft;
      this.draft = null;
      if (!d) return;
      const minImg = 3 / (vp.scale / vp.dpr); // 3 CSS pixels, in image pixels
      if (d.kind === 'freehand') {
        const pts = simplify(d.points, minImg / 2);
        if (pts.length >= 3) this._add(vp, 'freehand', pts);
      } else {
        const [a, b] = d.points;
        if (Math.hypot(b[0] - a[0], b[1] - a[1]) >= minImg) this._add(vp, d.kind, [a, b]);
      }
      vp.invalidateOverlay();
    };
    const cancel = () => {
      this.draft = null;
      up();
    };
    el.addEventListener('pointermove', move);
    el.addEventListener('pointerup', up);
    el.addEventListener('pointercancel', cancel);
  }

  /** A text box at a client point; `onCommit(text)` with the trimmed text on Enter or blur. */
  textInput(vp, clientX, clientY, { initial = '', onCommit }) {
    this.viewer.root.querySelector('.vw-text-input')?.remove();
    const input = document.createElement('input');
    input.className = 'vw-text-input';
    input.maxLength = 200;
    input.value = initial;
    input.placeholder = initial ? 'Label, Enter to save' : 'Label, Enter to place';
    input.setAttribute('aria-label', 'Annotation text');
    const r = this.viewer.root.getBoundingClientRect();
    input.style.left = `${clientX - r.left}px`;
    input.style.top = `${clientY - r.top}px`;
    this.viewer.root.append(input);
    let done = false;
    const finish = (commit) => {
      if (done) return;
      done = true;
      const text = input.value.trim();
      input.remove();
      if (commit) onCommit(text);
      vp.el.focus({ preventScroll: true });
    };
    input.addEventListener('keydown', (e) => {
      e.stopPropagation();
      if (e.key === 'Enter') finish(true);
      if (e.key === 'Escape') finish(false);
    });
    // Focused now so no keystroke typed right after the click is lost; again after the
    // click's own focus handling has run.
    input.focus();
    setTimeout(() => {
      if (!done) input.focus();
      input.addEventListener('blur', () => finish(true));
    }, 0);
  }

  /** The id of the topmost annotation near a client point on this viewport's image, or null. */
  hitTest(vp, clientX, clientY) {
    const [x, y] = vp.clientToImage(clientX, clientY);
    const tol = 6 / (vp.scale / vp.dpr);
    const list = this._onImage(vp).filter((a) => !a.pending);
    for (let i = list.length - 1; i >= 0; i--) {
      const a = list[i];
      const p = a.points;
      let hit = false;
      if (a.kind === 'arrow' || a.kind === 'line') hit = distToSegment([x, y], p[0], p[1]) <= tol;
      else if (a.kind === 'ellipse') {
        const cx = (p[0][0] + p[1][0]) / 2;
        const cy = (p[0][1] + p[1][1]) / 2;
        const ra = Math.abs(p[1][0] - p[0][0]) / 2 + tol;
        const rb = Math.abs(p[1][1] - p[0][1]) / 2 + tol;
        hit = ((x - cx) / ra) ** 2 + ((y - cy) / rb) ** 2 <= 1;
      } else if (a.kind === 'freehand') {
        hit = pointInPolygon(x, y, p) || p.some((q, k) => distToSegment([x, y], q, p[(k + 1) % p.length]) <= tol);
      } else if (a.kind === 'text') hit = Math.abs(x - p[0][0]) < 60 * tol && y <= p[0][1] + 2 * tol && y >= p[0][1] - 4 * tol;
      if (hit) return a.id;
    }
    return null;
  }

  /** Slice indexes of `series` that carry at least one annotation. */
  slicesOf(series) {
    const mine = this.list().filter((a) => a.series === series.uid);
    if (!mine.length) return [];
    const want = new Set(mine.map((a) => `${a.sop}|${a.frame ?? 1}`));
    const out = [];
    series.slices.forEach((sl, i) => {
      if (want.has(`${sl.sop}|${sl.frame}`)) out.push(i);
    });
    return out;
  }

  // ---------------------------------------------------------------- drawing

  _onImage(vp) {
    return this.list().filter((a) => this.isOnImage(vp, a));
  }

  draw(vp, ctx) {
    const d = vp.dpr;
    for (const a of this._onImage(vp)) {
      const selected = a.id !== undefined && a.id === this.selected;
      const points = this.editor.pointsOf(vp, a);
      this._drawOne(vp, ctx, points === a.points ? a : { ...a, points, editing: true }, d, selected);
      if (selected) this.editor.drawHandles(vp, ctx, a);
    }
    if (this.draft && this.draft.vp === vp) {
      const me = this.me();
      this._drawOne(vp, ctx, { kind: this.draft.kind, points: this.draft.points, color: colorFor(me.name), author_name: me.name, draft: true }, d, false);
    }
  }

  _drawOne(vp, ctx, a, d, selected) {
    const pts = (a.points ?? []).map(([x, y]) => vp._imageToCanvas(x, y));
    if (!pts.length) return;
    const color = a.color || '#ffd43b';
    ctx.save();
    ctx.lineWidth = (selected ? 2.5 : 1.6) * d;
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineJoin = 'round';
    ctx.lineCap = 'round';
    ctx.shadowColor = 'rgba(0,0,0,0.9)';
    ctx.shadowBlur = 2 * d;
    if (a.pending) ctx.setLineDash([5 * d, 4 * d]);
    ctx.globalAlpha = a.pending || a.draft ? 0.75 : 1;
    let labelAt = pts[pts.length - 1];
    if (a.kind === 'arrow' || a.kind === 'line') {
      const [p, q] = pts;
      ctx.beginPath();
      ctx.moveTo(p[0], p[1]);
      ctx.lineTo(q[0], q[1]);
      ctx.stroke();
      if (a.kind === 'arrow') {
        const ang = Math.atan2(q[1] - p[1], q[0] - p[0]);
        const h = 12 * d;
        ctx.setLineDash([]);
        ctx.beginPath();
        ctx.moveTo(q[0], q[1]);
        ctx.lineTo(q[0] - h * Math.cos(ang - 0.45), q[1] - h * Math.sin(ang - 0.45));
        ctx.lineTo(q[0] - h * Math.cos(ang + 0.45), q[1] - h * Math.sin(ang + 0.45));
        ctx.closePath();
        ctx.fill();
        labelAt = p;
      } else {
        for (const e of [p, q]) {
          ctx.beginPath();
          ctx.arc(e[0], e[1], 2.5 * d, 0, Math.PI * 2);
          ctx.fill();
        }
      }
    } else if (a.kind === 'ellipse') {
      const [p, q] = pts;
      ctx.beginPath();
      ctx.ellipse((p[0] + q[0]) / 2, (p[1] + q[1]) / 2, Math.abs(q[0] - p[0]) / 2, Math.abs(q[1] - p[1]) / 2, 0, 0, Math.PI * 2);
      ctx.stroke();
      labelAt = [Math.max(p[0], q[0]) + 4 * d, Math.min(p[1], q[1])];
    } else if (a.kind === 'freehand') {
      ctx.beginPath();
      pts.forEach((p, i) => (i ? ctx.lineTo(p[0], p[1]) : ctx.moveTo(p[0], p[1])));
      if (!a.draft) ctx.closePath();
      ctx.stroke();
      labelAt = [Math.max(...pts.map((p) => p[0])) + 4 * d, Math.min(...pts.map((p) => p[1]))];
    } else if (a.kind === 'text') {
      const [p] = pts;
      ctx.beginPath();
      ctx.arc(p[0], p[1], 2.5 * d, 0, Math.PI * 2);
      ctx.fill();
      labelAt = [p[0] + 6 * d, p[1] - 2 * d];
    }
    if (!a.draft) {
      const lines = [];
      if (a.kind === 'text' && a.text) lines.push(a.text);
      else if (a.text) lines.push(a.text);
      lines.push(...statsLines(a.kind, a.stats));
      const who = `${a.author_name || 'Unknown'}${a.pending ? ' · sending…' : a.editing ? ' · saving…' : ''}`;
      ctx.setLineDash([]);
      ctx.shadowBlur = 3 * d;
      let y = labelAt[1];
      const x = labelAt[0] + 6 * d;
      ctx.font = `600 ${12.5 * d}px system-ui, sans-serif`;
      for (const l of lines) {
        ctx.fillText(l, x, y);
        y += 15 * d;
      }
      ctx.font = `${10.5 * d}px system-ui, sans-serif`;
      ctx.globalAlpha *= 0.85;
      ctx.fillText(who, x, y);
    }
    if (selected) {
      ctx.setLineDash([3 * d, 3 * d]);
      ctx.lineWidth = 1 * d;
      ctx.strokeStyle = '#ffffff';
      const xs = pts.map((p) => p[0]);
      const ys = pts.map((p) => p[1]);
      const pad = 6 * d;
      ctx.strokeRect(Math.min(...xs) - pad, Math.min(...ys) - pad, Math.max(...xs) - Math.min(...xs) + 2 * pad, Math.max(...ys) - Math.min(...ys) + 2 * pad);
    }
    ctx.restore();
  }
}

function round2(v) {
  return Math.round(v * 100) / 100;
}
