//! Just enough of the video payload formats to see a keyframe.
//!
//! A subscriber that starts receiving mid-stream cannot decode until a keyframe arrives, so
//! the forwarder holds back video until it sees one (and asks the publisher for it). These
//! functions read only the RTP payload, never trust its lengths, and never panic.

/// The video codecs the SFU forwards, by what their payload looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    H264,
    /// A codec we forward but cannot inspect: every packet is treated as decodable.
    Other,
}

impl VideoCodec {
    /// From an RTP codec mime type such as `video/VP8`.
    pub fn from_mime(mime: &str) -> Self {
        if mime.eq_ignore_ascii_case("video/vp8") {
            VideoCodec::Vp8
        } else if mime.eq_ignore_ascii_case("video/h264") {
            VideoCodec::H264
        } else {
            VideoCodec::Other
        }
    }

    /// Whether this RTP payload starts a keyframe.
    pub fn is_keyframe_start(self, payload: &[u8]) -> bool {
        match self {
            VideoCodec::Vp8 => vp8_is_keyframe_start(payload),
            VideoCodec::H264 => h264_is_keyframe(payload),
            VideoCodec::Other => true,
        }
    }
}

/// RFC 7741: the first packet of a VP8 key frame has S=1, PID=0 and a payload header whose
/// P bit (inverse key frame flag) is 0.
pub fn vp8_is_keyframe_start(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start = first & 0x10 != 0;
    let partition = first & 0x0f;
    if !start || partition != 0 {
        return false;
    }
    let mut offset = 1;
    if extended {
        let Some(&x) = payload.get(1) else {
            return false;
        };
        offset = 2;
        if x & 0x80 != 0 {
            // PictureID: one or two bytes, M bit says which.
            let Some(&pid) = payload.get(offset) else {
                return false;
            };
            offset += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            offset += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            offset += 1; // TID/Y/KEYIDX
        }
    }
    payload.get(offset).is_some_and(|b| b & 0x01 == 0)
}

/// RFC 6184: an IDR slice (5) or the SPS (7) that precedes it, alone, in a STAP-A, or at
/// the start of a FU-A.
pub fn h264_is_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        5 | 7 => true,
        24 => {
            // STAP-A: 16-bit size, NAL unit, repeated.
            let mut at = 1;
            while at + 2 < payload.len() {
                let size = u16::from_be_bytes([payload[at], payload[at + 1]]) as usize;
                let Some(&nal) = payload.get(at + 2) else {
                    return false;
                };
                if matches!(nal & 0x1f, 5 | 7) {
                    return true;
                }
                at += 2 + size;
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && matches!(fu & 0x1f, 5 | 7)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes() {
        // S=1, PID=0, no extension; VP8 header with P=0 (keyframe).
        assert!(vp8_is_keyframe_start(&[0x10, 0x00, 0x00, 0x9d]));
        // Interframe: P=1.
        assert!(!vp8_is_keyframe_start(&[0x10, 0x01]));
        // Not a partition start.
        assert!(!vp8_is_keyframe_start(&[0x00, 0x00]));
        // Extended with 15-bit PictureID, as Chrome sends.
        assert!(vp8_is_keyframe_start(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        assert!(!vp8_is_keyframe_start(&[0x90, 0x80, 0x81, 0x23, 0x01]));
        // Truncated inputs never panic.
        for n in 0..5 {
            let _ = vp8_is_keyframe_start(&[0x90, 0xf0, 0x81, 0x23, 0x00][..n]);
        }
    }

    #[test]
    fn h264_keyframes() {
        assert!(h264_is_keyframe(&[0x65]));
        assert!(h264_is_keyframe(&[0x67, 0x42]));
        assert!(!h264_is_keyframe(&[0x41]));
        // STAP-A carrying SPS.
        assert!(h264_is_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42]));
        // STAP-A with a lying size never panics.
        assert!(!h264_is_keyframe(&[0x78, 0xff, 0xff, 0x41]));
        // FU-A start of an IDR.
        assert!(h264_is_keyframe(&[0x7c, 0x85]));
        assert!(!h264_is_keyframe(&[0x7c, 0x05]));
        assert!(!h264_is_keyframe(&[]));
    }
}
