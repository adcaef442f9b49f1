//! Percentiles for benchmark reports.

/// p50/p95/p99/max of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub count: usize,
}

impl Percentiles {
    /// Nearest-rank percentiles; an empty sample gives zeros.
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| {
            let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[i.clamp(1, v.len()) - 1]
        };
        Self {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
            count: v.len(),
        }
    }
}

/// Latencies in logarithmic buckets (2 % wide, 10 µs to ~75 s): percentiles of millions of
/// packets in a few KiB, and two snapshots subtract to give the percentiles of the time
/// between them (the per-second plots and a ramp step's window).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyHistogram {
    counts: Vec<u32>,
    total: u64,
}

const BUCKETS: usize = 800;
const BASE_MS: f64 = 0.01;
const GROWTH: f64 = 1.02;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl LatencyHistogram {
    fn bucket(ms: f64) -> usize {
        if ms.is_nan() || ms <= BASE_MS {
            return 0;
        }
        (((ms / BASE_MS).ln() / GROWTH.ln()).floor() as usize + 1).min(BUCKETS - 1)
    }

    /// The value a bucket stands for: the geometric middle of its range.
    fn value(bucket: usize) -> f64 {
        if bucket == 0 {
            return BASE_MS;
        }
        BASE_MS * GROWTH.powf(bucket as f64 - 0.5)
    }

    pub fn record(&mut self, ms: f64) {
        self.counts[Self::bucket(ms)] += 1;
        self.total += 1;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// Adds another histogram's samples (e.g. every participant's).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// The samples recorded since `earlier` (a snapshot of this same histogram).
    pub fn since(&self, earlier: &Self) -> Self {
        let counts: Vec<u32> = self
            .counts
            .iter()
            .zip(&earlier.counts)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let total = counts.iter().map(|&c| u64::from(c)).sum();
        Self { counts, total }
    }

    /// Nearest-rank percentiles, each within 2 % of the true value.
    pub fn percentiles(&self) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        let rank = |p: f64| {
            let want = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            for (i, &c) in self.counts.iter().enumerate() {
                seen += u64::from(c);
                if seen >= want {
                    return Self::value(i);
                }
            }
            Self::value(BUCKETS - 1)
        };
        let max = self
            .counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0.0, Self::value);
        Percentiles {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max,
            count: self.total as usize,
        }
    }
}

/// Loss and jitter of one received RTP stream, as RFC 3550 (A.3, A.8) defines them, so the
/// figures mean what a receiver report would say.
#[derive(Debug, Clone, Default)]
pub struct StreamQuality {
    base_seq: i64,
    max_seq: Option<i64>,
    received: u64,
    /// Interarrival jitter in RTP clock units.
    jitter: f64,
    last: Option<(f64, u32)>,
}

impl StreamQuality {
    /// One packet: its sequence number, RTP timestamp, and arrival time in seconds on any
    /// steady clock; `clock_rate` is the RTP clock (48000 for Opus, 90000 for video).
    pub fn record(&mut self, seq: u16, rtp_ts: u32, arrival_s: f64, clock_rate: f64) {
        self.received += 1;
        match self.max_seq {
            None => {
                self.base_seq = i64::from(seq);
                self.max_seq = Some(i64::from(seq));
            }
            Some(max) => {
                // Extend to 64 bits relative to the highest seen (handles wrap and reorder).
                let delta = i64::from(seq.wrapping_sub(max as u16) as i16);
                if delta > 0 {
                    self.max_seq = Some(max + delta);
                }
            }
        }
        let arrival = arrival_s * clock_rate;
        if let Some((last_arrival, last_ts)) = self.last {
            let d = (arrival - last_arrival) - f64::from(rtp_ts.wrapping_sub(last_ts) as i32);
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.last = Some((arrival, rtp_ts));
    }

    /// Packets expected from the first received to the highest sequence number.
    pub fn expected(&self) -> u64 {
        self.max_seq
            .map_or(0, |m| (m - self.base_seq + 1).max(0) as u64)
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Expected but never received (duplicates, e.g. retransmissions, make up for losses).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// The RFC 3550 interarrival jitter in ms.
    pub fn jitter_ms(&self, clock_rate: f64) -> f64 {
        self.jitter / clock_rate * 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!(
            (p.p50, p.p95, p.p99, p.max, p.count),
            (50.0, 95.0, 99.0, 100.0, 100)
        );
        assert_eq!(Percentiles::of(&[]).count, 0);
        assert_eq!(Percentiles::of(&[7.0]).p99, 7.0);
    }

    #[test]
    fn latency_histogram_percentiles_within_two_percent_and_windows_subtract() {
        let mut h = LatencyHistogram::default();
        for i in 1..=1000 {
            h.record(f64::from(i) * 0.1);
        }
        let p = h.percentiles();
        for (got, want) in [(p.p50, 50.0), (p.p95, 95.0), (p.p99, 99.0), (p.max, 100.0)] {
            assert!((got / want - 1.0).abs() < 0.02, "{got} vs {want}");
        }
        assert_eq!(p.count, 1000);
        let before = h.clone();
        for _ in 0..100 {
            h.record(400.0);
        }
        let window = h.since(&before);
        assert_eq!(window.count(), 100);
        assert!((window.percentiles().p50 / 400.0 - 1.0).abs() < 0.02);
        let mut all = LatencyHistogram::default();
        all.merge(&h);
        assert_eq!(all.count(), 1100);
        assert_eq!(LatencyHistogram::default().percentiles().count, 0);
        h.record(0.0);
        h.record(1e9);
    }

    #[test]
    fn loss_counts_gaps_across_wraparound_and_ignores_reordering() {
        let mut q = StreamQuality::default();
        let mut t = 0.0;
        for seq in [65530u16, 65531, 65533, 65532, 65535, 0, 1, 3] {
            q.record(seq, 0, t, 48000.0);
            t += 0.02;
        }
        // 65530..=3 is 10 packets; 65534 and 2 are missing.
        assert_eq!((q.expected(), q.received(), q.lost()), (10, 8, 2));
        // A retransmitted duplicate counts as received, as in RFC 3550.
        q.record(1, 0, t, 48000.0);
        assert_eq!(q.lost(), 1);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        // Perfectly paced 20 ms audio: no jitter.
        let mut q = StreamQuality::default();
        for i in 0..100u32 {
            q.record(i as u16, i * 960, f64::from(i) * 0.020, 48000.0);
        }
        assert!(q.jitter_ms(48000.0) < 1e-6);
        // Alternately 5 ms early and late: |D| = 10 ms, J converges to 10 ms.
        let mut q = StreamQuality::default();
        for i in 0..400u32 {
            let wobble = if i % 2 == 0 { -0.005 } else { 0.005 };
            q.record(i as u16, i * 960, f64::from(i) * 0.020 + wobble, 48000.0);
        }
        assert!(
            (q.jitter_ms(48000.0) - 10.0).abs() < 0.1,
            "{}",
            q.jitter_ms(48000.0)
        );
    }
}
