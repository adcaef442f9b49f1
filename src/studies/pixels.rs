//! Frame decoding for WADO-RS `frames/{n}`: whatever the transfer syntax, a frame leaves the
//! server as uncompressed little-endian stored values, row-major, samples interleaved, one
//! value per pixel sample at the file's own width (1-bit data as one byte 0/1 per pixel, colour
//! as RGB). `DecodedPixelData::data()` from dicom-pixeldata is close to that but not there
//! (see docs/dicomweb.md); [`normalize`] closes the gap. A bounded LRU keeps decoded frames
//! so that scrolling a series decodes each slice once.

use super::parse::{self, ParseError};
use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{PixelDecoder, PlanarConfiguration};
use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Why a frame cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the instance has no pixel data")]
    NoPixelData,
    #[error("frame {0} does not exist (frames are numbered from 1 to {1})")]
    NoSuchFrame(u32, u32),
    #[error("cannot decode the pixel data: {0}")]
    Codec(String),
    #[error("the pixel decoder failed on this instance (internal error in the codec)")]
    CodecPanicked,
    #[error("decoded pixel data has {actual} bytes where {expected} are needed")]
    ShortOutput { actual: usize, expected: usize },
    #[error(transparent)]
    Open(#[from] ParseError),
}

/// All decoded frames of one instance, back to back.
#[derive(Debug)]
pub struct Frames {
    pub frame_len: usize,
    pub count: u32,
    pub data: Vec<u8>,
}

impl Frames {
    /// Frame `n`, 1-based as WADO-RS numbers them.
    pub fn frame(&self, n: u32) -> Option<&[u8]> {
        let i = n.checked_sub(1)? as usize;
        self.data.get(i * self.frame_len..(i + 1) * self.frame_len)
    }
}

/// What post-processing needs to know about the source, read from the data set.
struct Layout {
    rows: usize,
    cols: usize,
    spp: usize,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    big_endian_ow: bool,
    photometric: String,
    native: bool,
}

impl Layout {
    fn of(obj: &DefaultDicomObject) -> Result<Self, DecodeError> {
        let int = |tag| {
            obj.get(tag)
                .and_then(|e| e.to_int::<u32>().ok())
                .unwrap_or(0)
        };
        let pixel = obj.get(tags::PIXEL_DATA).ok_or(DecodeError::NoPixelData)?;
        let ts = obj.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
        Ok(Self {
            rows: int(tags::ROWS) as usize,
            cols: int(tags::COLUMNS) as usize,
            spp: int(tags::SAMPLES_PER_PIXEL).max(1) as usize,
            bits_allocated: int(tags::BITS_ALLOCATED) as u16,
            bits_stored: int(tags::BITS_STORED) as u16,
            signed: int(tags::PIXEL_REPRESENTATION) == 1,
            big_endian_ow: ts == parse::EXPLICIT_VR_BE && pixel.vr() == VR::OW,
            photometric: obj
                .get(tags::PHOTOMETRIC_INTERPRETATION)
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            native: matches!(pixel.value(), dicom_core::DicomValue::Primitive(_)),
        })
    }

    fn sample_bytes(&self) -> usize {
        (self.bits_allocated as usize).div_ceil(8).max(1)
    }

    fn frame_len(&self) -> usize {
        self.rows * self.cols * self.spp * self.sample_bytes()
    }
}

/// Largest instance (decoded bytes, all frames) decoded and cached whole; beyond it frames are
/// decoded and cached one by one (a long multi-frame cine would not fit the cache anyway).
pub const WHOLE_DECODE_LIMIT: u64 = 128 << 20;

/// Decodes frame `n` (1-based) alone.
pub fn decode_one_frame(path: &Path, n: u32) -> Result<Frames, DecodeError> {
    let opened = parse::open_lenient(path)?;
    let obj = opened.obj;
    let layout = Layout::of(&obj)?;
    let frames = obj
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    if n == 0 || n > frames {
        return Err(DecodeError::NoSuchFrame(n, frames));
    }
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        obj.decode_pixel_data_frame(n - 1)
            .map(|px| (px.planar_configuration(), px.data().to_vec()))
    }))
    .map_err(|_| DecodeError::CodecPanicked)?
    .map_err(|e| DecodeError::Codec(e.to_string()))?;
    let (planar, data) = decoded;
    let data = normalize(&layout, planar, 1, data)?;
    Ok(Frames {
        frame_len: layout.frame_len(),
        count: 1,
        data,
    })
}

/// Decodes every frame of the stored file at `path`.
pub fn decode_file(path: &Path) -> Result<Frames, DecodeError> {
    let opened = parse::open_lenient(path)?;
    let obj = opened.obj;
    let layout = Layout::of(&obj)?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_owned();
    if l_is_plain_rgb_jpeg(&layout, &ts) {
        let frames = catch_unwind(AssertUnwindSafe(|| rgb_jpeg_frames(&obj, &layout)))
            .map_err(|_| DecodeError::CodecPanicked)?;
        if let Some((count, data)) = frames? {
            let data = normalize(&layout, PlanarConfiguration::Standard, count as usize, data)?;
            return Ok(Frames {
                frame_len: layout.frame_len(),
                count,
                data,
            });
        }
    }
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        obj.decode_pixel_data().map(|px| {
            (
                px.number_of_frames(),
                px.planar_configuration(),
                px.data().to_vec(),
            )
        })
    }))
    .map_err(|_| DecodeError::CodecPanicked)?;
    let (count, planar, data) = match decoded {
        Ok(d) => d,
        // dicom-pixeldata's RLE decoder handles 8 and 16 bits only: decode the rest here.
        Err(_) if obj.meta().transfer_syntax().trim_end_matches('\0') == RLE_LOSSLESS => {
            rle_decode_object(&obj, &layout)?
        }
        Err(e) => return Err(DecodeError::Codec(e.to_string())),
    };
    let count = count.max(1);
    let data = normalize(&layout, planar, count as usize, data)?;
    Ok(Frames {
        frame_len: layout.frame_len(),
        count,
        data,
    })
}

/// An 8-bit RGB image in JPEG baseline/extended: the case where the codec's colour
/// conversion has to be decided here.
fn l_is_plain_rgb_jpeg(l: &Layout, ts: &str) -> bool {
    l.photometric == "RGB"
        && l.spp == 3
        && l.bits_allocated == 8
        && matches!(ts, "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51")
}

/// Decodes RGB JPEG frames without colour conversion when the stream has no (complete) Adobe
/// APP14 marker: DICOM says the samples are RGB (PhotometricInterpretation), and without the marker
/// jpeg-decoder would assume YCbCr. `None`: the stream has the marker, the usual path is right.
fn rgb_jpeg_frames(
    obj: &DefaultDicomObject,
    l: &Layout,
) -> Result<Option<(u32, Vec<u8>)>, DecodeError> {
    let pixel = obj.get(tags::PIXEL_DATA).ok_or(DecodeError::NoPixelData)?;
    let dicom_core::DicomValue::PixelSequence(seq) = pixel.value() else {
        return Ok(None);
    };
    let stream: Vec<u8> = seq.fragments().iter().flatten().copied().collect();
    // A complete APP14 segment is 14 bytes long; a shorter one carries no transform flag and
    // is ignored by libjpeg, as here.
    let adobe = |w: &[u8]| {
        w[0] == 0xFF
            && w[1] == 0xEE
            && u16::from_be_bytes([w[2], w[3]]) >= 14
            && &w[4..9] == b"Adobe"
    };
    if stream.windows(9).any(adobe) {
        return Ok(None);
    }
    let frames = obj
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let mut out = Vec::with_capacity(l.frame_len() * frames as usize);
    let mut pos = 0usize;
    for i in 0..frames {
        let Some(start) = stream[pos..]
            .windows(2)
            .position(|w| w == [0xFF, 0xD8])
            .map(|p| p + pos)
        else {
            return Err(DecodeError::Codec(format!("JPEG: no frame {}", i + 1)));
        };
        let mut cursor = std::io::Cursor::new(&stream[start..]);
        let mut d = jpeg_decoder::Decoder::new(&mut cursor);
        d.set_color_transform(jpeg_decoder::ColorTransform::None);
        d.set_max_decoding_buffer_size(l.frame_len().max(1));
        let px = d
            .decode()
            .map_err(|e| DecodeError::Codec(format!("JPEG frame {}: {e}", i + 1)))?;
        out.extend_from_slice(&px);
        pos = start + cursor.position() as usize;
    }
    Ok(Some((frames, out)))
}

/// RLE Lossless.
const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

fn rle_decode_object(
    obj: &DefaultDicomObject,
    l: &Layout,
) -> Result<(u32, PlanarConfiguration, Vec<u8>), DecodeError> {
    let pixel = obj.get(tags::PIXEL_DATA).ok_or(DecodeError::NoPixelData)?;
    let dicom_core::DicomValue::PixelSequence(seq) = pixel.value() else {
        return Err(DecodeError::Codec(
            "RLE pixel data is not encapsulated".into(),
        ));
    };
    let frames = obj
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let fragments = seq.fragments();
    if fragments.len() != frames as usize {
        return Err(DecodeError::Codec(format!(
            "RLE: {} fragments for {frames} frames",
            fragments.len()
        )));
    }
    let mut out = Vec::with_capacity(l.frame_len() * frames as usize);
    for f in fragments {
        out.extend_from_slice(&rle_frame(f, l.rows * l.cols, l.spp, l.sample_bytes())?);
    }
    Ok((frames, PlanarConfiguration::Standard, out))
}

/// Decodes one RLE Lossless frame (PS3.5 Annex G) of any sample width into interleaved
/// little-endian samples.
fn rle_frame(data: &[u8], pixels: usize, spp: usize, bytes: usize) -> Result<Vec<u8>, DecodeError> {
    let bad = |m: &str| DecodeError::Codec(format!("RLE: {m}"));
    if data.len() < 64 {
        return Err(bad("fragment shorter than its header"));
    }
    let word =
        |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
    let segments = word(0);
    if segments != spp * bytes || segments > 15 {
        return Err(bad("segment count does not match the samples"));
    }
    let mut out = vec![0u8; pixels * spp * bytes];
    for seg in 0..segments {
        let start = word(4 + seg * 4);
        let end = if seg + 1 < segments {
            word(8 + seg * 4)
        } else {
            data.len()
        };
        if start > end || end > data.len() {
            return Err(bad("segment offsets out of range"));
        }
        let (sample, byte) = (seg / bytes, seg % bytes);
        // Segment `byte` 0 holds the most significant bytes.
        let lane = bytes - 1 - byte;
        let src = &data[start..end];
        let (mut i, mut p) = (0usize, 0usize);
        while i < src.len() && p < pixels {
            let n = src[i] as i8;
            i += 1;
            if n >= 0 {
                let count = n as usize + 1;
                for k in 0..count {
                    if p >= pixels || i + k >= src.len() {
                        break;
                    }
                    out[(p * spp + sample) * bytes + lane] = src[i + k];
                    p += 1;
                }
                i += count;
            } else if n != -128 {
                let count = 1 - n as isize;
                let Some(&v) = src.get(i) else { break };
                i += 1;
                for _ in 0..count {
                    if p >= pixels {
                        break;
                    }
                    out[(p * spp + sample) * bytes + lane] = v;
                    p += 1;
                }
            }
        }
        if p < pixels {
            return Err(bad("a segment decodes to fewer pixels than the image has"));
        }
    }
    Ok(out)
}

/// Turns dicom-pixeldata's output into the documented frame format.
fn normalize(
    l: &Layout,
    planar: PlanarConfiguration,
    frames: usize,
    mut data: Vec<u8>,
) -> Result<Vec<u8>, DecodeError> {
    let frame_len = l.frame_len();
    let expected = frame_len * frames;
    // Uncompressed YBR_FULL_422 comes back as stored: two luma samples share one Cb, Cr pair.
    if l.native && l.photometric == "YBR_FULL_422" && l.spp == 3 && l.bits_allocated == 8 {
        data = upsample_422(&data, l.rows * l.cols, frames)?;
    }
    if data.len() < expected {
        return Err(DecodeError::ShortOutput {
            actual: data.len(),
            expected,
        });
    }
    data.truncate(expected);
    if l.bits_allocated == 1 {
        for v in &mut data {
            *v = u8::from(*v != 0);
        }
    }
    if l.native && l.spp == 3 && planar == PlanarConfiguration::PixelFirst {
        let sb = l.sample_bytes();
        let plane = l.rows * l.cols * sb;
        let mut out = vec![0u8; data.len()];
        for f in 0..frames {
            let src = &data[f * frame_len..(f + 1) * frame_len];
            let dst = &mut out[f * frame_len..(f + 1) * frame_len];
            for p in 0..l.rows * l.cols {
                for s in 0..3 {
                    let from = s * plane + p * sb;
                    let to = (p * 3 + s) * sb;
                    dst[to..to + sb].copy_from_slice(&src[from..from + sb]);
                }
            }
        }
        data = out;
    }
    if l.big_endian_ow && l.bits_allocated == 32 {
        for v in data.chunks_exact_mut(4) {
            v.swap(0, 2);
            v.swap(1, 3);
        }
    }
    if l.native && l.spp == 3 && l.bits_allocated == 8 && l.photometric.starts_with("YBR_FULL") {
        ybr_full_to_rgb(&mut data);
    }
    if l.signed && l.bits_stored > 0 && l.bits_stored < l.bits_allocated {
        sign_extend(&mut data, l.bits_allocated, l.bits_stored);
    }
    Ok(data)
}

fn upsample_422(data: &[u8], pixels: usize, frames: usize) -> Result<Vec<u8>, DecodeError> {
    let in_frame = pixels * 2;
    if data.len() < in_frame * frames || !pixels.is_multiple_of(2) {
        return Err(DecodeError::ShortOutput {
            actual: data.len(),
            expected: in_frame * frames,
        });
    }
    let mut out = Vec::with_capacity(pixels * 3 * frames);
    for f in 0..frames {
        for q in data[f * in_frame..(f + 1) * in_frame].chunks_exact(4) {
            let (y1, y2, cb, cr) = (q[0], q[1], q[2], q[3]);
            out.extend_from_slice(&[y1, cb, cr, y2, cb, cr]);
        }
    }
    Ok(out)
}

/// YBR_FULL to RGB with the coefficients of PS3.3 C.7.6.3.1.2, rounded as pydicom rounds.
fn ybr_full_to_rgb(data: &mut [u8]) {
    for p in data.chunks_exact_mut(3) {
        let y = p[0] as f32;
        let cb = p[1] as f32 - 128.0;
        let cr = p[2] as f32 - 128.0;
        let r = y + 1.402 * cr;
        let g = y + (-0.114 * 1.772 / 0.587) * cb + (-0.299 * 1.402 / 0.587) * cr;
        let b = y + 1.772 * cb;
        let conv = |v: f32| (v + 0.5).floor().clamp(0.0, 255.0) as u8;
        p[0] = conv(r);
        p[1] = conv(g);
        p[2] = conv(b);
    }
}

fn sign_extend(data: &mut [u8], bits_allocated: u16, bits_stored: u16) {
    let shift = (bits_allocated - bits_stored) as u32;
    match bits_allocated {
        8 => {
            for v in data.iter_mut() {
                *v = (((*v as i8) << shift) >> shift) as u8;
            }
        }
        16 => {
            for v in data.chunks_exact_mut(2) {
                let x = i16::from_le_bytes([v[0], v[1]]);
                v.copy_from_slice(&((x << shift) >> shift).to_le_bytes());
            }
        }
        32 => {
            for v in data.chunks_exact_mut(4) {
                let x = i32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                v.copy_from_slice(&((x << shift) >> shift).to_le_bytes());
            }
        }
        _ => {}
    }
}

/// A least-recently-used cache of decoded instances, bounded in bytes.
pub struct FrameCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
}

#[derive(Default)]
struct CacheInner {
    entries: HashMap<String, (Arc<Frames>, u64)>,
    by_age: BTreeMap<u64, String>,
    bytes: usize,
    tick: u64,
}

impl FrameCache {
    /// A cache holding at most `capacity` bytes of decoded pixels.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(CacheInner::default()),
            capacity,
        }
    }

    /// The cached frames of the file with this hash, marking them recently used.
    pub fn get(&self, key: &str) -> Option<Arc<Frames>> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let (frames, age) = inner.entries.get_mut(key)?;
        inner.by_age.remove(age);
        *age = tick;
        inner.by_age.insert(tick, key.to_owned());
        Some(frames.clone())
    }

    /// Adds decoded frames, evicting the least recently used until they fit. An instance
    /// larger than the whole cache is not kept.
    pub fn insert(&self, key: &str, frames: Arc<Frames>) {
        let size = frames.data.len();
        if size > self.capacity {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        if let Some((old, age)) = inner.entries.remove(key) {
            inner.by_age.remove(&age);
            inner.bytes -= old.data.len();
        }
        while inner.bytes + size > self.capacity {
            let Some((_, oldest)) = inner.by_age.pop_first() else {
                break;
            };
            if let Some((old, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= old.data.len();
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.by_age.insert(tick, key.to_owned());
        inner.entries.insert(key.to_owned(), (frames, tick));
        inner.bytes += size;
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: usize) -> Arc<Frames> {
        Arc::new(Frames {
            frame_len: n,
            count: 1,
            data: vec![0; n],
        })
    }

    #[test]
    fn cache_evicts_least_recently_used() {
        let c = FrameCache::new(100);
        c.insert("a", frames(40));
        c.insert("b", frames(40));
        assert!(c.get("a").is_some());
        c.insert("c", frames(40));
        assert!(c.get("b").is_none(), "b was the least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some());
        assert_eq!(c.bytes(), 80);
        c.insert("huge", frames(101));
        assert!(c.get("huge").is_none());
    }

    /// Frame-by-frame decoding (large instances) gives what whole decoding gives.
    #[test]
    fn one_frame_matches_whole_decode() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/dicom/pydicom");
        for name in [
            "rtdose.dcm",
            "SC_rgb_rle_2frame.dcm",
            "examples_ybr_color.dcm",
        ] {
            let p = dir.join(name);
            if !p.exists() {
                continue;
            }
            let whole = decode_file(&p).unwrap();
            assert!(whole.count > 1, "{name}");
            for n in [1, whole.count] {
                let one = decode_one_frame(&p, n).unwrap();
                assert_eq!(one.frame(1), whole.frame(n), "{name} frame {n}");
            }
            assert!(matches!(
                decode_one_frame(&p, whole.count + 1),
                Err(DecodeError::NoSuchFrame(..))
            ));
        }
    }

    #[test]
    fn sign_extension_and_planar() {
        let mut d = vec![0xFF, 0x0F, 0x01, 0x00];
        sign_extend(&mut d, 16, 12);
        assert_eq!(d, [0xFF, 0xFF, 0x01, 0x00]);
        let l = Layout {
            rows: 1,
            cols: 2,
            spp: 3,
            bits_allocated: 8,
            bits_stored: 8,
            signed: false,
            big_endian_ow: false,
            photometric: "RGB".into(),
            native: true,
        };
        let out = normalize(
            &l,
            PlanarConfiguration::PixelFirst,
            1,
            vec![1, 2, 3, 4, 5, 6],
        )
        .unwrap();
        assert_eq!(out, [1, 3, 5, 2, 4, 6]);
    }
}
