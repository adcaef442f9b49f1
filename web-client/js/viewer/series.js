// Series: one DICOM series as a stack of slices (its WADO metadata in slice order, each
// instance's frames in turn), and the frame loader: a small shared pool of HTTP requests
// that fetches the slice on screen first, then outward from it, and keeps every decoded
// frame (typed arrays of stored values) so scrolling and window/level never hit the network.

import { Emitter } from '../call/signaling.js';
import { tagValue, tagValues } from './dicomweb.js';

const POOL_SIZE = 6; // the browser's per-host HTTP/1.1 connection limit
/**
 * Frames one batch request carries (DicomWeb.framesBatch). Every request costs the browser
 * a few milliseconds of main-thread and network-process work whatever its size; 200 of
 * them were most of the time a 200-slice CT took to load (docs/benchmarks.md).
 */
const BATCH_FRAMES = 32;
/** Batch requests at once: the other connections stay free for the slice a user jumps to. */
const MAX_BATCHES = 2;

export class Series extends Emitter {
  /**
   * @param {import('./dicomweb.js').DicomWeb} api
   * @param {string} study
   * @param {string} uid
   * @param {object[]} metadata  DICOM JSON datasets, in slice order
   */
  constructor(api, study, uid, metadata, context = {}) {
    super();
    this.api = api;
    this.study = study;
    this.uid = uid;
    const first = { ...(context.study ?? {}), ...(context.series ?? {}), ...(metadata[0] ?? {}) };
    this.first = first;
    this._describe(first);
    this._buildSlices(metadata);

    /** Decoded frames by slice index (Int16Array | Uint16Array | Uint8Array), null until loaded. */
    this.frames = new Array(this.slices.length).fill(null);
    this.failed = new Array(this.slices.length).fill(false);
    this.loaded = 0;
    this._inFlight = new Set();
    /** Slice the loader works outward from. */
    this.focus = Math.floor(this.slices.length / 2);
    /** 0 = shown in a viewport (load everything), 1 = thumbnail only (load the focus). */
    this.priority = 1;
    this.firstFrameMs = null;
    this.allFramesMs = null;
    this._openedAt = performance.now();
    /** Whether the server answers batch requests; false after one that delivered nothing. */
    this.batching = true;
  }

  /**
   * Opens a series from its QIDO-RS instance list, which carries every attribute needed to
   * decode and place the pixels and is cheaper to produce than the full WADO-RS metadata; the
   * full metadata follows in the background for the overlay (patient details, institution).
   * `context` holds the study- and series-level QIDO results when known.
   */
  static async open(api, study, uid, context = {}) {
    let list = await api.instances(study, uid).catch(() => null);
    const usable = Array.isArray(list) && list.length && list.every((ds) => tagValue(ds, '00280010') && tagValue(ds, '00080018'));
    let full = false;
    if (!usable) {
      list = await api.metadata(study, uid);
      full = true;
    }
    if (!Array.isArray(list) || !list.length) throw new Error(`series ${uid} has no instances`);
    const series = new Series(api, study, uid, list, context);
    if (!full) {
      // After the first frame: it would compete with it for the server and the main thread.
      const off = series.on('frame', () => {
        off();
        api
          .metadata(study, uid)
          .then((md) => series._enrich(md))
          .catch((err) => console.warn('[consilium] series metadata unavailable', err));
      });
    }
    return series;
  }

  /** Takes the descriptive attributes from the full metadata (same slice order). */
  _enrich(metadata) {
    if (!Array.isArray(metadata) || !metadata.length) return;
    this.first = { ...this.first, ...metadata[0] };
    this._describe(this.first);
    this.emit('meta');
  }

  _describe(first) {
    this.patientName = tagValue(first, '00100010', '');
    this.patientId = tagValue(first, '00100020', '');
    this.patientBirthDate = tagValue(first, '00100030', '');
    this.patientSex = tagValue(first, '00100040', '');
    this.studyDate = tagValue(first, '00080020', '');
    this.studyDescription = tagValue(first, '00081030', '');
    this.institution = tagValue(first, '00080080', '');
    this.description = tagValue(first, '0008103E', '');
    this.modality = tagValue(first, '00080060', '');
    this.number = tagValue(first, '00200011', null);
    this.rows = Number(tagValue(first, '00280010', 0));
    this.cols = Number(tagValue(first, '00280011', 0));
    this.bitsAllocated = Number(tagValue(first, '00280100', 16));
    this.signed = Number(tagValue(first, '00280103', 0)) === 1;
    this.samples = Number(tagValue(first, '00280002', 1));
    this.photometric = tagValue(first, '00280004', 'MONOCHROME2');
    const ps = tagValues(first, '00280030') ?? tagValues(first, '00181164');
    /** [row spacing, column spacing] in mm, or null when the image is not calibrated. */
    this.pixelSpacing = ps ? [Number(ps[0]), Number(ps[1] ?? ps[0])] : null;
    this.sliceThickness = tagValue(first, '00180050', null);
    const iop = tagValues(first, '00200037');
    this.orientation = iop && iop.length === 6 ? iop.map(Number) : null;
    this.units = this.modality === 'CT' ? 'HU' : tagValue(first, '00281054', '') || '';
    const wc = Number(tagValue(first, '00281050', NaN));
    const ww = Number(tagValue(first, '00281051', NaN));
    this.defaultWindow = Number.isFinite(wc) && Number.isFinite(ww) && ww > 0 ? { ww, wc } : null;
  }

  _buildSlices(metadata) {
    /** One entry per slice: {sop, frame (1-based), slope, intercept, position, ds}. */
    this.slices = [];
    for (const ds of metadata) {
      const sop = tagValue(ds, '00080018');
      const nFrames = Math.max(1, Number(tagValue(ds, '00280008', 1)) || 1);
      const slope = Number(tagValue(ds, '00281053', 1)) || 1;
      const intercept = Number(tagValue(ds, '00281052', 0)) || 0;
      const ipp = tagValues(ds, '00200032');
      for (let f = 1; f <= nFrames; f++) {
        this.slices.push({ sop, frame: f, slope, intercept, position: ipp ? ipp.map(Number) : null });
      }
    }
  }

  get length() {
    return this.slices.length;
  }

  get isColor() {
    return this.samples === 3;
  }

  /** Rescaled value (HU for CT) of a stored value on a slice. */
  rescale(index, stored) {
    const s = this.slices[index];
    return stored * s.slope + s.intercept;
  }

  /** The loader should work outward from `index` (and, at priority 0, load the whole stack). */
  setFocus(index, priority = this.priority) {
    this.focus = Math.max(0, Math.min(this.length - 1, index | 0));
    this.priority = Math.min(this.priority, priority);
    framePool.kick();
  }

  /** Resolves with the frame of a slice, fetching it ahead of everything else if needed. */
  frameAt(index) {
    if (this.frames[index]) return Promise.resolve(this.frames[index]);
    return new Promise((resolve, reject) => {
      const off = this.on('frame', (i) => {
        if (i !== index) return;
        off();
        offFail();
        resolve(this.frames[index]);
      });
      const offFail = this.on('frame-failed', ({ index: i, error }) => {
        if (i !== index) return;
        off();
        offFail();
        reject(error);
      });
      this.setFocus(index, Math.min(this.priority, 1));
    });
  }

  /** Bytes held by decoded frames. */
  get bytes() {
    return this.loaded * this.rows * this.cols * this.samples * (this.bitsAllocated === 8 ? 1 : 2);
  }

  /** Drops every decoded frame (memory): fetched again only when the series is shown. */
  evict() {
    this.frames.fill(null);
    this.failed.fill(false);
    this.loaded = 0;
    this.allFramesMs = null;
    this.priority = 2;
  }

  /** Next slice to fetch: the nearest missing one to the focus (priority 1: the focus only). */
  _next() {
    const n = this.length;
    const want = (i) => i >= 0 && i < n && !this.frames[i] && !this.failed[i] && !this._inFlight.has(i);
    if (want(this.focus)) return this.focus;
    if (this.priority > 0) return -1;
    // The first slice on screen alone: neighbours would slow its response down.
    if (this.loaded === 0 && this._inFlight.size) return -1;
    for (let d = 1; d < n; d++) {
      if (want(this.focus + d)) return this.focus + d;
      if (want(this.focus - d)) return this.focus - d;
    }
    return -1;
  }

  /**
   * The slices a batch should carry: the nearest missing ones to the focus, in that order,
   * once the first slice is on screen (it goes alone: a batch would delay it).
   */
  _nextBatch() {
    if (!this.batching || typeof this.api.framesBatch !== 'function') return [];
    if (this.priority > 0 || this.loaded === 0) return [];
    const picked = [];
    for (let i = this._next(); i >= 0 && picked.length < BATCH_FRAMES; i = this._next()) {
      picked.push(i);
      this._inFlight.add(i);
    }
    for (const i of picked) this._inFlight.delete(i);
    return picked;
  }

  async _load(index) {
    this._inFlight.add(index);
    const s = this.slices[index];
    try {
      this._arrived(index, await this.api.frame(this.study, this.uid, s.sop, s.frame));
    } catch (error) {
      this._failed(index, error);
    } finally {
      this._inFlight.delete(index);
    }
  }

  /** Loads several slices in one request; those it does not deliver are picked again. */
  async _loadBatch(indices) {
    for (const i of indices) this._inFlight.add(i);
    let delivered = 0;
    try {
      const items = indices.map((i) => ({ sop: this.slices[i].sop, frame: this.slices[i].frame }));
      await this.api.framesBatch(this.study, this.uid, items, (k, result) => {
        const index = indices[k];
        if (!this._inFlight.has(index)) return;
        this._inFlight.delete(index);
        delivered++;
        if (result instanceof Error) this._failed(index, result);
        else this._arrived(index, result);
      });
    } catch (error) {
      if (!delivered) console.info(`[consilium] batch frame request refused (${error.message}); one request per frame`);
      else console.warn(`[consilium] batch of series ${this.uid} cut short`, error);
    } finally {
      // A server without the extension, or one that answers it with nothing usable.
      if (!delivered) this.batching = false;
      for (const i of indices) this._inFlight.delete(i);
    }
  }

  _arrived(index, buf) {
    try {
      this.frames[index] = this._decode(buf);
    } catch (error) {
      this._failed(index, error);
      return;
    }
    this.loaded++;
    const now = performance.now();
    if (this.firstFrameMs === null) this.firstFrameMs = now - this._openedAt;
    if (this.loaded === this.length) this.allFramesMs = now - this._openedAt;
    this.emit('frame', index);
  }

  _failed(index, error) {
    console.warn(`[consilium] frame ${index} of series ${this.uid} failed`, error);
    this.failed[index] = true;
    this.emit('frame-failed', { index, error });
  }

  _decode(buf) {
    const n = this.rows * this.cols * this.samples;
    if (this.bitsAllocated === 8) {
      if (buf.byteLength < n) throw new Error(`frame has ${buf.byteLength} bytes, expected ${n}`);
      return new Uint8Array(buf, 0, n);
    }
    if (buf.byteLength < n * 2) throw new Error(`frame has ${buf.byteLength} bytes, expected ${n * 2}`);
    // Typed arrays use the platform's byte order; every browser platform is little-endian.
    return this.signed ? new Int16Array(buf, 0, n) : new Uint16Array(buf, 0, n);
  }
}

/** The shared pool: series shown in a viewport first, the rest (thumbnails) after. */
class FramePool {
  constructor(size) {
    this.size = size;
    this.active = 0;
    this.batches = 0;
    /** @type {Set<Series>} */
    this.series = new Set();
  }

  add(series) {
    this.series.add(series);
    this.kick();
  }

  remove(series) {
    this.series.delete(series);
  }

  kick() {
    while (this.active < this.size) {
      const job = this._pick();
      if (!job) return;
      this.active++;
      if (job.batch) this.batches++;
      const run = job.batch ? job.series._loadBatch(job.batch) : job.series._load(job.index);
      run.finally(() => {
        this.active--;
        if (job.batch) this.batches--;
        this.kick();
      });
    }
  }

  _pick() {
    // Focus slices of every series first (what is on screen, then thumbnails), then the rest.
    const list = [...this.series].filter((s) => s.priority <= 1).sort((a, b) => a.priority - b.priority);
    for (const s of list) {
      const i = s.frames[s.focus] || s.failed[s.focus] || s._inFlight.has(s.focus) ? -1 : s.focus;
      if (i >= 0) return { series: s, index: i };
    }
    for (const s of list) {
      if (s.batching && typeof s.api.framesBatch === 'function' && s.priority === 0 && s.loaded > 0) {
        // A batching series takes no single requests beyond its focus: their per-request
        // cost is what batches save.
        if (this.batches >= MAX_BATCHES) continue;
        const batch = s._nextBatch();
        if (batch.length) return { series: s, batch };
        continue;
      }
      const i = s._next();
      if (i >= 0) return { series: s, index: i };
    }
    return null;
  }
}

export const framePool = new FramePool(POOL_SIZE);
