// Pixel pipeline: stored values → rescale → window/level → 8-bit grey, through a lookup table
// indexed by the stored value, so a window/level drag rebuilds at most 65536 entries and then
// costs one table read per pixel. Output goes into an ImageData the size of the image.

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

function rgba(g) {
  return LITTLE_ENDIAN ? (0xff000000 | (g << 16) | (g << 8) | g) >>> 0 : ((g << 24) | (g << 16) | (g << 8) | 0xff) >>> 0;
}

/**
 * A lookup table from stored value to packed RGBA grey. `offset` maps the stored value to an
 * index (32768 for signed 16-bit data).
 */
export function buildLut({ bits, signed, slope, intercept, ww, wc, invert }) {
  const size = bits === 8 ? 256 : 65536;
  const offset = bits !== 8 && signed ? 32768 : 0;
  const lut = new Uint32Array(size);
  // DICOM PS3.3 C.11.2.1.2 linear window.
  const w = Math.max(1, ww);
  const lo = wc - 0.5 - (w - 1) / 2;
  const hi = wc - 0.5 + (w - 1) / 2;
  for (let i = 0; i < size; i++) {
    const v = (i - offset) * slope + intercept;
    let g;
    if (v <= lo) g = 0;
    else if (v > hi) g = 255;
    else g = Math.round(((v - (wc - 0.5)) / (w - 1) + 0.5) * 255);
    if (invert) g = 255 - g;
    lut[i] = rgba(g < 0 ? 0 : g > 255 ? 255 : g);
  }
  return { lut, offset };
}

/** Cache of the last table per viewport: a scroll through a stack reuses it. */
export class LutCache {
  constructor() {
    this.key = '';
    this.value = null;
  }

  get(params) {
    const key = `${params.bits}|${params.signed}|${params.slope}|${params.intercept}|${params.ww}|${params.wc}|${params.invert}`;
    if (key !== this.key) {
      this.key = key;
      this.value = buildLut(params);
    }
    return this.value;
  }
}

/** Writes a greyscale frame into `image` (an ImageData of the frame's size). */
export function renderGrey(frame, image, { lut, offset }) {
  const out = new Uint32Array(image.data.buffer, image.data.byteOffset, image.width * image.height);
  const n = Math.min(out.length, frame.length);
  if (offset) for (let i = 0; i < n; i++) out[i] = lut[frame[i] + offset];
  else for (let i = 0; i < n; i++) out[i] = lut[frame[i]];
}

/** Writes an interleaved RGB frame, window/level applied to each channel alike. */
export function renderRgb(frame, image, { ww, wc, invert }) {
  const d = image.data;
  const map = new Uint8ClampedArray(256);
  const w = Math.max(1, ww);
  for (let i = 0; i < 256; i++) {
    let g = ((i - (wc - 0.5)) / (w - 1) + 0.5) * 255;
    if (invert) g = 255 - g;
    map[i] = g;
  }
  const n = image.width * image.height;
  for (let p = 0, q = 0; p < n; p++, q += 3) {
    const o = p * 4;
    d[o] = map[frame[q]];
    d[o + 1] = map[frame[q + 1]];
    d[o + 2] = map[frame[q + 2]];
    d[o + 3] = 255;
  }
}

/** Range of rescaled values in a frame (for a default window when the tags have none). */
export function frameRange(frame, slope, intercept) {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < frame.length; i++) {
    const v = frame[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const a = lo * slope + intercept;
  const b = hi * slope + intercept;
  return [Math.min(a, b), Math.max(a, b)];
}

/**
 * Patient-axis letters at the image edges from ImageOrientationPatient: the direction of
 * +column (row vector) and +row (column vector), each named by its dominant axes.
 */
export function orientationMarkers(iop) {
  if (!iop) return null;
  const row = iop.slice(0, 3);
  const col = iop.slice(3, 6);
  const name = (v) => {
    const letters = [
      [v[0], 'L', 'R'], // LPS: +x is patient left
      [v[1], 'P', 'A'],
      [v[2], 'S', 'I'],
    ]
      .filter(([c]) => Math.abs(c) > 0.25)
      .sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]))
      .map(([c, pos, neg]) => (c > 0 ? pos : neg));
    return letters.slice(0, 2).join('');
  };
  const neg = (v) => v.map((x) => -x);
  return { right: name(row), left: name(neg(row)), bottom: name(col), top: name(neg(col)) };
}
