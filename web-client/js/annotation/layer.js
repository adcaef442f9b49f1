// Annotation layer: the room's annotations drawn on the viewports (image-pixel coordinates,
// so they stay on the anatomy through zoom and pan), the drawing tools (arrow, length,
// ellipse ROI, freehand outline, text) and select/delete. What this page draws is shown at
// once as pending, sent as `annotate` with a `ref`, and replaced by the server's
// `annotation` echo carrying that ref (docs/collaboration.md); the server's order is the truth.

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
    this.selected = null;
    this.draft = null; // the shape being drawn: {vp, kind, points}
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
    for (const a of list ?? []) if (a?.id !== undefined) this.items.set(a.id, a);
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
    } else if (ev.op === 'delete') {
      this.items.delete(ev.id);
      if (this.selected === ev.id) this.select(null);
    }
    this._redraw();
  }

  /** The server refused the message with this ref. */
  reject(ref) {
    if (ref && this.pending.delete(ref)) this._redraw();
  }

  /** Sends what the server has not acknowledged yet (after a reconnect). */
  resendPending() {
    // One whose echo was lost with the old connection is already among the server's: keep
    // that one rather than store it twice.
    const key = (a) => `${a.author_name}|${a.kind}|${a.sop}|${a.frame ?? 1}|${JSON.stringify(a.points)}|${a.text ?? ''}`;
    const stored = new Set([...this.items.values()].map(key));
    for (const [ref, p] of this.pending) if (stored.has(key(p.annotation))) this.pending.delete(ref);
    for (const p of this.pending.values()) {
      p.sent = this.send({ type: 'annotate', op: 'add', ref: p.ref, annotation: p.annotation });
    }
  }

  canDelete(a) {
    const me = this.me();
    return !!a && (a.author === me.id || me.role === 'host' || (a.author_name === me.name && !a.author));
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
    this.send({ type: 'annotate', op: 'delete', id: a.id });
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
    const ref = newRef();
    const sent = this.send({ type: 'annotate', op: 'add', ref, annotation });
    this.pending.set(ref, { ref, annotation: { ...annotation, author: me.id, author_name: me.name }, sent });
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
      this.select(this.hitTest(vp, ev.clientX, ev.clientY));
      return;
    }
    if (tool === 'text') {
      this._textInput(vp, ev.clientX, ev.clientY, pt());
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

  _textInput(vp, clientX, clientY, point) {
    this.viewer.root.querySelector('.vw-text-input')?.remove();
    const input = document.createElement('input');
    input.className = 'vw-text-input';
    input.maxLength = 200;
    input.placeholder = 'Label, Enter to place';
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
      if (commit && text) this._add(vp, 'text', [point], text);
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
    const s = vp.series;
    const sl = vp.slice;
    if (!s || !sl) return [];
    return this.list().filter((a) => a.series === s.uid && a.sop === sl.sop && (a.frame ?? 1) === sl.frame);
  }

  draw(vp, ctx) {
    const d = vp.dpr;
    for (const a of this._onImage(vp)) this._drawOne(vp, ctx, a, d, a.id !== undefined && a.id === this.selected);
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
      const who = `${a.author_name || 'Unknown'}${a.pending ? ' · sending…' : ''}`;
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
