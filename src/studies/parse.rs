//! The lenient opener: reads every DICOM file a hospital is likely to have on a disk, including
//! legacy files without a Part-10 meta header, and turns it into an [`InstanceRecord`] for the
//! index. A file it cannot read gets a [`ParseError`] that says why, in words a hospital IT
//! engineer can act on; nothing in here may panic on bad input.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// Implicit VR Little Endian, the default transfer syntax of DICOM (and of legacy files).
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Explicit VR Big Endian (retired, still found in archives).
pub const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";

/// Why a file was refused: each variant is one thing the uploader can fix or report.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a DICOM file: {0}")]
    NotDicom(String),
    #[error("the DICOM data set cannot be read: {0}")]
    Unreadable(String),
    #[error("a required attribute is missing or empty: {0}")]
    MissingAttribute(&'static str),
    #[error("{0} is not a valid DICOM UID")]
    InvalidUid(&'static str),
    #[error(
        "pixel data is truncated: {actual} bytes where rows × columns × samples × frames needs {expected}"
    )]
    TruncatedPixelData { actual: u64, expected: u64 },
    #[error("image attributes are inconsistent: {0}")]
    BadImageAttributes(String),
    #[error("unsupported encoding: {0}")]
    Unsupported(String),
    #[error("the DICOM reader failed on this file (internal error while parsing)")]
    ReaderPanicked,
    #[error("reading the uploaded file: {0}")]
    Io(#[from] std::io::Error),
}

/// An opened file and whether its meta header was good enough to keep the bytes as uploaded.
pub struct Opened {
    pub obj: DefaultDicomObject,
    /// False when the meta header was missing or broken: the stored file is then re-encoded
    /// as a proper Part-10 file with a meta header built from the data set.
    pub meta_ok: bool,
}

/// Everything the index keeps about one instance (what QIDO answers with and what the viewer
/// needs to lay out and window a series without opening the files).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceRecord {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub patient_name: Option<String>,
    pub patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub study_description: Option<String>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub modality: Option<String>,
    pub series_description: Option<String>,
    pub series_number: Option<i64>,
    pub frame_of_reference_uid: Option<String>,
    pub instance_number: Option<i64>,
    pub rows: Option<u32>,
    pub columns: Option<u32>,
    pub frames: Option<u32>,
    pub samples_per_pixel: Option<u32>,
    pub image_position: Option<Vec<f64>>,
    pub image_orientation: Option<Vec<f64>>,
    pub pixel_spacing: Option<Vec<f64>>,
    pub slice_thickness: Option<f64>,
    pub rescale_slope: Option<f64>,
    pub rescale_intercept: Option<f64>,
    pub window_center: Option<Vec<f64>>,
    pub window_width: Option<Vec<f64>>,
    pub bits_allocated: Option<u32>,
    pub bits_stored: Option<u32>,
    pub pixel_representation: Option<u32>,
    pub photometric: Option<String>,
    pub has_pixel_data: bool,
}

impl InstanceRecord {
    /// Position of the slice along its normal (IPP · (row × column)), the order a viewer
    /// scrolls a volume in; `None` without a usable geometry.
    pub fn slice_position(&self) -> Option<f64> {
        let p = self.image_position.as_ref()?;
        let o = self.image_orientation.as_ref()?;
        if p.len() != 3 || o.len() != 6 {
            return None;
        }
        let (r, c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        let n = [
            r[1] * c[2] - r[2] * c[1],
            r[2] * c[0] - r[0] * c[2],
            r[0] * c[1] - r[1] * c[0],
        ];
        let d = p[0] * n[0] + p[1] * n[1] + p[2] * n[2];
        d.is_finite().then_some(d)
    }
}

/// Runs a dicom-rs call so that a panic inside it becomes a refusal of this one file.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, ParseError>) -> Result<T, ParseError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(ParseError::ReaderPanicked))
}

/// Opens a file however it is encoded: Part-10 as it should be, Part-10 with a broken meta
/// group (no group length, no transfer syntax, or a transfer syntax that lies), or a bare
/// data set with no meta header at all (implicit or explicit VR, either byte order).
pub fn open_lenient(path: &Path) -> Result<Opened, ParseError> {
    let len = std::fs::metadata(path)?.len();
    let mut head = [0u8; 132];
    let n = read_up_to(&mut File::open(path)?, &mut head)?;
    let head = &head[..n];
    let meta_at = if n >= 132 && &head[128..132] == b"DICM" {
        Some(132u64)
    } else if n >= 4 && &head[0..4] == b"DICM" {
        Some(4)
    } else {
        None
    };
    if let Some(offset) = meta_at {
        let meta = hand_parse_meta(path, offset, len)?;
        let sniffed = sniff_at(path, meta.dataset_offset, true)?;
        // Check lengths against the encoding the bytes show (the header may lie about it).
        let check_ts = match meta.transfer_syntax.as_deref() {
            Some(ts @ ("1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.8.1")) => ts,
            _ => sniffed.first().copied().unwrap_or(EXPLICIT_VR_LE),
        };
        check_lengths(path, meta.dataset_offset, check_ts)?;
        // A header that lies about the encoding (explicit VR declared over an implicit VR
        // data set, or the reverse) sends dicom-rs through garbage for a long time: go
        // straight to the lenient path then.
        let consistent = match (meta.transfer_syntax.as_deref(), sniffed.first()) {
            (Some(IMPLICIT_VR_LE), Some(&s)) => s == IMPLICIT_VR_LE,
            (Some(d), Some(&s)) if !d.starts_with("1.2.840.10008.1.2.1.99") => s != IMPLICIT_VR_LE,
            _ => true,
        };
        let strict = if !consistent {
            Err(ParseError::Unreadable(
                "the meta header's transfer syntax does not match how the data set is encoded"
                    .into(),
            ))
        } else {
            guarded(|| {
                OpenFileOptions::new()
                    .read_preamble(if offset == 132 {
                        dicom_object::file::ReadPreamble::Always
                    } else {
                        dicom_object::file::ReadPreamble::Never
                    })
                    .open_file(path)
                    .map_err(|e| ParseError::Unreadable(e.to_string()))
            })
        };
        let strict_err = match strict {
            Ok(obj) if known_ts(obj.meta().transfer_syntax()) => {
                return Ok(Opened { obj, meta_ok: true });
            }
            Ok(obj) => format!(
                "unknown transfer syntax {}",
                obj.meta().transfer_syntax().trim_end_matches('\0')
            ),
            Err(e) => e.to_string(),
        };
        // Read with the encoding the bytes show; a deflated data set shows nothing, so a
        // declared deflate syntax goes first. An encapsulated syntax the header declares is
        // kept for the stored file (read_bare).
        let mut candidates: Vec<String> = Vec::new();
        let declared = meta.transfer_syntax.as_deref().filter(|ts| known_ts(ts));
        if let Some(ts) = declared.filter(|ts| ts.starts_with("1.2.840.10008.1.2.1.99")) {
            candidates.push(ts.to_owned());
        }
        for ts in sniffed {
            if !candidates.iter().any(|c| c == ts) {
                candidates.push(ts.to_owned());
            }
        }
        return read_bare(path, meta.dataset_offset, &candidates, Some(&meta)).map_err(
            |e| match e {
                ParseError::Unreadable(inner) => ParseError::Unreadable(format!(
                    "{strict_err}; reading past the meta header also failed: {inner}"
                )),
                other => other,
            },
        );
    }
    // A bare data set; a badly cut one may start a few bytes late (no_meta.dcm keeps the
    // last byte of the header it was cut from): look for the first element nearby.
    for start in 0..RESYNC_BYTES.min(len) {
        let candidates = sniff_at(path, start, false)?;
        if candidates.is_empty() || (start > 0 && !first_element_is_plausible(path, start)?) {
            continue;
        }
        let candidates: Vec<String> = candidates.iter().map(|s| s.to_string()).collect();
        return read_bare(path, start, &candidates, None);
    }
    Err(ParseError::NotDicom(
        "no 'DICM' prefix, and the start of the file is not a DICOM data set".into(),
    ))
}

/// How far into a header-less file the opener looks for the first element.
const RESYNC_BYTES: u64 = 8;

/// Stricter test for a resynchronised start: an explicit VR group 0008 element.
fn first_element_is_plausible(path: &Path, offset: u64) -> Result<bool, ParseError> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut h = [0u8; 8];
    if read_up_to(&mut f, &mut h)? < 8 {
        return Ok(false);
    }
    Ok(h[0..2] == [0x08, 0x00] && h[4].is_ascii_uppercase() && h[5].is_ascii_uppercase())
}

/// Whether a transfer syntax stores pixel data natively (not encapsulated).
fn is_native(uid: &str) -> bool {
    matches!(
        uid,
        IMPLICIT_VR_LE | EXPLICIT_VR_LE | EXPLICIT_VR_BE | "1.2.840.10008.1.2.1.99"
    )
}

fn known_ts(uid: &str) -> bool {
    TransferSyntaxRegistry
        .get(uid.trim_end_matches(['\0', ' ']))
        .is_some()
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What a hand parse of group 0002 finds.
struct RawMeta {
    transfer_syntax: Option<String>,
    sop_class_uid: Option<String>,
    sop_instance_uid: Option<String>,
    dataset_offset: u64,
}

/// Walks the meta group (always explicit VR little endian) element by element, without
/// trusting its group length, and returns where the data set starts.
fn hand_parse_meta(path: &Path, start: u64, len: u64) -> Result<RawMeta, ParseError> {
    let mut f = BufReader::new(File::open(path)?);
    f.seek(SeekFrom::Start(start))?;
    let mut pos = start;
    let mut ts = None;
    let (mut class, mut instance) = (None, None);
    loop {
        let mut h = [0u8; 8];
        if read_up_to(&mut f, &mut h)? < 8 {
            break;
        }
        let group = u16::from_le_bytes([h[0], h[1]]);
        if group != 0x0002 {
            break;
        }
        let elem = u16::from_le_bytes([h[2], h[3]]);
        let vr = [h[4], h[5]];
        let (value_len, header_len) = if matches!(
            &vr,
            b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN" | b"UC" | b"UR" | b"OD" | b"OL" | b"OV"
        ) {
            let mut l = [0u8; 4];
            f.read_exact(&mut l)?;
            (u32::from_le_bytes(l) as u64, 12u64)
        } else if vr[0].is_ascii_uppercase() && vr[1].is_ascii_uppercase() {
            (u16::from_le_bytes([h[6], h[7]]) as u64, 8)
        } else {
            return Err(ParseError::Unreadable(
                "the meta header (group 0002) is not explicit VR little endian".into(),
            ));
        };
        if value_len == 0xFFFF_FFFF || pos + header_len + value_len > len || value_len > 1 << 16 {
            return Err(ParseError::Unreadable(
                "an element of the meta header (group 0002) has an impossible length".into(),
            ));
        }
        let mut value = vec![0u8; value_len as usize];
        f.read_exact(&mut value)?;
        let s = String::from_utf8_lossy(&value)
            .trim_end_matches(['\0', ' '])
            .to_owned();
        if !s.is_empty() {
            match elem {
                0x0002 => class = Some(s),
                0x0003 => instance = Some(s),
                0x0010 => ts = Some(s),
                _ => {}
            }
        }
        pos += header_len + value_len;
    }
    Ok(RawMeta {
        transfer_syntax: ts,
        sop_class_uid: class,
        sop_instance_uid: instance,
        dataset_offset: pos,
    })
}

/// Guesses the encoding of a bare data set from its first element header: the byte order
/// from which reading gives a plausible group number, explicit VR if two upper-case letters
/// follow the tag. Returns the syntaxes worth trying, most likely first (empty: not DICOM).
/// `after_meta`: the bytes follow a meta header, so they are a data set and any group number
/// will do (private groups first included); a bare file must start with a standard group.
fn sniff_at(path: &Path, offset: u64, after_meta: bool) -> Result<Vec<&'static str>, ParseError> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut h = [0u8; 8];
    if read_up_to(&mut f, &mut h)? < 8 {
        return Ok(vec![]);
    }
    let standard = |g: u16| g.is_multiple_of(2) && (0x0002..=0x0030).contains(&g);
    let any = |g: u16| (0x0001..0x7FE1).contains(&g);
    let le = u16::from_le_bytes([h[0], h[1]]);
    let be = u16::from_be_bytes([h[0], h[1]]);
    let explicit = h[4].is_ascii_uppercase() && h[5].is_ascii_uppercase();
    let little = |out: &mut Vec<&'static str>| {
        if explicit {
            out.extend([EXPLICIT_VR_LE, IMPLICIT_VR_LE]);
        } else {
            out.extend([IMPLICIT_VR_LE, EXPLICIT_VR_LE]);
        }
    };
    let mut out = Vec::new();
    if standard(le) {
        little(&mut out);
    } else if standard(be) && explicit {
        out.push(EXPLICIT_VR_BE);
    } else if after_meta && any(le) {
        little(&mut out);
    }
    Ok(out)
}

/// Reads a bare data set at `offset` with the first transfer syntax that works, then gives it
/// a meta header built from the data set's own SOP class and instance (or the broken meta
/// header's). When a broken header named an encapsulated syntax (JPEG …) over a data set
/// encoded otherwise, the pixel data is still that codec's: the new header keeps it.
fn read_bare(
    path: &Path,
    offset: u64,
    candidates: &[String],
    meta: Option<&RawMeta>,
) -> Result<Opened, ParseError> {
    let mut first_err = None;
    let declared = meta
        .and_then(|m| m.transfer_syntax.as_deref())
        .filter(|ts| known_ts(ts) && !is_native(ts));
    for uid in candidates {
        let Some(ts) = TransferSyntaxRegistry.get(uid) else {
            continue;
        };
        let attempt = guarded(|| {
            check_lengths(path, offset, uid)?;
            let mut f = BufReader::new(File::open(path)?);
            f.seek(SeekFrom::Start(offset))?;
            let mut obj = InMemDicomObject::read_dataset_with_ts(f, ts)
                .map_err(|e| ParseError::Unreadable(e.to_string()))?;
            for (tag, value) in [
                (
                    tags::SOP_INSTANCE_UID,
                    meta.and_then(|m| m.sop_instance_uid.as_deref()),
                ),
                (
                    tags::SOP_CLASS_UID,
                    meta.and_then(|m| m.sop_class_uid.as_deref()),
                ),
            ] {
                if obj.get(tag).is_none()
                    && let Some(v) = value
                {
                    obj.put(dicom_core::DataElement::new(
                        tag,
                        dicom_core::VR::UI,
                        dicom_core::PrimitiveValue::from(v),
                    ));
                }
            }
            if obj.get(tags::SOP_INSTANCE_UID).is_none() {
                return Err(ParseError::MissingAttribute("SOPInstanceUID (0008,0018)"));
            }
            let out_ts = declared.unwrap_or(uid.as_str());
            let builder = FileMetaTableBuilder::new()
                .transfer_syntax(out_ts)
                .implementation_class_uid(super::IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(super::IMPLEMENTATION_VERSION_NAME);
            let obj = obj
                .with_meta(builder)
                .map_err(|e| ParseError::Unreadable(format!("building a meta header: {e}")))?;
            Ok(Opened {
                obj,
                meta_ok: false,
            })
        });
        match attempt {
            Ok(o) => return Ok(o),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(ParseError::NotDicom(
        "no transfer syntax could be guessed".into(),
    )))
}

/// The value of an element as text; values of VR UN (private or unknown to the writer) are
/// their bytes read as text.
fn raw_text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.get(tag)?;
    let s = if e.vr() == dicom_core::VR::UN {
        String::from_utf8_lossy(&e.to_bytes().ok()?).into_owned()
    } else {
        e.to_str().ok()?.into_owned()
    };
    Some(s)
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let s = raw_text(obj, tag)?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_owned())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    let e = obj.get(tag)?;
    if e.vr() == dicom_core::VR::UN {
        return text(obj, tag)?.parse().ok();
    }
    e.to_int::<i64>().ok().or_else(|| {
        // IS stored with junk like "12.0": accept what parses as a whole number.
        let f = e.to_float64().ok()?;
        (f.fract() == 0.0 && f.abs() < 1e15).then_some(f as i64)
    })
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    int(obj, tag).and_then(|v| u32::try_from(v).ok())
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let e = obj.get(tag)?;
    let v = if e.vr() == dicom_core::VR::UN {
        text(obj, tag)?
            .split('\\')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .ok()?
    } else {
        e.to_multi_float64().ok()?
    };
    (!v.is_empty() && v.iter().all(|x| x.is_finite())).then_some(v)
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    floats(obj, tag).and_then(|v| v.first().copied())
}

fn uid(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<String, ParseError> {
    let s = text(obj, tag).ok_or(ParseError::MissingAttribute(name))?;
    if !valid_uid(&s) {
        return Err(ParseError::InvalidUid(name));
    }
    Ok(s)
}

/// A UID as DICOM defines it: digits and dots, at most 64 characters. The store relies on it
/// (UIDs appear in URLs).
pub fn valid_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A UID derived from another one (UUID-style `2.25.` root, 128 bits of SHA-256), stable so
/// that re-uploading the same file gives the same result.
pub fn derived_uid(kind: &str, from: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("consilium:{kind}:{from}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// Gives an instance the identifiers the store needs when its data set lacks them: the SOP
/// Instance UID from its meta header; a Study and Series Instance UID derived from the SOP
/// Instance UID (files cut out of their study, such as test images). The file is then stored
/// re-encoded with them, so that what WADO-RS returns matches what QIDO-RS says.
fn fill_identifiers(opened: &mut Opened) -> Result<(), ParseError> {
    let put = |obj: &mut DefaultDicomObject, tag: Tag, v: &str| {
        obj.put(dicom_core::DataElement::new(
            tag,
            dicom_core::VR::UI,
            dicom_core::PrimitiveValue::from(v),
        ));
    };
    if text(&opened.obj, tags::SOP_INSTANCE_UID).is_none() {
        let from_meta = opened
            .obj
            .meta()
            .media_storage_sop_instance_uid()
            .trim_end_matches(['\0', ' '])
            .to_owned();
        if from_meta.is_empty() {
            return Err(ParseError::MissingAttribute("SOPInstanceUID (0008,0018)"));
        }
        put(&mut opened.obj, tags::SOP_INSTANCE_UID, &from_meta);
        opened.meta_ok = false;
    }
    let sop = text(&opened.obj, tags::SOP_INSTANCE_UID).unwrap_or_default();
    let study = match text(&opened.obj, tags::STUDY_INSTANCE_UID) {
        Some(s) => s,
        None => {
            let s = derived_uid("study", &sop);
            put(&mut opened.obj, tags::STUDY_INSTANCE_UID, &s);
            opened.meta_ok = false;
            s
        }
    };
    if text(&opened.obj, tags::SERIES_INSTANCE_UID).is_none() {
        put(
            &mut opened.obj,
            tags::SERIES_INSTANCE_UID,
            &derived_uid("series", &study),
        );
        opened.meta_ok = false;
    }
    Ok(())
}

/// Extracts the index record and checks what must hold for the instance to be served:
/// identifying UIDs, and pixel data at least as long as its header says.
pub fn record(opened: &mut Opened) -> Result<InstanceRecord, ParseError> {
    fill_identifiers(opened)?;
    let obj: &InMemDicomObject = &opened.obj;
    let mut r = InstanceRecord {
        study_uid: uid(
            obj,
            tags::STUDY_INSTANCE_UID,
            "StudyInstanceUID (0020,000D)",
        )?,
        series_uid: uid(
            obj,
            tags::SERIES_INSTANCE_UID,
            "SeriesInstanceUID (0020,000E)",
        )?,
        sop_uid: uid(obj, tags::SOP_INSTANCE_UID, "SOPInstanceUID (0008,0018)")?,
        sop_class_uid: match text(obj, tags::SOP_CLASS_UID) {
            Some(s) => s,
            None => opened
                .obj
                .meta()
                .media_storage_sop_class_uid()
                .trim_end_matches(['\0', ' '])
                .to_owned(),
        },
        transfer_syntax: opened
            .obj
            .meta()
            .transfer_syntax()
            .trim_end_matches(['\0', ' '])
            .to_owned(),
        patient_name: text(obj, tags::PATIENT_NAME),
        patient_id: text(obj, tags::PATIENT_ID),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(obj, tags::PATIENT_SEX),
        study_date: text(obj, tags::STUDY_DATE),
        study_time: text(obj, tags::STUDY_TIME),
        study_description: text(obj, tags::STUDY_DESCRIPTION),
        accession_number: text(obj, tags::ACCESSION_NUMBER),
        study_id: text(obj, tags::STUDY_ID),
        modality: text(obj, tags::MODALITY),
        series_description: text(obj, tags::SERIES_DESCRIPTION),
        series_number: int(obj, tags::SERIES_NUMBER),
        frame_of_reference_uid: text(obj, tags::FRAME_OF_REFERENCE_UID),
        instance_number: int(obj, tags::INSTANCE_NUMBER),
        rows: uint(obj, tags::ROWS),
        columns: uint(obj, tags::COLUMNS),
        frames: uint(obj, tags::NUMBER_OF_FRAMES),
        samples_per_pixel: uint(obj, tags::SAMPLES_PER_PIXEL),
        image_position: floats(obj, tags::IMAGE_POSITION_PATIENT).filter(|v| v.len() == 3),
        image_orientation: floats(obj, tags::IMAGE_ORIENTATION_PATIENT).filter(|v| v.len() == 6),
        pixel_spacing: floats(obj, tags::PIXEL_SPACING).filter(|v| v.len() == 2),
        slice_thickness: float(obj, tags::SLICE_THICKNESS),
        rescale_slope: float(obj, tags::RESCALE_SLOPE),
        rescale_intercept: float(obj, tags::RESCALE_INTERCEPT),
        window_center: floats(obj, tags::WINDOW_CENTER),
        window_width: floats(obj, tags::WINDOW_WIDTH),
        bits_allocated: uint(obj, tags::BITS_ALLOCATED),
        bits_stored: uint(obj, tags::BITS_STORED),
        pixel_representation: uint(obj, tags::PIXEL_REPRESENTATION),
        photometric: text(obj, tags::PHOTOMETRIC_INTERPRETATION),
        has_pixel_data: obj.get(tags::PIXEL_DATA).is_some(),
    };
    if r.sop_class_uid.is_empty() {
        return Err(ParseError::MissingAttribute("SOPClassUID (0008,0016)"));
    }
    if r.has_pixel_data {
        check_pixel_data(obj, &mut r)?;
    }
    Ok(r)
}

/// Largest decoded frame the store accepts (a 16k × 16k RGB 16-bit image is 1.5 GiB: beyond
/// anything a radiology viewer shows); bounds every allocation the decoder makes.
pub const MAX_FRAME_BYTES: u64 = 1 << 30;
/// Most frames one instance may declare.
pub const MAX_FRAMES: u32 = 100_000;

fn check_pixel_data(obj: &InMemDicomObject, r: &mut InstanceRecord) -> Result<(), ParseError> {
    let bad = |m: &str| Err(ParseError::BadImageAttributes(m.to_owned()));
    let (Some(rows), Some(cols)) = (r.rows, r.columns) else {
        return bad("pixel data without Rows and Columns");
    };
    if rows == 0 || cols == 0 {
        return bad("Rows or Columns is zero");
    }
    let spp = r.samples_per_pixel.unwrap_or(1);
    if !(spp == 1 || spp == 3) {
        return bad("SamplesPerPixel must be 1 or 3");
    }
    let bits = r.bits_allocated.unwrap_or(0);
    if !matches!(bits, 1 | 8 | 16 | 32) {
        return bad("BitsAllocated must be 1, 8, 16 or 32");
    }
    let frames = r.frames.unwrap_or(1).max(1);
    if frames > MAX_FRAMES {
        return bad("NumberOfFrames is implausibly large");
    }
    let samples = rows as u64 * cols as u64 * spp as u64;
    let frame_bytes = samples * bits.max(8) as u64 / 8;
    if frame_bytes > MAX_FRAME_BYTES {
        return bad("one frame would decode to more than 1 GiB");
    }
    if let Some(e) = obj.get(tags::PIXEL_DATA)
        && let dicom_core::DicomValue::Primitive(p) = e.value()
    {
        let actual = p.calculate_byte_len() as u64;
        let ybr422 = r.photometric.as_deref() == Some("YBR_FULL_422");
        let expected = if bits == 1 {
            (samples * frames as u64).div_ceil(8)
        } else if ybr422 {
            rows as u64 * cols as u64 * 2 * (bits as u64 / 8) * frames as u64
        } else {
            frame_bytes * frames as u64
        };
        if actual < expected {
            return Err(ParseError::TruncatedPixelData { actual, expected });
        }
    }
    r.frames = Some(frames);
    Ok(())
}

/// Deepest nesting of sequences the length check follows.
const MAX_DEPTH: u32 = 32;

/// Walks every element header of a data set (following sequences and items) and refuses any
/// declared length that runs past the end of the file, before dicom-rs sees the file: its
/// reader allocates a value's declared length up front, so a 1 KiB file claiming a 4 GiB
/// element would otherwise cost 4 GiB of memory.
pub fn check_lengths(path: &Path, offset: u64, ts_uid: &str) -> Result<(), ParseError> {
    let (explicit, big) = match ts_uid {
        IMPLICIT_VR_LE => (false, false),
        EXPLICIT_VR_BE => (true, true),
        // Deflated data sets cannot be walked without inflating them; dicom-rs reads them
        // through the inflater, whose output is bounded by what the values really contain.
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.8.1" => return Ok(()),
        _ => (true, false),
    };
    let len = std::fs::metadata(path)?.len();
    let mut w = Walker {
        r: BufReader::new(File::open(path)?),
        pos: offset,
        len,
        explicit,
        big,
    };
    w.r.seek(SeekFrom::Start(offset))?;
    w.walk(len, 0, false)
}

struct Walker {
    r: BufReader<File>,
    pos: u64,
    len: u64,
    explicit: bool,
    big: bool,
}

enum Step {
    End,
    Delimiter,
}

impl Walker {
    fn u16(&self, b: [u8; 2]) -> u16 {
        if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    }
    fn u32(&self, b: [u8; 4]) -> u32 {
        if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }
    fn read<const N: usize>(&mut self) -> Result<Option<[u8; N]>, ParseError> {
        let mut b = [0u8; N];
        let n = read_up_to(&mut self.r, &mut b)?;
        self.pos += n as u64;
        match n {
            0 => Ok(None),
            n if n == N => Ok(Some(b)),
            _ => Err(ParseError::Unreadable(
                "the file ends in the middle of an element header (truncated file)".into(),
            )),
        }
    }
    fn skip(&mut self, n: u64) -> Result<(), ParseError> {
        self.r.seek_relative(n as i64)?;
        self.pos += n;
        Ok(())
    }
    fn too_long(&self, group: u16, elem: u16, n: u64) -> ParseError {
        ParseError::Unreadable(format!(
            "element ({group:04X},{elem:04X}) declares {n} bytes but only {} remain (truncated or corrupt file)",
            self.len.saturating_sub(self.pos)
        ))
    }

    /// Walks elements until `end` (a defined-length container) or a delimiter.
    fn walk(&mut self, end: u64, depth: u32, in_item_undefined: bool) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::Unreadable("sequences nested too deeply".into()));
        }
        while self.pos < end {
            match self.element(depth)? {
                Some(Step::Delimiter) if in_item_undefined => return Ok(()),
                Some(Step::Delimiter) => {}
                Some(Step::End) => {}
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Reads one element header and checks (and skips or enters) its value.
    fn element(&mut self, depth: u32) -> Result<Option<Step>, ParseError> {
        let Some(t) = self.read::<4>()? else {
            return Ok(None);
        };
        let group = self.u16([t[0], t[1]]);
        let elem = self.u16([t[2], t[3]]);
        if group == 0xFFFE {
            let l = self
                .read::<4>()?
                .ok_or_else(|| self.too_long(group, elem, 4))?;
            return match elem {
                0xE00D | 0xE0DD => Ok(Some(Step::Delimiter)),
                _ => Err(ParseError::Unreadable(format!(
                    "unexpected item tag (FFFE,{elem:04X}) at byte {} (value {})",
                    self.pos,
                    self.u32(l)
                ))),
            };
        }
        let (vr, n) = if self.explicit {
            let h = self
                .read::<4>()?
                .ok_or_else(|| self.too_long(group, elem, 4))?;
            let vr = [h[0], h[1]];
            if !(vr[0].is_ascii_uppercase() && vr[1].is_ascii_uppercase()) {
                return Err(ParseError::Unreadable(format!(
                    "element ({group:04X},{elem:04X}) has no valid VR (the data set is not encoded as its header says)"
                )));
            }
            if matches!(
                &vr,
                b"OB"
                    | b"OW"
                    | b"OF"
                    | b"SQ"
                    | b"UT"
                    | b"UN"
                    | b"UC"
                    | b"UR"
                    | b"OD"
                    | b"OL"
                    | b"OV"
                    | b"SV"
                    | b"UV"
            ) {
                let l = self
                    .read::<4>()?
                    .ok_or_else(|| self.too_long(group, elem, 4))?;
                (Some(vr), self.u32(l))
            } else {
                (Some(vr), self.u16([h[2], h[3]]) as u32)
            }
        } else {
            let l = self
                .read::<4>()?
                .ok_or_else(|| self.too_long(group, elem, 4))?;
            (None, self.u32(l))
        };
        if n == 0xFFFF_FFFF {
            // Undefined length: a sequence (or encapsulated pixel data) of items. Inside a
            // UN one, the items are encoded in implicit VR little endian (PS3.5 6.2.2).
            if vr.is_some_and(|v| &v == b"UN") {
                // dicom-rs 0.10 cannot read these (and takes minutes to find out).
                return Err(ParseError::Unsupported(format!(
                    "element ({group:04X},{elem:04X}) is a sequence of undefined length with VR UN, which the DICOM reader cannot parse"
                )));
            }
            let was_explicit = self.explicit;
            let walked = self.items(depth + 1, true, u64::MAX, group, elem);
            self.explicit = was_explicit;
            walked?;
            return Ok(Some(Step::End));
        }
        let n = n as u64;
        if self.pos + n > self.len {
            return Err(self.too_long(group, elem, n));
        }
        let is_seq = match vr {
            Some(v) => &v == b"SQ",
            None => n >= 8 && self.peek_item()?,
        };
        if is_seq {
            let end = self.pos + n;
            self.items(depth + 1, false, end, group, elem)?;
            if self.pos != end {
                let back = end as i64 - self.pos as i64;
                self.r.seek_relative(back)?;
                self.pos = end;
            }
        } else {
            self.skip(n)?;
        }
        Ok(Some(Step::End))
    }

    fn peek_item(&mut self) -> Result<bool, ParseError> {
        let mut b = [0u8; 4];
        let k = read_up_to(&mut self.r, &mut b)?;
        self.r.seek_relative(-(k as i64))?;
        Ok(k == 4 && self.u16([b[0], b[1]]) == 0xFFFE && self.u16([b[2], b[3]]) == 0xE000)
    }

    /// Walks the items of a sequence until its delimiter (undefined length) or `end`.
    fn items(
        &mut self,
        depth: u32,
        undefined: bool,
        end: u64,
        group: u16,
        elem: u16,
    ) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::Unreadable("sequences nested too deeply".into()));
        }
        let pixel = group == 0x7FE0;
        loop {
            if !undefined && self.pos >= end {
                return Ok(());
            }
            let Some(t) = self.read::<4>()? else {
                return Err(ParseError::Unreadable(format!(
                    "the file ends inside the sequence ({group:04X},{elem:04X}) (truncated file)"
                )));
            };
            let l = self
                .read::<4>()?
                .ok_or_else(|| self.too_long(group, elem, 4))?;
            let (g, e, n) = (self.u16([t[0], t[1]]), self.u16([t[2], t[3]]), self.u32(l));
            if g != 0xFFFE {
                return Err(ParseError::Unreadable(format!(
                    "the sequence ({group:04X},{elem:04X}) holds ({g:04X},{e:04X}) where an item was expected"
                )));
            }
            match e {
                0xE0DD => return Ok(()),
                0xE000 if n == 0xFFFF_FFFF && !pixel => self.walk(u64::MAX, depth, true)?,
                0xE000 => {
                    let n = n as u64;
                    if self.pos + n > self.len.min(end) {
                        return Err(self.too_long(g, e, n));
                    }
                    if pixel {
                        self.skip(n)?;
                    } else {
                        let item_end = self.pos + n;
                        self.walk(item_end, depth, false)?;
                        if self.pos != item_end {
                            return Err(ParseError::Unreadable(format!(
                                "an item of ({group:04X},{elem:04X}) does not end where its length says"
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shared test file opens (or is refused) quickly and without a panic.
    #[test]
    fn opens_every_reference_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/dicom/pydicom");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        {
            let t = std::time::Instant::now();
            let r = open_lenient(p).and_then(|mut o| record(&mut o).map(|r| (o.meta_ok, r)));
            let ms = t.elapsed().as_millis();
            let name = p.file_name().unwrap().to_string_lossy();
            match r {
                Ok((ok, rec)) => {
                    eprintln!("{name}: ok meta_ok={ok} {} {ms} ms", rec.transfer_syntax)
                }
                Err(e) => eprintln!("{name}: {e} {ms} ms"),
            }
            assert!(ms < 5000, "{name} took {ms} ms");
        }
    }
}
