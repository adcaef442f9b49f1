// Browser end-to-end tests of the web client against the real Consilium server.
// Server: CONSILIUM_URL, or CONSILIUM_BIN (default ../target/debug/consilium) started here.
// Run from web-client/: npm test

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer,
  launchBrowser,
  openPage,
  closePage,
  waitFor,
  uniqueRoom,
  callUrl,
  remoteMediaInfo,
  withLogs as withPageLogs,
} from './helpers.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

/** Adds the pages' console output (and the server's) to a failure. */
const withLogs = (pages, fn) => withPageLogs(pages, fn, () => server);

/** Waits until `page` shows exactly one remote tile, for `otherName`, with moving video and audio. */
async function expectLiveRemote(page, otherName) {
  let last;
  const first = await waitFor(
    async () => {
      const info = await remoteMediaInfo(page);
      last = info;
      const [tile] = info.tiles;
      const ok =
        info.tiles.length === 1 &&
        tile.name === otherName &&
        tile.width > 0 &&
        info.audioPacketsReceived > 0;
      return ok ? info : false;
    },
    {
      timeout: 20_000,
      message: `exactly one live video tile for ${otherName} with audio packets`,
      detail: () => JSON.stringify(last),
    },
  );
  const [tile] = first.tiles;
  assert.equal(tile.videoTracks, 1, `${otherName}'s tile should hold one video track`);
  assert.equal(tile.audioTracks, 1, `${otherName}'s tile should hold one audio track`);
  assert.ok(
    await page.evaluate((id) => window.consilium.participants.has(id), tile.id),
    'the tile belongs to a known participant',
  );
  await waitFor(
    async () => {
      const info = await remoteMediaInfo(page);
      last = info;
      return (
        info.framesDecoded > first.framesDecoded ||
        (info.tiles[0]?.totalVideoFrames ?? 0) > tile.totalVideoFrames
      );
    },
    {
      timeout: 10_000,
      message: `${otherName}'s video frames to keep being decoded`,
      detail: () => JSON.stringify(last),
    },
  );
}

test('two participants see and hear each other; leaving removes the tile', { timeout: 120_000 }, async (t) => {
  const room = uniqueRoom();
  const alice = await openPage(browser, callUrl(server.url, { room, name: 'Alice' }));
  const bob = await openPage(browser, callUrl(server.url, { room, name: 'Bob' }));
  let carol = null;
  try {
    await t.test('each sees the other’s live video and receives audio', () =>
      withLogs([alice, bob], async () => {
        await Promise.all([expectLiveRemote(alice, 'Bob'), expectLiveRemote(bob, 'Alice')]);
        const timings = await alice.evaluate(() => ({ ...window.consilium.timings }));
        for (const k of ['ws_open', 'media_ready', 'joined', 'ice_connected', 'first_remote_video_frame']) {
          assert.equal(typeof timings[k], 'number', `timing ${k} recorded: ${JSON.stringify(timings)}`);
        }
        await alice.waitForSelector('#connection-state[data-state="connected"]', { timeout: 10_000 });
        t.diagnostic(`Alice timings (ms since navigation start): ${JSON.stringify(timings)}`);
      }),
    );

    await t.test('client_timings is sent once after the first frame; a refusal is ignored', () =>
      withLogs([alice, bob], async () => {
        const sent = await waitFor(() => alice.wsSent.find((m) => m.type === 'client_timings'), {
          timeout: 5_000,
          message: 'Alice to send client_timings',
        });
        const allowed = ['ws_open', 'joined', 'ice_connected', 'first_remote_video_frame', 'first_remote_audio', 'media_ready'];
        for (const [k, v] of Object.entries(sent.timings)) {
          assert.ok(allowed.includes(k), `unexpected key ${k} in ${JSON.stringify(sent)}`);
          assert.ok(typeof v === 'number' && v >= 0 && v < 600_000, `${k}=${v} in range`);
        }
        for (const k of ['ws_open', 'joined', 'first_remote_video_frame']) {
          assert.equal(typeof sent.timings[k], 'number', `${k} in ${JSON.stringify(sent)}`);
        }
        const jsTimings = await alice.evaluate(() => ({ ...window.consilium.timings }));
        assert.equal(sent.timings.first_remote_video_frame, jsTimings.first_remote_video_frame);

        // Whatever the server answers (nothing, or `error` unknown_type from a server that
        // predates the message, or bad_message for an implausible value), the call goes on
        // without a banner.
        const before = alice.wsReceived.length;
        await alice.evaluate(() => {
          const sig = window.consilium.session.signaling;
          sig.send('client_timings', { timings: { ws_open: 1e9 } });
          sig.ping();
        });
        await waitFor(() => alice.wsReceived.slice(before).some((m) => m.type === 'pong'), {
          timeout: 5_000,
          message: 'the pong after a second client_timings',
        });
        await new Promise((r) => setTimeout(r, 200));
        assert.ok(await alice.locator('#error').isHidden(), 'no error banner for client_timings');
        assert.equal(await alice.evaluate(() => window.consilium.state), 'connected');
        assert.equal(alice.wsSent.filter((m) => m.type === 'client_timings').length, 2, 'the page itself sent client_timings once (plus the one injected here)');
        assert.deepEqual(alice.pageErrors, []);
      }),
    );

    await t.test('muting the microphone is shown on the other side', () =>
      withLogs([alice, bob], async () => {
        await alice.locator('#mic-btn').click();
        await bob.waitForSelector('figure.tile[data-audio-muted="true"]', { timeout: 5_000 });
        await alice.locator('#mic-btn').click();
        await bob.waitForSelector('figure.tile[data-audio-muted="false"]', { timeout: 5_000 });
      }),
    );

    await t.test('when Bob leaves, Alice loses his tile', () =>
      withLogs([alice, bob], async () => {
        await alice.waitForSelector('video[data-participant="Bob"]', { timeout: 20_000 });
        await bob.getByRole('button', { name: 'Leave' }).click();
        await waitFor(async () => (await alice.locator('video[data-participant]').count()) === 0, {
          timeout: 5_000,
          interval: 100,
          message: 'Bob’s tile to disappear from Alice’s page',
        });
        assert.equal(await bob.evaluate(() => window.consilium.state), 'left');
      }),
    );

    await t.test('whoever joins next is seen and heard on the media lines Bob left', () =>
      withLogs([alice, bob], async () => {
        // The server reuses a departed participant's transceivers (inactive, then sendonly
        // with the newcomer's stream): Alice's SDP must not grow with every join and leave.
        const lines = () => alice.evaluate(() => window.consilium.pc.getTransceivers().length);
        const before = await waitFor(
          async () => {
            const n = await lines();
            const inactive = await alice.evaluate(() =>
              window.consilium.pc.getTransceivers().filter((t) => t.currentDirection === 'inactive').length,
            );
            return inactive >= 2 ? n : false;
          },
          { timeout: 10_000, message: 'Bob’s two forwarded tracks to go inactive on Alice’s side' },
        );
        const plis = () =>
          alice.evaluate(async () => {
            let n = 0;
            (await window.consilium.pc.getStats()).forEach((r) => {
              if (r.type === 'outbound-rtp' && r.kind === 'video') n += r.pliCount ?? 0;
            });
            return n;
          });
        const plisBefore = await plis();
        carol = await openPage(browser, callUrl(server.url, { room, name: 'Carol' }));
        await expectLiveRemote(alice, 'Carol');
        assert.equal(await lines(), before, 'Carol’s tracks came on the lines Bob left');
        // Carol joins a running call: the SFU asks Alice for a keyframe for her, and Alice's
        // browser counts that PLI.
        let after;
        await waitFor(async () => (after = await plis()) > plisBefore, {
          timeout: 10_000,
          message: 'a keyframe request for Carol to reach Alice',
          detail: () => `pliCount ${plisBefore} → ${after}`,
        });
      }),
    );
  } finally {
    await closePage(alice);
    await closePage(bob);
    if (carol) await closePage(carol);
  }
});

test('the join form joins a room', { timeout: 60_000 }, async () => {
  const page = await openPage(browser, `${server.url}/`);
  try {
    await withLogs([page], async () => {
      await page.getByLabel('Room', { exact: true }).fill(uniqueRoom('form'));
      await page.getByLabel('Your name').fill('Carol');
      await page.getByRole('button', { name: 'Join', exact: true }).click();
      await page.waitForSelector('#connection-state[data-state="connected"]', { timeout: 20_000 });
      assert.deepEqual(page.pageErrors, []);
    });
  } finally {
    await closePage(page);
  }
});

test('a bad room name shows the server’s error and the page keeps working', { timeout: 60_000 }, async () => {
  // A deep link joins over HTTP (POST /join): the server's error comes in its response.
  const replies = [];
  const recordJoin = async (route) => {
    const response = await route.fetch();
    replies.push(await response.json());
    await route.fulfill({ response });
  };
  const page = await openPage(browser, callUrl(server.url, { room: 'bad room!', name: 'Dave' }), {
    routes: [['**/join?session=*', recordJoin]],
  });
  try {
    await withLogs([page], async () => {
      const banner = page.locator('#error');
      await banner.waitFor({ state: 'visible', timeout: 20_000 });
      const serverError = await waitFor(() => [...replies, ...page.wsReceived].find((m) => m.type === 'error'), {
        timeout: 5_000,
        message: 'the server’s error message',
      });
      assert.equal(serverError.code, 'bad_room');
      assert.equal(await banner.getAttribute('data-code'), 'bad_room');
      assert.ok(
        (await banner.textContent()).includes(serverError.message),
        `banner shows the server's message "${serverError.message}"`,
      );
      assert.equal(await page.evaluate(() => window.consilium.state), 'failed');
      assert.deepEqual(page.pageErrors, []);

      // Still usable: fix the room in the form and join.
      await page.getByLabel('Room', { exact: true }).fill(uniqueRoom('fixed'));
      await page.getByRole('button', { name: 'Join', exact: true }).click();
      await page.waitForSelector('#connection-state[data-state="connected"]', { timeout: 20_000 });
      assert.ok(await banner.isHidden(), 'the old error is cleared after a successful join');
    });
  } finally {
    await closePage(page);
  }
});

test('with bandwidth estimation on, every Chromium subscriber is estimated and media still flows', { timeout: 90_000 }, async () => {
  // Its own server: estimation is off by default (docs/operations.md). The SFU then puts
  // transport-wide sequence numbers on what it sends, and Chromium's feedback drives the
  // congestion controller whose estimate /metrics samples every 5 s.
  const bwe = await startServer({ args: ['--bandwidth-estimation', 'true'] });
  const room = uniqueRoom('bwe');
  const alice = await openPage(browser, callUrl(bwe.url, { room, name: 'Alice' }));
  const bob = await openPage(browser, callUrl(bwe.url, { room, name: 'Bob' }));
  try {
    await withPageLogs(
      [alice, bob],
      async () => {
        await Promise.all([expectLiveRemote(alice, 'Bob'), expectLiveRemote(bob, 'Alice')]);
        let last = '';
        const estimated = await waitFor(
          async () => {
            last = await (await fetch(`${bwe.url}/metrics`)).text();
            const count = Number(/^consilium_subscriber_bandwidth_estimate_bits_count (\S+)$/m.exec(last)?.[1] ?? 0);
            const sum = Number(/^consilium_subscriber_bandwidth_estimate_bits_sum (\S+)$/m.exec(last)?.[1] ?? 0);
            return count >= 2 ? { count, sum } : false;
          },
          {
            timeout: 20_000,
            message: 'both subscribers’ bandwidth estimates sampled',
            detail: () => last.split('\n').filter((l) => l.includes('bandwidth_estimate')).join('\n'),
          },
        );
        // GCC's floor is 100 kbit/s; an estimate of nothing would mean no feedback came back.
        assert.ok(estimated.sum / estimated.count >= 100_000, JSON.stringify(estimated));
      },
      () => bwe,
    );
  } finally {
    await closePage(alice);
    await closePage(bob);
    await bwe.stop();
  }
});
