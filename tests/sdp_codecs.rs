//! The patched `rtc-sdp` (vendor/README.md) answers `get_codec_for_payload_type` without
//! building every section's codec map per call; these tests hold it to what the map gave.

use rtc::sdp::description::common::Attribute;
use rtc::sdp::description::media::MediaDescription;
use rtc::sdp::description::session::SessionDescription;
use rtc::sdp::util::Codec;
use std::collections::HashMap;
use std::io::Cursor;

/// A join offer of Chromium 156 (the web client's: a receive slot pair, sendonly audio and
/// video, the data channel), as `POST /join` carried it.
const CHROMIUM_OFFER: &str = include_str!("data/chromium-156-offer.sdp");

fn parse(sdp: &str) -> SessionDescription {
    SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes())).expect("a valid SDP")
}

/// What the published crate computed: every section's map, later sections overriding.
fn reference(sd: &SessionDescription, payload_type: u8) -> Option<Codec> {
    let mut all: HashMap<u8, Codec> = HashMap::new();
    for m in &sd.media_descriptions {
        all.extend(m.codecs());
    }
    all.remove(&payload_type)
}

fn assert_same_for_every_payload_type(sd: &SessionDescription) -> usize {
    let mut found = 0;
    for pt in 0..=u8::MAX {
        let got = sd.get_codec_for_payload_type(pt).ok();
        assert_eq!(got, reference(sd, pt), "payload type {pt}");
        found += usize::from(got.is_some());
    }
    found
}

#[test]
fn every_payload_type_of_a_chromium_offer_reads_as_the_whole_map_gives_it() {
    let offer = parse(CHROMIUM_OFFER);
    // The session as a whole (sections of one kind share payload types: the last one wins),
    // and each section alone, as rtc reads them.
    assert!(assert_same_for_every_payload_type(&offer) >= 30);
    let mut per_section = 0;
    for m in &offer.media_descriptions {
        let one = SessionDescription {
            media_descriptions: vec![m.clone()],
            ..Default::default()
        };
        per_section += assert_same_for_every_payload_type(&one);
        for f in &m.media_name.formats {
            let Ok(pt) = f.parse::<u8>() else { continue };
            let codec = one
                .get_codec_for_payload_type(pt)
                .expect("every offered format has an rtpmap");
            assert_eq!(codec.payload_type, pt);
            assert!(!codec.name.is_empty(), "{codec}");
        }
    }
    assert_eq!(per_section, 62, "the offer's rtpmap lines");
    let vp8 = offer.get_codec_for_payload_type(96).unwrap();
    assert_eq!((vp8.name.as_str(), vp8.clock_rate), ("VP8", 90000));
    assert_eq!(
        vp8.rtcp_feedback,
        ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    );
    let rtx = offer.get_codec_for_payload_type(97).unwrap();
    assert_eq!((rtx.name.as_str(), rtx.fmtp.as_str()), ("rtx", "apt=96"));
}

#[test]
fn odd_attributes_are_read_as_before() {
    // Payload types written "+96" and "096" (u8::from_str takes both), an attribute whose
    // key carries the value, lines that do not parse, and a type named in two sections.
    let attr = |k: &str, v: Option<&str>| Attribute::new(k.to_owned(), v.map(str::to_owned));
    let first = MediaDescription {
        attributes: vec![
            attr("rtpmap", Some("+96 VP8/90000")),
            attr("fmtp", Some("096 x=1")),
            attr("rtcp-fb", Some("96 nack")),
            attr("rtcp-fb", Some("96\tnack pli")),
            attr("rtpmap:97 rtx/90000", None),
            attr("rtpmap", Some(" 98 H264/90000")),
            attr("rtpmap", Some("99:1 H264/90000")),
            attr("rtpmap", None),
            attr("rtpmapx", Some("100 VP9/90000")),
            attr("fmtp", Some("101")),
            attr("rtcp-fb", Some("102 nack pli extra")),
            attr("rtpmap", Some("103 opus/48000/2")),
            attr("mid", Some("0")),
        ],
        ..Default::default()
    };
    let second = MediaDescription {
        attributes: vec![
            attr("rtpmap", Some("103 red/48000/2")),
            attr("fmtp", Some("103 111/111")),
        ],
        ..Default::default()
    };
    let sd = SessionDescription {
        media_descriptions: vec![first, second],
        ..Default::default()
    };
    assert_same_for_every_payload_type(&sd);
    // The published parsers' readings, spelled out.
    let codec = |pt| sd.get_codec_for_payload_type(pt).ok();
    let vp8 = codec(96).unwrap();
    assert_eq!((vp8.name.as_str(), vp8.fmtp.as_str()), ("VP8", "x=1"));
    assert_eq!(
        vp8.rtcp_feedback,
        ["nack"],
        "the tab-separated line does not parse"
    );
    assert_eq!(codec(97).unwrap().name, "rtx");
    for pt in [98, 99, 100, 101] {
        assert_eq!(codec(pt), None, "payload type {pt}");
    }
    assert_eq!(codec(102).unwrap().rtcp_feedback, ["nack pli extra"]);
    assert_eq!(codec(103).unwrap().name, "red", "the later section wins");
}
