//! The shared viewer's server authority end to end (`docs/collaboration.md`): the real server
//! in-process, real WebRTC peers whose data channels go through the real SFU, and the real
//! SQLite database under `data_dir`, across a server restart.

mod common;

use consilium::{Config, Server};
use loadtest::{Event, Participant, ParticipantConfig};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

async fn server_in(data_dir: &Path) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    consilium::start(Config {
        data_dir: data_dir.to_owned(),
        ..Config::for_tests()
    })
    .await
    .expect("server starts")
}

fn fresh_dir() -> PathBuf {
    Config::for_tests().data_dir
}

/// A data-only peer (no media: the data channel is what is under test, and two cores are
/// shared by everything).
async fn join(server: &Server, room: &str, name: &str) -> Participant {
    let mut config = ParticipantConfig::new(&format!("ws://{}/ws", server.http_addr), room, name);
    config.publish_audio = false;
    config.publish_video = false;
    Participant::join(config)
        .await
        .unwrap_or_else(|e| panic!("{name} joins: {e}"))
}

/// The next data-channel message of type `kind`, skipping others.
async fn next_of(p: &mut Participant, kind: &str) -> Value {
    let got = p
        .wait_for(WAIT, |e| matches!(e, Event::Data(v) if v["type"] == kind))
        .await;
    match got {
        Some(Event::Data(v)) => v,
        other => panic!("no {kind} within {WAIT:?}: {other:?}"),
    }
}

/// Says `hello` (again until the data channel is open) and returns the whole reply: every
/// part of the snapshot or changes, in order.
async fn hello(p: &mut Participant, since: Value) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reply to hello within {WAIT:?}"
        );
        p.send_data(&json!({"type": "hello", "since": since}));
        let got = p
            .wait_for(Duration::from_millis(1500), |e| {
                matches!(e, Event::Data(v) if (v["type"] == "snapshot" || v["type"] == "changes")
                    && v["part"] == 0)
            })
            .await;
        if let Some(Event::Data(v)) = got {
            break v;
        }
    };
    let kind = first["type"].as_str().unwrap_or_default().to_owned();
    let mut parts = vec![first];
    while parts.last().is_some_and(|p| p["more"] == true) {
        parts.push(next_of(p, &kind).await);
    }
    parts
}

/// A one-part snapshot.
async fn snapshot(p: &mut Participant) -> Value {
    let mut parts = hello(p, Value::Null).await;
    assert_eq!(parts.len(), 1, "{parts:?}");
    let s = parts.remove(0);
    assert_eq!(s["type"], "snapshot", "{s}");
    s
}

fn arrow(x: f64) -> Value {
    json!({"kind": "arrow", "study": "1.2.826.0.1", "series": "1.2.826.0.1.2",
           "sop": "1.2.826.0.1.2.3", "frame": 1, "points": [[x, 20.0], [30.5, 40.25]],
           "text": null, "color": "#ff8800", "stats": null})
}

async fn expect_error(p: &mut Participant, code: &str) -> Value {
    let e = next_of(p, "error").await;
    assert_eq!(e["code"], code, "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    e
}

fn ids(annotations: &Value) -> Vec<String> {
    annotations
        .as_array()
        .expect("annotations array")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect()
}

fn metric(text: &str, series: &str) -> f64 {
    common::metric(text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presenter_viewer_annotations_late_joiner_and_restart() {
    let dir = fresh_dir();
    let server = server_in(&dir).await;
    let mut host = join(&server, "board", "Dr Host").await;
    let mut ana = join(&server, "board", "Dr Ana").await;

    // The first host to say hello presents.
    let s = snapshot(&mut host).await;
    assert_eq!(s["presenter"], host.id.as_str(), "{s}");
    assert_eq!(s["seq"], 0);
    assert_eq!(s["annotations"], json!([]));
    assert_eq!(s["viewer"], Value::Null);
    let s = snapshot(&mut ana).await;
    assert_eq!(s["presenter"], host.id.as_str());

    // The presenter's viewport reaches the follower; a follower's is refused.
    let state = json!({"layout": "1x2", "active": 0, "viewports": [
        {"study": "1.2.826.0.1", "series": "1.2.826.0.1.2", "slice": 41, "ww": 400, "wc": 40,
         "zoom": 1.5, "pan": [3, -2], "invert": false}]});
    host.send_data(&json!({"type": "viewer", "state": state}));
    let v = next_of(&mut ana, "viewer").await;
    assert_eq!(v["state"], state);
    assert_eq!(v["by"], host.id.as_str());
    ana.send_data(&json!({"type": "viewer", "state": {"layout": "1x1"}}));
    expect_error(&mut ana, "not_presenter").await;
    ana.send_data(&json!({"type": "pointer", "viewport": 0, "x": 1, "y": 2}));
    expect_error(&mut ana, "not_presenter").await;

    // A participant's annotation: stored, numbered, echoed to both (ref to the sender only).
    ana.send_data(
        &json!({"type": "annotate", "op": "add", "ref": "ana-1", "annotation": arrow(10.0)}),
    );
    let mine = next_of(&mut ana, "annotation").await;
    assert_eq!(mine["seq"], 1, "{mine}");
    assert_eq!(mine["op"], "add");
    assert_eq!(mine["ref"], "ana-1");
    assert_eq!(mine["annotation"]["author"], ana.id.as_str());
    assert_eq!(mine["annotation"]["author_name"], "Dr Ana");
    assert_eq!(
        mine["annotation"]["points"],
        json!([[10.0, 20.0], [30.5, 40.25]])
    );
    let theirs = next_of(&mut host, "annotation").await;
    assert_eq!(theirs["seq"], 1);
    assert!(
        theirs.get("ref").is_none(),
        "the ref is the sender's: {theirs}"
    );
    assert_eq!(theirs["annotation"], mine["annotation"]);
    let ana_annotation = mine["annotation"]["id"].as_str().unwrap().to_owned();

    host.send_data(
        &json!({"type": "annotate", "op": "add", "ref": "h-1", "annotation": arrow(50.0)}),
    );
    let host_annotation = next_of(&mut host, "annotation").await;
    assert_eq!(host_annotation["seq"], 2);
    let host_annotation = host_annotation["annotation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(next_of(&mut ana, "annotation").await["seq"], 2);

    // Ana may not delete the host's annotation.
    ana.send_data(&json!({"type": "annotate", "op": "delete", "id": host_annotation}));
    expect_error(&mut ana, "not_allowed").await;

    // Hostile input: refused with an error, the channel stays usable, nothing changes.
    let mut huge = arrow(1.0);
    huge["kind"] = json!("freehand");
    huge["points"] = json!(vec![[1.5, 2.5]; 2500]);
    let mut nan = arrow(1.0);
    nan["points"] = json!([[null, 1.0], [2.0, 3.0]]);
    let mut far = arrow(1.0);
    far["points"] = json!([[1e300, 1.0], [2.0, 3.0]]);
    let mut fake_author = arrow(1.0);
    fake_author["color"] = json!("javascript:alert(1)");
    for (bad, code) in [
        (
            json!({"type": "annotate", "op": "add", "ref": "x1", "annotation": huge}),
            "bad_message",
        ),
        (
            json!({"type": "annotate", "op": "add", "ref": "x2", "annotation": nan}),
            "bad_message",
        ),
        (
            json!({"type": "annotate", "op": "add", "ref": "x3", "annotation": far}),
            "bad_message",
        ),
        (
            json!({"type": "annotate", "op": "add", "ref": "x4", "annotation": fake_author}),
            "bad_message",
        ),
        (
            json!({"type": "annotate", "op": "add", "ref": "x5", "annotation": "arrow"}),
            "bad_message",
        ),
        (
            json!({"type": "annotate", "op": "explode", "ref": "x6"}),
            "bad_message",
        ),
        (
            json!({"type": "annotate", "op": "update", "ref": "x7", "id": ana_annotation,
                "annotation": {"text": "y".repeat(2001)}}),
            "too_big",
        ),
        (
            json!({"type": "annotate", "op": "delete", "ref": "x8", "id": "a-999"}),
            "not_found",
        ),
        (
            json!({"type": "hello", "since": "yesterday", "ref": "x9"}),
            "bad_message",
        ),
        (
            json!({"type": "presenter", "action": "take", "ref": "x10"}),
            "not_allowed",
        ),
    ] {
        ana.send_data(&bad);
        let e = expect_error(&mut ana, code).await;
        assert_eq!(
            e["ref"], bad["ref"],
            "the refusal names what it refuses: {e}"
        );
    }
    // A message of another type is still relayed as before.
    ana.send_data(&json!({"type": "chat", "text": "see the node at slice 41"}));
    let relayed = host
        .wait_for(
            WAIT,
            |e| matches!(e, Event::Data(v) if v.get("from").is_some()),
        )
        .await;
    assert_eq!(
        relayed,
        Some(Event::Data(
            json!({"from": ana.id, "msg": {"type": "chat", "text": "see the node at slice 41"}})
        ))
    );

    // A late joiner gets everything in one snapshot: nothing above changed the state.
    let mut cleo = join(&server, "board", "Dr Cleo").await;
    let s = snapshot(&mut cleo).await;
    assert_eq!(s["seq"], 2, "{s}");
    assert_eq!(s["presenter"], host.id.as_str());
    assert_eq!(s["viewer"], state);
    assert_eq!(
        ids(&s["annotations"]),
        [ana_annotation.clone(), host_annotation.clone()]
    );

    // Ana edits hers (seq 3); the host deletes ana's? No: the host deletes its own (seq 4).
    ana.send_data(
        &json!({"type": "annotate", "op": "update", "id": ana_annotation,
                          "annotation": {"text": "spiculated margin", "color": "#00FF00"}}),
    );
    let up = next_of(&mut cleo, "annotation").await;
    assert_eq!(up["seq"], 3);
    assert_eq!(up["annotation"]["text"], "spiculated margin");
    assert_eq!(up["annotation"]["color"], "#00ff00");
    host.send_data(&json!({"type": "annotate", "op": "delete", "id": host_annotation}));
    let del = next_of(&mut cleo, "annotation").await;
    assert_eq!(del["seq"], 4);
    assert_eq!(del["op"], "delete");
    assert_eq!(del["id"], host_annotation.as_str());

    // The presenter leaves: there is no other host, so nobody presents, and all are told.
    host.leave().await;
    let p = next_of(&mut ana, "presenter").await;
    assert_eq!(p["presenter"], Value::Null, "{p}");
    assert_eq!(
        next_of(&mut cleo, "presenter").await["presenter"],
        Value::Null
    );

    let metrics = common::http_get(server.http_addr, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            r#"consilium_annotation_ops_total{op="add",outcome="stored"}"#
        ),
        2.0
    );
    assert!(
        metric(
            &metrics,
            r#"consilium_data_channel_messages_by_type_total{type="annotate"}"#
        ) >= 12.0
    );

    // Restart on the same data directory.
    ana.leave().await;
    cleo.leave().await;
    tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("server shuts down in time");
    let server = server_in(&dir).await;
    let mut dan = join(&server, "board", "Dr Dan").await;
    let s = snapshot(&mut dan).await;
    assert_eq!(s["seq"], 4, "the sequence survives: {s}");
    assert_eq!(
        ids(&s["annotations"]),
        std::slice::from_ref(&ana_annotation)
    );
    assert_eq!(s["annotations"][0]["text"], "spiculated margin");
    assert_eq!(s["viewer"], state, "the last viewport survives");
    assert_eq!(
        s["presenter"],
        dan.id.as_str(),
        "the new first host presents"
    );
    dan.send_data(
        &json!({"type": "annotate", "op": "add", "ref": "d-1", "annotation": arrow(70.0)}),
    );
    let added = next_of(&mut dan, "annotation").await;
    assert_eq!(added["seq"], 5, "seq continues after the restart: {added}");
    assert_eq!(added["annotation"]["id"], "a-5");

    // A client that saw seq 1 gets only what came after, from the durable log.
    let mut eve = join(&server, "board", "Dr Eve").await;
    let parts = hello(&mut eve, json!(1)).await;
    assert_eq!(parts.len(), 1);
    let c = &parts[0];
    assert_eq!(c["type"], "changes", "{c}");
    assert_eq!(c["from_seq"], 1);
    assert_eq!(c["seq"], 5);
    let seqs: Vec<u64> = c["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "annotation");
            assert!(e.get("ref").is_none(), "refs are never stored: {e}");
            e["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seqs, [2, 3, 4, 5]);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_refused_and_changes_nothing() {
    let dir = fresh_dir();
    let server = server_in(&dir).await;
    let mut host = join(&server, "tb", "Dr Host").await;
    let mut ana = join(&server, "tb", "Dr Ana").await;
    snapshot(&mut host).await;
    snapshot(&mut ana).await;

    // The disk "fails": every write to the log aborts.
    let db = rusqlite::Connection::open(dir.join("collaboration.sqlite3")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER fail BEFORE INSERT ON annotation_log
         BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    )
    .unwrap();
    host.send_data(
        &json!({"type": "annotate", "op": "add", "ref": "h-1", "annotation": arrow(1.0)}),
    );
    let e = expect_error(&mut host, "storage_failed").await;
    assert_eq!(e["ref"], "h-1");

    // The disk recovers: the next change is seq 1, and Ana never heard of the failed one.
    db.execute_batch("DROP TRIGGER fail;").unwrap();
    host.send_data(
        &json!({"type": "annotate", "op": "add", "ref": "h-2", "annotation": arrow(2.0)}),
    );
    let ok = next_of(&mut host, "annotation").await;
    assert_eq!(ok["seq"], 1, "{ok}");
    assert_eq!(ok["ref"], "h-2");
    let seen = next_of(&mut ana, "annotation").await;
    assert_eq!(seen["seq"], 1);
    assert_eq!(seen["annotation"]["points"][0][0], 2.0);

    let metrics = common::http_get(server.http_addr, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            r#"consilium_annotation_ops_total{op="add",outcome="storage_failed"}"#
        ),
        1.0
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presenter_hand_over_and_a_snapshot_in_parts() {
    let dir = fresh_dir();
    let server = server_in(&dir).await;
    let mut host = join(&server, "mdt", "Dr Host").await;
    let mut ana = join(&server, "mdt", "Dr Ana").await;
    snapshot(&mut host).await;
    snapshot(&mut ana).await;

    // Ana asks, everyone sees it; the host grants; Ana now drives the viewer.
    ana.send_data(&json!({"type": "presenter", "action": "request"}));
    let p = next_of(&mut host, "presenter").await;
    assert_eq!(p["requests"], json!([ana.id]), "{p}");
    assert_eq!(
        next_of(&mut ana, "presenter").await["requests"],
        json!([ana.id])
    );
    ana.send_data(&json!({"type": "presenter", "action": "grant", "to": host.id}));
    expect_error(&mut ana, "not_allowed").await;
    host.send_data(&json!({"type": "presenter", "action": "grant", "to": ana.id}));
    let p = next_of(&mut ana, "presenter").await;
    assert_eq!(
        p,
        json!({"type": "presenter", "presenter": ana.id, "requests": []})
    );
    assert_eq!(next_of(&mut host, "presenter").await, p);
    ana.send_data(&json!({"type": "pointer", "viewport": 1, "x": 100.123, "y": 5}));
    let ptr = next_of(&mut host, "pointer").await;
    assert_eq!(
        ptr,
        json!({"type": "pointer", "viewport": 1, "x": 100.12, "y": 5.0, "by": ana.id})
    );
    host.send_data(&json!({"type": "viewer", "state": {"layout": "1x1"}}));
    expect_error(&mut host, "not_presenter").await;
    // The host takes it back.
    host.send_data(&json!({"type": "presenter", "action": "take"}));
    assert_eq!(
        next_of(&mut ana, "presenter").await["presenter"],
        host.id.as_str()
    );

    // Big outlines: a late joiner's snapshot does not fit one data-channel message.
    let mut outline = arrow(0.0);
    outline["kind"] = json!("freehand");
    outline["points"] = json!(vec![[12345.67, 23456.78]; 1800]);
    for i in 0..4 {
        ana.send_data(&json!({"type": "annotate", "op": "add", "ref": format!("o{i}"), "annotation": outline}));
        assert_eq!(next_of(&mut ana, "annotation").await["seq"], i + 1);
    }
    let mut cleo = join(&server, "mdt", "Dr Cleo").await;
    let parts = hello(&mut cleo, Value::Null).await;
    assert!(parts.len() >= 2, "{} parts", parts.len());
    let mut all = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part["type"], "snapshot");
        assert_eq!(part["part"], i);
        assert_eq!(part["seq"], 4);
        assert_eq!(part["presenter"], host.id.as_str());
        all.extend(ids(&part["annotations"]));
    }
    assert_eq!(all, ["a-1", "a-2", "a-3", "a-4"]);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Authorship follows the person (the token's `sub`), not the participant id of one join:
/// after leaving, a server restart and a new link under another display name, a specialist
/// still edits and deletes what they drew; someone else's token for the same name does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authors_keep_their_annotations_across_joins_and_restarts() {
    use consilium_signaling::{Role, TokenAuthority};
    const SECRET: &str = "collab-test-secret";
    let auth = TokenAuthority::new(SECRET.as_bytes());
    let ttl = Duration::from_secs(600);
    let dir = fresh_dir();
    let start = |dir: PathBuf| async move {
        consilium::start(Config {
            data_dir: dir,
            jwt_secret: Some(SECRET.into()),
            ..Config::for_tests()
        })
        .await
        .expect("server starts")
    };
    let join_as = |server: &Server, name: &str, token: String| {
        let mut config =
            ParticipantConfig::new(&format!("ws://{}/ws", server.http_addr), "board", name);
        config.publish_audio = false;
        config.publish_video = false;
        config.token = Some(token);
        let name = name.to_owned();
        async move {
            Participant::join(config)
                .await
                .unwrap_or_else(|e| panic!("{name} joins: {e}"))
        }
    };

    let server = start(dir.clone()).await;
    let token = auth.issue_for("board", "Dr Ana", Role::Participant, Some("u-ana"), ttl);
    let mut ana = join_as(&server, "Dr Ana", token).await;
    let s = snapshot(&mut ana).await;
    assert_eq!(s["author_key"], "sub:u-ana", "{s}");
    ana.send_data(&json!({"type": "annotate", "op": "add", "ref": "k1", "annotation": arrow(5.0)}));
    let added = next_of(&mut ana, "annotation").await;
    assert_eq!(added["annotation"]["author_key"], "sub:u-ana", "{added}");
    let id = added["id"].as_str().expect("id").to_owned();
    ana.leave().await;
    server.shutdown().await;

    let server = start(dir.clone()).await;
    let token = auth.issue_for(
        "board",
        "Dr Ana Smith",
        Role::Participant,
        Some("u-ana"),
        ttl,
    );
    let mut ana = join_as(&server, "Dr Ana Smith", token).await;
    let s = snapshot(&mut ana).await;
    assert_eq!(s["author_key"], "sub:u-ana");
    assert_eq!(ids(&s["annotations"]), vec![id.clone()]);
    ana.send_data(
        &json!({"type": "annotate", "op": "update", "id": id, "ref": "k2",
                          "annotation": {"points": [[6.0, 7.0], [8.0, 9.0]]}}),
    );
    let updated = next_of(&mut ana, "annotation").await;
    assert_eq!(updated["op"], "update", "{updated}");
    assert_eq!(
        updated["ref"], "k2",
        "an update's echo carries its ref: {updated}"
    );
    assert_eq!(
        updated["annotation"]["points"],
        json!([[6.0, 7.0], [8.0, 9.0]])
    );

    // A token for the same display name that does not name u-ana is someone else.
    let token = auth.issue("board", "Dr Ana Smith", Role::Participant, ttl);
    let mut other = join_as(&server, "Dr Ana Smith", token).await;
    let s = snapshot(&mut other).await;
    assert_eq!(s["author_key"], "signed:participant:Dr Ana Smith");
    other.send_data(&json!({"type": "annotate", "op": "delete", "id": id, "ref": "k3"}));
    let e = expect_error(&mut other, "not_allowed").await;
    assert_eq!(e["ref"], "k3", "{e}");

    ana.send_data(&json!({"type": "annotate", "op": "delete", "id": id, "ref": "k4"}));
    let deleted = next_of(&mut ana, "annotation").await;
    assert_eq!(deleted["op"], "delete", "{deleted}");
    assert_eq!(deleted["ref"], "k4");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
