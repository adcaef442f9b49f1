//! ICE takes one round trip on a join (patched `rtc-ice`, vendor/README.md). The synthetic
//! participants nominate with every check (aggressive nomination), and the SFU's ICE-lite
//! agent takes a nominating check at once and answers it. Before, the client's first check
//! carried no nomination, and the SFU left a nominating check unanswered until a check of its
//! own had come back: ICE took two round trips or more, on every join. A relay watches the
//! STUN messages of a real join.

mod common;

use common::WAIT;
use common::relay::{self, Dir, Fate};
use loadtest::{Event, Participant, ParticipantConfig};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const USE_CANDIDATE: u16 = 0x0025;

/// One datagram the relay saw, in the order it saw them.
#[derive(Clone, Debug)]
enum Seen {
    Stun {
        dir: Dir,
        typ: u16,
        txid: [u8; 12],
        nominates: bool,
    },
    Dtls(Dir),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_nominates_with_its_first_check_and_the_sfu_answers_it_at_once() {
    let seen: Arc<Mutex<Vec<(SocketAddr, Seen)>>> = Arc::default();
    let log = seen.clone();
    let relay = relay::start(Arc::new(move |dir, client, data| {
        let entry = if let Some((typ, txid, attrs)) = relay::stun(data) {
            Some(Seen::Stun {
                dir,
                typ,
                txid,
                nominates: attrs.contains(&USE_CANDIDATE),
            })
        } else if relay::is_dtls(data) {
            Some(Seen::Dtls(dir))
        } else {
            None
        };
        if let Some(entry) = entry {
            log.lock().unwrap().push((client, entry));
        }
        Fate::Pass
    }))
    .await;
    let server = relay::server_behind(&relay).await;
    let url = format!("ws://{}/ws", server.http_addr);
    let mut p = Participant::join(ParticipantConfig::new(&url, "ice", "A"))
        .await
        .unwrap();
    assert!(
        p.wait_for(WAIT, |e| *e == Event::MediaConnected)
            .await
            .is_some(),
        "media never connected"
    );
    p.leave().await;
    common::stop(server).await;

    let seen = seen.lock().unwrap().clone();
    let client = seen.first().expect("the relay saw the join").0;
    let seen: Vec<Seen> = seen
        .into_iter()
        .filter(|(c, _)| *c == client)
        .map(|(_, s)| s)
        .collect();
    let requests: Vec<([u8; 12], bool)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Stun {
                dir: Dir::Up,
                typ: BINDING_REQUEST,
                txid,
                nominates,
            } => Some((*txid, *nominates)),
            _ => None,
        })
        .collect();
    assert!(
        !requests.is_empty(),
        "no ICE check from the client: {seen:?}"
    );
    assert!(
        requests.iter().all(|(_, nominates)| *nominates),
        "every check of the client nominates (USE-CANDIDATE): {seen:?}"
    );
    // The SFU's first word on the media path is the answer to a nominating check, not a check
    // of its own that the client would have to answer first.
    let first_down = seen
        .iter()
        .find(|s| matches!(s, Seen::Stun { dir: Dir::Down, .. } | Seen::Dtls(Dir::Down)))
        .expect("the SFU sent something");
    match first_down {
        Seen::Stun {
            typ: BINDING_SUCCESS,
            txid,
            ..
        } => assert!(
            requests.iter().any(|(t, _)| t == txid),
            "the SFU's first answer is to one of the client's checks: {seen:?}"
        ),
        other => panic!("the SFU's first datagram is {other:?}, not an answer: {seen:?}"),
    }
    // DTLS starts only after that answer: ICE took that one exchange.
    let first_answer = seen
        .iter()
        .position(|s| {
            matches!(
                s,
                Seen::Stun {
                    dir: Dir::Down,
                    typ: BINDING_SUCCESS,
                    ..
                }
            )
        })
        .unwrap();
    let first_hello = seen
        .iter()
        .position(|s| matches!(s, Seen::Dtls(Dir::Up)))
        .expect("the client started DTLS");
    assert!(first_answer < first_hello, "{seen:?}");
}
