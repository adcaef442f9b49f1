//! Forwarding decisions, free of sockets and clocks: which packet a subscriber gets, under
//! which SSRC and sequence number, and when to ask a publisher for a keyframe.
//!
//! The engine feeds these types packet headers and the current `Instant`; everything here
//! is deterministic and unit-tested. Simulcast layer switching will live here too: a switch
//! is a [`DownTrack::rebase`] followed by waiting for the new layer's keyframe.

use crate::codec::VideoCodec;
use std::time::{Duration, Instant};

/// What a forwarded stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video(VideoCodec),
}

impl MediaKind {
    /// The video codec, or `Other` for audio (whose packets are never keyframes).
    pub fn video_codec(self) -> VideoCodec {
        match self {
            MediaKind::Video(c) => c,
            MediaKind::Audio => VideoCodec::Other,
        }
    }
}

/// Why a packet was not forwarded to one subscriber (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The subscriber has not yet answered the offer that carries this track.
    NotNegotiated,
    /// Video before the first keyframe this subscriber can decode from.
    WaitingForKeyframe,
    /// A late packet from before the point where this subscriber's stream started.
    BeforeStart,
}

/// The header fields a forwarded packet gets for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub ssrc: u32,
    pub sequence_number: u16,
    pub timestamp: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotNegotiated,
    WaitingForKeyframe,
    Forwarding,
}

/// One published track as one subscriber receives it.
///
/// Sequence numbers are rewritten so the subscriber sees a gap-free sequence that starts at
/// the first packet it was given (a gap would read as loss and trigger NACKs for packets it
/// was never meant to get). Timestamps get an offset for the same reason after a rebase.
#[derive(Debug, Clone)]
pub struct DownTrack {
    kind: MediaKind,
    out_ssrc: u32,
    state: State,
    seq_offset: u16,
    ts_offset: u32,
    first_in_seq: u16,
    last_out_seq: u16,
    last_out_ts: u32,
    started: bool,
}

/// `a` comes after `b` in RTP's wrapping sequence space.
fn seq_after(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

impl DownTrack {
    /// A down track that sends as `out_ssrc` and waits for negotiation.
    pub fn new(kind: MediaKind, out_ssrc: u32) -> Self {
        Self {
            kind,
            out_ssrc,
            state: State::NotNegotiated,
            seq_offset: 0,
            ts_offset: 0,
            first_in_seq: 0,
            last_out_seq: rand::random(),
            last_out_ts: rand::random(),
            started: false,
        }
    }

    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    pub fn out_ssrc(&self) -> u32 {
        self.out_ssrc
    }

    /// The subscriber's answer arrived: start forwarding (video from the next keyframe).
    /// Returns whether a keyframe must be requested from the publisher.
    pub fn negotiated(&mut self) -> bool {
        if self.state != State::NotNegotiated {
            return false;
        }
        match self.kind {
            MediaKind::Audio | MediaKind::Video(VideoCodec::Other) => {
                self.state = State::Forwarding;
                false
            }
            MediaKind::Video(_) => {
                self.state = State::WaitingForKeyframe;
                true
            }
        }
    }

    /// Whether this down track is waiting for a keyframe (so the engine inspects payloads
    /// only when someone needs it).
    pub fn needs_keyframe(&self) -> bool {
        self.state == State::WaitingForKeyframe
    }

    /// The down track's sender is taken over by another publisher's track (a reused
    /// transceiver): wait for the subscriber's answer again, then continue the
    /// subscriber's sequence and timestamps where the previous track stopped.
    pub fn reuse(&mut self, kind: MediaKind) {
        self.kind = kind;
        self.state = State::NotNegotiated;
        self.started = false;
    }

    /// The source changes (e.g. another simulcast layer): continue the subscriber's
    /// sequence and timestamps where they stopped, from the new source's next keyframe.
    pub fn rebase(&mut self) {
        self.started = false;
        if self.state == State::Forwarding && matches!(self.kind, MediaKind::Video(_)) {
            self.state = State::WaitingForKeyframe;
        }
    }

    /// Decides one packet. `keyframe` says whether it starts a keyframe; only consulted
    /// while waiting for one.
    pub fn forward(
        &mut self,
        sequence_number: u16,
        timestamp: u32,
        keyframe: impl FnOnce() -> bool,
    ) -> Result<Rewrite, DropReason> {
        match self.state {
            State::NotNegotiated => return Err(DropReason::NotNegotiated),
            State::WaitingForKeyframe => {
                if !keyframe() {
                    return Err(DropReason::WaitingForKeyframe);
                }
                self.state = State::Forwarding;
            }
            State::Forwarding => {}
        }
        if !self.started {
            self.started = true;
            self.first_in_seq = sequence_number;
            let out_seq = self.last_out_seq.wrapping_add(1);
            self.seq_offset = sequence_number.wrapping_sub(out_seq);
            // The new source's clock continues ours one tick later: the decoder sees a
            // short frame, not a jump back in time.
            let out_ts = self.last_out_ts.wrapping_add(1);
            self.ts_offset = timestamp.wrapping_sub(out_ts);
        } else if seq_after(self.first_in_seq, sequence_number) {
            return Err(DropReason::BeforeStart);
        }
        let rewrite = Rewrite {
            ssrc: self.out_ssrc,
            sequence_number: sequence_number.wrapping_sub(self.seq_offset),
            timestamp: timestamp.wrapping_sub(self.ts_offset),
        };
        if seq_after(rewrite.sequence_number, self.last_out_seq) || !self.started {
            self.last_out_seq = rewrite.sequence_number;
            self.last_out_ts = rewrite.timestamp;
        }
        Ok(rewrite)
    }
}

/// Video kept for a subscriber whose transport is still coming up, from the latest
/// keyframe on, so that its first picture is on screen the moment DTLS completes instead of
/// one publisher round trip later (the keyframe is requested when the subscriber's ICE
/// connects, while the DTLS handshake still has round trips to go).
///
/// Packets are kept as they arrive and handed out in sequence order from the newest
/// keyframe's first packet: a network that reorders delivers some of a keyframe's packets
/// before its first one, and without them the keyframe could not be decoded (and the
/// subscriber's NACKs for them could not be answered).
///
/// Bounded: the oldest packets go first past `max_packets`.
#[derive(Debug, Clone)]
pub struct HeldVideo<P> {
    /// (sequence number, starts a keyframe, packet), in arrival order.
    packets: std::collections::VecDeque<(u16, bool, P)>,
    max_packets: usize,
}

impl<P> HeldVideo<P> {
    /// Holds at most `max_packets` (a keyframe and the frames after it).
    pub fn new(max_packets: usize) -> Self {
        Self {
            packets: std::collections::VecDeque::new(),
            max_packets,
        }
    }

    /// Offers one packet of the publisher's stream; `keyframe_start` says whether it begins
    /// a keyframe.
    pub fn push(&mut self, sequence_number: u16, packet: P, keyframe_start: bool) {
        if self.packets.len() >= self.max_packets {
            self.packets.pop_front();
        }
        self.packets
            .push_back((sequence_number, keyframe_start, packet));
    }

    /// Whether a decodable start (a keyframe) is held.
    pub fn has_keyframe(&self) -> bool {
        self.packets.iter().any(|(_, key, _)| *key)
    }

    /// Takes what is held from the newest keyframe on, in sequence order; what came
    /// before that keyframe is dropped.
    pub fn take(&mut self) -> Vec<P> {
        let packets = std::mem::take(&mut self.packets);
        let Some(start) = packets
            .iter()
            .rev()
            .find(|(_, key, _)| *key)
            .map(|(seq, _, _)| *seq)
        else {
            return Vec::new();
        };
        let mut from_start: Vec<(u16, P)> = packets
            .into_iter()
            .map(|(seq, _, p)| (seq.wrapping_sub(start), p))
            .filter(|(distance, _)| *distance < 0x8000)
            .collect();
        from_start.sort_by_key(|(distance, _)| *distance);
        from_start.into_iter().map(|(_, p)| p).collect()
    }
}

/// Rate-limits keyframe requests (PLI) to one publisher's video track: subscribers' PLIs
/// and new subscriptions collapse into at most one request per interval, and a request
/// that arrives too early is kept and sent when the interval has passed.
#[derive(Debug, Clone)]
pub struct KeyframeRequests {
    min_interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeRequests {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last_sent: None,
            pending: false,
        }
    }

    /// Someone needs a keyframe. Returns true if a PLI is to be sent now.
    pub fn request(&mut self, now: Instant) -> bool {
        self.pending = true;
        self.poll(now)
    }

    /// Returns true if a held-back request is due now.
    pub fn poll(&mut self, now: Instant) -> bool {
        if !self.pending {
            return false;
        }
        let due = self
            .last_sent
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_interval);
        if due {
            self.pending = false;
            self.last_sent = Some(now);
        }
        due
    }

    /// When a held-back request becomes due, if one is pending.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        Some(
            self.last_sent
                .map_or_else(Instant::now, |t| t + self.min_interval),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_down_track_waits_for_the_answer_then_continues_the_sequence() {
        let mut d = DownTrack::new(MediaKind::Audio, 9);
        d.negotiated();
        let last = d.forward(100, 5000, || false).unwrap();
        // Another publisher's track takes over the transceiver.
        d.reuse(MediaKind::Audio);
        assert_eq!(d.forward(7, 1, || false), Err(DropReason::NotNegotiated));
        assert!(!d.negotiated(), "audio needs no keyframe");
        let first = d.forward(40000, 123456, || false).unwrap();
        assert_eq!(
            first.ssrc, 9,
            "same SSRC: the sender's interceptors are bound to it"
        );
        assert_eq!(first.sequence_number, last.sequence_number.wrapping_add(1));
        assert_eq!(first.timestamp, last.timestamp.wrapping_add(1));
    }

    #[test]
    fn held_video_starts_at_the_latest_keyframe_and_is_bounded() {
        let mut h = HeldVideo::new(4);
        h.push(1, 1, false);
        assert!(!h.has_keyframe(), "a delta frame alone is useless");
        h.push(2, 2, true);
        h.push(3, 3, false);
        h.push(4, 4, true);
        h.push(5, 5, false);
        assert_eq!(h.take(), vec![4, 5], "only from the newest keyframe");
        assert!(!h.has_keyframe());
        for p in [10, 11, 12, 13, 14] {
            h.push(p, p, p == 10);
        }
        assert!(
            !h.has_keyframe(),
            "over the bound the oldest go: wait for a fresh one"
        );
        assert!(h.take().is_empty());
    }

    #[test]
    fn held_video_puts_a_reordered_keyframe_back_in_sequence() {
        let mut h = HeldVideo::new(16);
        // A delta frame's packet from before the keyframe, then the keyframe's packets
        // out of order (its 3rd and 2nd arrive before its 1st), across the wrap.
        h.push(65533, "old", false);
        h.push(0, "k3", false);
        h.push(65535, "k2", false);
        h.push(65534, "k1", true);
        h.push(1, "d1", false);
        assert_eq!(h.take(), vec!["k1", "k2", "k3", "d1"]);
    }

    #[test]
    fn nothing_before_negotiation() {
        let mut d = DownTrack::new(MediaKind::Audio, 42);
        assert_eq!(d.forward(1, 1, || true), Err(DropReason::NotNegotiated));
        assert!(!d.negotiated());
        assert!(d.forward(2, 960, || true).is_ok());
    }

    #[test]
    fn audio_sequence_is_gap_free_from_first_packet() {
        let mut d = DownTrack::new(MediaKind::Audio, 7);
        d.negotiated();
        let a = d.forward(65534, 1000, || false).unwrap();
        let b = d.forward(65535, 1960, || false).unwrap();
        let c = d.forward(0, 2920, || false).unwrap();
        assert_eq!(a.ssrc, 7);
        assert_eq!(b.sequence_number, a.sequence_number.wrapping_add(1));
        assert_eq!(c.sequence_number, a.sequence_number.wrapping_add(2));
        assert_eq!(c.timestamp.wrapping_sub(a.timestamp), 1920);
        // A late packet from before the start is not forwarded.
        assert_eq!(d.forward(65533, 40, || false), Err(DropReason::BeforeStart));
        // A reordered packet inside the stream is, with its own rewritten number.
        let e = d.forward(2, 4840, || false).unwrap();
        let f = d.forward(1, 3880, || false).unwrap();
        assert_eq!(f.sequence_number, a.sequence_number.wrapping_add(3));
        assert_eq!(e.sequence_number, a.sequence_number.wrapping_add(4));
    }

    #[test]
    fn video_waits_for_keyframe_then_starts_contiguous() {
        let mut d = DownTrack::new(MediaKind::Video(VideoCodec::Vp8), 9);
        assert!(d.negotiated(), "a new video subscriber needs a keyframe");
        assert!(d.needs_keyframe());
        assert_eq!(
            d.forward(100, 0, || false),
            Err(DropReason::WaitingForKeyframe)
        );
        let k = d.forward(101, 3000, || true).unwrap();
        let n = d
            .forward(102, 3000, || panic!("not consulted once forwarding"))
            .unwrap();
        assert_eq!(n.sequence_number, k.sequence_number.wrapping_add(1));
        assert!(!d.needs_keyframe());
    }

    #[test]
    fn rebase_continues_the_subscribers_sequence() {
        let mut d = DownTrack::new(MediaKind::Video(VideoCodec::Vp8), 9);
        d.negotiated();
        let a = d.forward(10, 90_000, || true).unwrap();
        let b = d.forward(11, 93_000, || false).unwrap();
        d.rebase();
        assert!(d.needs_keyframe());
        assert_eq!(
            d.forward(5000, 1, || false),
            Err(DropReason::WaitingForKeyframe)
        );
        let c = d.forward(5001, 7, || true).unwrap();
        assert_eq!(a.sequence_number.wrapping_add(1), b.sequence_number);
        assert_eq!(c.sequence_number, b.sequence_number.wrapping_add(1));
        assert_eq!(c.timestamp, b.timestamp.wrapping_add(1));
    }

    #[test]
    fn keyframe_requests_are_rate_limited_but_not_lost() {
        let t0 = Instant::now();
        let mut k = KeyframeRequests::new(Duration::from_millis(500));
        assert!(k.request(t0));
        assert!(!k.request(t0 + Duration::from_millis(100)));
        assert!(!k.request(t0 + Duration::from_millis(200)));
        assert_eq!(k.deadline(), Some(t0 + Duration::from_millis(500)));
        assert!(!k.poll(t0 + Duration::from_millis(499)));
        assert!(k.poll(t0 + Duration::from_millis(500)));
        assert!(!k.poll(t0 + Duration::from_millis(2000)), "only one");
        assert_eq!(k.deadline(), None);
    }
}
