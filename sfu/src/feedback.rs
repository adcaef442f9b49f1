//! Lets a subscriber's keyframe requests and NACKs through to the engine.
//!
//! `rtc` 0.21 ends the inbound RTCP path at the end of its interceptor chain: only packets an
//! interceptor marks [`Attribute::DeliverToApplication`] reach the application. An SFU must
//! act on a subscriber's PLI/FIR (ask the publisher for a keyframe) and NACK (resend from the
//! track's history), so this interceptor marks exactly those and leaves the reports the
//! chain itself consumes alone.
//!
//! It is also where the connection's send-side bandwidth estimate (the congestion controller's
//! `TargetBitrateChanged`, carried on the subscriber's transport-wide feedback) is picked up:
//! `rtc` keeps it only inside its statistics report, which is too costly to build for every
//! connection every few seconds.

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Marks inbound RTCP that carries PLI, FIR or NACK for delivery to the application, and
/// keeps the newest bandwidth estimate of the connection in `estimate`.
#[derive(Default)]
pub struct FeedbackForApplication {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
    estimate: BandwidthEstimate,
}

/// The newest send-side bandwidth estimate of one connection, in bits per second (none yet:
/// 0), shared between its interceptor chain and the engine.
#[derive(Debug, Clone, Default)]
pub struct BandwidthEstimate(Arc<AtomicU64>);

impl BandwidthEstimate {
    /// Bits per second, if the congestion controller has estimated anything yet.
    pub fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            bps => Some(bps),
        }
    }

    fn set(&self, bits_per_second: f64) {
        // `as` saturates: a NaN or negative estimate reads as "none yet".
        self.0.store(bits_per_second as u64, Ordering::Relaxed);
    }
}

impl FeedbackForApplication {
    /// One that reports the connection's estimate into `estimate`.
    pub fn with_estimate(estimate: BandwidthEstimate) -> Self {
        Self {
            estimate,
            ..Self::default()
        }
    }
}

/// Whether a compound RTCP packet holds feedback the engine acts on.
fn wanted(packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
    packets.iter().any(|p| {
        let any = p.as_any();
        any.is::<PictureLossIndication>()
            || any.is::<FullIntraRequest>()
            || any.is::<TransportLayerNack>()
    })
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackForApplication {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        for attribute in &msg.message.attributes {
            if let Attribute::TargetBitrateChanged { bits_per_second } = attribute {
                self.estimate.set(*bits_per_second);
            }
        }
        if let Packet::Rtcp(packets) = &msg.message.packet
            && wanted(packets)
        {
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for FeedbackForApplication {
    /// Outbound packets pass untouched, so the chain need not move them through
    /// `write_queue` (the patched `rtc-interceptor`, vendor/README.md).
    fn observes_writes(&self) -> bool {
        true
    }

    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
