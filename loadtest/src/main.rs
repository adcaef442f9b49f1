//! `loadtest`: synthetic WebRTC participants against a running Consilium server.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use loadtest::connect::{self, ConnectOptions};
use loadtest::run::{self as load_run, RunOptions};
use loadtest::scenario::Scenario;
use loadtest::units::{parse_duration, parse_percent};
use loadtest::wan::{self, WanOptions};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

const THROUGH_THE_RELAY: &str = "\
Connect time over an emulated WAN (no netem needed: all of 127.0.0.0/8 is loopback on Linux).
The SFU advertises <public-ip>:<media-port> to clients, so bind it on 127.0.0.2 but advertise
127.0.0.1, and let the relays listen on 127.0.0.1 with the same ports:

  consilium --http 127.0.0.2:8080 --media-ip 127.0.0.2 --public-ip 127.0.0.1 --media-port 7880
  loadtest wan --udp --listen 127.0.0.1:7880 --to 127.0.0.2:7880 --rtt 100ms --jitter 5ms --loss 1%
  loadtest wan --tcp --listen 127.0.0.1:8081 --to 127.0.0.2:8080 --rtt 100ms --jitter 5ms
  loadtest connect --url ws://127.0.0.1:8081/ws --joins 200 --concurrency 50 --report wan-100ms

Media then goes client → 127.0.0.1:7880 (relay) → 127.0.0.2:7880 (SFU) and back, and signaling
client → 127.0.0.1:8081 (relay) → 127.0.0.2:8080.";

#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Synthetic Consilium participants: load tests with real media, connect-time benchmarks and a WAN emulator",
    after_help = THROUGH_THE_RELAY
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure connect time: join rooms where someone already publishes, time each join
    /// from its start to the first remote RTP packet, leave, repeat.
    #[command(after_help = THROUGH_THE_RELAY)]
    Connect(ConnectArgs),
    /// A load test with real media: rooms of participants as a scenario file describes,
    /// publishing Opus and VP8 and measuring what they receive and what the server spends.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// A user-space WAN emulator: relay UDP and/or TCP with delay, jitter and loss.
    #[command(after_help = WAN_HELP)]
    Wan(WanArgs),
    /// Shared-viewer latency: a presenter's viewport changes and annotations, timed from
    /// the presenter's send to each follower's receipt through the server's authority.
    Sync(SyncArgs),
}

#[derive(Debug, Args)]
struct SyncArgs {
    /// Signaling URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// The room (a fresh one by default, so earlier annotations do not weigh in).
    #[arg(long)]
    room: Option<String>,
    /// Participants following the presenter.
    #[arg(long, default_value_t = 10)]
    followers: usize,
    /// How long the presenter keeps changing the view, e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Viewport changes per second.
    #[arg(long, default_value_t = 30.0)]
    viewer_rate: f64,
    /// Annotations per second (the server allows 10 a second after a burst of 30).
    #[arg(long, default_value_t = 2.0)]
    annotation_rate: f64,
    /// Participants also publish audio and video, as in a real board.
    #[arg(long)]
    media: bool,
    /// Directory for report.json (created if missing).
    #[arg(long, default_value = ".")]
    report: PathBuf,
}

const WAN_HELP: &str = "\
UDP: one relay socket on --listen; each client address gets its own upstream socket to --to,
and replies go back to that client. Each direction: delay rtt/2 ± jitter (uniform), loss with
probability --loss (independently per direction, so a round trip loses about twice that);
order is kept unless jitter reorders, as with netem.

TCP: accept on --listen, connect to --to, pipe both ways with each chunk delayed by
rtt/2 ± jitter, never reordered. TCP gets no loss: it would be retransmitted on the loopback leg
at once, which does not model a lossy WAN. The kernel completes the TCP handshake with the
relay at once, so the relay adds one RTT to the first client→server chunk instead: the client
sees its first answer 2 RTTs after connect(), as over a real path.

The relay stops by itself after --duration.";

#[derive(Debug, Args)]
struct ConnectArgs {
    /// Signaling URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Measured joins in total.
    #[arg(long, default_value_t = 200)]
    joins: usize,
    /// Most joins in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Participants per room: one long-lived publisher plus room-size − 1 joiners at a time.
    #[arg(long, default_value_t = 2)]
    room_size: usize,
    /// Directory for report.json and report.html (created if missing).
    #[arg(long, default_value = ".")]
    report: PathBuf,
    /// Most one join may take, start to first remote RTP (e.g. 15s); longer counts as failed.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    timeout: Duration,
    /// Measured joiners only receive (by default they publish audio and video, like a browser).
    #[arg(long)]
    receive_only: bool,
    /// Local IP for the participants' media sockets.
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: IpAddr,
    /// A name for this run in the report (e.g. "loopback" or "100 ms RTT").
    #[arg(long)]
    label: Option<String>,
    /// How the measured joiners join: `http` (`POST /join` with the offer while the
    /// WebSocket opens alongside: a round trip less) or `websocket` (a `join` message once
    /// the socket is open).
    #[arg(long, value_enum, default_value_t = JoinOver::Http)]
    join: JoinOver,
    /// Receive-only audio+video m-section pairs in each joiner's offer, as the web client
    /// makes: the room's tracks come in the answer. 0: they come by renegotiation.
    #[arg(long, default_value_t = 1)]
    receive_slots: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum JoinOver {
    Http,
    Websocket,
}

const RUN_HELP: &str = "\
Scenarios: loadtest/scenarios/tumour-board.toml (one board: presenter with camera and screen
share, 11 specialists, 2 observers), plan-qa.toml (4 people), ramp.toml (add boards until loss
> 0.5 % or latency p95 > 50 ms). The server's /metrics (same host:port as --url) gives its CPU,
memory and forwarded bytes, sampled every second. VP8 clips are made once with ffmpeg (cached in
$LOADTEST_CLIP_DIR or the temp dir). For capacity, pin the two processes to different cores:

  taskset -c 0 consilium --jwt-secret S &
  taskset -c 1 loadtest run --scenario loadtest/scenarios/ramp.toml --jwt-secret S --report ramp";

#[derive(Debug, Args)]
struct RunArgs {
    /// The scenario file (TOML).
    #[arg(long)]
    scenario: PathBuf,
    /// Signaling URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Directory for report.json and report.html (created if missing).
    #[arg(long, default_value = ".")]
    report: PathBuf,
    /// The server's JWT secret, so observers join with the observer role (in open demo
    /// mode nobody can ask for a role: they join as receive-only participants).
    #[arg(long, env = "CONSILIUM_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Local IP for the participants' media sockets.
    #[arg(long, default_value = "127.0.0.1")]
    bind_ip: IpAddr,
    /// Override the scenario's number of rooms.
    #[arg(long)]
    rooms: Option<usize>,
    /// Override the scenario's measured duration (e.g. 60s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

#[derive(Debug, Args)]
struct WanArgs {
    /// Address the relay listens on (UDP and/or TCP).
    #[arg(long)]
    listen: SocketAddr,
    /// Address the relay forwards to.
    #[arg(long)]
    to: SocketAddr,
    /// Round-trip time to add (half each way), e.g. 100ms or 0.1s.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    rtt: Duration,
    /// Uniform jitter, ± this much on each one-way delay.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    jitter: Duration,
    /// UDP loss per direction, e.g. 1% or 0.5%.
    #[arg(long, default_value = "0%", value_parser = parse_percent)]
    loss: f64,
    /// Relay UDP (the default when neither --udp nor --tcp is given).
    #[arg(long)]
    udp: bool,
    /// Relay TCP.
    #[arg(long)]
    tcp: bool,
    /// Relay both UDP and TCP on the same addresses.
    #[arg(long)]
    both: bool,
    /// Stop after this long.
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed for loss and jitter, for repeatable runs.
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOADTEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Connect(args) => run_connect(args).await,
        Command::Sync(args) => run_sync(args).await,
        Command::Run(args) => run_load(args).await,
        Command::Wan(args) => {
            let udp = args.udp || args.both || !args.tcp;
            let tcp = args.tcp || args.both;
            wan::run(WanOptions {
                listen: args.listen,
                to: args.to,
                udp,
                tcp,
                rtt: args.rtt,
                jitter: args.jitter,
                loss: args.loss,
                duration: args.duration,
                seed: args.seed,
            })
            .await
        }
    }
}

async fn run_load(args: RunArgs) -> anyhow::Result<()> {
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(rooms) = args.rooms {
        scenario.rooms = rooms.max(1);
    }
    if let Some(d) = args.duration {
        scenario.duration = d;
    }
    let report = load_run::run(RunOptions {
        scenario,
        url: args.url,
        jwt_secret: args.jwt_secret,
        bind_ip: args.bind_ip,
        clip_dir: loadtest::clips::default_cache_dir(),
        progress: true,
    })
    .await?;
    println!("{}", report.table());
    let mut files = vec![
        ("report.json", report.to_json()),
        ("report.html", report.html()),
    ];
    files.extend(report.ramp_charts());
    write_reports(&args.report, &files)
}

async fn run_sync(args: SyncArgs) -> anyhow::Result<()> {
    let room = args
        .room
        .unwrap_or_else(|| format!("sync-{:08x}", rand::random::<u32>()));
    let report = loadtest::sync::run(&loadtest::sync::SyncOptions {
        url: args.url,
        room,
        followers: args.followers,
        duration: args.duration,
        viewer_rate: args.viewer_rate,
        annotation_rate: args.annotation_rate,
        media: args.media,
    })
    .await?;
    let row = |name: &str, p: &loadtest::stats::Percentiles, sent: usize, got: usize| {
        format!(
            "{name:<22} p50 {:>7.2}  p95 {:>7.2}  p99 {:>7.2}  max {:>7.2} ms   sent {sent}, received {got}",
            p.p50, p.p95, p.p99, p.max
        )
    };
    println!(
        "{} followers, {:.1} s\n{}\n{}",
        report.followers,
        report.duration_s,
        row(
            "viewer → followers",
            &report.viewer_latency_ms,
            report.viewer_sent,
            report.viewer_received
        ),
        row(
            "annotation → followers",
            &report.annotation_latency_ms,
            report.annotations_sent,
            report.annotations_received
        ),
    );
    write_reports(
        &args.report,
        &[("report.json", serde_json::to_string_pretty(&report)?)],
    )
}

/// Writes a benchmark's report files into `dir` (created if missing) and says where.
fn write_reports(dir: &std::path::Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path.display().to_string());
    }
    println!("wrote {}", written.join(" and "));
    Ok(())
}

async fn run_connect(args: ConnectArgs) -> anyhow::Result<()> {
    let report = connect::run(&ConnectOptions {
        url: args.url,
        joins: args.joins,
        concurrency: args.concurrency,
        room_size: args.room_size,
        timeout: args.timeout,
        receive_only: args.receive_only,
        bind_ip: args.bind_ip,
        label: args.label,
        join_over_http: args.join == JoinOver::Http,
        receive_slots: args.receive_slots,
        progress: true,
    })
    .await?;
    println!("{}", report.table());
    write_reports(
        &args.report,
        &[
            ("report.json", report.to_json()),
            ("report.html", report.html()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_parses_the_documented_commands() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "loadtest",
            "wan",
            "--listen",
            "127.0.0.1:7880",
            "--to",
            "127.0.0.2:7880",
            "--rtt",
            "100ms",
            "--jitter",
            "5ms",
            "--loss",
            "1%",
        ])
        .unwrap();
        let Command::Wan(w) = cli.command else {
            panic!("wan")
        };
        assert_eq!(w.rtt, Duration::from_millis(100));
        assert_eq!(w.loss, 0.01);
        assert_eq!(w.duration, Duration::from_secs(600));
        let cli = Cli::try_parse_from([
            "loadtest",
            "connect",
            "--url",
            "ws://127.0.0.1:8080/ws",
            "--joins",
            "200",
            "--concurrency",
            "50",
            "--report",
            "/tmp/x",
        ])
        .unwrap();
        let Command::Connect(c) = cli.command else {
            panic!("connect")
        };
        assert_eq!((c.joins, c.concurrency, c.room_size), (200, 50, 2));
        assert!(Cli::try_parse_from(["loadtest", "wan", "--listen", "x", "--to", "y"]).is_err());
        let cli = Cli::try_parse_from([
            "loadtest",
            "run",
            "--scenario",
            "loadtest/scenarios/tumour-board.toml",
            "--url",
            "ws://127.0.0.1:8080/ws",
            "--report",
            "/tmp/r",
            "--duration",
            "5s",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("run")
        };
        assert_eq!(r.duration, Some(Duration::from_secs(5)));
        assert_eq!(r.report, PathBuf::from("/tmp/r"));
    }
}
