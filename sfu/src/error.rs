//! Errors of the media layer.

/// Why the SFU refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("invalid session description: {0}")]
    BadSdp(String),
    #[error("no media peer '{0}'")]
    UnknownPeer(String),
    #[error("a media peer '{0}' already exists")]
    DuplicatePeer(String),
    #[error("no offer is outstanding for this peer")]
    NoOfferOutstanding,
    #[error("webrtc: {0}")]
    Rtc(String),
    #[error("media socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the media engine has stopped")]
    Stopped,
}
