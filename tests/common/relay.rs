//! A UDP relay between synthetic participants and the SFU that decides, datagram by datagram,
//! what reaches the other side: for tests that have to lose, delay or just watch one
//! particular packet of a join (a DTLS flight, an ICE check) on a real socket.
//!
//! The SFU binds 127.0.0.2 and advertises 127.0.0.1, where the relay listens on the same
//! port, so every media datagram of every client crosses the relay. Each client gets its own
//! upstream socket, as behind a NAT.

use consilium::{Config, Server};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// Which way a datagram crosses the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client to SFU.
    Up,
    /// SFU to client.
    Down,
}

/// What the relay does with one datagram.
#[derive(Clone, Copy, Debug)]
pub enum Fate {
    Pass,
    Drop,
    Delay(Duration),
}

/// Decides each datagram's fate, given its direction, its client's address and its bytes.
pub type Policy = Arc<dyn Fn(Dir, SocketAddr, &[u8]) -> Fate + Send + Sync>;

/// A running relay; the task stops when this is dropped.
pub struct Relay {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pass(socket: Arc<UdpSocket>, to: SocketAddr, data: Vec<u8>, fate: Fate) {
    let delay = match fate {
        Fate::Drop => return,
        Fate::Pass => Duration::ZERO,
        Fate::Delay(d) => d,
    };
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = socket.send_to(&data, to).await;
    });
}

/// The SFU's datagrams to one client.
async fn downstream(
    upstream: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    policy: Policy,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, _)) = upstream.recv_from(&mut buf).await {
        let fate = policy(Dir::Down, client, &buf[..n]);
        pass(listen.clone(), client, buf[..n].to_vec(), fate);
    }
}

/// Starts a relay on 127.0.0.1 towards the SFU at 127.0.0.2 on the same (free) port.
pub async fn start(policy: Policy) -> Relay {
    let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let port = listen.local_addr().unwrap().port();
    let server: SocketAddr = (Ipv4Addr::new(127, 0, 0, 2), port).into();
    let task = tokio::spawn(async move {
        let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = listen.recv_from(&mut buf).await else {
                continue;
            };
            let upstream = match clients.entry(from) {
                Entry::Occupied(slot) => slot.get().clone(),
                Entry::Vacant(slot) => {
                    let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    tokio::spawn(downstream(
                        upstream.clone(),
                        listen.clone(),
                        from,
                        policy.clone(),
                    ));
                    slot.insert(upstream).clone()
                }
            };
            let fate = policy(Dir::Up, from, &buf[..n]);
            pass(upstream, server, buf[..n].to_vec(), fate);
        }
    });
    Relay { port, task }
}

/// Starts a whole server whose media path runs through `relay`.
pub async fn server_behind(relay: &Relay) -> Server {
    consilium::start(Config {
        media_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), relay.port),
        advertised_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ..Config::for_tests()
    })
    .await
    .expect("server starts")
}

/// RFC 7983: DTLS records start with a content type in 20..=63.
pub fn is_dtls(d: &[u8]) -> bool {
    d.first().is_some_and(|b| (20..=63).contains(b))
}

/// A STUN message's type, transaction ID and attribute types (RFC 8489 §5, §14), or `None`
/// for anything else.
pub fn stun(d: &[u8]) -> Option<(u16, [u8; 12], Vec<u16>)> {
    if d.len() < 20 || d[0] > 3 || d[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let typ = u16::from_be_bytes([d[0], d[1]]);
    let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let txid: [u8; 12] = d[8..20].try_into().ok()?;
    let body = d.get(20..20 + len)?;
    let mut attrs = Vec::new();
    let mut at = 0;
    while at + 4 <= body.len() {
        attrs.push(u16::from_be_bytes([body[at], body[at + 1]]));
        let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        at += 4 + alen.div_ceil(4) * 4;
    }
    Some((typ, txid, attrs))
}
