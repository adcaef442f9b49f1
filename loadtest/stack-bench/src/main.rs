//! What one forwarded RTP packet costs each sans-I/O WebRTC stack, sending and receiving.
//!
//! Issue 5 asks whether the load generator's synthetic participants should be built on
//! `rtc` (webrtc-rs, what they use) or on str0m, if str0m carries many more peers per core.
//! A participant of a tumour board mostly receives: 13 cameras (one of them a screen share)
//! and 12 microphones through the SFU, ≈ 1 900 packets a second, and sends ≈ 150. This
//! program connects two peers of one stack in memory (no sockets: the kernel's share is the
//! same for both stacks and is left out), has one send that board's streams to the other for
//! `SECONDS` of simulated time, as fast as it can, and times each side's calls into its stack.
//!
//! `rtc`'s peers are set up the way Consilium uses them: the sender is the SFU's kind of peer
//! (ICE-lite, DTLS server), the receiver the load generator's (full ICE, the offerer), both
//! with `rtc`'s default interceptors (NACK, reports, TWCC), as the load generator has.
//! str0m's peers get str0m's defaults. Each stack negotiates its own default SRTP profile.

use anyhow::{Context, anyhow, bail};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Simulated seconds of media per run.
const SECONDS: u64 = 20;
/// Streams a tumour-board participant receives.
const VIDEO_STREAMS: usize = 13;
const AUDIO_STREAMS: usize = 12;
/// Packets per second of each: ≈ 1 Mbit/s of 1 100-byte payloads, and Opus in 20 ms frames.
const VIDEO_PPS: u64 = 100;
const AUDIO_PPS: u64 = 50;
const VIDEO_PAYLOAD: usize = 1100;
const AUDIO_PAYLOAD: usize = 80;

/// Accumulated wall time inside one side's calls into its stack (the loop is single-threaded,
/// so this is that side's CPU time) and what it handled.
#[derive(Default, Debug, Clone, Copy)]
struct Side {
    busy: Duration,
    packets: u64,
}

#[derive(Debug)]
struct Run {
    stack: &'static str,
    sender: Side,
    receiver: Side,
}

/// When stream `i` (videos first) sends its next packets, in simulated milliseconds.
fn due(i: usize, ms: u64) -> bool {
    let (pps, offset) = if i < VIDEO_STREAMS {
        (VIDEO_PPS, i as u64)
    } else {
        (AUDIO_PPS, (i - VIDEO_STREAMS) as u64)
    };
    let period = 1000 / pps;
    ms % period == offset % period
}

fn payload_len(i: usize) -> usize {
    if i < VIDEO_STREAMS {
        VIDEO_PAYLOAD
    } else {
        AUDIO_PAYLOAD
    }
}

fn timed<T>(side: &mut Side, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    side.busy += start.elapsed();
    out
}

/// One connected pair of a stack, driven by [`measure`]: the same schedule and the same timed
/// calls for both stacks.
trait Pair {
    /// Hands stream `i`'s next packet to the sender (payload type and size by stream).
    fn write(&mut self, i: usize, seq: u64, rtp_time: u32, now: Instant) -> anyhow::Result<()>;
    /// The sender's timers and what it has to send.
    fn run_sender(&mut self, now: Instant) -> anyhow::Result<()>;
    /// What the receiver sent back (reports, feedback), into the sender.
    fn feed_sender(&mut self, now: Instant) -> anyhow::Result<()>;
    /// What the sender sent, into the receiver, and its timers; RTP packets it read.
    fn run_receiver(&mut self, now: Instant) -> anyhow::Result<u64>;
}

/// `SECONDS` of the board's streams through `pair`, timing each side.
fn measure(pair: &mut impl Pair, start: Instant) -> anyhow::Result<(Side, Side)> {
    let (mut sender, mut receiver) = (Side::default(), Side::default());
    let streams = VIDEO_STREAMS + AUDIO_STREAMS;
    let mut seq = vec![0u64; streams];
    for ms in 0..SECONDS * 1000 {
        let now = start + Duration::from_millis(ms);
        for (i, seq) in seq.iter_mut().enumerate() {
            if !due(i, ms) {
                continue;
            }
            *seq += 1;
            let rate = if i < VIDEO_STREAMS { 90 } else { 48 };
            timed(&mut sender, || pair.write(i, *seq, (ms * rate) as u32, now))?;
            sender.packets += 1;
        }
        timed(&mut sender, || pair.run_sender(now))?;
        receiver.packets += timed(&mut receiver, || pair.run_receiver(now))?;
        timed(&mut sender, || pair.feed_sender(now))?;
    }
    Ok((sender, receiver))
}

mod with_str0m {
    use super::*;
    use str0m::format::Codec;
    use str0m::media::MediaKind;
    use str0m::net::{Protocol, Receive};
    use str0m::rtp::{ExtensionValues, Ssrc};
    use str0m::{Candidate, Event, Input, Output, Rtc};

    type Wire = Vec<(SocketAddr, SocketAddr, Vec<u8>)>;

    /// Runs `rtc` up to `now` and collects what it sends; returns RTP packets received.
    fn drive(rtc: &mut Rtc, now: Instant, wire: &mut Wire) -> anyhow::Result<u64> {
        rtc.handle_input(Input::Timeout(now))?;
        poll(rtc, wire)
    }

    fn poll(rtc: &mut Rtc, wire: &mut Wire) -> anyhow::Result<u64> {
        let mut received = 0;
        loop {
            match rtc.poll_output()? {
                Output::Timeout(_) => return Ok(received),
                Output::Transmit(t) => wire.push((t.source, t.destination, t.contents.to_vec())),
                Output::Event(Event::RtpPacket(_)) => received += 1,
                Output::Event(_) => {}
            }
        }
    }

    fn deliver(
        rtc: &mut Rtc,
        now: Instant,
        wire: &mut Wire,
        out: &mut Wire,
    ) -> anyhow::Result<u64> {
        let mut received = 0;
        for (source, destination, contents) in wire.drain(..) {
            rtc.handle_input(Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination,
                    contents: contents.as_slice().try_into()?,
                },
            ))?;
            received += poll(rtc, out)?;
        }
        Ok(received)
    }

    pub fn run() -> anyhow::Result<Run> {
        let mut a = Rtc::builder().set_rtp_mode(true).build();
        let mut b = Rtc::builder().set_rtp_mode(true).build();
        let t0 = Instant::now();
        let addr_a: SocketAddr = (Ipv4Addr::new(10, 0, 0, 1), 1000).into();
        let addr_b: SocketAddr = (Ipv4Addr::new(10, 0, 0, 2), 2000).into();
        let host_a = Candidate::host(addr_a, "udp")?;
        let host_b = Candidate::host(addr_b, "udp")?;
        a.add_local_candidate(host_a.clone());
        a.add_remote_candidate(host_b.clone());
        b.add_local_candidate(host_b);
        b.add_remote_candidate(host_a);
        let finger_a = a.direct_api().local_dtls_fingerprint().clone();
        let finger_b = b.direct_api().local_dtls_fingerprint().clone();
        a.direct_api().set_remote_fingerprint(finger_b);
        b.direct_api().set_remote_fingerprint(finger_a);
        let creds_a = a.direct_api().local_ice_credentials();
        let creds_b = b.direct_api().local_ice_credentials();
        a.direct_api().set_remote_ice_credentials(creds_b);
        b.direct_api().set_remote_ice_credentials(creds_a);
        // As in Consilium: the receiving participant controls ICE and is the DTLS client.
        b.direct_api().set_ice_controlling(true);
        a.direct_api().set_ice_controlling(false);
        b.direct_api().start_dtls(true)?;
        a.direct_api().start_dtls(false)?;

        let streams = VIDEO_STREAMS + AUDIO_STREAMS;
        let mut ssrcs = Vec::new();
        for i in 0..streams {
            let mid = format!("m{i}").as_str().into();
            let kind = if i < VIDEO_STREAMS {
                MediaKind::Video
            } else {
                MediaKind::Audio
            };
            let ssrc: Ssrc = (1000 + i as u32).into();
            a.direct_api().declare_media(mid, kind);
            a.direct_api().declare_stream_tx(ssrc, None, mid, None);
            b.direct_api().declare_media(mid, kind);
            b.direct_api().expect_stream_rx(ssrc, None, mid, None);
            ssrcs.push(ssrc);
        }
        let pt_of = |rtc: &Rtc, codec: Codec| {
            rtc.codec_config()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
                .ok_or_else(|| anyhow!("no {codec:?}"))
        };
        let (pt_video, pt_audio) = (pt_of(&a, Codec::Vp8)?, pt_of(&a, Codec::Opus)?);

        let (mut to_b, mut to_a) = (Wire::new(), Wire::new());
        let mut now = t0;
        let mut connected = false;
        for _ in 0..5000 {
            now += Duration::from_millis(1);
            drive(&mut a, now, &mut to_b)?;
            drive(&mut b, now, &mut to_a)?;
            deliver(&mut b, now, &mut to_b, &mut to_a)?;
            deliver(&mut a, now, &mut to_a, &mut to_b)?;
            if a.is_connected() && b.is_connected() {
                connected = true;
                break;
            }
        }
        if !connected {
            bail!("str0m peers did not connect");
        }

        let mut pair = Str0mPair {
            a,
            b,
            to_a,
            to_b,
            ssrcs,
            pts: (pt_video, pt_audio),
            payloads: (0..streams).map(|i| vec![0x5a; payload_len(i)]).collect(),
        };
        let (sender, receiver) = measure(&mut pair, now)?;
        Ok(Run {
            stack: "str0m 0.14.3 (aws-lc-rs)",
            sender,
            receiver,
        })
    }

    struct Str0mPair {
        a: Rtc,
        b: Rtc,
        to_a: Wire,
        to_b: Wire,
        ssrcs: Vec<Ssrc>,
        pts: (str0m::media::Pt, str0m::media::Pt),
        payloads: Vec<Vec<u8>>,
    }

    impl Pair for Str0mPair {
        fn write(&mut self, i: usize, seq: u64, rtp_time: u32, now: Instant) -> anyhow::Result<()> {
            let pt = if i < VIDEO_STREAMS {
                self.pts.0
            } else {
                self.pts.1
            };
            let mut direct = self.a.direct_api();
            let stream = direct.stream_tx(&self.ssrcs[i]).context("stream")?;
            stream.write_rtp(
                pt,
                seq.into(),
                rtp_time,
                now,
                false,
                ExtensionValues::default(),
                true,
                self.payloads[i].clone(),
            )?;
            Ok(())
        }

        fn run_sender(&mut self, now: Instant) -> anyhow::Result<()> {
            drive(&mut self.a, now, &mut self.to_b).map(|_| ())
        }

        fn feed_sender(&mut self, now: Instant) -> anyhow::Result<()> {
            deliver(&mut self.a, now, &mut self.to_a, &mut self.to_b).map(|_| ())
        }

        fn run_receiver(&mut self, now: Instant) -> anyhow::Result<u64> {
            let got = deliver(&mut self.b, now, &mut self.to_b, &mut self.to_a)?;
            Ok(got + drive(&mut self.b, now, &mut self.to_a)?)
        }
    }
}

mod with_rtc {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use rtc::interceptor::Registry;
    use rtc::media_stream::MediaStreamTrack;
    use rtc::peer_connection::RTCPeerConnection;
    use rtc::peer_connection::RTCPeerConnectionBuilder;
    use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
    use rtc::peer_connection::configuration::media_engine::MediaEngine;
    use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
    use rtc::peer_connection::event::RTCPeerConnectionEvent;
    use rtc::peer_connection::message::RTCMessage;
    use rtc::peer_connection::sdp::RTCSessionDescription;
    use rtc::peer_connection::state::RTCPeerConnectionState;
    use rtc::peer_connection::transport::{
        CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate,
    };
    use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
    use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters};
    use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
    use rtc::sansio::Protocol;
    use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

    fn candidate(
        addr: SocketAddr,
    ) -> anyhow::Result<rtc::peer_connection::transport::RTCIceCandidateInit> {
        let c = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        let mut init = RTCIceCandidate::from(&c).to_json()?;
        init.sdp_mid = Some("0".into());
        init.sdp_mline_index = Some(0);
        Ok(init)
    }

    struct Peer {
        pc: RTCPeerConnection,
        addr: SocketAddr,
        connected: bool,
    }

    type Wire = Vec<(SocketAddr, SocketAddr, BytesMut)>;

    impl Peer {
        /// Timers due, events, and what it has to send; returns RTP packets read.
        fn drive(&mut self, now: Instant, wire: &mut Wire) -> anyhow::Result<u64> {
            if self.pc.poll_timeout().is_some_and(|t| t <= now) {
                self.pc.handle_timeout(now)?;
            }
            let mut received = 0;
            loop {
                let mut progressed = false;
                while let Some(e) = self.pc.poll_event() {
                    progressed = true;
                    if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                        RTCPeerConnectionState::Connected,
                    ) = e
                    {
                        self.connected = true;
                    }
                }
                if progressed {
                    self.pc.handle_timeout(now)?;
                }
                while let Some(m) = self.pc.poll_read() {
                    progressed = true;
                    if let RTCMessage::RtpPacket(..) = m.message {
                        received += 1;
                    }
                }
                if !progressed {
                    break;
                }
            }
            while let Some(out) = self.pc.poll_write() {
                wire.push((self.addr, out.transport.peer_addr, out.message));
            }
            Ok(received)
        }

        fn deliver(
            &mut self,
            now: Instant,
            wire: &mut Wire,
            out: &mut Wire,
        ) -> anyhow::Result<u64> {
            let mut received = 0;
            for (from, to, message) in wire.drain(..) {
                if to != self.addr {
                    continue;
                }
                self.pc.handle_read(TaggedBytesMut {
                    now,
                    transport: TransportContext {
                        local_addr: self.addr,
                        peer_addr: from,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message,
                })?;
                received += self.drive(now, out)?;
            }
            Ok(received)
        }
    }

    pub fn run() -> anyhow::Result<Run> {
        let t0 = Instant::now();
        let addr_a: SocketAddr = (Ipv4Addr::new(10, 0, 0, 1), 1000).into();
        let addr_b: SocketAddr = (Ipv4Addr::new(10, 0, 0, 2), 2000).into();
        // The SFU's kind of peer (sfu/src/engine.rs): ICE-lite, DTLS server.
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let mut a = RTCPeerConnectionBuilder::new()
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_lite(true)
                    .with_answering_dtls_role(RTCDtlsRole::Server)
                    .build(),
            )
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(t0)?;
        // The load generator's (loadtest/src/participant.rs): offers, full ICE.
        let mut media = MediaEngine::default();
        media.register_default_codecs()?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let mut b = RTCPeerConnectionBuilder::new()
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_ice_connection_attempts(Some(Duration::from_millis(25)), Some(56))
                    .build(),
            )
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .build(t0)?;

        let streams = VIDEO_STREAMS + AUDIO_STREAMS;
        for i in 0..streams {
            let kind = if i < VIDEO_STREAMS {
                RtpCodecKind::Video
            } else {
                RtpCodecKind::Audio
            };
            b.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )?;
        }
        let offer = b.create_offer(None)?;
        b.set_local_description(t0, offer.clone())?;
        b.add_local_candidate(candidate(addr_b)?)?;
        a.set_remote_description(t0, RTCSessionDescription::offer(offer.sdp)?)?;
        let mut senders: Vec<(RTCRtpSenderId, u32)> = Vec::new();
        for i in 0..streams {
            let kind = if i < VIDEO_STREAMS {
                RtpCodecKind::Video
            } else {
                RtpCodecKind::Audio
            };
            let ssrc = 1000 + i as u32;
            let track = MediaStreamTrack::new(
                "board".into(),
                format!("t{i}"),
                format!("t{i}"),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    ..Default::default()
                }],
            );
            senders.push((a.add_track(track)?, ssrc));
        }
        a.add_local_candidate(candidate(addr_a)?)?;
        let answer = a.create_answer(None)?;
        a.set_local_description(t0, answer.clone())?;
        b.set_remote_description(t0, RTCSessionDescription::answer(answer.sdp)?)?;

        let mut a = Peer {
            pc: a,
            addr: addr_a,
            connected: false,
        };
        let mut b = Peer {
            pc: b,
            addr: addr_b,
            connected: false,
        };
        let (mut to_b, mut to_a) = (Wire::new(), Wire::new());
        let mut now = t0;
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            a.drive(now, &mut to_b)?;
            b.drive(now, &mut to_a)?;
            b.deliver(now, &mut to_b, &mut to_a)?;
            a.deliver(now, &mut to_a, &mut to_b)?;
            if a.connected && b.connected {
                break;
            }
        }
        if !(a.connected && b.connected) {
            bail!("rtc peers did not connect");
        }

        let mut pts = Vec::new();
        for (id, _) in &senders {
            let mut s = a.pc.rtp_sender(*id).context("sender")?;
            let pt = s
                .get_parameters()
                .rtp_parameters
                .codecs
                .first()
                .map(|c| c.payload_type)
                .context("no codec")?;
            pts.push(pt);
        }
        let mut pair = RtcPair {
            a,
            b,
            to_a,
            to_b,
            senders,
            pts,
            payloads: (0..streams)
                .map(|i| Bytes::from(vec![0x5a; payload_len(i)]))
                .collect(),
        };
        let (sender, receiver) = measure(&mut pair, now)?;
        Ok(Run {
            stack: "rtc 0.21.1 (webrtc-rs, Consilium's patched copies)",
            sender,
            receiver,
        })
    }

    struct RtcPair {
        a: Peer,
        b: Peer,
        to_a: Wire,
        to_b: Wire,
        senders: Vec<(RTCRtpSenderId, u32)>,
        pts: Vec<u8>,
        payloads: Vec<Bytes>,
    }

    impl Pair for RtcPair {
        fn write(&mut self, i: usize, seq: u64, rtp_time: u32, now: Instant) -> anyhow::Result<()> {
            let packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: self.pts[i],
                    sequence_number: seq as u16,
                    timestamp: rtp_time,
                    ssrc: self.senders[i].1,
                    ..Default::default()
                },
                payload: self.payloads[i].clone(),
            };
            let mut s = self.a.pc.rtp_sender(self.senders[i].0).context("sender")?;
            s.write_rtp(now, packet)?;
            Ok(())
        }

        fn run_sender(&mut self, now: Instant) -> anyhow::Result<()> {
            self.a.drive(now, &mut self.to_b).map(|_| ())
        }

        fn feed_sender(&mut self, now: Instant) -> anyhow::Result<()> {
            self.a
                .deliver(now, &mut self.to_a, &mut self.to_b)
                .map(|_| ())
        }

        fn run_receiver(&mut self, now: Instant) -> anyhow::Result<u64> {
            let got = self.b.deliver(now, &mut self.to_b, &mut self.to_a)?;
            Ok(got + self.b.drive(now, &mut self.to_a)?)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let all = which.is_empty();
    let mut runs = Vec::new();
    if all || which.iter().any(|w| w == "rtc") {
        runs.push(with_rtc::run()?);
    }
    if all || which.iter().any(|w| w == "str0m") {
        runs.push(with_str0m::run()?);
    }
    let per_second = (VIDEO_STREAMS as u64 * VIDEO_PPS + AUDIO_STREAMS as u64 * AUDIO_PPS) as f64;
    println!(
        "{SECONDS} s of a tumour-board participant's inbound streams ({VIDEO_STREAMS} video at {VIDEO_PPS}/s, {AUDIO_STREAMS} audio at {AUDIO_PPS}/s: {per_second} packets/s), in memory"
    );
    println!(
        "{:<52} {:>10} {:>12} {:>10} {:>12} {:>16}",
        "stack", "sent", "µs/packet", "received", "µs/packet", "receivers/core"
    );
    for r in &runs {
        let tx = r.sender.busy.as_secs_f64() * 1e6 / r.sender.packets.max(1) as f64;
        let rx = r.receiver.busy.as_secs_f64() * 1e6 / r.receiver.packets.max(1) as f64;
        println!(
            "{:<52} {:>10} {:>12.2} {:>10} {:>12.2} {:>16.0}",
            r.stack,
            r.sender.packets,
            tx,
            r.receiver.packets,
            rx,
            1e6 / (rx * per_second)
        );
    }
    Ok(())
}
