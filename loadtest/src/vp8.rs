//! Real VP8 video for synthetic participants: an IVF clip (as ffmpeg writes it) read into
//! memory once and packetised per RFC 7741, looping, by every publisher that shares it.
//!
//! Real encoded frames matter for capacity: the SFU's cost per byte and per packet depends
//! on the mix of large keyframes and small inter frames that a real encoder produces, which
//! synthetic filler does not reproduce.

use crate::media::{MediaSource, TRAILER_LEN, packet, with_trailer};
use bytes::{BufMut, Bytes, BytesMut};
use rtc::rtp::Packet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why an IVF file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IvfError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not an IVF file (no DKIF signature)")]
    NotIvf,
    #[error("IVF codec is {0:?}, not VP80")]
    NotVp8(String),
    #[error("IVF header or frame {0} is truncated")]
    Truncated(usize),
    #[error("IVF file has no frames")]
    Empty,
    #[error("the first IVF frame is not a keyframe")]
    NoLeadingKeyframe,
}

/// One encoded frame of a clip.
#[derive(Debug, Clone)]
pub struct Frame {
    pub data: Bytes,
    /// The VP8 frame tag says keyframe (P bit 0).
    pub keyframe: bool,
    pub pts: u64,
}

/// A whole encoded clip in memory, shared by every publisher that loops it.
#[derive(Debug, Clone)]
pub struct VideoClip {
    pub width: u16,
    pub height: u16,
    /// Frame duration from the IVF time base (rate/scale) and the pts step.
    pub frame_interval: Duration,
    pub frames: Vec<Frame>,
}

impl VideoClip {
    /// Reads an IVF file (VP8 only).
    pub fn open(path: &Path) -> Result<Self, IvfError> {
        let bytes = std::fs::read(path).map_err(|source| IvfError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses IVF: a 32-byte file header, then a 12-byte header (size, pts) per frame.
    pub fn parse(bytes: &[u8]) -> Result<Self, IvfError> {
        if bytes.len() < 4 || &bytes[..4] != b"DKIF" {
            return Err(IvfError::NotIvf);
        }
        if bytes.len() < 32 {
            return Err(IvfError::Truncated(0));
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap_or([0; 4]));
        let header_len = usize::from(u16_at(6)).max(32);
        let fourcc = String::from_utf8_lossy(&bytes[8..12]).into_owned();
        if fourcc != "VP80" {
            return Err(IvfError::NotVp8(fourcc));
        }
        let (width, height) = (u16_at(12), u16_at(14));
        // Time base is scale/rate seconds per pts unit.
        let (rate, scale) = (u32_at(16).max(1), u32_at(20).max(1));
        let mut frames = Vec::new();
        let mut at = header_len;
        while at < bytes.len() {
            if at + 12 > bytes.len() {
                return Err(IvfError::Truncated(frames.len() + 1));
            }
            let size = u32_at(at) as usize;
            let pts = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap_or([0; 8]));
            at += 12;
            if at + size > bytes.len() || size == 0 {
                return Err(IvfError::Truncated(frames.len() + 1));
            }
            let data = Bytes::copy_from_slice(&bytes[at..at + size]);
            at += size;
            frames.push(Frame {
                keyframe: data[0] & 0x01 == 0,
                data,
                pts,
            });
        }
        let first = frames.first().ok_or(IvfError::Empty)?;
        if !first.keyframe {
            return Err(IvfError::NoLeadingKeyframe);
        }
        let pts_step = frames
            .windows(2)
            .map(|w| w[1].pts.saturating_sub(w[0].pts))
            .find(|&d| d > 0)
            .unwrap_or(1);
        let frame_interval =
            Duration::from_secs_f64(pts_step as f64 * f64::from(scale) / f64::from(rate));
        Ok(Self {
            width,
            height,
            frame_interval: frame_interval.max(Duration::from_millis(1)),
            frames,
        })
    }

    /// Indices of the keyframes (places a publisher may start or jump to).
    pub fn keyframes(&self) -> Vec<usize> {
        (0..self.frames.len())
            .filter(|&i| self.frames[i].keyframe)
            .collect()
    }

    /// Bits per second of the clip as encoded.
    pub fn bitrate(&self) -> f64 {
        let bytes: usize = self.frames.iter().map(|f| f.data.len()).sum();
        bytes as f64 * 8.0 / (self.frames.len() as f64 * self.frame_interval.as_secs_f64())
    }
}

/// Largest RTP payload we send: leaves room for RTP/SRTP/UDP/IP headers under a 1280-byte
/// path MTU, as browsers do.
pub const MAX_RTP_PAYLOAD: usize = 1200;

/// RFC 7741 payload descriptor with a 15-bit PictureID, as browsers send it: X=1, S on
/// the first packet of the frame, partition index 0, I=1, M=1.
const DESCRIPTOR_LEN: usize = 4;

fn descriptor(start: bool, picture_id: u16) -> [u8; DESCRIPTOR_LEN] {
    let pid = picture_id & 0x7fff;
    [
        0x80 | if start { 0x10 } else { 0x00 },
        0x80,
        0x80 | (pid >> 8) as u8,
        (pid & 0xff) as u8,
    ]
}

/// Splits one VP8 frame into RTP payloads (descriptor + fragment), each at most
/// `max_payload - reserve` bytes so that `reserve` bytes (the send-time trailer) fit.
pub fn packetize(
    frame: &[u8],
    picture_id: u16,
    max_payload: usize,
    reserve: usize,
) -> Vec<BytesMut> {
    let room = max_payload.saturating_sub(DESCRIPTOR_LEN + reserve).max(1);
    // Equal-sized fragments rather than full ones plus a runt, as libwebrtc does.
    let count = frame.len().div_ceil(room).max(1);
    let size = frame.len().div_ceil(count).max(1);
    frame
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut p = BytesMut::with_capacity(DESCRIPTOR_LEN + chunk.len() + reserve);
            p.put_slice(&descriptor(i == 0, picture_id));
            p.put_slice(chunk);
            p
        })
        .collect()
}

/// A publisher's camera or screen share: loops a shared clip with its own SSRC state.
#[derive(Debug)]
pub struct ClipVideo {
    clip: Arc<VideoClip>,
    position: usize,
    seq: u16,
    ts: u32,
    ts_step: u32,
    picture_id: u16,
    jump_to_keyframe: bool,
}

impl ClipVideo {
    /// Starts at the keyframe `start_keyframe` (modulo the clip's keyframes), so publishers
    /// sharing a clip are not in lockstep.
    pub fn new(clip: Arc<VideoClip>, start_keyframe: usize) -> Self {
        let keys = clip.keyframes();
        let position = keys[start_keyframe % keys.len().max(1)];
        let ts_step = (clip.frame_interval.as_secs_f64() * 90_000.0).round() as u32;
        Self {
            clip,
            position,
            seq: rand::random(),
            ts: rand::random(),
            ts_step: ts_step.max(1),
            picture_id: rand::random::<u16>() & 0x7fff,
            jump_to_keyframe: false,
        }
    }

    fn next_keyframe(&self) -> usize {
        let n = self.clip.frames.len();
        (0..n)
            .map(|k| (self.position + k) % n)
            .find(|&i| self.clip.frames[i].keyframe)
            .unwrap_or(0)
    }
}

impl MediaSource for ClipVideo {
    fn next_packets(&mut self, ssrc: u32, pt: u8) -> Vec<Packet> {
        if std::mem::take(&mut self.jump_to_keyframe) {
            self.position = self.next_keyframe();
        }
        let frame = &self.clip.frames[self.position];
        let payloads = packetize(&frame.data, self.picture_id, MAX_RTP_PAYLOAD, TRAILER_LEN);
        let last = payloads.len() - 1;
        let out = payloads
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let p = packet(ssrc, pt, self.seq, self.ts, i == last, with_trailer(body));
                self.seq = self.seq.wrapping_add(1);
                p
            })
            .collect();
        self.position = (self.position + 1) % self.clip.frames.len();
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.ts = self.ts.wrapping_add(self.ts_step);
        out
    }

    /// A real encoder would make the next frame a keyframe; a clip can only skip ahead to
    /// its next one (at most a GOP away, without a gap in the RTP sequence).
    fn request_keyframe(&mut self) {
        self.jump_to_keyframe = true;
    }

    fn frame_interval(&self) -> Duration {
        self.clip.frame_interval
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::read_send_time;

    /// An IVF file with `sizes.len()` frames; frame i is a keyframe if `keys[i]`.
    pub(crate) fn ivf(sizes: &[usize], keys: &[bool]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"DKIF");
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&32u16.to_le_bytes());
        v.extend_from_slice(b"VP80");
        v.extend_from_slice(&640u16.to_le_bytes());
        v.extend_from_slice(&360u16.to_le_bytes());
        v.extend_from_slice(&30u32.to_le_bytes()); // rate
        v.extend_from_slice(&1u32.to_le_bytes()); // scale
        v.extend_from_slice(&(sizes.len() as u32).to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        for (i, (&size, &key)) in sizes.iter().zip(keys).enumerate() {
            v.extend_from_slice(&(size as u32).to_le_bytes());
            v.extend_from_slice(&(i as u64).to_le_bytes());
            let mut data = vec![(i % 251) as u8; size];
            data[0] = if key { 0x10 } else { 0x11 };
            v.extend_from_slice(&data);
        }
        v
    }

    #[test]
    fn parses_ivf_frames_keyframes_and_timing() {
        let clip = VideoClip::parse(&ivf(
            &[5000, 300, 40, 4000, 20],
            &[true, false, false, true, false],
        ))
        .unwrap();
        assert_eq!((clip.width, clip.height), (640, 360));
        assert_eq!(clip.frames.len(), 5);
        assert_eq!(clip.keyframes(), vec![0, 3]);
        assert_eq!(clip.frames[1].data.len(), 300);
        assert_eq!(clip.frames[4].pts, 4);
        let ms = clip.frame_interval.as_secs_f64() * 1000.0;
        assert!((ms - 33.333).abs() < 0.01, "{ms}");
        assert!(clip.bitrate() > 0.0);
    }

    #[test]
    fn rejects_bad_ivf() {
        assert!(matches!(
            VideoClip::parse(b"RIFF...."),
            Err(IvfError::NotIvf)
        ));
        let mut vp9 = ivf(&[10], &[true]);
        vp9[8..12].copy_from_slice(b"VP90");
        assert!(matches!(VideoClip::parse(&vp9), Err(IvfError::NotVp8(_))));
        let full = ivf(&[100, 100], &[true, false]);
        assert!(matches!(
            VideoClip::parse(&full[..full.len() - 1]),
            Err(IvfError::Truncated(2))
        ));
        assert!(matches!(
            VideoClip::parse(&ivf(&[], &[])),
            Err(IvfError::Empty)
        ));
        assert!(matches!(
            VideoClip::parse(&ivf(&[10], &[false])),
            Err(IvfError::NoLeadingKeyframe)
        ));
    }

    #[test]
    fn packetises_per_rfc7741() {
        let frame: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let parts = packetize(&frame, 0x1234, 1200, 10);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() + 10 <= 1200));
        // X, S, PID 0 on the first; X only on the rest; I+M with the 15-bit picture id.
        assert_eq!(&parts[0][..4], &[0x90, 0x80, 0x80 | 0x12, 0x34]);
        assert_eq!(&parts[1][..4], &[0x80, 0x80, 0x92, 0x34]);
        let joined: Vec<u8> = parts.iter().flat_map(|p| p[4..].to_vec()).collect();
        assert_eq!(joined, frame, "fragments reassemble to the frame");
        assert_eq!(packetize(&[1, 2, 3], 0, 1200, 10).len(), 1);
    }

    #[test]
    fn clip_source_loops_marks_frames_and_honours_keyframe_requests() {
        let sizes = [3000, 100, 100, 2500, 100];
        let keys = [true, false, false, true, false];
        let clip = Arc::new(VideoClip::parse(&ivf(&sizes, &keys)).unwrap());
        let mut v = ClipVideo::new(clip.clone(), 0);
        let mut last_seq: Option<u16> = None;
        let mut last_ts: Option<u32> = None;
        for i in 0..12 {
            let pkts = v.next_packets(7, 96);
            let frame = i % sizes.len();
            let body: usize = pkts.iter().map(|p| p.payload.len() - 4 - TRAILER_LEN).sum();
            assert_eq!(body, sizes[frame], "frame {frame} carried whole");
            assert!(pkts.last().unwrap().header.marker);
            assert!(pkts[..pkts.len() - 1].iter().all(|p| !p.header.marker));
            let ts = pkts[0].header.timestamp;
            assert!(pkts.iter().all(|p| p.header.timestamp == ts));
            if let Some(prev) = last_ts {
                assert_eq!(ts.wrapping_sub(prev), 3000, "90 kHz at 30 fps");
            }
            last_ts = Some(ts);
            for p in &pkts {
                if let Some(s) = last_seq {
                    assert_eq!(p.header.sequence_number, s.wrapping_add(1));
                }
                last_seq = Some(p.header.sequence_number);
                assert!(read_send_time(&p.payload).is_some());
                assert_eq!(p.header.ssrc, 7);
            }
            // The SFU's keyframe detector agrees with the clip.
            let is_key = pkts[0].payload[0] & 0x10 != 0 && pkts[0].payload[4] & 1 == 0;
            assert_eq!(is_key, keys[frame]);
        }
        // Now at frame 2 (12 % 5): a request jumps to frame 3, the next keyframe.
        v.request_keyframe();
        let pkts = v.next_packets(7, 96);
        assert_eq!(pkts[0].payload[4] & 1, 0, "a keyframe follows the request");
        assert_eq!(v.frame_interval(), clip.frame_interval);
        // Another publisher starts at the second keyframe.
        let mut w = ClipVideo::new(clip, 1);
        let body: usize = w
            .next_packets(8, 96)
            .iter()
            .map(|p| p.payload.len() - 4 - TRAILER_LEN)
            .sum();
        assert_eq!(body, 2500);
    }
}
