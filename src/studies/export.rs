//! Export of a study's annotations: as JSON (for archives and scripts) and as DICOM GSPS
//! stored back into the study (so any PACS viewer shows the consultation's marks).

use super::gsps::{self, GspsParams};
use super::routes::{ApiError, Caller, base_url, blocking, caller};
use crate::AppState;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use consilium_signaling::Role;
use consilium_signaling::collab::Annotation;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// Version of the JSON export schema (docs/dicomweb.md); bump on incompatible changes.
pub const EXPORT_VERSION: u32 = 1;

/// The export routes, merged into the `/dicomweb` router.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/studies/{study}/annotations", get(export_json))
        .route("/studies/{study}/presentation-states", post(export_gsps))
}

/// The study's room (checked against the caller) and its live annotations.
async fn study_annotations(
    state: &AppState,
    who: &Caller,
    study: &str,
) -> Result<(String, Vec<Annotation>, Option<Value>), ApiError> {
    let s = state.studies.clone();
    let id = study.to_owned();
    let room = blocking(move || Ok(s.study_room(&id)?))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no study {study}")))?;
    who.may_read(&room)?;
    let stored = state
        .collab
        .snapshot(&room)
        .await
        .map_err(|e| ApiError::Task(format!("loading the annotations: {e}")))?;
    let anns = stored
        .annotations
        .into_iter()
        .filter(|a| a.study == study)
        .collect();
    Ok((room, anns, stored.viewer))
}

/// The window the room's presenter last showed `series` with (its ViewerState, which the
/// server keeps per room), for annotations drawn before they carried their own.
fn viewer_window(viewer: Option<&Value>, series: &str) -> Option<gsps::Window> {
    let viewports = viewer?.get("viewports")?.as_array()?;
    viewports
        .iter()
        .filter(|v| v.get("series").and_then(Value::as_str) == Some(series))
        .find_map(|v| {
            let width = v.get("ww")?.as_f64()?;
            let center = v.get("wc")?.as_f64()?;
            (width.is_finite()
                && center.is_finite()
                && width > 0.0
                && width <= 1e6
                && center.abs() <= 1e6)
                .then_some(gsps::Window { center, width })
        })
}

/// `GET /dicomweb/studies/{study}/annotations`: every live annotation of the study.
async fn export_json(
    State(state): State<AppState>,
    Path(study): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    let (room, anns, _) = study_annotations(&state, &who, &study).await?;
    let body = json!({
        "version": EXPORT_VERSION,
        "study": study,
        "room": room,
        "exported_ms": now().as_millis() as u64,
        "annotations": anns,
    });
    // The study UID is digits and dots only (validated at upload), safe in a filename.
    let file: String = study
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"annotations-{file}.json\""),
            ),
        ],
        body.to_string(),
    )
        .into_response())
}

fn now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The PR series that holds the presentation states of one source series: derived from the
/// source series UID, so re-exports land in the same series with the next InstanceNumber.
fn pr_series_uid(source_series: &str) -> String {
    let h = Sha256::digest(format!("consilium-gsps:{source_series}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    format!("2.25.{}", u128::from_be_bytes(b) >> 1)
}

/// `POST /dicomweb/studies/{study}/presentation-states`: one new GSPS per annotated series,
/// stored into the study like a STOW upload; answers with the created instances.
async fn export_gsps(
    State(state): State<AppState>,
    Path(study): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let who = caller(&state, &headers, &q)?;
    if let Caller::Member {
        role: Role::Observer,
        ..
    } = who
    {
        return Err(ApiError::Forbidden(
            "observers cannot store presentation states".into(),
        ));
    }
    let (room, anns, viewer) = study_annotations(&state, &who, &study).await?;
    if anns.is_empty() {
        return Err(ApiError::Conflict(format!(
            "study {study} has no annotations to export"
        )));
    }
    let creator = "Consilium".to_owned();
    let base = base_url(&headers);
    let store = state.studies.clone();
    let created = blocking(move || {
        let mut by_series: BTreeMap<String, Vec<&Annotation>> = BTreeMap::new();
        for a in &anns {
            by_series.entry(a.series.clone()).or_default().push(a);
        }
        let series_rows = store.series(&study)?;
        let t = now().as_secs();
        let (date, time) = date_time(t);
        let mut out = Vec::new();
        for (series, list) in by_series {
            let images: Vec<_> = store
                .instances(&study, &series)?
                .into_iter()
                .map(|r| r.record)
                .collect();
            if images.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "annotated series {series} is not in study {study}"
                )));
            }
            let pr_series = pr_series_uid(&series);
            let existing = store.instances(&study, &pr_series)?.len() as i64;
            let source_number = series_rows
                .iter()
                .find(|s| s.series_uid == series)
                .and_then(|s| s.series_number)
                .unwrap_or(0);
            let params = GspsParams {
                sop_uid: gsps::new_uid(),
                series_uid: pr_series.clone(),
                instance_number: existing + 1,
                series_number: 9000 + source_number,
                date: date.clone(),
                time: time.clone(),
                creator: &creator,
                viewer_window: viewer_window(viewer.as_ref(), &series),
            };
            let obj = gsps::build(&images, &list, &params)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let path = store.temp_path();
            obj.write_to_file(&path)
                .map_err(|e| ApiError::Task(format!("writing the presentation state: {e}")))?;
            store
                .import_file(&room, &path)
                .map_err(|e| ApiError::Task(format!("storing the presentation state: {e}")))?;
            out.push(json!({
                "referencedSeries": series,
                "seriesInstanceUID": pr_series,
                "sopInstanceUID": params.sop_uid,
                "instanceNumber": params.instance_number,
                "annotations": list.len(),
                "url": format!("{base}/studies/{study}/series/{pr_series}/instances/{}", params.sop_uid),
            }));
        }
        Ok(out)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "created": created }).to_string(),
    )
        .into_response())
}

/// UTC date `YYYYMMDD` and time `HHMMSS` of a unix time (civil-from-days, H. Hinnant).
fn date_time(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_presenters_window_for_a_series() {
        let v = json!({"layout": "1x2", "viewports": [
            {"series": "1.2.3", "ww": 400, "wc": 40},
            {"series": "1.2.4", "ww": 1500.5, "wc": -600}]});
        assert_eq!(
            viewer_window(Some(&v), "1.2.4"),
            Some(gsps::Window {
                center: -600.0,
                width: 1500.5
            })
        );
        assert_eq!(viewer_window(Some(&v), "9.9"), None);
        assert_eq!(viewer_window(None, "1.2.3"), None);
        let bad = json!({"viewports": [{"series": "1.2.3", "ww": -1, "wc": 0}, "x"]});
        assert_eq!(viewer_window(Some(&bad), "1.2.3"), None);
        assert_eq!(viewer_window(Some(&json!({"viewports": 3})), "1.2.3"), None);
    }

    #[test]
    fn civil_date() {
        assert_eq!(date_time(0), ("19700101".into(), "000000".into()));
        assert_eq!(
            date_time(1_709_210_096),
            ("20240229".into(), "123456".into())
        );
    }
}
