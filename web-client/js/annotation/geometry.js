// Measurements on the image, in image-pixel coordinates (column, row), with the values taken
// from the 16-bit stored data and rescaled (HU for CT), never from the displayed 8-bit grey.

/** Millimetres per pixel along x (columns) and y (rows); PixelSpacing is [row, column]. */
function spacing(series) {
  const ps = series.pixelSpacing;
  return ps ? { sx: ps[1], sy: ps[0], unit: 'mm' } : { sx: 1, sy: 1, unit: 'px' };
}

export function lineLength(series, [a, b]) {
  const { sx, sy, unit } = spacing(series);
  return { length: Math.hypot((b[0] - a[0]) * sx, (b[1] - a[1]) * sy), unit };
}

/** Statistics of rescaled values over the pixels whose centres pass `inside`. */
function regionStats(series, sliceIndex, frame, bbox, inside) {
  const cols = series.cols;
  const rows = series.rows;
  const c0 = Math.max(0, Math.floor(bbox[0]));
  const c1 = Math.min(cols - 1, Math.ceil(bbox[2]));
  const r0 = Math.max(0, Math.floor(bbox[1]));
  const r1 = Math.min(rows - 1, Math.ceil(bbox[3]));
  const s = series.slices[sliceIndex];
  let n = 0;
  let sum = 0;
  let sum2 = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let r = r0; r <= r1; r++) {
    for (let c = c0; c <= c1; c++) {
      if (!inside(c + 0.5, r + 0.5)) continue;
      const v = frame[r * cols + c] * s.slope + s.intercept;
      n++;
      sum += v;
      sum2 += v * v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  if (!n) return { n: 0 };
  const mean = sum / n;
  return { n, mean, sd: Math.sqrt(Math.max(0, sum2 / n - mean * mean)), min, max };
}

export function ellipseStats(series, sliceIndex, frame, [p, q]) {
  const { sx, sy, unit } = spacing(series);
  const cx = (p[0] + q[0]) / 2;
  const cy = (p[1] + q[1]) / 2;
  const a = Math.abs(q[0] - p[0]) / 2;
  const b = Math.abs(q[1] - p[1]) / 2;
  const out = { area: Math.PI * a * b * sx * sy, areaUnit: unit === 'mm' ? 'mm2' : 'px2' };
  if (frame && a > 0 && b > 0 && !series.isColor) {
    Object.assign(
      out,
      regionStats(series, sliceIndex, frame, [cx - a, cy - b, cx + a, cy + b], (x, y) => ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1),
    );
  }
  return out;
}

export function polygonStats(series, sliceIndex, frame, pts) {
  const { sx, sy, unit } = spacing(series);
  let area = 0;
  let x0 = Infinity;
  let y0 = Infinity;
  let x1 = -Infinity;
  let y1 = -Infinity;
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
    area += (pts[j][0] + pts[i][0]) * (pts[j][1] - pts[i][1]);
    x0 = Math.min(x0, pts[i][0]);
    y0 = Math.min(y0, pts[i][1]);
    x1 = Math.max(x1, pts[i][0]);
    y1 = Math.max(y1, pts[i][1]);
  }
  const out = { area: (Math.abs(area) / 2) * sx * sy, areaUnit: unit === 'mm' ? 'mm2' : 'px2' };
  if (frame && !series.isColor && pts.length >= 3) Object.assign(out, regionStats(series, sliceIndex, frame, [x0, y0, x1, y1], (x, y) => pointInPolygon(x, y, pts)));
  return out;
}

export function pointInPolygon(x, y, pts) {
  let inside = false;
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
    const [xi, yi] = pts[i];
    const [xj, yj] = pts[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/** Distance from point p to segment ab (any units). */
export function distToSegment(p, a, b) {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const l2 = dx * dx + dy * dy;
  let t = l2 ? ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / l2 : 0;
  t = Math.max(0, Math.min(1, t));
  return Math.hypot(p[0] - (a[0] + t * dx), p[1] - (a[1] + t * dy));
}

/** Drops points closer than `minDist` to the previous kept one; keeps at most `max`. */
export function simplify(pts, minDist, max = 2000) {
  const out = [];
  for (const p of pts) {
    const last = out[out.length - 1];
    if (!last || Math.hypot(p[0] - last[0], p[1] - last[1]) >= minDist) out.push(p);
  }
  if (out.length <= max) return out;
  const step = out.length / max;
  return Array.from({ length: max }, (_, i) => out[Math.floor(i * step)]);
}

const fmt = (v, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '–');

/** The label lines shown next to a measurement. */
export function statsLines(kind, stats) {
  if (!stats) return [];
  if (kind === 'line' && stats.length_mm !== undefined) return [`${fmt(stats.length_mm)} mm`];
  if (kind === 'line' && stats.length_px !== undefined) return [`${fmt(stats.length_px)} px`];
  if (kind === 'ellipse' || kind === 'freehand') {
    const lines = [];
    if (stats.area_mm2 !== undefined) lines.push(stats.area_mm2 >= 100 ? `Area ${fmt(stats.area_mm2 / 100, 2)} cm²` : `Area ${fmt(stats.area_mm2)} mm²`);
    else if (stats.area_px2 !== undefined) lines.push(`Area ${fmt(stats.area_px2, 0)} px²`);
    if (stats.mean !== undefined) {
      const u = stats.unit ? ` ${stats.unit}` : '';
      lines.push(`Mean ${fmt(stats.mean)} SD ${fmt(stats.sd)}${u}`);
      lines.push(`Min ${fmt(stats.min, 0)} Max ${fmt(stats.max, 0)}${u}`);
    }
    return lines;
  }
  return [];
}

/** The `stats` object sent with an annotation. */
export function computeStats(kind, series, sliceIndex, frame, points) {
  const unit = series.units || null;
  if (kind === 'line') {
    const { length, unit: u } = lineLength(series, points);
    return u === 'mm' ? { length_mm: round(length, 2) } : { length_px: round(length, 2) };
  }
  if (kind === 'ellipse' || kind === 'freehand') {
    const r = kind === 'ellipse' ? ellipseStats(series, sliceIndex, frame, points) : polygonStats(series, sliceIndex, frame, points);
    const out = r.areaUnit === 'mm2' ? { area_mm2: round(r.area, 2) } : { area_px2: round(r.area, 1) };
    if (r.n) Object.assign(out, { mean: round(r.mean, 2), sd: round(r.sd, 2), min: round(r.min, 2), max: round(r.max, 2), n: r.n, unit });
    return out;
  }
  return null;
}

function round(v, d) {
  const k = 10 ** d;
  return Math.round(v * k) / k;
}
