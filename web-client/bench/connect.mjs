#!/usr/bin/env node
// Browser connect benchmark: how long a participant joining a room where someone already
// publishes takes from navigation start to the first remote video frame on screen.
//
//   node bench/connect.mjs [--url http://127.0.0.1:8080] [--joins 30] [--out DIR] [--timeout 20000]
//                          [--receive-slots N]
//
// One publisher page joins a fresh room and stays. Then, one after another, each joiner opens
// in a fresh browser context (no cache, no cookies), navigates to /?room=<same>&name=Joiner-i,
// waits until window.consilium.timings has first_remote_video_frame (the time its
// requestVideoFrameCallback fired), records every timing (ms since navigation start) and
// closes its context. --receive-slots N makes the joiners offer N receive slot pairs instead
// of the client's default (window.__consiliumReceiveSlots; 0 = the others' tracks come by
// renegotiation). Prints p50/p95/p99/max per phase (nearest rank) and writes
// DIR/browser-connect.json (default DIR: bench/results).
//
// Server: --url, else CONSILIUM_URL, else CONSILIUM_BIN (default ../target/debug/consilium)
// started on free ports by tests/helpers.mjs. Chromium: /usr/bin/chromium (CHROMIUM_PATH)
// with the end-to-end tests' flags (fake camera and microphone).

import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  CHROMIUM_ARGS,
  WEB_CLIENT_DIR,
  callUrl,
  closePage,
  launchBrowser,
  openPage,
  startServer,
  uniqueRoom,
  waitFor,
} from '../tests/helpers.mjs';

const FIRST_FRAME = 'first_remote_video_frame';
/** Phases in the order they normally happen; others recorded by the page are appended. */
const PHASE_ORDER = [
  'ws_open',
  'media_ready',
  'join_sent',
  'joined',
  'ice_connected',
  'pc_connected',
  'first_remote_audio',
  FIRST_FRAME,
];

function usage(msg) {
  if (msg) console.error(`connect.mjs: ${msg}`);
  console.error('usage: node bench/connect.mjs [--url URL] [--joins N] [--out DIR] [--timeout MS] [--receive-slots N]');
  process.exit(2);
}

/** Nearest-rank percentile of an ascending array. */
export function nearestRank(sorted, p) {
  if (!sorted.length) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1];
}

export function summarize(values) {
  const sorted = values.filter((v) => typeof v === 'number' && Number.isFinite(v)).sort((a, b) => a - b);
  if (!sorted.length) return { n: 0, p50: null, p95: null, p99: null, max: null, min: null };
  const r = (v) => Math.round(v * 10) / 10;
  return {
    n: sorted.length,
    p50: r(nearestRank(sorted, 50)),
    p95: r(nearestRank(sorted, 95)),
    p99: r(nearestRank(sorted, 99)),
    max: r(sorted[sorted.length - 1]),
    min: r(sorted[0]),
  };
}

async function main() {
  let opts;
  try {
    ({ values: opts } = parseArgs({
      options: {
        url: { type: 'string' },
        joins: { type: 'string', default: '30' },
        out: { type: 'string', default: path.join(WEB_CLIENT_DIR, 'bench', 'results') },
        timeout: { type: 'string', default: '20000' },
        'receive-slots': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    usage(err.message);
  }
  if (opts.help) usage();
  const joins = Number(opts.joins);
  const timeout = Number(opts.timeout);
  if (!Number.isInteger(joins) || joins < 1) usage('--joins must be a positive integer');
  if (!Number.isFinite(timeout) || timeout <= 0) usage('--timeout must be a positive number of ms');
  const slots = opts['receive-slots'] === undefined ? null : Number(opts['receive-slots']);
  if (slots !== null && !(Number.isInteger(slots) && slots >= 0)) usage('--receive-slots must be a whole number');
  const slotsInit =
    slots === null ? {} : { init: (n) => { window.__consiliumReceiveSlots = n; }, initArg: slots };
  if (opts.url) process.env.CONSILIUM_URL = opts.url;

  const server = await startServer(); // CONSILIUM_URL as is, else starts CONSILIUM_BIN
  const browser = await launchBrowser();
  const room = uniqueRoom('bench');
  const samples = [];
  const failures = [];
  let publisher;
  try {
    console.error(`server ${server.url}, Chromium ${browser.version()}, room ${room}, ${joins} joins`);

    // The publisher: connected, and actually sending video, before the first joiner comes.
    publisher = await openPage(browser, callUrl(server.url, { room, name: 'Publisher' }));
    await publisher.waitForSelector('#connection-state[data-state="connected"]', { timeout });
    await waitFor(
      () =>
        publisher.evaluate(async () => {
          const stats = await window.consilium.pc?.getStats();
          let frames = 0;
          stats?.forEach((r) => {
            if (r.type === 'outbound-rtp' && r.kind === 'video') frames += r.framesEncoded ?? 0;
          });
          return frames > 30;
        }),
      { timeout, message: 'the publisher to send video' },
    );

    for (let i = 1; i <= joins; i++) {
      // Sequential and independent: the previous joiner is gone from the room.
      await waitFor(() => publisher.evaluate(() => window.consilium.participants.size === 0), {
        timeout,
        interval: 50,
        message: 'the previous joiner to leave the room',
      });
      let page;
      try {
        page = await openPage(browser, callUrl(server.url, { room, name: `Joiner-${i}` }), slotsInit);
        const timings = await waitFor(
          () =>
            page.evaluate((key) => {
              const t = window.consilium?.timings;
              return t && key in t ? { ...t } : null;
            }, FIRST_FRAME),
          { timeout, interval: 25, message: `joiner ${i}: ${FIRST_FRAME}` },
        );
        // Navigation milestones of the page itself, same origin (navigation start = 0).
        const nav = await page.evaluate(() => {
          const [n] = performance.getEntriesByType('navigation');
          return n ? { response_end: n.responseEnd, dom_content_loaded: n.domContentLoadedEventStart } : {};
        });
        const sample = { join: i, ...nav, ...timings };
        samples.push(sample);
        console.error(
          `join ${String(i).padStart(3)}: first frame ${timings[FIRST_FRAME].toFixed(1)} ms  ` +
            PHASE_ORDER.filter((k) => k !== FIRST_FRAME && k in timings)
              .map((k) => `${k}=${timings[k]}`)
              .join(' '),
        );
      } catch (err) {
        failures.push({ join: i, error: String(err?.message ?? err), log: page?.consiliumLog?.slice(-10) });
        console.error(`join ${String(i).padStart(3)}: FAILED ${err?.message ?? err}`);
      } finally {
        await closePage(page);
      }
    }
  } finally {
    await closePage(publisher);
    const chromiumVersion = browser.version();
    await browser.close().catch(() => {});
    await server.stop();
    report({ opts, server, samples, failures, joins, chromiumVersion, room, slots });
  }
  if (failures.length) process.exitCode = 1;
}

function report({ opts, server, samples, failures, joins, chromiumVersion, room, slots }) {
  const seen = new Set(samples.flatMap((s) => Object.keys(s)).filter((k) => k !== 'join'));
  const phases = [
    ...['response_end', 'dom_content_loaded', ...PHASE_ORDER].filter((k) => seen.has(k)),
    ...[...seen].filter((k) => !PHASE_ORDER.includes(k) && k !== 'response_end' && k !== 'dom_content_loaded').sort(),
  ];
  const perPhase = {};
  for (const k of phases) perPhase[k] = summarize(samples.map((s) => s[k]));

  const fmt = (v) => (v == null ? '-' : v.toFixed(1));
  const w = Math.max(...phases.map((k) => k.length), 5);
  const lines = [
    `\nms since navigation start, ${samples.length}/${joins} joins (nearest-rank percentiles)`,
    `${'phase'.padEnd(w)}  ${['p50', 'p95', 'p99', 'max'].map((h) => h.padStart(8)).join('')}`,
  ];
  for (const k of phases) {
    const s = perPhase[k];
    lines.push(`${k.padEnd(w)}  ${[s.p50, s.p95, s.p99, s.max].map((v) => fmt(v).padStart(8)).join('')}`);
  }
  if (failures.length) lines.push(`${failures.length} join(s) failed`);
  console.log(lines.join('\n'));

  const ff = perPhase[FIRST_FRAME] ?? summarize([]);
  const result = {
    benchmark: 'browser-connect',
    date: new Date().toISOString(),
    url: server.url,
    room,
    joins,
    receive_slots: slots ?? 'default',
    completed: samples.length,
    failed: failures.length,
    chromium: chromiumVersion,
    chromium_args: CHROMIUM_ARGS,
    machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, platform: `${os.platform()} ${os.release()}` },
    first_frame_ms: { p50: ff.p50, p95: ff.p95, p99: ff.p99, max: ff.max },
    phases: perPhase,
    samples,
    failures,
  };
  mkdirSync(opts.out, { recursive: true });
  const file = path.join(opts.out, 'browser-connect.json');
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${file}`);
}

main().catch(async (err) => {
  console.error(err?.stack ?? err);
  await sleep(0);
  process.exit(1);
});
