//! A lost DTLS flight does not strand a join. `rtc-dtls` 0.21.1 cancelled its retransmission
//! timer whenever a handshake packet arrived, also one that completed nothing. When the peer's
//! own retransmission arrived before that timer fired (both repeat every second), neither side
//! ever sent its flight again, and about 1 % of joins on a link with 1 % loss never connected
//! (vendor/README.md, docs/benchmarks.md). A relay between the peers and the SFU loses exactly
//! the datagrams, and delays exactly the ones, that set up each of the two deadlocks.

mod common;

use common::WAIT;
use consilium::Config;
use loadtest::{Event, Participant, ParticipantConfig};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// What happens to the n-th DTLS datagram (1-based) of each client in one direction.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Drop,
    Delay(Duration),
}

#[derive(Clone, Debug, Default)]
struct Rules {
    up: HashMap<usize, Fate>,
    down: HashMap<usize, Fate>,
}

/// RFC 7983: DTLS records start with a content type in 20..=63.
fn is_dtls(d: &[u8]) -> bool {
    d.first().is_some_and(|b| (20..=63).contains(b))
}

/// Sends `data` now, later, or never, by the `n`-th DTLS datagram's rule.
fn pass(socket: Arc<UdpSocket>, to: SocketAddr, data: Vec<u8>, fate: Option<Fate>) {
    match fate {
        Some(Fate::Drop) => {}
        Some(Fate::Delay(d)) => {
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let _ = socket.send_to(&data, to).await;
            });
        }
        None => {
            tokio::spawn(async move {
                let _ = socket.send_to(&data, to).await;
            });
        }
    }
}

/// The SFU's datagrams to one client, with the downstream rules.
async fn downstream(
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    rules: HashMap<usize, Fate>,
) {
    let mut buf = vec![0u8; 65536];
    let mut dtls = 0;
    while let Ok((n, _)) = upstream.recv_from(&mut buf).await {
        let fate = if is_dtls(&buf[..n]) {
            dtls += 1;
            rules.get(&dtls).copied()
        } else {
            None
        };
        pass(listen.clone(), client, buf[..n].to_vec(), fate);
    }
}

/// A UDP relay on 127.0.0.1 (the SFU's advertised address) to the SFU on 127.0.0.2, one
/// upstream socket per client, applying `rules` to every client's DTLS datagrams.
async fn relay(rules: Rules) -> (u16, tokio::task::JoinHandle<()>) {
    let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = listen.local_addr().unwrap().port();
    let server: SocketAddr = (Ipv4Addr::new(127, 0, 0, 2), port).into();
    let task = tokio::spawn(async move {
        // Per client: its upstream socket and how many DTLS datagrams it has sent.
        let mut clients: HashMap<SocketAddr, (Arc<UdpSocket>, usize)> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = listen.recv_from(&mut buf).await else {
                continue;
            };
            if let Entry::Vacant(slot) = clients.entry(from) {
                let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                tokio::spawn(downstream(
                    upstream.clone(),
                    listen.clone(),
                    from,
                    rules.down.clone(),
                ));
                slot.insert((upstream, 0));
            }
            let (upstream, dtls) = clients.get_mut(&from).expect("inserted above");
            let fate = if is_dtls(&buf[..n]) {
                *dtls += 1;
                rules.up.get(dtls).copied()
            } else {
                None
            };
            pass(upstream.clone(), server, buf[..n].to_vec(), fate);
        }
    });
    (port, task)
}

/// Two peers join one room through the relay; both must finish DTLS. The handshake's own
/// retransmissions take a few seconds, so the wait is longer than `WAIT`.
async fn both_connect(rules: Rules, case: &str) {
    let (port, relay_task) = relay(rules).await;
    let server = consilium::start(Config {
        media_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port),
        advertised_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ..Config::for_tests()
    })
    .await
    .expect("server starts");
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
    relay_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_lost_flight_is_sent_again_although_the_client_repeats_its_hello() {
    // The SFU's first flight is lost. The client's ClientHello was slow to arrive, so the
    // client's 1 s timer repeats it before the SFU's timer would resend: the repeat used
    // to cancel the SFU's timer.
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
