// End-to-end tests of the shared DICOM viewer: real server (with its demo CT phantom in room
// `demo`, on a fresh data directory), real Chromium pages connected through the SFU's data
// channel. Presenter → follower state and pixels, laser pointer, detach / re-follow,
// annotations drawn with the real mouse, a late joiner, a server restart, upload.
// Run from web-client/: npm test

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startServer, launchBrowser, openPage, closePage, waitFor, callUrl, withLogs as withPageLogs } from './helpers.mjs';
import { ctSlice, zipStore } from './dicom-fixture.mjs';

let server;
let browser;
let dataDir;
let serverOpts;
/** Why the viewer tests cannot run against this server (no DICOMweb / no demo study), or null. */
let unsupported = null;

const ROOM = 'demo';

before(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'consilium-viewer-'));
  serverOpts = { env: { CONSILIUM_DATA_DIR: dataDir, CONSILIUM_DEMO_STUDY: 'true' } };
  server = await startServer(serverOpts);
  serverOpts.httpPort = server.httpPort;
  serverOpts.mediaPort = server.mediaPort;
  browser = await launchBrowser();
  try {
    const res = await fetch(`${server.url}/dicomweb/studies?room=${ROOM}`, { headers: { Accept: 'application/dicom+json' } });
    const body = res.ok ? await res.json() : null;
    if (!res.ok) unsupported = `GET /dicomweb/studies answered ${res.status}`;
    else if (!Array.isArray(body) || !body.length) unsupported = 'room demo has no study (demo_study off?)';
  } catch (err) {
    unsupported = `DICOMweb unreachable: ${err.message}`;
  }
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true }).catch(() => {});
});

/** Adds the pages' console output (and the server's) to a failure. */
const withLogs = (pages, fn) => withPageLogs(pages, fn, () => server);

const hook = (page, expr, arg) => page.evaluate(expr, arg);
const state = (page) => hook(page, () => window.consiliumViewer.state());

/** Why the data-channel collaboration is missing on this server (no snapshot), or null. */
let noCollab = null;

/** Opens a call page in room demo and waits until its viewer shows a slice (and is synced). */
async function openViewer(name, { synced = true } = {}) {
  const page = await openPage(browser, callUrl(server.url, { room: ROOM, name }));
  await waitFor(() => hook(page, (synced) => (!synced || window.consiliumViewer?.synced()) && window.consiliumViewer?.ready() && !!window.consiliumViewer.state()?.viewports[0]?.series, synced), {
    timeout: 30_000,
    message: `${name}'s viewer to ${synced ? 'sync and ' : ''}show the phantom`,
    detail: () => hook(page, () => JSON.stringify({ synced: window.consiliumViewer?.synced(), state: window.consiliumViewer?.state(), call: window.consilium?.state })),
  });
  return page;
}

/** A hash of the first viewport's image canvas, after the pending animation frame. */
function canvasHash(page) {
  return page.evaluate(async () => {
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const c = document.querySelector('.vp[data-index="0"] .vp-image');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let h = 2166136261;
    let sum = 0;
    for (let i = 0; i < d.length; i += 4) {
      h = Math.imul(h ^ d[i], 16777619);
      sum += d[i];
    }
    return { w: c.width, h: c.height, hash: h >>> 0, mean: sum / (d.length / 4) };
  });
}

/** Waits until `b` shows what `a` shows: same ViewerState, both drawn, same pixels. */
async function expectSameView(a, b, what) {
  let last;
  await waitFor(
    async () => {
      const [sa, sb] = await Promise.all([state(a), state(b)]);
      const [ra, rb] = await Promise.all([hook(a, () => window.consiliumViewer.ready()), hook(b, () => window.consiliumViewer.ready())]);
      last = { sa, sb, ra, rb };
      return ra && rb && JSON.stringify(sa) === JSON.stringify(sb);
    },
    { timeout: 15_000, message: `${what}: the same ViewerState on both pages`, detail: () => JSON.stringify(last) },
  );
  let hashes;
  await waitFor(
    async () => {
      hashes = await Promise.all([canvasHash(a), canvasHash(b)]);
      return JSON.stringify(hashes[0]) === JSON.stringify(hashes[1]);
    },
    { timeout: 5_000, message: `${what}: identical canvas pixels`, detail: () => JSON.stringify(hashes) },
  );
  assert.ok(hashes[0].mean > 1, `${what}: the canvas shows an image (mean grey ${hashes[0].mean})`);
  return hashes[0];
}

async function viewportBox(page, index = 0) {
  return page.locator(`.vp[data-index="${index}"]`).boundingBox();
}

/** Counts the data-channel messages a page sends, by type (installed in the page). */
function countSent(page) {
  return page.evaluate(() => {
    const s = window.consilium.session;
    if (!s.__counted) {
      s.__counted = {};
      const send = s.sendData.bind(s);
      s.sendData = (msg) => {
        s.__counted[msg.type] = (s.__counted[msg.type] ?? 0) + 1;
        return send(msg);
      };
    }
    return { ...s.__counted };
  });
}

/** The client point at fraction `t` along annotation `a`'s first two points (or its only one). */
function pointOn(page, a, t) {
  return page.evaluate(
    ([points, t]) => {
      const vp = window.consiliumViewer.viewer.viewports[0];
      const [p, q = p] = points;
      const [x, y] = vp.imageToClient(p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t);
      const r = vp.el.getBoundingClientRect();
      return [r.left + x, r.top + y];
    },
    [a.points, t],
  );
}

async function streamBytes(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return Buffer.concat(chunks);
}

async function streamText(stream) {
  return (await streamBytes(stream)).toString('utf8');
}

async function drag(page, from, to, { button = 'left', steps = 8 } = {}) {
  await page.mouse.move(from[0], from[1]);
  await page.mouse.down({ button });
  await page.mouse.move(to[0], to[1], { steps });
  await page.mouse.up({ button });
}

test('shared viewer: presenter, followers, annotations, late joiner, restart, upload', { timeout: 240_000 }, async (t) => {
  if (unsupported) {
    t.skip(`server without the shared viewer: ${unsupported}`);
    return;
  }
  const pages = [];
  let presenter;
  let follower;
  try {
    await t.test('the first host presents; the phantom is on screen fast', () =>
      withLogs(pages, async () => {
        presenter = await openViewer('Dr Presenter', { synced: false });
        pages.push(presenter);
        try {
          await waitFor(() => hook(presenter, () => window.consiliumViewer.synced()), { timeout: 10_000, message: 'a snapshot' });
        } catch {
          noCollab = 'no snapshot in answer to hello (server without docs/collaboration.md)';
        }
        if (!noCollab) await waitFor(() => hook(presenter, () => window.consiliumViewer.isPresenter()), { message: 'the host to present' });
        const m = await waitFor(
          async () => {
            const x = await hook(presenter, () => window.consiliumViewer.metrics());
            return x.allSlicesMs !== null ? x : null;
          },
          { timeout: 30_000, message: 'the whole series to load' },
        );
        t.diagnostic(`at page start (call connecting meanwhile): first slice on screen ${m.firstSliceMs} ms after opening the series, all 120 slices ${m.allSlicesMs} ms`);
        // Sanity bounds only (the figures above are the measurement): CI machines are slow.
        assert.ok(m.firstSliceMs < 5000, `first slice in ${m.firstSliceMs} ms`);
        assert.ok(m.allSlicesMs < 20_000, `whole series in ${m.allSlicesMs} ms`);
        // Once the call is up: a cold open of the series from its thumbnail.
        await presenter.waitForSelector('#connection-state[data-state="connected"]', { timeout: 20_000 });
        await presenter.waitForTimeout(500);
        await hook(presenter, () => window.consiliumViewer.viewer.dropCache());
        await presenter.locator('.vw-thumb').first().click();
        const cold = await waitFor(
          async () => {
            const x = await hook(presenter, () => window.consiliumViewer.metrics());
            return x.allSlicesMs !== null ? x : null;
          },
          { timeout: 30_000, message: 'the whole series to load again' },
        );
        t.diagnostic(`cold open from the thumbnail, call connected: first slice ${cold.firstSliceMs} ms, all 120 slices ${cold.allSlicesMs} ms`);
        const s = await state(presenter);
        assert.equal(s.layout, '1x1');
        assert.equal(await presenter.locator('.vp[data-index="0"]').getAttribute('data-slice'), String(s.viewports[0].slice));
        await presenter.waitForSelector('.vw-thumb canvas[data-ready="true"]', { timeout: 10_000 });
      }),
    );

    await t.test('a follower sees exactly what the presenter shows while they scroll, window and zoom', (st) =>
      withLogs(pages, async () => {
        if (noCollab) return st.skip(noCollab);
        follower = await openViewer('Dr Follower');
        pages.push(follower);
        await waitFor(() => hook(follower, () => window.consiliumViewer.isFollowing()), { message: 'the follower to follow' });
        await expectSameView(presenter, follower, 'after joining');
        // The viewer is the stage; the video tiles are in the strip beside it.
        await presenter.waitForSelector('#call-view[data-viewer="on"] #strip video[data-participant="Dr Follower"]', { timeout: 20_000 });
        await follower.waitForSelector('#call-view[data-viewer="on"] #strip video[data-participant="Dr Presenter"]', { timeout: 20_000 });

        const box = await viewportBox(presenter);
        const cx = box.x + box.width / 2;
        const cy = box.y + box.height / 2;
        await countSent(presenter);
        // Scroll: wheel and keys.
        await presenter.mouse.move(cx, cy);
        for (let i = 0; i < 4; i++) await presenter.mouse.wheel(0, 100);
        await presenter.keyboard.press('ArrowDown');
        await presenter.keyboard.press('PageDown');
        // Window/level: right-drag (any tool).
        await drag(presenter, [cx, cy], [cx + 60, cy - 40], { button: 'right', steps: 20 });
        // Zoom with the zoom tool, pan with the middle button.
        await presenter.locator('[data-tool="zoom"]').click();
        await drag(presenter, [cx, cy], [cx, cy - 50]);
        await drag(presenter, [cx, cy], [cx + 30, cy + 20], { button: 'middle' });
        await presenter.locator('[data-tool="scroll"]').click();
        const s = await state(presenter);
        const v = s.viewports[0];
        assert.ok(v.slice > 60, `scrolled forward: ${JSON.stringify(v)}`);
        assert.ok(v.ww !== 400 && v.wc !== 40, `window/level changed: ${JSON.stringify(v)}`);
        assert.ok(v.zoom > 1.2, `zoomed: ${JSON.stringify(v)}`);
        assert.ok(v.pan[0] !== 0, `panned: ${JSON.stringify(v)}`);
        await expectSameView(presenter, follower, 'after scroll, W/L, zoom and pan');
        const sent = await countSent(presenter);
        // 4 wheel notches, 2 keys, 20 + 8 + 8 drag moves: at most one `viewer` per input.
        assert.ok(sent.viewer >= 3 && sent.viewer <= 45, `viewer messages coalesced: ${JSON.stringify(sent)}`);
        // Hovering changes nothing: no `viewer` message, but the laser pointer.
        await presenter.mouse.move(cx + 10, cy + 10, { steps: 5 });
        await waitFor(() => hook(follower, () => !!window.consiliumViewer.viewer.viewports[0].pointer), { timeout: 5000, message: 'the laser pointer on the follower' });
        const after = await countSent(presenter);
        assert.equal(after.viewer, sent.viewer, 'no viewer message for a hover');
        await presenter.mouse.move(5, 5);
        await waitFor(() => hook(follower, () => !window.consiliumViewer.viewer.viewports[0].pointer), { timeout: 5000, message: 'the laser pointer hidden when leaving' });
        // Presets.
        await presenter.locator('.vp[data-index="0"]').focus();
        await presenter.keyboard.press('1');
        assert.deepEqual(
          (await state(presenter)).viewports[0].ww === 1500 && (await state(presenter)).viewports[0].wc === -600,
          true,
          'lung preset',
        );
        await expectSameView(presenter, follower, 'after the lung preset');
      }),
    );

    await t.test('a follower can browse alone and follow again with one click', (st) =>
      withLogs(pages, async () => {
        if (noCollab) return st.skip(noCollab);
        const fbox = await viewportBox(follower);
        await follower.mouse.move(fbox.x + fbox.width / 2, fbox.y + fbox.height / 2);
        await follower.mouse.wheel(0, -300);
        await waitFor(() => hook(follower, () => !window.consiliumViewer.isFollowing()), { timeout: 5000, message: 'the follower to detach' });
        await follower.waitForSelector('.viewer[data-sync-mode="detached"]');
        const mine = (await state(follower)).viewports[0].slice;
        await presenter.locator('.vp[data-index="0"]').focus();
        await presenter.keyboard.press('End');
        await presenter.waitForTimeout(300);
        assert.equal((await state(follower)).viewports[0].slice, mine, 'a detached follower keeps its own slice');
        await follower.getByRole('button', { name: 'Follow presenter' }).click();
        await expectSameView(presenter, follower, 'after re-following');
        await presenter.keyboard.press('Home');
        await presenter.keyboard.press('PageDown');
        await presenter.keyboard.press('PageDown');
        await presenter.keyboard.press('PageDown');
        await presenter.keyboard.press('PageDown');
        await presenter.keyboard.press('PageDown');
        await expectSameView(presenter, follower, 'following again');
        // Layouts: the follower's grid follows too.
        await presenter.locator('[data-layout="2x2"]').click();
        await waitFor(async () => (await state(presenter)).viewports.every((v) => v.series), { message: 'four viewports filled' });
        await expectSameView(presenter, follower, 'layout 2x2');
        assert.equal(await follower.locator('.vp').count(), 4);
        await presenter.locator('[data-layout="1x1"]').click();
        await expectSameView(presenter, follower, 'back to 1x1');
      }),
    );

    await t.test('annotations drawn with the mouse appear on the other page', (st) =>
      withLogs(pages, async () => {
        if (noCollab) return st.skip(noCollab);
        const box = await viewportBox(presenter);
        const cx = box.x + box.width / 2;
        const cy = box.y + box.height / 2;
        await presenter.locator('[data-tool="line"]').click();
        await drag(presenter, [cx - 80, cy], [cx + 40, cy + 30]);
        const line = await waitFor(
          async () => {
            const list = await hook(follower, () => window.consiliumViewer.annotations());
            return list.find((a) => a.kind === 'line' && !a.pending);
          },
          { timeout: 10_000, message: 'the line on the follower' },
        );
        assert.equal(line.author_name, 'Dr Presenter');
        assert.ok(line.stats.length_mm > 10, `length in mm: ${JSON.stringify(line.stats)}`);
        assert.match(line.color, /^#[0-9a-f]{6}$/);
        // The echo reaches each page on its own channel: the follower may have it first.
        let own = [];
        await waitFor(
          async () => {
            own = await hook(presenter, () => window.consiliumViewer.annotations());
            return own.length === 1 && !own[0].pending;
          },
          { timeout: 5_000, message: 'the presenter’s own echo', detail: () => JSON.stringify(own) },
        );
        assert.deepEqual(own.map((a) => [a.id, !!a.pending]), [[line.id, false]], 'the presenter’s pending line was replaced by the echo');

        // The follower draws an ellipse ROI on the same image; it keeps following.
        const fbox = await viewportBox(follower);
        const fx = fbox.x + fbox.width / 2;
        const fy = fbox.y + fbox.height / 2;
        await follower.locator('[data-tool="ellipse"]').click();
        await drag(follower, [fx - 40, fy - 40], [fx + 20, fy + 30]);
        const ellipse = await waitFor(
          async () => {
            const list = await hook(presenter, () => window.consiliumViewer.annotations());
            return list.find((a) => a.kind === 'ellipse' && !a.pending);
          },
          { timeout: 10_000, message: 'the ellipse on the presenter' },
        );
        assert.equal(ellipse.author_name, 'Dr Follower');
        for (const k of ['area_mm2', 'mean', 'sd', 'min', 'max']) assert.equal(typeof ellipse.stats[k], 'number', `${k} in ${JSON.stringify(ellipse.stats)}`);
        assert.ok(ellipse.stats.min <= ellipse.stats.mean && ellipse.stats.mean <= ellipse.stats.max);
        assert.ok(await hook(follower, () => window.consiliumViewer.isFollowing()), 'drawing does not detach');
        await expectSameView(presenter, follower, 'with annotations');
        // The annotations sit on the image (overlay canvas), both pages draw them.
        // Arrow, outline and text, away from the two above.
        await presenter.locator('[data-tool="arrow"]').click();
        await drag(presenter, [cx + 200, cy - 160], [cx + 140, cy - 110]);
        await presenter.locator('[data-tool="freehand"]').click();
        await presenter.mouse.move(cx + 120, cy - 200);
        await presenter.mouse.down();
        for (let a = 0; a <= Math.PI * 2; a += 0.25) await presenter.mouse.move(cx + 150 + 30 * Math.cos(a), cy - 200 + 20 * Math.sin(a));
        await presenter.mouse.up();
        await presenter.locator('[data-tool="text"]').click();
        await presenter.mouse.click(cx + 120, cy - 240);
        await presenter.keyboard.type('Spiculated margin?');
        await presenter.keyboard.press('Enter');
        await presenter.locator('[data-tool="scroll"]').click();
        const kinds = await waitFor(
          async () => {
            const list = await hook(follower, () => window.consiliumViewer.annotations());
            const done = list.filter((a) => !a.pending);
            return done.length === 5 ? done : null;
          },
          { timeout: 10_000, message: 'five annotations on the follower' },
        );
        assert.deepEqual(kinds.map((a) => a.kind).sort(), ['arrow', 'ellipse', 'freehand', 'line', 'text']);
        assert.equal(kinds.find((a) => a.kind === 'text').text, 'Spiculated margin?');
        const outline = kinds.find((a) => a.kind === 'freehand');
        assert.ok(outline.points.length >= 10 && outline.stats.area_mm2 > 0 && typeof outline.stats.mean === 'number', JSON.stringify(outline.stats));
        // Both pages reach the same seq (each on its own channel, so not at the same instant).
        let seqs = [];
        await waitFor(
          async () => {
            seqs = await Promise.all([hook(presenter, () => window.consiliumViewer.seq()), hook(follower, () => window.consiliumViewer.seq())]);
            return seqs[0] === seqs[1] && seqs[0] >= 5;
          },
          { timeout: 5_000, message: 'the same seq on both pages', detail: () => JSON.stringify(seqs) },
        );
      }),
    );

    await t.test('a page joining late sees the presenter’s view and every annotation', (st) =>
      withLogs(pages, async () => {
        if (noCollab) return st.skip(noCollab);
        const late = await openViewer('Dr Late');
        pages.push(late);
        const want = (await hook(presenter, () => window.consiliumViewer.annotations())).map((a) => a.id).sort();
        const got = (await hook(late, () => window.consiliumViewer.annotations())).map((a) => a.id).sort();
        assert.deepEqual(got, want, `late joiner's protocol log: ${JSON.stringify(await hook(late, () => window.consiliumViewer.syncLog()))}; presenter's: ${JSON.stringify((await hook(presenter, () => window.consiliumViewer.syncLog())).slice(-15))}`);
        assert.equal(want.length, 5);
        await expectSameView(presenter, late, 'late joiner');
        // A reload resumes from the seq kept in sessionStorage: `changes`, not a snapshot.
        const seq = await hook(late, () => window.consiliumViewer.seq());
        await late.reload({ waitUntil: 'domcontentloaded' });
        await waitFor(() => hook(late, () => window.consiliumViewer?.synced() && window.consiliumViewer.ready()), { timeout: 30_000, message: 'the reloaded page to resync' });
        const log = await hook(late, () => window.consiliumViewer.syncLog());
        assert.deepEqual(
          log.filter((m) => m.type === 'sent hello' || m.type === 'snapshot' || m.type === 'changes').map((m) => [m.type, m.seq]),
          [['sent hello', seq], ['changes', seq]],
          JSON.stringify(log),
        );
        assert.deepEqual((await hook(late, () => window.consiliumViewer.annotations())).map((a) => a.id).sort(), want);
        await expectSameView(presenter, late, 'after a reload');
      }),
    );

    await t.test('authors delete their own annotations only; presenting is requested and handed over', (st) =>
      withLogs(pages, async () => {
        if (noCollab) return st.skip(noCollab);
        const list = await hook(presenter, () => window.consiliumViewer.annotations());
        const line = list.find((a) => a.kind === 'line');
        const ellipse = list.find((a) => a.kind === 'ellipse');
        const fbox = await viewportBox(follower);
        const fx = fbox.x + fbox.width / 2;
        const fy = fbox.y + fbox.height / 2;
        await follower.locator('[data-tool="select"]').click();
        // Someone else's line (near its tail, outside the ellipse): selected, not deletable.
        await follower.mouse.click(fx - 70, fy + 2.5);
        await waitFor(async () => (await follower.locator('.viewer').getAttribute('data-selected-annotation')) === line.id, {
          timeout: 5000,
          message: 'the line selected',
          detail: () =>
            follower.evaluate(
              ([x, y]) => {
                const v = window.consiliumViewer.viewer;
                const vp = v.viewports[0];
                return JSON.stringify({ tool: v.tool, at: vp.clientToImage(x, y), sel: v.root.dataset.selectedAnnotation, anns: window.consiliumViewer.annotations().map((a) => [a.id, a.kind, a.points, a.sop]), sop: vp.slice.sop, hit: v.annotationInput.hitTest(vp, x, y) });
              },
              [fx - 70, fy + 2.5],
            ),
        });
        assert.ok(await follower.locator('[data-action="delete-annotation"]').isDisabled());
        await follower.keyboard.press('Delete');
        // Its own ellipse: deleted everywhere.
        await follower.mouse.click(fx - 10, fy - 5);
        await waitFor(async () => (await follower.locator('.viewer').getAttribute('data-selected-annotation')) === ellipse.id, { timeout: 5000, message: 'the ellipse selected' });
        await follower.keyboard.press('Delete');
        await waitFor(
          async () => {
            const ids = (await hook(presenter, () => window.consiliumViewer.annotations())).map((a) => a.id);
            return ids.length === 4 && ids.includes(line.id) && !ids.includes(ellipse.id);
          },
          { timeout: 10_000, message: 'the ellipse gone from the presenter, the rest kept' },
        );
        await follower.locator('[data-tool="scroll"]').click();

        // The follower asks to present; the host hands over.
        await follower.getByRole('button', { name: 'Request to present' }).click();
        await presenter.getByRole('button', { name: 'Let Dr Follower present' }).click({ timeout: 10_000 });
        await waitFor(() => hook(follower, () => window.consiliumViewer.isPresenter()), { timeout: 10_000, message: 'the follower to present' });
        await waitFor(() => hook(presenter, () => window.consiliumViewer.isFollowing()), { timeout: 10_000, message: 'the host to follow' });
        await follower.locator('.vp[data-index="0"]').focus();
        await follower.keyboard.press('ArrowUp');
        await follower.keyboard.press('ArrowUp');
        await expectSameView(follower, presenter, 'after the hand-over');
        // The host takes it back.
        await presenter.getByRole('button', { name: 'Present', exact: true }).click();
        await waitFor(() => hook(presenter, () => window.consiliumViewer.isPresenter()), { timeout: 10_000, message: 'the host to present again' });
        await waitFor(() => hook(follower, () => window.consiliumViewer.isFollowing()), { timeout: 10_000, message: 'the follower to follow again' });
      }),
    );

    await t.test('authors edit what they drew (drag, colour, text), also after a reload; nobody else can', (st) =>
      withLogs(pages, async () => {
        if (noCollab) return st.skip(noCollab);
        const find = (page, id) => hook(page, (id) => window.consiliumViewer.annotations().find((a) => a.id === id), id);
        const list = await hook(presenter, () => window.consiliumViewer.annotations());
        const line = list.find((a) => a.kind === 'line');
        const text = list.find((a) => a.kind === 'text');
        // Back to the annotated slice (the hand-over above scrolled away); the follower follows.
        await hook(presenter, (sop) => {
          const v = window.consiliumViewer.viewer;
          const vp = v.viewports[0];
          v.localUpdate(vp, { slice: vp.series.slices.findIndex((sl) => sl.sop === sop) });
        }, line.sop);
        await expectSameView(presenter, follower, 'on the annotated slice');

        // The host drags its line's end 40 px to the right: everyone sees the new length.
        await presenter.locator('[data-tool="select"]').click();
        let [tx, ty] = await pointOn(presenter, line, 0.5);
        await presenter.mouse.click(tx, ty);
        await waitFor(async () => (await presenter.locator('.viewer').getAttribute('data-selected-annotation')) === line.id, { timeout: 5000, message: 'the line selected on the presenter' });
        const [ex, ey] = await pointOn(presenter, line, 1);
        await drag(presenter, [ex, ey], [ex + 40, ey]);
        const moved = await waitFor(
          async () => {
            const a = await find(follower, line.id);
            return a && a.points[1][0] > line.points[1][0] + 5 ? a : null;
          },
          { timeout: 10_000, message: 'the dragged end on the follower' },
        );
        assert.deepEqual(moved.points[0], line.points[0], 'only the dragged end moved');
        assert.notEqual(moved.stats.length_mm, line.stats.length_mm, `length recomputed: ${JSON.stringify([line.stats, moved.stats])}`);
        assert.equal(moved.author_key, 'name:Dr Presenter');
        assert.ok(moved.window && moved.window.ww > 0, `the window shown is stored: ${JSON.stringify(moved.window)}`);
        // C gives it the next colour.
        await presenter.keyboard.press('c');
        await waitFor(async () => (await find(follower, line.id))?.color !== line.color, { timeout: 10_000, message: 'the new colour on the follower' });

        // The host retypes its label: select, Enter, type, Enter.
        [tx, ty] = await pointOn(presenter, text, 0);
        await presenter.mouse.click(tx, ty);
        await waitFor(async () => (await presenter.locator('.viewer').getAttribute('data-selected-annotation')) === text.id, { timeout: 5000, message: 'the text selected' });
        await presenter.keyboard.press('Enter');
        const input = presenter.locator('.vw-text-input');
        await input.waitFor({ timeout: 5000 });
        assert.equal(await input.inputValue(), text.text);
        await input.fill('Spiculated margin, 14 mm');
        await input.press('Enter');
        await waitFor(async () => (await find(follower, text.id))?.text === 'Spiculated margin, 14 mm', { timeout: 10_000, message: 'the retyped label on the follower' });

        // The follower may select the host's line but gets no handles: a drag sends nothing,
        // and an update forged on the data channel is refused.
        const before = await waitFor(async () => {
          const a = await find(presenter, line.id);
          return a && !a.editing ? a : null;
        }, { timeout: 10_000, message: 'the presenter’s edits confirmed' });
        await follower.locator('[data-tool="select"]').click();
        const sentBefore = (await countSent(follower)).annotate ?? 0;
        [tx, ty] = await pointOn(follower, before, 0.5);
        await follower.mouse.click(tx, ty);
        await waitFor(async () => (await follower.locator('.viewer').getAttribute('data-selected-annotation')) === line.id, { timeout: 5000, message: 'the line selected on the follower' });
        const [fx1, fy1] = await pointOn(follower, before, 1);
        await drag(follower, [fx1, fy1], [fx1 + 60, fy1 + 20]);
        assert.equal((await countSent(follower)).annotate ?? 0, sentBefore, 'no annotate message for a shape the page may not edit');
        await hook(follower, (id) => window.consilium.session.sendData({ type: 'annotate', op: 'update', id, ref: 'forged-1', annotation: { points: [[1, 1], [2, 2]] } }), line.id);
        await waitFor(async () => (await hook(follower, () => window.consiliumViewer.syncLog())).some((m) => m.type === 'error' && m.code === 'not_allowed'), { timeout: 10_000, message: 'the forged update refused' });
        assert.deepEqual((await find(presenter, line.id)).points, before.points, 'the line is unchanged');

        // The follower draws an arrow, reloads (a new participant id), and still moves it.
        await follower.locator('[data-tool="arrow"]').click();
        const fb = await viewportBox(follower);
        await drag(follower, [fb.x + 150, fb.y + fb.height - 150], [fb.x + 210, fb.y + fb.height - 110]);
        const arrow = await waitFor(
          async () => (await hook(presenter, () => window.consiliumViewer.annotations())).find((a) => a.kind === 'arrow' && a.author_name === 'Dr Follower' && !a.pending),
          { timeout: 10_000, message: 'the follower’s arrow on the presenter' },
        );
        const idBefore = await hook(follower, () => window.consilium.session.participantId);
        await follower.reload({ waitUntil: 'domcontentloaded' });
        await waitFor(() => hook(follower, () => window.consiliumViewer?.synced() && window.consiliumViewer.ready()), { timeout: 30_000, message: 'the reloaded follower to resync' });
        assert.notEqual(await hook(follower, () => window.consilium.session.participantId), idBefore, 'a reload is a new participant');
        await expectSameView(presenter, follower, 'after the follower’s reload');
        await follower.locator('[data-tool="select"]').click();
        [tx, ty] = await pointOn(follower, arrow, 0.5);
        await follower.mouse.click(tx, ty);
        await waitFor(async () => (await follower.locator('.viewer').getAttribute('data-selected-annotation')) === arrow.id, { timeout: 5000, message: 'its arrow selected after the reload' });
        await drag(follower, [tx, ty], [tx + 30, ty + 30]);
        const shifted = await waitFor(
          async () => {
            const a = await find(presenter, arrow.id);
            return a && a.points[0][0] > arrow.points[0][0] + 5 && a.points[1][0] > arrow.points[1][0] + 5 ? a : null;
          },
          { timeout: 10_000, message: 'the whole arrow moved, seen by the presenter' },
        );
        const dx0 = shifted.points[0][0] - arrow.points[0][0];
        const dx1 = shifted.points[1][0] - arrow.points[1][0];
        assert.ok(Math.abs(dx0 - dx1) < 0.05, `moved as a whole: ${JSON.stringify([arrow.points, shifted.points])}`);
        await follower.locator('[data-tool="scroll"]').click();
        await presenter.locator('[data-tool="scroll"]').click();
      }),
    );

    await t.test('the host exports the annotations as JSON and as DICOM presentation states', (st) =>
      withLogs(pages, async () => {
        if (noCollab) return st.skip(noCollab);
        const study = (await state(presenter)).viewports[0].study;
        const [json] = await Promise.all([presenter.waitForEvent('download', { timeout: 10_000 }), presenter.locator('[data-action="export-json"]').click()]);
        assert.equal(json.suggestedFilename(), `annotations-${study}.json`);
        const body = JSON.parse(await streamText(await json.createReadStream()));
        const ids = (await hook(presenter, () => window.consiliumViewer.annotations())).map((a) => a.id).sort();
        assert.deepEqual(body.annotations.map((a) => a.id).sort(), ids);
        const gsps = presenter.waitForEvent('download', { timeout: 15_000 });
        await presenter.locator('[data-action="export-gsps"]').click();
        const file = await gsps;
        assert.match(file.suggestedFilename(), /^GSPS-[0-9.]+\.dcm$/);
        const bytes = await streamBytes(await file.createReadStream());
        assert.equal(bytes.subarray(128, 132).toString('latin1'), 'DICM', 'a DICOM Part 10 file');
        const created = JSON.parse((await presenter.locator('.viewer').getAttribute('data-last-export')) || '[]');
        assert.equal(created.length, 1, JSON.stringify(created));
        assert.equal(created[0].annotations, ids.length);
        // Stored back into the study: QIDO lists the PR series.
        const res = await fetch(`${server.url}/dicomweb/studies/${study}/series?room=${ROOM}`, { headers: { Accept: 'application/dicom+json' } });
        const series = await res.json();
        assert.ok(series.some((s) => s['00080060']?.Value?.[0] === 'PR' && s['0020000E']?.Value?.[0] === created[0].seriesInstanceUID), JSON.stringify(series.map((s) => s['00080060'])));
      }),
    );

    await t.test('after a server restart on the same data directory a new page still sees them', (st) =>
      withLogs(pages, async () => {
        if (noCollab) return st.skip(noCollab);
        const before = (await hook(presenter, () => window.consiliumViewer.annotations())).map((a) => a.id).sort();
        const presented = await state(presenter);
        for (const p of pages.splice(1)) await closePage(p);
        await server.stop();
        server = await startServer(serverOpts);
        const fresh = await openViewer('Dr After Restart');
        pages.push(fresh);
        const got = (await hook(fresh, () => window.consiliumViewer.annotations())).map((a) => a.id).sort();
        assert.deepEqual(got, before, `annotations survived the restart (protocol log: ${JSON.stringify(await hook(fresh, () => window.consiliumViewer.syncLog()))})`);
        // The presenter's page reconnects by itself and resumes from its last seq.
        await waitFor(() => hook(presenter, () => window.consiliumViewer.synced() && window.consilium.state === 'connected'), {
          timeout: 30_000,
          message: 'the presenter page to reconnect and resync',
        });
        const again = (await hook(presenter, () => window.consiliumViewer.annotations())).map((a) => a.id).sort();
        assert.deepEqual(again, before);
        const s = await state(fresh);
        assert.equal(s.viewports[0].series, presented.viewports[0].series);
      }),
    );

    await t.test('uploading DICOM files shows the new study to everyone and reports refused files', () =>
      withLogs(pages, async () => {
        const page = noCollab ? presenter : pages.at(-1);
        const uid = `1.2.826.0.1.3680043.10.1001.77.${Date.now()}`;
        const files = [1, 2, 3].map((n) => ({
          name: `slice-${n}.dcm`,
          mimeType: 'application/dicom',
          buffer: ctSlice({ study: uid, series: `${uid}.1`, sop: `${uid}.1.${n}`, number: n }),
        }));
        files.push({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('not an image') });
        await page.locator('.vw-file').setInputFiles(files);
        await page.waitForSelector('.vw-upload-report[data-done="true"]', { timeout: 20_000 });
        const report = await page.locator('.vw-upload-report').evaluate((el) => ({ stored: el.dataset.stored, failed: el.dataset.failed, text: el.textContent }));
        assert.equal(report.stored, '3', JSON.stringify(report));
        assert.equal(report.failed, '1', JSON.stringify(report));
        assert.match(report.text, /notes\.txt/);
        await page.waitForSelector(`.vw-study[data-study-uid="${uid}"]`, { timeout: 10_000 });
        await presenter.waitForSelector(`.vw-study[data-study-uid="${uid}"]`, { timeout: 10_000 });
        await page.locator('.vw-upload-report button').click();

        // A .zip dropped on the viewer goes to the server as application/zip.
        const zuid = `${uid}.5`;
        const zip = zipStore([1, 2].map((n) => ({ name: `ct/${n}.dcm`, data: ctSlice({ study: zuid, series: `${zuid}.1`, sop: `${zuid}.1.${n}`, number: n, patientName: 'ZIP^DROP' }) })));
        await page.evaluate(async (b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], 'study.zip', { type: 'application/zip' }));
          const target = document.querySelector('.vp[data-index="0"]');
          for (const type of ['dragenter', 'dragover', 'drop']) {
            target.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
          }
        }, zip.toString('base64'));
        await page.waitForSelector('.vw-upload-report[data-done="true"]', { timeout: 20_000 });
        const zreport = await page.locator('.vw-upload-report').evaluate((el) => ({ stored: el.dataset.stored, failed: el.dataset.failed, text: el.textContent }));
        assert.equal(zreport.stored, '2', JSON.stringify(zreport));
        assert.equal(zreport.failed, '0', JSON.stringify(zreport));
        await page.waitForSelector(`.vw-study[data-study-uid="${zuid}"]`, { timeout: 10_000 });
      }),
    );
  } finally {
    for (const p of pages) await closePage(p);
  }
});
