//! The DICOMweb HTTP interface (`/dicomweb/...`): STOW-RS, QIDO-RS, WADO-RS, and the room
//! check in front of all of them.

use super::index::{InstanceRow, StudyFilter};
use super::stow::{self, StowError};
use super::{DEFAULT_ROOM, StoreError, StudyStore, json, pixels::DecodeError};
use crate::AppState;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use consilium_signaling::{Role, SignalingError};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Media type of DICOM JSON.
const DICOM_JSON: &str = "application/dicom+json";
/// Media type of a decoded frame (explicit VR little endian = uncompressed LE values).
const FRAME_TYPE: &str = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1";

/// Routes under `/dicomweb` (nest it there).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/studies", get(search_studies).post(store_instances))
        .route("/studies/{study}/series", get(search_series))
        .route(
            "/studies/{study}/series/{series}/instances",
            get(search_instances),
        )
        .route(
            "/studies/{study}/series/{series}/metadata",
            get(series_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/frames",
            get(retrieve_series_frames),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}",
            get(retrieve_instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/metadata",
            get(instance_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
            get(retrieve_frames),
        )
        .merge(super::export::router())
        // Bodies are streamed to disk and limited by the store itself.
        .layer(DefaultBodyLimit::disable())
}

/// Everything a DICOMweb request can fail with, mapped to a status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a token is required (Authorization: Bearer … or ?token=)")]
    NoToken,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Stow(#[from] StowError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the request was interrupted: {0}")]
    Task(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::NoToken | ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Stow(e) => match e {
                StowError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                StowError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                StowError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            },
            ApiError::Store(StoreError::Decode(DecodeError::NoSuchFrame(..))) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Store(StoreError::Decode(DecodeError::NoPixelData)) => StatusCode::NOT_FOUND,
            // A codec that cannot decode this instance: the request is fine, the server
            // cannot fulfil it; say why.
            ApiError::Store(StoreError::Decode(_)) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Store(_) | ApiError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "DICOMweb request failed");
        }
        let body = serde_json::json!({ "error": self.to_string() });
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Runs blocking store work (SQLite, file I/O, decoding) off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Task(e.to_string()))?
}

/// Who is asking: in open demo mode, anybody; with auth on, the holder of a valid token
/// for one room.
pub(super) enum Caller {
    Open,
    Member { room: String, role: Role },
}

pub(super) fn caller(
    state: &AppState,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<Caller, ApiError> {
    let Some(auth) = &state.auth else {
        return Ok(Caller::Open);
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let token = bearer
        .or(q.get("token").map(String::as_str))
        .ok_or(ApiError::NoToken)?;
    let claims = auth.verify_claims(token).map_err(|e| match e {
        SignalingError::Forbidden(what) => ApiError::Forbidden(what.to_string()),
        other => ApiError::Unauthorized(other.to_string()),
    })?;
    Ok(Caller::Member {
        room: claims.room,
        role: claims.role,
    })
}

impl Caller {
    pub(super) fn may_read(&self, room: &str) -> Result<(), ApiError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Member { room: mine, .. } if mine == room => Ok(()),
            Caller::Member { .. } => Err(ApiError::Forbidden(
                "the token is for another room than this study's".into(),
            )),
        }
    }

    fn room_for_query(&self, asked: Option<&String>) -> Result<String, ApiError> {
        match (self, asked) {
            (Caller::Open, Some(r)) => Ok(r.clone()),
            (Caller::Open, None) => Ok(DEFAULT_ROOM.to_owned()),
            (Caller::Member { room, .. }, None) => Ok(room.clone()),
            (Caller::Member { room, .. }, Some(r)) if r == room => Ok(room.clone()),
            (Caller::Member { .. }, Some(_)) => {
                Err(ApiError::Forbidden("the token is for another room".into()))
            }
        }
    }
}

/// Base of RetrieveURLs in responses, from the Host the client used.
pub(super) fn base_url(headers: &HeaderMap) -> String {
    match headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !host.contains(['/', ' ', '"']) => format!("http://{host}/dicomweb"),
        _ => "/dicomweb".to_owned(),
    }
}

fn dicom_json(v: Value) -> Response {
    ([(header::CONTENT_TYPE, DICOM_JSON)], v.to_string()).into_response()
}

/// Checks the caller may see `study` and returns nothing else: 404 for an unknown study.
async fn authorize_study(
    store: &Arc<StudyStore>,
    caller: &Caller,
    study: &str,
) -> Result<(), ApiError> {
    let s = store.clone();
    let id = study.to_owned();
    let room = blocking(move || Ok(s.study_room(&id)?)).await?;
    let room = room.ok_or_else(|| ApiError::NotFound(format!("no study {study}")))?;
    caller.may_read(&room)
}

/// STOW-RS: `POST /dicomweb/studies?room=R`.
async fn store_instances(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    let room = who.room_for_query(q.get("room"))?;
    if let Caller::Member {
        role: Role::Observer,
        ..
    } = who
    {
        return Err(ApiError::Forbidden(
            "observers cannot upload studies".into(),
        ));
    }
    consilium_signaling::validate::room_name(&room)
        .map_err(|e| ApiError::BadRequest(format!("room: {e}")))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let report = stow::receive(
        state.studies.clone(),
        room,
        &content_type,
        body.into_data_stream(),
    )
    .await?;
    let status = StatusCode::from_u16(report.status()).unwrap_or(StatusCode::OK);
    Ok((status, dicom_json(report.to_json(&base_url(&headers)))).into_response())
}

fn filter_from(q: &HashMap<String, String>) -> Result<StudyFilter, ApiError> {
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| q.get(*k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let num = |keys: &[&str]| -> Result<Option<u32>, ApiError> {
        get(keys)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::BadRequest(format!("{} must be a number", keys[0])))
            })
            .transpose()
    };
    Ok(StudyFilter {
        study_uid: get(&["StudyInstanceUID", "0020000D"]),
        patient_id: get(&["PatientID", "00100020"]),
        patient_name: get(&["PatientName", "00100010"]),
        study_date: get(&["StudyDate", "00080020"]),
        accession_number: get(&["AccessionNumber", "00080050"]),
        modality: get(&["ModalitiesInStudy", "00080061", "Modality"]),
        limit: num(&["limit"])?,
        offset: num(&["offset"])?,
    })
}

/// QIDO-RS: `GET /dicomweb/studies?room=R` (with PatientID, PatientName, StudyDate,
/// AccessionNumber, ModalitiesInStudy, StudyInstanceUID, limit, offset).
async fn search_studies(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    let room = who.room_for_query(q.get("room"))?;
    let filter = filter_from(&q)?;
    let store = state.studies.clone();
    let rows = blocking(move || Ok(store.studies(&room, &filter)?)).await?;
    let base = base_url(&headers);
    Ok(dicom_json(Value::Array(
        rows.iter().map(|s| json::study(s, &base)).collect(),
    )))
}

/// QIDO-RS: `GET /dicomweb/studies/{study}/series`.
async fn search_series(
    State(state): State<AppState>,
    Path(study): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    authorize_study(&state.studies, &who, &study).await?;
    let store = state.studies.clone();
    let rows = blocking(move || Ok(store.series(&study)?)).await?;
    let base = base_url(&headers);
    Ok(dicom_json(Value::Array(
        rows.iter().map(|s| json::series(s, &base)).collect(),
    )))
}

async fn ordered_instances(
    state: &AppState,
    who: &Caller,
    study: String,
    series: String,
) -> Result<Vec<InstanceRow>, ApiError> {
    authorize_study(&state.studies, who, &study).await?;
    let store = state.studies.clone();
    let rows = blocking(move || Ok(store.instances(&study, &series)?)).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound("no such series in this study".into()));
    }
    Ok(rows)
}

/// QIDO-RS: `GET /dicomweb/studies/{study}/series/{series}/instances`, in slice order.
async fn search_instances(
    State(state): State<AppState>,
    Path((study, series)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    let rows = ordered_instances(&state, &who, study, series).await?;
    let base = base_url(&headers);
    Ok(dicom_json(Value::Array(
        rows.iter().map(|i| json::instance(i, &base)).collect(),
    )))
}

/// WADO-RS: `GET .../series/{series}/metadata`: every instance's data set without pixel
/// data, in slice order.
async fn series_metadata(
    State(state): State<AppState>,
    Path((study, series)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    let rows = ordered_instances(&state, &who, study, series).await?;
    let store = state.studies.clone();
    let all = blocking(move || {
        rows.iter()
            .map(|r| store.metadata(r).map_err(ApiError::from))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(dicom_json(Value::Array(all)))
}

async fn one_instance(
    state: &AppState,
    who: &Caller,
    study: String,
    series: String,
    sop: String,
) -> Result<InstanceRow, ApiError> {
    authorize_study(&state.studies, who, &study).await?;
    let store = state.studies.clone();
    blocking(move || {
        store
            .instance(&study, &series, &sop)?
            .ok_or_else(|| ApiError::NotFound(format!("no instance {sop} in this series")))
    })
    .await
}

/// WADO-RS: `GET .../instances/{sop}/metadata`.
async fn instance_metadata(
    State(state): State<AppState>,
    Path((study, series, sop)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    let row = one_instance(&state, &who, study, series, sop).await?;
    let store = state.studies.clone();
    let v = blocking(move || Ok(store.metadata(&row)?)).await?;
    Ok(dicom_json(Value::Array(vec![v])))
}

/// WADO-RS: `GET .../instances/{sop}`: the stored Part-10 file as `application/dicom`.
async fn retrieve_instance(
    State(state): State<AppState>,
    Path((study, series, sop)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    let row = one_instance(&state, &who, study, series, sop).await?;
    let store = state.studies.clone();
    let path = blocking(move || Ok(store.file_of(&row)?)).await?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::Store(StoreError::Io(e)))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::Store(StoreError::Io(e)))?
        .len();
    // Streamed: a 2 GB instance never sits in memory.
    let chunks = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/dicom".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

fn frame_numbers(list: &str) -> Result<Vec<u32>, ApiError> {
    let nums: Vec<u32> = list
        .split(',')
        .map(|s| s.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            ApiError::BadRequest(format!("frame list '{list}' is not a list of numbers"))
        })?;
    if nums.is_empty() || nums.len() > 10_000 || nums.contains(&0) {
        return Err(ApiError::BadRequest("frames are numbered from 1".into()));
    }
    Ok(nums)
}

/// A decoded frame held by the pixel cache, as a response body's owner.
struct CachedFrame(super::FrameRef);

impl AsRef<[u8]> for CachedFrame {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// WADO-RS: `GET .../instances/{sop}/frames/{n}`: decoded frame(s) as little-endian stored
/// values. One frame: `application/octet-stream`; several (`1,2,3`): multipart/related.
async fn retrieve_frames(
    State(state): State<AppState>,
    Path((study, series, sop, list)): Path<(String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    let wanted = frame_numbers(&list)?;
    let row = one_instance(&state, &who, study, series, sop).await?;
    // The stored file's hash names its content: a replaced instance gets a new tag, so a
    // browser revalidating a frame it holds (reload, second tab) gets a 304 without the
    // server decoding or sending it again.
    let etag = format!("\"{}-{}\"", &row.sha256[..row.sha256.len().min(32)], list);
    let etag =
        HeaderValue::from_str(&etag).map_err(|_| ApiError::BadRequest("frame list".into()))?;
    let cache = HeaderValue::from_static("private, no-cache");
    if if_none_match(&headers, &etag) {
        return Ok(not_modified(etag, cache));
    }
    let store = state.studies.clone();
    let parts = blocking(move || {
        wanted
            .iter()
            .map(|n| store.frame(&row, *n).map_err(ApiError::from))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    if parts.len() == 1 {
        // The body borrows the cached decoded pixels: no 512 KiB copy per CT slice, and 20
        // viewers scrolling the same series share one buffer.
        let one = parts.into_iter().next().expect("one frame");
        let body = Body::from(bytes::Bytes::from_owner(CachedFrame(one)));
        let mut resp = body.into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FRAME_TYPE));
        resp.headers_mut().insert(header::ETAG, etag);
        resp.headers_mut().insert(header::CACHE_CONTROL, cache);
        return Ok(resp);
    }
    let parts: Vec<&[u8]> = parts.iter().map(|f| f.bytes()).collect();
    let boundary = "consilium-frame-boundary-7d1e";
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: {FRAME_TYPE}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/related; type=\"application/octet-stream\"; boundary={boundary}");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&ct)
                    .map_err(|_| ApiError::BadRequest("frame list".into()))?,
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response())
}

/// Most frames one series-level frame request may name: a 512×512 CT slice is 512 KiB, so a
/// full batch is 32 MiB on the wire (streamed, not held), and the URL stays under 5 KB.
pub const MAX_BATCH_FRAMES: usize = 64;

/// The `instances` list of a series-level frame request: `SOP[:frame]` (frame 1 when left
/// out), comma-separated, in the order the client wants them.
fn batch_list(list: Option<&String>) -> Result<Vec<(String, u32)>, ApiError> {
    let list = list.map(|s| s.trim()).unwrap_or_default();
    if list.is_empty() {
        return Err(ApiError::BadRequest(
            "name the frames: ?instances=SOP[:frame],...".into(),
        ));
    }
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    if entries.len() > MAX_BATCH_FRAMES {
        return Err(ApiError::BadRequest(format!(
            "{} frames asked for, at most {MAX_BATCH_FRAMES} a request",
            entries.len()
        )));
    }
    entries
        .into_iter()
        .map(|e| {
            let (sop, frame) = match e.split_once(':') {
                Some((sop, n)) => (sop, n.parse::<u32>().ok().filter(|n| *n > 0)),
                None => (e, Some(1)),
            };
            let uid_like = !sop.is_empty()
                && sop.len() <= 64
                && sop.bytes().all(|b| b.is_ascii_digit() || b == b'.');
            match frame {
                Some(n) if uid_like => Ok((sop.to_owned(), n)),
                _ => Err(ApiError::BadRequest(format!(
                    "'{}' is not SOP[:frame] (a UID, frames numbered from 1)",
                    e.chars().take(80).collect::<String>()
                ))),
            }
        })
        .collect()
}

/// Consilium extension (docs/dicomweb.md): `GET .../series/{series}/frames?instances=...`,
/// the decoded frames of several instances of one series in one multipart/related response,
/// each part as `.../frames/{n}` would answer it. A viewer opening a CT needs a frame from each
/// of a few hundred single-frame instances; one request per frame costs the browser more
/// than the bytes do (measured in docs/benchmarks.md). Parts are streamed in the order asked,
/// each with `Content-Location` and `Content-Length`; a frame that cannot be decoded once the
/// response has started becomes a JSON part with its reason, the rest still follow.
async fn retrieve_series_frames(
    State(state): State<AppState>,
    Path((study, series)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    let wanted = batch_list(q.get("instances"))?;
    authorize_study(&state.studies, &who, &study).await?;
    let store = state.studies.clone();
    let (st, se) = (study.clone(), series.clone());
    let rows = blocking(move || {
        wanted
            .into_iter()
            .map(|(sop, n)| match store.instance(&st, &se, &sop)? {
                Some(row) if n <= row.record.frames.unwrap_or(1).max(1) => Ok((row, n)),
                Some(row) => Err(ApiError::NotFound(format!(
                    "instance {sop} has {} frame(s), not {n}",
                    row.record.frames.unwrap_or(1).max(1)
                ))),
                None => Err(ApiError::NotFound(format!(
                    "no instance {sop} in this series"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    let etag = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (row, n) in &rows {
            h.update(row.sha256.as_bytes());
            h.update(n.to_le_bytes());
        }
        let hex: String = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        HeaderValue::from_str(&format!("\"b-{hex}\"")).expect("hex is a header value")
    };
    let cache = HeaderValue::from_static("private, no-cache");
    if if_none_match(&headers, &etag) {
        return Ok(not_modified(etag, cache));
    }
    let boundary = "consilium-frames-5b3c";
    let store = state.studies.clone();
    let base = format!("/dicomweb/studies/{study}/series/{series}/instances");
    // One frame decoded ahead of the one being sent: decoding and writing overlap.
    let parts = futures_util::stream::iter(rows)
        .map(move |(row, n)| {
            let store = store.clone();
            async move {
                let sop = row.record.sop_uid.clone();
                (sop, n, blocking(move || Ok(store.frame(&row, n)?)).await)
            }
        })
        .buffered(2)
        .map(move |(sop, n, frame)| {
            let location = format!("{base}/{sop}/frames/{n}");
            let (kind, body) = match frame {
                Ok(f) => (FRAME_TYPE, bytes::Bytes::from_owner(CachedFrame(f))),
                Err(e) => {
                    tracing::warn!(%sop, frame = n, error = %e, "frame of a batch failed");
                    let j = serde_json::json!({ "error": e.to_string() }).to_string();
                    ("application/json", bytes::Bytes::from(j))
                }
            };
            let head = format!(
                "--{boundary}\r\nContent-Type: {kind}\r\nContent-Location: {location}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            futures_util::stream::iter([
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(head)),
                Ok(body),
                Ok(bytes::Bytes::from_static(b"\r\n")),
            ])
        })
        .flatten()
        .chain(futures_util::stream::once(async move {
            Ok(bytes::Bytes::from(format!("--{boundary}--\r\n")))
        }));
    let ct = format!("multipart/related; type=\"application/octet-stream\"; boundary={boundary}");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&ct).expect("boundary is a header value"),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache),
        ],
        Body::from_stream(parts),
    )
        .into_response())
}

/// Whether the request's `If-None-Match` names `etag` (the client holds that response).
fn if_none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers.get(header::IF_NONE_MATCH).is_some_and(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == etag.as_bytes())
    })
}

fn not_modified(etag: HeaderValue, cache: HeaderValue) -> Response {
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    resp.headers_mut().insert(header::ETAG, etag);
    resp.headers_mut().insert(header::CACHE_CONTROL, cache);
    resp
}
