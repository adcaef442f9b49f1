// Unit tests of annotation editing without a browser: who may edit (the server's author key),
// optimistic edits confirmed by the echo or rolled back by a refusal, and the pure helpers.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AnnotationLayer } from '../js/annotation/layer.js';
import { handleIndexes, nextColor, translate, EDIT_COLORS } from '../js/annotation/edit.js';

/** The slice of the Viewer the layer touches. */
function fakeViewer() {
  return {
    on() {},
    viewports: [],
    toolbar: { querySelector: () => null },
    root: { dataset: {}, querySelector: () => null },
    toasts: [],
    toast(message) {
      this.toasts.push(message);
    },
  };
}

function layerFor({ id = 'p-2', name = 'Dr A', role = 'participant', connected = true } = {}) {
  const sent = [];
  const viewer = fakeViewer();
  const layer = new AnnotationLayer(viewer, {
    send: (msg) => (connected ? (sent.push(msg), true) : false),
    me: () => ({ id, name, role }),
  });
  return { layer, sent, viewer };
}

const line = (over = {}) => ({
  id: 'a-1', kind: 'line', study: '1.2', series: '1.2.3', sop: '1.2.3.4', frame: 1,
  points: [[10, 10], [20, 10]], text: null, color: '#ffd43b', stats: { length_mm: 10 },
  author: 'p-1', author_name: 'Dr A', author_key: 'name:Dr A', created_ms: 1, updated_ms: 1, ...over,
});

test('edit rights follow the author key, not the participant id of one join', () => {
  const { layer } = layerFor({ id: 'p-2' });
  layer.reset([line(), line({ id: 'a-2', author_key: 'name:Dr B', author: 'p-2' })]);
  assert.equal(layer.canEdit(layer.items.get('a-1')), false, 'no key known yet: only by id');
  assert.equal(layer.canEdit(layer.items.get('a-2')), true);
  layer.setAuthorKey('name:Dr A');
  assert.equal(layer.canEdit(layer.items.get('a-1')), true, 'drawn in an earlier join');
  assert.equal(layer.canEdit(layer.items.get('a-2')), false, 'same id, someone else’s key');
  assert.equal(layer.canDelete(layer.items.get('a-2')), false);
  const host = layerFor({ role: 'host' }).layer;
  host.setAuthorKey('name:Dr H');
  host.reset([line()]);
  assert.equal(host.canEdit(host.items.get('a-1')), false, 'the host deletes others’ annotations…');
  assert.equal(host.canDelete(host.items.get('a-1')), true, '…but does not edit them');
});

test('an edit shows at once, is confirmed by its echo, or rolled back when refused', () => {
  const { layer, sent } = layerFor();
  layer.setAuthorKey('name:Dr A');
  layer.reset([line()]);
  assert.ok(layer.update('a-1', { points: [[10, 10], [30, 10]] }));
  const [msg] = sent;
  assert.deepEqual([msg.type, msg.op, msg.id, typeof msg.ref], ['annotate', 'update', 'a-1', 'string']);
  assert.deepEqual(layer.items.get('a-1').points, [[10, 10], [30, 10]]);
  assert.equal(layer.items.get('a-1').editing, true);
  // Refused: back to the server's version.
  layer.reject(msg.ref);
  assert.deepEqual(layer.items.get('a-1').points, [[10, 10], [20, 10]]);
  assert.equal(layer.items.get('a-1').editing, undefined);

  // Two edits in flight; the echo of the first does not end the second.
  layer.update('a-1', { color: '#4dabf7' });
  layer.update('a-1', { text: 'x' });
  const [, first, second] = sent;
  layer.apply({ seq: 2, op: 'update', id: 'a-1', ref: first.ref, annotation: line({ color: '#4dabf7' }) });
  assert.equal(layer.confirmed.has('a-1'), true);
  layer.reject(second.ref);
  assert.equal(layer.items.get('a-1').color, '#4dabf7', 'rolled back to the last confirmed version');
  assert.equal(layer.items.get('a-1').text, null);
  assert.equal(layer.edits.size, 0);
});

test('an edit on a closed channel is not applied; a reconnect undoes unconfirmed edits', () => {
  const off = layerFor({ connected: false });
  off.layer.setAuthorKey('name:Dr A');
  off.layer.reset([line()]);
  assert.equal(off.layer.update('a-1', { color: '#4dabf7' }), false);
  assert.equal(off.layer.items.get('a-1').color, '#ffd43b');
  assert.equal(off.viewer.toasts.length, 1);

  const { layer } = layerFor();
  layer.setAuthorKey('name:Dr A');
  layer.reset([line()]);
  layer.update('a-1', { color: '#4dabf7' });
  // The connection dropped before the echo; the resync's changes did not include the edit.
  layer.resendPending();
  assert.equal(layer.items.get('a-1').color, '#ffd43b');
  assert.equal(layer.edits.size, 0);
  // Not one's own: refused locally, nothing sent.
  layer.reset([line({ author_key: 'name:Dr B' })]);
  assert.equal(layer.update('a-1', { color: '#4dabf7' }), false);
});

test('edit helpers: handles, moving a shape, colour cycle', () => {
  assert.deepEqual(handleIndexes(line()), [0, 1]);
  assert.deepEqual(handleIndexes({ kind: 'freehand', points: [[0, 0], [1, 0], [1, 1]] }), []);
  assert.deepEqual(handleIndexes({ kind: 'text', points: [[4, 5]] }), [0]);
  assert.deepEqual(translate([[1, 2], [3, 4]], 10, -1), [[11, 1], [13, 3]]);
  assert.equal(nextColor('#FFD43B'), EDIT_COLORS[1]);
  assert.equal(nextColor(EDIT_COLORS.at(-1)), EDIT_COLORS[0]);
  assert.equal(nextColor('#123456'), EDIT_COLORS[0]);
});
