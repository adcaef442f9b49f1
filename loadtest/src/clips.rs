//! The encoded media a real-media run publishes: VP8 clips made once with ffmpeg (a camera
//! and a screen share) and an Opus voice loop, cached on disk and shared in memory.

use crate::voice::{OpusClip, VoiceError};
use crate::vp8::{IvfError, VideoClip};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Why the media for a run could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error(
        "ffmpeg is not installed: `loadtest run` encodes its VP8 clips with it once \
         (install it with `apt-get install -y ffmpeg`; ./scripts/test does)"
    )]
    FfmpegMissing,
    #[error("ffmpeg failed to make {clip}: {stderr}")]
    Ffmpeg { clip: String, stderr: String },
    #[error("clip cache {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("clip {clip}: {source}")]
    Ivf { clip: String, source: IvfError },
    #[error(transparent)]
    Voice(#[from] VoiceError),
}

/// A clip ffmpeg makes from a lavfi source.
struct ClipRecipe {
    /// File name; carries a version so a changed recipe is not served from the cache.
    file: &'static str,
    args: &'static [&'static str],
}

/// The camera: 640x360 at 30 fps, 1 Mbit/s, a keyframe every 3 s, realtime speed (as a
/// browser encodes), no alt-ref frames (WebRTC encoders do not use them).
const CAMERA: ClipRecipe = ClipRecipe {
    file: "camera-640x360-30fps-v1.ivf",
    args: &[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=640x360:rate=30",
        "-t",
        "10",
        "-c:v",
        "libvpx",
        "-b:v",
        "1M",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-g",
        "90",
        "-auto-alt-ref",
        "0",
        "-lag-in-frames",
        "0",
    ],
};

/// The screen share: a mostly static 1920x1080 slide (title bar, grid, text-like bars)
/// with a moving pointer and a moving inset (a video or viewer in the slide), 5 fps,
/// ~1.5 Mbit/s, a keyframe every 2 s (a late subscriber starts within a GOP even when no
/// keyframe request reaches the publisher): what a presenter's shared slides look like.
const SCREEN: ClipRecipe = ClipRecipe {
    file: "screen-1920x1080-5fps-v2.ivf",
    args: &[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=960x540:rate=5[inset];\
         color=c=0xf4f4f4:size=1920x1080:rate=5,\
         drawgrid=w=96:h=54:t=1:c=0xd8d8d8,\
         drawbox=x=0:y=0:w=1920:h=110:color=0x1f4e79:t=fill,\
         drawbox=x=120:y=220:w=900:h=28:color=0x333333:t=fill,\
         drawbox=x=120:y=300:w=760:h=22:color=0x666666:t=fill,\
         drawbox=x=120:y=350:w=820:h=22:color=0x666666:t=fill,\
         drawbox=x=120:y=400:w=640:h=22:color=0x666666:t=fill,\
         drawbox=x='200+mod(t*240\\,1400)':y='600+120*sin(t)':w=18:h=28:color=black:t=fill[slide];\
         [slide][inset]overlay=x=860:y=440",
        "-t",
        "10",
        "-c:v",
        "libvpx",
        "-b:v",
        "1500k",
        "-minrate",
        "1000k",
        "-maxrate",
        "2000k",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-g",
        "10",
        "-auto-alt-ref",
        "0",
        "-lag-in-frames",
        "0",
    ],
};

/// Where clips are cached: `$LOADTEST_CLIP_DIR`, else a directory in the system temp dir
/// (shared by every run and test on the machine; made once).
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("LOADTEST_CLIP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("consilium-loadtest-clips"))
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Makes (once) and opens one clip.
fn clip(dir: &Path, recipe: &ClipRecipe) -> Result<VideoClip, ClipError> {
    let path = dir.join(recipe.file);
    if !path.exists() {
        if !ffmpeg_available() {
            return Err(ClipError::FfmpegMissing);
        }
        std::fs::create_dir_all(dir).map_err(|source| ClipError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        // Encode to a private name and rename: concurrent runs never see half a file.
        let tmp = dir.join(format!("{}.{}.tmp.ivf", recipe.file, std::process::id()));
        let out = Command::new("ffmpeg")
            .args(["-y", "-hide_banner", "-loglevel", "error"])
            .args(recipe.args)
            .arg(&tmp)
            .output()
            .map_err(|source| ClipError::Io {
                path: tmp.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(ClipError::Ffmpeg {
                clip: recipe.file.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        std::fs::rename(&tmp, &path).map_err(|source| ClipError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    VideoClip::open(&path).map_err(|source| ClipError::Ivf {
        clip: recipe.file.to_owned(),
        source,
    })
}

/// Everything a real-media publisher sends, loaded once per run and shared.
#[derive(Debug, Clone)]
pub struct EncodedMedia {
    pub audio: Arc<OpusClip>,
    pub camera: Arc<VideoClip>,
    pub screen: Arc<VideoClip>,
}

impl EncodedMedia {
    /// Makes or loads the clips in `dir` and encodes 10 s of voice.
    pub fn prepare(dir: &Path) -> Result<Self, ClipError> {
        Ok(Self {
            camera: Arc::new(clip(dir, &CAMERA)?),
            screen: Arc::new(clip(dir, &SCREEN)?),
            audio: Arc::new(OpusClip::encode(10.0, 0x5EED)?),
        })
    }
}
