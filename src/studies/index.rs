//! The SQLite index (study → series → instance): what QIDO answers from, and the map from a
//! SOP Instance UID to its content-addressed file. WAL mode, one connection behind a mutex;
//! callers run it on blocking threads.

use super::parse::InstanceRecord;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

/// Index failures (a corrupt or unwritable database): the server answers 500 and logs them.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("study index database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("study {study} belongs to room '{room}'")]
    OtherRoom { study: String, room: String },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    patient_name TEXT, patient_id TEXT, patient_birth_date TEXT, patient_sex TEXT,
    study_date TEXT, study_time TEXT, study_description TEXT, accession_number TEXT,
    study_id TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_room ON studies(room);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT, series_description TEXT, series_number INTEGER,
    frame_of_reference_uid TEXT
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    instance_number INTEGER,
    rows INTEGER, columns INTEGER, frames INTEGER, samples_per_pixel INTEGER,
    image_position TEXT, image_orientation TEXT, pixel_spacing TEXT,
    slice_thickness REAL, rescale_slope REAL, rescale_intercept REAL,
    window_center TEXT, window_width TEXT,
    bits_allocated INTEGER, bits_stored INTEGER, pixel_representation INTEGER,
    photometric TEXT,
    slice_position REAL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_sha ON instances(sha256);
";

/// The open database.
pub struct Index {
    conn: Connection,
}

/// What storing one instance did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upsert {
    /// New instance.
    Inserted,
    /// The same bytes were already stored: nothing changed (idempotent re-upload).
    Unchanged,
    /// The instance existed with other bytes; the index now points at the new file. The old
    /// file's hash is returned if no instance uses it any more (the caller deletes it).
    Replaced { orphaned: Option<String> },
}

/// One study as QIDO lists it.
#[derive(Debug, Clone)]
pub struct StudyRow {
    pub study_uid: String,
    pub room: String,
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub study_description: Option<String>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub modalities: Vec<String>,
    pub series_count: i64,
    pub instance_count: i64,
}

/// One series as QIDO lists it.
#[derive(Debug, Clone)]
pub struct SeriesRow {
    pub study_uid: String,
    pub series_uid: String,
    pub modality: Option<String>,
    pub series_description: Option<String>,
    pub series_number: Option<i64>,
    pub frame_of_reference_uid: Option<String>,
    pub instance_count: i64,
}

/// One instance: its record plus where its bytes are.
#[derive(Debug, Clone)]
pub struct InstanceRow {
    pub record: InstanceRecord,
    pub sha256: String,
    pub size: u64,
}

/// QIDO study-level matching the index supports.
#[derive(Debug, Clone, Default)]
pub struct StudyFilter {
    pub study_uid: Option<String>,
    pub patient_id: Option<String>,
    /// With `*` and `?` wildcards as DICOM defines them.
    pub patient_name: Option<String>,
    /// `YYYYMMDD`, or a range `A-B` with either end open.
    pub study_date: Option<String>,
    pub accession_number: Option<String>,
    pub modality: Option<String>,
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

fn json_floats(v: &Option<Vec<f64>>) -> Option<String> {
    v.as_ref()
        .map(|v| serde_json::to_string(v).unwrap_or_else(|_| "[]".into()))
}

fn parse_floats(s: Option<String>) -> Option<Vec<f64>> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

/// DICOM wildcard matching (`*`, `?`) as an SQL LIKE pattern with `\` as escape.
fn like_pattern(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

impl Index {
    /// Opens (creating if needed) the database at `path` in WAL mode.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Number of instances (zero: a fresh store, where the demo phantom may be written).
    pub fn instance_count(&self) -> Result<i64, IndexError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM instances", [], |r| r.get(0))?)
    }

    /// Whether any instance is stored in the file with this hash.
    pub fn sha_in_use(&self, sha: &str) -> Result<bool, IndexError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM instances WHERE sha256 = ?1",
            [sha],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// The room a study belongs to, if the study is known.
    pub fn study_room(&self, study_uid: &str) -> Result<Option<String>, IndexError> {
        Ok(self
            .conn
            .query_row(
                "SELECT room FROM studies WHERE study_uid = ?1",
                [study_uid],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records an instance in `room` in one transaction. A study stays in the room it was
    /// first uploaded to: an instance of it uploaded to another room is refused.
    pub fn upsert(
        &mut self,
        room: &str,
        r: &InstanceRecord,
        sha256: &str,
        size: u64,
    ) -> Result<Upsert, IndexError> {
        let tx = self.conn.transaction()?;
        let existing_room: Option<String> = tx
            .query_row(
                "SELECT room FROM studies WHERE study_uid = ?1",
                [&r.study_uid],
                |row| row.get(0),
            )
            .optional()?;
        match existing_room {
            Some(existing) if existing != room => {
                return Err(IndexError::OtherRoom {
                    study: r.study_uid.clone(),
                    room: existing,
                });
            }
            Some(_) => {}
            None => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                tx.execute(
                    "INSERT INTO studies (study_uid, room, patient_name, patient_id,
                        patient_birth_date, patient_sex, study_date, study_time,
                        study_description, accession_number, study_id, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    params![
                        r.study_uid,
                        room,
                        r.patient_name,
                        r.patient_id,
                        r.patient_birth_date,
                        r.patient_sex,
                        r.study_date,
                        r.study_time,
                        r.study_description,
                        r.accession_number,
                        r.study_id,
                        now
                    ],
                )?;
            }
        }
        tx.execute(
            "INSERT INTO series (series_uid, study_uid, modality, series_description,
                series_number, frame_of_reference_uid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(series_uid) DO UPDATE SET
                modality = COALESCE(series.modality, excluded.modality),
                series_description = COALESCE(series.series_description, excluded.series_description),
                series_number = COALESCE(series.series_number, excluded.series_number),
                frame_of_reference_uid = COALESCE(series.frame_of_reference_uid, excluded.frame_of_reference_uid)",
            params![
                r.series_uid,
                r.study_uid,
                r.modality,
                r.series_description,
                r.series_number,
                r.frame_of_reference_uid
            ],
        )?;
        let old: Option<String> = tx
            .query_row(
                "SELECT sha256 FROM instances WHERE sop_uid = ?1",
                [&r.sop_uid],
                |row| row.get(0),
            )
            .optional()?;
        if old.as_deref() == Some(sha256) {
            tx.commit()?;
            return Ok(Upsert::Unchanged);
        }
        tx.execute(
            "INSERT OR REPLACE INTO instances (sop_uid, series_uid, study_uid, sop_class_uid,
                transfer_syntax, instance_number, rows, columns, frames, samples_per_pixel,
                image_position, image_orientation, pixel_spacing, slice_thickness,
                rescale_slope, rescale_intercept, window_center, window_width,
                bits_allocated, bits_stored, pixel_representation, photometric,
                slice_position, sha256, size)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)",
            params![
                r.sop_uid,
                r.series_uid,
                r.study_uid,
                r.sop_class_uid,
                r.transfer_syntax,
                r.instance_number,
                r.rows,
                r.columns,
                r.frames,
                r.samples_per_pixel,
                json_floats(&r.image_position),
                json_floats(&r.image_orientation),
                json_floats(&r.pixel_spacing),
                r.slice_thickness,
                r.rescale_slope,
                r.rescale_intercept,
                json_floats(&r.window_center),
                json_floats(&r.window_width),
                r.bits_allocated,
                r.bits_stored,
                r.pixel_representation,
                r.photometric,
                r.slice_position(),
                sha256,
                size as i64
            ],
        )?;
        let outcome = match old {
            None => Upsert::Inserted,
            Some(old_sha) => {
                let still_used: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM instances WHERE sha256 = ?1",
                    [&old_sha],
                    |row| row.get(0),
                )?;
                Upsert::Replaced {
                    orphaned: (still_used == 0).then_some(old_sha),
                }
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Studies of `room` matching `filter`, newest first.
    pub fn studies(&self, room: &str, f: &StudyFilter) -> Result<Vec<StudyRow>, IndexError> {
        let mut sql = String::from(
            "SELECT s.study_uid, s.room, s.patient_name, s.patient_id, s.patient_birth_date,
                s.patient_sex, s.study_date, s.study_time, s.study_description,
                s.accession_number, s.study_id,
                (SELECT GROUP_CONCAT(DISTINCT modality) FROM series WHERE study_uid = s.study_uid),
                (SELECT COUNT(*) FROM series WHERE study_uid = s.study_uid),
                (SELECT COUNT(*) FROM instances WHERE study_uid = s.study_uid)
             FROM studies s WHERE s.room = ?",
        );
        let mut args: Vec<String> = vec![room.to_owned()];
        if let Some(v) = &f.study_uid {
            sql.push_str(" AND s.study_uid = ?");
            args.push(v.clone());
        }
        if let Some(v) = &f.patient_id {
            sql.push_str(" AND s.patient_id LIKE ? ESCAPE '\\'");
            args.push(like_pattern(v));
        }
        if let Some(v) = &f.patient_name {
            sql.push_str(" AND s.patient_name LIKE ? ESCAPE '\\'");
            args.push(like_pattern(v));
        }
        if let Some(v) = &f.accession_number {
            sql.push_str(" AND s.accession_number = ?");
            args.push(v.clone());
        }
        if let Some(v) = &f.study_date {
            match v.split_once('-') {
                Some((from, to)) => {
                    if !from.is_empty() {
                        sql.push_str(" AND s.study_date >= ?");
                        args.push(from.to_owned());
                    }
                    if !to.is_empty() {
                        sql.push_str(" AND s.study_date <= ?");
                        args.push(to.to_owned());
                    }
                }
                None => {
                    sql.push_str(" AND s.study_date = ?");
                    args.push(v.clone());
                }
            }
        }
        if let Some(v) = &f.modality {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM series WHERE study_uid = s.study_uid AND modality = ?)",
            );
            args.push(v.clone());
        }
        sql.push_str(" ORDER BY s.study_date DESC, s.created_at DESC, s.study_uid");
        sql.push_str(&format!(
            " LIMIT {} OFFSET {}",
            f.limit.map(i64::from).unwrap_or(-1),
            f.offset.unwrap_or(0)
        ));
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            let modalities: Option<String> = r.get(11)?;
            Ok(StudyRow {
                study_uid: r.get(0)?,
                room: r.get(1)?,
                patient_name: r.get(2)?,
                patient_id: r.get(3)?,
                patient_birth_date: r.get(4)?,
                patient_sex: r.get(5)?,
                study_date: r.get(6)?,
                study_time: r.get(7)?,
                study_description: r.get(8)?,
                accession_number: r.get(9)?,
                study_id: r.get(10)?,
                modalities: modalities
                    .map(|m| m.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
                series_count: r.get(12)?,
                instance_count: r.get(13)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The series of a study, by series number.
    pub fn series(&self, study_uid: &str) -> Result<Vec<SeriesRow>, IndexError> {
        let mut stmt = self.conn.prepare(
            "SELECT se.study_uid, se.series_uid, se.modality, se.series_description,
                se.series_number, se.frame_of_reference_uid,
                (SELECT COUNT(*) FROM instances WHERE series_uid = se.series_uid)
             FROM series se WHERE se.study_uid = ?1
             ORDER BY se.series_number IS NULL, se.series_number, se.series_uid",
        )?;
        let rows = stmt.query_map([study_uid], |r| {
            Ok(SeriesRow {
                study_uid: r.get(0)?,
                series_uid: r.get(1)?,
                modality: r.get(2)?,
                series_description: r.get(3)?,
                series_number: r.get(4)?,
                frame_of_reference_uid: r.get(5)?,
                instance_count: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The instances of a series in slice order: along the slice normal when every instance
    /// has a geometry, else by InstanceNumber.
    pub fn instances(
        &self,
        study_uid: &str,
        series_uid: &str,
    ) -> Result<Vec<InstanceRow>, IndexError> {
        let missing_geometry: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM instances WHERE series_uid = ?1 AND study_uid = ?2
                AND slice_position IS NULL",
            [series_uid, study_uid],
            |r| r.get(0),
        )?;
        let order = if missing_geometry == 0 {
            "slice_position, instance_number, sop_uid"
        } else {
            "instance_number IS NULL, instance_number, sop_uid"
        };
        self.select_instances(
            &format!("WHERE i.series_uid = ?1 AND i.study_uid = ?2 ORDER BY {order}"),
            &[series_uid, study_uid],
        )
    }

    /// One instance, if it is in that study and series.
    pub fn instance(
        &self,
        study_uid: &str,
        series_uid: &str,
        sop_uid: &str,
    ) -> Result<Option<InstanceRow>, IndexError> {
        Ok(self
            .select_instances(
                "WHERE i.sop_uid = ?1 AND i.series_uid = ?2 AND i.study_uid = ?3",
                &[sop_uid, series_uid, study_uid],
            )?
            .into_iter()
            .next())
    }

    fn select_instances(&self, tail: &str, args: &[&str]) -> Result<Vec<InstanceRow>, IndexError> {
        let sql = format!(
            "SELECT i.sop_uid, i.series_uid, i.study_uid, i.sop_class_uid, i.transfer_syntax,
                i.instance_number, i.rows, i.columns, i.frames, i.samples_per_pixel,
                i.image_position, i.image_orientation, i.pixel_spacing, i.slice_thickness,
                i.rescale_slope, i.rescale_intercept, i.window_center, i.window_width,
                i.bits_allocated, i.bits_stored, i.pixel_representation, i.photometric,
                i.sha256, i.size, se.modality, se.series_number, se.series_description
             FROM instances i JOIN series se ON se.series_uid = i.series_uid {tail}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            let size: i64 = r.get(23)?;
            Ok(InstanceRow {
                record: InstanceRecord {
                    sop_uid: r.get(0)?,
                    series_uid: r.get(1)?,
                    study_uid: r.get(2)?,
                    sop_class_uid: r.get(3)?,
                    transfer_syntax: r.get(4)?,
                    instance_number: r.get(5)?,
                    rows: r.get(6)?,
                    columns: r.get(7)?,
                    frames: r.get(8)?,
                    samples_per_pixel: r.get(9)?,
                    image_position: parse_floats(r.get(10)?),
                    image_orientation: parse_floats(r.get(11)?),
                    pixel_spacing: parse_floats(r.get(12)?),
                    slice_thickness: r.get(13)?,
                    rescale_slope: r.get(14)?,
                    rescale_intercept: r.get(15)?,
                    window_center: parse_floats(r.get(16)?),
                    window_width: parse_floats(r.get(17)?),
                    bits_allocated: r.get(18)?,
                    bits_stored: r.get(19)?,
                    pixel_representation: r.get(20)?,
                    photometric: r.get(21)?,
                    modality: r.get(24)?,
                    series_number: r.get(25)?,
                    series_description: r.get(26)?,
                    ..Default::default()
                },
                sha256: r.get(22)?,
                size: size.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sop: &str, z: Option<f64>, n: Option<i64>) -> InstanceRecord {
        InstanceRecord {
            study_uid: "1.2".into(),
            series_uid: "1.2.3".into(),
            sop_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            instance_number: n,
            image_position: z.map(|z| vec![0.0, 0.0, z]),
            image_orientation: z.map(|_| vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
            ..Default::default()
        }
    }

    #[test]
    fn slice_order_rooms_and_idempotence() {
        let dir = crate::Config::for_tests().data_dir;
        std::fs::create_dir_all(&dir).unwrap();
        let mut ix = Index::open(&dir.join("i.sqlite")).unwrap();
        // Instance numbers disagree with the geometry: the geometry wins.
        for (sop, z, n) in [("1.5", 10.0, 1), ("1.6", -5.0, 2), ("1.7", 2.5, 3)] {
            ix.upsert("a", &rec(sop, Some(z), Some(n)), sop, 1).unwrap();
        }
        let order: Vec<_> = ix
            .instances("1.2", "1.2.3")
            .unwrap()
            .into_iter()
            .map(|i| i.record.sop_uid)
            .collect();
        assert_eq!(order, ["1.6", "1.7", "1.5"]);
        assert_eq!(
            ix.upsert("a", &rec("1.5", Some(10.0), Some(1)), "1.5", 1)
                .unwrap(),
            Upsert::Unchanged
        );
        assert!(matches!(
            ix.upsert("b", &rec("1.8", None, Some(4)), "x", 1),
            Err(IndexError::OtherRoom { .. })
        ));
        // One instance without geometry: InstanceNumber order for the whole series.
        ix.upsert("a", &rec("1.9", None, Some(0)), "1.9", 1)
            .unwrap();
        let order: Vec<_> = ix
            .instances("1.2", "1.2.3")
            .unwrap()
            .into_iter()
            .map(|i| i.record.sop_uid)
            .collect();
        assert_eq!(order, ["1.9", "1.5", "1.6", "1.7"]);
        assert_eq!(ix.studies("a", &StudyFilter::default()).unwrap().len(), 1);
        assert!(ix.studies("b", &StudyFilter::default()).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).ok();
    }
}
