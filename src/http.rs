//! HTTP routes: the web client, health, metrics and the signaling WebSocket.

use crate::{AppState, session};
use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use std::path::Path;
use tower_http::services::ServeDir;

/// Largest WebSocket message the transport buffers. The protocol's own limit (64 KiB) is
/// checked in the session so that it can answer with close code 1009.
const WS_TRANSPORT_LIMIT: usize = 1 << 20;

pub fn router(state: AppState, web_root: &Path) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ws", get(websocket))
        .nest("/dicomweb", crate::studies::router())
        .fallback_service(ServeDir::new(web_root).append_index_html_on_directories(true))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            r#"{{"status":"ok","version":"{}"}}"#,
            env!("CARGO_PKG_VERSION")
        ),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (rooms, participants) = state.rooms.counts();
    state.metrics.rooms.set(rooms as i64);
    state.metrics.participants.set(participants as i64);
    for (role, n) in state.rooms.counts_by_role() {
        state
            .metrics
            .participants_by_role
            .with_label_values(&[role.as_str()])
            .set(n as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// What one read of a signaling socket asks for. tungstenite zero-fills its whole read
/// buffer (128 KiB by default) before every read, also one that finds nothing: with
/// signaling messages of a few KiB that was most of a join's CPU in the WebSocket layer.
pub const WS_READ_BUFFER: usize = 8 * 1024;

async fn websocket(ws: WebSocketUpgrade, State(state): State<AppState>) -> impl IntoResponse {
    ws.max_message_size(WS_TRANSPORT_LIMIT)
        .max_frame_size(WS_TRANSPORT_LIMIT)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| session::run(socket, state))
}
