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

/** Frame requests the page made (Resource Timing) and a digest of every decoded slice. */
const framesLoaded = (page) =>
  page.evaluate(() => {
    const urls = performance.getEntriesByType('resource').map((e) => e.name);
    const s = window.consiliumViewer.viewer.viewports[0].series;
    let digest = 0;
    for (const f of s.frames) for (let i = 0; i < f.length; i += 97) digest = (digest * 31 + f[i]) | 0;
    // This series' requests only (the other series' thumbnails fetch a slice each).
    const mine = urls.filter((u) => u.includes(`/series/${s.uid}/`));
    return {
      batches: mine.filter((u) => /\/series\/[^/]+\/frames\?instances=/.test(u)).length,
      singles: mine.filter((u) => /\/instances\/[^/]+\/frames\/\d/.test(u)).length,
      loaded: s.loaded,
      slices: s.length,
      digest,
    };
  });

test('a series arrives in batch requests; from a server without them, frame by frame; the same pixels', { timeout: 120_000 }, async () => {
  const url = callUrl(server.url, { room: 'demo', name: 'Dr Batch' });
  const page = await openPage(browser, url);
  let refused = 0;
  const old = await openPage(browser, url, {
    // What an older server answers for a route it does not have.
    routes: [['**/frames?instances=*', (route) => (refused++, route.fulfill({ status: 404, contentType: 'application/json', body: '{"error":"not found"}' }))]],
  });
  try {
    await loaded(page);
    await loaded(old);
    const a = await framesLoaded(page);
    const b = await framesLoaded(old);
    assert.equal(a.loaded, 120);
    assert.equal(b.loaded, 120);
    assert.ok(a.batches >= 4 && a.batches <= 12, `120 slices in batches of 32 or fewer: ${JSON.stringify(a)}`);
    // The slice on screen goes alone, ahead of the batches.
    assert.ok(a.singles >= 1 && a.singles <= 2, `the first slice alone: ${JSON.stringify(a)}`);
    assert.ok(refused >= 1 && refused <= 2, `the refused batches (${refused}) are not retried`);
    assert.ok(b.singles >= 119, `one request per frame after the refusal: ${JSON.stringify(b)}`);
    assert.equal(a.digest, b.digest, 'the same pixels either way');
    for (const p of [page, old]) assert.deepEqual(p.pageErrors, []);
  } catch (err) {
    err.message += `\n${pageLogs(page)}\n${pageLogs(old)}`;
    throw err;
  } finally {
    await closePage(page);
    await closePage(old);
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
