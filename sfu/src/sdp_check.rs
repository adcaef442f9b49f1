//! Checks of a client's session description that `rtc` lets through but that would break
//! forwarding without an error: they are refused as `bad_sdp` with the reason instead.
//!
//! Found with the load generator, whose display names ("Dr A") went into `a=msid` with their
//! spaces: `rtc` read the line's extra words as a different track id, gave the audio and the
//! video m-sections the same track, and the video was never published, with nothing said.

use std::collections::HashMap;

use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;

/// The most media sections a client's offer may have. Each becomes a transceiver with its
/// own state on the server, and a browser call needs its two send sections, a few receive
/// slots and the data channel: far more is a client abusing the server, not a call.
pub const MAX_MEDIA_SECTIONS: usize = 64;

/// The kind of each audio and video m-section of `sdp`, by mid, or why the description is
/// refused (too many sections). The engine needs it to tell the client's receive slots from
/// its own sending sections, which `rtc` does not expose.
pub fn media_kinds_by_mid(sdp: &str) -> Result<HashMap<String, RtpCodecKind>, String> {
    let mut kinds = HashMap::new();
    let mut sections = 0usize;
    let mut kind: Option<RtpCodecKind> = None;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(media) = line.strip_prefix("m=") {
            sections += 1;
            if sections > MAX_MEDIA_SECTIONS {
                return Err(format!(
                    "more than {MAX_MEDIA_SECTIONS} media sections in one description"
                ));
            }
            kind = match media.split(' ').next() {
                Some("audio") => Some(RtpCodecKind::Audio),
                Some("video") => Some(RtpCodecKind::Video),
                _ => None,
            };
        } else if let (Some(k), Some(mid)) = (kind, line.strip_prefix("a=mid:")) {
            kinds.insert(mid.to_owned(), k);
        }
    }
    Ok(kinds)
}

/// Why a session description is refused, or `Ok` if nothing here objects.
pub fn check_msids(sdp: &str) -> Result<(), String> {
    // Track id → the m-section (0-based) that first carried it.
    let mut tracks: HashMap<&str, usize> = HashMap::new();
    let mut section: Option<usize> = None;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("m=") {
            section = Some(section.map_or(0, |s| s + 1));
            continue;
        }
        let Some(value) = line.strip_prefix("a=msid:") else {
            continue;
        };
        let Some(m) = section else {
            // RFC 8830 puts msid in media sections only.
            return Err("a=msid outside a media section".into());
        };
        // RFC 8830: msid-id [SP msid-appdata], both tokens without spaces.
        let words: Vec<&str> = value.split(' ').collect();
        if words.len() > 2 || words.iter().any(|w| w.is_empty()) {
            return Err(format!(
                "a=msid of m-section {m} is not a stream id and a track id (ids have no spaces): {}",
                value.chars().take(80).collect::<String>()
            ));
        }
        if let Some(track) = words.get(1) {
            match tracks.get(track) {
                Some(&first) if first != m => {
                    return Err(format!(
                        "m-sections {first} and {m} carry the same track id {}",
                        track.chars().take(80).collect::<String>()
                    ));
                }
                Some(_) => {}
                None => {
                    tracks.insert(track, m);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=msid:s1 a1\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=msid:s1 v1\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";

    #[test]
    fn a_browser_like_description_passes() {
        assert_eq!(check_msids(OK), Ok(()));
        // A stream id alone, or "-" for no stream, is fine; so is no msid at all.
        assert_eq!(
            check_msids("m=audio 9 X 0\r\na=msid:-\r\nm=video 9 X 96\r\n"),
            Ok(())
        );
        // The same line twice in one section (msid and ssrc attributes repeat it) is fine.
        assert_eq!(
            check_msids("m=video 9 X 96\r\na=msid:s v\r\na=msid:s v\r\n"),
            Ok(())
        );
    }

    #[test]
    fn ids_with_spaces_are_refused() {
        let sdp = "m=audio 9 X 111\r\na=msid:Dr A-local Dr A-local-audio\r\n";
        let err = check_msids(sdp).unwrap_err();
        assert!(err.contains("no spaces"), "{err}");
        assert!(check_msids("m=audio 9 X 111\r\na=msid:s  a\r\n").is_err());
    }

    #[test]
    fn one_track_in_two_sections_is_refused() {
        let sdp = "m=audio 9 X 111\r\na=msid:s t\r\nm=video 9 X 96\r\na=msid:s t\r\n";
        let err = check_msids(sdp).unwrap_err();
        assert!(err.contains("same track id"), "{err}");
    }

    #[test]
    fn msid_outside_a_media_section_is_refused() {
        assert!(check_msids("v=0\r\na=msid:s t\r\nm=audio 9 X 0\r\n").is_err());
    }

    #[test]
    fn media_kinds_are_read_by_mid() {
        let kinds = media_kinds_by_mid(
            "v=0\r\nm=video 9 X 96\r\na=mid:0\r\nm=audio 9 X 111\r\na=mid:a1\r\n\
             m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n",
        )
        .unwrap();
        assert_eq!(kinds.len(), 2);
        assert_eq!(kinds["0"], RtpCodecKind::Video);
        assert_eq!(kinds["a1"], RtpCodecKind::Audio);
    }

    #[test]
    fn too_many_media_sections_are_refused() {
        let section = "m=audio 9 X 111\r\n";
        assert!(media_kinds_by_mid(&section.repeat(MAX_MEDIA_SECTIONS)).is_ok());
        let err = media_kinds_by_mid(&section.repeat(MAX_MEDIA_SECTIONS + 1)).unwrap_err();
        assert!(err.contains("media sections"), "{err}");
    }

    #[test]
    fn long_values_are_cut_in_the_reason() {
        let long = "x".repeat(10_000);
        let sdp = format!("m=audio 9 X 0\r\na=msid:a b {long}\r\n");
        assert!(check_msids(&sdp).unwrap_err().len() < 300);
    }
}
