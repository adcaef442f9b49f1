// Viewer: the shared DICOM viewer of a call. Study/series browser with thumbnails, a grid of
// viewports (1×1, 1×2, 2×2), the toolbar (navigation tools, window presets, annotation
// tools, layout, upload) and the mouse/keyboard bindings. Owns the ViewerState
// (docs/collaboration.md) of this page: local edits go through localUpdate() and are emitted
// as `change` {local: true}; the presenter's state comes in through applyState().
//
// Events: change {local}, studies (count), active, tool, error {message}.

import { Emitter } from '../call/signaling.js';
import { DicomWeb, formatDate, formatName, tagValue } from './dicomweb.js';
import { Series, framePool } from './series.js';
import { Viewport, clamp, emptyViewportState } from './viewport.js';
import { LutCache, frameRange, renderGrey } from './render.js';

/** Decoded frames kept for series not on screen, beyond which the least recent are dropped. */
const CACHE_BYTES = 1024 * 1024 * 1024;

/**
 * User Timing marks of opening a series (docs/benchmarks.md, "Shared viewer: opening and
 * scrolling a series"): the user's open action, the first slice painted on a viewport's
 * canvas, every slice decoded and in memory (from then on any scroll paints in its frame).
 */
export const VIEWER_MARKS = Object.freeze({
  open: 'consilium:series-open',
  firstSlice: 'consilium:first-slice-drawn',
  allSlices: 'consilium:all-slices-loaded',
});

export const LAYOUTS = { '1x1': [1, 1], '1x2': [1, 2], '2x2': [2, 2] };

export const PRESETS = [
  { id: 'lung', label: 'Lung', ww: 1500, wc: -600, key: '1' },
  { id: 'mediastinum', label: 'Mediastinum', ww: 400, wc: 40, key: '2' },
  { id: 'bone', label: 'Bone', ww: 1500, wc: 300, key: '3' },
  { id: 'brain', label: 'Brain', ww: 80, wc: 40, key: '4' },
];

const NAV_TOOLS = [
  { id: 'scroll', label: 'Scroll', title: 'Scroll through slices (drag)', icon: '<path d="M12 3v18M8 7l4-4 4 4M8 17l4 4 4-4"/>' },
  { id: 'wl', label: 'W/L', title: 'Window/level (drag; right-drag works with any tool)', icon: '<circle cx="12" cy="12" r="8"/><path d="M12 4a8 8 0 0 1 0 16z" fill="currentColor"/>' },
  { id: 'pan', label: 'Pan', title: 'Pan (drag; middle-drag works with any tool)', icon: '<path d="M12 3v18M3 12h18M12 3l-3 3M12 3l3 3M12 21l-3-3M12 21l3-3M3 12l3-3M3 12l3 3M21 12l-3-3M21 12l-3 3"/>' },
  { id: 'zoom', label: 'Zoom', title: 'Zoom (drag up/down; Ctrl+wheel)', icon: '<circle cx="10.5" cy="10.5" r="6.5"/><path d="M15.5 15.5 21 21M8 10.5h5M10.5 8v5"/>' },
];

export const ANNOTATION_TOOLS = [
  { id: 'arrow', label: 'Arrow', title: 'Arrow (drag from tail to head)', icon: '<path d="M4 20 19 5M11 5h8v8"/>' },
  { id: 'line', label: 'Length', title: 'Length in mm (drag)', icon: '<path d="M4 20 20 4M4 16v4h4M16 4h4v4"/>' },
  { id: 'ellipse', label: 'Ellipse', title: 'Ellipse ROI: area, mean, SD, min, max (drag)', icon: '<ellipse cx="12" cy="12" rx="9" ry="6"/>' },
  { id: 'freehand', label: 'Outline', title: 'Freehand outline (draw)', icon: '<path d="M5 15c0-6 5-10 9-9s6 5 3 8-7 1-8 4 3 4 6 3"/>' },
  { id: 'text', label: 'Text', title: 'Text label (click)', icon: '<path d="M5 6V4h14v2M12 4v16M9 20h6"/>' },
  { id: 'select', label: 'Select', title: 'Select an annotation (Delete removes your own)', icon: '<path d="M5 3l14 8-6 1.5L10 19z"/>' },
];

export class Viewer extends Emitter {
  /**
   * @param {HTMLElement} root  the empty #viewer element
   * @param {{room: string, token?: string|null}} opts
   */
  constructor(root, { room, token = null }) {
    super();
    this.root = root;
    this.api = new DicomWeb({ room, token });
    this.room = room;
    /** uid → Promise<Series> */
    this._series = new Map();
    /** uid → Series, once opened (for the memory bound). */
    this._open = new Map();
    /** Study list: [{uid, ds, series: [{uid, ds, count}]}] */
    this.studies = [];
    this.layout = '1x1';
    this.active = 0;
    /** @type {Viewport[]} */
    this.viewports = [];
    this.tool = 'scroll';
    this.drawAnnotations = null; // set by the annotation layer: (viewport, ctx) => void
    this.annotationInput = null; // set by the annotation layer: pointer handlers for its tools
    this._applyGen = 0;
    this._wheelAcc = 0;
    this.metrics = { series: null, slices: 0, openedAt: 0, firstSliceMs: null, allSlicesMs: null, marks: [] };
    this._build();
    this.setLayout('1x1', { local: false });
  }

  // ---------------------------------------------------------------- DOM

  _build() {
    const root = this.root;
    root.classList.add('viewer');
    root.innerHTML = `
      <div class="vw-toolbar" role="toolbar" aria-label="Viewer tools">
        <div class="vw-group" data-group="nav"></div>
        <div class="vw-group" data-group="presets">
          <select class="vw-preset" aria-label="Window preset" title="Window presets (keys 1–4)">
            <option value="">W/L preset…</option>
          </select>
          <button type="button" class="vw-btn vw-icon" data-action="invert" title="Invert (I)" aria-label="Invert"><svg viewBox="0 0 24 24"><circle cx="12" cy="12" r="8"/><path d="M12 4a8 8 0 0 0 0 16z" fill="currentColor"/></svg></button>
          <button type="button" class="vw-btn vw-icon" data-action="reset" title="Reset view (R)" aria-label="Reset view"><svg viewBox="0 0 24 24"><path d="M4 12a8 8 0 1 0 2.3-5.6M4 4v4h4"/></svg></button>
        </div>
        <div class="vw-group" data-group="annotate"></div>
        <div class="vw-group" data-group="layout">
          <button type="button" class="vw-btn vw-icon" data-layout="1x1" title="One viewport" aria-label="Layout 1 by 1"><svg viewBox="0 0 24 24"><rect x="4" y="4" width="16" height="16" rx="1.5"/></svg></button>
          <button type="button" class="vw-btn vw-icon" data-layout="1x2" title="Two side by side" aria-label="Layout 1 by 2"><svg viewBox="0 0 24 24"><rect x="3" y="4" width="8" height="16" rx="1.5"/><rect x="13" y="4" width="8" height="16" rx="1.5"/></svg></button>
          <button type="button" class="vw-btn vw-icon" data-layout="2x2" title="Four viewports" aria-label="Layout 2 by 2"><svg viewBox="0 0 24 24"><rect x="3" y="3" width="8" height="8" rx="1.5"/><rect x="13" y="3" width="8" height="8" rx="1.5"/><rect x="3" y="13" width="8" height="8" rx="1.5"/><rect x="13" y="13" width="8" height="8" rx="1.5"/></svg></button>
        </div>
      </div>
      <div class="vw-sync" data-group="sync" aria-label="Presenter"></div>
      <div class="vw-body">
        <aside class="vw-side" aria-label="Studies and series">
          <div class="vw-studies"></div>
          <button type="button" class="vw-upload-btn" data-action="upload">
            <svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 16V4M7 9l5-5 5 5M4 16v3a1 1 0 0 0 1 1h14a1 1 0 0 0 1-1v-3"/></svg>
            Upload DICOM
          </button>
          <input type="file" class="vw-file" multiple hidden />
        </aside>
        <div class="vw-grid" data-layout="1x1"></div>
        <div class="vw-drop" hidden><div>Drop DICOM files, folders or a .zip to share them in this room</div></div>
      </div>
      <div class="vw-toast" role="status" aria-live="polite" hidden></div>`;
    this.toolbar = root.querySelector('.vw-toolbar');
    this.grid = root.querySelector('.vw-grid');
    this.studiesEl = root.querySelector('.vw-studies');
    this.syncEl = root.querySelector('[data-group="sync"]');
    this.toastEl = root.querySelector('.vw-toast');
    this.dropEl = root.querySelector('.vw-drop');
    this.fileInput = root.querySelector('.vw-file');

    const toolBtn = (t) =>
      `<button type="button" class="vw-btn vw-tool vw-icon" data-tool="${t.id}" title="${t.title}" aria-label="${t.label}" aria-pressed="false">` +
      `<svg viewBox="0 0 24 24" aria-hidden="true">${t.icon}</svg></button>`;
    root.querySelector('[data-group="nav"]').innerHTML = NAV_TOOLS.map(toolBtn).join('');
    root.querySelector('[data-group="annotate"]').innerHTML =
      ANNOTATION_TOOLS.map(toolBtn).join('') +
      '<button type="button" class="vw-btn vw-icon" data-action="delete-annotation" title="Delete the selected annotation (Delete)" aria-label="Delete annotation" disabled>' +
      '<svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3"/></svg></button>';
    const sel = root.querySelector('.vw-preset');
    for (const p of PRESETS) {
      const o = document.createElement('option');
      o.value = p.id;
      o.textContent = `${p.label}  ${p.wc}/${p.ww}`;
      sel.append(o);
    }
    sel.addEventListener('change', () => {
      const p = PRESETS.find((x) => x.id === sel.value);
      if (p) this.applyPreset(p.id);
      sel.value = '';
    });

    this.toolbar.addEventListener('click', (ev) => {
      const b = ev.target.closest('button');
      if (!b || !this.toolbar.contains(b)) return;
      if (b.dataset.tool) this.setTool(b.dataset.tool);
      else if (b.dataset.layout) this.setLayout(b.dataset.layout);
      else if (b.dataset.action === 'reset') this.resetActive();
      else if (b.dataset.action === 'invert') this.toggleInvert();
      else if (b.dataset.action === 'delete-annotation') this.annotationInput?.deleteSelected();
    });
    this.studiesEl.addEventListener('click', (ev) => {
      const item = ev.target.closest('[data-series-uid]');
      if (item) this.openSeries(item.dataset.studyUid, item.dataset.seriesUid, this.active, { local: true });
    });
    root.querySelector('[data-action="upload"]').addEventListener('click', () => this.fileInput.click());
    this.grid.addEventListener('contextmenu', (ev) => ev.preventDefault());
    this.grid.addEventListener('pointerdown', (ev) => this._onPointerDown(ev));
    this.grid.addEventListener('pointermove', (ev) => this._onHover(ev));
    this.grid.addEventListener('pointerleave', () => {
      for (const vp of this.viewports) vp.setCursor(null);
      this.emit('pointer', null);
    });
    this.grid.addEventListener('wheel', (ev) => this._onWheel(ev), { passive: false });
    root.addEventListener('keydown', (ev) => this._onKey(ev));
    this.setTool('scroll');
  }

  setTool(id) {
    this.tool = id;
    for (const b of this.toolbar.querySelectorAll('[data-tool]')) b.setAttribute('aria-pressed', String(b.dataset.tool === id));
    this.grid.dataset.tool = id;
    this.emit('tool', id);
  }

  toast(message, { kind = 'info', ms = 4000 } = {}) {
    const el = this.toastEl;
    el.textContent = message;
    el.dataset.kind = kind;
    el.hidden = false;
    clearTimeout(this._toastTimer);
    if (ms) this._toastTimer = setTimeout(() => (el.hidden = true), ms);
  }

  // ---------------------------------------------------------------- studies

  /** Loads the room's study list (QIDO) and their series, and shows thumbnails. */
  async refresh() {
    let studies;
    try {
      studies = await this.api.studies();
    } catch (err) {
      console.warn('[consilium] cannot list studies', err);
      this.emit('error', { message: `Cannot list the room's studies: ${err.message}` });
      return this.studies;
    }
    const list = [];
    for (const ds of studies) {
      const uid = tagValue(ds, '0020000D');
      if (!uid) continue;
      let series = [];
      try {
        series = (await this.api.series(uid)).map((s) => ({
          uid: tagValue(s, '0020000E'),
          ds: s,
          count: Number(tagValue(s, '00201209', 0)) || 0,
          number: Number(tagValue(s, '00200011', 0)) || 0,
        }));
        series = series.filter((s) => s.uid).sort((a, b) => a.number - b.number);
      } catch (err) {
        console.warn('[consilium] cannot list series of', uid, err);
      }
      list.push({ uid, ds, series });
    }
    this.studies = list;
    this._renderStudies();
    this.emit('studies', list.length);
    return list;
  }

  _renderStudies() {
    const frag = document.createDocumentFragment();
    if (!this.studies.length) {
      const p = document.createElement('p');
      p.className = 'vw-empty';
      p.textContent = 'No studies in this room yet. Drop DICOM files here or use Upload.';
      frag.append(p);
    }
    for (const st of this.studies) {
      const box = document.createElement('section');
      box.className = 'vw-study';
      box.dataset.studyUid = st.uid;
      const head = document.createElement('header');
      const name = formatName(tagValue(st.ds, '00100010', '')) || 'Anonymous';
      head.innerHTML = '<strong></strong><span></span><span></span>';
      head.children[0].textContent = name;
      head.children[1].textContent = [tagValue(st.ds, '00100020', ''), formatDate(tagValue(st.ds, '00080020', ''))].filter(Boolean).join(' · ');
      head.children[2].textContent = tagValue(st.ds, '00081030', '') || '';
      box.append(head);
      for (const se of st.series) {
        // Presentation states (the annotation export) have no pixels to show.
        if (tagValue(se.ds, '00080060', '') === 'PR') continue;
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'vw-thumb';
        b.dataset.studyUid = st.uid;
        b.dataset.seriesUid = se.uid;
        const desc = tagValue(se.ds, '0008103E', '') || 'Series';
        const mod = tagValue(se.ds, '00080060', '');
        b.title = `${mod} ${desc}`.trim();
        b.innerHTML = '<canvas width="88" height="88"></canvas><span class="vw-thumb-text"><span></span><small></small></span>';
        b.querySelector('.vw-thumb-text span').textContent = desc;
        b.querySelector('small').textContent = `${mod ? `${mod} · ` : ''}${se.number ? `#${se.number} · ` : ''}${se.count || '?'} img`;
        box.append(b);
        this._thumbnail(st.uid, se.uid, b.querySelector('canvas'));
      }
      frag.append(box);
    }
    this.studiesEl.replaceChildren(frag);
    this._markOpenSeries();
  }

  _markOpenSeries() {
    const open = new Set(this.viewports.map((v) => v.state.series).filter(Boolean));
    const act = this.viewports[this.active]?.state.series;
    for (const b of this.studiesEl.querySelectorAll('.vw-thumb')) {
      b.dataset.open = String(open.has(b.dataset.seriesUid));
      b.dataset.current = String(b.dataset.seriesUid === act);
    }
  }

  async _thumbnail(study, uid, canvas) {
    try {
      const s = await this.getSeries(study, uid);
      const mid = Math.floor(s.length / 2);
      const f = await s.frameAt(mid);
      if (s.isColor) return;
      const sl = s.slices[mid];
      const win = s.defaultWindow ?? (() => {
        const [lo, hi] = frameRange(f, sl.slope, sl.intercept);
        return { ww: Math.max(1, hi - lo), wc: (hi + lo) / 2 };
      })();
      const img = new ImageData(s.cols, s.rows);
      const lut = new LutCache().get({ bits: s.bitsAllocated, signed: s.signed, slope: sl.slope, intercept: sl.intercept, ...win, invert: s.photometric === 'MONOCHROME1' });
      renderGrey(f, img, lut);
      const off = document.createElement('canvas');
      off.width = s.cols;
      off.height = s.rows;
      off.getContext('2d').putImageData(img, 0, 0);
      const ctx = canvas.getContext('2d');
      const k = Math.min(canvas.width / s.cols, canvas.height / s.rows);
      ctx.fillStyle = '#000';
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.imageSmoothingQuality = 'high';
      ctx.drawImage(off, (canvas.width - s.cols * k) / 2, (canvas.height - s.rows * k) / 2, s.cols * k, s.rows * k);
      canvas.dataset.ready = 'true';
    } catch (err) {
      console.warn('[consilium] thumbnail failed', err);
    }
  }

  /** The Series for a uid (metadata fetched once, frames cached for the page's life). */
  getSeries(study, uid) {
    let p = this._series.get(uid);
    if (!p) {
      const st = this.studies.find((x) => x.uid === study);
      const context = { study: st?.ds, series: st?.series.find((x) => x.uid === uid)?.ds };
      p = Series.open(this.api, study, uid, context).then((s) => {
        framePool.add(s);
        this._open.set(uid, s);
        s.on('frame', () => this._trimCache());
        return s;
      });
      p.catch(() => this._series.delete(uid));
      this._series.set(uid, p);
    }
    return p;
  }

  /** Forgets every series and frame (benchmarks measure a cold open with it). */
  dropCache() {
    for (const s of this._open.values()) {
      s.evict();
      framePool.remove(s);
    }
    this._open.clear();
    this._series.clear();
    this.metrics = { series: null, slices: 0, openedAt: 0, firstSliceMs: null, allSlicesMs: null, marks: [] };
  }

  /** Keeps the decoded frames within CACHE_BYTES, dropping series off screen, oldest first. */
  _trimCache() {
    let total = 0;
    for (const s of this._open.values()) total += s.bytes;
    if (total <= CACHE_BYTES) return;
    const shown = new Set(this.viewports.map((v) => v.series).filter(Boolean));
    for (const s of [...this._open.values()].sort((a, b) => (a.lastShown ?? 0) - (b.lastShown ?? 0))) {
      if (total <= CACHE_BYTES * 0.8) break;
      if (shown.has(s) || !s.loaded) continue;
      total -= s.bytes;
      s.evict();
    }
  }

  /** The series loaded so far (for the test hook and the annotation layer). */
  loadedSeries(uid) {
    return this.viewports.find((v) => v.series?.uid === uid)?.series ?? null;
  }

  /** Opens a series in a viewport. */
  async openSeries(study, uid, index = this.active, { local = true, patch = {}, fallback = false } = {}) {
    const vp = this.viewports[index];
    if (!vp) return;
    const gen = ++this._applyGen;
    vp.statusEl.textContent = 'Loading…';
    const t0 = performance.now();
    let s;
    try {
      s = await this.getSeries(study, uid);
    } catch (err) {
      vp.statusEl.textContent = 'Series could not be loaded';
      this.emit('error', { message: `Cannot open the series: ${err.message}` });
      return;
    }
    if (gen !== this._applyGen && !local) return;
    // The room's own state (presenter, or the last one kept) arrived meanwhile: it wins.
    if (fallback && this._stateApplied) return;
    this._measure(s, t0);
    vp.setSeries(s, patch);
    vp.draw();
    this._markOpenSeries();
    if (index !== this.active) this._setActive(index);
    this.emit('change', { local });
  }

  /** Opens the room's first series in the first viewport, if nothing is shown yet. */
  async openDefault() {
    if (this._stateApplied || this.viewports.some((v) => v.series)) return;
    const st = this.studies[0];
    const se = st?.series.slice().sort((a, b) => b.count - a.count)[0];
    if (se) await this.openSeries(st.uid, se.uid, 0, { local: false, fallback: true });
  }

  /**
   * Records open → first slice painted, and open → whole stack in memory, as User Timing
   * marks (`performance.mark`, names in VIEWER_MARKS) and as figures in `this.metrics`: the
   * benchmark (web-client/bench/viewer.mjs) and the tests read them, a clinician's browser
   * shows them in its performance panel. A series already open is not measured again.
   */
  _measure(s, t0) {
    if (this.metrics.series === s.uid) return;
    const detail = { series: s.uid, slices: s.length };
    const m = { series: s.uid, slices: s.length, openedAt: t0, firstSliceMs: null, allSlicesMs: null, marks: [] };
    this.metrics = m;
    const mark = (name, at) => {
      // A mark is named once per open: the benchmark picks the run's marks by series and time.
      const e = performance.mark(name, { startTime: at, detail });
      m.marks.push({ name, startTime: e.startTime });
    };
    mark(VIEWER_MARKS.open, t0);
    const check = () => {
      if (m !== this.metrics) return true;
      if (m.firstSliceMs === null && this.viewports.some((v) => v.series === s && v.paintedSlice !== null)) {
        const at = performance.now();
        m.firstSliceMs = Math.round(at - t0);
        mark(VIEWER_MARKS.firstSlice, at);
      }
      if (m.allSlicesMs === null && s.loaded === s.length) {
        const at = performance.now();
        m.allSlicesMs = Math.round(at - t0);
        mark(VIEWER_MARKS.allSlices, at);
      }
      return m.firstSliceMs !== null && m.allSlicesMs !== null;
    };
    if (check()) return;
    // Both events fire in the task that paints or stores the slice: no animation-frame lag.
    const offFrame = s.on('frame', () => check() && done());
    const offPaint = this.on('painted', (vp) => vp.series === s && check() && done());
    const done = () => {
      offFrame();
      offPaint();
    };
  }

  // ---------------------------------------------------------------- state

  /** The ViewerState of docs/collaboration.md. */
  getState() {
    return {
      layout: this.layout,
      active: this.active,
      viewports: this.viewports.map((v) => {
        const s = v.state;
        return { study: s.study, series: s.series, slice: s.slice, ww: s.ww, wc: s.wc, zoom: s.zoom, pan: [s.pan[0], s.pan[1]], invert: s.invert };
      }),
    };
  }

  /** Applies the presenter's ViewerState (fetching any series not loaded yet). */
  async applyState(state) {
    if (!state || typeof state !== 'object') return;
    this._stateApplied = true;
    const gen = ++this._applyGen;
    const t0 = performance.now();
    if (LAYOUTS[state.layout] && state.layout !== this.layout) this.setLayout(state.layout, { local: false });
    const list = Array.isArray(state.viewports) ? state.viewports : [];
    const jobs = this.viewports.map(async (vp, i) => {
      const want = list[i];
      if (!want || !want.series) {
        if (vp.series) {
          vp.setSeries(null);
        }
        return;
      }
      const patch = pickViewport(want);
      if (vp.series?.uid === want.series) {
        vp.update(patch);
        return;
      }
      try {
        const s = await this.getSeries(want.study, want.series);
        if (gen !== this._applyGen) return;
        if (i === 0) this._measure(s, t0);
        vp.setSeries(s, patch);
        vp.draw();
        if (!this.studies.some((st) => st.uid === want.study)) this.refresh();
      } catch (err) {
        vp.statusEl.textContent = 'Series could not be loaded';
        console.warn('[consilium] cannot open the presenter series', err);
      }
    });
    const a = clamp(Number(state.active) || 0, 0, this.viewports.length - 1);
    if (a !== this.active) this._setActive(a);
    await Promise.all(jobs);
    if (gen === this._applyGen) this._markOpenSeries();
  }

  /** A local edit of one viewport (user input). */
  localUpdate(vp, patch) {
    if (vp.update(patch)) {
      this._markOpenSeries();
      this.emit('change', { local: true });
    }
  }

  setLayout(layout, { local = true } = {}) {
    const dims = LAYOUTS[layout];
    if (!dims) return;
    const n = dims[0] * dims[1];
    const old = this.viewports;
    this.layout = layout;
    this.grid.dataset.layout = layout;
    while (this.viewports.length < n) {
      const vp = new Viewport(this, this.viewports.length);
      this.viewports.push(vp);
      this.grid.append(vp.el);
    }
    while (this.viewports.length > n) this.viewports.pop().destroy();
    for (const b of this.toolbar.querySelectorAll('[data-layout]')) b.setAttribute('aria-pressed', String(b.dataset.layout === layout));
    if (this.active >= n) this._setActive(0);
    else this._setActive(this.active);
    if (local) {
      // New cells show the next series of the study (or the same one again).
      const first = old[0]?.series;
      if (first) {
        const study = this.studies.find((s) => s.uid === first.study);
        const uids = study?.series.map((s) => s.uid) ?? [first.uid];
        let k = uids.indexOf(first.uid);
        for (const vp of this.viewports) {
          if (vp.series) continue;
          k = (k + 1) % uids.length;
          this.openSeries(first.study, uids[k], vp.index, { local: true });
        }
      }
      this.emit('change', { local: true });
    }
  }

  _setActive(i) {
    this.active = i;
    for (const vp of this.viewports) vp.el.dataset.active = String(vp.index === i);
    this._markOpenSeries();
    this.emit('active', i);
  }

  get activeViewport() {
    return this.viewports[this.active];
  }

  applyPreset(id) {
    const p = PRESETS.find((x) => x.id === id);
    const vp = this.activeViewport;
    if (p && vp?.series) this.localUpdate(vp, { ww: p.ww, wc: p.wc });
  }

  resetActive() {
    const vp = this.activeViewport;
    if (vp?.series && vp.reset()) this.emit('change', { local: true });
  }

  toggleInvert() {
    const vp = this.activeViewport;
    if (vp?.series) this.localUpdate(vp, { invert: !vp.state.invert });
  }

  // ---------------------------------------------------------------- input

  _viewportAt(ev) {
    const el = ev.target.closest?.('.vp');
    return el ? this.viewports[Number(el.dataset.index)] : null;
  }

  _onPointerDown(ev) {
    const vp = this._viewportAt(ev);
    if (!vp || ev.target.closest('.vp-scroll')) return;
    vp.el.focus({ preventScroll: true });
    if (vp.index !== this.active) {
      this._setActive(vp.index);
      this.emit('change', { local: true });
    }
    if (!vp.series) return;
    ev.preventDefault();
    const mode = ev.button === 2 ? 'wl' : ev.button === 1 ? 'pan' : this.tool;
    if (ev.button === 0 && this.annotationInput?.handles(mode)) {
      this.annotationInput.pointerDown(vp, ev);
      return;
    }
    if (!['wl', 'pan', 'zoom', 'scroll'].includes(mode)) return;
    const start = { x: ev.clientX, y: ev.clientY, ...vp.state, pan: [...vp.state.pan] };
    const el = vp.el;
    el.setPointerCapture(ev.pointerId);
    const move = (e) => {
      const dx = e.clientX - start.x;
      const dy = e.clientY - start.y;
      if (mode === 'wl') {
        const k = Math.max(0.5, start.ww / 300);
        this.localUpdate(vp, { ww: Math.max(1, start.ww + dx * k * 2), wc: start.wc + dy * k });
      } else if (mode === 'pan') {
        const k = vp.dpr / vp.scale;
        this.localUpdate(vp, { pan: [start.pan[0] + dx * k, start.pan[1] + dy * k] });
      } else if (mode === 'zoom') {
        this.localUpdate(vp, { zoom: start.zoom * Math.exp(-dy / 150) });
      } else if (mode === 'scroll') {
        const n = vp.series.length;
        const step = Math.max(2, Math.min(8, el.clientHeight / n));
        this.localUpdate(vp, { slice: start.slice + Math.round(dy / step) });
      }
    };
    const up = () => {
      el.removeEventListener('pointermove', move);
      el.removeEventListener('pointerup', up);
      el.removeEventListener('pointercancel', up);
    };
    el.addEventListener('pointermove', move);
    el.addEventListener('pointerup', up);
    el.addEventListener('pointercancel', up);
  }

  _onHover(ev) {
    const vp = this._viewportAt(ev);
    for (const v of this.viewports) if (v !== vp && v.cursor) v.setCursor(null);
    if (!vp?.series) return;
    const [x, y] = vp.clientToImage(ev.clientX, ev.clientY);
    vp.setCursor({ x, y });
    this.emit('pointer', { viewport: vp.index, x, y });
  }

  _onWheel(ev) {
    const vp = this._viewportAt(ev);
    if (!vp?.series) return;
    ev.preventDefault();
    const dy = ev.deltaMode === 1 ? ev.deltaY * 40 : ev.deltaMode === 2 ? ev.deltaY * 800 : ev.deltaY;
    if (ev.ctrlKey || ev.metaKey) {
      this.localUpdate(vp, { zoom: vp.state.zoom * Math.exp(-dy / 300) });
      return;
    }
    // One slice per notch (100 px on most mice), trackpads accumulate small deltas.
    this._wheelAcc += dy;
    const steps = Math.trunc(this._wheelAcc / 50) || (Math.abs(dy) >= 50 ? Math.sign(dy) : 0);
    if (!steps) return;
    this._wheelAcc = 0;
    this.localUpdate(vp, { slice: vp.state.slice + clamp(steps, -5, 5) });
  }

  /** Keyboard bindings, also for keys pressed while the page itself has the focus. */
  handleKey(ev) {
    this._onKey(ev);
  }

  _onKey(ev) {
    if (ev.target.closest('input, select, textarea')) return;
    const vp = this.activeViewport;
    if (!vp?.series) return;
    const n = vp.series.length;
    const page = Math.max(1, Math.round(n / 10));
    const go = (d) => this.localUpdate(vp, { slice: vp.state.slice + d });
    switch (ev.key) {
      case 'ArrowUp':
      case 'ArrowLeft':
        go(-1);
        break;
      case 'ArrowDown':
      case 'ArrowRight':
        go(1);
        break;
      case 'PageUp':
        go(-page);
        break;
      case 'PageDown':
        go(page);
        break;
      case 'Home':
        this.localUpdate(vp, { slice: 0 });
        break;
      case 'End':
        this.localUpdate(vp, { slice: n - 1 });
        break;
      case 'r':
      case 'R':
        this.resetActive();
        break;
      case 'i':
      case 'I':
        this.toggleInvert();
        break;
      default: {
        const p = PRESETS.find((x) => x.key === ev.key);
        if (p) {
          this.applyPreset(p.id);
          break;
        }
        if (this.annotationInput?.onKey(ev)) break;
        return;
      }
    }
    ev.preventDefault();
  }
}

function pickViewport(v) {
  const out = {};
  for (const k of ['slice', 'ww', 'wc', 'zoom', 'invert']) if (v[k] !== undefined) out[k] = v[k];
  if (Array.isArray(v.pan)) out.pan = v.pan;
  return out;
}

export { emptyViewportState };
