// Unit tests of the viewer's pure modules (no browser, no server): window/level lookup
// tables, orientation markers, measurements, STOW response parsing, DICOM header reading.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildLut, renderGrey, orientationMarkers, frameRange } from '../js/viewer/render.js';
import { computeStats, lineLength, pointInPolygon, simplify, statsLines } from '../js/annotation/geometry.js';
import { readStowResult, readHeader, failureText } from '../js/viewer/upload.js';
import { formatName, formatDate, tagValue } from '../js/viewer/dicomweb.js';
import { ctSlice } from './dicom-fixture.mjs';

const grey = (packed) => packed & 0xff;

test('window/level lookup: DICOM linear window on rescaled values, signed data', () => {
  const { lut, offset } = buildLut({ bits: 16, signed: true, slope: 1, intercept: 0, ww: 400, wc: 40, invert: false });
  assert.equal(offset, 32768);
  assert.equal(grey(lut[-160 + offset]), 0); // wc - ww/2
  assert.equal(grey(lut[240 + offset]), 255); // wc + ww/2
  assert.ok(Math.abs(grey(lut[40 + offset]) - 128) <= 1);
  assert.equal(grey(lut[-1000 + offset]), 0);
  const inv = buildLut({ bits: 16, signed: true, slope: 1, intercept: 0, ww: 400, wc: 40, invert: true });
  assert.equal(grey(inv.lut[-1000 + offset]), 255);
});

test('window/level lookup: unsigned data with a rescale intercept', () => {
  const { lut, offset } = buildLut({ bits: 16, signed: false, slope: 1, intercept: -1024, ww: 1500, wc: -600, invert: false });
  assert.equal(offset, 0);
  assert.equal(grey(lut[0]), 55); // -1024 HU, inside the lung window (-1350 … 150)
  assert.equal(grey(lut[0 + 0]), grey(lut[0]));
  assert.ok(grey(lut[1024 - 600]) >= 127 && grey(lut[1024 - 600]) <= 128);
  assert.equal(grey(lut[1024 + 200]), 255);
});

test('renderGrey writes one opaque pixel per value', () => {
  const frame = new Int16Array([-1000, 40, 1000, 0]);
  const image = { width: 2, height: 2, data: new Uint8ClampedArray(16) };
  renderGrey(frame, image, buildLut({ bits: 16, signed: true, slope: 1, intercept: 0, ww: 400, wc: 40, invert: false }));
  assert.deepEqual([...image.data].filter((_, i) => i % 4 === 0), [0, 128, 255, 102]);
  assert.ok([...image.data].filter((_, i) => i % 4 === 3).every((a) => a === 255));
  assert.deepEqual(frameRange(frame, 1, -1024), [-2024, -24]);
});

test('orientation markers from ImageOrientationPatient', () => {
  assert.deepEqual(orientationMarkers([1, 0, 0, 0, 1, 0]), { right: 'L', left: 'R', bottom: 'P', top: 'A' });
  // Coronal: rows along +x, columns along -z.
  assert.deepEqual(orientationMarkers([1, 0, 0, 0, 0, -1]), { right: 'L', left: 'R', bottom: 'I', top: 'S' });
  // Sagittal: rows along +y, columns along -z.
  assert.deepEqual(orientationMarkers([0, 1, 0, 0, 0, -1]), { right: 'P', left: 'A', bottom: 'I', top: 'S' });
  assert.equal(orientationMarkers(null), null);
});

function fakeSeries(frame, cols, rows) {
  return { pixelSpacing: [0.5, 0.7], cols, rows, isColor: false, units: 'HU', slices: [{ slope: 1, intercept: -1000 }] };
}

test('measurements: length in mm (PixelSpacing is row, column), ellipse statistics from stored values', () => {
  const s = fakeSeries(null, 10, 10);
  // 10 columns × 0.7 mm and 10 rows × 0.5 mm.
  assert.ok(Math.abs(lineLength(s, [[0, 0], [10, 0]]).length - 7) < 1e-9);
  assert.ok(Math.abs(lineLength(s, [[0, 0], [0, 10]]).length - 5) < 1e-9);
  const frame = new Int16Array(100).fill(1000); // rescaled: 0
  frame[55] = 1100; // rescaled 100, inside
  const st = computeStats('ellipse', s, 0, frame, [[2, 2], [8, 8]]);
  assert.ok(Math.abs(st.area_mm2 - Math.PI * 3 * 3 * 0.35) < 0.01);
  assert.equal(st.min, 0);
  assert.equal(st.max, 100);
  assert.ok(st.mean > 0 && st.mean < 100 && st.sd > 0);
  assert.equal(st.unit, 'HU');
  assert.deepEqual(statsLines('line', { length_mm: 12.345 }), ['12.3 mm']);
  const poly = computeStats('freehand', s, 0, frame, [[0, 0], [10, 0], [10, 10], [0, 10]]);
  assert.ok(Math.abs(poly.area_mm2 - 35) < 1e-9);
  assert.equal(poly.n, 100);
  assert.equal(pointInPolygon(3, 6, [[0, 0], [10, 0], [10, 10]]), false);
  assert.equal(pointInPolygon(6, 3, [[0, 0], [10, 0], [10, 10]]), true);
  assert.equal(simplify(Array.from({ length: 5000 }, (_, i) => [i, 0]), 0.5).length, 2000);
});

test('STOW-RS response: stored and failed instances, failure reasons', () => {
  const r = readStowResult({
    '00081190': { vr: 'UR', Value: ['http://h/dicomweb/studies/1.2.3'] },
    '00081199': { vr: 'SQ', Value: [{ '00081155': { vr: 'UI', Value: ['1.2.3.4'] } }] },
    '00081198': { vr: 'SQ', Value: [{ '00081155': { vr: 'UI', Value: ['1.2.3.5'] }, '00081197': { vr: 'US', Value: [0xa900] } }] },
  });
  assert.deepEqual(r, { stored: ['1.2.3.4'], failed: [{ sop: '1.2.3.5', reason: 0xa900 }], studies: ['1.2.3'] });
  assert.match(failureText(0xc000), /cannot understand.*0xC000/);
});

test('DICOM header: SOP Instance UID and Study UID of a Part 10 file; other files refused', async () => {
  const buf = ctSlice({ study: '1.2.3', series: '1.2.3.1', sop: '1.2.3.1.9' });
  const head = await readHeader(new Blob([buf]));
  assert.deepEqual(head, { sop: '1.2.3.1.9', study: '1.2.3' });
  assert.equal(await readHeader(new Blob(['hello'])), null);
});

test('DICOM JSON helpers', () => {
  assert.equal(formatName('DOE^JANE^^DR'), 'DOE, DR JANE');
  assert.equal(formatDate('20260115'), '2026-01-15');
  assert.equal(tagValue({ '00100010': { vr: 'PN', Value: [{ Alphabetic: 'A^B' }] } }, '00100010'), 'A^B');
});

test('frame loader: the slice on screen first (alone), then outward; at most 6 requests; evict', async () => {
  const { Series, framePool } = await import('../js/viewer/series.js');
  const order = [];
  let active = 0;
  let maxActive = 0;
  const api = {
    frame: async (study, series, sop) => {
      active++;
      maxActive = Math.max(maxActive, active);
      order.push(Number(sop.split('.').pop()));
      await new Promise((r) => setTimeout(r, 2));
      active--;
      return new ArrayBuffer(4 * 4 * 2);
    },
    metadata: async () => [],
  };
  const ds = (i) => ({
    '00080018': { vr: 'UI', Value: [`1.2.${i}`] },
    '00280010': { vr: 'US', Value: [4] },
    '00280011': { vr: 'US', Value: [4] },
    '00280100': { vr: 'US', Value: [16] },
    '00280103': { vr: 'US', Value: [1] },
  });
  const s = new Series(api, '1', '1.2', Array.from({ length: 20 }, (_, i) => ds(i)));
  framePool.add(s);
  const done = new Promise((resolve) => s.on('frame', () => s.loaded === s.length && resolve()));
  s.setFocus(10, 0);
  await done;
  assert.equal(order[0], 10, 'the focus first');
  assert.deepEqual(order.slice(1, 5).sort((a, b) => a - b), [8, 9, 11, 12], 'then its neighbours');
  assert.ok(maxActive <= 6, `at most 6 at once (${maxActive})`);
  assert.ok(s.frames.every((f) => f instanceof Int16Array && f.length === 16));
  assert.equal(s.bytes, 20 * 16 * 2);
  s.evict();
  assert.equal(s.loaded, 0);
  assert.equal(s.bytes, 0);
  framePool.remove(s);
});
