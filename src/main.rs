//! `consilium`: run the server, or print an invitation link.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use consilium::config::{Config, ServeArgs};
use consilium_signaling::{Role, TokenAuthority, validate};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "consilium",
    version,
    about = "Tele-consultation media server for tumour boards and plan review"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Print a join link with a signed invitation token.
    Invite(InviteArgs),
}

#[derive(clap::Args)]
struct InviteArgs {
    #[arg(long)]
    room: String,
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "participant")]
    role: Role,
    /// The hospital's id for the person (the token's `sub`): with it, they remain the author
    /// of their annotations on every join, whatever display name a later link carries.
    #[arg(long)]
    user_id: Option<String>,
    /// How long the link is valid, in hours.
    #[arg(long, default_value_t = 24)]
    hours: u64,
    /// The server's address as participants reach it.
    #[arg(
        long,
        env = "CONSILIUM_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    base_url: String,
    #[arg(long, env = "CONSILIUM_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONSILIUM_LOG").unwrap_or_else(|_| {
                "info,rtc=warn,rtc_ice=warn,rtc_dtls=warn,rtc_sctp=warn".into()
            }),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Invite(args)) => invite(args),
        Some(Command::Serve(args)) => serve(args).await,
        None => serve(cli.serve).await,
    }
}

fn invite(args: InviteArgs) -> anyhow::Result<()> {
    let InviteArgs {
        room,
        name,
        role,
        user_id,
        hours,
        base_url,
        jwt_secret,
    } = args;
    let room = room.as_str();
    let Some(secret) = jwt_secret.filter(|s| !s.is_empty()) else {
        bail!("an invitation needs the server's secret: --jwt-secret or CONSILIUM_JWT_SECRET");
    };
    validate::room_name(room).map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = validate::display_name(&name).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(id) = &user_id {
        if id.is_empty() {
            bail!("--user-id must not be empty");
        }
        consilium_signaling::check_sub(id).map_err(|_| {
            anyhow::anyhow!(
                "--user-id is at most {} bytes without control characters",
                consilium_signaling::auth::MAX_SUB_BYTES
            )
        })?;
    }
    let token = TokenAuthority::new(secret.as_bytes()).issue_for(
        room,
        &name,
        role,
        user_id.as_deref(),
        Duration::from_secs(hours * 3600),
    );
    println!(
        "{}/?room={}&name={}&token={}",
        base_url.trim_end_matches('/'),
        percent_encode(room),
        percent_encode(&name),
        token
    );
    Ok(())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args)?;
    let open_mode = config.jwt_secret.is_none();
    let server = consilium::start(config.clone())
        .await
        .context("starting the server")?;
    println!("Consilium is running.");
    println!("  Open  http://{}/", server.http_addr);
    println!(
        "  Media UDP port {} (advertised as {})",
        server.media_addr.port(),
        server.media_addr
    );
    if open_mode {
        let banner = "!".repeat(78);
        eprintln!("{banner}");
        eprintln!("!! AUTH IS OFF: open demo mode. Anyone who reaches this server can join any");
        eprintln!("!! room. Set --jwt-secret (CONSILIUM_JWT_SECRET) before real patient data.");
        eprintln!("{banner}");
    } else {
        println!("  Auth  on: joining needs an invitation (consilium invite --room R --name N)");
    }
    let stop = server.shutdown_sender();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    server.wait().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
