// Front-end development server: serves this web client and a stand-in DICOMweb API with a
// synthetic CT phantom (120 × 512 × 512, HU), so the viewer can be worked on without the Rust
// server. No signaling: the call part of the page stays disconnected.
//
//   node tools/dev-server.mjs [--port 8090]

import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const port = Number(process.argv[process.argv.indexOf('--port') + 1]) || 8090;
const N = 120;
const SIZE = 512;
const STUDY = '1.2.826.0.1.3680043.10.1001.1';
const SERIES = '1.2.826.0.1.3680043.10.1001.1.1';
const sop = (i) => `${SERIES}.${i + 1}`;

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml' };

function phantomSlice(k) {
  const px = new Int16Array(SIZE * SIZE);
  const z = (k - N / 2) / (N / 2);
  for (let r = 0; r < SIZE; r++) {
    for (let c = 0; c < SIZE; c++) {
      const x = (c - 256) / 256;
      const y = (r - 266) / 256;
      let hu = -1000;
      if ((x / 0.82) ** 2 + (y / 0.6) ** 2 < 1) hu = 40 + 10 * Math.sin(c / 9) * Math.cos(r / 11);
      if ((x / 0.86) ** 2 + (y / 0.64) ** 2 < 1 && (x / 0.82) ** 2 + (y / 0.6) ** 2 >= 1) hu = -100;
      const lungR = 0.26 * Math.sqrt(Math.max(0, 1 - z * z * 0.8));
      for (const sx of [-0.38, 0.38]) if (((x - sx) / lungR) ** 2 + ((y + 0.05) / (lungR * 1.5)) ** 2 < 1) hu = -850;
      if ((x - 0.08) ** 2 + (y + 0.02) ** 2 < 0.025 && z > -0.3) hu = 45;
      if (x ** 2 + (y - 0.42) ** 2 < 0.009) hu = 700;
      if (x ** 2 + (y - 0.42) ** 2 < 0.004) hu = 250;
      if ((x + 0.2 - z * 0.05) ** 2 + (y + 0.1) ** 2 < 0.002) hu = 60; // nodule moving with z
      px[r * SIZE + c] = Math.round(hu);
    }
  }
  return px;
}

const cache = new Map();
function frame(k) {
  if (!cache.has(k)) cache.set(k, Buffer.from(phantomSlice(k).buffer));
  return cache.get(k);
}

const el = (vr, ...Value) => ({ vr, Value });
const studyDs = () => ({
  '0020000D': el('UI', STUDY),
  '00100010': el('PN', { Alphabetic: 'PHANTOM^CT^^' }),
  '00100020': el('LO', 'DEMO-0001'),
  '00080020': el('DA', '20260115'),
  '00081030': el('LO', 'CT Thorax phantom'),
  '00201208': el('IS', N),
});
const seriesDs = () => ({ ...studyDs(), '0020000E': el('UI', SERIES), '00080060': el('CS', 'CT'), '0008103E': el('LO', 'Axial 2.5 mm'), '00200011': el('IS', 2), '00201209': el('IS', N) });
const instanceDs = (i) => ({
  ...seriesDs(),
  '00080018': el('UI', sop(i)),
  '00200013': el('IS', i + 1),
  '00280010': el('US', SIZE),
  '00280011': el('US', SIZE),
  '00280030': el('DS', 0.7, 0.7),
  '00180050': el('DS', 2.5),
  '00280100': el('US', 16),
  '00280101': el('US', 16),
  '00280103': el('US', 1),
  '00280002': el('US', 1),
  '00280004': el('CS', 'MONOCHROME2'),
  '00281052': el('DS', 0),
  '00281053': el('DS', 1),
  '00281050': el('DS', 40),
  '00281051': el('DS', 400),
  '00200037': el('DS', 1, 0, 0, 0, 1, 0),
  '00200032': el('DS', -179.2, -179.2, -150 + i * 2.5),
});

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  const p = url.pathname;
  const json = (v) => {
    res.writeHead(200, { 'content-type': 'application/dicom+json' });
    res.end(JSON.stringify(v));
  };
  let m;
  if (p === '/dicomweb/studies' && req.method === 'GET') return json(url.searchParams.get('room') === 'demo' ? [studyDs()] : []);
  if (p === '/dicomweb/studies' && req.method === 'POST') {
    req.resume();
    req.on('end', () => json({ '00081199': { vr: 'SQ', Value: [] }, '00081198': { vr: 'SQ', Value: [{ '00081150': el('UI', '1.2.3'), '00081155': el('UI', '1.2.3.4'), '00081197': el('US', 0xc000) }] } }));
    return;
  }
  if ((m = /^\/dicomweb\/studies\/([^/]+)\/series$/.exec(p))) return json([seriesDs()]);
  if ((m = /^\/dicomweb\/studies\/([^/]+)\/series\/([^/]+)\/instances$/.exec(p))) return json(Array.from({ length: N }, (_, i) => instanceDs(i)));
  if ((m = /^\/dicomweb\/studies\/([^/]+)\/series\/([^/]+)\/metadata$/.exec(p))) return json(Array.from({ length: N }, (_, i) => instanceDs(i)));
  if ((m = /^\/dicomweb\/studies\/[^/]+\/series\/[^/]+\/instances\/([^/]+)\/frames\/1$/.exec(p))) {
    const i = Number(m[1].split('.').pop()) - 1;
    res.writeHead(200, { 'content-type': 'application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1' });
    return res.end(frame(i));
  }
  if (p === '/ws' || p.startsWith('/dicomweb')) {
    res.writeHead(404);
    return res.end();
  }
  try {
    const file = path.join(ROOT, path.normalize(p === '/' ? '/index.html' : p));
    if (!file.startsWith(ROOT)) throw new Error('outside');
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end('not found');
  }
});
server.listen(port, '127.0.0.1', () => console.log(`dev server on http://127.0.0.1:${port}/`));
