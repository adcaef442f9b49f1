//! STOW-RS: receiving instances. The body is streamed to disk one part at a time (a 2 GB
//! upload never sits in memory), each part is parsed from its temporary file, and every file
//! gets its own verdict: stored, or refused with a reason.

use super::{ImportError, Stored, StudyStore};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt;

/// Why a whole STOW request was refused (as opposed to one of its files).
#[derive(Debug, thiserror::Error)]
pub enum StowError {
    #[error(
        "unsupported Content-Type '{0}': send multipart/related; type=\"application/dicom\", application/dicom or application/zip"
    )]
    UnsupportedMediaType(String),
    #[error("the multipart Content-Type has no boundary parameter")]
    NoBoundary,
    #[error("the request body is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the request body is not valid multipart/related: {0}")]
    BadMultipart(String),
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("the request holds no file")]
    Empty,
    #[error("writing the upload to disk: {0}")]
    Io(#[from] std::io::Error),
}

/// One file the upload refused.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The part's file name, the zip entry name, or `part N`.
    pub name: String,
    pub reason: String,
    pub code: u16,
    pub sop_class_uid: Option<String>,
    pub sop_uid: Option<String>,
}

/// The verdicts of one STOW request.
#[derive(Debug, Default)]
pub struct StowReport {
    pub stored: Vec<Stored>,
    pub failed: Vec<Failure>,
}

impl StowReport {
    fn add(&mut self, name: String, result: Result<Stored, ImportError>) {
        match result {
            Ok(s) => self.stored.push(s),
            Err(e) => {
                tracing::info!(file = %name, reason = %e, "STOW: file refused");
                let ids = e.identifiers();
                self.failed.push(Failure {
                    name,
                    code: e.failure_reason(),
                    reason: e.to_string(),
                    sop_class_uid: ids.map(|(c, _)| c.to_owned()),
                    sop_uid: ids.map(|(_, u)| u.to_owned()),
                })
            }
        }
    }

    /// HTTP status per PS3.18 10.5.3: 200 all stored, 202 some refused, 409 none stored.
    pub fn status(&self) -> u16 {
        match (self.stored.is_empty(), self.failed.is_empty()) {
            (false, true) => 200,
            (false, false) => 202,
            _ => 409,
        }
    }

    /// The STOW-RS response body. Each failed item carries, besides FailureReason, the
    /// reason in words in ErrorComment (0000,0902), prefixed by the file's name.
    pub fn to_json(&self, base: &str) -> Value {
        let url = |r: &super::parse::InstanceRecord| {
            format!(
                "{base}/studies/{}/series/{}/instances/{}",
                r.study_uid, r.series_uid, r.sop_uid
            )
        };
        let referenced: Vec<Value> = self
            .stored
            .iter()
            .map(|s| {
                json!({
                    "00081150": {"vr": "UI", "Value": [s.record.sop_class_uid]},
                    "00081155": {"vr": "UI", "Value": [s.record.sop_uid]},
                    "00081190": {"vr": "UR", "Value": [url(&s.record)]},
                })
            })
            .collect();
        let failed: Vec<Value> = self
            .failed
            .iter()
            .map(|f| {
                let mut item = json!({
                    "00081197": {"vr": "US", "Value": [f.code]},
                    "00000902": {"vr": "LO", "Value": [format!("{}: {}", f.name, f.reason)]},
                });
                if let Some(c) = &f.sop_class_uid {
                    item["00081150"] = json!({"vr": "UI", "Value": [c]});
                }
                if let Some(u) = &f.sop_uid {
                    item["00081155"] = json!({"vr": "UI", "Value": [u]});
                }
                item
            })
            .collect();
        let mut out = serde_json::Map::new();
        let mut studies: Vec<&str> = self
            .stored
            .iter()
            .map(|s| s.record.study_uid.as_str())
            .collect();
        studies.dedup();
        if studies.len() == 1 {
            out.insert(
                "00081190".into(),
                json!({"vr": "UR", "Value": [format!("{base}/studies/{}", studies[0])]}),
            );
        }
        if !referenced.is_empty() {
            out.insert("00081199".into(), json!({"vr": "SQ", "Value": referenced}));
        }
        if !failed.is_empty() {
            out.insert("00081198".into(), json!({"vr": "SQ", "Value": failed}));
        }
        Value::Object(out)
    }
}

/// What kind of body (or part) this is.
enum Kind {
    Dicom,
    Zip,
    Multipart(String),
}

fn classify(content_type: &str) -> Result<Kind, StowError> {
    let lower = content_type.to_ascii_lowercase();
    let essence = lower.split(';').next().unwrap_or("").trim();
    match essence {
        "application/dicom" | "application/octet-stream" | "" => Ok(Kind::Dicom),
        "application/zip" | "application/x-zip-compressed" => Ok(Kind::Zip),
        "multipart/related" | "multipart/mixed" | "multipart/form-data" => {
            boundary(content_type).map(Kind::Multipart)
        }
        _ => Err(StowError::UnsupportedMediaType(content_type.to_owned())),
    }
}

/// The boundary parameter of a multipart Content-Type (quoted or not).
fn boundary(content_type: &str) -> Result<String, StowError> {
    for param in content_type.split(';').skip(1) {
        if let Some((k, v)) = param.split_once('=')
            && k.trim().eq_ignore_ascii_case("boundary")
        {
            let v = v.trim().trim_matches('"');
            if !v.is_empty() && v.len() <= 200 {
                return Ok(v.to_owned());
            }
        }
    }
    Err(StowError::NoBoundary)
}

/// Receives one STOW-RS request body into `room`.
pub async fn receive<S, E>(
    store: Arc<StudyStore>,
    room: String,
    content_type: &str,
    body: S,
) -> Result<StowReport, StowError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let kind = classify(content_type)?;
    let limit = store.limits().max_request_bytes;
    let seen = Arc::new(AtomicU64::new(0));
    let counted = {
        let seen = seen.clone();
        body.map(move |chunk| match chunk {
            Ok(b) => {
                let total = seen.fetch_add(b.len() as u64, Ordering::Relaxed) + b.len() as u64;
                if total > limit {
                    Err(BodyError(format!("body over the limit of {limit} bytes")))
                } else {
                    Ok(b)
                }
            }
            Err(e) => Err(BodyError(e.to_string())),
        })
    };
    let over = |seen: &AtomicU64| seen.load(Ordering::Relaxed) > limit;
    let mut report = StowReport::default();
    match kind {
        Kind::Dicom | Kind::Zip => {
            let tmp = store.temp_path();
            let written = write_stream(&tmp, counted, store.limits().max_file_bytes).await;
            match written {
                Ok(Written::Complete) => {}
                Ok(Written::TooLarge) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    report.add(
                        "body".into(),
                        Err(ImportError::TooLarge(store.limits().max_file_bytes)),
                    );
                    return Ok(report);
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(if over(&seen) {
                        StowError::TooLarge(limit)
                    } else {
                        e
                    });
                }
            }
            let zip = matches!(kind, Kind::Zip);
            import_part(&store, &room, tmp, "body".into(), zip, &mut report).await;
        }
        Kind::Multipart(b) => {
            let mut mp = multer::Multipart::new(counted, b);
            let mut n = 0usize;
            loop {
                let field = match mp.next_field().await {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) if over(&seen) => {
                        let _ = e;
                        return Err(StowError::TooLarge(limit));
                    }
                    Err(e) => return Err(StowError::BadMultipart(e.to_string())),
                };
                n += 1;
                let name = field
                    .file_name()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("part {n}"));
                let zip = field
                    .content_type()
                    .is_some_and(|m| m.essence_str().eq_ignore_ascii_case("application/zip"));
                let tmp = store.temp_path();
                let written = write_field(&tmp, field, store.limits().max_file_bytes).await;
                match written {
                    Ok(Written::Complete) => {
                        import_part(&store, &room, tmp, name, zip, &mut report).await
                    }
                    Ok(Written::TooLarge) => {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        report.add(
                            name,
                            Err(ImportError::TooLarge(store.limits().max_file_bytes)),
                        );
                    }
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return Err(if over(&seen) {
                            StowError::TooLarge(limit)
                        } else {
                            e
                        });
                    }
                }
            }
            if n == 0 {
                return Err(StowError::Empty);
            }
        }
    }
    Ok(report)
}

#[derive(Debug)]
struct BodyError(String);
impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for BodyError {}

enum Written {
    Complete,
    TooLarge,
}

async fn write_stream<S>(path: &Path, mut s: S, max: u64) -> Result<Written, StowError>
where
    S: Stream<Item = Result<Bytes, BodyError>> + Unpin,
{
    let mut f = tokio::fs::File::create(path).await?;
    let mut n = 0u64;
    let mut too_large = false;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| StowError::Body(e.0))?;
        n += chunk.len() as u64;
        if n > max {
            too_large = true;
            continue;
        }
        f.write_all(&chunk).await?;
    }
    f.flush().await?;
    Ok(if too_large {
        Written::TooLarge
    } else {
        Written::Complete
    })
}

async fn write_field(
    path: &Path,
    mut field: multer::Field<'_>,
    max: u64,
) -> Result<Written, StowError> {
    let mut f = tokio::fs::File::create(path).await?;
    let mut n = 0u64;
    let mut too_large = false;
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(StowError::BadMultipart(e.to_string())),
        };
        n += chunk.len() as u64;
        if n > max {
            too_large = true;
            continue;
        }
        f.write_all(&chunk).await?;
    }
    f.flush().await?;
    Ok(if too_large {
        Written::TooLarge
    } else {
        Written::Complete
    })
}

/// Stores one received file (or every file of a received zip), on a blocking thread.
async fn import_part(
    store: &Arc<StudyStore>,
    room: &str,
    tmp: PathBuf,
    name: String,
    zip: bool,
    report: &mut StowReport,
) {
    let store = store.clone();
    let room = room.to_owned();
    let results = tokio::task::spawn_blocking(move || {
        if zip || looks_like_zip(&tmp) {
            let r = import_zip(&store, &room, &tmp);
            let _ = std::fs::remove_file(&tmp);
            r.unwrap_or_else(|e| vec![(name, Err(e))])
        } else {
            vec![(name, store.import_file(&room, &tmp))]
        }
    })
    .await;
    match results {
        Ok(results) => {
            for (name, r) in results {
                report.add(name, r);
            }
        }
        Err(e) => report.add(
            "upload".into(),
            Err(ImportError::Store(format!("the import task failed: {e}"))),
        ),
    }
}

fn looks_like_zip(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == *b"PK\x03\x04"
}

/// Each file's name and what became of it.
type Verdicts = Vec<(String, Result<Stored, ImportError>)>;

/// Most entries one zip may hold.
const MAX_ZIP_ENTRIES: usize = 100_000;

/// Imports every file of a zip, each with its own verdict. Directory entries and the usual
/// companions of a DICOM export (DICOMDIR, READMEs, viewer executables) are refused
/// individually like any non-DICOM file, except DICOMDIR and directories, which are skipped.
fn import_zip(store: &StudyStore, room: &str, path: &Path) -> Result<Verdicts, ImportError> {
    let bad = |e: String| ImportError::Parse(super::parse::ParseError::NotDicom(e));
    let file = std::fs::File::open(path).map_err(|e| ImportError::Store(e.to_string()))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("unreadable zip archive: {e}")))?;
    if archive.len() > MAX_ZIP_ENTRIES {
        return Err(bad(format!(
            "the zip holds more than {MAX_ZIP_ENTRIES} entries"
        )));
    }
    let max = store.limits().max_file_bytes;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut entry = match archive.by_index(i) {
            Ok(e) => e,
            Err(e) => {
                out.push((
                    format!("entry {i}"),
                    Err(bad(format!("unreadable zip entry: {e}"))),
                ));
                continue;
            }
        };
        let name = entry
            .name()
            .map(|n| n.into_owned())
            .unwrap_or_else(|_| format!("entry {i}"));
        if entry.is_dir()
            || name
                .rsplit('/')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
        {
            continue;
        }
        if entry.size() > max {
            out.push((name, Err(ImportError::TooLarge(max))));
            continue;
        }
        let tmp = store.temp_path();
        let copied = std::fs::File::create(&tmp).and_then(|mut f| {
            // The declared size may lie: never extract more than the limit.
            std::io::copy(&mut (&mut entry).take(max + 1), &mut f)
        });
        match copied {
            Ok(n) if n > max => {
                let _ = std::fs::remove_file(&tmp);
                out.push((name, Err(ImportError::TooLarge(max))));
            }
            Ok(_) => {
                let r = store.import_file(room, &tmp);
                out.push((name, r));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                out.push((name, Err(bad(format!("extracting the zip entry: {e}")))));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(matches!(
            classify(r#"multipart/related; type="application/dicom"; boundary="abc""#),
            Ok(Kind::Multipart(b)) if b == "abc"
        ));
        assert!(matches!(
            classify("multipart/related; boundary=xyz; type=application/dicom"),
            Ok(Kind::Multipart(b)) if b == "xyz"
        ));
        assert!(matches!(
            classify("multipart/related"),
            Err(StowError::NoBoundary)
        ));
        assert!(matches!(classify("application/dicom"), Ok(Kind::Dicom)));
        assert!(matches!(classify("application/zip"), Ok(Kind::Zip)));
        assert!(matches!(
            classify("text/plain"),
            Err(StowError::UnsupportedMediaType(_))
        ));
    }
}
