// Viewport: one image cell of the viewer. Holds its part of the ViewerState (series, slice,
// window/level, zoom, pan, invert), draws the slice through render.js onto a canvas sized to
// the cell in device pixels, and the text overlay, orientation markers and scrollbar around it.
// Annotations and the laser pointer go on a second canvas above, so the image canvas holds
// nothing but the image (followers' pixels can be compared with the presenter's).

import { formatDate, formatName } from './dicomweb.js';
import { LutCache, frameRange, orientationMarkers, renderGrey, renderRgb } from './render.js';

export const MIN_ZOOM = 0.1;
export const MAX_ZOOM = 40;

/** A viewport with nothing in it. */
export function emptyViewportState() {
  return { study: null, series: null, slice: 0, ww: 400, wc: 40, zoom: 1, pan: [0, 0], invert: false };
}

export class Viewport {
  /**
   * @param {import('./viewer.js').Viewer} viewer
   * @param {number} index
   */
  constructor(viewer, index) {
    this.viewer = viewer;
    this.index = index;
    this.state = emptyViewportState();
    /** @type {import('./series.js').Series | null} */
    this.series = null;
    /** Slice whose pixels are on the canvas now (null: none of this series yet). */
    this.paintedSlice = null;
    this.pointer = null; // {x, y} in image pixels: the presenter's laser dot
    this.cursor = null; // {x, y} in image pixels under the local mouse
    this._lut = new LutCache();
    this._rendered = ''; // key of the image currently in the offscreen canvas
    this._dirty = true;
    this._overlayDirty = true;
    this._raf = 0;

    const el = document.createElement('div');
    el.className = 'vp';
    el.dataset.index = String(index);
    el.tabIndex = 0;
    el.setAttribute('role', 'img');
    el.innerHTML = `
      <canvas class="vp-image"></canvas>
      <canvas class="vp-overlay"></canvas>
      <div class="vp-text vp-tl"></div>
      <div class="vp-text vp-tr"></div>
      <div class="vp-text vp-bl"></div>
      <div class="vp-text vp-br"></div>
      <div class="vp-orient vp-o-top"></div>
      <div class="vp-orient vp-o-bottom"></div>
      <div class="vp-orient vp-o-left"></div>
      <div class="vp-orient vp-o-right"></div>
      <div class="vp-status"></div>
      <div class="vp-scroll" aria-hidden="true"><div class="vp-scroll-loaded"></div><div class="vp-scroll-thumb"></div></div>`;
    this.el = el;
    this.canvas = el.querySelector('.vp-image');
    this.overlay = el.querySelector('.vp-overlay');
    this.ctx = this.canvas.getContext('2d');
    this.octx = this.overlay.getContext('2d');
    this.text = {
      tl: el.querySelector('.vp-tl'),
      tr: el.querySelector('.vp-tr'),
      bl: el.querySelector('.vp-bl'),
      br: el.querySelector('.vp-br'),
    };
    this.orient = {
      top: el.querySelector('.vp-o-top'),
      bottom: el.querySelector('.vp-o-bottom'),
      left: el.querySelector('.vp-o-left'),
      right: el.querySelector('.vp-o-right'),
    };
    this.statusEl = el.querySelector('.vp-status');
    this.scrollEl = el.querySelector('.vp-scroll');
    this.scrollThumb = el.querySelector('.vp-scroll-thumb');
    this.scrollLoaded = el.querySelector('.vp-scroll-loaded');
    this.offscreen = document.createElement('canvas');
    this.offctx = this.offscreen.getContext('2d');
    this.imageData = null;
    this._bindScrollbar();
    this._offSeries = null;
    this._resize = new ResizeObserver(() => this._fitCanvas());
    this._resize.observe(el);
  }

  destroy() {
    this._resize.disconnect();
    this._offSeries?.();
    cancelAnimationFrame(this._raf);
    this.el.remove();
  }

  // ---------------------------------------------------------------- state

  /** Shows `series` (a loaded Series) with state fields merged over its defaults. */
  setSeries(series, patch = {}) {
    if (this.series !== series) {
      this._offSeries?.();
      this.series = series;
      this._rendered = '';
      this.imageData = null;
      this.paintedSlice = null;
      this._offSeries = series
        ? (() => {
            const offs = [
              series.on('frame', (i) => {
                if (i === this.state.slice) this.invalidate();
                this._updateScrollbar();
                if (i === this.state.slice && this._needsAutoWindow) this._autoWindow();
              }),
              series.on('frame-failed', ({ index }) => {
                if (index === this.state.slice) this.invalidate();
              }),
              series.on('meta', () => this.invalidate()),
            ];
            return () => offs.forEach((off) => off());
          })()
        : null;
    }
    if (!series) {
      this.state = emptyViewportState();
    } else {
      const win = series.defaultWindow ?? { ww: this.state.ww, wc: this.state.wc };
      this._needsAutoWindow = !series.defaultWindow && !('ww' in patch);
      this.state = {
        ...emptyViewportState(),
        ww: win.ww,
        wc: win.wc,
        slice: Math.floor(series.length / 2),
        ...patch,
        study: series.study,
        series: series.uid,
      };
      this.state.slice = clampInt(this.state.slice, 0, series.length - 1);
      series.priority = Math.min(series.priority, 1); // again loadable after an eviction
      series.lastShown = performance.now();
      series.setFocus(this.state.slice, 0);
      if (this._needsAutoWindow && series.frames[this.state.slice]) this._autoWindow();
    }
    this.el.dataset.series = series?.uid ?? '';
    this.invalidate();
  }

  _autoWindow() {
    const f = this.series.frames[this.state.slice];
    if (!f || this.series.isColor) {
      if (this.series.isColor) Object.assign(this.state, { ww: 256, wc: 128 });
      this._needsAutoWindow = false;
      return;
    }
    const s = this.series.slices[this.state.slice];
    const [lo, hi] = frameRange(f, s.slope, s.intercept);
    this.state.ww = Math.max(1, hi - lo);
    this.state.wc = (hi + lo) / 2;
    this._needsAutoWindow = false;
    this.invalidate();
  }

  /** Applies a partial state (from the user or the presenter); returns whether it changed. */
  update(patch) {
    const before = JSON.stringify(this.state);
    const s = { ...this.state, ...patch };
    if (this.series) s.slice = clampInt(s.slice, 0, this.series.length - 1);
    // Rounded here, so the presenter draws exactly the state its followers receive.
    s.zoom = round(clamp(Number(s.zoom) || 1, MIN_ZOOM, MAX_ZOOM), 4);
    s.ww = round(Math.max(1, Number(s.ww) || 1), 2);
    s.wc = round(Number(s.wc) || 0, 2);
    s.pan = [round(Number(s.pan?.[0]) || 0, 2), round(Number(s.pan?.[1]) || 0, 2)];
    s.invert = !!s.invert;
    if ('ww' in patch) this._needsAutoWindow = false;
    this.state = s;
    if (JSON.stringify(s) === before) return false;
    if (this.series && patch.slice !== undefined) this.series.setFocus(s.slice, 0);
    this.invalidate();
    return true;
  }

  /** Fit to the cell, centred, the series' own window. */
  reset() {
    const win = this.series?.defaultWindow;
    const patch = { zoom: 1, pan: [0, 0], invert: false };
    if (win) Object.assign(patch, win);
    const changed = this.update(patch);
    if (!win && this.series) {
      this._needsAutoWindow = true;
      this._autoWindow();
      return true;
    }
    return changed;
  }

  get slice() {
    return this.series?.slices[this.state.slice] ?? null;
  }

  get frame() {
    return this.series?.frames[this.state.slice] ?? null;
  }

  // ---------------------------------------------------------------- geometry

  /** Device pixels per image pixel. */
  get scale() {
    if (!this.series) return 1;
    const fit = Math.min(this.canvas.width / this.series.cols, this.canvas.height / this.series.rows);
    return fit * this.state.zoom;
  }

  /** Image pixel (column, row) → CSS pixel within the cell. */
  imageToClient(x, y) {
    const dpr = this.canvas.width / Math.max(1, this.el.clientWidth);
    const [cx, cy] = this._imageToCanvas(x, y);
    return [cx / dpr, cy / dpr];
  }

  clientToImage(clientX, clientY) {
    const r = this.canvas.getBoundingClientRect();
    const dpr = this.canvas.width / Math.max(1, r.width);
    const px = (clientX - r.left) * dpr;
    const py = (clientY - r.top) * dpr;
    return this._canvasToImage(px, py);
  }

  _imageToCanvas(x, y) {
    const s = this.series;
    const k = this.scale;
    return [
      this.canvas.width / 2 + (x - s.cols / 2 + this.state.pan[0]) * k,
      this.canvas.height / 2 + (y - s.rows / 2 + this.state.pan[1]) * k,
    ];
  }

  _canvasToImage(px, py) {
    const s = this.series;
    if (!s) return [0, 0];
    const k = this.scale;
    return [
      (px - this.canvas.width / 2) / k + s.cols / 2 - this.state.pan[0],
      (py - this.canvas.height / 2) / k + s.rows / 2 - this.state.pan[1],
    ];
  }

  /** Device pixels per CSS pixel of the canvases. */
  get dpr() {
    return this.canvas.width / Math.max(1, this.el.clientWidth);
  }

  /** Rescaled value under an image point, or null outside the image / frame not loaded. */
  valueAt(x, y) {
    const f = this.frame;
    const s = this.series;
    if (!f || !s) return null;
    const c = Math.floor(x);
    const r = Math.floor(y);
    if (c < 0 || r < 0 || c >= s.cols || r >= s.rows) return null;
    if (s.isColor) {
      const o = (r * s.cols + c) * 3;
      return [f[o], f[o + 1], f[o + 2]];
    }
    return s.rescale(this.state.slice, f[r * s.cols + c]);
  }

  _fitCanvas() {
    const dpr = Math.max(1, Math.min(3, window.devicePixelRatio || 1));
    const w = Math.max(1, Math.round(this.el.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.el.clientHeight * dpr));
    if (this.canvas.width === w && this.canvas.height === h) return;
    for (const c of [this.canvas, this.overlay]) {
      c.width = w;
      c.height = h;
    }
    this.invalidate();
  }

  // ---------------------------------------------------------------- drawing

  invalidate() {
    this._dirty = true;
    this._overlayDirty = true;
    this._schedule();
  }

  invalidateOverlay() {
    this._overlayDirty = true;
    this._schedule();
  }

  _schedule() {
    if (this._raf) return;
    this._raf = requestAnimationFrame(() => {
      this._raf = 0;
      this.draw();
    });
  }

  /** Draws now (tests and the first frame do not wait for an animation frame). */
  draw() {
    if (this._dirty) {
      this._dirty = false;
      this._drawImage();
      this._drawText();
      this._updateScrollbar();
    }
    if (this._overlayDirty) {
      this._overlayDirty = false;
      this._drawOverlay();
      this.updateMarks();
    }
  }

  _drawImage() {
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const s = this.series;
    const f = this.frame;
    this.el.dataset.slice = String(this.state.slice);
    this.el.dataset.loaded = String(!!f);
    if (!s) {
      this.statusEl.textContent = '';
      return;
    }
    if (!f) {
      this.paintedSlice = null;
      this.statusEl.textContent = s.failed[this.state.slice] ? 'Slice could not be loaded' : 'Loading…';
      return;
    }
    this.statusEl.textContent = '';
    const key = `${this.state.slice}|${this.state.ww}|${this.state.wc}|${this.state.invert}`;
    if (this._rendered !== key) {
      if (!this.imageData || this.imageData.width !== s.cols || this.imageData.height !== s.rows) {
        this.offscreen.width = s.cols;
        this.offscreen.height = s.rows;
        this.imageData = new ImageData(s.cols, s.rows);
      }
      const sl = this.slice;
      const { ww, wc, invert } = this.state;
      const inv = invert !== (s.photometric === 'MONOCHROME1');
      if (s.isColor) renderRgb(f, this.imageData, { ww, wc, invert: inv });
      else {
        const lut = this._lut.get({ bits: s.bitsAllocated, signed: s.signed, slope: sl.slope, intercept: sl.intercept, ww, wc, invert: inv });
        renderGrey(f, this.imageData, lut);
      }
      this.offctx.putImageData(this.imageData, 0, 0);
      this._rendered = key;
    }
    const k = this.scale;
    const [x0, y0] = this._imageToCanvas(0, 0);
    ctx.imageSmoothingEnabled = k < 1 || k > 1.01;
    ctx.imageSmoothingQuality = 'high';
    ctx.setTransform(k, 0, 0, k, x0, y0);
    ctx.drawImage(this.offscreen, 0, 0);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    this.el.dataset.painted = String(this.state.slice);
    this.paintedSlice = this.state.slice;
    // The viewer's timing marks (first slice on screen) hang on this.
    this.viewer.emit?.('painted', this);
  }

  _drawOverlay() {
    const { octx, overlay } = this;
    octx.setTransform(1, 0, 0, 1, 0, 0);
    octx.clearRect(0, 0, overlay.width, overlay.height);
    if (!this.series) return;
    this.viewer.drawAnnotations?.(this, octx);
    if (this.pointer) {
      const [x, y] = this._imageToCanvas(this.pointer.x, this.pointer.y);
      const d = this.dpr;
      const g = octx.createRadialGradient(x, y, 0, x, y, 11 * d);
      g.addColorStop(0, 'rgba(255,60,60,1)');
      g.addColorStop(0.35, 'rgba(255,40,40,0.85)');
      g.addColorStop(1, 'rgba(255,0,0,0)');
      octx.fillStyle = g;
      octx.beginPath();
      octx.arc(x, y, 11 * d, 0, Math.PI * 2);
      octx.fill();
      if (this.pointer.name) {
        octx.font = `${11 * d}px system-ui, sans-serif`;
        octx.fillStyle = 'rgba(255,120,120,0.95)';
        octx.fillText(this.pointer.name, x + 12 * d, y - 8 * d);
      }
    }
  }

  _drawText() {
    const s = this.series;
    const st = this.state;
    const set = (el, lines) => {
      el.replaceChildren(
        ...lines.filter((l) => l !== null && l !== '').map((l) => {
          const div = document.createElement('div');
          div.textContent = l;
          return div;
        }),
      );
    };
    if (!s) {
      for (const el of Object.values(this.text)) el.replaceChildren();
      for (const el of Object.values(this.orient)) el.textContent = '';
      this.el.setAttribute('aria-label', 'Empty viewport');
      return;
    }
    const sexAge = [s.patientSex ? `Sex ${s.patientSex}` : '', s.patientBirthDate ? `born ${formatDate(s.patientBirthDate)}` : ''].filter(Boolean).join(' · ');
    set(this.text.tl, [formatName(s.patientName) || 'Anonymous', s.patientId ? `ID ${s.patientId}` : '', sexAge]);
    set(this.text.tr, [
      s.institution,
      s.studyDescription,
      formatDate(s.studyDate),
      `${s.modality ? `${s.modality} ` : ''}${s.number !== null ? `Se ${s.number}: ` : ''}${s.description || ''}`.trim(),
    ]);
    const pos = this.slice?.position;
    set(this.text.bl, [
      `Im ${st.slice + 1}/${s.length}`,
      pos && s.orientation ? `Loc ${sliceLocation(pos, s.orientation).toFixed(1)} mm` : '',
      s.sliceThickness ? `Thk ${Number(s.sliceThickness).toFixed(1)} mm` : '',
    ]);
    this._cursorEl = document.createElement('div');
    this._cursorEl.dataset.cursor = 'true';
    this._cursorEl.textContent = this._cursorText();
    this.text.bl.append(this._cursorEl);
    set(this.text.br, [
      `W ${Math.round(st.ww)} L ${Math.round(st.wc)}${st.invert ? ' · inv' : ''}`,
      `Zoom ${(this.scale / this.dpr).toFixed(2)}×`,
    ]);
    const m = orientationMarkers(s.orientation);
    for (const k of ['top', 'bottom', 'left', 'right']) this.orient[k].textContent = m?.[k] ?? '';
    this.el.setAttribute('aria-label', `${s.description || 'Series'}, image ${st.slice + 1} of ${s.length}`);
  }

  _cursorText() {
    const c = this.cursor;
    if (!c) return '';
    const v = this.valueAt(c.x, c.y);
    if (v === null) return '';
    const xy = `(${Math.floor(c.x)}, ${Math.floor(c.y)})`;
    if (Array.isArray(v)) return `${xy} RGB ${v.join(' ')}`;
    const unit = this.series.units;
    return `${xy} ${Number.isInteger(v) ? v : v.toFixed(1)}${unit ? ` ${unit}` : ''}`;
  }

  /** The local mouse moved over the image: refresh the value readout only. */
  setCursor(pt) {
    this.cursor = pt;
    const s = this.series;
    if (!s) return;
    const txt = this._cursorText();
    if (this._cursorEl) this._cursorEl.textContent = txt;
    this.el.dataset.value = txt;
  }

  setPointer(p) {
    this.pointer = p;
    this.invalidateOverlay();
  }

  // ---------------------------------------------------------------- scrollbar

  _updateScrollbar() {
    const s = this.series;
    this.scrollEl.hidden = !s || s.length < 2;
    if (!s || s.length < 2) return;
    const n = s.length;
    const h = 100 / n;
    this.scrollThumb.style.top = `${(this.state.slice / n) * 100}%`;
    this.scrollThumb.style.height = `${Math.max(h, 2)}%`;
    this.scrollLoaded.style.height = `${(s.loaded / n) * 100}%`;
    this.scrollLoaded.style.opacity = s.loaded === n ? '0' : '1';
  }

  /** Ticks on the scrollbar at the slices that carry annotations (where to look). */
  updateMarks() {
    const s = this.series;
    const slices = s ? this.viewer.annotatedSlices?.(s) ?? [] : [];
    const key = slices.join(',');
    if (key === this._marksKey) return;
    this._marksKey = key;
    for (const m of this.scrollEl.querySelectorAll('.vp-scroll-mark')) m.remove();
    for (const i of slices) {
      const m = document.createElement('div');
      m.className = 'vp-scroll-mark';
      m.style.top = `${((i + 0.5) / s.length) * 100}%`;
      this.scrollEl.append(m);
    }
  }

  _bindScrollbar() {
    const bar = this.scrollEl;
    const go = (ev) => {
      const s = this.series;
      if (!s) return;
      const r = bar.getBoundingClientRect();
      const f = clamp((ev.clientY - r.top) / Math.max(1, r.height), 0, 0.9999);
      this.viewer.localUpdate(this, { slice: Math.floor(f * s.length) });
    };
    bar.addEventListener('pointerdown', (ev) => {
      ev.stopPropagation();
      ev.preventDefault();
      bar.setPointerCapture(ev.pointerId);
      go(ev);
      const move = (e) => go(e);
      const up = () => {
        bar.removeEventListener('pointermove', move);
        bar.removeEventListener('pointerup', up);
        bar.removeEventListener('pointercancel', up);
      };
      bar.addEventListener('pointermove', move);
      bar.addEventListener('pointerup', up);
      bar.addEventListener('pointercancel', up);
    });
  }
}

/** Signed distance of a slice along its normal (for the "Loc" readout). */
function sliceLocation(pos, iop) {
  const [a, b, c, d, e, f] = iop;
  const n = [b * f - c * e, c * d - a * f, a * e - b * d];
  return pos[0] * n[0] + pos[1] * n[1] + pos[2] * n[2];
}

export function round(v, digits = 2) {
  const k = 10 ** digits;
  return Math.round(Number(v) * k) / k;
}

export function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

function clampInt(v, lo, hi) {
  return clamp(Math.round(Number(v) || 0), lo, hi);
}
