//! Real Opus audio for synthetic participants: a voice-like signal encoded once with
//! libopus (20 ms frames, ~32 kbit/s, DTX off), then looped by every publisher.
//!
//! Encoding once and sharing the frames keeps the load generator's CPU for the WebRTC
//! work it has to mirror (SRTP, RTCP); the packets are still what a real encoder emits:
//! their sizes vary with the signal, as in a consultation.

use crate::media::{MediaSource, TRAILER_LEN, packet, with_trailer};
use bytes::{BufMut, Bytes, BytesMut};
use rtc::rtp::Packet;
use std::sync::Arc;
use std::time::Duration;

/// Opus's RTP clock and our sample rate.
pub const SAMPLE_RATE: u32 = 48_000;
/// 20 ms at 48 kHz, the WebRTC default frame.
pub const FRAME_SAMPLES: usize = 960;

/// Why the audio could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum VoiceError {
    #[error("libopus: {0}")]
    Opus(#[from] opus::Error),
}

/// A two-pole resonator: one formant of the vocal tract.
#[derive(Debug, Clone, Copy, Default)]
struct Resonator {
    y1: f64,
    y2: f64,
}

impl Resonator {
    fn step(&mut self, x: f64, freq: f64, bandwidth: f64) -> f64 {
        let r = (-std::f64::consts::PI * bandwidth / f64::from(SAMPLE_RATE)).exp();
        let theta = 2.0 * std::f64::consts::PI * freq / f64::from(SAMPLE_RATE);
        let (a1, a2) = (2.0 * r * theta.cos(), -r * r);
        // Unity gain near the resonance, so formants add up to a sane level.
        let y = (1.0 - r) * x + a1 * self.y1 + a2 * self.y2;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// `seconds` of a voice-like signal at 48 kHz: a glottal pulse train (pitch gliding
/// around 110–150 Hz) through three formant resonators that move between vowels, with
/// syllable-rate (~4 Hz) amplitude modulation, pauses between phrases and a little noise.
/// Deterministic for a seed, so runs are comparable.
pub fn voice_signal(seconds: f64, seed: u64) -> Vec<i16> {
    // (F1, F2, F3) in Hz for a, e, i, o, u.
    const VOWELS: [(f64, f64, f64); 5] = [
        (730.0, 1090.0, 2440.0),
        (530.0, 1840.0, 2480.0),
        (270.0, 2290.0, 3010.0),
        (570.0, 840.0, 2410.0),
        (300.0, 870.0, 2240.0),
    ];
    let n = (seconds * f64::from(SAMPLE_RATE)) as usize;
    let mut out = Vec::with_capacity(n);
    let mut formants = [Resonator::default(); 3];
    let mut phase = 0.0f64;
    let mut noise = seed | 1;
    let sr = f64::from(SAMPLE_RATE);
    for i in 0..n {
        let t = i as f64 / sr;
        // Intonation: a slow glide plus a little vibrato.
        let f0 = 130.0
            + 20.0 * (2.0 * std::f64::consts::PI * 0.3 * t).sin()
            + 3.0 * (2.0 * std::f64::consts::PI * 5.0 * t).sin();
        phase += f0 / sr;
        let pulse = if phase >= 1.0 {
            phase -= 1.0;
            1.0
        } else {
            0.0
        };
        // Syllables at ~4 Hz; every 2.5 s a 0.4 s pause between phrases.
        let syllable = (t * 4.0).floor() as usize;
        let in_syllable = (t * 4.0).fract();
        let envelope = (std::f64::consts::PI * in_syllable).sin().powi(2);
        let phrase_pause = (t % 2.5) > 2.1;
        let amp = if phrase_pause { 0.02 } else { envelope };
        let (f1, f2, f3) = VOWELS[(syllable * 7 + 3) % VOWELS.len()];
        // xorshift noise: breath and consonant hiss.
        noise ^= noise << 13;
        noise ^= noise >> 7;
        noise ^= noise << 17;
        let white = (noise as f64 / u64::MAX as f64) * 2.0 - 1.0;
        let excitation = pulse * 40.0 + white * 0.3;
        let voiced = formants[0].step(excitation, f1, 90.0)
            + 0.6 * formants[1].step(excitation, f2, 110.0)
            + 0.3 * formants[2].step(excitation, f3, 170.0);
        let sample = amp * voiced + 0.01 * white;
        out.push((sample.clamp(-1.0, 1.0) * 12_000.0) as i16);
    }
    out
}

/// Opus frames of one voice signal, shared by every publisher.
#[derive(Debug, Clone)]
pub struct OpusClip {
    pub frames: Vec<Bytes>,
}

impl OpusClip {
    /// Encodes `seconds` of [`voice_signal`]: mono VoIP mode, 32 kbit/s, 20 ms, DTX off
    /// (a muted-but-open microphone would otherwise send almost nothing).
    pub fn encode(seconds: f64, seed: u64) -> Result<Self, VoiceError> {
        let signal = voice_signal(seconds, seed);
        let mut encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        encoder.set_bitrate(opus::Bitrate::Bits(32_000))?;
        encoder.set_dtx(false)?;
        encoder.set_inband_fec(true)?;
        let mut buf = vec![0u8; 1500];
        let mut frames = Vec::with_capacity(signal.len() / FRAME_SAMPLES);
        for chunk in signal.chunks_exact(FRAME_SAMPLES) {
            let n = encoder.encode(chunk, &mut buf)?;
            frames.push(Bytes::copy_from_slice(&buf[..n]));
        }
        Ok(Self { frames })
    }

    /// Bits per second of the encoded frames.
    pub fn bitrate(&self) -> f64 {
        let bytes: usize = self.frames.iter().map(Bytes::len).sum();
        bytes as f64 * 8.0 / (self.frames.len() as f64 * 0.020)
    }
}

/// A publisher's microphone: loops a shared [`OpusClip`].
#[derive(Debug)]
pub struct ClipAudio {
    clip: Arc<OpusClip>,
    position: usize,
    seq: u16,
    ts: u32,
}

impl ClipAudio {
    /// Starts at frame `start` (modulo the clip) so publishers do not talk in unison.
    pub fn new(clip: Arc<OpusClip>, start: usize) -> Self {
        let position = start % clip.frames.len().max(1);
        Self {
            clip,
            position,
            seq: rand::random(),
            ts: rand::random(),
        }
    }
}

impl MediaSource for ClipAudio {
    fn next_packets(&mut self, ssrc: u32, pt: u8) -> Vec<Packet> {
        let frame = &self.clip.frames[self.position];
        let mut body = BytesMut::with_capacity(frame.len() + TRAILER_LEN);
        body.put_slice(frame);
        let p = packet(ssrc, pt, self.seq, self.ts, false, with_trailer(body));
        self.position = (self.position + 1) % self.clip.frames.len();
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
        vec![p]
    }

    fn frame_interval(&self) -> Duration {
        Duration::from_millis(20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::read_send_time;

    #[test]
    fn the_signal_is_voice_like() {
        let s = voice_signal(2.0, 1);
        assert_eq!(s.len(), 96_000);
        let rms = |x: &[i16]| {
            (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
        };
        // Loud mid-syllable, near-silent between syllables: syllable-rate modulation.
        let mid = rms(&s[5_400..6_600]); // around t = 0.125 s
        let edge = rms(&s[0..240]); // t ≈ 0
        assert!(
            mid > 300.0 && mid > 10.0 * edge.max(1.0),
            "mid {mid}, edge {edge}"
        );
        assert!(
            s.iter().all(|&v| v > i16::MIN && v < i16::MAX),
            "no clipping"
        );
        assert_eq!(voice_signal(0.1, 7), voice_signal(0.1, 7), "deterministic");
    }

    #[test]
    fn opus_frames_are_real_20ms_frames_near_32kbps() {
        let clip = OpusClip::encode(3.0, 1).unwrap();
        assert_eq!(clip.frames.len(), 150);
        let mut decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).unwrap();
        let mut pcm = vec![0i16; 5760];
        for f in &clip.frames {
            assert_eq!(
                opus::packet::get_nb_samples(f, SAMPLE_RATE).unwrap(),
                FRAME_SAMPLES
            );
            assert_eq!(decoder.decode(f, &mut pcm, false).unwrap(), FRAME_SAMPLES);
        }
        // DTX off: no 1–2 byte comfort-noise frames even in the pauses.
        assert!(clip.frames.iter().all(|f| f.len() > 10));
        let kbps = clip.bitrate() / 1000.0;
        assert!((20.0..45.0).contains(&kbps), "{kbps} kbit/s");
    }

    #[test]
    fn audio_source_loops_with_20ms_timestamps_and_trailer() {
        let clip = Arc::new(OpusClip::encode(0.2, 1).unwrap());
        let mut a = ClipAudio::new(clip.clone(), 3);
        let first = a.next_packets(5, 111).remove(0);
        assert_eq!(
            &first.payload[..first.payload.len() - TRAILER_LEN],
            &clip.frames[3][..]
        );
        assert!(read_send_time(&first.payload).is_some());
        let mut prev = first;
        for _ in 0..20 {
            let p = a.next_packets(5, 111).remove(0);
            assert_eq!(p.header.timestamp.wrapping_sub(prev.header.timestamp), 960);
            assert_eq!(
                p.header.sequence_number,
                prev.header.sequence_number.wrapping_add(1)
            );
            prev = p;
        }
        assert_eq!(a.frame_interval(), Duration::from_millis(20));
    }
}
