//! The DICOMweb study store: what the shared viewer loads images from.
//!
//! Uploaded instances (STOW-RS) are parsed with dicom-rs, kept content-addressed (SHA-256 of
//! the stored bytes) under `data_dir/studies/objects/`, and indexed in SQLite
//! (`data_dir/studies/index.sqlite`, study → series → instance). Every study belongs to the
//! room it was uploaded to; QIDO-RS and WADO-RS only show a room its own studies. Frames are
//! decoded on demand and kept in a bounded LRU. See docs/dicomweb.md for the HTTP interface.

pub mod export;
pub mod gsps;
pub mod index;
pub mod json;
pub mod parse;
pub mod phantom;
pub mod pixels;
pub mod routes;
pub mod stow;

pub use routes::router;

use index::{Index, IndexError, InstanceRow, SeriesRow, StudyFilter, StudyRow, Upsert};
use parse::{InstanceRecord, ParseError};
use pixels::{DecodeError, FrameCache, Frames};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Implementation Class UID written into the meta header of files the store writes itself
/// (legacy files given a meta header, the demo phantom).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.314159265358979323846264338327950288.9";
/// Implementation Version Name of those files.
pub const IMPLEMENTATION_VERSION_NAME: &str = "CONSILIUM_01";
/// The room the demo phantom is put in, and uploads without `?room=` go to.
pub const DEFAULT_ROOM: &str = "demo";

/// Limits of the store; defaults suit a tumour board (whole CT/MR studies, RT plans).
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Largest STOW-RS request body.
    pub max_request_bytes: u64,
    /// Largest single instance (also each entry of a zip).
    pub max_file_bytes: u64,
    /// Bytes of decoded pixels the frame cache keeps.
    pub frame_cache_bytes: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: 4 << 30,
            max_file_bytes: 2 << 30,
            frame_cache_bytes: 256 << 20,
        }
    }
}

/// Failures of the store as a whole (not of one uploaded file).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("study store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the study store's database lock is poisoned")]
    Poisoned,
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("stored file {0} is missing")]
    MissingObject(String),
}

/// Why one uploaded file was not stored; becomes a FailedSOPSequence item.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("the file is larger than the per-file limit of {0} bytes")]
    TooLarge(u64),
    #[error("study {study} already belongs to another room")]
    OtherRoom {
        study: String,
        sop_class_uid: String,
        sop_uid: String,
    },
    #[error("storing the file failed: {0}")]
    Store(String),
}

impl ImportError {
    /// SOP Class and Instance UID of the refused instance, when the file was read that far.
    pub fn identifiers(&self) -> Option<(&str, &str)> {
        match self {
            ImportError::OtherRoom {
                sop_class_uid,
                sop_uid,
                ..
            } => Some((sop_class_uid, sop_uid)),
            _ => None,
        }
    }

    /// The DICOM FailureReason (0008,1197) code for this refusal.
    pub fn failure_reason(&self) -> u16 {
        match self {
            ImportError::Parse(_) => 0xC000,
            ImportError::TooLarge(_) => 0xA700,
            ImportError::OtherRoom { .. } => 0x0124,
            ImportError::Store(_) => 0x0110,
        }
    }
}

/// What storing one file produced.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: InstanceRecord,
    pub outcome: Upsert,
}

/// The store: database, object files, decoded-frame cache.
pub struct StudyStore {
    root: PathBuf,
    index: Mutex<Index>,
    cache: FrameCache,
    limits: StoreLimits,
}

impl StudyStore {
    /// Opens (creating) the store under `data_dir/studies`.
    pub fn open(data_dir: &Path, limits: StoreLimits) -> Result<Self, StoreError> {
        let root = data_dir.join("studies");
        std::fs::create_dir_all(root.join("objects"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let index = Index::open(&root.join("index.sqlite"))?;
        Ok(Self {
            cache: FrameCache::new(limits.frame_cache_bytes),
            root,
            index: Mutex::new(index),
            limits,
        })
    }

    /// The limits this store enforces.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// A fresh temporary file path inside the store (same disk as the objects, so that
    /// storing is a rename).
    pub fn temp_path(&self) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.root.join("tmp").join(format!(
            "{}-{}.part",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn object_path(&self, sha: &str) -> PathBuf {
        let prefix = sha.get(..2).unwrap_or("00");
        self.root
            .join("objects")
            .join(prefix)
            .join(format!("{sha}.dcm"))
    }

    fn with_index<T>(
        &self,
        f: impl FnOnce(&mut Index) -> Result<T, IndexError>,
    ) -> Result<T, StoreError> {
        let mut g = self.index.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&mut g)?)
    }

    /// Whether the store holds no instance at all.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.with_index(|ix| ix.instance_count())? == 0)
    }

    /// Parses, stores and indexes the file at `path` (a temporary file, consumed) into `room`.
    /// Blocking: call it from a blocking thread.
    pub fn import_file(&self, room: &str, path: &Path) -> Result<Stored, ImportError> {
        let result = self.import_inner(room, path);
        let _ = std::fs::remove_file(path);
        result
    }

    fn import_inner(&self, room: &str, path: &Path) -> Result<Stored, ImportError> {
        let len = std::fs::metadata(path)
            .map_err(|e| ImportError::Store(e.to_string()))?
            .len();
        if len > self.limits.max_file_bytes {
            return Err(ImportError::TooLarge(self.limits.max_file_bytes));
        }
        let mut opened = parse::open_lenient(path)?;
        let record = parse::record(&mut opened)?;
        // A file with a broken or missing meta header is stored re-encoded with a proper one.
        let source = if opened.meta_ok {
            path.to_owned()
        } else {
            let rewritten = self.temp_path();
            let written = parse::guarded(|| {
                let f = std::fs::File::create(&rewritten)?;
                let mut w = std::io::BufWriter::new(f);
                opened
                    .obj
                    .write_all(&mut w)
                    .map_err(|e| ParseError::Unreadable(format!("re-encoding the file: {e}")))?;
                w.flush()?;
                Ok(())
            });
            if let Err(e) = written {
                let _ = std::fs::remove_file(&rewritten);
                return Err(e.into());
            }
            rewritten
        };
        drop(opened);
        let stored = self.store_object(room, &record, &source);
        if source != path {
            let _ = std::fs::remove_file(&source);
        }
        stored
    }

    fn store_object(
        &self,
        room: &str,
        record: &InstanceRecord,
        source: &Path,
    ) -> Result<Stored, ImportError> {
        let store_err = |e: std::io::Error| ImportError::Store(e.to_string());
        let (sha, size) = sha256_file(source).map_err(store_err)?;
        let dest = self.object_path(&sha);
        if !dest.exists() {
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir).map_err(store_err)?;
            }
            std::fs::rename(source, &dest)
                .or_else(|_| std::fs::copy(source, &dest).map(|_| ()))
                .map_err(store_err)?;
        }
        let outcome = self
            .with_index(|ix| ix.upsert(room, record, &sha, size))
            .map_err(|e| match e {
                StoreError::Index(IndexError::OtherRoom { study, .. }) => ImportError::OtherRoom {
                    study,
                    sop_class_uid: record.sop_class_uid.clone(),
                    sop_uid: record.sop_uid.clone(),
                },
                other => ImportError::Store(other.to_string()),
            });
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                // Do not leave an unreferenced object behind.
                if !self.sha_in_use(&sha) {
                    let _ = std::fs::remove_file(&dest);
                }
                return Err(e);
            }
        };
        if let Upsert::Replaced {
            orphaned: Some(old),
        } = &outcome
        {
            let _ = std::fs::remove_file(self.object_path(old));
        }
        Ok(Stored {
            record: record.clone(),
            outcome,
        })
    }

    fn sha_in_use(&self, sha: &str) -> bool {
        self.with_index(|ix| ix.sha_in_use(sha)).unwrap_or(true)
    }

    /// The room a study belongs to (`None`: no such study).
    pub fn study_room(&self, study: &str) -> Result<Option<String>, StoreError> {
        self.with_index(|ix| ix.study_room(study))
    }

    /// QIDO studies of a room.
    pub fn studies(&self, room: &str, filter: &StudyFilter) -> Result<Vec<StudyRow>, StoreError> {
        self.with_index(|ix| ix.studies(room, filter))
    }

    /// QIDO series of a study.
    pub fn series(&self, study: &str) -> Result<Vec<SeriesRow>, StoreError> {
        self.with_index(|ix| ix.series(study))
    }

    /// Instances of a series in slice order.
    pub fn instances(&self, study: &str, series: &str) -> Result<Vec<InstanceRow>, StoreError> {
        self.with_index(|ix| ix.instances(study, series))
    }

    /// One instance.
    pub fn instance(
        &self,
        study: &str,
        series: &str,
        sop: &str,
    ) -> Result<Option<InstanceRow>, StoreError> {
        self.with_index(|ix| ix.instance(study, series, sop))
    }

    /// Path of the stored Part-10 file of an instance.
    pub fn file_of(&self, row: &InstanceRow) -> Result<PathBuf, StoreError> {
        let p = self.object_path(&row.sha256);
        if p.is_file() {
            Ok(p)
        } else {
            Err(StoreError::MissingObject(row.sha256.clone()))
        }
    }

    /// Decoded frame `n` (1-based) of an instance, from the cache or decoded now: the whole
    /// instance at once when it is small enough (scrolling a multi-frame then costs one
    /// decode), else that frame alone. Blocking.
    pub fn frame(&self, row: &InstanceRow, n: u32) -> Result<FrameRef, StoreError> {
        let r = &row.record;
        let count = r.frames.unwrap_or(1).max(1);
        if n == 0 || n > count {
            return Err(DecodeError::NoSuchFrame(n, count).into());
        }
        let sample = (r.bits_allocated.unwrap_or(8) as u64).div_ceil(8).max(1);
        let total = r.rows.unwrap_or(0) as u64
            * r.columns.unwrap_or(0) as u64
            * r.samples_per_pixel.unwrap_or(1) as u64
            * sample
            * count as u64;
        if total <= pixels::WHOLE_DECODE_LIMIT {
            return Ok(FrameRef {
                frames: self.frames(row)?,
                index: n,
            });
        }
        let key = format!("{}#{n}", row.sha256);
        let frames = match self.cache.get(&key) {
            Some(f) => f,
            None => {
                let f = Arc::new(pixels::decode_one_frame(&self.file_of(row)?, n)?);
                self.cache.insert(&key, f.clone());
                f
            }
        };
        Ok(FrameRef { frames, index: 1 })
    }

    /// The decoded frames of an instance, from the cache or decoded now. Blocking.
    pub fn frames(&self, row: &InstanceRow) -> Result<Arc<Frames>, StoreError> {
        if let Some(f) = self.cache.get(&row.sha256) {
            return Ok(f);
        }
        let frames = Arc::new(pixels::decode_file(&self.file_of(row)?)?);
        self.cache.insert(&row.sha256, frames.clone());
        Ok(frames)
    }

    /// DICOM JSON of an instance without its pixel data (WADO-RS metadata). Blocking.
    pub fn metadata(&self, row: &InstanceRow) -> Result<serde_json::Value, StoreError> {
        let path = self.file_of(row)?;
        json::instance_metadata(&path).map_err(|e| StoreError::Decode(DecodeError::Open(e)))
    }
}

/// One decoded frame, held in the cache's buffer.
pub struct FrameRef {
    frames: Arc<Frames>,
    index: u32,
}

impl FrameRef {
    /// The frame's bytes (little-endian stored values).
    pub fn bytes(&self) -> &[u8] {
        self.frames.frame(self.index).unwrap_or(&[])
    }
}

/// SHA-256 (hex) and length of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}
