// DICOMweb client for the Consilium server (docs/dicomweb.md): QIDO-RS searches, WADO-RS
// metadata and decoded frames, STOW-RS upload. Every request names the room (the server
// keeps studies per room) and carries the invitation token when there is one.

/** Explicit VR little endian: the only transfer syntax the viewer decodes itself. */
export const RAW_TS = '1.2.840.10008.1.2.1';

// Some DICOMweb servers only answer frames as multipart; ask for both, parse either.
const FRAME_ACCEPT =
  `application/octet-stream; transfer-syntax=${RAW_TS}, ` +
  `multipart/related; type="application/octet-stream"; transfer-syntax=${RAW_TS}`;

export class DicomWebError extends Error {
  constructor(message, status, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export class DicomWeb {
  /**
   * @param {{room: string, token?: string|null, base?: string}} opts
   */
  constructor({ room, token = null, base = '/dicomweb' }) {
    this.room = room;
    this.token = token || null;
    this.base = base;
  }

  _headers(accept) {
    const h = { Accept: accept };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  _url(path) {
    const sep = path.includes('?') ? '&' : '?';
    return `${this.base}${path}${sep}room=${encodeURIComponent(this.room)}`;
  }

  async _json(path, { signal } = {}) {
    const res = await fetch(this._url(path), { headers: this._headers('application/dicom+json, application/json'), signal });
    if (res.status === 204) return [];
    if (!res.ok) throw new DicomWebError(`${res.status} ${res.statusText} for ${path}`, res.status, await res.text().catch(() => ''));
    const text = await res.text();
    return text ? JSON.parse(text) : [];
  }

  studies(opts) {
    return this._json('/studies', opts);
  }

  series(study, opts) {
    return this._json(`/studies/${enc(study)}/series`, opts);
  }

  instances(study, series, opts) {
    return this._json(`/studies/${enc(study)}/series/${enc(series)}/instances`, opts);
  }

  metadata(study, series, opts) {
    return this._json(`/studies/${enc(study)}/series/${enc(series)}/metadata`, opts);
  }

  /** One decoded frame (1-based), as an ArrayBuffer of little-endian stored values. */
  async frame(study, series, sop, n = 1, { signal } = {}) {
    const path = `/studies/${enc(study)}/series/${enc(series)}/instances/${enc(sop)}/frames/${n}`;
    const res = await fetch(this._url(path), { headers: this._headers(FRAME_ACCEPT), signal });
    if (!res.ok) throw new DicomWebError(`${res.status} ${res.statusText} for frame ${n} of ${sop}`, res.status);
    const buf = await res.arrayBuffer();
    const type = res.headers.get('content-type') || '';
    if (/^multipart\//i.test(type)) return firstPart(new Uint8Array(buf), type);
    return buf;
  }

  /**
   * Several decoded frames of one series in one response (Consilium's series-level frames
   * request, docs/dicomweb.md): `items` are `{sop, frame}` in the order wanted, at most
   * MAX_BATCH_FRAMES. The response is read as it streams: `onFrame(k, buffer | Error)` is
   * called for item k as soon as its part has arrived, so the first slices of a batch show
   * while the rest are still on the wire. Resolves when the response ends; items it did not
   * carry were simply not delivered (the caller asks again). Throws a DicomWebError with the
   * status when the server refuses the request (one without this extension answers 404).
   */
  async framesBatch(study, series, items, onFrame, { signal } = {}) {
    const list = items.map((it) => (it.frame && it.frame !== 1 ? `${it.sop}:${it.frame}` : it.sop)).join(',');
    const path = `/studies/${enc(study)}/series/${enc(series)}/frames?instances=${list}`;
    const res = await fetch(this._url(path), { headers: this._headers(FRAME_ACCEPT), signal });
    if (!res.ok) throw new DicomWebError(`${res.status} ${res.statusText} for ${items.length} frames of ${series}`, res.status);
    const type = res.headers.get('content-type') || '';
    const m = /^multipart\/related;.*boundary="?([^";]+)"?/i.exec(type);
    if (!m || !res.body) throw new DicomWebError(`frames answered as ${type || 'nothing'}, not multipart`, 0);
    const where = new Map(items.map((it, k) => [`/instances/${it.sop}/frames/${it.frame || 1}`, k]));
    let next = 0;
    await readParts(res.body, m[1], (headers, body) => {
      const loc = headers.get('content-location') || '';
      const tail = /\/instances\/[^/]+\/frames\/\d+$/.exec(loc)?.[0];
      const k = tail !== undefined && where.has(tail) ? where.get(tail) : next;
      next = k + 1;
      if (k >= items.length) return;
      if (/^application\/octet-stream/i.test(headers.get('content-type') || 'application/octet-stream')) {
        onFrame(k, body.buffer);
      } else {
        let reason = 'the server could not decode this frame';
        try {
          reason = JSON.parse(new TextDecoder().decode(body)).error ?? reason;
        } catch {
          /* not JSON */
        }
        onFrame(k, new DicomWebError(reason, 0));
      }
    });
  }

  /** The room's annotations on `study` as the server's JSON export (a Blob to save). */
  async annotationsExport(study) {
    const path = `/studies/${enc(study)}/annotations`;
    const res = await fetch(this._url(path), { headers: this._headers('application/json') });
    if (!res.ok) throw new DicomWebError(await errorText(res), res.status);
    return res.blob();
  }

  /**
   * Stores the room's annotations on `study` as DICOM presentation states (GSPS, one per
   * annotated series) in the study; resolves with the server's `created` list.
   */
  async savePresentationStates(study) {
    const path = `/studies/${enc(study)}/presentation-states`;
    const res = await fetch(this._url(path), { method: 'POST', headers: this._headers('application/json') });
    if (!res.ok) throw new DicomWebError(await errorText(res), res.status);
    return (await res.json()).created ?? [];
  }

  /** One stored instance as application/dicom (a Blob to save). */
  async instanceBlob(url) {
    const u = new URL(url, location.href);
    u.searchParams.set('room', this.room);
    const res = await fetch(`${u.pathname}${u.search}`, { headers: this._headers('application/dicom') });
    if (!res.ok) throw new DicomWebError(await errorText(res), res.status);
    return res.blob();
  }

  /**
   * STOW-RS: one multipart/related request of application/dicom parts (or a zip as is).
   * Resolves with the server's response dataset (ReferencedSOPSequence, FailedSOPSequence).
   */
  async store(files, { onProgress } = {}) {
    // Each part names its file, so the server's refusals (ErrorComment) say which one.
    const items = files.map((f) => (f instanceof Blob ? { file: f, name: f.name || '' } : f));
    const zip = items.length === 1 && isZip(items[0].file, items[0].name);
    let body;
    let type;
    if (zip) {
      body = items[0].file;
      type = 'application/zip';
    } else {
      const boundary = `consilium-${crypto.getRandomValues(new Uint32Array(2)).join('')}`;
      const parts = [];
      for (const { file, name } of items) {
        const disposition = name ? `Content-Disposition: attachment; filename="${headerSafe(name)}"\r\n` : '';
        parts.push(`--${boundary}\r\nContent-Type: application/dicom\r\n${disposition}\r\n`, file, '\r\n');
      }
      parts.push(`--${boundary}--\r\n`);
      body = new Blob(parts);
      type = `multipart/related; type="application/dicom"; boundary=${boundary}`;
    }
    onProgress?.({ phase: 'uploading', bytes: body.size });
    const headers = { 'Content-Type': type, Accept: 'application/dicom+json, application/json' };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const res = await fetch(this._url('/studies'), { method: 'POST', headers, body });
    const text = await res.text().catch(() => '');
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON: reported below */
    }
    // 202 = some instances failed, 409 = all failed; both carry FailedSOPSequence.
    if (!res.ok && !json) throw new DicomWebError(`${res.status} ${res.statusText}${text ? `: ${text.slice(0, 300)}` : ''}`, res.status, text);
    return { status: res.status, result: json ?? {} };
  }
}

/** The server's reason (`{"error": …}`) or the status line. */
async function errorText(res) {
  const text = await res.text().catch(() => '');
  try {
    const j = JSON.parse(text);
    if (typeof j?.error === 'string') return j.error;
    if (typeof j?.error?.message === 'string') return j.error.message;
  } catch {
    /* not JSON */
  }
  return `${res.status} ${res.statusText}${text ? `: ${text.slice(0, 200)}` : ''}`;
}

function enc(uid) {
  return encodeURIComponent(uid);
}

function isZip(file, name = file.name) {
  return /\.zip$/i.test(name || '') || file.type === 'application/zip' || file.type === 'application/x-zip-compressed';
}

/** A file name as a quoted header parameter: printable ASCII, no quotes or backslashes. */
function headerSafe(name) {
  return String(name).replace(/[^\x20-\x7e]|["\\]/g, '_');
}

/** The body of the first part of a multipart/related response. */
function firstPart(bytes, contentType) {
  const m = /boundary="?([^";]+)"?/i.exec(contentType);
  if (!m) throw new DicomWebError('multipart response without boundary', 0);
  const delim = new TextEncoder().encode(`--${m[1]}`);
  const start = indexOf(bytes, delim, 0);
  if (start < 0) throw new DicomWebError('multipart response without parts', 0);
  const headersEnd = indexOf(bytes, new Uint8Array([13, 10, 13, 10]), start);
  if (headersEnd < 0) throw new DicomWebError('malformed multipart part', 0);
  const bodyStart = headersEnd + 4;
  let end = indexOf(bytes, delim, bodyStart);
  if (end < 0) end = bytes.length;
  if (end >= 2 && bytes[end - 2] === 13 && bytes[end - 1] === 10) end -= 2;
  return bytes.slice(bodyStart, end).buffer;
}

const CRLFCRLF = new Uint8Array([13, 10, 13, 10]);

/**
 * Reads a multipart/related body as it streams: each part's headers, then its body of
 * Content-Length bytes copied straight into a buffer of its own (no scan for the boundary
 * through 512 KiB of pixels); `onPart(headers: Map, body: Uint8Array)` per part, in order.
 */
export async function readParts(stream, boundary, onPart) {
  const reader = stream.getReader();
  const delimiter = `--${boundary}`;
  let head = new Uint8Array(0);
  let body = null;
  let filled = 0;
  let headers = null;
  let ended = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        ended = true;
        return;
      }
      let chunk = value;
      let pos = 0;
      while (pos < chunk.length) {
        if (body) {
          const n = Math.min(body.length - filled, chunk.length - pos);
          body.set(chunk.subarray(pos, pos + n), filled);
          filled += n;
          pos += n;
          if (filled === body.length) {
            const part = body;
            body = null;
            onPart(headers, part);
          }
          continue;
        }
        if (head.length) {
          const joined = new Uint8Array(head.length + chunk.length - pos);
          joined.set(head);
          joined.set(chunk.subarray(pos), head.length);
          head = joined;
        } else {
          // Usually a part's headers start in the chunk that also carries its pixels: look at
          // them in place rather than copy the whole chunk.
          head = chunk.subarray(pos);
        }
        pos = chunk.length;
        const end = indexOf(head, CRLFCRLF, 0);
        const text = new TextDecoder().decode(end < 0 ? head : head.subarray(0, end)).replace(/^(\r\n)+/, '');
        if (text.startsWith(`${delimiter}--`)) return;
        if (end < 0) {
          if (head.length > 16384) throw new DicomWebError('multipart part headers too long', 0);
          continue;
        }
        const [first, ...lines] = text.split('\r\n');
        if (first.trim() !== delimiter) throw new DicomWebError('malformed multipart response', 0);
        headers = new Map();
        for (const line of lines) {
          const colon = line.indexOf(':');
          if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
        }
        const length = Number(headers.get('content-length'));
        if (!Number.isSafeInteger(length) || length < 0) throw new DicomWebError('multipart part without Content-Length', 0);
        // The server stores no frame over 1 GiB: a larger length is a broken response.
        if (length > 2 ** 30) throw new DicomWebError(`multipart part of ${length} bytes`, 0);
        body = new Uint8Array(length);
        filled = 0;
        chunk = head.subarray(end + 4);
        pos = 0;
        head = new Uint8Array(0);
        if (length === 0) {
          body = null;
          onPart(headers, new Uint8Array(0));
        }
      }
    }
  } finally {
    // Past the closing delimiter (or on an error) nothing more is wanted from the body.
    if (!ended) await reader.cancel().catch(() => {});
  }
}

function indexOf(hay, needle, from) {
  const n0 = needle[0];
  outer: for (let i = from; i <= hay.length - needle.length; i++) {
    if (hay[i] !== n0) continue;
    for (let j = 1; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

// ---------------------------------------------------------------- DICOM JSON

/** First value of a tag ("00100010") in a DICOM JSON dataset; PN as its alphabetic form. */
export function tagValue(ds, tag, fallback = null) {
  const el = ds?.[tag];
  const v = el?.Value?.[0];
  if (v === undefined || v === null) return fallback;
  if (el.vr === 'PN' && typeof v === 'object') return v.Alphabetic ?? fallback;
  return v;
}

/** All values of a tag, or null. */
export function tagValues(ds, tag) {
  const v = ds?.[tag]?.Value;
  return Array.isArray(v) && v.length ? v : null;
}

/** "Doe^John^^Dr" → "Doe, John". */
export function formatName(pn) {
  if (!pn) return '';
  const [family = '', given = '', middle = '', prefix = '', suffix = ''] = String(pn).split('^');
  const rest = [prefix, given, middle].filter(Boolean).join(' ');
  return [family, rest].filter(Boolean).join(', ') + (suffix ? ` ${suffix}` : '');
}

/** "20250131" → "2025-01-31". */
export function formatDate(da) {
  const s = String(da || '');
  return /^\d{8}$/.test(s) ? `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}` : s;
}
