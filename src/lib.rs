//! The `consilium` server: configuration, HTTP, and the wiring of the service layer
//! (`consilium-signaling`) to the media layer (`consilium-sfu`).
//!
//! [`start`] runs a whole server in-process; `main.rs` and the integration tests both use it.

pub mod collab;
pub mod collab_store;
pub mod config;
pub mod http;
pub mod metrics;
pub mod session;
pub mod studies;

use anyhow::Context;
use consilium_sfu::{Sfu, SfuConfig, SfuHandle};
use consilium_signaling::rendezvous::Rendezvous;
use consilium_signaling::{RoomRegistry, TokenAuthority};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;
pub use metrics::Metrics;

/// What every request handler and session shares: one struct, cloned cheaply.
#[derive(Clone)]
pub struct AppState {
    pub rooms: Arc<RoomRegistry>,
    pub sfu: SfuHandle,
    pub auth: Option<TokenAuthority>,
    pub metrics: Metrics,
    /// The authority over every room's shared viewer and annotations (durable, SQLite).
    pub collab: Arc<collab::Collaboration>,
    /// The DICOMweb study store (uploaded studies, their index, decoded frames).
    pub studies: Arc<studies::StudyStore>,
    /// Joins made over HTTP, waiting for (or awaited by) the WebSocket that takes each over.
    pub joins: Arc<Rendezvous<session::Parked>>,
    /// How long a join over HTTP and its WebSocket wait for each other.
    pub attach_timeout: std::time::Duration,
    /// Turns true once when the server shuts down; every session watches it.
    pub shutdown: watch::Receiver<bool>,
}

/// A running server.
pub struct Server {
    pub http_addr: SocketAddr,
    pub media_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    http_task: JoinHandle<()>,
    media_task: JoinHandle<()>,
    /// Held to write the last viewer states once everything else has stopped.
    collab: Arc<collab::Collaboration>,
}

impl Server {
    /// Asks everything to stop and waits for it.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.http_task.await;
        let _ = self.media_task.await;
        self.collab.flush().await;
    }

    /// A sender that triggers shutdown (signal handlers hold one).
    pub fn shutdown_sender(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }

    /// Waits until the server stops (after a shutdown request).
    pub async fn wait(self) {
        let _ = self.http_task.await;
        let _ = self.media_task.await;
        self.collab.flush().await;
    }
}

/// Binds the HTTP listener and the media socket and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    let metrics = Metrics::new().context("registering metrics")?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let sfu_config = SfuConfig {
        connect_timeout: config.media_connect_timeout,
        ice_failed_timeout: config.media_silence_timeout,
        bandwidth_estimation: config.bandwidth_estimation,
        ..SfuConfig::new(config.media_bind, config.advertised_ip)
    };
    let (sfu, sfu_handle) = Sfu::bind(sfu_config, metrics.sfu.clone())
        .with_context(|| format!("binding the media socket {}", config.media_bind))?;
    let media_addr = sfu_handle.media_addr();
    let media_task = tokio::spawn(sfu.run(shutdown_rx.clone()));

    let studies = open_studies(&config).await?;
    let collab_store = collab_store::CollabStore::open(&config.data_dir).with_context(|| {
        format!(
            "opening the shared-viewer database in {}",
            config.data_dir.display()
        )
    })?;
    let collab = Arc::new(collab::Collaboration::new(
        collab_store,
        sfu_handle.clone(),
        metrics.clone(),
    ));
    let state = AppState {
        rooms: Arc::new(RoomRegistry::new(config.room_cap)),
        sfu: sfu_handle,
        auth: config
            .jwt_secret
            .as_deref()
            .map(|s| TokenAuthority::new(s.as_bytes())),
        metrics,
        collab: collab.clone(),
        studies,
        joins: Arc::default(),
        attach_timeout: config.attach_timeout,
        shutdown: shutdown_rx.clone(),
    };
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding {}", config.http))?;
    let http_addr = listener.local_addr()?;
    let app = http::router(state, &config.web_root);
    let mut http_shutdown = shutdown_rx;
    let http_task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok(Server {
        http_addr,
        media_addr,
        shutdown: shutdown_tx,
        http_task,
        media_task,
        collab,
    })
}

/// Opens the study store under `config.data_dir` and, on a fresh store with `demo_study`
/// set, writes the demo CT phantom into room `demo`.
async fn open_studies(config: &Config) -> anyhow::Result<Arc<studies::StudyStore>> {
    let data_dir = config.data_dir.clone();
    let limits = studies::StoreLimits {
        max_request_bytes: config.max_upload_bytes,
        max_file_bytes: config.max_instance_bytes,
        ..Default::default()
    };
    let demo = config.demo_study;
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = studies::StudyStore::open(&data_dir, limits)
            .with_context(|| format!("opening the study store in {}", data_dir.display()))?;
        if demo && store.is_empty()? {
            let started = std::time::Instant::now();
            studies::phantom::write_into(&store, studies::DEFAULT_ROOM)
                .context("writing the demo CT phantom")?;
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "wrote the demo CT phantom into room 'demo'"
            );
        }
        Ok(Arc::new(store))
    })
    .await
    .context("opening the study store")?
}
