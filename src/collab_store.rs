//! The durable side of the shared viewer: every annotation change and each room's last
//! viewer state, in SQLite under `data_dir`.
//!
//! A tumour board's annotations are clinical working material: a change is committed with
//! `synchronous=FULL` (fsynced through the WAL) before anyone is told about it, so what a
//! participant saw survives a crash or restart. The viewer state is only a viewport; it is
//! coalesced and written at most every [`VIEWER_DEBOUNCE`] per room.
//!
//! One dedicated thread owns the connection and serves a channel, so SQLite's blocking
//! calls never run on the async executor, and writes are applied in the order they were
//! sent (the room authority sends one annotation change at a time per room and waits).

use consilium_signaling::collab::{
    AnnotateOp, Annotation, AnnotationEvent, RECENT_EVENTS, StoredRoom,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Longest a room's newest viewer state waits before it is written.
pub const VIEWER_DEBOUNCE: Duration = Duration::from_millis(500);

/// The database file inside `data_dir`.
pub const DB_FILE: &str = "collaboration.sqlite3";

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data does not parse: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("{0}")]
    Inconsistent(String),
    #[error("the store thread has stopped")]
    Stopped,
}

enum Command {
    Load {
        room: String,
        reply: oneshot::Sender<Result<StoredRoom, StoreError>>,
    },
    Append {
        room: String,
        event: Box<AnnotationEvent>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Viewer {
        room: String,
        state: String,
    },
    Flush {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The handle the server holds: cheap calls that hand work to the store thread.
pub struct CollabStore {
    commands: mpsc::Sender<Command>,
    path: PathBuf,
}

impl CollabStore {
    /// Opens (creating the directory and schema if needed) the database in `data_dir` and
    /// starts its thread. Fails at startup rather than at the first annotation.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let conn = open_connection(&path)?;
        let (commands, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("collab-store".into())
            .spawn(move || Worker::new(conn).run(rx))?;
        Ok(Self { commands, path })
    }

    /// Where the database is (operators back it up; tests poke at it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Everything the database has about `room` (empty for a new room).
    pub async fn load(&self, room: &str) -> Result<StoredRoom, StoreError> {
        let room = room.to_owned();
        self.ask(|reply| Command::Load { room, reply }).await
    }

    /// Writes one annotation change durably; returns once it is on disk.
    pub async fn append(&self, room: &str, event: &AnnotationEvent) -> Result<(), StoreError> {
        let room = room.to_owned();
        let event = Box::new(event.clone());
        self.ask(|reply| Command::Append { room, event, reply })
            .await
    }

    /// Records the room's newest viewer state, to be written soon (not waited for).
    pub fn save_viewer(&self, room: &str, state: &Value) {
        let _ = self.commands.send(Command::Viewer {
            room: room.to_owned(),
            state: state.to_string(),
        });
    }

    /// Writes every viewer state still waiting (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.ask(|reply| Command::Flush { reply }).await
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Annotations are acknowledged only once fsynced.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS annotation_log (
             room TEXT NOT NULL,
             seq INTEGER NOT NULL,
             op TEXT NOT NULL,
             annotation_id TEXT NOT NULL,
             by_participant TEXT NOT NULL,
             at_ms INTEGER NOT NULL,
             event TEXT NOT NULL,
             PRIMARY KEY (room, seq)
         );
         CREATE TABLE IF NOT EXISTS annotations (
             room TEXT NOT NULL,
             id TEXT NOT NULL,
             created_seq INTEGER NOT NULL,
             body TEXT NOT NULL,
             PRIMARY KEY (room, id)
         );
         CREATE TABLE IF NOT EXISTS viewer_state (
             room TEXT PRIMARY KEY,
             state TEXT NOT NULL,
             updated_ms INTEGER NOT NULL
         );
         PRAGMA user_version = 1;",
    )?;
    Ok(conn)
}

struct Worker {
    conn: Connection,
    /// Viewer states not yet written, with when the oldest unwritten one arrived.
    viewers: HashMap<String, (String, Instant)>,
}

impl Worker {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            viewers: HashMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            let next = match self.viewers.values().map(|(_, since)| *since).min() {
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(oldest) => {
                    let due = oldest + VIEWER_DEBOUNCE;
                    rx.recv_timeout(due.saturating_duration_since(Instant::now()))
                }
            };
            match next {
                Ok(command) => self.command(command),
                Err(mpsc::RecvTimeoutError::Timeout) => self.write_viewers(false),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.write_viewers(true);
                    return;
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Load { room, reply } => {
                let _ = reply.send(self.load(&room));
            }
            Command::Append { room, event, reply } => {
                let _ = reply.send(self.append(&room, &event));
            }
            Command::Viewer { room, state } => {
                let since = self
                    .viewers
                    .get(&room)
                    .map_or_else(Instant::now, |(_, since)| *since);
                self.viewers.insert(room, (state, since));
                self.write_viewers(false);
            }
            Command::Flush { reply } => {
                let _ = reply.send(self.try_write_viewers(true));
            }
        }
    }

    fn write_viewers(&mut self, all: bool) {
        if let Err(e) = self.try_write_viewers(all) {
            // Kept in memory and retried; a viewport is not worth more than a log line.
            tracing::warn!(error = %e, "writing viewer states failed");
        }
    }

    fn try_write_viewers(&mut self, all: bool) -> Result<(), StoreError> {
        let now = Instant::now();
        let due: Vec<String> = self
            .viewers
            .iter()
            .filter(|(_, (_, since))| all || now.duration_since(*since) >= VIEWER_DEBOUNCE)
            .map(|(room, _)| room.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for room in &due {
            if let Some((state, _)) = self.viewers.get(room) {
                tx.execute(
                    "INSERT INTO viewer_state (room, state, updated_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (room) DO UPDATE SET state = excluded.state,
                                                      updated_ms = excluded.updated_ms",
                    params![room, state, unix_ms()],
                )?;
            }
        }
        tx.commit()?;
        for room in due {
            self.viewers.remove(&room);
        }
        Ok(())
    }

    fn load(&self, room: &str) -> Result<StoredRoom, StoreError> {
        let seq: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM annotation_log WHERE room = ?1",
            [room],
            |r| r.get(0),
        )?;
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body FROM annotations WHERE room = ?1 ORDER BY created_seq")?;
        let annotations = stmt
            .query_map([room], |r| r.get::<_, String>(0))?
            .map(|body| Ok(serde_json::from_str::<Annotation>(&body?)?))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT event FROM annotation_log WHERE room = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let mut recent = stmt
            .query_map(params![room, RECENT_EVENTS as i64], |r| {
                r.get::<_, String>(0)
            })?
            .map(|event| Ok(serde_json::from_str::<AnnotationEvent>(&event?)?))
            .collect::<Result<Vec<_>, StoreError>>()?;
        recent.reverse();
        let viewer = match self.viewers.get(room) {
            Some((state, _)) => Some(state.clone()),
            None => self
                .conn
                .query_row(
                    "SELECT state FROM viewer_state WHERE room = ?1",
                    [room],
                    |r| r.get::<_, String>(0),
                )
                .optional()?,
        };
        let viewer = viewer.map(|s| serde_json::from_str(&s)).transpose()?;
        Ok(StoredRoom {
            seq: u64::try_from(seq).unwrap_or(0),
            annotations,
            recent,
            viewer,
        })
    }

    fn append(&mut self, room: &str, event: &AnnotationEvent) -> Result<(), StoreError> {
        let seq = i64::try_from(event.seq)
            .map_err(|_| StoreError::Inconsistent("seq out of range".into()))?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO annotation_log (room, seq, op, annotation_id, by_participant, at_ms, event)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                room,
                seq,
                event.op.as_str(),
                event.id,
                event.by.as_str(),
                i64::try_from(event.at_ms).unwrap_or(i64::MAX),
                serde_json::to_string(event)?,
            ],
        )?;
        let body = event
            .annotation
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        let changed = match (event.op, body) {
            (AnnotateOp::Delete, _) => tx.execute(
                "DELETE FROM annotations WHERE room = ?1 AND id = ?2",
                params![room, event.id],
            )?,
            (AnnotateOp::Add, Some(body)) => tx.execute(
                "INSERT INTO annotations (room, id, created_seq, body) VALUES (?1, ?2, ?3, ?4)",
                params![room, event.id, seq, body],
            )?,
            (AnnotateOp::Update, Some(body)) => tx.execute(
                "UPDATE annotations SET body = ?3 WHERE room = ?1 AND id = ?2",
                params![room, event.id, body],
            )?,
            (_, None) => 0,
        };
        if changed != 1 {
            // The room in memory and the database disagree: refuse rather than diverge.
            return Err(StoreError::Inconsistent(format!(
                "annotation {} is not in the database",
                event.id
            )));
        }
        tx.commit()?;
        Ok(())
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use consilium_signaling::collab::AnnotationKind;
    use serde_json::json;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "consilium-collab-store-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn annotation(id: &str) -> Annotation {
        Annotation {
            id: id.into(),
            kind: AnnotationKind::Line,
            study: "1.2".into(),
            series: "1.2.3".into(),
            sop: "1.2.3.4".into(),
            frame: 1,
            points: vec![[0.0, 0.0], [1.0, 1.0]],
            text: None,
            color: "#00ff00".into(),
            stats: None,
            author: "p-1".into(),
            window: None,
            author_name: "Dr A".into(),
            author_key: "name:Dr A".into(),
            created_ms: 1,
            updated_ms: 1,
        }
    }

    fn event(seq: u64, op: AnnotateOp, id: &str) -> AnnotationEvent {
        AnnotationEvent {
            seq,
            op,
            id: id.into(),
            annotation: (op != AnnotateOp::Delete).then(|| Box::new(annotation(id))),
            reference: None,
            by: "p-1".into(),
            at_ms: seq,
        }
    }

    #[tokio::test]
    async fn changes_survive_reopening_and_failures_are_reported() {
        let d = dir("reopen");
        {
            let store = CollabStore::open(&d).unwrap();
            assert_eq!(store.load("r").await.unwrap(), StoredRoom::default());
            store
                .append("r", &event(1, AnnotateOp::Add, "a-1"))
                .await
                .unwrap();
            store
                .append("r", &event(2, AnnotateOp::Add, "a-2"))
                .await
                .unwrap();
            store
                .append("r", &event(3, AnnotateOp::Delete, "a-1"))
                .await
                .unwrap();
            // A duplicate seq or a change to a missing annotation is refused, not applied.
            assert!(
                store
                    .append("r", &event(3, AnnotateOp::Add, "a-3"))
                    .await
                    .is_err()
            );
            assert!(
                store
                    .append("r", &event(4, AnnotateOp::Update, "a-9"))
                    .await
                    .is_err()
            );
            store.save_viewer("r", &json!({"layout": "1x2"}));
            // Before the debounce: still served from memory.
            assert_eq!(
                store.load("r").await.unwrap().viewer,
                Some(json!({"layout": "1x2"}))
            );
            store.flush().await.unwrap();
        }
        let store = CollabStore::open(&d).unwrap();
        let room = store.load("r").await.unwrap();
        assert_eq!(room.seq, 3);
        assert_eq!(room.annotations, vec![annotation("a-2")]);
        assert_eq!(
            room.recent.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(room.viewer, Some(json!({"layout": "1x2"})));
        assert_eq!(store.load("other").await.unwrap(), StoredRoom::default());

        // A failing disk (here: a trigger that aborts every log insert) is an error.
        let conn = Connection::open(store.path()).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON annotation_log
             BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .unwrap();
        assert!(
            store
                .append("r", &event(4, AnnotateOp::Add, "a-4"))
                .await
                .is_err()
        );
        assert_eq!(store.load("r").await.unwrap().seq, 3);
        let _ = std::fs::remove_dir_all(&d);
    }
}
