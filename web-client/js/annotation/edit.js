// Editing drawn annotations with the select tool: drag a handle (an arrow's tail or head, a
// line's end, an ellipse's corner, a text's anchor) or the whole shape, recolour with C,
// retype a label with Enter or a double click. Only what this page's author key may edit
// (docs/collaboration.md, "Author key") gets handles; the server refuses the rest anyway.
// The layer applies an edit at once and rolls it back if the server refuses it.

import { computeStats } from './geometry.js';

/** Colours C cycles through (the layer's palette first, then white). */
export const EDIT_COLORS = ['#ffd43b', '#4dabf7', '#69db7c', '#ff8787', '#da77f2', '#ffa94d', '#3bc9db', '#f783ac', '#ffffff'];

/** The points of `a` that have a handle: freehand outlines move only as a whole. */
export function handleIndexes(a) {
  if (!a?.points?.length || a.kind === 'freehand') return [];
  return a.points.map((_, i) => i);
}

/** `points` moved by (dx, dy) image pixels. */
export function translate(points, dx, dy) {
  return points.map(([x, y]) => [x + dx, y + dy]);
}

/** The colour after `color` in EDIT_COLORS. */
export function nextColor(color) {
  const i = EDIT_COLORS.indexOf(String(color).toLowerCase());
  return EDIT_COLORS[(i + 1) % EDIT_COLORS.length];
}

/** Coordinates as the server keeps them (1/100 pixel). */
export function roundPoints(points) {
  return points.map(([x, y]) => [Math.round(x * 100) / 100, Math.round(y * 100) / 100]);
}

export class AnnotationEditor {
  /** @param {import('./layer.js').AnnotationLayer} layer */
  constructor(layer) {
    this.layer = layer;
    /** The shape being dragged: {vp, id, points} (drawn instead of the stored points). */
    this.drag = null;
    /** The last plain click on an editable annotation: {id, at}, for a double click. */
    this._lastClick = null;
  }

  /** Handle radius and hit tolerance, in image pixels, for `vp`'s zoom. */
  _tolerance(vp) {
    return 7 / (vp.scale / vp.dpr);
  }

  /** The index of the selected annotation's handle under a client point, or -1. */
  handleAt(vp, clientX, clientY) {
    const a = this.layer.items.get(this.layer.selected);
    if (!a || !this.layer.canEdit(a) || !this.layer.isOnImage(vp, a)) return -1;
    const [x, y] = vp.clientToImage(clientX, clientY);
    const tol = this._tolerance(vp);
    for (const i of handleIndexes(a)) {
      const [px, py] = a.points[i];
      if (Math.hypot(px - x, py - y) <= tol) return i;
    }
    return -1;
  }

  /** The select tool's pointer-down: pick, and drag what this page may edit. */
  pointerDown(vp, ev) {
    const layer = this.layer;
    const handle = this.handleAt(vp, ev.clientX, ev.clientY);
    const id = handle >= 0 ? layer.selected : layer.hitTest(vp, ev.clientX, ev.clientY);
    layer.select(id);
    const a = id !== null ? layer.items.get(id) : null;
    if (!a || !layer.canEdit(a)) return;
    const el = vp.el;
    const start = vp.clientToImage(ev.clientX, ev.clientY);
    const startClient = [ev.clientX, ev.clientY];
    const original = a.points.map((p) => [...p]);
    let moved = false;
    el.setPointerCapture(ev.pointerId);
    const move = (e) => {
      // A click selects; only a real drag (3 CSS pixels) edits.
      if (!moved && Math.hypot(e.clientX - startClient[0], e.clientY - startClient[1]) < 3) return;
      moved = true;
      const [x, y] = vp.clientToImage(e.clientX, e.clientY);
      const points =
        handle >= 0
          ? original.map((p, i) => (i === handle ? [x, y] : p))
          : translate(original, x - start[0], y - start[1]);
      this.drag = { vp, id, points };
      vp.invalidateOverlay();
    };
    const finish = (commit) => {
      el.removeEventListener('pointermove', move);
      el.removeEventListener('pointerup', up);
      el.removeEventListener('pointercancel', cancel);
      const d = this.drag;
      this.drag = null;
      vp.invalidateOverlay();
      if (commit && !moved) {
        // A second click on the same annotation soon after the first: retype its label.
        const now = performance.now();
        const last = this._lastClick;
        this._lastClick = { id, at: now };
        if (last && last.id === id && now - last.at < 450) {
          this._lastClick = null;
          this.retype(vp);
        }
        return;
      }
      if (!commit || !d) return;
      const points = roundPoints(d.points);
      if (JSON.stringify(points) === JSON.stringify(original)) return;
      this.commitPoints(vp, a, points);
    };
    const up = () => finish(true);
    const cancel = () => finish(false);
    el.addEventListener('pointermove', move);
    el.addEventListener('pointerup', up);
    el.addEventListener('pointercancel', cancel);
  }

  /** Sends new points with the measurements they now give, and the window shown now. */
  commitPoints(vp, a, points) {
    const patch = { points };
    const s = vp.series;
    if (s && a.kind !== 'arrow' && a.kind !== 'text') {
      patch.stats = computeStats(a.kind, s, vp.state.slice, vp.frame, points) ?? null;
    }
    patch.window = this.layer.windowOf(vp);
    this.layer.update(a.id, patch);
  }

  /** C: the selected annotation's next colour. */
  recolor() {
    const a = this.layer.items.get(this.layer.selected);
    if (!a || !this.layer.canEdit(a)) return false;
    this.layer.update(a.id, { color: nextColor(a.color) });
    return true;
  }

  /** Enter or a double click on a selected text (or any shape's label): retype it. */
  retype(vp) {
    const layer = this.layer;
    const a = layer.items.get(layer.selected);
    if (!a || !layer.canEdit(a) || !layer.isOnImage(vp, a)) return false;
    const [cx, cy] = vp.imageToClient(a.points[0][0], a.points[0][1]);
    const r = vp.el.getBoundingClientRect();
    layer.textInput(vp, r.left + cx, r.top + cy, {
      initial: a.text ?? '',
      onCommit: (text) => {
        if (text === (a.text ?? '')) return;
        if (a.kind === 'text' && !text) return; // a text annotation keeps some text: delete it instead
        layer.update(a.id, { text: text || null });
      },
    });
    return true;
  }

  /** The points to draw for `a`: the dragged ones while it is being dragged. */
  pointsOf(vp, a) {
    return this.drag && this.drag.id === a.id && this.drag.vp === vp ? this.drag.points : a.points;
  }

  /** Handles of the selected annotation, when this page may edit it. */
  drawHandles(vp, ctx, a) {
    if (!this.layer.canEdit(a)) return;
    const d = vp.dpr;
    const pts = this.pointsOf(vp, a);
    ctx.save();
    ctx.setLineDash([]);
    ctx.lineWidth = 1.5 * d;
    ctx.strokeStyle = '#ffffff';
    ctx.fillStyle = a.color || '#ffd43b';
    for (const i of handleIndexes(a)) {
      const [x, y] = vp._imageToCanvas(pts[i][0], pts[i][1]);
      ctx.beginPath();
      ctx.rect(x - 4 * d, y - 4 * d, 8 * d, 8 * d);
      ctx.fill();
      ctx.stroke();
    }
    ctx.restore();
  }
}
