// Minimal DICOM Part 10 files for the upload tests: a small CT slice in explicit VR little
// endian, built in memory (no fixture files in the repository).

function pad(buf, padByte) {
  return buf.length % 2 ? Buffer.concat([buf, Buffer.from([padByte])]) : buf;
}

const LONG_VR = new Set(['OB', 'OW', 'SQ', 'UN', 'UT', 'OF']);

function element(group, elem, vr, value) {
  let body;
  if (Buffer.isBuffer(value)) body = pad(value, 0);
  else if (vr === 'US') {
    body = Buffer.alloc(2);
    body.writeUInt16LE(value);
  } else if (vr === 'UL') {
    body = Buffer.alloc(4);
    body.writeUInt32LE(value);
  } else body = pad(Buffer.from(String(value), 'latin1'), vr === 'UI' ? 0 : 0x20);
  const long = LONG_VR.has(vr);
  const head = Buffer.alloc(long ? 12 : 8);
  head.writeUInt16LE(group, 0);
  head.writeUInt16LE(elem, 2);
  head.write(vr, 4, 'latin1');
  if (long) head.writeUInt32LE(body.length, 8);
  else head.writeUInt16LE(body.length, 6);
  return Buffer.concat([head, body]);
}

/** A 64×64 CT slice (HU ramp) as a Part 10 file. */
export function ctSlice({ study, series, sop, patientName = 'UPLOAD^TEST', patientId = 'UP-1', number = 1, size = 64 }) {
  const CT = '1.2.840.10008.5.1.4.1.1.2';
  const TS = '1.2.840.10008.1.2.1';
  const metaBody = Buffer.concat([
    element(0x0002, 0x0001, 'OB', Buffer.from([0, 1])),
    element(0x0002, 0x0002, 'UI', CT),
    element(0x0002, 0x0003, 'UI', sop),
    element(0x0002, 0x0010, 'UI', TS),
    element(0x0002, 0x0012, 'UI', '1.2.826.0.1.3680043.10.1001.99'),
  ]);
  const meta = Buffer.concat([element(0x0002, 0x0000, 'UL', metaBody.length), metaBody]);
  const px = Buffer.alloc(size * size * 2);
  for (let r = 0; r < size; r++) for (let c = 0; c < size; c++) px.writeInt16LE(((r * size + c) % 2000) - 1000, (r * size + c) * 2);
  const ds = Buffer.concat([
    element(0x0008, 0x0016, 'UI', CT),
    element(0x0008, 0x0018, 'UI', sop),
    element(0x0008, 0x0020, 'DA', '20260201'),
    element(0x0008, 0x0060, 'CS', 'CT'),
    element(0x0008, 0x1030, 'LO', 'Uploaded test study'),
    element(0x0008, 0x103e, 'LO', 'Upload series'),
    element(0x0010, 0x0010, 'PN', patientName),
    element(0x0010, 0x0020, 'LO', patientId),
    element(0x0020, 0x000d, 'UI', study),
    element(0x0020, 0x000e, 'UI', series),
    element(0x0020, 0x0011, 'IS', '1'),
    element(0x0020, 0x0013, 'IS', String(number)),
    element(0x0020, 0x0032, 'DS', `0\\0\\${number}`),
    element(0x0020, 0x0037, 'DS', '1\\0\\0\\0\\1\\0'),
    element(0x0028, 0x0002, 'US', 1),
    element(0x0028, 0x0004, 'CS', 'MONOCHROME2'),
    element(0x0028, 0x0010, 'US', size),
    element(0x0028, 0x0011, 'US', size),
    element(0x0028, 0x0030, 'DS', '0.5\\0.5'),
    element(0x0028, 0x0100, 'US', 16),
    element(0x0028, 0x0101, 'US', 16),
    element(0x0028, 0x0102, 'US', 15),
    element(0x0028, 0x0103, 'US', 1),
    element(0x0028, 0x1050, 'DS', '40'),
    element(0x0028, 0x1051, 'DS', '400'),
    element(0x0028, 0x1052, 'DS', '0'),
    element(0x0028, 0x1053, 'DS', '1'),
    element(0x7fe0, 0x0010, 'OW', px),
  ]);
  return Buffer.concat([Buffer.alloc(128), Buffer.from('DICM', 'latin1'), meta, ds]);
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A zip archive of `entries` ({name, data}), stored without compression. */
export function zipStore(entries) {
  const locals = [];
  const centrals = [];
  let offset = 0;
  for (const { name, data } of entries) {
    const n = Buffer.from(name, 'utf8');
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(n.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(data.length, 20);
    central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(n.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, n, data);
    centrals.push(central, n);
    offset += 30 + n.length + data.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}
