// The early join of a deep link: index.html's head script opens the signaling socket, builds
// the RTCPeerConnection and joins over HTTP (POST /join, the socket naming the same session
// key) before the ES modules load; js/call/session.js adopts them. These tests check that a deep link takes that path (one PeerConnection, one
// join, media both ways), that a reconnect builds a fresh PeerConnection, and that the page
// still joins when the early path is missing or fails (socket closed, no RTCPeerConnection in
// the head, the early offer failing).
// Run from web-client/: node --test tests/early-join.test.mjs

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

/**
 * Runs in the page before its own scripts: counts the RTCPeerConnections and WebSockets it
 * creates (window.__pcs, window.__sockets), and notes for each join sent, on a socket or as
 * POST /join, how and whether the modules (window.consilium) had run yet (window.__joins).
 * `faults` breaks the early path: closeFirstSocket, noFirstPeerConnection, failFirstOffer;
 * `faults.receiveSlots` sets how many receive slot pairs the page offers.
 */
function instrument(faults = {}) {
  if (typeof faults.receiveSlots === 'number') window.__consiliumReceiveSlots = faults.receiveSlots;
  const NativePC = window.RTCPeerConnection;
  const NativeWS = window.WebSocket;
  window.__pcs = [];
  window.__sockets = [];
  window.__joins = [];
  window.RTCPeerConnection = class extends NativePC {
    constructor(...args) {
      if (faults.noFirstPeerConnection && window.__pcs.length === 0) {
        window.__pcs.push(null);
        throw new Error('no RTCPeerConnection (test)');
      }
      super(...args);
      window.__pcs.push(this);
      if (faults.failFirstOffer && window.__pcs.length === 1) {
        this.createOffer = () => Promise.reject(new Error('createOffer failed (test)'));
      }
    }
  };
  window.WebSocket = class extends NativeWS {
    constructor(...args) {
      super(...args);
      window.__sockets.push(this);
      if (faults.closeFirstSocket && window.__sockets.length === 1) this.close();
    }
    send(data) {
      try {
        const msg = JSON.parse(data);
        if (msg.type === 'join') window.__joins.push({ over: 'websocket', msg, modulesRan: !!window.consilium });
      } catch {
        /* not JSON */
      }
      return super.send(data);
    }
  };
  const nativeFetch = window.fetch;
  window.fetch = function (url, init) {
    if (String(url).startsWith('/join') && init?.method === 'POST') {
      window.__joins.push({ over: 'http', url: String(url), msg: JSON.parse(init.body), modulesRan: !!window.consilium });
    }
    return nativeFetch.call(this, url, init);
  };
}

/** What the instrumented page saw: counts, PeerConnection states, the session's flags. */
function probe(page) {
  return page.evaluate(() => ({
    pcs: window.__pcs.map((pc) => (pc ? pc.signalingState : 'threw')),
    sockets: window.__sockets.length,
    joins: window.__joins,
    earlyJoin: window.consilium?.earlyJoin,
    state: window.consilium?.state,
    timings: { ...window.consilium?.timings },
    adoptedFirstPc: !!window.__pcs[0] && window.consilium?.pc === window.__pcs[0],
  }));
}

/** Waits until `page` shows `otherName`'s video and receives audio, and is connected. */
async function expectLiveRemote(page, otherName) {
  let last;
  await waitFor(
    async () => {
      last = await remoteMediaInfo(page);
      const tile = last.tiles.find((t) => t.name === otherName);
      return last.state === 'connected' && tile && tile.width > 0 && last.audioPacketsReceived > 0;
    },
    { timeout: 20_000, message: `live video and audio of ${otherName}`, detail: () => JSON.stringify(last) },
  );
}

/** Waits until `page` has sent audio packets and encoded video frames. */
async function sendingAudioAndVideo(page) {
  await waitFor(
    () =>
      page.evaluate(async () => {
        const stats = await window.consilium.pc?.getStats();
        const sent = { audio: 0, video: 0 };
        stats?.forEach((r) => {
          if (r.type === 'outbound-rtp') sent[r.kind] += r.packetsSent ?? 0;
        });
        return sent.audio > 0 && sent.video > 0;
      }),
    { timeout: 20_000, message: 'audio and video to be sent' },
  );
}

/** Signaling `join` messages the page sent (on sockets that opened). */
const joinsSent = (page) => page.wsSent.filter((m) => m.type === 'join');

test('a deep link joins with the head script’s PeerConnection; a reconnect makes a fresh one', { timeout: 120_000 }, async (t) => {
  const room = uniqueRoom('early');
  const alice = await openPage(browser, callUrl(server.url, { room, name: 'Alice' }));
  const bob = await openPage(browser, callUrl(server.url, { room, name: 'Bob' }), { init: instrument });
  try {
    await t.test('one PeerConnection, one join, media both ways', () =>
      withLogs([alice, bob], async () => {
        await Promise.all([expectLiveRemote(alice, 'Bob'), expectLiveRemote(bob, 'Alice')]);
        const p = await probe(bob);
        t.diagnostic(`Bob: ${JSON.stringify({ ...p, joins: p.joins.map(({ msg, ...j }) => ({ ...j, type: msg.type })) })}`);
        assert.equal(p.earlyJoin, true, 'the session adopted the early call');
        assert.deepEqual(p.pcs, ['stable'], 'exactly one RTCPeerConnection, in use');
        assert.ok(p.adoptedFirstPc, 'the session’s PeerConnection is the head script’s');
        assert.equal(p.sockets, 1, 'one WebSocket');
        assert.equal(p.joins.length, 1, 'one join');
        assert.equal(p.joins[0].over, 'http', 'the head script joined over HTTP');
        assert.equal(p.joins[0].modulesRan, false, 'before the modules ran');
        assert.equal(joinsSent(bob).length, 0, 'no join on the socket');
        // The socket names the session key the POST names.
        const key = new URL(p.joins[0].url, server.url).searchParams.get('session');
        assert.match(key, /^[A-Za-z0-9_-]{32}$/);
        assert.equal(await bob.evaluate(() => new URL(window.__sockets[0].url).searchParams.get('session')), key);
        const join = p.joins[0].msg;
        assert.equal(join.type, 'join');
        assert.equal(join.v, 1);
        assert.equal(join.room, room);
        assert.equal(join.name, 'Bob');
        assert.equal(join.token, null);
        // The offer session.js would make: a receive slot pair, then sendonly audio,
        // sendonly video, the data channel.
        const kinds = [...join.offer.matchAll(/^m=(\w+)/gm)].map((m) => m[1]);
        assert.deepEqual(kinds, ['audio', 'video', 'audio', 'video', 'application']);
        assert.equal(join.offer.match(/^a=recvonly/gm)?.length, 2, 'two receive slots');
        assert.equal(join.offer.match(/^a=sendonly/gm)?.length, 2, 'two sendonly sections');
        // Truthful timings: the answer came after the join left; the socket opened alongside.
        const { ws_open, join_sent, joined } = p.timings;
        assert.ok(join_sent <= joined && ws_open > 0, JSON.stringify(p.timings));
        // Bob's camera and microphone went onto the head script's transceivers by replaceTrack
        // (and Alice gets his video, above).
        assert.deepEqual(
          await bob.evaluate(() => {
            const { audio, video } = window.consilium.session._sendTransceivers;
            const first = window.__pcs[0].getTransceivers().filter((t) => t.direction === 'sendonly');
            return [audio === first[0], video === first[1], audio.sender.track?.kind, video.sender.track?.kind];
          }),
          [true, true, 'audio', 'video'],
          'local tracks on the adopted transceivers',
        );
        // The data channel opened on the adopted PeerConnection.
        await waitFor(() => bob.evaluate(() => window.consilium.session.dataChannel?.readyState === 'open'), {
          timeout: 10_000,
          message: 'the adopted data channel to open',
        });
        assert.deepEqual(bob.pageErrors, []);
      }),
    );

    await t.test('a reconnect builds a fresh PeerConnection and joins again', () =>
      withLogs([alice, bob], async () => {
        // The socket drops (not by the session): it rejoins on a new socket.
        await bob.evaluate(() => window.consilium.session.signaling.ws.close());
        await waitFor(async () => (await probe(bob)).pcs.length === 2, {
          timeout: 10_000,
          message: 'a second PeerConnection',
        });
        await Promise.all([expectLiveRemote(alice, 'Bob'), expectLiveRemote(bob, 'Alice')]);
        const p = await probe(bob);
        assert.equal(p.earlyJoin, false);
        assert.deepEqual(p.pcs, ['closed', 'stable'], 'the early PeerConnection was closed');
        assert.equal(p.sockets, 2);
        assert.deepEqual(p.joins.map((j) => j.over), ['http', 'websocket'], 'the rejoin joins on its socket');
        assert.equal(joinsSent(bob).length, 1);
        assert.deepEqual(bob.pageErrors, []);
      }),
    );
  } finally {
    await closePage(alice);
    await closePage(bob);
  }
});

for (const [fault, expected] of [
  // The early socket is gone before the modules load: fresh socket, fresh PeerConnection.
  ['closeFirstSocket', { pcs: ['closed', 'stable'], sockets: 2 }],
  // No RTCPeerConnection in the head (an old browser): the head script closes its socket
  // (it names a session key no join will come for); the session's socket and PC.
  ['noFirstPeerConnection', { pcs: ['threw', 'stable'], sockets: 2 }],
  // The early offer fails: no POST; a fresh socket and PeerConnection, the session's join.
  ['failFirstOffer', { pcs: ['closed', 'stable'], sockets: 2 }],
]) {
  test(`without the early call (${fault}) a deep link still joins`, { timeout: 60_000 }, async () => {
    const room = uniqueRoom('fallback');
    const alice = await openPage(browser, callUrl(server.url, { room, name: 'Alice' }));
    const bob = await openPage(browser, callUrl(server.url, { room, name: 'Bob' }), {
      init: instrument,
      initArg: { [fault]: true },
    });
    try {
      await withLogs([alice, bob], async () => {
        await Promise.all([expectLiveRemote(alice, 'Bob'), expectLiveRemote(bob, 'Alice')]);
        const p = await probe(bob);
        assert.equal(p.earlyJoin, false);
        assert.deepEqual(p.pcs, expected.pcs);
        assert.equal(p.sockets, expected.sockets);
        assert.equal(p.joins.length, 1, 'one join');
        assert.equal(p.joins[0].over, 'websocket');
        assert.equal(p.joins[0].modulesRan, true, 'sent by session.js');
        assert.equal(joinsSent(bob).length, 1);
        assert.equal(typeof p.timings.join_sent, 'number');
        // The early tiles went with the early call: Alice plays in a tile of the session's own.
        const tiles = await bob.evaluate(() =>
          [...document.querySelectorAll('#tiles > figure')].map((el) => [el.dataset.early ?? null, el.querySelector('.tile-name')?.textContent]),
        );
        assert.deepEqual(tiles, [[null, 'Alice']]);
        assert.deepEqual(bob.pageErrors, []);
      });
    } finally {
      await closePage(alice);
      await closePage(bob);
    }
  });
}

test('the socket’s messages wait for a slow reply to the POST', { timeout: 60_000 }, async () => {
  // The renegotiation offer that brings Alice's tracks is on Bob's socket before the answer
  // to his join (held 700 ms here) is: the page must still apply the answer first. Bob offers
  // no receive slots, so that Alice's tracks come by that offer and not in the answer.
  const room = uniqueRoom('slowpost');
  const alice = await openPage(browser, callUrl(server.url, { room, name: 'Alice' }));
  const slowJoin = async (route) => {
    const response = await route.fetch();
    await new Promise((r) => setTimeout(r, 700));
    await route.fulfill({ response });
  };
  const bob = await openPage(browser, callUrl(server.url, { room, name: 'Bob' }), {
    init: instrument,
    initArg: { receiveSlots: 0 },
    routes: [['**/join?session=*', slowJoin]],
  });
  try {
    await withLogs([alice, bob], async () => {
      await Promise.all([expectLiveRemote(alice, 'Bob'), expectLiveRemote(bob, 'Alice')]);
      const p = await probe(bob);
      assert.equal(p.earlyJoin, true);
      assert.deepEqual(p.pcs, ['stable'], 'one PeerConnection: nothing failed and rejoined');
      assert.equal(p.sockets, 1);
      assert.deepEqual(p.joins.map((j) => j.over), ['http']);
      // Alice's tracks came by the socket's offer, which arrived while the reply was held.
      const offers = bob.wsReceived.filter((m) => m.type === 'offer');
      assert.ok(offers.length >= 1, 'a renegotiation offer on the socket');
      assert.ok(p.timings.joined - p.timings.join_sent >= 600, JSON.stringify(p.timings));
      assert.deepEqual(bob.pageErrors, []);
    });
  } finally {
    await closePage(alice);
    await closePage(bob);
  }
});

test('a later participant comes on a receive slot, not on a new m-section', { timeout: 90_000 }, async () => {
  // Bob offers two slot pairs. Alice is in the room when he joins: her tracks are in his
  // answer, on his first slot pair. Carol comes after: the server's offer puts her on his
  // second pair.
  const room = uniqueRoom('slots');
  const alice = await openPage(browser, callUrl(server.url, { room, name: 'Alice' }));
  let bob;
  let carol;
  try {
    await alice.waitForSelector('#connection-state[data-state="connected"]', { timeout: 20_000 });
    await sendingAudioAndVideo(alice); // the server publishes a track on its first packet
    bob = await openPage(browser, callUrl(server.url, { room, name: 'Bob' }), {
      init: instrument,
      initArg: { receiveSlots: 2 },
    });
    await withLogs([alice, bob], async () => {
      await expectLiveRemote(bob, 'Alice');
      assert.equal(bob.wsReceived.filter((m) => m.type === 'offer').length, 0, 'Alice came in the answer');
    });
    carol = await openPage(browser, callUrl(server.url, { room, name: 'Carol' }));
    await withLogs([alice, bob, carol], async () => {
      await expectLiveRemote(bob, 'Carol');
      const seen = await bob.evaluate(() => {
        const pc = window.consilium.pc;
        const streams = window.consilium.session.remoteStreams;
        const owner = (t) => [...streams].find(([, s]) => s.getTracks().includes(t.receiver.track))?.[0] ?? null;
        return {
          transceivers: pc.getTransceivers().length,
          owners: pc.getTransceivers().slice(0, 4).map(owner),
          participants: Object.fromEntries([...window.consilium.participants].map(([id, p]) => [p.name, id])),
        };
      });
      assert.equal(seen.transceivers, 6, 'two slot pairs and our own two: nothing added');
      const { Alice: a, Carol: c } = seen.participants;
      assert.deepEqual(seen.owners, [a, a, c, c], JSON.stringify(seen));
      // Each plays in the head script's early tile of its slot pair (the one that showed the
      // first frame before the modules had loaded), now a plain tile with sound on.
      const tiles = await bob.evaluate(() =>
        [...document.querySelectorAll('#tiles > figure')].map((el) => {
          const v = el.querySelector('video');
          return {
            early: el.dataset.early ?? null,
            stillEarly: el.classList.contains('tile-early'),
            hidden: el.hidden,
            name: el.querySelector('.tile-name')?.textContent ?? null,
            muted: v.muted,
            tracks: v.srcObject?.getTracks().map((t) => t.kind).sort() ?? [],
            frames: v.getVideoPlaybackQuality().totalVideoFrames,
          };
        }),
      );
      assert.deepEqual(
        tiles.map(({ frames, ...t }) => t),
        [
          { early: '0', stillEarly: false, hidden: false, name: 'Alice', muted: false, tracks: ['audio', 'video'] },
          { early: '1', stillEarly: false, hidden: false, name: 'Carol', muted: false, tracks: ['audio', 'video'] },
        ],
        JSON.stringify(tiles),
      );
      assert.ok(tiles.every((t) => t.frames > 0), JSON.stringify(tiles));
      assert.equal(await bob.evaluate(() => document.querySelector('#tiles').dataset.count), '2');
      const { timings } = await probe(bob);
      assert.ok(timings.first_remote_video_frame > timings.join_sent, JSON.stringify(timings));
      assert.ok(bob.wsReceived.some((m) => m.type === 'offer'), 'Carol came by an offer');
      assert.deepEqual(bob.pageErrors, []);
    });
  } finally {
    await closePage(alice);
    if (bob) await closePage(bob);
    if (carol) await closePage(carol);
  }
});

test('a join refused over HTTP ends the session with the server’s reason', { timeout: 60_000 }, async () => {
  // An invalid room name: 400 with the `error` message, shown as for a join on the socket;
  // no retry (it would get the same answer).
  const bob = await openPage(browser, callUrl(server.url, { room: 'no room!', name: 'Bob' }), { init: instrument });
  try {
    await withLogs([bob], async () => {
      let p;
      await waitFor(
        async () => {
          p = await probe(bob);
          return p.state === 'failed';
        },
        { timeout: 15_000, message: 'the session to fail', detail: () => JSON.stringify(p) },
      );
      assert.equal(await bob.evaluate(() => window.consilium.session.lastError?.code), 'bad_room');
      assert.deepEqual(p.joins.map((j) => j.over), ['http'], 'no second join');
      assert.deepEqual(bob.pageErrors, []);
    });
  } finally {
    await closePage(bob);
  }
});
