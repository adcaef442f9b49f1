//! ICE takes one round trip on a join (patched `rtc-ice`, vendor/README.md). The synthetic
//! participants nominate with every check (aggressive nomination), and the SFU's ICE-lite
//! agent takes a nominating check at once and answers it. Before, the client's first check
//! carried no nomination, and the SFU left a nominating check unanswered until a check of its
//! own had come back: ICE took two round trips or more, on every join. A relay watches the
//! STUN messages of a real join.

mod common;

use common::WAIT;
use common::relay::{self, Dir, Fate};
use hmac::{Hmac, Mac};
use loadtest::{Event, Participant, ParticipantConfig};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;

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

/// A STUN Binding request as a controlling ICE agent sends it (RFC 8445 §7.1.1, RFC 8489):
/// USERNAME, PRIORITY, ICE-CONTROLLING, optionally USE-CANDIDATE, then MESSAGE-INTEGRITY
/// keyed with the receiver's password and FINGERPRINT.
fn binding_request(txid: [u8; 12], username: &str, pwd: &str, nominate: bool) -> Vec<u8> {
    fn attr(out: &mut Vec<u8>, typ: u16, value: &[u8]) {
        out.extend_from_slice(&typ.to_be_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    fn set_length(msg: &mut [u8], len: usize) {
        msg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    }
    let mut msg = Vec::new();
    msg.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    msg.extend_from_slice(&[0, 0, 0x21, 0x12, 0xa4, 0x42]);
    msg.extend_from_slice(&txid);
    attr(&mut msg, 0x0006, username.as_bytes());
    attr(&mut msg, 0x0024, &1_845_501_695u32.to_be_bytes());
    attr(&mut msg, 0x802a, &0x0123_4567_89ab_cdefu64.to_be_bytes());
    if nominate {
        attr(&mut msg, USE_CANDIDATE, &[]);
    }
    // The length counts each of the two trailing attributes as the hash is taken over the
    // message before it.
    let len = msg.len() - 20 + 24;
    set_length(&mut msg, len);
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(pwd.as_bytes()).expect("any key length");
    mac.update(&msg);
    let integrity = mac.finalize().into_bytes();
    attr(&mut msg, 0x0008, &integrity);
    let len = msg.len() - 20 + 8;
    set_length(&mut msg, len);
    let crc = crc32fast::hash(&msg) ^ 0x5354_554e;
    attr(&mut msg, 0x8028, &crc.to_be_bytes());
    msg
}

/// Patched `rtc-ice`, change 3 (vendor/README.md): a browser's first check does not
/// nominate (Chromium nominates on a later one, ≈ 50 ms later on loopback and seconds later
/// when its first check had to be repeated), but it starts DTLS as soon as that first check
/// is answered. The SFU's lite agent now selects the pair on that first check, so ICE is
/// connected and the ClientHello is taken at once. Unpatched, ICE stayed unconnected until a
/// nominating check came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sfu_selects_the_pair_on_a_first_check_that_does_not_nominate() {
    let server = common::start_open().await;
    let mut ws = common::connect(&server).await;
    let offer = common::offer();
    common::send_json(&mut ws, &common::join_msg("lite", "A", None, &offer)).await;
    let joined = common::reply(&mut ws).await;
    common::assert_joined(&joined, "lite");
    let answer = joined["answer"].as_str().expect("an answer").to_owned();
    let attr = |sdp: &str, key: &str| {
        sdp.lines()
            .find_map(|l| l.trim_end().strip_prefix(key).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {key} in {sdp}"))
    };
    let username = format!(
        "{}:{}",
        attr(&answer, "a=ice-ufrag:"),
        attr(&offer, "a=ice-ufrag:")
    );
    let pwd = attr(&answer, "a=ice-pwd:");
    // a=candidate:<foundation> 1 udp <priority> <ip> <port> typ host
    let candidate = attr(&answer, "a=candidate:");
    let words: Vec<&str> = candidate.split(' ').collect();
    let sfu: SocketAddr = format!("{}:{}", words[4], words[5])
        .parse()
        .expect("a host candidate");

    let ice_connected = |metrics: &str| {
        common::metric(
            metrics,
            r#"consilium_connect_phase_seconds_count{phase="ice_connected",side="server"}"#,
        )
        .unwrap_or(0.0)
    };
    let metrics = common::http_get(server.http_addr, "/metrics").await.1;
    assert_eq!(ice_connected(&metrics), 0.0, "no ICE before a check");

    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let txid = [7u8; 12];
    socket
        .send_to(&binding_request(txid, &username, &pwd, false), sfu)
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let answered = tokio::time::timeout(WAIT, async {
        loop {
            let (n, _) = socket.recv_from(&mut buf).await.unwrap();
            if let Some((typ, id, _)) = relay::stun(&buf[..n])
                && typ == BINDING_SUCCESS
                && id == txid
            {
                return;
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "the check was not answered");

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = common::http_get(server.http_addr, "/metrics").await.1;
        if ice_connected(&metrics) >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the SFU's ICE did not connect on a check without USE-CANDIDATE"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    common::stop(server).await;
}
