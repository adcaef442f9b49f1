// Page flow: a join form at `/`; a deep link `/?room=R&name=N[&token=JWT]` joins at once.

import { Session } from './call/session.js';
import { TileGrid, SelfView } from './call/tiles.js';
import { Controls } from './call/controls.js';
import { ConnectionIndicator } from './call/indicator.js';
import { timings } from './call/timings.js';

// A deep link's early call (index.html's head script) is under way: this module's start
// (the session adopting it, the tiles, the controls: ~100-150 ms of main thread on a
// 2-core machine) waits until its first remote frame is on screen, or for as long as the
// head script says (appStart), so that it does not hold up that frame.
await globalThis.__consiliumEarlySocket?.call?.appStart;

/**
 * The shared viewer's modules, loaded once and only after the call has started: nothing of
 * them is needed for the first remote frame, and evaluating them first cost ~80 ms of every
 * join (docs/benchmarks.md).
 */
let viewerModules = null;
function loadViewerModules() {
  viewerModules ??= Promise.all([
    import('./viewer/viewer.js'),
    import('./viewer/upload.js'),
    import('./viewer/sync.js'),
    import('./annotation/layer.js'),
    import('./annotation/export.js'),
  ]).then(([{ Viewer }, { Uploader }, { ViewerSync, STUDIES_CHANGED }, { AnnotationLayer }, { AnnotationExport }]) => ({
    Viewer,
    Uploader,
    ViewerSync,
    STUDIES_CHANGED,
    AnnotationLayer,
    AnnotationExport,
  }));
  return viewerModules;
}

const $ = (sel) => document.querySelector(sel);

const ERROR_TITLES = {
  bad_room: 'Invalid room name.',
  bad_name: 'Invalid display name.',
  unauthorized: 'Access denied.',
  token_expired: 'This invitation has expired.',
  forbidden: 'This invitation is for another room or person.',
  room_full: 'The consultation room is full.',
  unsupported_version: 'This page is out of date: please reload it.',
  connection_lost: 'Connection lost.',
  bad_sdp: 'Media negotiation failed.',
  internal: 'Server error.',
};

const indicator = new ConnectionIndicator($('#connection-state'));

/** @type {{session: Session|null, tiles: TileGrid|null, self: SelfView|null, controls: Controls|null, viewer: object|null, sync: object|null, annotations: object|null, viewerCleanup: (() => void)|null}} */
const current = { session: null, tiles: null, self: null, controls: null, viewer: null, sync: null, annotations: null, viewerCleanup: null };

window.consilium = {
  get session() {
    return current.session;
  },
  get pc() {
    return current.session?.pc ?? null;
  },
  get participants() {
    return current.session?.participants ?? new Map();
  },
  get state() {
    return current.session?.state ?? 'idle';
  },
  /** Whether the current connection uses the PeerConnection and `join` of index.html's head script. */
  get earlyJoin() {
    return current.session?.earlyJoin ?? false;
  },
  timings,
};

// Test and debugging hook of the shared viewer.
window.consiliumViewer = {
  get viewer() {
    return current.viewer;
  },
  get sync() {
    return current.sync;
  },
  /** The ViewerState this page shows. */
  state: () => current.viewer?.getState() ?? null,
  annotations: () => current.annotations?.list() ?? [],
  seq: () => current.sync?.seq ?? null,
  isFollowing: () => !!current.sync && current.sync.following && !!current.sync.presenter && !current.sync.isPresenter,
  isPresenter: () => !!current.sync?.isPresenter,
  presenter: () => current.sync?.presenter ?? null,
  synced: () => !!current.sync?.synced,
  syncLog: () => [...(current.sync?.log ?? [])],
  metrics: () => ({ ...(current.viewer?.metrics ?? {}) }),
  /** Whether every viewport with a series has its current slice decoded and drawn. */
  ready: () => !!current.viewer && current.viewer.viewports.every((v) => !v.series || (v.frame && v.el.dataset.loaded === 'true')),
};

// ------------------------------------------------------------------ banners

function showError({ code, message }) {
  const el = $('#error');
  el.dataset.code = code ?? '';
  el.querySelector('.banner-title').textContent = ERROR_TITLES[code] ?? 'Error.';
  el.querySelector('.banner-message').textContent = message ?? '';
  el.hidden = false;
}

function clearError() {
  const el = $('#error');
  el.hidden = true;
  delete el.dataset.code;
}

function showNotice(message, action = null) {
  const el = $('#notice');
  el.querySelector('.banner-message').textContent = message;
  const btn = el.querySelector('.banner-action');
  btn.hidden = !action;
  if (action) {
    btn.textContent = action.label;
    btn.onclick = () => {
      action.run();
      el.hidden = true;
    };
  }
  el.hidden = false;
}

for (const btn of document.querySelectorAll('.banner-close')) {
  btn.addEventListener('click', () => {
    btn.closest('.banner').hidden = true;
  });
}

// ------------------------------------------------------------------ views

function showJoinView(lede) {
  $('#call-view').hidden = true;
  $('#room-info').hidden = true;
  $('#join-view').hidden = false;
  if (lede) $('#join-lede').textContent = lede;
  $('#join-btn').disabled = false;
}

function showCallView(room) {
  $('#join-view').hidden = true;
  $('#call-view').hidden = false;
  $('#room-name').textContent = room;
  $('#room-info').hidden = false;
}

function updateRoomCount() {
  const s = current.session;
  const n = s && s.joined ? s.participants.size + 1 : 0;
  $('#room-count').textContent = n ? `· ${n} ${n === 1 ? 'participant' : 'participants'}` : '';
}

// ------------------------------------------------------------------ call

function disposeCall() {
  current.viewerCleanup?.();
  current.viewerCleanup = null;
  current.sync?.destroy();
  current.sync = current.viewer = current.annotations = null;
  current.tiles?.destroy();
  current.self?.destroy();
  current.controls?.destroy();
  current.tiles = current.self = current.controls = null;
}

function startCall({ room, name, token }) {
  disposeCall();
  clearError();
  $('#notice').hidden = true;

  const params = new URLSearchParams({ room, name });
  if (token) params.set('token', token);
  history.replaceState(null, '', `${location.pathname}?${params}`);

  const session = new Session({ room, name, token });
  current.session = session;
  indicator.follow(session);
  showCallView(room);

  const tiles = new TileGrid($('#tiles'), session);
  current.tiles = tiles;
  current.self = new SelfView($('#self-view'), session);
  current.controls = new Controls($('#controls'), session);

  const waiting = $('#waiting');
  tiles.on('count', (n) => {
    waiting.hidden = n > 0;
  });
  waiting.hidden = tiles.tiles.size > 0;
  tiles.on('sound-blocked', () =>
    showNotice('Your browser blocked sound from the other participants.', {
      label: 'Enable sound',
      run: () => tiles.enableSound(),
    }),
  );


  session.on('participants', updateRoomCount);
  session.on('joined', updateRoomCount);
  session.on('error', (err) => showError(err));
  session.on('media-error', ({ message }) => showNotice(message));
  session.on('ended', ({ state, error }) => {
    updateRoomCount();
    if (current.session !== session) return;
    disposeCall();
    if (error) showError(error);
    $('#room').value = room;
    $('#name').value = name;
    showJoinView(
      state === 'left'
        ? 'You left the consultation. You can join again below.'
        : 'Could not join the consultation. Check the details below and try again.',
    );
  });

  session.start().catch((err) => {
    console.error('[consilium] could not start the call', err);
    showError({ code: 'internal', message: String(err?.message ?? err) });
  });
  // After the call's own work is under way (its first await has yielded).
  loadViewerModules()
    .then((modules) => {
      if (current.session === session) startViewer(modules, session, { room, token });
    })
    .catch((err) => console.error('[consilium] could not load the viewer', err));
}

// ------------------------------------------------------------------ shared viewer

/** The viewer becomes the main stage (video in a strip beside it) once the room has images. */
function setViewerShown(on) {
  const view = $('#call-view');
  view.dataset.viewer = on ? 'on' : 'off';
  $('#viewer').hidden = !on;
  const btn = $('#viewer-btn');
  btn.setAttribute('aria-pressed', String(on));
  btn.querySelector('.btn-text').textContent = on ? 'Hide images' : 'Images';
}

function startViewer({ Viewer, Uploader, ViewerSync, STUDIES_CHANGED, AnnotationLayer, AnnotationExport }, session, { room, token }) {
  const root = $('#viewer');
  root.replaceChildren();
  const viewer = new Viewer(root, { room, token });
  const annotations = new AnnotationLayer(viewer, {
    send: (msg) => session.sendData(msg),
    me: () => ({ id: session.participantId, name: session.name, role: session.role }),
  });
  const sync = new ViewerSync(session, viewer, annotations);
  const exporter = new AnnotationExport(viewer, annotations, { role: () => session.role });
  const refreshExport = () => exporter.refresh();
  viewer.on('change', refreshExport);
  viewer.on('active', refreshExport);
  sync.on('annotations', refreshExport);
  current.viewer = viewer;
  current.annotations = annotations;
  current.sync = sync;
  let userHidden = false;
  $('#strip').prepend(viewer.syncEl);

  new Uploader(viewer, {
    onStored: async (studies) => {
      await viewer.refresh();
      session.sendData({ type: STUDIES_CHANGED });
      const st = viewer.studies.find((x) => studies.includes(x.uid)) ?? viewer.studies.at(-1);
      const se = st?.series[0];
      if (se && (!viewer.activeViewport.series || studies.length)) viewer.openSeries(st.uid, se.uid, viewer.active, { local: true });
    },
  });
  viewer.on('studies', (n) => {
    if (n > 0 && !userHidden) setViewerShown(true);
    if (n > 0) viewer.openDefault();
  });
  viewer.on('error', ({ message }) => viewer.toast(message, { kind: 'error', ms: 8000 }));

  const btn = $('#viewer-btn');
  const onBtn = () => {
    const on = $('#viewer').hidden;
    userHidden = !on;
    setViewerShown(on);
  };
  btn.addEventListener('click', onBtn);
  // Files dragged onto the call before any study exists open the (empty) viewer to drop on.
  const stage = $('#stage');
  const onDrag = (ev) => {
    if ([...(ev.dataTransfer?.types ?? [])].includes('Files') && $('#viewer').hidden) {
      setViewerShown(true);
    }
  };
  stage.addEventListener('dragenter', onDrag);
  // Stack keys work before anyone clicked the image (focus still on the page itself).
  const onKey = (ev) => {
    if (!$('#viewer').hidden && (ev.target === document.body || ev.target === document.documentElement)) viewer.handleKey(ev);
  };
  document.addEventListener('keydown', onKey);
  current.viewerCleanup = () => {
    btn.removeEventListener('click', onBtn);
    stage.removeEventListener('dragenter', onDrag);
    document.removeEventListener('keydown', onKey);
    setViewerShown(false);
    viewer.syncEl.remove();
    root.replaceChildren();
  };
  setViewerShown(false);
  viewer.refresh();
}

// Best effort: tell the server right away when the page goes away.
window.addEventListener('pagehide', () => current.session?.leave());

// ------------------------------------------------------------------ entry

const params = new URLSearchParams(location.search);
const room = params.get('room') ?? '';
const name = params.get('name') ?? '';
const token = params.get('token') ?? '';

$('#room').value = room;
$('#name').value = name;
$('#token').value = token;

$('#join-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const r = $('#room').value.trim();
  const n = $('#name').value.trim();
  if (!r || !n) return;
  $('#join-btn').disabled = true;
  startCall({ room: r, name: n, token: $('#token').value || null });
});

if (room && name) {
  startCall({ room, name, token: token || null });
} else {
  showJoinView();
  ($('#room').value ? $('#name') : $('#room')).focus();
}
