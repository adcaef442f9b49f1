//! DICOM JSON (PS3.18 F.2) for QIDO-RS results, WADO-RS metadata and STOW-RS responses.

use super::index::{InstanceRow, SeriesRow, StudyRow};
use super::parse::{self, ParseError};
use dicom_dictionary_std::tags;
use dicom_object::OpenFileOptions;
use serde_json::{Map, Value, json};
use std::path::Path;

/// A DICOM JSON object under construction: `tag → {vr, Value}`, skipping absent values.
#[derive(Default)]
pub struct Attrs(Map<String, Value>);

impl Attrs {
    /// A string-valued attribute (UI, LO, SH, CS, DA, TM, UR …).
    pub fn str(mut self, tag: &str, vr: &str, v: Option<&str>) -> Self {
        match v {
            Some(v) => self.0.insert(tag.into(), json!({"vr": vr, "Value": [v]})),
            None => self.0.insert(tag.into(), json!({"vr": vr})),
        };
        self
    }
    /// A multi-valued string attribute.
    pub fn strs(mut self, tag: &str, vr: &str, v: &[String]) -> Self {
        let entry = if v.is_empty() {
            json!({"vr": vr})
        } else {
            json!({"vr": vr, "Value": v})
        };
        self.0.insert(tag.into(), entry);
        self
    }
    /// A person name.
    pub fn pn(mut self, tag: &str, v: Option<&str>) -> Self {
        let entry = match v {
            Some(v) => json!({"vr": "PN", "Value": [{"Alphabetic": v}]}),
            None => json!({"vr": "PN"}),
        };
        self.0.insert(tag.into(), entry);
        self
    }
    /// A number (IS, US, UL, DS …), omitted when absent.
    pub fn num<T: Into<Value>>(mut self, tag: &str, vr: &str, v: Option<T>) -> Self {
        if let Some(v) = v {
            self.0
                .insert(tag.into(), json!({"vr": vr, "Value": [v.into()]}));
        }
        self
    }
    /// A multi-valued number (DS), omitted when absent.
    pub fn nums(mut self, tag: &str, vr: &str, v: Option<&Vec<f64>>) -> Self {
        if let Some(v) = v {
            self.0.insert(tag.into(), json!({"vr": vr, "Value": v}));
        }
        self
    }
    /// A sequence of items.
    pub fn seq(mut self, tag: &str, items: Vec<Value>) -> Self {
        self.0
            .insert(tag.into(), json!({"vr": "SQ", "Value": items}));
        self
    }
    /// The finished object.
    pub fn build(self) -> Value {
        Value::Object(self.0)
    }
}

/// A study as QIDO-RS returns it.
pub fn study(s: &StudyRow, base: &str) -> Value {
    Attrs::default()
        .str("00080020", "DA", s.study_date.as_deref())
        .str("00080030", "TM", s.study_time.as_deref())
        .str("00080050", "SH", s.accession_number.as_deref())
        .strs("00080061", "CS", &s.modalities)
        .str(
            "00081190",
            "UR",
            Some(&format!("{base}/studies/{}", s.study_uid)),
        )
        .str("00081030", "LO", s.study_description.as_deref())
        .pn("00100010", s.patient_name.as_deref())
        .str("00100020", "LO", s.patient_id.as_deref())
        .str("00100030", "DA", s.patient_birth_date.as_deref())
        .str("00100040", "CS", s.patient_sex.as_deref())
        .str("0020000D", "UI", Some(&s.study_uid))
        .str("00200010", "SH", s.study_id.as_deref())
        .num("00201206", "IS", Some(s.series_count))
        .num("00201208", "IS", Some(s.instance_count))
        .build()
}

/// A series as QIDO-RS returns it.
pub fn series(s: &SeriesRow, base: &str) -> Value {
    Attrs::default()
        .str("00080060", "CS", s.modality.as_deref())
        .str(
            "00081190",
            "UR",
            Some(&format!(
                "{base}/studies/{}/series/{}",
                s.study_uid, s.series_uid
            )),
        )
        .str("0008103E", "LO", s.series_description.as_deref())
        .str("0020000D", "UI", Some(&s.study_uid))
        .str("0020000E", "UI", Some(&s.series_uid))
        .num("00200011", "IS", s.series_number)
        .str("00200052", "UI", s.frame_of_reference_uid.as_deref())
        .num("00201209", "IS", Some(s.instance_count))
        .build()
}

/// An instance as QIDO-RS returns it: identification plus everything a viewer needs to place
/// and window the image without fetching its metadata.
pub fn instance(i: &InstanceRow, base: &str) -> Value {
    let r = &i.record;
    Attrs::default()
        .str("00020010", "UI", Some(&r.transfer_syntax))
        .str("00080016", "UI", Some(&r.sop_class_uid))
        .str("00080018", "UI", Some(&r.sop_uid))
        .str("00080060", "CS", r.modality.as_deref())
        .str(
            "00081190",
            "UR",
            Some(&format!(
                "{base}/studies/{}/series/{}/instances/{}",
                r.study_uid, r.series_uid, r.sop_uid
            )),
        )
        .num("00180050", "DS", r.slice_thickness)
        .str("0020000D", "UI", Some(&r.study_uid))
        .str("0020000E", "UI", Some(&r.series_uid))
        .num("00200013", "IS", r.instance_number)
        .nums("00200032", "DS", r.image_position.as_ref())
        .nums("00200037", "DS", r.image_orientation.as_ref())
        .num("00280002", "US", r.samples_per_pixel)
        .str("00280004", "CS", r.photometric.as_deref())
        .num("00280008", "IS", r.frames)
        .num("00280010", "US", r.rows)
        .num("00280011", "US", r.columns)
        .nums("00280030", "DS", r.pixel_spacing.as_ref())
        .num("00280100", "US", r.bits_allocated)
        .num("00280101", "US", r.bits_stored)
        .num("00280103", "US", r.pixel_representation)
        .nums("00281050", "DS", r.window_center.as_ref())
        .nums("00281051", "DS", r.window_width.as_ref())
        .num("00281052", "DS", r.rescale_intercept)
        .num("00281053", "DS", r.rescale_slope)
        .build()
}

/// WADO-RS metadata of one stored file: its whole data set as DICOM JSON except the pixel
/// data (read up to it, never loaded), plus the transfer syntax from the meta header.
pub fn instance_metadata(path: &Path) -> Result<Value, ParseError> {
    parse::guarded(|| {
        let obj = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
            .map_err(|e| ParseError::Unreadable(e.to_string()))?;
        let ts = obj
            .meta()
            .transfer_syntax()
            .trim_end_matches(['\0', ' '])
            .to_owned();
        let mut obj = obj.into_inner();
        obj.remove_element(tags::PIXEL_DATA);
        let mut v = dicom_json::to_value(&obj)
            .map_err(|e| ParseError::Unreadable(format!("converting to DICOM JSON: {e}")))?;
        if let Value::Object(m) = &mut v {
            m.insert("00020010".into(), json!({"vr": "UI", "Value": [ts]}));
        }
        Ok(v)
    })
}
