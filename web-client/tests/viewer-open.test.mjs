// The viewer's opening instrumentation (User Timing marks the benchmark bench/viewer.mjs
// reads) and the frame cache validators, against a real server with its demo CT phantom and
// a real Chromium page. Checks order and content, never durations.
// Run from web-client/: node --test tests/viewer-open.test.mjs

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer, launchBrowser, openPage, closePage, waitFor, callUrl, pageLogs } from './helpers.mjs';

const MARKS = ['consilium:series-open', 'consilium:first-slice-drawn', 'consilium:all-slices-loaded'];

let server;
let browser;
let dataDir;

before(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'consilium-viewer-open-'));
  server = await startServer({ env: { CONSILIUM_DATA_DIR: dataDir, CONSILIUM_DEMO_STUDY: 'true' } });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true }).catch(() => {});
});

/** The page's marks of MARKS, in time order, with their detail. */
const marks = (page) =>
  page.evaluate((names) =>
    performance
      .getEntriesByType('mark')
      .filter((m) => names.includes(m.name))
      .sort((a, b) => a.startTime - b.startTime)
      .map((m) => ({ name: m.name, startTime: m.startTime, detail: m.detail })),
  MARKS);

const loaded = (page, after = -1) =>
  waitFor(
    () =>
      page.evaluate((after) => {
        const m = window.consiliumViewer?.metrics();
        return m && m.openedAt > after && m.allSlicesMs !== null && m.firstSliceMs !== null ? m : null;
      }, after),
    { timeout: 60_000, message: 'the demo series to load completely' },
  );

test('opening a series leaves ordered marks: open, first slice painted, all slices in memory', { timeout: 120_000 }, async () => {
  const page = await openPage(browser, callUrl(server.url, { room: 'demo', name: 'Dr Marks' }));
  try {
    const m = await loaded(page);
    const seen = await marks(page);
    assert.deepEqual(seen.map((x) => x.name), MARKS, `marks at the first open: ${JSON.stringify(seen)}`);
    for (const x of seen) assert.deepEqual(x.detail, { series: m.series, slices: 120 });
    assert.deepEqual(m.marks.map((x) => x.name), MARKS);
    // The first slice mark means pixels on the canvas: the viewport says which slice it painted.
    const painted = await page.evaluate(() => {
      const vp = window.consiliumViewer.viewer.viewports[0];
      return { painted: vp.paintedSlice, slice: vp.state.slice, loaded: vp.series.loaded, n: vp.series.length };
    });
    assert.equal(painted.painted, painted.slice);
    assert.equal(painted.loaded, painted.n);

    // A second, cold open from the thumbnail: three more marks, after the click, in order.
    await page.waitForSelector('.vw-thumb canvas[data-ready="true"]', { timeout: 30_000 });
    await page.evaluate(() => window.consiliumViewer.viewer.dropCache());
    const clickAt = await page.evaluate(() => performance.now());
    await page.locator('.vw-thumb').first().click();
    const again = await loaded(page, clickAt);
    const later = (await marks(page)).filter((x) => x.startTime >= clickAt);
    assert.deepEqual(later.map((x) => x.name), MARKS, `marks after the click: ${JSON.stringify(later)}`);
    assert.ok(again.firstSliceMs <= again.allSlicesMs);
  } catch (err) {
    err.message += `\n${pageLogs(page)}`;
    throw err;
  } finally {
    await closePage(page);
  }
});

test('a frame carries a validator: revalidating it costs a 304 without the pixels', async () => {
  const api = (p) => `${server.url}/dicomweb${p}${p.includes('?') ? '&' : '?'}room=demo`;
  const json = async (p) => (await fetch(api(p), { headers: { Accept: 'application/dicom+json' } })).json();
  const tag = (ds, t) => ds[t]?.Value?.[0];
  const study = tag((await json('/studies'))[0], '0020000D');
  const series = tag((await json(`/studies/${study}/series`))[0], '0020000E');
  const sop = tag((await json(`/studies/${study}/series/${series}/instances`))[0], '00080018');
  const frame = api(`/studies/${study}/series/${series}/instances/${sop}/frames/1`);
  const first = await fetch(frame, { headers: { Accept: 'application/octet-stream' } });
  assert.equal(first.status, 200);
  assert.equal((await first.arrayBuffer()).byteLength, 512 * 512 * 2);
  const etag = first.headers.get('etag');
  assert.match(etag ?? '', /^"[0-9a-f]+-1"$/);
  assert.match(first.headers.get('cache-control') ?? '', /no-cache/);
  const again = await fetch(frame, { headers: { Accept: 'application/octet-stream', 'If-None-Match': etag } });
  assert.equal(again.status, 304);
  assert.equal((await again.arrayBuffer()).byteLength, 0);
  const other = await fetch(frame, { headers: { Accept: 'application/octet-stream', 'If-None-Match': '"not-this-one"' } });
  assert.equal(other.status, 200);
  await other.arrayBuffer();
  // Another frame list of the same instance is another representation.
  const two = await fetch(frame.replace('/frames/1', '/frames/1,1'), { headers: { Accept: 'multipart/related; type="application/octet-stream"' } });
  assert.equal(two.status, 200);
  assert.ok(two.headers.get("etag"));
  assert.notEqual(two.headers.get("etag"), etag);
  await two.arrayBuffer();
});
