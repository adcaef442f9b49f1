//! Synthetic media for synthetic participants.
//!
//! Packets look like their codec to the SFU (a VP8 keyframe starts like one, so the
//! forwarder's keyframe gate works) and end in an 8-byte send-time trailer, so the
//! receiver measures one-way latency through the SFU on the same clock. Real encoded
//! Opus and VP8 (for realistic packet-size mixes) are in [`crate::voice`] and
//! [`crate::vp8`]; they reuse the trailer and packet helpers here.

use bytes::{BufMut, Bytes, BytesMut};
use rtc::rtp::Packet;
use rtc::rtp::header::Header;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of RTP packets for one track, called once per frame interval.
pub trait MediaSource {
    /// The packets of the next frame.
    fn next_packets(&mut self, ssrc: u32, payload_type: u8) -> Vec<Packet>;
    /// The receiving side lost sync: make the next frame a keyframe.
    fn request_keyframe(&mut self) {}
    /// How often [`MediaSource::next_packets`] is called: one frame's duration.
    fn frame_interval(&self) -> Duration {
        Duration::from_millis(20)
    }
}

const TRAILER_MAGIC: u16 = 0xC0DE;
/// Bytes the send-time trailer adds to every payload (a magic and a µs timestamp); the
/// SFU forwards payloads untouched, so the receiver finds it where the sender put it.
pub const TRAILER_LEN: usize = 10;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(crate) fn with_trailer(mut body: BytesMut) -> Bytes {
    body.put_u16(TRAILER_MAGIC);
    body.put_u64(now_micros());
    body.freeze()
}

/// The one-way latency in ms recorded in a payload's trailer, if it has one.
pub fn read_send_time(payload: &[u8]) -> Option<f64> {
    if payload.len() < TRAILER_LEN {
        return None;
    }
    let t = &payload[payload.len() - TRAILER_LEN..];
    if u16::from_be_bytes([t[0], t[1]]) != TRAILER_MAGIC {
        return None;
    }
    let sent = u64::from_be_bytes(t[2..10].try_into().ok()?);
    Some(now_micros().saturating_sub(sent) as f64 / 1000.0)
}

pub(crate) fn packet(ssrc: u32, pt: u8, seq: u16, ts: u32, marker: bool, payload: Bytes) -> Packet {
    Packet {
        header: Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ssrc,
            ..Default::default()
        },
        payload,
    }
}

/// 20 ms Opus-sized frames (≈ 32 kbit/s).
#[derive(Debug)]
pub struct SyntheticAudio {
    seq: u16,
    ts: u32,
}

impl Default for SyntheticAudio {
    fn default() -> Self {
        Self {
            seq: rand::random(),
            ts: rand::random(),
        }
    }
}

impl MediaSource for SyntheticAudio {
    fn next_packets(&mut self, ssrc: u32, pt: u8) -> Vec<Packet> {
        let mut body = BytesMut::with_capacity(80 + TRAILER_LEN);
        // A TOC byte of a 20 ms SILK/CELT hybrid frame, then filler.
        body.put_u8(0x78);
        body.put_bytes(0x55, 69);
        let p = packet(ssrc, pt, self.seq, self.ts, false, with_trailer(body));
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(960);
        vec![p]
    }
}

/// 30 fps VP8-shaped frames: a keyframe every `keyframe_every` frames or on request.
#[derive(Debug)]
pub struct SyntheticVideo {
    seq: u16,
    ts: u32,
    frame: u64,
    keyframe_every: u64,
    keyframe_requested: bool,
    /// Bytes of an inter frame; keyframes are four times larger.
    pub frame_bytes: usize,
}

impl Default for SyntheticVideo {
    fn default() -> Self {
        Self {
            seq: rand::random(),
            ts: rand::random(),
            frame: 0,
            keyframe_every: 90,
            keyframe_requested: true,
            frame_bytes: 1200,
        }
    }
}

const MAX_PAYLOAD: usize = 1100;

impl MediaSource for SyntheticVideo {
    fn next_packets(&mut self, ssrc: u32, pt: u8) -> Vec<Packet> {
        let key = self.keyframe_requested || self.frame.is_multiple_of(self.keyframe_every);
        self.keyframe_requested = false;
        self.frame += 1;
        let total = if key {
            self.frame_bytes * 4
        } else {
            self.frame_bytes
        };
        let chunks = total.div_ceil(MAX_PAYLOAD).max(1);
        let mut out = Vec::with_capacity(chunks);
        for i in 0..chunks {
            let len = if i + 1 == chunks {
                total - MAX_PAYLOAD * (chunks - 1)
            } else {
                MAX_PAYLOAD
            };
            let mut body = BytesMut::with_capacity(len + 2 + TRAILER_LEN);
            // VP8 payload descriptor: S bit on the first packet of the frame, PID 0.
            body.put_u8(if i == 0 { 0x10 } else { 0x00 });
            if i == 0 {
                // VP8 payload header: bit 0 is the inverse keyframe flag.
                body.put_u8(if key { 0x00 } else { 0x01 });
            }
            body.put_bytes(0xAA, len.saturating_sub(body.len()));
            out.push(packet(
                ssrc,
                pt,
                self.seq,
                self.ts,
                i + 1 == chunks,
                with_trailer(body),
            ));
            self.seq = self.seq.wrapping_add(1);
        }
        self.ts = self.ts.wrapping_add(3000);
        out
    }

    fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    fn frame_interval(&self) -> Duration {
        Duration::from_millis(33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_frames_look_like_vp8_and_carry_send_time() {
        let mut v = SyntheticVideo::default();
        let key = v.next_packets(1, 96);
        assert!(key.len() > 1);
        assert_eq!(key[0].payload[0], 0x10);
        assert_eq!(key[0].payload[1] & 1, 0, "first frame is a keyframe");
        assert!(key.last().unwrap().header.marker);
        let inter = v.next_packets(1, 96);
        assert_eq!(inter[0].payload[1] & 1, 1);
        assert_eq!(
            inter[0].header.sequence_number,
            key.last().unwrap().header.sequence_number.wrapping_add(1)
        );
        let latency = read_send_time(&inter[0].payload).unwrap();
        assert!((0.0..1000.0).contains(&latency));
        v.request_keyframe();
        assert_eq!(v.next_packets(1, 96)[0].payload[1] & 1, 0);
        assert_eq!(read_send_time(b"short"), None);
    }
}
