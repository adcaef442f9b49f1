//! Annotation export end to end (docs/dicomweb.md "Annotation export"): the real server with
//! the demo phantom, a real WebRTC data-channel peer drawing one annotation of each kind,
//! the JSON export, and the GSPS stored back into the study, read with dicom-rs and pydicom.

use consilium::{Config, Server};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use loadtest::{Event, Participant, ParticipantConfig};
use serde_json::{Value, json};
use std::time::Duration;

mod common;

use common::http::{Resp, request};
async fn get(server: &Server, path: &str) -> Resp {
    request(server, "GET", path, &[], b"").await
}

fn first_str(v: &Value, tag: &str) -> String {
    v[tag]["Value"][0].as_str().unwrap_or_default().to_owned()
}

async fn next_annotation(p: &mut Participant) -> Value {
    let got = p
        .wait_for(
            Duration::from_secs(15),
            |e| matches!(e, Event::Data(v) if v["type"] == "annotation" || v["type"] == "error"),
        )
        .await;
    match got {
        Some(Event::Data(v)) => {
            assert_eq!(v["type"], "annotation", "{v}");
            v
        }
        other => panic!("no annotation echo: {other:?}"),
    }
}

/// Says hello until the data channel answers (it opens asynchronously).
async fn hello(p: &mut Participant) {
    for _ in 0..20 {
        p.send_data(&json!({"type": "hello", "since": null}));
        let got = p
            .wait_for(
                Duration::from_millis(1500),
                |e| matches!(e, Event::Data(v) if v["type"] == "snapshot"),
            )
            .await;
        if got.is_some() {
            return;
        }
    }
    panic!("no snapshot");
}

fn f32s(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Vec<f32> {
    obj.element(tag).unwrap().to_multi_float32().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_export_as_json_and_gsps() {
    let server = consilium::start(Config {
        demo_study: true,
        ..Config::for_tests()
    })
    .await
    .expect("server starts");
    let studies = get(&server, "/dicomweb/studies?room=demo").await.json();
    let study = first_str(&studies[0], "0020000D");
    let series = get(&server, &format!("/dicomweb/studies/{study}/series"))
        .await
        .json();
    let series_uid = first_str(&series[0], "0020000E");
    let instances = get(
        &server,
        &format!("/dicomweb/studies/{study}/series/{series_uid}/instances"),
    )
    .await
    .json();
    let sop = |i: usize| first_str(&instances[i], "00080018");
    let (sop_a, sop_b) = (sop(10), sop(60));

    // Nothing drawn yet: the JSON export is empty, the GSPS export refused with a reason.
    let empty = get(&server, &format!("/dicomweb/studies/{study}/annotations")).await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json()["annotations"], json!([]));
    let refused = request(
        &server,
        "POST",
        &format!("/dicomweb/studies/{study}/presentation-states"),
        &[],
        b"",
    )
    .await;
    assert_eq!(
        refused.status,
        409,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("no annotations")
    );
    let unknown = request(
        &server,
        "POST",
        "/dicomweb/studies/1.2.3.999/presentation-states",
        &[],
        b"",
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.json()["error"]
            .as_str()
            .unwrap()
            .contains("no study 1.2.3.999")
    );

    let mut config =
        ParticipantConfig::new(&format!("ws://{}/ws", server.http_addr), "demo", "Dr Ana");
    config.publish_audio = false;
    config.publish_video = false;
    let mut ana = Participant::join(config).await.expect("joins");
    hello(&mut ana).await;
    let ann = |kind: &str, sop: &str, points: Value, text: Value| {
        json!({"kind": kind, "study": study, "series": series_uid, "sop": sop, "frame": 1,
               "points": points, "text": text, "color": "#ff8800",
               "stats": if kind == "line" { json!({"lengthMm": 42.5}) } else { Value::Null }})
    };
    let drawn = [
        ann(
            "line",
            &sop_a,
            json!([[10.0, 20.0], [100.5, 40.25]]),
            Value::Null,
        ),
        ann(
            "arrow",
            &sop_a,
            json!([[50.0, 50.0], [80.0, 90.0]]),
            Value::Null,
        ),
        {
            let mut e = ann(
                "ellipse",
                &sop_b,
                json!([[20.0, 30.0], [120.0, 70.0]]),
                Value::Null,
            );
            e["window"] = json!({"ww": 1500.0, "wc": -600.0});
            e
        },
        ann(
            "freehand",
            &sop_b,
            json!([[1.0, 1.0], [5.0, 1.0], [5.0, 9.0]]),
            Value::Null,
        ),
        ann(
            "text",
            &sop_b,
            json!([[64.0, 64.0]]),
            json!("suspicious lesion"),
        ),
    ];
    for (i, a) in drawn.iter().enumerate() {
        ana.send_data(
            &json!({"type": "annotate", "op": "add", "ref": format!("r{i}"), "annotation": a}),
        );
        next_annotation(&mut ana).await;
    }

    // A window that cannot be shown is refused, not stored.
    let mut bad = drawn[0].clone();
    bad["window"] = json!({"ww": -1.0, "wc": 40.0});
    ana.send_data(&json!({"type": "annotate", "op": "add", "ref": "bad", "annotation": bad}));
    let got = ana
        .wait_for(
            Duration::from_secs(15),
            |e| matches!(e, Event::Data(v) if v["type"] == "error" || v["type"] == "annotation"),
        )
        .await;
    match got {
        Some(Event::Data(v)) => assert_eq!(v["code"], "bad_message", "{v}"),
        other => panic!("no refusal: {other:?}"),
    }

    // JSON export: every annotation with its author, versioned, as a download.
    let exported = get(&server, &format!("/dicomweb/studies/{study}/annotations")).await;
    assert_eq!(exported.status, 200);
    assert!(
        exported
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment")
    );
    let j = exported.json();
    assert_eq!(j["version"], 1);
    let list = j["annotations"].as_array().unwrap();
    assert_eq!(list.len(), 5);
    assert!(list.iter().all(|a| a["author_name"] == "Dr Ana"));
    assert_eq!(list[0]["stats"]["lengthMm"], 42.5);
    let ellipse = list.iter().find(|a| a["kind"] == "ellipse").unwrap();
    assert_eq!(
        ellipse["window"],
        json!({"ww": 1500.0, "wc": -600.0}),
        "{j}"
    );

    // GSPS: one per annotated series, stored into the study.
    let made = request(
        &server,
        "POST",
        &format!("/dicomweb/studies/{study}/presentation-states"),
        &[],
        b"",
    )
    .await;
    assert_eq!(made.status, 201, "{}", String::from_utf8_lossy(&made.body));
    let made = made.json();
    let created = made["created"].as_array().unwrap();
    assert_eq!(created.len(), 1);
    let c = &created[0];
    assert_eq!(c["referencedSeries"], series_uid.as_str());
    let pr_series = c["seriesInstanceUID"].as_str().unwrap().to_owned();
    let pr_sop = c["sopInstanceUID"].as_str().unwrap().to_owned();
    let url = c["url"].as_str().unwrap();
    let path = url.split_once("/dicomweb").unwrap().1;
    let wado = get(&server, &format!("/dicomweb{path}")).await;
    assert_eq!(wado.status, 200);
    // WADO-RS answers multipart; the Part-10 object starts at its 128-byte preamble + DICM.
    let at = wado
        .body
        .windows(4)
        .position(|w| w == b"DICM")
        .expect("a Part-10 object")
        - 128;
    let end = wado.body.len()
        - wado.body[at..]
            .windows(4)
            .rev()
            .position(|w| w == b"\r\n--")
            .map(|p| p + 4)
            .unwrap_or(0);
    let file = std::env::temp_dir().join(format!("consilium-gsps-{pr_sop}.dcm"));
    std::fs::write(&file, &wado.body[at..end]).unwrap();
    let obj = OpenFileOptions::new()
        .open_file(&file)
        .expect("dicom-rs reads the GSPS");
    assert_eq!(
        obj.meta().media_storage_sop_class_uid(),
        "1.2.840.10008.5.1.4.1.1.11.1"
    );
    assert_eq!(obj.element(tags::MODALITY).unwrap().to_str().unwrap(), "PR");
    assert_eq!(
        obj.element(tags::STUDY_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap(),
        study.as_str()
    );
    let rs = obj
        .element(tags::REFERENCED_SERIES_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(
        rs[0]
            .element(tags::SERIES_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap(),
        series_uid.as_str()
    );
    let mut refs: Vec<String> = rs[0]
        .element(tags::REFERENCED_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()
        .iter()
        .map(|i| {
            i.element(tags::REFERENCED_SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0')
                .to_owned()
        })
        .collect();
    refs.sort();
    let mut want = vec![sop_a.clone(), sop_b.clone()];
    want.sort();
    assert_eq!(refs, want);
    let annots = obj
        .element(tags::GRAPHIC_ANNOTATION_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(annots.len(), 2);
    for item in annots {
        let on = item
            .element(tags::REFERENCED_IMAGE_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0]
            .element(tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_owned();
        let graphics = item
            .element(tags::GRAPHIC_OBJECT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        let texts = item
            .element(tags::TEXT_OBJECT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        if on == sop_a {
            // Line, then the arrow's shaft and head.
            assert_eq!(graphics.len(), 3);
            assert_eq!(
                f32s(&graphics[0], tags::GRAPHIC_DATA),
                vec![10.0, 20.0, 100.5, 40.25]
            );
            assert_eq!(
                graphics[0]
                    .element(tags::GRAPHIC_TYPE)
                    .unwrap()
                    .to_str()
                    .unwrap(),
                "POLYLINE"
            );
            assert_eq!(
                f32s(&graphics[1], tags::GRAPHIC_DATA),
                vec![50.0, 50.0, 80.0, 90.0]
            );
            let label = texts[0]
                .element(tags::UNFORMATTED_TEXT_VALUE)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert!(
                label.contains("42.5 mm") && label.contains("Dr Ana"),
                "{label}"
            );
        } else {
            assert_eq!(on, sop_b);
            assert_eq!(
                graphics[0]
                    .element(tags::GRAPHIC_TYPE)
                    .unwrap()
                    .to_str()
                    .unwrap(),
                "ELLIPSE"
            );
            assert_eq!(
                f32s(&graphics[0], tags::GRAPHIC_DATA),
                vec![20.0, 50.0, 120.0, 50.0, 70.0, 30.0, 70.0, 70.0]
            );
            assert_eq!(
                f32s(&graphics[1], tags::GRAPHIC_DATA),
                vec![1.0, 1.0, 5.0, 1.0, 5.0, 9.0, 1.0, 1.0]
            );
            assert!(texts.iter().any(|t| {
                t.element(tags::UNFORMATTED_TEXT_VALUE)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .contains("suspicious lesion")
            }));
        }
    }
    // Image A is shown with its own window (40/400, the phantom's); image B with the
    // window the ellipse was drawn in.
    let voi = obj
        .element(tags::SOFTCOPY_VOILUT_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let window_of = |sop: &str| -> (f64, f64) {
        let item = voi
            .iter()
            .find(|v| {
                v.element(tags::REFERENCED_IMAGE_SEQUENCE)
                    .unwrap()
                    .items()
                    .unwrap()
                    .iter()
                    .any(|r| {
                        r.element(tags::REFERENCED_SOP_INSTANCE_UID)
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .trim_end_matches('\0')
                            == sop
                    })
            })
            .expect("a VOI item for every annotated image");
        (
            item.element(tags::WINDOW_CENTER)
                .unwrap()
                .to_float64()
                .unwrap(),
            item.element(tags::WINDOW_WIDTH)
                .unwrap()
                .to_float64()
                .unwrap(),
        )
    };
    assert_eq!(voi.len(), 2);
    assert_eq!(window_of(&sop_a), (40.0, 400.0));
    assert_eq!(window_of(&sop_b), (-600.0, 1500.0));

    // QIDO lists it as a PR series of the same study; a re-export adds instance 2 to it.
    let series = get(&server, &format!("/dicomweb/studies/{study}/series"))
        .await
        .json();
    assert!(
        series
            .as_array()
            .unwrap()
            .iter()
            .any(|s| first_str(s, "0020000E") == pr_series && first_str(s, "00080060") == "PR"),
        "{series}"
    );
    let again = request(
        &server,
        "POST",
        &format!("/dicomweb/studies/{study}/presentation-states"),
        &[],
        b"",
    )
    .await
    .json();
    assert_eq!(again["created"][0]["seriesInstanceUID"], pr_series.as_str());
    assert_eq!(again["created"][0]["instanceNumber"], 2);
    assert_ne!(again["created"][0]["sopInstanceUID"], pr_sop.as_str());

    // pydicom reads the same object and sees the same references.
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gsps_check.py"))
        .arg(&file)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(3) {
        assert!(
            std::env::var("CONSILIUM_REQUIRE_PYDICOM").as_deref() != Ok("1"),
            "pydicom is required but not importable"
        );
        eprintln!("!!!!!!!! SKIPPED the pydicom check: pydicom is not importable !!!!!!!!");
    } else {
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(summary["sop_class"], "1.2.840.10008.5.1.4.1.1.11.1");
        let mut p: Vec<String> = serde_json::from_value(summary["referenced"].clone()).unwrap();
        p.sort();
        assert_eq!(p, want);
        assert_eq!(summary["graphic_objects"], 5);
    }
    let _ = std::fs::remove_file(&file);
    drop(ana);
    server.shutdown().await;
}

/// With auth on, the export follows the study store's rules: a token for the study's room to
/// read (observers too), and not an observer's to store presentation states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotation_export_needs_a_token_for_the_studys_room() {
    use consilium_signaling::{Role, TokenAuthority};
    let secret = "gsps-test-secret";
    let server = consilium::start(Config {
        demo_study: true,
        jwt_secret: Some(secret.into()),
        ..Config::for_tests()
    })
    .await
    .expect("server starts");
    let auth = TokenAuthority::new(secret.as_bytes());
    let ttl = Duration::from_secs(600);
    let host = auth.issue("demo", "Dr H", Role::Host, ttl);
    let observer = auth.issue("demo", "Obs", Role::Observer, ttl);
    let elsewhere = auth.issue("other-room", "Dr X", Role::Host, ttl);
    let bearer = |t: &str| vec![("Authorization", format!("Bearer {t}"))];
    let studies = request(&server, "GET", "/dicomweb/studies", &bearer(&host), b"")
        .await
        .json();
    let study = first_str(&studies[0], "0020000D");
    assert!(!study.is_empty(), "{studies}");
    let json_path = format!("/dicomweb/studies/{study}/annotations");
    let gsps_path = format!("/dicomweb/studies/{study}/presentation-states");

    // (method, path, token, expected status, why)
    let cases: [(&str, &str, Option<&str>, u16, &str); 8] = [
        ("GET", &json_path, None, 401, "no token"),
        ("GET", &json_path, Some("forged"), 401, "a forged token"),
        (
            "GET",
            &json_path,
            Some(&elsewhere),
            403,
            "a token for another room",
        ),
        (
            "GET",
            &json_path,
            Some(&observer),
            200,
            "observers may read",
        ),
        ("POST", &gsps_path, None, 401, "no token"),
        (
            "POST",
            &gsps_path,
            Some(&elsewhere),
            403,
            "a token for another room",
        ),
        (
            "POST",
            &gsps_path,
            Some(&observer),
            403,
            "observers do not store",
        ),
        // The room's host gets past the checks to the (empty) export itself.
        (
            "POST",
            &gsps_path,
            Some(&host),
            409,
            "the host, nothing drawn yet",
        ),
    ];
    for (method, path, token, expected, why) in cases {
        let headers = token.map(bearer).unwrap_or_default();
        let got = request(&server, method, path, &headers, b"").await;
        assert_eq!(got.status, expected, "{method} {path}: {why}");
    }
    server.shutdown().await;
}
