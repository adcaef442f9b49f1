#!/usr/bin/env node
// Shared-viewer benchmark (docs/benchmarks.md, "Shared viewer: opening and scrolling a
// series"): how soon a 512×512 series is on screen and fully scrollable, and what the server
// holds in memory while 20 viewers open and scroll the demo study.
//
//   node bench/viewer.mjs open   [--url URL] [--runs 10]             demo CT (120 × 512×512)
//   node bench/viewer.mjs scroll [--url URL] [--runs 5] [--slices 200]
//   node bench/viewer.mjs load   [--url URL] --pid PID [--viewers 20] [--rounds 3] [--runs 3]
//   common: [--out DIR] (default bench/results); scroll: [--profile DIR] writes a CPU profile of
//   the page per run (open in DevTools) and prints the functions with the most self time
//
// open:   each run opens a fresh browser context (no HTTP cache) on room `demo`; the viewer
//         opens the study itself (navigation → first slice painted, → all slices in memory);
//         once the call is connected the page forgets every frame and the benchmark clicks the
//         series' thumbnail (the user's "open series" → first slice painted, → all loaded).
//         Figures are the viewer's User Timing marks (VIEWER_MARKS in js/viewer/viewer.js).
// scroll: stores a synthetic CT series of --slices 512×512 slices (tests/dicom-fixture.mjs,
//         over STOW-RS) in a room of its own, then per run a fresh context: navigation → all
//         slices in memory, and a scroll through every slice, one per animation frame,
//         counting the slices that were not painted in the frame they were asked for.
// load:   --viewers headless HTTP clients (not browsers: 20 Chromium pages would saturate the
//         2-core machine with rendering and measure the browser, not the server) each make the
//         viewer's requests for the demo study: QIDO instances, the middle slice alone, then
//         the other frames outward in batch requests of 32, 2 at once (as js/viewer/series.js
//         does), then the full metadata; a batched frame's latency is its batch's time over
//         its frames. --rounds times each (a reload without an HTTP cache). The server's RSS is sampled from /proc/PID/status every 20 ms and
//         process_resident_memory_bytes read from /metrics before, after, and 2 s after.
//
// Server: --url, else CONSILIUM_URL, else CONSILIUM_BIN started by tests/helpers.mjs.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { WEB_CLIENT_DIR, callUrl, closePage, launchBrowser, openPage, startServer, uniqueRoom, waitFor } from '../tests/helpers.mjs';
import { ctSlice } from '../tests/dicom-fixture.mjs';

const MARKS = { open: 'consilium:series-open', first: 'consilium:first-slice-drawn', all: 'consilium:all-slices-loaded' };
const FRAME_ACCEPT = 'application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1';

function usage(msg) {
  if (msg) console.error(`viewer.mjs: ${msg}`);
  console.error('usage: node bench/viewer.mjs open|scroll|load [--url URL] [--runs N] [--slices N] [--pid PID] [--viewers N] [--rounds N] [--out DIR]');
  process.exit(2);
}

/** Nearest-rank percentile of an ascending array. */
function rank(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length))) - 1];
}

function summary(values) {
  const v = values.filter((x) => x !== null && x !== undefined).sort((a, b) => a - b);
  const r = (x) => (x === null ? null : Math.round(x * 10) / 10);
  return { n: v.length, p50: r(rank(v, 50)), p95: r(rank(v, 95)), min: r(v[0] ?? null), max: r(v.at(-1) ?? null) };
}

/** The page's viewer metrics once the open being measured has loaded every slice. */
async function metricsWhenLoaded(page, after = -1, timeout = 60_000) {
  return waitFor(
    () =>
      page.evaluate((after) => {
        const m = window.consiliumViewer?.metrics();
        return m && m.openedAt > after && m.allSlicesMs !== null && m.firstSliceMs !== null ? m : null;
      }, after),
    { timeout, interval: 50, message: 'the series to load completely' },
  );
}

const markAt = (m, name) => m.marks.find((x) => x.name === name)?.startTime ?? null;

async function benchOpen(url, runs, browser) {
  const rows = [];
  for (let i = 0; i < runs; i++) {
    const page = await openPage(browser, callUrl(url, { room: 'demo', name: `Bench-${i}` }));
    try {
      const atNav = await metricsWhenLoaded(page);
      await page.waitForSelector('#connection-state[data-state="connected"]', { timeout: 30_000 });
      await page.waitForSelector('.vw-thumb canvas[data-ready="true"]', { timeout: 30_000 });
      await page.evaluate(() => window.consiliumViewer.viewer.dropCache());
      const before = await page.evaluate(() => performance.now());
      await page.locator('.vw-thumb').first().click();
      const atClick = await metricsWhenLoaded(page, before);
      const row = {
        run: i,
        slices: atNav.slices,
        nav_first_slice_ms: markAt(atNav, MARKS.first),
        nav_all_slices_ms: markAt(atNav, MARKS.all),
        nav_series_open_ms: markAt(atNav, MARKS.open),
        click_first_slice_ms: atClick.firstSliceMs,
        click_all_slices_ms: atClick.allSlicesMs,
      };
      rows.push(row);
      console.error(JSON.stringify(row));
    } finally {
      await closePage(page);
    }
  }
  return {
    runs: rows,
    navigation_to_first_slice_ms: summary(rows.map((r) => r.nav_first_slice_ms)),
    navigation_to_all_slices_ms: summary(rows.map((r) => r.nav_all_slices_ms)),
    open_to_first_slice_ms: summary(rows.map((r) => r.click_first_slice_ms)),
    open_to_all_slices_ms: summary(rows.map((r) => r.click_all_slices_ms)),
  };
}

/** Stores a `slices`-slice 512×512 CT series in `room` (STOW-RS, 20 instances a request). */
async function storeSeries(url, room, slices) {
  const study = `2.25.${BigInt(Date.now()) * 1000n + BigInt(Math.floor(Math.random() * 1000))}`;
  const series = `${study}.1`;
  for (let k = 0; k < slices; k += 20) {
    const boundary = `bench-${k}`;
    const parts = [];
    for (let j = k; j < Math.min(slices, k + 20); j++) {
      const file = ctSlice({ study, series, sop: `${series}.${j + 1}`, number: j + 1, size: 512, patientName: 'BENCH^SCROLL', patientId: 'BENCH-200' });
      parts.push(Buffer.from(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`), file, Buffer.from('\r\n'));
    }
    parts.push(Buffer.from(`--${boundary}--\r\n`));
    const res = await fetch(`${url}/dicomweb/studies?room=${encodeURIComponent(room)}`, {
      method: 'POST',
      headers: { 'Content-Type': `multipart/related; type="application/dicom"; boundary=${boundary}`, Accept: 'application/dicom+json' },
      body: Buffer.concat(parts),
    });
    if (res.status !== 200) throw new Error(`STOW of slices ${k + 1}… answered ${res.status}: ${(await res.text()).slice(0, 300)}`);
  }
  return { study, series };
}

/**
 * Where a frame request's time goes (Resource Timing, p50 over the page's frame requests):
 * waiting for one of the 6 connections, server time to first byte, body transfer.
 */
function frameRequestTimings(page) {
  return page.evaluate(() => {
    const list = performance.getEntriesByType('resource').filter((e) => /\/frames[/?]/.test(e.name));
    const p50 = (f) => {
      const v = list.map(f).sort((a, b) => a - b);
      return v.length ? Math.round(v[Math.floor(v.length / 2)] * 10) / 10 : null;
    };
    return {
      count: list.length,
      queued_ms: p50((e) => e.requestStart - e.startTime),
      ttfb_ms: p50((e) => e.responseStart - e.requestStart),
      transfer_ms: p50((e) => e.responseEnd - e.responseStart),
      total_ms: p50((e) => e.duration),
      // First request's start to the last response's end, and how many were in flight on
      // average over it (6 = every connection always busy).
      span_ms: list.length ? Math.round(Math.max(...list.map((e) => e.responseEnd)) - Math.min(...list.map((e) => e.startTime))) : null,
      mean_in_flight: list.length
        ? Math.round((list.reduce((t, e) => t + e.duration, 0) / (Math.max(...list.map((e) => e.responseEnd)) - Math.min(...list.map((e) => e.startTime)))) * 100) / 100
        : null,
    };
  });
}

/** A CPU profile of the page's main thread (CDP Profiler), for --profile DIR. */
async function startProfile(page, dir) {
  mkdirSync(dir, { recursive: true });
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Profiler.enable');
  await cdp.send('Profiler.setSamplingInterval', { interval: 200 });
  await cdp.send('Profiler.start');
  return cdp;
}

/** Stops the profile, writes it (open in Chrome DevTools) and prints where self time went. */
async function stopProfile(cdp, file) {
  const { profile } = await cdp.send('Profiler.stop');
  await cdp.detach();
  writeFileSync(file, JSON.stringify(profile));
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  const deltas = profile.timeDeltas;
  profile.samples.forEach((id, k) => {
    const f = byId.get(id).callFrame;
    const key = `${f.functionName || '(anonymous)'} ${f.url.split('/').pop()}:${f.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + (deltas[k + 1] ?? 0) / 1000);
  });
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25);
  console.error(`profile ${file}: ${Math.round(total)} ms sampled`);
  for (const [k, ms] of top) console.error(`  ${ms.toFixed(1).padStart(8)} ms  ${k}`);
}

async function benchScroll(url, runs, slices, browser, profileDir = null) {
  const room = uniqueRoom('bench-scroll');
  await storeSeries(url, room, slices);
  const rows = [];
  for (let i = 0; i < runs; i++) {
    // Resource Timing keeps 250 entries by default: too few for 200 frames and the page.
    const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
    await context.addInitScript(() => performance.setResourceTimingBufferSize(5000));
    const page = await context.newPage();
    const profiler = profileDir ? await startProfile(page, profileDir) : null;
    await page.goto(callUrl(url, { room, name: `Scroller-${i}` }), { waitUntil: 'domcontentloaded' });
    try {
      const m = await metricsWhenLoaded(page);
      if (profiler) await stopProfile(profiler, path.join(profileDir, `scroll-${i}.cpuprofile`));
      if (m.slices !== slices) throw new Error(`the viewer opened ${m.slices} slices, expected ${slices}`);
      const requests = await frameRequestTimings(page);
      // One slice per animation frame, as a fast wheel or a held arrow key asks for them: the
      // slice is "painted without waiting" when the canvas shows it at the next frame.
      const scroll = await page.evaluate(async (n) => {
        const v = window.consiliumViewer.viewer;
        const vp = v.viewports[0];
        const frame = () => new Promise((r) => requestAnimationFrame(r));
        let missed = 0;
        const t0 = performance.now();
        for (let s = 0; s < n; s++) {
          v.localUpdate(vp, { slice: s });
          await frame();
          if (vp.paintedSlice !== s || !vp.frame) missed++;
        }
        return { missed, ms: performance.now() - t0 };
      }, slices);
      const row = {
        run: i,
        nav_first_slice_ms: markAt(m, MARKS.first),
        nav_all_slices_ms: markAt(m, MARKS.all),
        open_to_all_slices_ms: m.allSlicesMs,
        scrolled: slices,
        missed_frames: scroll.missed,
        scroll_ms: Math.round(scroll.ms),
        requests,
      };
      rows.push(row);
      console.error(JSON.stringify(row));
    } finally {
      await closePage(page);
    }
  }
  return {
    room,
    slices,
    runs: rows,
    navigation_to_first_slice_ms: summary(rows.map((r) => r.nav_first_slice_ms)),
    navigation_to_all_slices_ms: summary(rows.map((r) => r.nav_all_slices_ms)),
    open_to_all_slices_ms: summary(rows.map((r) => r.open_to_all_slices_ms)),
    missed_frames_total: rows.reduce((a, r) => a + r.missed_frames, 0),
  };
}

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : null;
}

async function metricsRss(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = /^process_resident_memory_bytes\s+([0-9.e+]+)/m.exec(text);
  return m ? Math.round(Number(m[1]) / 1024) : null;
}

const tag = (ds, t) => ds[t]?.Value?.[0];

/** One headless viewer opening the demo study: exactly the requests js/viewer/series.js makes. */
async function headlessViewer(url, latencies) {
  const q = (p) => `${url}/dicomweb${p}${p.includes('?') ? '&' : '?'}room=demo`;
  const json = async (p) => (await fetch(q(p), { headers: { Accept: 'application/dicom+json' } })).json();
  const [study] = await json('/studies');
  const studyUid = tag(study, '0020000D');
  const series = await json(`/studies/${studyUid}/series`);
  const seriesUid = tag(series.sort((a, b) => (tag(b, '00201209') ?? 0) - (tag(a, '00201209') ?? 0))[0], '0020000E');
  const list = await json(`/studies/${studyUid}/series/${seriesUid}/instances`);
  const sops = list.map((ds) => tag(ds, '00080018'));
  const mid = Math.floor(sops.length / 2);
  const order = [mid];
  for (let d = 1; order.length < sops.length; d++) {
    if (mid + d < sops.length) order.push(mid + d);
    if (mid - d >= 0) order.push(mid - d);
  }
  const fetchFrame = async (index) => {
    const t0 = performance.now();
    const res = await fetch(q(`/studies/${studyUid}/series/${seriesUid}/instances/${sops[index]}/frames/1`), { headers: { Accept: FRAME_ACCEPT } });
    const buf = await res.arrayBuffer();
    if (res.status !== 200 || buf.byteLength !== 512 * 512 * 2) throw new Error(`frame ${sops[index]}: ${res.status}, ${buf.byteLength} bytes`);
    latencies.push(performance.now() - t0);
  };
  // The first slice alone (the viewer holds its neighbours back until it is on screen),
  // then the rest outward in batches of 32, 2 at once, as js/viewer/series.js asks for them.
  await fetchFrame(order[0]);
  const batches = [];
  for (let k = 1; k < order.length; k += 32) batches.push(order.slice(k, k + 32));
  const fetchBatch = async (indices) => {
    const t0 = performance.now();
    const ids = indices.map((i) => sops[i]).join(',');
    const res = await fetch(q(`/studies/${studyUid}/series/${seriesUid}/frames?instances=${ids}`), { headers: { Accept: FRAME_ACCEPT } });
    const buf = await res.arrayBuffer();
    // Each part: its headers (≈ 200 bytes) and the 512 KiB frame.
    if (res.status !== 200 || buf.byteLength < indices.length * 512 * 512 * 2) throw new Error(`batch: ${res.status}, ${buf.byteLength} bytes`);
    const perFrame = (performance.now() - t0) / indices.length;
    for (let k = 0; k < indices.length; k++) latencies.push(perFrame);
  };
  let next = 0;
  const worker = async () => {
    while (next < batches.length) await fetchBatch(batches[next++]);
  };
  await Promise.all(Array.from({ length: 2 }, worker));
  return json(`/studies/${studyUid}/series/${seriesUid}/metadata`);
}

async function benchLoad(url, pid, viewers, rounds, runs) {
  if (!pid) usage('load needs --pid of the server (RSS from /proc/PID/status)');
  const rows = [];
  for (let r = 0; r < runs; r++) {
    await sleep(2000);
    const baseline = rssKiB(pid);
    const baselineMetrics = await metricsRss(url);
    let peak = baseline;
    const samples = [];
    const timer = setInterval(() => {
      const v = rssKiB(pid);
      samples.push(v);
      if (v > peak) peak = v;
    }, 20);
    const latencies = [];
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: viewers }, async () => {
        for (let k = 0; k < rounds; k++) await headlessViewer(url, latencies);
      }),
    );
    const wall = performance.now() - t0;
    clearInterval(timer);
    const afterMetrics = await metricsRss(url);
    await sleep(2000);
    const steady = rssKiB(pid);
    const steadyMetrics = await metricsRss(url);
    const sorted = latencies.slice().sort((a, b) => a - b);
    const row = {
      run: r,
      viewers,
      rounds,
      frames: latencies.length,
      wall_ms: Math.round(wall),
      rss_baseline_mib: +(baseline / 1024).toFixed(1),
      rss_peak_mib: +(peak / 1024).toFixed(1),
      rss_median_during_mib: +(rank(samples.slice().sort((a, b) => a - b), 50) / 1024).toFixed(1),
      rss_steady_mib: +(steady / 1024).toFixed(1),
      metrics_rss_mib: { baseline: +(baselineMetrics / 1024).toFixed(1), end: +(afterMetrics / 1024).toFixed(1), steady: +(steadyMetrics / 1024).toFixed(1) },
      frame_latency_ms: { p50: +rank(sorted, 50).toFixed(1), p95: +rank(sorted, 95).toFixed(1), max: +sorted.at(-1).toFixed(1) },
    };
    rows.push(row);
    console.error(JSON.stringify(row));
  }
  return {
    runs: rows,
    rss_peak_mib: summary(rows.map((r) => r.rss_peak_mib)),
    rss_steady_mib: summary(rows.map((r) => r.rss_steady_mib)),
    frame_latency_p50_ms: summary(rows.map((r) => r.frame_latency_ms.p50)),
    frame_latency_p95_ms: summary(rows.map((r) => r.frame_latency_ms.p95)),
  };
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      url: { type: 'string' },
      runs: { type: 'string' },
      slices: { type: 'string', default: '200' },
      profile: { type: 'string' },
      pid: { type: 'string' },
      viewers: { type: 'string', default: '20' },
      rounds: { type: 'string', default: '3' },
      out: { type: 'string', default: path.join(WEB_CLIENT_DIR, 'bench', 'results') },
    },
  });
  const mode = positionals[0];
  if (!['open', 'scroll', 'load'].includes(mode)) usage();
  let server = null;
  let url = values.url ?? process.env.CONSILIUM_URL;
  if (!url) {
    server = await startServer({ args: ['--demo-study', 'true'] });
    url = server.url;
  }
  url = url.replace(/\/+$/, '');
  const browser = mode === 'load' ? null : await launchBrowser();
  let result;
  try {
    if (mode === 'open') result = await benchOpen(url, Number(values.runs ?? 10), browser);
    else if (mode === 'scroll') result = await benchScroll(url, Number(values.runs ?? 5), Number(values.slices), browser, values.profile ?? null);
    else result = await benchLoad(url, Number(values.pid ?? 0), Number(values.viewers), Number(values.rounds), Number(values.runs ?? 3));
  } finally {
    await browser?.close().catch(() => {});
    await server?.stop();
  }
  const report = { mode, url, date: new Date().toISOString(), machine: `${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`, ...result };
  mkdirSync(values.out, { recursive: true });
  const file = path.join(values.out, `viewer-${mode}.json`);
  writeFileSync(file, JSON.stringify(report, null, 2));
  const { runs: _runs, ...brief } = report;
  console.log(JSON.stringify(brief, null, 2));
  console.error(`report: ${file}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
