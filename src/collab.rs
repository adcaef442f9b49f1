//! The server's authority over every room's shared viewer: feeds the pure state machine
//! ([`consilium_signaling::collab`]), makes its writes durable, and sends its messages on the
//! participants' data channels.
//!
//! Each room has its own async lock, held from the moment a message is handled until its
//! messages are queued to the media engine: so a room's annotation changes are stored,
//! numbered and delivered in one strict order, while rooms never wait for each other (except
//! on the single database thread, which is fast next to a tumour board's pace).

use crate::Metrics;
use crate::collab_store::CollabStore;
use bytes::Bytes;
use consilium_sfu::SfuHandle;
use consilium_signaling::ParticipantId;
use consilium_signaling::collab::{
    CollabError, CollabMessage, CollabRequest, CollabRoom, Collaborator, DurableOp, Effects,
    Outgoing, Step, reference_of,
};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A room's state, `None` until loaded from the database (or after a failed load).
type RoomSlot = Arc<tokio::sync::Mutex<Option<CollabRoom>>>;

/// Every room's shared-viewer state, loaded on first use and dropped when its last
/// participant leaves (the database keeps what matters).
pub struct Collaboration {
    store: CollabStore,
    sfu: SfuHandle,
    metrics: Metrics,
    rooms: Mutex<HashMap<String, RoomSlot>>,
}

impl Collaboration {
    /// The authority over `store`, sending on `sfu`'s data channels.
    pub fn new(store: CollabStore, sfu: SfuHandle, metrics: Metrics) -> Self {
        Self {
            store,
            sfu,
            metrics,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    /// The database file, for operators and tests.
    pub fn db_path(&self) -> &std::path::Path {
        self.store.path()
    }

    fn slot(&self, room: &str) -> RoomSlot {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.entry(room.to_owned()).or_default().clone()
    }

    /// Handles one data-channel message whose type is a shared-viewer type.
    pub async fn handle(&self, room: &str, who: &Collaborator, msg: Value) {
        let reference = reference_of(&msg);
        let request = match CollabRequest::parse(msg) {
            Ok(r) => r,
            Err(e) => return self.refuse(who, "unknown", &e, reference).await,
        };
        let kind = request.kind();
        let annotate_op = match &request {
            CollabRequest::Annotate { op, .. } => Some(op.as_str()),
            _ => None,
        };
        let slot = self.slot(room);
        let mut guard = slot.lock().await;
        if guard.is_none() {
            match self.store.load(room).await {
                Ok(stored) => {
                    tracing::debug!(%room, seq = stored.seq, annotations = stored.annotations.len(), "shared viewer loaded");
                    *guard = Some(CollabRoom::restore(stored));
                }
                Err(e) => {
                    tracing::error!(%room, error = %e, "loading the shared viewer failed");
                    drop(guard);
                    return self
                        .refuse(who, kind, &CollabError::StorageFailed, reference)
                        .await;
                }
            }
        }
        let Some(state) = guard.as_mut() else {
            return;
        };
        match state.handle(who, request, unix_ms()) {
            Err(e) => {
                if let Some(op) = annotate_op {
                    self.count_op(op, "refused");
                }
                self.refuse(who, kind, &e, reference).await;
            }
            Ok(Step::Done(effects)) => self.apply(room, effects).await,
            Ok(Step::Durable(pending)) => {
                let op = pending.op().as_str();
                match self.store.append(room, pending.event()).await {
                    Ok(()) => {
                        self.count_op(op, "stored");
                        let effects = state.commit(pending);
                        self.apply(room, effects).await;
                    }
                    Err(e) => {
                        tracing::error!(%room, seq = pending.event().seq, error = %e, "storing an annotation change failed");
                        self.count_op(op, "storage_failed");
                        let reference = pending.reference();
                        self.refuse(who, kind, &CollabError::StorageFailed, reference)
                            .await;
                    }
                }
            }
        }
    }

    /// `id` left `room`: presenting and requests are settled and the rest are told.
    pub async fn leave(&self, room: &str, id: &ParticipantId) {
        let slot = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            match rooms.get(room) {
                Some(slot) => slot.clone(),
                None => return, // never used the shared viewer
            }
        };
        {
            let mut guard = slot.lock().await;
            if let Some(state) = guard.as_mut() {
                let effects = state.leave(id);
                self.apply(room, effects).await;
            }
        }
        drop(slot);
        self.evict_if_unused(room);
    }

    /// Forgets a room nobody uses: no participant in it and nobody else holding it (every
    /// holder takes its slot under the map lock, so a count of one means nobody).
    fn evict_if_unused(&self, room: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = rooms.get(room) else { return };
        if Arc::strong_count(slot) != 1 {
            return;
        }
        let unused = match slot.try_lock() {
            Ok(guard) => guard.as_ref().is_none_or(CollabRoom::is_empty),
            Err(_) => false,
        };
        if unused {
            rooms.remove(room);
        }
    }

    /// Writes every viewer state still waiting; called at shutdown.
    /// A room's annotations and last viewer state as stored. Annotations are on disk before
    /// anyone sees them, so this is what participants see; the viewer state is flushed first.
    pub async fn snapshot(
        &self,
        room: &str,
    ) -> Result<consilium_signaling::collab::StoredRoom, crate::collab_store::StoreError> {
        let _ = self.store.flush().await;
        self.store.load(room).await
    }

    pub async fn flush(&self) {
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "flushing viewer states failed");
        }
    }

    async fn apply(&self, room: &str, effects: Effects) {
        for op in &effects.durable {
            match op {
                DurableOp::Viewer(state) => self.store.save_viewer(room, state),
                DurableOp::Annotation(event) => {
                    // The state machine hands annotation writes over as `Pending`, never
                    // here; storing one late would break "stored before echoed".
                    tracing::error!(seq = event.seq, "unexpected lazy annotation write");
                }
            }
        }
        for Outgoing { to, msg } in effects.messages {
            self.send(to, &msg).await;
        }
    }

    async fn send(&self, to: Vec<ParticipantId>, msg: &CollabMessage) {
        if to.is_empty() {
            return;
        }
        let to = to.into_iter().map(|id| id.to_string()).collect();
        self.sfu.send_data(to, Bytes::from(msg.to_json())).await;
    }

    async fn refuse(
        &self,
        who: &Collaborator,
        kind: &str,
        err: &CollabError,
        reference: Option<String>,
    ) {
        let code = err.code().as_str();
        self.metrics.collab_errors.with_label_values(&[code]).inc();
        tracing::info!(participant = %who.id, %code, kind, error = %err, "refused shared-viewer message");
        self.send(vec![who.id.clone()], &err.to_message(reference))
            .await;
    }

    fn count_op(&self, op: &str, outcome: &str) {
        self.metrics
            .annotation_ops
            .with_label_values(&[op, outcome])
            .inc();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
