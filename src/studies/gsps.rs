//! Grayscale Softcopy Presentation State (PS3.3 A.33.1) built from a room's annotations, so
//! the consultation's marks travel with the study into any PACS viewer that reads GSPS.

use super::parse::InstanceRecord;
use consilium_signaling::collab_proto::{Annotation, AnnotationKind};
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, FileMetaTableBuilder, InMemDicomObject};
use std::collections::BTreeMap;

/// SOP Class UID of Grayscale Softcopy Presentation State Storage.
pub const GSPS_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.11.1";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Graphic layer every annotation is drawn on (one layer keeps readers' layer menus simple).
const LAYER: &str = "CONSILIUM";

/// Why a presentation state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GspsError {
    #[error("annotation {0} refers to image {1}, which is not in the series")]
    UnknownImage(String, String),
    #[error("no annotation on this series")]
    Empty,
    #[error("building the DICOM object failed: {0}")]
    Build(String),
}

/// One window (centre, width) applied to a group of images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
}

/// What the builder needs to know about the new object besides the annotations.
pub struct GspsParams<'a> {
    pub sop_uid: String,
    pub series_uid: String,
    pub instance_number: i64,
    pub series_number: i64,
    /// Date `YYYYMMDD` and time `HHMMSS` of creation (UTC).
    pub date: String,
    pub time: String,
    pub creator: &'a str,
    /// The room's last shown window for this series, if any.
    pub viewer_window: Option<Window>,
}

/// A fresh UID under the UUID-derived root `2.25` (PS3.5 B.2), unique without a registered root.
pub fn new_uid() -> String {
    let n: u128 = rand::random();
    format!("2.25.{n}")
}

fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn ds(v: f64) -> String {
    // DS is at most 16 characters.
    let s = format!("{v}");
    if s.len() <= 16 { s } else { format!("{v:.6e}") }
}

/// The window an image is shown with: the latest annotation on it that carries one, else
/// the room's viewer window, else the image's own, else its full stored range.
fn window_of(img: &InstanceRecord, anns: &[&Annotation], viewer: Option<Window>) -> Window {
    if let Some(w) = anns
        .iter()
        .filter_map(|a| a.window.map(|w| (a.updated_ms, w)))
        .max_by_key(|(t, _)| *t)
    {
        return Window {
            center: w.1.wc,
            width: w.1.ww,
        };
    }
    if let Some(w) = viewer {
        return w;
    }
    if let (Some(c), Some(w)) = (
        img.window_center.as_ref().and_then(|v| v.first()),
        img.window_width.as_ref().and_then(|v| v.first()),
    ) && *w > 0.0
    {
        return Window {
            center: *c,
            width: *w,
        };
    }
    let bits = img.bits_stored.unwrap_or(12).clamp(1, 32) as f64;
    let slope = img.rescale_slope.unwrap_or(1.0);
    let icpt = img.rescale_intercept.unwrap_or(0.0);
    let (lo, hi) = if img.pixel_representation == Some(1) {
        (-(2f64.powf(bits - 1.0)), 2f64.powf(bits - 1.0) - 1.0)
    } else {
        (0.0, 2f64.powf(bits) - 1.0)
    };
    let (a, b) = (lo * slope + icpt, hi * slope + icpt);
    Window {
        center: (a + b) / 2.0,
        width: (b - a).abs().max(1.0),
    }
}

/// GraphicData: our points are already in GSPS PIXEL space — the viewport maps the image
/// centre to (cols/2, rows/2), so (0,0) is the top-left corner of the top-left pixel.
fn graphic(kind: &str, points: &[[f64; 2]], filled: bool) -> InMemDicomObject {
    let data: Vec<f32> = points
        .iter()
        .flat_map(|p| [p[0] as f32, p[1] as f32])
        .collect();
    InMemDicomObject::from_element_iter([
        el(tags::GRAPHIC_LAYER, VR::CS, LAYER),
        el(tags::GRAPHIC_ANNOTATION_UNITS, VR::CS, "PIXEL"),
        el(tags::GRAPHIC_DIMENSIONS, VR::US, PrimitiveValue::from(2u16)),
        el(
            tags::NUMBER_OF_GRAPHIC_POINTS,
            VR::US,
            PrimitiveValue::from(points.len() as u16),
        ),
        DataElement::new(tags::GRAPHIC_DATA, VR::FL, PrimitiveValue::F32(data.into())),
        el(tags::GRAPHIC_TYPE, VR::CS, kind),
        el(tags::GRAPHIC_FILLED, VR::CS, if filled { "Y" } else { "N" }),
    ])
}

/// Graphic objects for one annotation. Arrows are a shaft polyline plus two head strokes:
/// every GSPS reader renders POLYLINE, while text-anchor arrows are drawn by few.
fn graphics_of(a: &Annotation) -> Vec<InMemDicomObject> {
    let p = &a.points;
    match a.kind {
        AnnotationKind::Line => vec![graphic("POLYLINE", p, false)],
        AnnotationKind::Arrow => {
            // points[0] is the tail, points[1] the tip.
            let (t, h) = (p[0], p[1]);
            let (dx, dy) = (h[0] - t[0], h[1] - t[1]);
            let len = (dx * dx + dy * dy).sqrt().max(1e-9);
            let head = (len * 0.2).clamp(2.0, 20.0);
            let (ux, uy) = (dx / len, dy / len);
            let side = |s: f64| {
                let (c, sn) = (
                    std::f64::consts::FRAC_PI_6.cos(),
                    s * std::f64::consts::FRAC_PI_6.sin(),
                );
                let (rx, ry) = (ux * c - uy * sn, uy * c + ux * sn);
                [h[0] - rx * head, h[1] - ry * head]
            };
            vec![
                graphic("POLYLINE", &[t, h], false),
                graphic("POLYLINE", &[side(1.0), h, side(-1.0)], false),
            ]
        }
        AnnotationKind::Ellipse => {
            // Bounding-box corners → major-axis endpoints then minor-axis endpoints.
            let (x0, y0, x1, y1) = (
                p[0][0].min(p[1][0]),
                p[0][1].min(p[1][1]),
                p[0][0].max(p[1][0]),
                p[0][1].max(p[1][1]),
            );
            let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
            let horiz = [[x0, cy], [x1, cy]];
            let vert = [[cx, y0], [cx, y1]];
            let pts = if x1 - x0 >= y1 - y0 {
                [horiz[0], horiz[1], vert[0], vert[1]]
            } else {
                [vert[0], vert[1], horiz[0], horiz[1]]
            };
            vec![graphic("ELLIPSE", &pts, false)]
        }
        AnnotationKind::Freehand => {
            let mut closed = p.clone();
            closed.push(p[0]);
            vec![graphic("POLYLINE", &closed, false)]
        }
        AnnotationKind::Text => vec![],
    }
}

/// The label a reader shows next to the graphic: the text, measurements, and who drew it.
fn label_of(a: &Annotation) -> String {
    let mut parts = Vec::new();
    if let Some(t) = a.text.as_deref().filter(|t| !t.is_empty()) {
        parts.push(t.to_owned());
    }
    if let Some(stats) = &a.stats {
        let num = |k: &str| stats.get(k).and_then(|v| v.as_f64());
        if let Some(v) = num("lengthMm").or(num("length_mm")) {
            parts.push(format!("{v:.1} mm"));
        }
        if let Some(v) = num("areaMm2").or(num("area_mm2")) {
            parts.push(format!("{v:.1} mm²"));
        }
        if let (Some(m), Some(s)) = (num("mean"), num("sd").or(num("stdDev"))) {
            parts.push(format!("mean {m:.1} SD {s:.1}"));
        }
    }
    parts.push(format!("({})", a.author_name));
    // LO-free ST-like limit of Unformatted Text Value (ST, 1024 chars).
    parts.join(" ").chars().take(1024).collect()
}

fn text_object(a: &Annotation) -> InMemDicomObject {
    let anchor = match a.kind {
        AnnotationKind::Ellipse => [
            a.points[0][0].max(a.points[1][0]),
            a.points[0][1].min(a.points[1][1]),
        ],
        _ => a.points[a.points.len() - 1],
    };
    InMemDicomObject::from_element_iter([
        el(tags::GRAPHIC_LAYER, VR::CS, LAYER),
        el(tags::ANCHOR_POINT_ANNOTATION_UNITS, VR::CS, "PIXEL"),
        el(tags::UNFORMATTED_TEXT_VALUE, VR::ST, label_of(a)),
        DataElement::new(
            tags::ANCHOR_POINT,
            VR::FL,
            PrimitiveValue::F32([anchor[0] as f32, anchor[1] as f32].into_iter().collect()),
        ),
        el(
            tags::ANCHOR_POINT_VISIBILITY,
            VR::CS,
            if a.kind == AnnotationKind::Text {
                "N"
            } else {
                "Y"
            },
        ),
    ])
}

fn image_ref(img: &InstanceRecord, frame: Option<u32>) -> InMemDicomObject {
    let mut o = InMemDicomObject::from_element_iter([
        el(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            img.sop_class_uid.as_str(),
        ),
        el(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            img.sop_uid.as_str(),
        ),
    ]);
    if let Some(f) = frame {
        o.put(el(tags::REFERENCED_FRAME_NUMBER, VR::IS, f.to_string()));
    }
    o
}

/// Builds one GSPS for `images` (one series) and the annotations drawn on them.
pub fn build(
    images: &[InstanceRecord],
    annotations: &[&Annotation],
    p: &GspsParams<'_>,
) -> Result<FileDicomObject<InMemDicomObject>, GspsError> {
    let first = images.first().ok_or(GspsError::Empty)?;
    if annotations.is_empty() {
        return Err(GspsError::Empty);
    }
    // (sop, frame) → annotations; multi-frame images are referenced per frame.
    let mut per_image: BTreeMap<(String, u32), Vec<&Annotation>> = BTreeMap::new();
    for a in annotations {
        if !images.iter().any(|i| i.sop_uid == a.sop) {
            return Err(GspsError::UnknownImage(a.id.clone(), a.sop.clone()));
        }
        per_image
            .entry((a.sop.clone(), a.frame))
            .or_default()
            .push(a);
    }
    let record = |sop: &str| {
        images
            .iter()
            .find(|i| i.sop_uid == sop)
            .expect("checked above")
    };
    let frame_ref = |img: &InstanceRecord, f: u32| (img.frames.unwrap_or(1) > 1).then_some(f);

    let mut obj = InMemDicomObject::new_empty();
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    // SOP Common, Patient, General Study (copied so the PR files into the same study).
    obj.put(el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    obj.put(el(tags::SOP_CLASS_UID, VR::UI, GSPS_SOP_CLASS));
    obj.put(el(tags::SOP_INSTANCE_UID, VR::UI, p.sop_uid.as_str()));
    obj.put(el(tags::PATIENT_NAME, VR::PN, opt(&first.patient_name)));
    obj.put(el(tags::PATIENT_ID, VR::LO, opt(&first.patient_id)));
    obj.put(el(
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        opt(&first.patient_birth_date),
    ));
    obj.put(el(tags::PATIENT_SEX, VR::CS, opt(&first.patient_sex)));
    obj.put(el(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        first.study_uid.as_str(),
    ));
    obj.put(el(tags::STUDY_DATE, VR::DA, opt(&first.study_date)));
    obj.put(el(tags::STUDY_TIME, VR::TM, opt(&first.study_time)));
    obj.put(el(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""));
    obj.put(el(tags::STUDY_ID, VR::SH, opt(&first.study_id)));
    obj.put(el(
        tags::ACCESSION_NUMBER,
        VR::SH,
        opt(&first.accession_number),
    ));
    if let Some(d) = &first.study_description {
        obj.put(el(tags::STUDY_DESCRIPTION, VR::LO, d.as_str()));
    }
    // General Series / Presentation Series, General Equipment.
    obj.put(el(tags::MODALITY, VR::CS, "PR"));
    obj.put(el(tags::SERIES_INSTANCE_UID, VR::UI, p.series_uid.as_str()));
    obj.put(el(tags::SERIES_NUMBER, VR::IS, p.series_number.to_string()));
    obj.put(el(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "Consilium annotations",
    ));
    obj.put(el(tags::MANUFACTURER, VR::LO, "Consilium"));
    // Presentation State Identification.
    obj.put(el(
        tags::INSTANCE_NUMBER,
        VR::IS,
        p.instance_number.to_string(),
    ));
    obj.put(el(tags::CONTENT_LABEL, VR::CS, "CONSILIUM_ANNOTATIONS"));
    obj.put(el(
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "Annotations from a Consilium consultation",
    ));
    obj.put(el(
        tags::PRESENTATION_CREATION_DATE,
        VR::DA,
        p.date.as_str(),
    ));
    obj.put(el(
        tags::PRESENTATION_CREATION_TIME,
        VR::TM,
        p.time.as_str(),
    ));
    obj.put(el(tags::CONTENT_CREATOR_NAME, VR::PN, p.creator));
    // Presentation State Relationship: every annotated image of the source series.
    let refs: Vec<InMemDicomObject> = per_image
        .keys()
        .map(|(sop, f)| {
            let i = record(sop);
            image_ref(i, frame_ref(i, *f))
        })
        .collect();
    obj.put(seq(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(tags::SERIES_INSTANCE_UID, VR::UI, first.series_uid.as_str()),
            seq(tags::REFERENCED_IMAGE_SEQUENCE, refs),
        ])],
    ));
    // Displayed Area Selection: whole image, true size unknown → scale to fit.
    let mut areas: BTreeMap<(u32, u32), Vec<InMemDicomObject>> = BTreeMap::new();
    for (sop, f) in per_image.keys() {
        let i = record(sop);
        areas
            .entry((i.columns.unwrap_or(1), i.rows.unwrap_or(1)))
            .or_default()
            .push(image_ref(i, frame_ref(i, *f)));
    }
    obj.put(seq(
        tags::DISPLAYED_AREA_SELECTION_SEQUENCE,
        areas
            .into_iter()
            .map(|((c, r), refs)| {
                InMemDicomObject::from_element_iter([
                    seq(tags::REFERENCED_IMAGE_SEQUENCE, refs),
                    DataElement::new(
                        tags::DISPLAYED_AREA_TOP_LEFT_HAND_CORNER,
                        VR::SL,
                        PrimitiveValue::I32([1, 1].into_iter().collect()),
                    ),
                    DataElement::new(
                        tags::DISPLAYED_AREA_BOTTOM_RIGHT_HAND_CORNER,
                        VR::SL,
                        PrimitiveValue::I32([c as i32, r as i32].into_iter().collect()),
                    ),
                    el(tags::PRESENTATION_SIZE_MODE, VR::CS, "SCALE TO FIT"),
                    DataElement::new(
                        tags::PRESENTATION_PIXEL_ASPECT_RATIO,
                        VR::IS,
                        PrimitiveValue::Strs(
                            ["1".to_owned(), "1".to_owned()].into_iter().collect(),
                        ),
                    ),
                ])
            })
            .collect(),
    ));
    // Graphic Annotation + Graphic Layer.
    let annots: Vec<InMemDicomObject> = per_image
        .iter()
        .map(|((sop, f), anns)| {
            let i = record(sop);
            let mut item = InMemDicomObject::from_element_iter([
                seq(
                    tags::REFERENCED_IMAGE_SEQUENCE,
                    vec![image_ref(i, frame_ref(i, *f))],
                ),
                el(tags::GRAPHIC_LAYER, VR::CS, LAYER),
            ]);
            let graphics: Vec<_> = anns.iter().flat_map(|a| graphics_of(a)).collect();
            let texts: Vec<_> = anns.iter().map(|a| text_object(a)).collect();
            if !graphics.is_empty() {
                item.put(seq(tags::GRAPHIC_OBJECT_SEQUENCE, graphics));
            }
            item.put(seq(tags::TEXT_OBJECT_SEQUENCE, texts));
            item
        })
        .collect();
    obj.put(seq(tags::GRAPHIC_ANNOTATION_SEQUENCE, annots));
    obj.put(seq(
        tags::GRAPHIC_LAYER_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(tags::GRAPHIC_LAYER, VR::CS, LAYER),
            el(tags::GRAPHIC_LAYER_ORDER, VR::IS, "1"),
            el(
                tags::GRAPHIC_LAYER_DESCRIPTION,
                VR::LO,
                "Consilium annotations",
            ),
        ])],
    ));
    // Modality LUT copied from the images (one value per series, as they share it).
    if first.rescale_slope.is_some() || first.rescale_intercept.is_some() {
        obj.put(el(
            tags::RESCALE_INTERCEPT,
            VR::DS,
            ds(first.rescale_intercept.unwrap_or(0.0)),
        ));
        obj.put(el(
            tags::RESCALE_SLOPE,
            VR::DS,
            ds(first.rescale_slope.unwrap_or(1.0)),
        ));
        let ty = if first.modality.as_deref() == Some("CT") {
            "HU"
        } else {
            "US"
        };
        obj.put(el(tags::RESCALE_TYPE, VR::LO, ty));
    }
    // Softcopy VOI LUT: images grouped by the window they were shown with.
    let mut windows: Vec<(Window, Vec<InMemDicomObject>)> = Vec::new();
    for ((sop, f), anns) in &per_image {
        let i = record(sop);
        let w = window_of(i, anns, p.viewer_window);
        let r = image_ref(i, frame_ref(i, *f));
        match windows.iter_mut().find(|(x, _)| *x == w) {
            Some((_, v)) => v.push(r),
            None => windows.push((w, vec![r])),
        }
    }
    obj.put(seq(
        tags::SOFTCOPY_VOILUT_SEQUENCE,
        windows
            .into_iter()
            .map(|(w, refs)| {
                InMemDicomObject::from_element_iter([
                    seq(tags::REFERENCED_IMAGE_SEQUENCE, refs),
                    el(tags::WINDOW_CENTER, VR::DS, ds(w.center)),
                    el(tags::WINDOW_WIDTH, VR::DS, ds(w.width)),
                ])
            })
            .collect(),
    ));
    obj.put(el(tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY"));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(GSPS_SOP_CLASS)
        .media_storage_sop_instance_uid(p.sop_uid.as_str())
        .transfer_syntax(EXPLICIT_VR_LE)
        .implementation_class_uid("2.25.233414357411316839196442937093946523577")
        .implementation_version_name("CONSILIUM");
    obj.with_meta(meta)
        .map_err(|e| GspsError::Build(e.to_string()))
}
