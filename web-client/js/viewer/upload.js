// Upload: DICOM files, whole folders (webkitGetAsEntry) or .zip archives dropped on the viewer
// or picked with the Upload button are stored in the current room by STOW-RS, in batches.
// Each file's SOP Instance UID is read from its header first, so the server's
// FailedSOPSequence (which names instances, not files) is reported per file name.

import { tagValue } from './dicomweb.js';

const BATCH_BYTES = 48 * 1024 * 1024;
const BATCH_FILES = 200;
const IGNORED = /(^|\/)(\.DS_Store|Thumbs\.db|desktop\.ini|DICOMDIR|__MACOSX\/.*)$/i;

/** PS3.4 Table B.2-1 / PS3.18 failure reasons. */
const FAILURE_REASONS = {
  0x0110: 'processing failure',
  0x0112: 'no such object instance',
  0x0119: 'the instance is not valid',
  0x0122: 'SOP class not supported',
  0x0124: 'not authorized',
  0x0131: 'duplicate invocation',
  0xa700: 'server out of resources',
  0xa7ff: 'server out of resources',
  0xa900: 'data set does not match its SOP class',
  0xa9ff: 'data set does not match its SOP class',
  0xc000: 'cannot understand the file',
  0xc122: 'referenced transfer syntax not supported',
  0xc123: 'transfer syntax not supported',
  0xc124: 'study UID mismatch',
  0x0111: 'duplicate SOP instance',
  0xb000: 'stored with coercion',
  0xb006: 'elements discarded',
  0xb007: 'data set does not match its SOP class (stored anyway)',
};

export function failureText(code) {
  const n = Number(code);
  const hex = Number.isFinite(n) ? `0x${n.toString(16).toUpperCase().padStart(4, '0')}` : String(code);
  return `${FAILURE_REASONS[n] ?? 'refused'} (${hex})`;
}

export class Uploader {
  /**
   * @param {import('./viewer.js').Viewer} viewer
   * @param {{onStored?: (studies: string[]) => void}} opts
   */
  constructor(viewer, { onStored } = {}) {
    this.viewer = viewer;
    this.onStored = onStored;
    this.busy = false;
    const root = viewer.root;
    let depth = 0;
    const hasFiles = (ev) => [...(ev.dataTransfer?.types ?? [])].includes('Files');
    root.addEventListener('dragenter', (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      depth++;
      viewer.dropEl.hidden = false;
    });
    root.addEventListener('dragover', (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      ev.dataTransfer.dropEffect = 'copy';
    });
    root.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (!depth) viewer.dropEl.hidden = true;
    });
    root.addEventListener('drop', async (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      depth = 0;
      viewer.dropEl.hidden = true;
      const files = await filesFromDataTransfer(ev.dataTransfer);
      this.upload(files);
    });
    viewer.fileInput.addEventListener('change', () => {
      const files = [...viewer.fileInput.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name }));
      viewer.fileInput.value = '';
      this.upload(files);
    });
  }

  /**
   * Stores files ({file, path}) in the room. Resolves with
   * {stored, failed: [{path, reason}], studies}.
   */
  async upload(entries) {
    if (this.busy) {
      this.viewer.toast('An upload is already running.', { kind: 'error' });
      return null;
    }
    entries = entries.filter((e) => !IGNORED.test(e.path) && e.file.size > 0);
    if (!entries.length) {
      this.viewer.toast('Nothing to upload: no files found.', { kind: 'error' });
      return null;
    }
    this.busy = true;
    const report = new Report(this.viewer.root);
    const failed = [];
    const studies = new Set();
    let stored = 0;
    try {
      const zips = entries.filter((e) => /\.zip$/i.test(e.path));
      const others = entries.filter((e) => !/\.zip$/i.test(e.path));
      const dicoms = [];
      report.progress(`Reading ${others.length} file${others.length === 1 ? '' : 's'}…`, 0);
      // Everything goes to the server, which also reads legacy files without a Part 10
      // header; the header read here only helps to name refusals.
      for (const e of others) {
        const head = await readHeader(e.file).catch(() => null);
        dicoms.push({ ...e, sop: head?.sop ?? null, study: head?.study ?? null });
      }
      const batches = [];
      let cur = [];
      let bytes = 0;
      for (const e of dicoms) {
        if (cur.length && (bytes + e.file.size > BATCH_BYTES || cur.length >= BATCH_FILES)) {
          batches.push(cur);
          cur = [];
          bytes = 0;
        }
        cur.push(e);
        bytes += e.file.size;
      }
      if (cur.length) batches.push(cur);
      for (const z of zips) batches.push([z]);
      let done = 0;
      const total = dicoms.length + zips.length;
      for (const batch of batches) {
        report.progress(`Uploading ${done}/${total}…`, total ? done / total : 0);
        const isZip = batch.length === 1 && /\.zip$/i.test(batch[0].path);
        try {
          const { status, result } = await this.viewer.api.store(batch.map((e) => ({ file: e.file, name: e.path })));
          const r = readStowResult(result);
          for (const s of r.studies) studies.add(s);
          stored += r.stored.length;
          const bySop = new Map(batch.filter((e) => e.sop).map((e) => [e.sop, e]));
          const byName = new Map(batch.map((e) => [e.path, e]));
          for (const f of r.failed) {
            // The server's ErrorComment starts with the part's file name (or the zip entry).
            let named = f.comment && [...byName.keys()].find((p) => f.comment.startsWith(`${p}: `));
            const e = isZip ? null : (named && byName.get(named)) || bySop.get(f.sop);
            if (isZip && f.comment?.includes(': ')) named = f.comment.slice(0, f.comment.indexOf(': '));
            const why = f.comment ? f.comment.slice(named ? named.length + 2 : 0) : '';
            const path = e?.path ?? (isZip ? `${batch[0].path} › ${named || f.sop || 'an entry'}` : f.sop || 'a file');
            failed.push({ path, reason: why ? `${why} — ${failureText(f.reason)}` : failureText(f.reason) });
          }
          if (status >= 400 && !r.failed.length) {
            for (const e of batch) failed.push({ path: e.path, reason: `refused by the server (HTTP ${status})` });
          }
          for (const e of batch) if (e.study && !isZip && r.stored.includes(e.sop)) studies.add(e.study);
        } catch (err) {
          for (const e of batch) failed.push({ path: e.path, reason: err.message });
        }
        done += batch.length;
      }
      report.done({ stored, failed, total: dicoms.length + zips.length + (others.length - dicoms.length) });
      if (stored) this.onStored?.([...studies]);
      return { stored, failed, studies: [...studies] };
    } finally {
      this.busy = false;
    }
  }
}

/** Parses a STOW-RS response dataset. */
export function readStowResult(ds) {
  const seq = (tag) => ds?.[tag]?.Value ?? [];
  const stored = seq('00081199').map((it) => tagValue(it, '00081155')).filter(Boolean);
  const failed = seq('00081198').map((it) => {
    const f = { sop: tagValue(it, '00081155', ''), reason: tagValue(it, '00081197', 0xc000) };
    const comment = tagValue(it, '00000902');
    if (comment) f.comment = String(comment);
    return f;
  });
  const studies = [];
  const url = tagValue(ds, '00081190');
  const m = url && /\/studies\/([^/?]+)/.exec(url);
  if (m) studies.push(decodeURIComponent(m[1]));
  for (const it of seq('00081199')) {
    const u = tagValue(it, '00081190');
    const mm = u && /\/studies\/([^/?]+)/.exec(u);
    if (mm && !studies.includes(decodeURIComponent(mm[1]))) studies.push(decodeURIComponent(mm[1]));
  }
  return { stored, failed, studies };
}

/** Every file below what was dropped, with its relative path; folders are walked. */
export async function filesFromDataTransfer(dt) {
  const out = [];
  const entries = [];
  for (const item of dt.items ?? []) {
    const entry = item.kind === 'file' && item.webkitGetAsEntry?.();
    if (entry) entries.push(entry);
    else if (item.kind === 'file') {
      const f = item.getAsFile();
      if (f) out.push({ file: f, path: f.name });
    }
  }
  if (!entries.length && !out.length) for (const f of dt.files ?? []) out.push({ file: f, path: f.name });
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      out.push({ file, path: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      // readEntries hands out at most 100 entries per call: read until it returns none.
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, `${prefix}${entry.name}/`);
      }
    }
  };
  for (const e of entries) await walk(e, '');
  return out;
}

/**
 * SOP Instance UID and Study Instance UID from a Part 10 file's first 64 KiB (explicit or
 * implicit VR little endian), or null when it is not a Part 10 file.
 */
export async function readHeader(file) {
  const buf = new Uint8Array(await file.slice(0, 65536).arrayBuffer());
  if (buf.length < 132 || String.fromCharCode(...buf.subarray(128, 132)) !== 'DICM') return null;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const text = (o, n) => new TextDecoder().decode(buf.subarray(o, o + n)).replace(/[\0\s]+$/, '');
  let off = 132;
  let explicit = true;
  let sop = null;
  let study = null;
  const longVr = new Set(['OB', 'OD', 'OF', 'OL', 'OW', 'SQ', 'UC', 'UN', 'UR', 'UT', 'OV']);
  while (off + 8 <= buf.length) {
    const group = dv.getUint16(off, true);
    const elem = dv.getUint16(off + 2, true);
    const isMeta = group === 0x0002;
    let len;
    let head;
    if (isMeta || explicit) {
      const vr = String.fromCharCode(buf[off + 4], buf[off + 5]);
      if (longVr.has(vr)) {
        len = dv.getUint32(off + 8, true);
        head = 12;
      } else {
        len = dv.getUint16(off + 6, true);
        head = 8;
      }
    } else {
      len = dv.getUint32(off + 4, true);
      head = 8;
    }
    const val = off + head;
    if (group === 0x0002 && elem === 0x0010) explicit = text(val, len) !== '1.2.840.10008.1.2';
    if (group === 0x0008 && elem === 0x0018) sop = text(val, len);
    if (group === 0x0020 && elem === 0x000d) study = text(val, len);
    if (group > 0x0020 || len === 0xffffffff) break;
    off = val + len;
  }
  return { sop, study };
}

class Report {
  constructor(root) {
    root.querySelector('.vw-upload-report')?.remove();
    const el = document.createElement('div');
    el.className = 'vw-upload-report';
    el.setAttribute('role', 'status');
    el.innerHTML = '<h3>Uploading to this room</h3><p class="msg"></p><progress max="1" value="0"></progress>';
    root.append(el);
    this.el = el;
  }

  progress(text, f) {
    this.el.querySelector('.msg').textContent = text;
    this.el.querySelector('progress').value = f;
  }

  done({ stored, failed, total }) {
    const el = this.el;
    el.dataset.done = 'true';
    el.dataset.failed = String(failed.length);
    el.dataset.stored = String(stored);
    el.querySelector('progress').remove();
    el.querySelector('h3').textContent = failed.length ? (stored ? 'Upload finished with errors' : 'Upload failed') : 'Upload complete';
    el.querySelector('.msg').innerHTML = '';
    const ok = document.createElement('span');
    ok.className = stored ? 'ok' : '';
    ok.textContent = `${stored} instance${stored === 1 ? '' : 's'} stored`;
    el.querySelector('.msg').append(ok, document.createTextNode(failed.length ? `, ${failed.length} of ${total} file${total === 1 ? '' : 's'} refused:` : '.'));
    if (failed.length) {
      const ul = document.createElement('ul');
      for (const f of failed.slice(0, 200)) {
        const li = document.createElement('li');
        li.className = 'fail';
        li.dataset.file = f.path;
        const name = document.createElement('strong');
        name.textContent = f.path;
        li.append(name, document.createTextNode(`: ${f.reason}`));
        ul.append(li);
      }
      if (failed.length > 200) {
        const li = document.createElement('li');
        li.textContent = `… and ${failed.length - 200} more`;
        ul.append(li);
      }
      el.append(ul);
    }
    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'vw-btn vw-primary';
    close.textContent = 'Close';
    close.addEventListener('click', () => el.remove());
    el.append(close);
    if (!failed.length) setTimeout(() => el.remove(), 6000);
  }
}
