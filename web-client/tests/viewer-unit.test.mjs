// Unit tests of the viewer's pure modules (no browser, no server): window/level lookup
// tables, orientation markers, measurements, STOW response parsing, DICOM header reading.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildLut, renderGrey, orientationMarkers, frameRange } from '../js/viewer/render.js';
import { computeStats, lineLength, pointInPolygon, simplify, statsLines } from '../js/annotation/geometry.js';
import { readStowResult, readHeader, failureText } from '../js/viewer/upload.js';
import { formatName, formatDate, tagValue, readParts } from '../js/viewer/dicomweb.js';
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

/** The QIDO instance entry of slice i of a 4×4 signed 16-bit test series. */
const sliceDs = (i) => ({
  '00080018': { vr: 'UI', Value: [`1.2.${i}`] },
  '00280010': { vr: 'US', Value: [4] },
  '00280011': { vr: 'US', Value: [4] },
  '00280100': { vr: 'US', Value: [16] },
  '00280103': { vr: 'US', Value: [1] },
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
  const s = new Series(api, '1', '1.2', Array.from({ length: 20 }, (_, i) => sliceDs(i)));
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

/** A multipart body as the server streams it, cut into chunks at the given offsets. */
function multipartStream(parts, boundary, cuts) {
  const enc = new TextEncoder();
  const pieces = [];
  for (const { type, body } of parts) {
    pieces.push(enc.encode(`--${boundary}\r\nContent-Type: ${type}\r\nContent-Location: /x/${pieces.length}\r\nContent-Length: ${body.length}\r\n\r\n`), body, enc.encode('\r\n'));
  }
  pieces.push(enc.encode(`--${boundary}--\r\n`));
  const all = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of pieces) {
    all.set(p, at);
    at += p.length;
  }
  const edges = [0, ...cuts.filter((c) => c > 0 && c < all.length).sort((a, b) => a - b), all.length];
  return {
    length: all.length,
    stream: new ReadableStream({
      start(controller) {
        for (let i = 1; i < edges.length; i++) if (edges[i] > edges[i - 1]) controller.enqueue(all.slice(edges[i - 1], edges[i]));
        controller.close();
      },
    }),
  };
}

test('multipart reader: parts by Content-Length, whatever the chunking (inside headers, pixels, CRLFs)', async () => {
  // Pixel bodies that contain the boundary and blank lines must not confuse it.
  const boundary = 'b-7';
  const tricky = new TextEncoder().encode(`x\r\n\r\n--${boundary}--\r\n`);
  const parts = [
    { type: 'application/octet-stream', body: Uint8Array.from({ length: 1000 }, (_, i) => i & 0xff) },
    { type: 'application/json', body: new TextEncoder().encode('{"error":"cannot decode"}') },
    { type: 'application/octet-stream', body: tricky },
    { type: 'application/octet-stream', body: new Uint8Array(0) },
  ];
  let seed = 7;
  const rand = (n) => ((seed = (seed * 1103515245 + 12345) % 2147483648), seed % n);
  const { length } = multipartStream(parts, boundary, []);
  const cuttings = [[], Array.from({ length }, (_, i) => i), ...Array.from({ length: 30 }, () => Array.from({ length: 1 + rand(12) }, () => rand(length)))];
  for (const cuts of cuttings) {
    const got = [];
    await readParts(multipartStream(parts, boundary, cuts).stream, boundary, (headers, body) => got.push({ headers, body }));
    assert.equal(got.length, parts.length, `cuts ${cuts.slice(0, 12)}`);
    got.forEach((g, k) => {
      assert.equal(g.headers.get('content-type'), parts[k].type);
      assert.equal(g.headers.get('content-location'), `/x/${k * 3}`);
      assert.deepEqual([...g.body], [...parts[k].body]);
    });
  }
  const noLength = new ReadableStream({
    start(c) {
      c.enqueue(new TextEncoder().encode(`--${boundary}\r\nContent-Type: a/b\r\n\r\nxx`));
      c.close();
    },
  });
  await assert.rejects(readParts(noLength, boundary, () => {}), /Content-Length/);
});

function batchSeries(api, n) {
  return import('../js/viewer/series.js').then(({ Series, framePool }) => {
    const s = new Series(api, '1', '1.2', Array.from({ length: n }, (_, i) => sliceDs(i)));
    framePool.add(s);
    const settled = () => s.loaded + s.failed.filter(Boolean).length === s.length;
    const done = new Promise((resolve) => {
      s.on('frame', () => settled() && resolve());
      s.on('frame-failed', () => settled() && resolve());
    });
    s.setFocus(Math.floor(n / 2), 0);
    return { s, done, framePool };
  });
}

test('frame loader with batches: focus alone, then outward in batches of at most 32, 2 at once; a cut-short batch is resumed', async () => {
  const singles = [];
  const batches = [];
  let active = 0;
  let maxActive = 0;
  let cut = true;
  const api = {
    frame: async (study, series, sop) => {
      singles.push(Number(sop.split('.').pop()));
      return new ArrayBuffer(32);
    },
    framesBatch: async (study, series, items, onFrame) => {
      active++;
      maxActive = Math.max(maxActive, active);
      batches.push(items.map((it) => Number(it.sop.split('.').pop())));
      const call = batches.length;
      await new Promise((r) => setTimeout(r, 2));
      // The first batch stops after 5 frames, as a dropped connection would.
      const upto = cut ? 5 : items.length;
      cut = false;
      for (let k = 0; k < upto; k++) onFrame(k, k === 2 && call === 2 ? new Error('cannot decode') : new ArrayBuffer(32));
      active--;
      if (upto < items.length) throw new Error('connection reset');
    },
    metadata: async () => [],
  };
  const { s, done, framePool } = await batchSeries(api, 100);
  await done;
  assert.deepEqual(singles, [50], 'only the focus goes alone');
  assert.deepEqual(batches[0].slice(0, 4), [51, 49, 52, 48], 'then outward from it');
  assert.ok(batches.every((b) => b.length <= 32));
  assert.ok(maxActive <= 2, `at most 2 batches at once (${maxActive})`);
  const asked = batches.flat();
  assert.equal(s.failed.filter(Boolean).length, 1, 'a part with an error fails that slice alone');
  assert.equal(s.loaded, 99);
  assert.equal(new Set(asked).size, 99, 'every other slice asked for');
  assert.equal(asked.length, 99 + 27, 'the 27 frames a cut-short batch did not carry are asked again');
  framePool.remove(s);
});

test('frame loader falls back to one request per frame when the server refuses batches', async () => {
  const { DicomWebError } = await import('../js/viewer/dicomweb.js');
  let singles = 0;
  let refused = 0;
  const api = {
    frame: async () => {
      singles++;
      return new ArrayBuffer(32);
    },
    framesBatch: async () => {
      refused++;
      throw new DicomWebError('404 Not Found', 404);
    },
    metadata: async () => [],
  };
  const { s, done, framePool } = await batchSeries(api, 30);
  await done;
  assert.equal(s.loaded, 30);
  assert.equal(singles, 30);
  assert.ok(refused >= 1 && refused <= 2, `stops asking for batches (${refused})`);
  assert.equal(s.batching, false);
  framePool.remove(s);
});
