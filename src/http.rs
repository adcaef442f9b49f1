//! HTTP routes: the web client, health, metrics and the signaling WebSocket.

use crate::{AppState, session};
use axum::Router;
use axum::extract::rejection::StringRejection;
use axum::extract::{DefaultBodyLimit, Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use consilium_signaling::rendezvous::valid_session_key;
use consilium_signaling::{ServerMessage, SignalingError};
use serde::Deserialize;
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
        .route(
            "/join",
            post(join).layer(DefaultBodyLimit::max(
                consilium_signaling::protocol::MAX_FRAME_BYTES,
            )),
        )
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

/// The session key a join over HTTP and its WebSocket both name (`?session=`).
#[derive(Deserialize)]
struct SessionQuery {
    session: Option<String>,
}

fn session_key(query: &SessionQuery) -> Result<Option<String>, SignalingError> {
    match &query.session {
        None => Ok(None),
        Some(key) if valid_session_key(key) => Ok(Some(key.clone())),
        Some(_) => Err(SignalingError::BadMessage(
            "the session key is 22 to 64 characters of A-Z, a-z, 0-9, '_' and '-'".into(),
        )),
    }
}

/// A refusal over HTTP: the status, and the same `error` message the WebSocket would send.
fn refusal(err: &SignalingError) -> Response {
    let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        ServerMessage::error(err).to_json(),
    )
        .into_response()
}

async fn websocket(
    ws: WebSocketUpgrade,
    Query(query): Query<SessionQuery>,
    State(state): State<AppState>,
) -> Response {
    let key = match session_key(&query) {
        Ok(key) => key,
        Err(e) => return refusal(&e),
    };
    ws.max_message_size(WS_TRANSPORT_LIMIT)
        .max_frame_size(WS_TRANSPORT_LIMIT)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            match key {
                Some(key) => session::attach(socket, state, key).await,
                None => session::run(socket, state).await,
            }
        })
}

/// `POST /join?session=KEY`: a `join` message in, the `joined` message (with the answer)
/// out; the WebSocket that names the same key carries the rest of the session.
async fn join(
    Query(query): Query<SessionQuery>,
    State(state): State<AppState>,
    body: Result<String, StringRejection>,
) -> Response {
    // Over the size limit, or not UTF-8: the same JSON refusal as any bad join, with the
    // rejection's own status (413 for the size).
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let err =
                SignalingError::BadMessage(format!("the join's body: {}", rejection.body_text()));
            let mut response = refusal(&err);
            *response.status_mut() = rejection.status();
            return response;
        }
    };
    let key = match session_key(&query) {
        Ok(Some(key)) => key,
        Ok(None) => {
            return refusal(&SignalingError::BadMessage(
                "POST /join needs ?session=KEY, the key its WebSocket will name".into(),
            ));
        }
        Err(e) => return refusal(&e),
    };
    match session::join_over_http(state, key, &body).await {
        Ok(joined) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            joined.to_json(),
        )
            .into_response(),
        Err(e) => refusal(&e),
    }
}
