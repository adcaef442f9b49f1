//! The shared-viewer messages of `docs/collaboration.md`, typed, and the validation of the
//! untrusted ones.
//!
//! Everything here is plain data: the state machine in [`crate::collab`] decides what the
//! messages mean. Validation lives here so that every limit the document promises is in one
//! place, next to the types it constrains.

use crate::ParticipantId;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Largest ViewerState, as serialised: the presenter sends one per animation frame, so it
/// must stay small, and late joiners get it inside the first snapshot frame.
pub const MAX_VIEWER_BYTES: usize = 8 * 1024;
/// Longest annotation text, in characters (a tumour-board remark, not a report).
pub const MAX_TEXT_CHARS: usize = 2000;
/// Most points of a freehand outline; with two decimals each that stays well inside one
/// data-channel message.
pub const MAX_FREEHAND_POINTS: usize = 2000;
/// Largest absolute coordinate, in image pixels. Real images are a few thousand pixels wide;
/// anything beyond this is garbage that would only bloat every client.
pub const MAX_COORDINATE: f64 = 100_000.0;
/// Longest study/series/SOP instance UID (the DICOM limit).
pub const MAX_UID_CHARS: usize = 64;
/// Longest client `ref` echoed back.
pub const MAX_REF_CHARS: usize = 64;
/// Largest `stats` object, as serialised.
pub const MAX_STATS_BYTES: usize = 1024;
/// Most keys in a `stats` object.
pub const MAX_STATS_KEYS: usize = 32;
/// Largest 1-based frame number of a multi-frame image.
pub const MAX_FRAME_NUMBER: u32 = 100_000;
/// Highest viewport index (layout 2x2 has four).
pub const MAX_VIEWPORT: u8 = 3;
/// Largest annotation, as serialised: it must fit in one data-channel message together with
/// the first snapshot frame's header (viewer state, presenter, requests).
pub const MAX_ANNOTATION_BYTES: usize = 48 * 1024;
/// Largest server frame. SCTP's default maximum message size is 64 KiB; the rest is headroom.
pub const MAX_SERVER_FRAME_BYTES: usize = 60 * 1024;
/// Most live annotations in one room, so that a hostile client cannot grow a room's memory
/// and every late joiner's snapshot without bound.
pub const MAX_LIVE_ANNOTATIONS: usize = 5000;
/// Annotation changes one participant may make in a burst: each is an fsync and a row in
/// the log forever, and a person drawing makes a few per second at most.
pub const ANNOTATE_BURST: f64 = 30.0;
/// Annotation changes per second one participant may sustain.
pub const ANNOTATE_PER_SECOND: f64 = 10.0;
/// Most bytes (as JSON) of a room's live annotations together: what every late joiner
/// downloads, so the count limit alone (5000 outlines of 48 KiB) is not enough.
pub const MAX_LIVE_BYTES: usize = 8 * 1024 * 1024;

/// An annotation's size as JSON, for the room's byte budget.
pub fn annotation_bytes(a: &Annotation) -> usize {
    serde_json::to_vec(a)
        .map(|v| v.len())
        .unwrap_or(MAX_ANNOTATION_BYTES)
}

/// The client message types the server handles itself; any other type is relayed.
pub const COLLAB_TYPES: &[&str] = &["hello", "viewer", "pointer", "annotate", "presenter"];

/// The `type` of a data-channel message if the shared-viewer authority handles it, so the
/// session can route it there instead of relaying it.
pub fn collab_type(msg: &Value) -> Option<&'static str> {
    let kind = msg.get("type")?.as_str()?;
    COLLAB_TYPES.iter().copied().find(|t| *t == kind)
}

/// The client's `ref` of a message, if it is a short string: echoed in an `error` so the
/// client can match the refusal to what it sent. Anything else is not echoed.
pub fn reference_of(msg: &Value) -> Option<String> {
    let r = msg.get("ref")?.as_str()?;
    valid_ref(r).then(|| r.to_owned())
}

fn valid_ref(r: &str) -> bool {
    !r.is_empty() && r.chars().count() <= MAX_REF_CHARS && !r.chars().any(char::is_control)
}

/// The `code` of a shared-viewer `error`, stable strings a client switches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollabErrorCode {
    BadMessage,
    NotPresenter,
    NotAllowed,
    NotFound,
    TooBig,
    StorageFailed,
    RateLimited,
}

impl CollabErrorCode {
    /// The wire string, for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CollabErrorCode::BadMessage => "bad_message",
            CollabErrorCode::NotPresenter => "not_presenter",
            CollabErrorCode::NotAllowed => "not_allowed",
            CollabErrorCode::NotFound => "not_found",
            CollabErrorCode::TooBig => "too_big",
            CollabErrorCode::StorageFailed => "storage_failed",
            CollabErrorCode::RateLimited => "rate_limited",
        }
    }
}

/// A refused shared-viewer message. `Display` is the human message sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollabError {
    #[error("malformed message: {0}")]
    BadMessage(String),
    #[error("only the presenter may send {0}")]
    NotPresenter(&'static str),
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("too big: {0}")]
    TooBig(String),
    #[error("the change could not be stored; nothing changed (try again)")]
    StorageFailed,
    #[error("too many annotation changes; wait a moment")]
    RateLimited,
}

impl CollabError {
    /// The wire code of this refusal.
    pub fn code(&self) -> CollabErrorCode {
        match self {
            CollabError::BadMessage(_) => CollabErrorCode::BadMessage,
            CollabError::NotPresenter(_) => CollabErrorCode::NotPresenter,
            CollabError::NotAllowed(_) => CollabErrorCode::NotAllowed,
            CollabError::NotFound(_) => CollabErrorCode::NotFound,
            CollabError::TooBig(_) => CollabErrorCode::TooBig,
            CollabError::StorageFailed => CollabErrorCode::StorageFailed,
            CollabError::RateLimited => CollabErrorCode::RateLimited,
        }
    }

    fn bad(msg: impl Into<String>) -> Self {
        CollabError::BadMessage(msg.into())
    }

    /// The `error` message for this refusal, with the refused message's `ref`.
    pub fn to_message(&self, reference: Option<String>) -> CollabMessage {
        CollabMessage::Error {
            code: self.code(),
            message: self.to_string(),
            reference,
        }
    }
}

/// What an `annotate` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotateOp {
    Add,
    Update,
    Delete,
}

impl AnnotateOp {
    /// The wire string, for metrics labels and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnotateOp::Add => "add",
            AnnotateOp::Update => "update",
            AnnotateOp::Delete => "delete",
        }
    }
}

/// What a `presenter` message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenterAction {
    Request,
    Grant,
    Release,
    Take,
}

/// The shapes an annotation can have; each fixes how many points it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnnotationKind {
    Arrow,
    Line,
    Ellipse,
    Freehand,
    Text,
}

impl AnnotationKind {
    /// The allowed number of points (inclusive range).
    pub fn points(self) -> (usize, usize) {
        match self {
            AnnotationKind::Arrow | AnnotationKind::Line | AnnotationKind::Ellipse => (2, 2),
            AnnotationKind::Freehand => (3, MAX_FREEHAND_POINTS),
            AnnotationKind::Text => (1, 1),
        }
    }
}

/// A client → server message of the shared viewer, as parsed (not yet validated: the
/// opaque parts are checked by the state machine, which knows the sender).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CollabRequest {
    /// Joins the viewer; asks for a snapshot, or the changes after `since`.
    Hello {
        #[serde(default)]
        since: Option<u64>,
    },
    /// The presenter's new ViewerState.
    Viewer { state: Value },
    /// The presenter's laser pointer, or all `None` to hide it.
    Pointer {
        #[serde(default)]
        viewport: Option<u8>,
        #[serde(default)]
        x: Option<f64>,
        #[serde(default)]
        y: Option<f64>,
    },
    /// Adds, updates or deletes an annotation.
    Annotate {
        op: AnnotateOp,
        #[serde(default)]
        annotation: Option<Value>,
        #[serde(default)]
        id: Option<String>,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// Asks for, hands over, releases or takes presenting.
    Presenter {
        action: PresenterAction,
        #[serde(default)]
        to: Option<String>,
    },
}

impl CollabRequest {
    /// Parses a data-channel object whose `type` is one of [`COLLAB_TYPES`].
    pub fn parse(msg: Value) -> Result<Self, CollabError> {
        if !msg.is_object() {
            return Err(CollabError::bad("not a JSON object"));
        }
        serde_json::from_value(msg).map_err(|e| CollabError::bad(e.to_string()))
    }

    /// The wire type, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CollabRequest::Hello { .. } => "hello",
            CollabRequest::Viewer { .. } => "viewer",
            CollabRequest::Pointer { .. } => "pointer",
            CollabRequest::Annotate { .. } => "annotate",
            CollabRequest::Presenter { .. } => "presenter",
        }
    }
}

/// An annotation as stored and as every client sees it (fields as in
/// `docs/collaboration.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub id: String,
    pub kind: AnnotationKind,
    pub study: String,
    pub series: String,
    pub sop: String,
    pub frame: u32,
    pub points: Vec<[f64; 2]>,
    pub text: Option<String>,
    pub color: String,
    pub stats: Option<Map<String, Value>>,
    /// The window/level the image was shown with when drawn or last edited, so an export
    /// (GSPS) presents the image as the annotator saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<AnnotationWindow>,
    pub author: ParticipantId,
    pub author_name: String,
    /// Who may edit it: the author's stable key ([`crate::Claims::author_key`], or
    /// `name:<display name>` in open demo mode), which, unlike `author`, survives a reconnect.
    /// Rows written before keys existed get `name:<author_name>` when loaded.
    #[serde(default)]
    pub author_key: String,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Annotation {
    /// Gives an annotation stored before author keys existed the key its author's name
    /// would have in open mode.
    pub fn backfill_author_key(&mut self) {
        if self.author_key.is_empty() {
            self.author_key = format!("name:{}", self.author_name);
        }
    }
}

/// Window width and centre (rescaled values) of the viewport an annotation was drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AnnotationWindow {
    pub ww: f64,
    pub wc: f64,
}

fn window(w: Option<AnnotationWindow>) -> Result<Option<AnnotationWindow>, CollabError> {
    match w {
        Some(w)
            if !(w.ww.is_finite() && w.wc.is_finite())
                || w.ww <= 0.0
                || w.ww.abs() > 1e6
                || w.wc.abs() > 1e6 =>
        {
            Err(CollabError::bad(
                "window: ww and wc are finite, ww > 0, both at most 1e6 in magnitude",
            ))
        }
        other => Ok(other),
    }
}

/// The drawn part of an annotation, as a client sends it in `add` (the server adds the id,
/// author and times). Fields not named here are ignored, never stored.
#[derive(Debug, Clone, Deserialize)]
struct AnnotationInput {
    kind: AnnotationKind,
    study: String,
    series: String,
    sop: String,
    #[serde(default = "first_frame")]
    frame: u32,
    points: Vec<[f64; 2]>,
    #[serde(default)]
    text: Option<String>,
    color: String,
    #[serde(default)]
    stats: Option<Map<String, Value>>,
    #[serde(default)]
    window: Option<AnnotationWindow>,
}

fn first_frame() -> u32 {
    1
}

/// What an `update` may change. An absent field keeps its value; `text: null` and
/// `stats: null` clear them.
#[derive(Debug, Clone, Deserialize)]
struct AnnotationPatch {
    #[serde(default)]
    points: Option<Vec<[f64; 2]>>,
    #[serde(default, deserialize_with = "present")]
    text: Option<Option<String>>,
    #[serde(default)]
    color: Option<String>,
    #[serde(default, deserialize_with = "present")]
    stats: Option<Option<Map<String, Value>>>,
    #[serde(default)]
    window: Option<AnnotationWindow>,
}

/// Tells a field given as `null` (Some(None)) from an absent one (None).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Who made an annotation and when, for [`new_annotation`].
pub struct Authorship<'a> {
    pub id: String,
    pub author: &'a ParticipantId,
    pub author_name: &'a str,
    pub author_key: &'a str,
    pub now_ms: u64,
}

/// Builds a validated annotation from a client's `add`.
pub fn new_annotation(input: Value, who: Authorship<'_>) -> Result<Annotation, CollabError> {
    if !input.is_object() {
        return Err(CollabError::bad("annotation must be an object"));
    }
    let input: AnnotationInput =
        serde_json::from_value(input).map_err(|e| CollabError::bad(format!("annotation: {e}")))?;
    let annotation = Annotation {
        id: who.id,
        kind: input.kind,
        study: uid("study", input.study)?,
        series: uid("series", input.series)?,
        sop: uid("sop", input.sop)?,
        frame: frame(input.frame)?,
        points: points(input.kind, input.points)?,
        text: text(input.kind, input.text)?,
        color: color(&input.color)?,
        stats: stats(input.stats)?,
        window: window(input.window)?,
        author: who.author.clone(),
        author_name: who.author_name.to_owned(),
        author_key: who.author_key.to_owned(),
        created_ms: who.now_ms,
        updated_ms: who.now_ms,
    };
    check_size(&annotation)?;
    Ok(annotation)
}

/// Applies a client's `update` to a copy of `old`, validated as a whole.
pub fn updated_annotation(
    old: &Annotation,
    patch: Value,
    now_ms: u64,
) -> Result<Annotation, CollabError> {
    if !patch.is_object() {
        return Err(CollabError::bad("annotation must be an object"));
    }
    let patch: AnnotationPatch =
        serde_json::from_value(patch).map_err(|e| CollabError::bad(format!("annotation: {e}")))?;
    let mut new = old.clone();
    if let Some(p) = patch.points {
        new.points = points(new.kind, p)?;
    }
    if let Some(t) = patch.text {
        new.text = t;
    }
    new.text = text(new.kind, new.text)?;
    if let Some(c) = patch.color {
        new.color = color(&c)?;
    }
    if let Some(s) = patch.stats {
        new.stats = stats(s)?;
    }
    if let Some(w) = patch.window {
        new.window = window(Some(w))?;
    }
    new.updated_ms = now_ms.max(old.created_ms);
    check_size(&new)?;
    Ok(new)
}

fn check_size(a: &Annotation) -> Result<(), CollabError> {
    let bytes = serde_json::to_vec(a).map(|v| v.len()).unwrap_or(usize::MAX);
    if bytes > MAX_ANNOTATION_BYTES {
        return Err(CollabError::TooBig(format!(
            "an annotation is at most {MAX_ANNOTATION_BYTES} bytes as JSON ({bytes})"
        )));
    }
    Ok(())
}

fn uid(field: &str, value: String) -> Result<String, CollabError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_UID_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        return Err(CollabError::bad(format!(
            "{field} must be 1-{MAX_UID_CHARS} characters of 0-9 A-Z a-z . - _"
        )));
    }
    Ok(value)
}

fn frame(n: u32) -> Result<u32, CollabError> {
    if !(1..=MAX_FRAME_NUMBER).contains(&n) {
        return Err(CollabError::bad(format!(
            "frame is a 1-based frame number up to {MAX_FRAME_NUMBER}"
        )));
    }
    Ok(n)
}

/// A finite coordinate within bounds, rounded to 1/100 pixel: finer is invisible, and the
/// rounding bounds how long an annotation's JSON can get.
pub fn coordinate(v: f64) -> Result<f64, CollabError> {
    if !v.is_finite() || v.abs() > MAX_COORDINATE {
        return Err(CollabError::bad(format!(
            "coordinates are finite numbers of at most {MAX_COORDINATE} pixels"
        )));
    }
    let rounded = (v * 100.0).round() / 100.0;
    // -0.0 prints as "-0.0"; keep the wire boring.
    Ok(if rounded == 0.0 { 0.0 } else { rounded })
}

fn points(kind: AnnotationKind, points: Vec<[f64; 2]>) -> Result<Vec<[f64; 2]>, CollabError> {
    let (min, max) = kind.points();
    if !(min..=max).contains(&points.len()) {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min}-{max}")
        };
        return Err(CollabError::bad(format!(
            "a {kind:?} annotation has {want} points, not {}",
            points.len()
        )));
    }
    points
        .into_iter()
        .map(|[x, y]| Ok([coordinate(x)?, coordinate(y)?]))
        .collect()
}

fn text(kind: AnnotationKind, text: Option<String>) -> Result<Option<String>, CollabError> {
    if let Some(t) = &text {
        if t.chars().count() > MAX_TEXT_CHARS {
            return Err(CollabError::TooBig(format!(
                "text is at most {MAX_TEXT_CHARS} characters"
            )));
        }
        if t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(CollabError::bad("text has control characters"));
        }
    }
    if kind == AnnotationKind::Text && text.as_deref().is_none_or(|t| t.trim().is_empty()) {
        return Err(CollabError::bad("a text annotation needs text"));
    }
    Ok(text)
}

fn color(c: &str) -> Result<String, CollabError> {
    let hex = c.strip_prefix('#').unwrap_or("");
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CollabError::bad("color is #rrggbb"));
    }
    Ok(c.to_ascii_lowercase())
}

fn stats(stats: Option<Map<String, Value>>) -> Result<Option<Map<String, Value>>, CollabError> {
    let Some(stats) = stats else {
        return Ok(None);
    };
    if stats.len() > MAX_STATS_KEYS {
        return Err(CollabError::TooBig(format!(
            "stats has at most {MAX_STATS_KEYS} keys"
        )));
    }
    for (key, value) in &stats {
        let flat = match value {
            Value::Null | Value::Bool(_) | Value::String(_) => true,
            Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
            Value::Array(_) | Value::Object(_) => false,
        };
        if !flat || key.is_empty() || key.chars().any(char::is_control) {
            return Err(CollabError::bad(
                "stats maps names to numbers, strings, booleans or null",
            ));
        }
    }
    let bytes = serde_json::to_vec(&stats)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > MAX_STATS_BYTES {
        return Err(CollabError::TooBig(format!(
            "stats is at most {MAX_STATS_BYTES} bytes as JSON"
        )));
    }
    Ok(Some(stats))
}

/// Checks a client's `ref`.
pub fn reference(r: Option<String>) -> Result<Option<String>, CollabError> {
    match r {
        Some(r) if !valid_ref(&r) => Err(CollabError::bad(format!(
            "ref is 1-{MAX_REF_CHARS} printable characters"
        ))),
        other => Ok(other),
    }
}

/// Checks a presenter's ViewerState: an object of at most [`MAX_VIEWER_BYTES`].
pub fn viewer_state(state: Value) -> Result<Value, CollabError> {
    if !state.is_object() {
        return Err(CollabError::bad("viewer state must be an object"));
    }
    let bytes = serde_json::to_vec(&state)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if bytes > MAX_VIEWER_BYTES {
        return Err(CollabError::TooBig(format!(
            "viewer state is at most {MAX_VIEWER_BYTES} bytes as JSON ({bytes})"
        )));
    }
    Ok(state)
}

/// One durable annotation change, in the room's order. Also the `annotation` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationEvent {
    /// The room's sequence number of this change: 1, 2, 3, … with no gaps.
    pub seq: u64,
    pub op: AnnotateOp,
    /// The annotation id (for every op).
    pub id: String,
    /// The whole annotation after an add or update; absent for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation: Option<Box<Annotation>>,
    /// The sender's own id for an add, echoed to the sender only; never stored.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Who made the change (for a delete by the host, not the author).
    pub by: ParticipantId,
    /// When the server accepted it, unix ms.
    pub at_ms: u64,
}

/// A server → client message of the shared viewer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CollabMessage {
    /// The whole state, possibly in several parts (see the document).
    Snapshot {
        seq: u64,
        /// The key the receiver's own annotations carry (`Annotation::author_key`), so its
        /// client knows which ones it may edit, also those from an earlier join.
        #[serde(default)]
        author_key: String,
        presenter: Option<ParticipantId>,
        requests: Vec<ParticipantId>,
        viewer: Option<Value>,
        annotations: Vec<Annotation>,
        part: u32,
        more: bool,
    },
    /// The annotation events after `from_seq`, possibly in several parts, with who
    /// presents now and (in part 0) what they show: a resuming client missed those too.
    Changes {
        from_seq: u64,
        seq: u64,
        /// As in `Snapshot`.
        #[serde(default)]
        author_key: String,
        presenter: Option<ParticipantId>,
        requests: Vec<ParticipantId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        viewer: Option<Value>,
        events: Vec<CollabMessage>,
        part: u32,
        more: bool,
    },
    /// One stored annotation change.
    Annotation(AnnotationEvent),
    /// The presenter's new ViewerState, to the followers.
    Viewer { state: Value, by: ParticipantId },
    /// The presenter's laser pointer, to the followers.
    Pointer {
        viewport: Option<u8>,
        x: Option<f64>,
        y: Option<f64>,
        by: ParticipantId,
    },
    /// Who presents and who asks to, after every change.
    Presenter {
        presenter: Option<ParticipantId>,
        requests: Vec<ParticipantId>,
    },
    /// A refusal; the channel stays open.
    Error {
        code: CollabErrorCode,
        message: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

impl CollabMessage {
    /// The JSON text for the data channel. Infallible: every field is plain data.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"bad_message","message":"unserialisable"}"#.into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who(id: &ParticipantId) -> Authorship<'_> {
        Authorship {
            id: "a-1".into(),
            author: id,
            author_name: "Dr A",
            author_key: "name:Dr A",
            now_ms: 5,
        }
    }

    fn arrow() -> Value {
        json!({"kind": "arrow", "study": "1.2.3", "series": "1.2.3.4", "sop": "1.2.3.4.5",
               "frame": 1, "points": [[1.004, 2.0], [3.0, 4.0]], "text": null,
               "color": "#FF0000", "stats": {"length_mm": 12.5, "unit": "mm"}})
    }

    #[test]
    fn a_valid_annotation_is_normalised() {
        let id = ParticipantId::from("p-1");
        let a = new_annotation(arrow(), who(&id)).unwrap();
        assert_eq!(a.points, vec![[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(a.color, "#ff0000");
        assert_eq!(a.author, id);
        assert_eq!(a.created_ms, 5);
    }

    #[test]
    fn hostile_annotations_are_refused() {
        let id = ParticipantId::from("p-1");
        let mut cases: Vec<(Value, CollabErrorCode)> = Vec::new();
        let with = |k: &str, v: Value| {
            let mut a = arrow();
            a[k] = v;
            a
        };
        cases.push((json!([1, 2]), CollabErrorCode::BadMessage));
        cases.push((with("kind", json!("circle")), CollabErrorCode::BadMessage));
        cases.push((
            with("points", json!([[1, 2], [3, 4], [5, 6]])),
            CollabErrorCode::BadMessage,
        ));
        cases.push((
            with("points", json!([[1, null], [3, 4]])),
            CollabErrorCode::BadMessage,
        ));
        cases.push((
            with("points", json!([[1, "NaN"], [3, 4]])),
            CollabErrorCode::BadMessage,
        ));
        cases.push((
            with("points", json!([[1e308, 0], [3, 4]])),
            CollabErrorCode::BadMessage,
        ));
        cases.push((
            with("points", json!([[1, 2, 3], [3, 4]])),
            CollabErrorCode::BadMessage,
        ));
        cases.push((with("color", json!("red")), CollabErrorCode::BadMessage));
        cases.push((with("color", json!("#12345g")), CollabErrorCode::BadMessage));
        cases.push((with("study", json!("")), CollabErrorCode::BadMessage));
        cases.push((
            with("study", json!("1.2'; DROP TABLE x")),
            CollabErrorCode::BadMessage,
        ));
        cases.push((
            with("sop", json!("9".repeat(65))),
            CollabErrorCode::BadMessage,
        ));
        cases.push((with("frame", json!(0)), CollabErrorCode::BadMessage));
        cases.push((with("frame", json!(-1)), CollabErrorCode::BadMessage));
        cases.push((
            with("text", json!("x".repeat(2001))),
            CollabErrorCode::TooBig,
        ));
        cases.push((with("text", json!("a\u{0}b")), CollabErrorCode::BadMessage));
        cases.push((
            with("stats", json!({"nested": {"a": 1}})),
            CollabErrorCode::BadMessage,
        ));
        cases.push((with("stats", json!([1])), CollabErrorCode::BadMessage));
        let mut text = arrow();
        text["kind"] = json!("text");
        text["points"] = json!([[1, 2]]);
        cases.push((text, CollabErrorCode::BadMessage));
        let mut freehand = arrow();
        freehand["kind"] = json!("freehand");
        freehand["points"] = json!(vec![[1.0, 2.0]; 2001]);
        cases.push((freehand, CollabErrorCode::BadMessage));
        for (input, code) in cases {
            let err = new_annotation(input.clone(), who(&id)).unwrap_err();
            assert_eq!(err.code(), code, "{input} gave {err}");
        }
        // 2000 points at the bound, but long coordinates: within the size limit thanks to
        // the rounding.
        let mut freehand = arrow();
        freehand["kind"] = json!("freehand");
        freehand["points"] = json!(vec![[-99999.123456789, 99999.987654321]; 2000]);
        let a = new_annotation(freehand, who(&id)).unwrap();
        assert!(serde_json::to_vec(&a).unwrap().len() <= MAX_ANNOTATION_BYTES);
    }

    #[test]
    fn update_keeps_absent_fields_and_clears_null_ones() {
        let id = ParticipantId::from("p-1");
        let a = new_annotation(arrow(), who(&id)).unwrap();
        let b = updated_annotation(&a, json!({"color": "#00ff00", "stats": null}), 9).unwrap();
        assert_eq!(b.color, "#00ff00");
        assert_eq!(b.stats, None);
        assert_eq!(b.points, a.points);
        assert_eq!(b.updated_ms, 9);
        assert!(updated_annotation(&a, json!({"points": [[1, 2]]}), 9).is_err());
        assert!(updated_annotation(&a, json!({"text": 5}), 9).is_err());
    }

    #[test]
    fn requests_parse_strictly() {
        let ok = CollabRequest::parse(json!({"type": "hello", "since": null})).unwrap();
        assert_eq!(ok, CollabRequest::Hello { since: None });
        for bad in [
            json!({"type": "hello", "since": -1}),
            json!({"type": "hello", "since": 1.5}),
            json!({"type": "hello", "since": "3"}),
            json!({"type": "viewer"}),
            json!({"type": "annotate", "op": "smudge"}),
            json!({"type": "presenter", "action": "grant", "to": 5}),
            json!({"type": "pointer", "viewport": 300, "x": 1, "y": 1}),
        ] {
            assert_eq!(
                CollabRequest::parse(bad.clone()).unwrap_err().code(),
                CollabErrorCode::BadMessage,
                "{bad}"
            );
        }
        assert_eq!(collab_type(&json!({"type": "annotate"})), Some("annotate"));
        assert_eq!(collab_type(&json!({"type": "chat"})), None);
        assert_eq!(collab_type(&json!({"kind": "viewer"})), None);
        assert_eq!(reference_of(&json!({"ref": "r1"})), Some("r1".into()));
        assert_eq!(reference_of(&json!({"ref": "x".repeat(100)})), None);
    }

    #[test]
    fn messages_have_the_documented_shape() {
        let msg = CollabMessage::Annotation(AnnotationEvent {
            seq: 3,
            op: AnnotateOp::Delete,
            id: "a-1".into(),
            annotation: None,
            reference: None,
            by: "p-1".into(),
            at_ms: 7,
        });
        assert_eq!(
            serde_json::to_value(&msg).unwrap(),
            json!({"type": "annotation", "seq": 3, "op": "delete", "id": "a-1", "by": "p-1", "at_ms": 7})
        );
        let err = CollabError::NotPresenter("viewer").to_message(Some("r".into()));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            json!({"type": "error", "code": "not_presenter", "message": "only the presenter may send viewer", "ref": "r"})
        );
    }
}
