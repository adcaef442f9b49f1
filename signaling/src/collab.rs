//! The authority over one room's shared DICOM viewer: who presents, what they show, and the
//! annotations everyone draws, in one order.
//!
//! This is a pure state machine (no IO, no clock: the time comes in as an argument), so
//! every rule of `docs/collaboration.md` is unit-tested without sockets. The caller owns the
//! durability: an annotation change comes out as a [`Pending`] that changes nothing until
//! the caller has written its [`Pending::event`] and calls [`CollabRoom::commit`]; a failed
//! write just drops the `Pending` and the state is as before. The caller must hold the room
//! exclusively between [`CollabRoom::handle`] and `commit`, which is also what keeps the
//! per-room order strict.

pub use crate::collab_proto::*;
use crate::{ParticipantId, Role};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// How many recent annotation events a room keeps to answer `hello {since}` with `changes`;
/// a client further behind gets a snapshot, which is then no bigger anyway.
pub const RECENT_EVENTS: usize = 256;

/// The participant a message comes from, as the session knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collaborator {
    pub id: ParticipantId,
    /// The token's role (or the open-mode one): hosts hand over presenting and delete any
    /// annotation, observers only follow.
    pub role: Role,
    /// The validated display name, copied into the annotations it authors.
    pub name: String,
    /// The stable author key ([`Annotation::author_key`]): what it may edit, across joins.
    pub key: String,
}

impl Collaborator {
    /// A collaborator of open demo mode, where only the display name tells people apart.
    pub fn unsigned(id: ParticipantId, role: Role, name: String) -> Self {
        let key = format!("name:{name}");
        Self {
            id,
            role,
            name,
            key,
        }
    }
}

/// One message and who gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// Recipients, all of whom have said `hello` in this room.
    pub to: Vec<ParticipantId>,
    pub msg: CollabMessage,
}

/// Something to write to the database.
#[derive(Debug, Clone, PartialEq)]
pub enum DurableOp {
    /// Must be written before anyone hears of it (see [`Pending`]).
    Annotation(AnnotationEvent),
    /// The room's latest viewer state: may be written lazily, a lost one is only a viewport.
    Viewer(Value),
}

/// What a handled message does: messages to send and writes to make.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// To send in this order (the room's order).
    pub messages: Vec<Outgoing>,
    /// Lazy writes ([`DurableOp::Viewer`]); annotation writes come as [`Pending`] instead.
    pub durable: Vec<DurableOp>,
}

/// An annotation change validated and ordered but not applied: nothing changes, and nobody
/// is told, until the caller has stored [`Pending::event`] and calls [`CollabRoom::commit`].
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a pending change is lost unless stored and committed"]
pub struct Pending {
    event: AnnotationEvent,
    reference: Option<String>,
    from: ParticipantId,
}

impl Pending {
    /// The event to write durably (without the client's `ref`, which is never stored).
    pub fn event(&self) -> &AnnotationEvent {
        &self.event
    }

    /// The client's `ref`, to put in an error if the write fails.
    pub fn reference(&self) -> Option<String> {
        self.reference.clone()
    }

    /// The operation, for metrics.
    pub fn op(&self) -> AnnotateOp {
        self.event.op
    }

    /// The write to make before committing.
    pub fn durable(&self) -> DurableOp {
        DurableOp::Annotation(self.event.clone())
    }
}

/// The result of [`CollabRoom::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Done: send these, write these (lazily).
    Done(Effects),
    /// An annotation change: store it, then commit it.
    Durable(Pending),
}

/// What the database holds about a room, to rebuild it after a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredRoom {
    /// The highest sequence number ever used in the room.
    pub seq: u64,
    /// The live annotations, in the order they were added.
    pub annotations: Vec<Annotation>,
    /// The last events (up to [`RECENT_EVENTS`]), in seq order.
    pub recent: Vec<AnnotationEvent>,
    pub viewer: Option<Value>,
}

/// One room's shared-viewer state.
#[derive(Debug, Clone, Default)]
pub struct CollabRoom {
    seq: u64,
    /// Those who said `hello`, in that order (the order hand-over to the next host uses).
    members: Vec<Collaborator>,
    presenter: Option<ParticipantId>,
    requests: Vec<ParticipantId>,
    viewer: Option<Value>,
    /// Live annotations by the seq of their `add` (which is also their id).
    annotations: BTreeMap<u64, Annotation>,
    /// Their total size as JSON, against [`MAX_LIVE_BYTES`].
    live_bytes: usize,
    /// Each member's annotation allowance: (tokens, at unix ms).
    allowance: HashMap<ParticipantId, (f64, u64)>,
    recent: VecDeque<AnnotationEvent>,
}

/// A server annotation id for the add with sequence number `seq`: ids are unique in a room
/// because seq never repeats, even across restarts.
pub fn annotation_id(seq: u64) -> String {
    format!("a-{seq}")
}

fn parse_annotation_id(id: &str) -> Option<u64> {
    id.strip_prefix("a-")?
        .parse()
        .ok()
        .filter(|_| id.len() <= 24)
}

impl CollabRoom {
    /// A room nobody has annotated yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A room as the database remembers it: nobody is in it, nobody presents.
    pub fn restore(stored: StoredRoom) -> Self {
        let mut annotations = BTreeMap::new();
        for mut a in stored.annotations {
            a.backfill_author_key();
            if let Some(seq) = parse_annotation_id(&a.id) {
                annotations.insert(seq, a);
            }
        }
        let seq = stored
            .seq
            .max(stored.recent.last().map_or(0, |e| e.seq))
            .max(annotations.keys().next_back().copied().unwrap_or(0));
        let mut recent: VecDeque<AnnotationEvent> = stored.recent.into();
        for a in recent
            .iter_mut()
            .filter_map(|e| e.annotation.as_deref_mut())
        {
            a.backfill_author_key();
        }
        while recent.len() > RECENT_EVENTS {
            recent.pop_front();
        }
        let live_bytes = annotations.values().map(annotation_bytes).sum();
        Self {
            seq,
            members: Vec::new(),
            presenter: None,
            requests: Vec::new(),
            viewer: stored.viewer,
            annotations,
            live_bytes,
            allowance: HashMap::new(),
            recent,
        }
    }

    /// The last annotation sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Who presents.
    pub fn presenter(&self) -> Option<&ParticipantId> {
        self.presenter.as_ref()
    }

    /// Whether nobody has said hello (or everyone who did has left): the room may be dropped
    /// from memory, everything worth keeping is in the database.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The live annotations, in the order they were added.
    pub fn annotations(&self) -> impl Iterator<Item = &Annotation> {
        self.annotations.values()
    }

    fn is_member(&self, id: &ParticipantId) -> bool {
        self.members.iter().any(|m| &m.id == id)
    }

    fn all(&self) -> Vec<ParticipantId> {
        self.members.iter().map(|m| m.id.clone()).collect()
    }

    fn all_but(&self, id: &ParticipantId) -> Vec<ParticipantId> {
        self.members
            .iter()
            .filter(|m| &m.id != id)
            .map(|m| m.id.clone())
            .collect()
    }

    fn presenter_message(&self) -> CollabMessage {
        CollabMessage::Presenter {
            presenter: self.presenter.clone(),
            requests: self.requests.clone(),
        }
    }

    fn set_presenter(&mut self, to: Option<ParticipantId>) {
        if let Some(id) = &to {
            self.requests.retain(|r| r != id);
        }
        self.presenter = to;
    }

    /// Handles one validated-by-type message from `who`, at `now_ms` (unix ms).
    pub fn handle(
        &mut self,
        who: &Collaborator,
        request: CollabRequest,
        now_ms: u64,
    ) -> Result<Step, CollabError> {
        if let CollabRequest::Hello { since } = request {
            return Ok(Step::Done(self.hello(who, since)));
        }
        if !self.is_member(&who.id) {
            return Err(CollabError::BadMessage(
                "send hello on the data channel first".into(),
            ));
        }
        match request {
            CollabRequest::Hello { .. } => unreachable!("handled above"),
            CollabRequest::Viewer { state } => self.viewer(who, state).map(Step::Done),
            CollabRequest::Pointer { viewport, x, y } => {
                self.pointer(who, viewport, x, y).map(Step::Done)
            }
            CollabRequest::Annotate {
                op,
                annotation,
                id,
                reference: r,
            } => {
                self.spend_allowance(&who.id, now_ms)?;
                let reference = reference(r)?;
                self.annotate(who, op, annotation, id, reference, now_ms)
                    .map(Step::Durable)
            }
            CollabRequest::Presenter { action, to } => {
                self.presenter_control(who, action, to).map(Step::Done)
            }
        }
    }

    fn hello(&mut self, who: &Collaborator, since: Option<u64>) -> Effects {
        let mut effects = Effects::default();
        let mut changed = false;
        if !self.is_member(&who.id) {
            self.members.push(who.clone());
            if self.presenter.is_none() && who.role == Role::Host {
                self.set_presenter(Some(who.id.clone()));
                changed = true;
            }
        }
        let to = vec![who.id.clone()];
        let reply = match since {
            Some(since) if self.can_replay_from(since) => self.changes_frames(since, &who.key),
            _ => self.snapshot_frames(&who.key),
        };
        effects
            .messages
            .extend(reply.into_iter().map(|msg| Outgoing {
                to: to.clone(),
                msg,
            }));
        if changed {
            let others = self.all_but(&who.id);
            if !others.is_empty() {
                effects.messages.push(Outgoing {
                    to: others,
                    msg: self.presenter_message(),
                });
            }
        }
        effects
    }

    /// Whether every event after `since` is in memory.
    fn can_replay_from(&self, since: u64) -> bool {
        if since > self.seq {
            return false; // a client from another life of the database
        }
        if since == self.seq {
            return true;
        }
        self.recent
            .front()
            .is_some_and(|first| first.seq <= since + 1)
    }

    fn snapshot_frames(&self, author_key: &str) -> Vec<CollabMessage> {
        let frame = |viewer: Option<Value>, annotations, part, more| CollabMessage::Snapshot {
            seq: self.seq,
            author_key: author_key.to_owned(),
            presenter: self.presenter.clone(),
            requests: self.requests.clone(),
            viewer,
            annotations,
            part,
            more,
        };
        let first = encoded_len(&frame(self.viewer.clone(), Vec::new(), 0, true));
        let rest = encoded_len(&frame(None, Vec::new(), u32::MAX, true));
        let chunks = chunk(self.annotations.values().cloned(), first, rest);
        let last = chunks.len().saturating_sub(1);
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, annotations)| {
                let viewer = if i == 0 { self.viewer.clone() } else { None };
                frame(viewer, annotations, i as u32, i != last)
            })
            .collect()
    }

    fn changes_frames(&self, since: u64, author_key: &str) -> Vec<CollabMessage> {
        let frame = |viewer: Option<Value>, events, part, more| CollabMessage::Changes {
            from_seq: since,
            seq: self.seq,
            author_key: author_key.to_owned(),
            presenter: self.presenter.clone(),
            requests: self.requests.clone(),
            viewer,
            events,
            part,
            more,
        };
        let first = encoded_len(&frame(self.viewer.clone(), Vec::new(), 0, true));
        let rest = encoded_len(&frame(None, Vec::new(), u32::MAX, true));
        let events = self
            .recent
            .iter()
            .filter(|e| e.seq > since)
            .map(|e| CollabMessage::Annotation(e.clone()));
        let chunks = chunk(events, first, rest);
        let last = chunks.len().saturating_sub(1);
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, events)| {
                let viewer = if i == 0 { self.viewer.clone() } else { None };
                frame(viewer, events, i as u32, i != last)
            })
            .collect()
    }

    fn viewer(&mut self, who: &Collaborator, state: Value) -> Result<Effects, CollabError> {
        if self.presenter.as_ref() != Some(&who.id) {
            return Err(CollabError::NotPresenter("viewer"));
        }
        let state = viewer_state(state)?;
        self.viewer = Some(state.clone());
        let mut effects = Effects {
            messages: Vec::new(),
            durable: vec![DurableOp::Viewer(state.clone())],
        };
        let others = self.all_but(&who.id);
        if !others.is_empty() {
            effects.messages.push(Outgoing {
                to: others,
                msg: CollabMessage::Viewer {
                    state,
                    by: who.id.clone(),
                },
            });
        }
        Ok(effects)
    }

    fn pointer(
        &mut self,
        who: &Collaborator,
        viewport: Option<u8>,
        x: Option<f64>,
        y: Option<f64>,
    ) -> Result<Effects, CollabError> {
        if self.presenter.as_ref() != Some(&who.id) {
            return Err(CollabError::NotPresenter("pointer"));
        }
        let (viewport, x, y) = match (viewport, x, y) {
            (Some(v), Some(x), Some(y)) => {
                if v > MAX_VIEWPORT {
                    return Err(CollabError::BadMessage(format!(
                        "viewport is 0-{MAX_VIEWPORT}"
                    )));
                }
                (Some(v), Some(coordinate(x)?), Some(coordinate(y)?))
            }
            (None, None, None) => (None, None, None),
            _ => {
                return Err(CollabError::BadMessage(
                    "pointer has viewport, x and y, or none of them to hide it".into(),
                ));
            }
        };
        let mut effects = Effects::default();
        let others = self.all_but(&who.id);
        if !others.is_empty() {
            effects.messages.push(Outgoing {
                to: others,
                msg: CollabMessage::Pointer {
                    viewport,
                    x,
                    y,
                    by: who.id.clone(),
                },
            });
        }
        Ok(effects)
    }

    fn find(&self, id: Option<String>) -> Result<(u64, &Annotation), CollabError> {
        let id = id.ok_or_else(|| CollabError::BadMessage("missing field `id`".into()))?;
        parse_annotation_id(&id)
            .and_then(|seq| self.annotations.get(&seq).map(|a| (seq, a)))
            .ok_or_else(|| {
                let shown: String = id.chars().take(32).collect();
                CollabError::NotFound(format!("no live annotation '{shown}'"))
            })
    }

    /// Takes one annotation change from `id`'s token bucket.
    fn spend_allowance(&mut self, id: &ParticipantId, now_ms: u64) -> Result<(), CollabError> {
        let (tokens, at) = self
            .allowance
            .entry(id.clone())
            .or_insert((ANNOTATE_BURST, now_ms));
        let refill = now_ms.saturating_sub(*at) as f64 / 1000.0 * ANNOTATE_PER_SECOND;
        *tokens = (*tokens + refill).min(ANNOTATE_BURST);
        *at = (*at).max(now_ms);
        if *tokens < 1.0 {
            return Err(CollabError::RateLimited);
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// Whether replacing `old_bytes` of live annotations by `new` stays within the room's
    /// byte budget.
    fn within_budget(&self, old_bytes: usize, new: &Annotation) -> Result<(), CollabError> {
        let after = self.live_bytes - old_bytes.min(self.live_bytes) + annotation_bytes(new);
        if after > MAX_LIVE_BYTES {
            return Err(CollabError::TooBig(format!(
                "a room's live annotations are at most {MAX_LIVE_BYTES} bytes as JSON"
            )));
        }
        Ok(())
    }

    fn annotate(
        &self,
        who: &Collaborator,
        op: AnnotateOp,
        annotation: Option<Value>,
        id: Option<String>,
        reference: Option<String>,
        now_ms: u64,
    ) -> Result<Pending, CollabError> {
        let seq = self
            .seq
            .checked_add(1)
            .ok_or(CollabError::TooBig("sequence numbers exhausted".into()))?;
        let missing = || CollabError::BadMessage("missing field `annotation`".into());
        let (id, annotation) = match op {
            AnnotateOp::Add => {
                if who.role == Role::Observer {
                    return Err(CollabError::NotAllowed("observers do not annotate"));
                }
                if self.annotations.len() >= MAX_LIVE_ANNOTATIONS {
                    return Err(CollabError::TooBig(format!(
                        "a room has at most {MAX_LIVE_ANNOTATIONS} live annotations"
                    )));
                }
                let id = annotation_id(seq);
                let a = new_annotation(
                    annotation.ok_or_else(missing)?,
                    Authorship {
                        id: id.clone(),
                        author: &who.id,
                        author_name: &who.name,
                        author_key: &who.key,
                        now_ms,
                    },
                )?;
                self.within_budget(0, &a)?;
                (id, Some(Box::new(a)))
            }
            AnnotateOp::Update => {
                let (_, old) = self.find(id)?;
                if old.author_key != who.key {
                    return Err(CollabError::NotAllowed(
                        "only its author edits an annotation",
                    ));
                }
                let new = updated_annotation(old, annotation.ok_or_else(missing)?, now_ms)?;
                self.within_budget(annotation_bytes(old), &new)?;
                (old.id.clone(), Some(Box::new(new)))
            }
            AnnotateOp::Delete => {
                let (_, old) = self.find(id)?;
                if old.author_key != who.key && who.role != Role::Host {
                    return Err(CollabError::NotAllowed(
                        "only its author or the host deletes an annotation",
                    ));
                }
                (old.id.clone(), None)
            }
        };
        Ok(Pending {
            event: AnnotationEvent {
                seq,
                op,
                id,
                annotation,
                reference: None,
                by: who.id.clone(),
                at_ms: now_ms,
            },
            reference,
            from: who.id.clone(),
        })
    }

    /// Applies a stored annotation change and returns its echo to everyone (the sender's
    /// copy with its `ref`). The caller must not have let anything else touch the room since
    /// [`CollabRoom::handle`] returned `pending`; a stale one is dropped and logged.
    pub fn commit(&mut self, pending: Pending) -> Effects {
        let Pending {
            event,
            reference,
            from,
        } = pending;
        if event.seq != self.seq + 1 {
            tracing::error!(
                seq = event.seq,
                room_seq = self.seq,
                "stale annotation change committed; dropped"
            );
            return Effects::default();
        }
        let Some(key) = parse_annotation_id(&event.id) else {
            return Effects::default();
        };
        self.seq = event.seq;
        let old = match (&event.op, &event.annotation) {
            (AnnotateOp::Delete, _) => self.annotations.remove(&key),
            (_, Some(a)) => self.annotations.insert(key, (**a).clone()),
            (_, None) => None,
        };
        let added = self.annotations.get(&key).map_or(0, annotation_bytes);
        let removed = old.as_ref().map_or(0, annotation_bytes);
        self.live_bytes = (self.live_bytes + added).saturating_sub(removed);
        self.recent.push_back(event.clone());
        while self.recent.len() > RECENT_EVENTS {
            self.recent.pop_front();
        }
        let mut messages = Vec::new();
        let others = self.all_but(&from);
        if !others.is_empty() {
            messages.push(Outgoing {
                to: others,
                msg: CollabMessage::Annotation(event.clone()),
            });
        }
        if self.is_member(&from) {
            messages.push(Outgoing {
                to: vec![from],
                msg: CollabMessage::Annotation(AnnotationEvent { reference, ..event }),
            });
        }
        Effects {
            messages,
            durable: Vec::new(),
        }
    }

    fn presenter_control(
        &mut self,
        who: &Collaborator,
        action: PresenterAction,
        to: Option<String>,
    ) -> Result<Effects, CollabError> {
        let is_presenter = self.presenter.as_ref() == Some(&who.id);
        match action {
            PresenterAction::Request => {
                if who.role == Role::Observer {
                    return Err(CollabError::NotAllowed("observers do not present"));
                }
                if is_presenter || self.requests.contains(&who.id) {
                    // Nothing changes; tell the asker where things stand.
                    return Ok(Effects {
                        messages: vec![Outgoing {
                            to: vec![who.id.clone()],
                            msg: self.presenter_message(),
                        }],
                        durable: Vec::new(),
                    });
                }
                self.requests.push(who.id.clone());
            }
            PresenterAction::Grant => {
                if who.role != Role::Host && !is_presenter {
                    return Err(CollabError::NotAllowed(
                        "only the host or the presenter hands presenting over",
                    ));
                }
                let to = to.ok_or_else(|| CollabError::BadMessage("missing field `to`".into()))?;
                let Some(target) = self.members.iter().find(|m| m.id.as_str() == to) else {
                    let shown: String = to.chars().take(32).collect();
                    return Err(CollabError::NotFound(format!(
                        "no participant '{shown}' has opened the shared viewer"
                    )));
                };
                if target.role == Role::Observer {
                    return Err(CollabError::NotAllowed("observers do not present"));
                }
                let id = target.id.clone();
                self.set_presenter(Some(id));
            }
            PresenterAction::Release => {
                if !is_presenter {
                    return Err(CollabError::NotPresenter("presenter release"));
                }
                self.set_presenter(None);
            }
            PresenterAction::Take => {
                if who.role != Role::Host {
                    return Err(CollabError::NotAllowed("only the host takes presenting"));
                }
                self.set_presenter(Some(who.id.clone()));
            }
        }
        Ok(Effects {
            messages: vec![Outgoing {
                to: self.all(),
                msg: self.presenter_message(),
            }],
            durable: Vec::new(),
        })
    }

    /// `id` left the room (or its connection died): its requests go, presenting passes to
    /// the first host still here (or nobody), and everyone left is told.
    pub fn leave(&mut self, id: &ParticipantId) -> Effects {
        if !self.is_member(id) {
            return Effects::default();
        }
        self.members.retain(|m| &m.id != id);
        self.requests.retain(|r| r != id);
        self.allowance.remove(id);
        if self.presenter.as_ref() == Some(id) {
            let next = self
                .members
                .iter()
                .find(|m| m.role == Role::Host)
                .map(|m| m.id.clone());
            self.set_presenter(next);
        }
        let mut effects = Effects::default();
        if !self.members.is_empty() {
            effects.messages.push(Outgoing {
                to: self.all(),
                msg: self.presenter_message(),
            });
        }
        effects
    }
}

fn encoded_len(v: &impl Serialize) -> usize {
    serde_json::to_vec(v).map(|v| v.len()).unwrap_or(0)
}

/// Splits items into groups whose JSON (plus a header of `first` bytes for the first group,
/// `rest` for the others) fits one data-channel message. Always at least one group; an item
/// too big on its own still gets a group of its own (validation keeps that from happening).
fn chunk<T: Serialize>(items: impl Iterator<Item = T>, first: usize, rest: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = first;
    for item in items {
        let len = encoded_len(&item) + 1;
        if !current.is_empty() && size + len > MAX_SERVER_FRAME_BYTES {
            out.push(std::mem::take(&mut current));
            size = rest;
        }
        size += len;
        current.push(item);
    }
    out.push(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn person(id: &str, role: Role) -> Collaborator {
        Collaborator::unsigned(id.into(), role, format!("Dr {id}"))
    }

    fn host() -> Collaborator {
        person("h", Role::Host)
    }
    fn alice() -> Collaborator {
        person("a", Role::Participant)
    }
    fn bob() -> Collaborator {
        person("b", Role::Participant)
    }

    fn req(v: Value) -> CollabRequest {
        CollabRequest::parse(v).expect("well-formed request")
    }

    fn done(step: Result<Step, CollabError>) -> Effects {
        match step {
            Ok(Step::Done(e)) => e,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn pending(step: Result<Step, CollabError>) -> Pending {
        match step {
            Ok(Step::Durable(p)) => p,
            other => panic!("expected Durable, got {other:?}"),
        }
    }

    fn code(step: Result<Step, CollabError>) -> CollabErrorCode {
        match step {
            Err(e) => e.code(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn hello(room: &mut CollabRoom, who: &Collaborator) -> Effects {
        done(room.handle(who, req(json!({"type": "hello", "since": null})), 0))
    }

    fn arrow() -> Value {
        json!({"kind": "arrow", "study": "1.2", "series": "1.2.3", "sop": "1.2.3.4",
               "frame": 1, "points": [[10, 20], [30, 40]], "text": null, "color": "#ff0000",
               "stats": null})
    }

    thread_local! {
        /// Each test's own clock: 100 ms per `add`, as slow as the rate limit allows.
        static CLOCK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn add(room: &mut CollabRoom, who: &Collaborator, r: &str) -> Effects {
        let now = CLOCK.with(|c| {
            c.set(c.get() + 100);
            c.get()
        });
        let p = pending(room.handle(
            who,
            req(json!({"type": "annotate", "op": "add", "annotation": arrow(), "ref": r})),
            now,
        ));
        room.commit(p)
    }

    fn to_of(effects: &Effects, id: &str) -> Vec<CollabMessage> {
        effects
            .messages
            .iter()
            .filter(|o| o.to.iter().any(|t| t.as_str() == id))
            .map(|o| o.msg.clone())
            .collect()
    }

    /// Three in a room: host presents, alice and bob follow.
    fn board() -> CollabRoom {
        let mut room = CollabRoom::new();
        hello(&mut room, &host());
        hello(&mut room, &alice());
        hello(&mut room, &bob());
        room
    }

    #[test]
    fn first_host_to_say_hello_presents_and_everyone_is_told() {
        let mut room = CollabRoom::new();
        let e = hello(&mut room, &alice());
        assert!(matches!(
            &to_of(&e, "a")[..],
            [CollabMessage::Snapshot {
                presenter: None,
                seq: 0,
                more: false,
                ..
            }]
        ));
        let e = hello(&mut room, &host());
        assert!(matches!(
            &to_of(&e, "h")[..],
            [CollabMessage::Snapshot { presenter: Some(p), .. }] if p.as_str() == "h"
        ));
        assert_eq!(
            to_of(&e, "a"),
            vec![CollabMessage::Presenter {
                presenter: Some("h".into()),
                requests: vec![]
            }]
        );
        // A second host does not take over.
        let e = hello(&mut room, &person("h2", Role::Host));
        assert_eq!(room.presenter().map(|p| p.as_str()), Some("h"));
        assert!(to_of(&e, "a").is_empty());
    }

    #[test]
    fn only_the_presenter_drives_the_viewer_and_pointer() {
        let mut room = board();
        let state = json!({"layout": "1x1", "active": 0, "viewports": []});
        let e = done(room.handle(&host(), req(json!({"type": "viewer", "state": state})), 1));
        assert_eq!(e.durable, vec![DurableOp::Viewer(state.clone())]);
        assert_eq!(e.messages.len(), 1);
        assert_eq!(e.messages[0].to, vec!["a".into(), "b".into()]);
        assert_eq!(
            code(room.handle(&alice(), req(json!({"type": "viewer", "state": {}})), 1)),
            CollabErrorCode::NotPresenter
        );
        assert_eq!(
            code(room.handle(
                &alice(),
                req(json!({"type": "pointer", "viewport": 0, "x": 1, "y": 2})),
                1
            )),
            CollabErrorCode::NotPresenter
        );
        let e = done(room.handle(
            &host(),
            req(json!({"type": "pointer", "viewport": null, "x": null, "y": null})),
            1,
        ));
        assert_eq!(e.messages[0].to.len(), 2);
        assert!(e.durable.is_empty(), "pointers are never stored");
        // Hostile viewer states.
        for bad in [json!([1]), json!("x"), json!({"blob": "x".repeat(9000)})] {
            assert!(matches!(
                code(room.handle(&host(), req(json!({"type": "viewer", "state": bad})), 1)),
                CollabErrorCode::BadMessage | CollabErrorCode::TooBig
            ));
        }
        for bad in [
            json!({"type": "pointer", "viewport": 0, "x": 1}),
            json!({"type": "pointer", "viewport": 9, "x": 1, "y": 1}),
            json!({"type": "pointer", "viewport": 0, "x": 1e300, "y": 1}),
        ] {
            assert_eq!(
                code(room.handle(&host(), req(bad.clone()), 1)),
                CollabErrorCode::BadMessage,
                "{bad}"
            );
        }
        // The last good state is what a late joiner gets.
        let e = hello(&mut room, &person("c", Role::Participant));
        assert!(matches!(
            &to_of(&e, "c")[..],
            [CollabMessage::Snapshot { viewer: Some(v), .. }] if *v == state
        ));
    }

    #[test]
    fn annotations_are_ordered_and_echoed_with_ref_to_the_sender_only() {
        let mut room = board();
        let p = pending(room.handle(
            &alice(),
            req(json!({"type": "annotate", "op": "add", "annotation": arrow(), "ref": "mine-1"})),
            100,
        ));
        assert_eq!(p.event().seq, 1);
        assert_eq!(p.event().reference, None, "ref is never stored");
        assert_eq!(room.seq(), 0, "nothing changes before the commit");
        assert_eq!(room.annotations().count(), 0);
        let e = room.commit(p);
        assert_eq!(room.seq(), 1);
        let mine = to_of(&e, "a");
        assert!(matches!(
            &mine[..],
            [CollabMessage::Annotation(ev)] if ev.reference.as_deref() == Some("mine-1")
                && ev.seq == 1 && ev.annotation.as_ref().is_some_and(|a| a.author.as_str() == "a"
                && a.author_name == "Dr a" && a.id == "a-1")
        ));
        let theirs = to_of(&e, "h");
        assert!(matches!(
            &theirs[..],
            [CollabMessage::Annotation(ev)] if ev.reference.is_none() && ev.seq == 1
        ));
        assert_eq!(to_of(&e, "b"), theirs);
        add(&mut room, &bob(), "b1");
        add(&mut room, &host(), "h1");
        assert_eq!(room.seq(), 3);
        let ids: Vec<_> = room.annotations().map(|a| a.id.clone()).collect();
        assert_eq!(ids, ["a-1", "a-2", "a-3"]);
    }

    #[test]
    fn authors_edit_their_own_and_the_host_deletes_any() {
        let mut room = board();
        add(&mut room, &alice(), "r"); // a-1
        add(&mut room, &host(), "r"); // a-2
        let update = |id: &str| {
            req(json!({"type": "annotate", "op": "update", "id": id,
                       "annotation": {"color": "#00ff00"}}))
        };
        let delete = |id: &str| req(json!({"type": "annotate", "op": "delete", "id": id}));
        assert_eq!(
            code(room.handle(&bob(), update("a-1"), 1)),
            CollabErrorCode::NotAllowed
        );
        assert_eq!(
            code(room.handle(&host(), update("a-1"), 1)),
            CollabErrorCode::NotAllowed,
            "the host deletes, but does not edit, others' annotations"
        );
        assert_eq!(
            code(room.handle(&alice(), delete("a-2"), 1)),
            CollabErrorCode::NotAllowed
        );
        assert_eq!(
            code(room.handle(&alice(), delete("a-99"), 1)),
            CollabErrorCode::NotFound
        );
        assert_eq!(
            code(room.handle(&alice(), delete("'; drop"), 1)),
            CollabErrorCode::NotFound
        );
        let p = pending(room.handle(&alice(), update("a-1"), 700));
        let e = room.commit(p);
        assert!(matches!(
            &to_of(&e, "h")[..],
            [CollabMessage::Annotation(ev)] if ev.seq == 3 && ev.op == AnnotateOp::Update
                && ev.annotation.as_ref().is_some_and(|a| a.color == "#00ff00" && a.updated_ms == 700)
        ));
        let p = pending(room.handle(&host(), delete("a-1"), 8));
        room.commit(p);
        assert_eq!(room.seq(), 4);
        assert_eq!(
            code(room.handle(&alice(), update("a-1"), 9)),
            CollabErrorCode::NotFound,
            "deleted is gone"
        );
        let observer = person("o", Role::Observer);
        hello(&mut room, &observer);
        assert_eq!(
            code(room.handle(
                &observer,
                req(json!({"type": "annotate", "op": "add", "annotation": arrow()})),
                1
            )),
            CollabErrorCode::NotAllowed
        );
    }

    #[test]
    fn the_same_person_keeps_editing_after_a_reconnect() {
        let mut room = board();
        let signed = |id: &str, name: &str, key: &str| Collaborator {
            id: id.into(),
            role: Role::Participant,
            name: name.into(),
            key: key.into(),
        };
        let first = signed("a", "Dr A", "sub:u-1");
        hello(&mut room, &first);
        add(&mut room, &first, "r"); // a-1
        room.leave(&first.id);
        // Rejoined under a new participant id (and a new display name): same author key.
        let again = signed("a2", "Dr A. Smith", "sub:u-1");
        let snapshot = hello(&mut room, &again);
        assert!(matches!(
            &to_of(&snapshot, "a2")[..],
            [CollabMessage::Snapshot { author_key, annotations, .. }]
                if author_key == "sub:u-1" && annotations[0].author_key == "sub:u-1"
        ));
        let update = req(json!({"type": "annotate", "op": "update", "id": "a-1",
                                "annotation": {"text": "moved"}, "ref": "e1"}));
        let p = pending(room.handle(&again, update.clone(), 500));
        let e = room.commit(p);
        assert!(matches!(
            &to_of(&e, "a2")[..],
            [CollabMessage::Annotation(ev)] if ev.reference.as_deref() == Some("e1")
        ));
        // The same name with another key (someone else, or an unsigned join) may not.
        let impostor = signed("x", "Dr A. Smith", "signed:participant:Dr A. Smith");
        hello(&mut room, &impostor);
        assert_eq!(
            code(room.handle(&impostor, update, 600)),
            CollabErrorCode::NotAllowed
        );
    }

    #[test]
    fn annotations_stored_before_author_keys_get_a_name_key() {
        let mut room = board();
        add(&mut room, &alice(), "r");
        let mut stored: Vec<Annotation> = room.annotations().cloned().collect();
        stored[0].author_key.clear();
        let restored = CollabRoom::restore(StoredRoom {
            seq: 1,
            annotations: stored,
            recent: Vec::new(),
            viewer: None,
        });
        let a = restored.annotations().next().unwrap();
        assert_eq!(a.author_key, "name:Dr a");
    }

    #[test]
    fn a_failed_write_changes_nothing_and_seq_has_no_gap() {
        let mut room = board();
        let p = pending(room.handle(
            &alice(),
            req(json!({"type": "annotate", "op": "add", "annotation": arrow()})),
            1,
        ));
        drop(p); // the write failed
        assert_eq!(room.seq(), 0);
        let e = add(&mut room, &alice(), "r");
        assert!(matches!(&to_of(&e, "h")[..], [CollabMessage::Annotation(ev)] if ev.seq == 1));
        // A stale pending (another change committed meanwhile) is refused, not applied.
        let p1 = pending(room.handle(
            &alice(),
            req(json!({"type": "annotate", "op": "add", "annotation": arrow()})),
            1,
        ));
        let p2 = p1.clone();
        room.commit(p1);
        assert_eq!(room.commit(p2), Effects::default());
        assert_eq!(room.seq(), 2);
    }

    #[test]
    fn messages_before_hello_and_hostile_annotations_are_refused() {
        let mut room = board();
        let stranger = person("s", Role::Participant);
        assert_eq!(
            code(room.handle(
                &stranger,
                req(json!({"type": "annotate", "op": "add", "annotation": arrow()})),
                1
            )),
            CollabErrorCode::BadMessage
        );
        let mut huge = arrow();
        huge["kind"] = json!("freehand");
        huge["points"] = json!(vec![[1.0, 2.0]; 5000]);
        for bad in [
            json!({"type": "annotate", "op": "add"}),
            json!({"type": "annotate", "op": "add", "annotation": huge}),
            json!({"type": "annotate", "op": "add", "annotation": arrow(), "ref": "x".repeat(65)}),
            json!({"type": "annotate", "op": "update", "annotation": {}}),
        ] {
            assert_eq!(
                code(room.handle(&alice(), req(bad.clone()), 1)),
                CollabErrorCode::BadMessage,
                "{bad}"
            );
        }
        assert_eq!(room.seq(), 0);
        assert_eq!(room.annotations().count(), 0);
    }

    #[test]
    fn presenter_hand_over_follows_the_rules() {
        let mut room = board();
        let control = |action: &str, to: Option<&str>| {
            req(json!({"type": "presenter", "action": action, "to": to}))
        };
        // Alice asks; everyone sees the request.
        let e = done(room.handle(&alice(), control("request", None), 1));
        assert_eq!(e.messages[0].to.len(), 3);
        assert_eq!(
            e.messages[0].msg,
            CollabMessage::Presenter {
                presenter: Some("h".into()),
                requests: vec!["a".into()]
            }
        );
        // Bob may not grant or take.
        assert_eq!(
            code(room.handle(&bob(), control("grant", Some("b")), 1)),
            CollabErrorCode::NotAllowed
        );
        assert_eq!(
            code(room.handle(&bob(), control("take", None), 1)),
            CollabErrorCode::NotAllowed
        );
        assert_eq!(
            code(room.handle(&bob(), control("release", None), 1)),
            CollabErrorCode::NotPresenter
        );
        assert_eq!(
            code(room.handle(&host(), control("grant", Some("nobody")), 1)),
            CollabErrorCode::NotFound
        );
        // Host grants to Alice: her request is answered.
        let e = done(room.handle(&host(), control("grant", Some("a")), 1));
        assert_eq!(
            e.messages[0].msg,
            CollabMessage::Presenter {
                presenter: Some("a".into()),
                requests: vec![]
            }
        );
        // Alice now drives the viewer, the host no longer does.
        assert!(
            room.handle(&alice(), req(json!({"type": "viewer", "state": {}})), 1)
                .is_ok()
        );
        assert_eq!(
            code(room.handle(&host(), req(json!({"type": "viewer", "state": {}})), 1)),
            CollabErrorCode::NotPresenter
        );
        // Presenter hands to Bob, Bob releases, host takes.
        done(room.handle(&alice(), control("grant", Some("b")), 1));
        assert_eq!(room.presenter().map(|p| p.as_str()), Some("b"));
        done(room.handle(&bob(), control("release", None), 1));
        assert_eq!(room.presenter(), None);
        done(room.handle(&host(), control("take", None), 1));
        assert_eq!(room.presenter().map(|p| p.as_str()), Some("h"));
    }

    #[test]
    fn leaving_passes_presenting_to_the_next_host_and_clears_requests() {
        let mut room = board();
        let h2 = person("h2", Role::Host);
        hello(&mut room, &h2);
        done(room.handle(
            &alice(),
            req(json!({"type": "presenter", "action": "request"})),
            1,
        ));
        let e = room.leave(&alice().id);
        assert_eq!(
            e.messages[0].msg,
            CollabMessage::Presenter {
                presenter: Some("h".into()),
                requests: vec![]
            }
        );
        let e = room.leave(&host().id);
        assert_eq!(
            e.messages[0].msg,
            CollabMessage::Presenter {
                presenter: Some("h2".into()),
                requests: vec![]
            }
        );
        assert_eq!(e.messages[0].to, vec!["b".into(), "h2".into()]);
        let e = room.leave(&h2.id);
        assert_eq!(
            e.messages[0].msg,
            CollabMessage::Presenter {
                presenter: None,
                requests: vec![]
            }
        );
        assert_eq!(room.leave(&h2.id), Effects::default(), "idempotent");
        room.leave(&bob().id);
        assert!(room.is_empty());
    }

    #[test]
    fn hello_since_gives_changes_or_a_snapshot() {
        let mut room = board();
        for _ in 0..3 {
            add(&mut room, &alice(), "r");
        }
        let c = person("c", Role::Participant);
        let e = done(room.handle(&c, req(json!({"type": "hello", "since": 1})), 0));
        match &to_of(&e, "c")[..] {
            [
                CollabMessage::Changes {
                    from_seq: 1,
                    seq: 3,
                    events,
                    more: false,
                    ..
                },
            ] => {
                let seqs: Vec<u64> = events
                    .iter()
                    .map(|ev| match ev {
                        CollabMessage::Annotation(ev) => ev.seq,
                        other => panic!("{other:?}"),
                    })
                    .collect();
                assert_eq!(seqs, [2, 3]);
            }
            other => panic!("expected changes, got {other:?}"),
        }
        let e = done(room.handle(&c, req(json!({"type": "hello", "since": 3})), 0));
        assert!(matches!(
            &to_of(&e, "c")[..],
            [CollabMessage::Changes { events, .. }] if events.is_empty()
        ));
        // A resuming client also learns who presents (it may have missed a hand-over).
        assert!(matches!(
            &to_of(&e, "c")[..],
            [CollabMessage::Changes { presenter: Some(p), .. }] if p.as_str() == host().id.as_str()
        ));
        // From the future (another database): a snapshot.
        let e = done(room.handle(&c, req(json!({"type": "hello", "since": 50})), 0));
        assert!(matches!(
            &to_of(&e, "c")[..],
            [CollabMessage::Snapshot { seq: 3, .. }]
        ));
        // Too old to replay: a snapshot.
        for _ in 0..RECENT_EVENTS {
            add(&mut room, &alice(), "r");
        }
        let e = done(room.handle(&c, req(json!({"type": "hello", "since": 1})), 0));
        assert!(matches!(&to_of(&e, "c")[0], CollabMessage::Snapshot { .. }));
    }

    #[test]
    fn a_big_snapshot_comes_in_parts_that_each_fit_a_message() {
        let mut room = board();
        let mut freehand = arrow();
        freehand["kind"] = json!("freehand");
        freehand["points"] = json!(vec![[12345.67, 23456.78]; 1500]);
        for _ in 0..5 {
            let p = pending(room.handle(
                &alice(),
                req(json!({"type": "annotate", "op": "add", "annotation": freehand})),
                1,
            ));
            room.commit(p);
        }
        done(room.handle(
            &host(),
            req(json!({"type": "viewer", "state": {"pad": "x".repeat(8000)}})),
            1,
        ));
        let e = hello(&mut room, &person("c", Role::Participant));
        let frames = to_of(&e, "c");
        assert!(frames.len() >= 3, "{} frames", frames.len());
        let mut total = 0;
        for (i, f) in frames.iter().enumerate() {
            assert!(f.to_json().len() <= MAX_SERVER_FRAME_BYTES);
            let CollabMessage::Snapshot {
                part,
                more,
                annotations,
                viewer,
                ..
            } = f
            else {
                panic!("{f:?}")
            };
            assert_eq!(*part as usize, i);
            assert_eq!(*more, i + 1 < frames.len());
            assert_eq!(viewer.is_some(), i == 0);
            total += annotations.len();
        }
        assert_eq!(total, 5);
    }

    #[test]
    fn a_room_has_a_byte_budget_for_live_annotations() {
        let mut room = board();
        let mut outline = arrow();
        outline["kind"] = json!("freehand");
        outline["points"] = json!(vec![[12345.67, 23456.78]; 2000]);
        let mut now = 0;
        let mut add_outline = |room: &mut CollabRoom| {
            now += 1000; // slowly enough for the rate limit
            room.handle(
                &alice(),
                req(json!({"type": "annotate", "op": "add", "annotation": outline})),
                now,
            )
        };
        let mut added = 0;
        loop {
            match add_outline(&mut room) {
                Ok(Step::Durable(p)) => {
                    room.commit(p);
                    added += 1;
                }
                Err(e) => {
                    assert_eq!(e.code(), CollabErrorCode::TooBig);
                    break;
                }
                Ok(other) => panic!("{other:?}"),
            }
            assert!(added < 1000, "no budget");
        }
        let total: usize = room.annotations().map(annotation_bytes).sum();
        assert!(total <= MAX_LIVE_BYTES && total > MAX_LIVE_BYTES - MAX_ANNOTATION_BYTES);
        // Deleting one makes room again.
        let p = pending(room.handle(
            &alice(),
            req(json!({"type": "annotate", "op": "delete", "id": "a-1"})),
            u64::MAX / 2,
        ));
        room.commit(p);
        assert!(matches!(add_outline(&mut room), Ok(Step::Durable(_))));
    }

    #[test]
    fn annotation_changes_are_rate_limited_per_participant() {
        let mut room = board();
        let add = |room: &mut CollabRoom, who: &Collaborator, now| {
            room.handle(
                who,
                req(json!({"type": "annotate", "op": "add", "annotation": arrow()})),
                now,
            )
        };
        for _ in 0..ANNOTATE_BURST as usize {
            let p = pending(add(&mut room, &alice(), 1000));
            room.commit(p);
        }
        assert_eq!(
            code(add(&mut room, &alice(), 1000)),
            CollabErrorCode::RateLimited
        );
        // Others are not affected; time refills the allowance.
        assert!(matches!(add(&mut room, &bob(), 1000), Ok(Step::Durable(_))));
        assert!(matches!(
            add(&mut room, &alice(), 1100),
            Ok(Step::Durable(_))
        ));
        assert_eq!(
            code(add(&mut room, &alice(), 1100)),
            CollabErrorCode::RateLimited
        );
    }

    #[test]
    fn a_restored_room_continues_its_sequence() {
        let mut room = board();
        add(&mut room, &alice(), "r");
        add(&mut room, &alice(), "r");
        let stored = StoredRoom {
            seq: room.seq(),
            annotations: room.annotations().cloned().collect(),
            recent: room.recent.iter().cloned().collect(),
            viewer: Some(json!({"layout": "1x1"})),
        };
        let mut again = CollabRoom::restore(stored);
        assert_eq!(again.presenter(), None);
        let e = hello(&mut again, &host());
        assert!(matches!(
            &to_of(&e, "h")[..],
            [CollabMessage::Snapshot { seq: 2, annotations, viewer: Some(_), .. }] if annotations.len() == 2
        ));
        let e = add(&mut again, &host(), "r");
        assert!(matches!(
            &to_of(&e, "h")[..],
            [CollabMessage::Annotation(ev)] if ev.seq == 3 && ev.id == "a-3"
        ));
    }
}
