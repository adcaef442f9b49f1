//! Server configuration: command-line flags, `CONSILIUM_*` environment variables and an
//! optional TOML file, in that order of precedence, over built-in defaults that need no
//! external service.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_SILENCE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_UPLOAD: u64 = 4 << 30;
const DEFAULT_MAX_INSTANCE: u64 = 2 << 30;

/// Flags of `consilium serve` (also the default command). Every flag has an environment
/// variable; a value given nowhere comes from `--config` or the default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flags, with '_' for '-').
    #[arg(long, env = "CONSILIUM_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP and WebSocket listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "CONSILIUM_HTTP")]
    pub http: Option<SocketAddr>,
    /// UDP port shared by every media connection [default: 7880]; 0 picks a free one.
    #[arg(long, env = "CONSILIUM_MEDIA_PORT")]
    pub media_port: Option<u16>,
    /// IP the media socket binds to [default: the HTTP listen IP].
    #[arg(long, env = "CONSILIUM_MEDIA_IP")]
    pub media_ip: Option<IpAddr>,
    /// Address advertised to browsers (public side of a 1:1 NAT) [default: the media IP].
    #[arg(long, env = "CONSILIUM_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// Secret for HS256 invitation tokens. Without one the server runs in open demo mode.
    #[arg(long, env = "CONSILIUM_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Most participants in one room [default: 50].
    #[arg(long, env = "CONSILIUM_ROOM_CAP")]
    pub room_cap: Option<usize>,
    /// Directory of the web client [default: the web-client/ folder of this source tree].
    #[arg(long, env = "CONSILIUM_WEB_ROOT")]
    pub web_root: Option<PathBuf>,
    /// Directory for everything users make: uploaded studies, annotations, decisions
    /// [default: ./data]. Created if missing.
    #[arg(long, env = "CONSILIUM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Write the synthetic CT phantom into room `demo` when the study store is empty
    /// [default: true].
    #[arg(long, env = "CONSILIUM_DEMO_STUDY")]
    pub demo_study: Option<bool>,
    /// Estimate each subscriber's bandwidth (send-side congestion control on what the SFU
    /// sends) for the `consilium_subscriber_bandwidth_estimate_bits` metric [default: false;
    /// costs server CPU and memory per subscriber, docs/operations.md].
    #[arg(long, env = "CONSILIUM_BANDWIDTH_ESTIMATION")]
    pub bandwidth_estimation: Option<bool>,
    /// Largest STOW-RS upload (request body) in bytes [default: 4 GiB].
    #[arg(long, env = "CONSILIUM_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Largest single DICOM file (or zip entry) in bytes [default: 2 GiB].
    #[arg(long, env = "CONSILIUM_MAX_INSTANCE_BYTES")]
    pub max_instance_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    http: Option<SocketAddr>,
    media_port: Option<u16>,
    media_ip: Option<IpAddr>,
    public_ip: Option<IpAddr>,
    jwt_secret: Option<String>,
    room_cap: Option<usize>,
    web_root: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    demo_study: Option<bool>,
    bandwidth_estimation: Option<bool>,
    max_upload_bytes: Option<u64>,
    max_instance_bytes: Option<u64>,
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: SocketAddr,
    pub media_bind: SocketAddr,
    pub advertised_ip: IpAddr,
    pub jwt_secret: Option<String>,
    pub room_cap: usize,
    pub web_root: PathBuf,
    /// Where studies, annotations and the databases live.
    pub data_dir: PathBuf,
    /// Write the demo CT phantom into room `demo` when the study store is empty.
    pub demo_study: bool,
    /// Estimate each subscriber's bandwidth (`SfuConfig::bandwidth_estimation`).
    pub bandwidth_estimation: bool,
    /// Largest STOW-RS request body.
    pub max_upload_bytes: u64,
    /// Largest single DICOM file or zip entry in an upload.
    pub max_instance_bytes: u64,
    /// A media connection that is not up after this long is dropped.
    pub media_connect_timeout: Duration,
    /// A media connection silent for this long is dropped (browsers send consent checks
    /// every few seconds).
    pub media_silence_timeout: Duration,
    /// How long a join over HTTP and its WebSocket wait for each other (`POST /join`).
    pub attach_timeout: Duration,
}

impl Config {
    /// A configuration for tests: loopback, free ports, open mode.
    pub fn for_tests() -> Self {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Self {
            http: SocketAddr::new(lo, 0),
            media_bind: SocketAddr::new(lo, 0),
            advertised_ip: lo,
            jwt_secret: None,
            room_cap: 50,
            web_root: default_web_root(),
            data_dir: test_data_dir(),
            demo_study: false,
            bandwidth_estimation: false,
            max_upload_bytes: DEFAULT_MAX_UPLOAD,
            max_instance_bytes: DEFAULT_MAX_INSTANCE,
            media_connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            media_silence_timeout: DEFAULT_SILENCE_TIMEOUT,
            attach_timeout: crate::session::ATTACH_TIMEOUT,
        }
    }

    /// Resolves flags and environment over the TOML file over defaults.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let http = args
            .http
            .or(file.http)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let media_ip = args.media_ip.or(file.media_ip).unwrap_or(http.ip());
        let media_port = args.media_port.or(file.media_port).unwrap_or(7880);
        let advertised_ip = match args.public_ip.or(file.public_ip) {
            Some(ip) => ip,
            None if media_ip.is_unspecified() => bail!(
                "the media socket binds to {media_ip}, which browsers cannot be told to use: \
                 give the address they reach this server at with --public-ip"
            ),
            None => media_ip,
        };
        let room_cap = args.room_cap.or(file.room_cap).unwrap_or(50);
        if room_cap == 0 {
            bail!("--room-cap must be at least 1");
        }
        let jwt_secret = args
            .jwt_secret
            .or(file.jwt_secret)
            .filter(|s| !s.is_empty());
        Ok(Self {
            http,
            media_bind: SocketAddr::new(media_ip, media_port),
            advertised_ip,
            jwt_secret,
            room_cap,
            web_root: args
                .web_root
                .or(file.web_root)
                .unwrap_or_else(default_web_root),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("data")),
            demo_study: args.demo_study.or(file.demo_study).unwrap_or(true),
            bandwidth_estimation: args
                .bandwidth_estimation
                .or(file.bandwidth_estimation)
                .unwrap_or(false),
            max_upload_bytes: args
                .max_upload_bytes
                .or(file.max_upload_bytes)
                .unwrap_or(DEFAULT_MAX_UPLOAD),
            max_instance_bytes: args
                .max_instance_bytes
                .or(file.max_instance_bytes)
                .unwrap_or(DEFAULT_MAX_INSTANCE),
            media_connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            media_silence_timeout: DEFAULT_SILENCE_TIMEOUT,
            attach_timeout: crate::session::ATTACH_TIMEOUT,
        })
    }
}

/// A fresh, empty directory under the system temp dir, one per call, so that tests running
/// servers side by side never share a database.
fn test_data_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "consilium-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The web client next to the sources when run with cargo, else `./web-client`.
pub fn default_web_root() -> PathBuf {
    let beside_sources = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web-client");
    if beside_sources.is_dir() {
        beside_sources
    } else {
        PathBuf::from("web-client")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = std::env::temp_dir().join(format!("consilium-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "media_port = 9000\nroom_cap = 12\njwt_secret = \"s\"\n",
        )
        .unwrap();
        let c = Config::resolve(ServeArgs {
            config: Some(path.clone()),
            room_cap: Some(3),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.media_bind.port(), 9000);
        assert_eq!(c.room_cap, 3);
        assert_eq!(c.jwt_secret.as_deref(), Some("s"));
        assert_eq!(c.http.port(), 8080);
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(
            Config::resolve(ServeArgs {
                config: Some(path),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn wildcard_media_needs_public_ip() {
        let wild = ServeArgs {
            media_ip: Some("0.0.0.0".parse().unwrap()),
            ..Default::default()
        };
        assert!(Config::resolve(wild.clone()).is_err());
        let c = Config::resolve(ServeArgs {
            public_ip: Some("203.0.113.7".parse().unwrap()),
            ..wild
        })
        .unwrap();
        assert_eq!(c.advertised_ip.to_string(), "203.0.113.7");
    }
}
