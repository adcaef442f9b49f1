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

    /// The publisher's sequence number behind a number this subscriber asks to have
    /// resent (NACK), if it belongs to the stream as it is now (not to one before a
    /// rebase or reuse, and not past what was sent).
    pub fn source_of(&self, out_seq: u16) -> Option<u16> {
        if self.state != State::Forwarding || !self.started {
            return None;
        }
        let source = out_seq.wrapping_add(self.seq_offset);
        let sent = !seq_after(self.first_in_seq, source) && !seq_after(out_seq, self.last_out_seq);
        sent.then_some(source)
    }

    /// The header fields a resent packet gets: those it would have had the first time.
    /// Only meaningful for a number [`DownTrack::source_of`] accepted.
    pub fn resend(&self, sequence_number: u16, timestamp: u32) -> Rewrite {
        Rewrite {
            ssrc: self.out_ssrc,
            sequence_number: sequence_number.wrapping_sub(self.seq_offset),
            timestamp: timestamp.wrapping_sub(self.ts_offset),
        }
    }
}

/// The recent packets of one published video track, shared by all its subscribers.
///
/// One copy per published track (not per subscriber) serves three needs:
/// - a subscriber whose transport comes up starts from the newest keyframe at once, instead
///   of one publisher round trip later (the keyframe is requested when its ICE connects,
///   while DTLS still has round trips to go);
/// - a keyframe whose packets a reordering network delivered before its first one is sent
///   whole to a subscriber that starts at it (without them it could not be decoded);
/// - a subscriber's NACK is answered from here, also for packets it was never sent.
///
/// Indexed by sequence number in a power-of-two ring: a slot holds the packet whose number
/// maps to it, so a lookup is one index and one comparison. Time is passed in.
///
/// Packets older than `max_age` are dropped as newer ones arrive (the ring's capacity is the
/// bound for a fast track, the age for a slow one): only a recent keyframe is replayed and
/// a NACK comes within a few round trips, so older packets would only hold memory.
#[derive(Debug, Clone)]
pub struct PacketHistory<P> {
    slots: Vec<Option<(u16, Instant, P)>>,
    mask: u16,
    newest: Option<u16>,
    /// Where eviction by age resumes: no packet before it (in the window) is kept.
    oldest: Option<u16>,
    max_age: Option<Duration>,
    /// The newest keyframe's first packet and when it arrived.
    keyframe: Option<(u16, Instant)>,
}

impl<P> PacketHistory<P> {
    /// Keeps the last `capacity` sequence numbers (rounded up to a power of two, at most
    /// 32768 so that "after" stays well-defined in the wrapping sequence space).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 0x8000).next_power_of_two();
        Self {
            slots: std::iter::repeat_with(|| None).take(capacity).collect(),
            mask: (capacity - 1) as u16,
            newest: None,
            oldest: None,
            max_age: None,
            keyframe: None,
        }
    }

    /// Also drops packets that arrived more than `max_age` before the newest one.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    fn capacity(&self) -> u16 {
        self.mask.wrapping_add(1)
    }

    /// Whether `seq` is inside the window the ring still covers.
    fn in_window(&self, seq: u16) -> bool {
        self.newest
            .is_some_and(|newest| newest.wrapping_sub(seq) < self.capacity())
    }

    /// Records one packet of the publisher's stream; `keyframe_start` says whether it
    /// begins a keyframe. A packet older than the window is not kept.
    pub fn insert(&mut self, seq: u16, packet: P, keyframe_start: bool, now: Instant) {
        match self.newest {
            Some(newest) if !seq_after(seq, newest) => {
                if !self.in_window(seq) {
                    return;
                }
            }
            _ => self.newest = Some(seq),
        }
        self.slots[(seq & self.mask) as usize] = Some((seq, now, packet));
        self.evict_older_than(now);
        if keyframe_start
            && self
                .keyframe
                .is_none_or(|(k, _)| seq_after(seq, k) || !self.in_window(k))
        {
            self.keyframe = Some((seq, now));
        }
    }

    /// Walks from the oldest kept packet towards the newest, dropping what is too old;
    /// amortised one step per inserted packet.
    fn evict_older_than(&mut self, now: Instant) {
        let (Some(max_age), Some(newest)) = (self.max_age, self.newest) else {
            return;
        };
        let first_in_window = newest.wrapping_sub(self.capacity() - 1);
        let mut seq = match self.oldest {
            Some(o) if self.in_window(o) => o,
            _ => first_in_window,
        };
        while seq != newest {
            let slot = &mut self.slots[(seq & self.mask) as usize];
            if let Some((s, at, _)) = slot
                && *s == seq
            {
                if now.saturating_duration_since(*at) <= max_age {
                    break;
                }
                *slot = None;
            }
            seq = seq.wrapping_add(1);
        }
        self.oldest = Some(seq);
    }

    /// The packet with this sequence number, if it is still kept.
    pub fn get(&self, seq: u16) -> Option<&P> {
        match &self.slots[(seq & self.mask) as usize] {
            Some((s, _, p)) if *s == seq && self.in_window(seq) => Some(p),
            _ => None,
        }
    }

    /// The first packet of the newest keyframe, if it arrived at or after `since` and all
    /// of it may still be kept.
    pub fn keyframe_since(&self, since: Instant) -> Option<u16> {
        let (seq, at) = self.keyframe?;
        (at >= since && self.get(seq).is_some()).then_some(seq)
    }

    /// The packets kept after `seq` (exclusive), in sequence order; gaps are skipped.
    pub fn after(&self, seq: u16) -> impl Iterator<Item = &P> {
        let count = match self.newest {
            Some(newest) if seq_after(newest, seq) => newest.wrapping_sub(seq),
            _ => 0,
        };
        (1..=count).filter_map(move |i| self.get(seq.wrapping_add(i)))
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

    /// Whether a keyframe was asked for at `since` or later, or one is waiting to be.
    pub fn requested_since(&self, since: Instant) -> bool {
        self.pending || self.last_sent.is_some_and(|t| t >= since)
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
    fn history_finds_packets_by_number_within_its_window() {
        let t = Instant::now();
        let mut h = PacketHistory::new(4);
        for seq in [65534u16, 65535, 0, 1] {
            h.insert(seq, seq, false, t);
        }
        assert_eq!(h.get(65534), Some(&65534), "across the wrap");
        h.insert(2, 2, false, t);
        assert_eq!(h.get(65534), None, "pushed out of the window");
        assert_eq!(h.get(2), Some(&2));
        // A straggler older than the window is not kept and evicts nothing.
        h.insert(65530, 65530, false, t);
        assert_eq!(h.get(65530), None);
        assert_eq!(h.get(2), Some(&2));
        assert_eq!(h.get(3), None, "never seen");
    }

    #[test]
    fn history_replays_a_reordered_keyframe_in_sequence() {
        let t = Instant::now();
        let mut h = PacketHistory::new(16);
        // A delta frame's packet, then the keyframe's packets out of order (its 3rd and 2nd
        // arrive before its 1st), across the wrap.
        h.insert(65533, "old", false, t);
        h.insert(0, "k3", false, t);
        h.insert(65535, "k2", false, t);
        h.insert(65534, "k1", true, t);
        h.insert(1, "d1", false, t);
        let start = h.keyframe_since(t).expect("a keyframe is kept");
        assert_eq!(start, 65534);
        assert_eq!(h.get(start), Some(&"k1"));
        assert_eq!(
            h.after(start).copied().collect::<Vec<_>>(),
            vec!["k2", "k3", "d1"]
        );
        assert_eq!(h.after(1).count(), 0, "nothing after the newest");
    }

    #[test]
    fn history_drops_packets_older_than_its_max_age() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = PacketHistory::new(16).with_max_age(Duration::from_millis(100));
        h.insert(65534, "a", true, ms(0));
        h.insert(65535, "b", false, ms(50));
        h.insert(1, "d", false, ms(60)); // 0 is lost
        assert_eq!(h.get(65534), Some(&"a"));
        h.insert(2, "e", false, ms(140));
        assert_eq!(
            h.get(65534),
            None,
            "older than 100 ms at the newest's arrival"
        );
        assert_eq!(h.get(65535), Some(&"b"), "90 ms old: kept");
        h.insert(0, "c", false, ms(145)); // a late retransmission of the lost one
        h.insert(3, "f", false, ms(400));
        assert_eq!(h.after(65533).copied().collect::<Vec<_>>(), vec!["f"]);
        assert_eq!(
            h.keyframe_since(ms(0)),
            None,
            "the keyframe is gone with its packets"
        );
        // Without a max age only the capacity bounds it.
        let mut h = PacketHistory::new(4);
        h.insert(1, (), false, ms(0));
        h.insert(2, (), false, ms(10_000));
        assert_eq!(h.get(1), Some(&()));
    }

    #[test]
    fn history_offers_only_a_fresh_keyframe() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(300);
        let mut h = PacketHistory::new(8);
        h.insert(10, (), true, t0);
        assert_eq!(h.keyframe_since(t0), Some(10));
        assert_eq!(
            h.keyframe_since(later),
            None,
            "too old to start a joiner from"
        );
        h.insert(11, (), false, later);
        // An older keyframe start (a reordered one) does not replace the newest.
        h.insert(9, (), true, later);
        assert_eq!(h.keyframe_since(t0), Some(10));
        for seq in 12..=18 {
            h.insert(seq, (), false, later);
        }
        assert_eq!(
            h.keyframe_since(t0),
            None,
            "its first packet left the window"
        );
    }

    #[test]
    fn a_nack_maps_back_to_the_publishers_packet_only_within_the_current_stream() {
        let mut d = DownTrack::new(MediaKind::Video(VideoCodec::Vp8), 5);
        d.negotiated();
        assert_eq!(d.source_of(1), None, "nothing sent yet");
        let k = d.forward(1000, 90_000, || true).unwrap();
        let n = d.forward(1001, 93_000, || false).unwrap();
        assert_eq!(d.source_of(k.sequence_number), Some(1000));
        assert_eq!(d.source_of(n.sequence_number), Some(1001));
        assert_eq!(d.resend(1001, 93_000), n, "resent exactly as first sent");
        assert_eq!(
            d.source_of(k.sequence_number.wrapping_sub(1)),
            None,
            "before the start"
        );
        assert_eq!(
            d.source_of(n.sequence_number.wrapping_add(1)),
            None,
            "not sent yet"
        );
        d.rebase();
        assert_eq!(d.source_of(n.sequence_number), None, "another source now");
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

    #[test]
    fn a_recent_or_waiting_request_is_known() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut k = KeyframeRequests::new(ms(300));
        assert!(!k.requested_since(t0), "never asked");
        assert!(k.request(t0 + ms(10)));
        assert!(k.requested_since(t0));
        assert!(!k.requested_since(t0 + ms(11)), "asked before that");
        // Held back by the rate limit: still counts as asked for.
        assert!(!k.request(t0 + ms(100)));
        assert!(k.requested_since(t0 + ms(50)));
    }
}
