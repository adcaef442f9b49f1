//! Which peer a datagram on the shared media port belongs to.
//!
//! All peers share one UDP socket, so the SFU demultiplexes itself: a STUN binding request
//! names the server's ICE username fragment (the part of USERNAME before ':'), which is
//! unique per peer; its source address is then bound to that peer, and every later
//! datagram (DTLS, SRTP, SRTCP, more STUN) is routed by source address.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const STUN_ATTR_USERNAME: u16 = 0x0006;

/// RFC 7983: the first byte 0–3 is STUN.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] < 4 && datagram[4..8] == STUN_MAGIC_COOKIE
}

/// The server's ufrag from a STUN request's USERNAME (`server:client`), if present.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) {
        return None;
    }
    let body_len = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let body = datagram.get(20..20 + body_len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == STUN_ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        // Attributes are padded to four bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// Routing tables from ufrag and from remote address to a peer key.
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_addr: HashMap<SocketAddr, K>,
}

impl<K: Copy + Eq + Hash> Default for Demux<K> {
    fn default() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    pub fn add_peer(&mut self, ufrag: String, key: K) {
        self.by_ufrag.insert(ufrag, key);
    }

    /// Forgets a peer's ufrag and every address bound to it.
    pub fn remove_peer(&mut self, key: K) {
        self.by_ufrag.retain(|_, k| *k != key);
        self.by_addr.retain(|_, k| *k != key);
    }

    /// The peer a datagram from `from` belongs to. A STUN request naming a known ufrag binds
    /// (or rebinds, after a network change) `from` to that peer.
    pub fn route(&mut self, from: SocketAddr, datagram: &[u8]) -> Option<K> {
        if let Some(ufrag) = stun_local_ufrag(datagram)
            && let Some(&key) = self.by_ufrag.get(ufrag)
        {
            if self.by_addr.insert(from, key).is_some_and(|old| old != key) {
                // A network change, or a port reused while the old peer is still here.
                tracing::debug!(%from, "remote address moved to another peer");
            }
            return Some(key);
        }
        self.by_addr.get(&from).copied()
    }

    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // An attribute before USERNAME, to exercise the walk and the padding.
        attrs.extend_from_slice(&[0x80, 0x22, 0x00, 0x03, b'a', b'b', b'c', 0]);
        attrs.extend_from_slice(&STUN_ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn parses_username() {
        assert_eq!(stun_local_ufrag(&binding_request("srv1:cli")), Some("srv1"));
        assert_eq!(stun_local_ufrag(&[0x80, 0, 0, 0]), None);
        // Truncated and lying lengths never panic.
        let m = binding_request("srv1:cli");
        for n in 0..m.len() {
            let _ = stun_local_ufrag(&m[..n]);
        }
        let mut lying = m.clone();
        lying[22] = 0xff;
        let _ = stun_local_ufrag(&lying);
    }

    #[test]
    fn routes_by_ufrag_then_address() {
        let mut d = Demux::default();
        d.add_peer("aaaa".into(), 1u32);
        d.add_peer("bbbb".into(), 2u32);
        let x: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let y: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(d.route(x, &[0x16, 0xfe, 0xfd]), None, "unknown address");
        assert_eq!(d.route(x, &binding_request("bbbb:c")), Some(2));
        assert_eq!(d.route(x, &[0x16, 0xfe, 0xfd]), Some(2));
        assert_eq!(d.route(y, &binding_request("zzzz:c")), None);
        d.remove_peer(2);
        assert_eq!(d.route(x, &[0x16]), None);
        assert_eq!(d.addresses(), 0);
    }
}
