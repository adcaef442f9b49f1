// Shared helpers for the browser end-to-end tests: start the Consilium server (or use
// CONSILIUM_URL), launch Debian's Chromium with fake camera/microphone, poll conditions.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const WEB_CLIENT_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_DIR = path.resolve(WEB_CLIENT_DIR, '..');

export const CHROMIUM_ARGS = [
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-quic',
  // Chromium's headless mode opens a window per browser context, and each window preloads
  // its omnibox popup (a WebUI renderer): ~1.5 s of CPU during every join of the connect
  // benchmark on a 2-core machine (docs/benchmarks.md), which a real browser spends once per
  // window, not on each page. The flag replaces Playwright's own --disable-features, so
  // its list (Playwright 1.5x) comes first.
  ...(process.env.CONSILIUM_TOP_CHROME_WEBUI === '1'
    ? []
    : [
        '--disable-features=' +
          [
            'AvoidUnnecessaryBeforeUnloadCheckSync', 'DestroyProfileOnBrowserClose', 'HttpsUpgrades',
            'HttpsFirstBalancedModeAutoEnable', 'LensOverlay', 'MediaRouter', 'PaintHolding',
            'ThirdPartyStoragePartitioning', 'AvoidCorsURLLoaderRestartOnRedirect', 'TcpPortRandomizationWin',
            'OptimizationHints', 'NetworkTimeServiceQuerying', 'AimEnabled', 'PreconnectToSearch',
            'PreloadTopChromeWebUI', 'WebUIOmniboxPopup', 'WebUIOmniboxAimPopup',
          ].join(','),
      ]),
];

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Polls fn until it returns a truthy value, and returns that value.
 * Throws after `timeout` ms with `message`, the last value or error seen, and `detail()`
 * (an optional function describing the observed state) if given.
 */
export async function waitFor(fn, { timeout = 20_000, interval = 200, message = 'condition', detail } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  let lastErr;
  for (;;) {
    try {
      last = await fn();
      lastErr = undefined;
      if (last) return last;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) {
      let seen = lastErr ? `last error: ${lastErr.message ?? lastErr}` : `last value: ${JSON.stringify(last)}`;
      if (detail) seen += `; observed: ${await Promise.resolve().then(detail).catch((e) => e.message)}`;
      throw new Error(`timed out after ${timeout} ms waiting for ${message} (${seen})`);
    }
    await sleep(interval);
  }
}

/**
 * The server under test. With CONSILIUM_URL set, uses that server as is. Otherwise starts
 * CONSILIUM_BIN (default ../target/debug/consilium) on free ports and waits for /healthz.
 * `opts.env` adds environment variables, `opts.args` arguments; `opts.httpPort` and
 * `opts.mediaPort` reuse ports (a restart keeps the URL the open pages reconnect to).
 * Returns {url, httpPort, mediaPort, external, stop(), logs()}.
 */
export async function startServer(opts = {}) {
  if (process.env.CONSILIUM_URL) {
    const url = process.env.CONSILIUM_URL.replace(/\/+$/, '');
    await waitForHealth(url, 30_000);
    return { url, external: true, stop: async () => {}, logs: () => '' };
  }
  const bin = path.resolve(WEB_CLIENT_DIR, process.env.CONSILIUM_BIN ?? '../target/debug/consilium');
  if (!existsSync(bin)) {
    throw new Error(`server binary not found at ${bin}: build it (cargo build) or set CONSILIUM_BIN / CONSILIUM_URL`);
  }
  const httpPort = opts.httpPort ?? (await freePort());
  const mediaPort = opts.mediaPort ?? (await freePort());
  const args = [
    '--http',
    `127.0.0.1:${httpPort}`,
    '--media-port',
    String(mediaPort),
    '--media-ip',
    '127.0.0.1',
    ...(process.env.CONSILIUM_ARGS ? process.env.CONSILIUM_ARGS.split(/\s+/).filter(Boolean) : []),
    ...(opts.args ?? []),
  ];
  let output = '';
  const child = spawn(bin, args, {
    cwd: REPO_DIR,
    // Serve this web client (the server's --web-root / CONSILIUM_WEB_ROOT).
    env: { RUST_LOG: 'info', CONSILIUM_WEB_ROOT: WEB_CLIENT_DIR, ...process.env, ...(opts.env ?? {}) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const keep = (chunk) => {
    output += chunk;
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  child.stdout.setEncoding('utf8').on('data', keep);
  child.stderr.setEncoding('utf8').on('data', keep);
  let exited = null;
  const exitPromise = new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    }),
  );

  const url = `http://127.0.0.1:${httpPort}`;
  try {
    await waitFor(
      async () => {
        if (exited) throw new Error(`server exited early (${JSON.stringify(exited)})`);
        const res = await fetch(`${url}/healthz`);
        return res.status === 200;
      },
      { timeout: 30_000, interval: 200, message: `${url}/healthz to return 200` },
    );
  } catch (err) {
    child.kill('SIGKILL');
    err.message += `\n--- server output ---\n${output.slice(-4000)}`;
    throw err;
  }

  return {
    url,
    httpPort,
    mediaPort,
    external: false,
    logs: () => output,
    stop: async () => {
      if (exited) return;
      child.kill('SIGTERM');
      const done = await Promise.race([exitPromise, sleep(5000).then(() => null)]);
      if (!done) {
        child.kill('SIGKILL');
        await exitPromise;
      }
    },
  };
}

async function waitForHealth(url, timeout) {
  await waitFor(
    async () => {
      const res = await fetch(`${url}/healthz`);
      return res.status === 200;
    },
    { timeout, message: `${url}/healthz to return 200` },
  );
}

/** Debian's Chromium with a fake camera (moving test pattern) and microphone (beeps). */
export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
}

/**
 * Opens `url` in a fresh browser context (its own cookies, devices, permissions).
 * Console errors and page errors are collected in page.consiliumLog for failure reports,
 * uncaught exceptions in page.pageErrors, received signaling messages in page.wsReceived.
 * `opts.init`: a function (or script) run in the page before any of its own scripts, with
 * `opts.initArg` as its argument.
 */
export async function openPage(browser, url, opts = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  if (opts.init) await context.addInitScript(opts.init, opts.initArg);
  // [url pattern, handler] pairs installed before the page loads (context.route).
  for (const [pattern, handler] of opts.routes ?? []) await context.route(pattern, handler);
  const page = await context.newPage();
  const log = [];
  page.consiliumLog = log;
  page.pageErrors = [];
  page.wsReceived = []; // parsed signaling messages the page received
  page.wsSent = []; // parsed signaling messages the page sent
  const record = (list) => ({ payload }) => {
    try {
      list.push(JSON.parse(String(payload)));
    } catch {
      /* not JSON: ignore */
    }
  };
  page.on('websocket', (ws) => {
    ws.on('framereceived', record(page.wsReceived));
    ws.on('framesent', record(page.wsSent));
  });
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') log.push(`${msg.type()}: ${msg.text()}`);
  });
  page.on('pageerror', (err) => {
    page.pageErrors.push(err);
    log.push(`pageerror: ${err.message}`);
  });
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  return page;
}

/** Closes a page's context, ignoring errors (the browser may already be gone). */
export async function closePage(page) {
  await page?.context().close().catch(() => {});
}

/** A room name unlikely to collide with another test run. */
export function uniqueRoom(prefix = 'e2e') {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

export function callUrl(base, params) {
  return `${base}/?${new URLSearchParams(params)}`;
}

/**
 * What a page shows and receives: remote video elements, and inbound RTP counters of its
 * PeerConnection. Runs in the page.
 */
export function remoteMediaInfo(page) {
  return page.evaluate(async () => {
    const videos = [...document.querySelectorAll('video[data-participant]')];
    const info = {
      state: window.consilium?.state,
      tiles: videos.map((v) => ({
        name: v.dataset.participant,
        id: v.dataset.participantId,
        width: v.videoWidth,
        audioTracks: v.srcObject ? v.srcObject.getAudioTracks().length : 0,
        videoTracks: v.srcObject ? v.srcObject.getVideoTracks().length : 0,
        totalVideoFrames: v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality().totalVideoFrames : 0,
      })),
      framesDecoded: 0,
      audioPacketsReceived: 0,
    };
    const pc = window.consilium?.pc;
    if (pc) {
      const stats = await pc.getStats();
      stats.forEach((r) => {
        if (r.type !== 'inbound-rtp') return;
        if (r.kind === 'video') info.framesDecoded += r.framesDecoded ?? 0;
        if (r.kind === 'audio') info.audioPacketsReceived += r.packetsReceived ?? 0;
      });
    }
    return info;
  });
}

/** Formats the collected console output of pages for an assertion message. */
export function pageLogs(...pages) {
  return pages
    .filter(Boolean)
    .map((p, i) => `--- page ${i} (${p.url()}) ---\n${(p.consiliumLog ?? []).slice(-30).join('\n')}`)
    .join('\n');
}

/**
 * Runs `fn`; a failure carries the pages' console output and the tail of the server's
 * (`server()` is asked at failure time: a test may have restarted it).
 */
export async function withLogs(pages, fn, server = () => null) {
  try {
    return await fn();
  } catch (err) {
    err.message += `\n${pageLogs(...pages)}`;
    const logs = server()?.logs?.();
    if (logs) err.message += `\n--- server output (tail) ---\n${logs.slice(-3000)}`;
    throw err;
  }
}
