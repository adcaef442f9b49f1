//! A lost DTLS flight does not strand a join. `rtc-dtls` 0.21.1 cancelled its retransmission
//! timer whenever a handshake packet arrived, also one that completed nothing. When the peer's
//! own retransmission arrived before that timer fired (both repeat every second), neither side
//! ever sent its flight again, and about 1 % of joins on a link with 1 % loss never connected
//! (vendor/README.md, docs/benchmarks.md). A relay between the peers and the SFU loses exactly
//! the datagrams, and delays exactly the ones, that set up each of the two deadlocks. A third
//! test checks that an unanswered flight is repeated with a doubling wait (vendor/README.md,
//! change 3).

mod common;

use common::WAIT;
use common::relay::{self, Dir, Fate};
use loadtest::{Event, Participant, ParticipantConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The fate of each client's n-th DTLS datagram (1-based) in each direction.
#[derive(Clone, Debug, Default)]
struct Rules {
    up: HashMap<usize, Fate>,
    down: HashMap<usize, Fate>,
}

/// A relay policy applying `rules` to every client's DTLS datagrams, counted per client.
fn policy(rules: Rules) -> relay::Policy {
    let counts: Mutex<HashMap<(Dir, SocketAddr), usize>> = Mutex::default();
    Arc::new(move |dir, client, data| {
        if !relay::is_dtls(data) {
            return Fate::Pass;
        }
        let mut counts = counts.lock().unwrap();
        let n = counts.entry((dir, client)).or_default();
        *n += 1;
        let table = if dir == Dir::Up {
            &rules.up
        } else {
            &rules.down
        };
        table.get(n).copied().unwrap_or(Fate::Pass)
    })
}

/// Two peers join one room through the relay; both must finish DTLS. The handshake's own
/// retransmissions take a few seconds, so the wait is longer than `WAIT`.
async fn both_connect(rules: Rules, case: &str) {
    let relay = relay::start(policy(rules)).await;
    let server = relay::server_behind(&relay).await;
    let url = format!("ws://{}/ws", server.http_addr);
    let mut a = Participant::join(ParticipantConfig::new(&url, "lossy", "A"))
        .await
        .unwrap();
    let mut b = Participant::join(ParticipantConfig::new(&url, "lossy", "B"))
        .await
        .unwrap();
    for (p, name) in [(&mut a, "A"), (&mut b, "B")] {
        let connected = p
            .wait_for(WAIT + Duration::from_secs(5), |e| {
                *e == Event::MediaConnected
            })
            .await;
        assert!(
            connected.is_some(),
            "{case}: {name}'s DTLS handshake never completed"
        );
    }
    a.leave().await;
    b.leave().await;
    common::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_lost_flight_is_sent_again_although_the_client_repeats_its_hello() {
    // The SFU's first flight is lost. The client's ClientHello was slow to arrive, so the
    // client's timer repeats it before the SFU's timer would resend: the repeat used to
    // cancel the SFU's timer.
    let rules = Rules {
        up: HashMap::from([(1, Fate::Delay(Duration::from_millis(300)))]),
        down: HashMap::from([(1, Fate::Drop)]),
    };
    both_connect(rules, "server flight lost").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_lost_flight_is_sent_again_although_the_server_repeats_its_own() {
    // The client's second flight (certificate, key exchange, Finished) is lost. The SFU's
    // flight reached the client late, so the SFU's timer repeats that flight before the
    // client's timer would resend: the repeat used to cancel the client's timer.
    let rules = Rules {
        up: HashMap::from([(2, Fate::Drop)]),
        down: HashMap::from([(1, Fate::Delay(Duration::from_millis(300)))]),
    };
    both_connect(rules, "client flight lost").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_flight_is_repeated_with_a_doubling_wait() {
    // Every DTLS datagram from the SFU is lost, so the client's ClientHello is never answered:
    // it repeats it, and each wait is about twice the one before (RFC 6347 §4.2.4.1; the
    // published crate repeated every second). Gaps are compared with each other, not with a
    // clock reading, so a slow machine does not fail this.
    let hellos: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let seen = hellos.clone();
    let relay = relay::start(Arc::new(move |dir, _client, data| {
        if !relay::is_dtls(data) {
            return Fate::Pass;
        }
        match dir {
            Dir::Down => Fate::Drop,
            Dir::Up => {
                // A handshake record (22) carrying a ClientHello (1).
                if data.first() == Some(&22) && data.get(13) == Some(&1) {
                    seen.lock().unwrap().push(std::time::Instant::now());
                }
                Fate::Pass
            }
        }
    }))
    .await;
    let server = relay::server_behind(&relay).await;
    let url = format!("ws://{}/ws", server.http_addr);
    let p = Participant::join(ParticipantConfig::new(&url, "silent", "A"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while hellos.lock().unwrap().len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ClientHello was not repeated 3 times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let times = hellos.lock().unwrap().clone();
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    for pair in gaps.windows(2).take(2) {
        assert!(
            pair[1] > 1.5 * pair[0] && pair[1] < 3.0 * pair[0],
            "each wait about doubles the last: {gaps:?}"
        );
    }
    p.leave().await;
    common::stop(server).await;
}
