//! The demo study: a synthetic CT phantom with known geometry and known HU, written into
//! room `demo` when the store is empty, so a fresh server has something real-sized to show
//! (the test files shipped with the project are single 64×64 slices).
//!
//! 120 axial slices of 512×512, 0.78125 mm pixels, 2.5 mm apart, centred on the origin.
//! Patient coordinates (mm, DICOM LPS): x to the patient's left, y to the back, z to the head.
//! Air −1000 HU outside an elliptical body (soft tissue 40 HU, a 12 mm water-like rim at
//! 0 HU), two ellipsoidal lungs at −850 HU, a spine (+700) and ribs (+700 in bands), and a
//! 25 mm spherical lesion of +60 HU in the right lung; ±8 HU deterministic noise.

use super::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ImportError, StudyStore};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// Slices in the phantom.
pub const SLICES: usize = 120;
/// Rows and columns of each slice.
pub const SIZE: usize = 512;
/// Pixel spacing (mm), both directions.
pub const SPACING: f64 = 0.78125;
/// Slice spacing and thickness (mm).
pub const THICKNESS: f64 = 2.5;
/// z of the first slice (mm).
pub const Z0: f64 = -148.75;
/// Root of every UID of the phantom (a UUID-derived 2.25 root fixed for this project).
pub const UID_ROOT: &str = "2.25.314159265358979323846264338327950288";
/// Study Instance UID of the phantom.
pub const STUDY_UID: &str = "2.25.314159265358979323846264338327950288.1";
/// Series Instance UID of the phantom.
pub const SERIES_UID: &str = "2.25.314159265358979323846264338327950288.2";
/// Centre (mm) and radius of the lesion.
pub const LESION: ([f64; 3], f64) = ([-70.0, -10.0, 20.0], 12.5);

/// Position (mm) of pixel (col, row) of a slice: the first pixel's centre is at
/// (−199.609375, −199.609375).
pub fn origin() -> f64 {
    -(SIZE as f64 / 2.0 - 0.5) * SPACING
}

/// The true HU of the phantom at a point (before noise).
pub fn hu_at(x: f64, y: f64, z: f64) -> f64 {
    let body = (x / 170.0).powi(2) + (y / 120.0).powi(2);
    if body > 1.0 {
        return -1000.0;
    }
    // Spine: a cylinder behind the mediastinum.
    if (x.powi(2) + (y - 75.0).powi(2)) < 16.0f64.powi(2) {
        return 700.0;
    }
    let (c, r) = LESION;
    if (x - c[0]).powi(2) + (y - c[1]).powi(2) + (z - c[2]).powi(2) < r * r {
        return 60.0;
    }
    // Lungs: ellipsoids either side, 220 mm long.
    for cx in [-70.0, 70.0] {
        let l =
            ((x - cx) / 48.0).powi(2) + ((y + 5.0) / 70.0).powi(2) + ((z - 10.0) / 110.0).powi(2);
        if l < 1.0 {
            return -850.0;
        }
    }
    // Ribs: 8 mm bands of an inner elliptical shell, every 25 mm along z over the lungs.
    let shell = (x / 150.0).powi(2) + (y / 103.0).powi(2);
    if (0.88..1.0).contains(&shell)
        && (-100.0..120.0).contains(&z)
        && (z + 1000.0).rem_euclid(25.0) < 8.0
    {
        return 700.0;
    }
    let rim = (x / 158.0).powi(2) + (y / 108.0).powi(2);
    if rim > 1.0 { 0.0 } else { 40.0 }
}

/// Deterministic noise in [−8, 8] HU from a hash of the voxel index.
fn noise(col: usize, row: usize, slice: usize) -> f64 {
    let mut h = (col as u64) | ((row as u64) << 20) | ((slice as u64) << 40);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    (h % 17) as f64 - 8.0
}

fn slice_object(k: usize) -> InMemDicomObject {
    let o = origin();
    let z = Z0 + k as f64 * THICKNESS;
    let mut pixels = Vec::with_capacity(SIZE * SIZE * 2);
    for row in 0..SIZE {
        let y = o + row as f64 * SPACING;
        for col in 0..SIZE {
            let x = o + col as f64 * SPACING;
            let hu = hu_at(x, y, z) + noise(col, row, k);
            let stored = (hu + 1024.0)
                .round()
                .clamp(i16::MIN as f64, i16::MAX as f64) as i16;
            pixels.extend_from_slice(&stored.to_le_bytes());
        }
    }
    let sop = format!("{UID_ROOT}.3.{}", k + 1);
    let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    InMemDicomObject::from_element_iter([
        s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
        s(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY\\AXIAL"),
        s(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        s(tags::SOP_INSTANCE_UID, VR::UI, &sop),
        s(tags::STUDY_DATE, VR::DA, "20260101"),
        s(tags::STUDY_TIME, VR::TM, "090000"),
        s(tags::ACCESSION_NUMBER, VR::SH, "DEMO0001"),
        s(tags::MODALITY, VR::CS, "CT"),
        s(tags::MANUFACTURER, VR::LO, "Consilium synthetic phantom"),
        s(tags::STUDY_DESCRIPTION, VR::LO, "Synthetic CT phantom"),
        s(tags::SERIES_DESCRIPTION, VR::LO, "Axial 2.5 mm"),
        s(tags::PATIENT_NAME, VR::PN, "PHANTOM^CT"),
        s(tags::PATIENT_ID, VR::LO, "CONSILIUM-DEMO"),
        s(tags::PATIENT_BIRTH_DATE, VR::DA, ""),
        s(tags::PATIENT_SEX, VR::CS, "O"),
        s(tags::SLICE_THICKNESS, VR::DS, "2.5"),
        s(tags::KVP, VR::DS, "120"),
        s(tags::PATIENT_POSITION, VR::CS, "HFS"),
        s(tags::STUDY_INSTANCE_UID, VR::UI, STUDY_UID),
        s(tags::SERIES_INSTANCE_UID, VR::UI, SERIES_UID),
        s(tags::STUDY_ID, VR::SH, "1"),
        s(tags::SERIES_NUMBER, VR::IS, "1"),
        s(tags::INSTANCE_NUMBER, VR::IS, &(k + 1).to_string()),
        s(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            &format!("{o}\\{o}\\{z}"),
        ),
        s(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0"),
        s(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            &format!("{UID_ROOT}.4"),
        ),
        s(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        s(tags::SLICE_LOCATION, VR::DS, &z.to_string()),
        us(tags::SAMPLES_PER_PIXEL, 1),
        s(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, SIZE as u16),
        us(tags::COLUMNS, SIZE as u16),
        s(
            tags::PIXEL_SPACING,
            VR::DS,
            &format!("{SPACING}\\{SPACING}"),
        ),
        us(tags::BITS_ALLOCATED, 16),
        us(tags::BITS_STORED, 16),
        us(tags::HIGH_BIT, 15),
        us(tags::PIXEL_REPRESENTATION, 1),
        s(tags::WINDOW_CENTER, VR::DS, "40"),
        s(tags::WINDOW_WIDTH, VR::DS, "400"),
        s(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
        s(tags::RESCALE_SLOPE, VR::DS, "1"),
        s(tags::RESCALE_TYPE, VR::LO, "HU"),
        DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(pixels)),
    ])
}

/// Why the phantom could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PhantomError {
    #[error("building slice {0}: {1}")]
    Build(usize, String),
    #[error("storing slice {0}: {1}")]
    Store(usize, ImportError),
}

/// Writes the phantom into `room` through the normal import path. Blocking.
pub fn write_into(store: &StudyStore, room: &str) -> Result<(), PhantomError> {
    for k in 0..SLICES {
        let obj = slice_object(k)
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                    .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                    .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
            )
            .map_err(|e| PhantomError::Build(k, e.to_string()))?;
        let tmp = store.temp_path();
        obj.write_to_file(&tmp)
            .map_err(|e| PhantomError::Build(k, e.to_string()))?;
        store
            .import_file(room, &tmp)
            .map_err(|e| PhantomError::Store(k, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anatomy_is_where_the_docs_say() {
        assert_eq!(hu_at(0.0, 190.0, 0.0), -1000.0);
        assert_eq!(hu_at(0.0, 0.0, 0.0), 40.0);
        assert_eq!(hu_at(100.0, -5.0, 10.0), -850.0);
        assert_eq!(hu_at(0.0, 75.0, 0.0), 700.0);
        assert_eq!(hu_at(-70.0, -10.0, 20.0), 60.0);
        assert_eq!(hu_at(-70.0, -10.0, 40.0), -850.0);
    }
}
