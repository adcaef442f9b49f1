//! Batched UDP sends: the datagrams of one engine flush, to many destinations, in as few
//! system calls as possible.
//!
//! Why this exists: one incoming RTP packet fans out to every subscriber of its track (13 in
//! a 14-person tumour board), and each copy had its own `sendto(2)`: about a million system
//! calls in a 35-s board, `sendto` and the kernel work beneath it a third of the server's
//! CPU (docs/benchmarks.md, "Capacity"). On Linux [`SendBatch::send`] hands the whole batch
//! to `sendmmsg(2)`, one system call for up to [`MAX_PER_CALL`] datagrams, each with its own
//! destination (UDP GSO would need one destination per call). That removes the per-datagram
//! system call (−82 % system calls in that board), not the kernel's per-datagram UDP work.
//! Elsewhere it falls back to one `send_to` per datagram.
//!
//! The batch owns the queued payloads (`BytesMut` from `rtc`, moved, not copied) until it is
//! sent, and reuses its address, `iovec` and `mmsghdr` arrays: no allocation per datagram once
//! the batch has grown to the size of a flush. The socket stays tokio's: the system call runs
//! inside [`UdpSocket::try_io`], so tokio's readiness tracking sees `EWOULDBLOCK` as it would
//! from `try_send_to`.
//!
//! A failed datagram never stops the rest: `sendmmsg` reports how many datagrams went out,
//! and an error only for the first one that did not; the batch counts that one as failed and
//! carries on after it. A full socket buffer (`WouldBlock`) drops what remains of the batch,
//! counted as such, as per-datagram sends would (the engine never waits for writability).

use std::io;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// The most datagrams one system call takes: Linux's `UIO_MAXIOV`, past which `sendmmsg`
/// silently sends only the first 1024.
pub const MAX_PER_CALL: usize = 1024;

/// What became of the datagrams of one [`SendBatch::send`].
#[derive(Debug, Default)]
pub struct SendReport {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams dropped because the socket's send buffer was full (`WouldBlock`).
    pub would_block: usize,
    /// Datagrams dropped because the kernel refused them (unreachable, bad address, ...).
    pub failed: usize,
    /// The last error other than `WouldBlock`, for logging.
    pub last_error: Option<io::Error>,
    /// System calls made.
    pub calls: usize,
}

/// Datagrams queued for one batched send; see the module documentation.
pub struct SendBatch<B> {
    queued: Vec<(SocketAddr, B)>,
    max_per_call: usize,
    #[cfg(target_os = "linux")]
    sys: linux::Scratch,
}

impl<B: AsRef<[u8]>> Default for SendBatch<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: AsRef<[u8]>> SendBatch<B> {
    /// An empty batch sending up to [`MAX_PER_CALL`] datagrams per system call.
    pub fn new() -> Self {
        Self::with_max_per_call(MAX_PER_CALL)
    }

    /// An empty batch sending at most `max` datagrams per system call (clamped to
    /// 1..=[`MAX_PER_CALL`]).
    pub fn with_max_per_call(max: usize) -> Self {
        Self {
            queued: Vec::new(),
            max_per_call: max.clamp(1, MAX_PER_CALL),
            #[cfg(target_os = "linux")]
            sys: linux::Scratch::default(),
        }
    }

    /// Queues one datagram for `to`.
    pub fn push(&mut self, to: SocketAddr, datagram: B) {
        self.queued.push((to, datagram));
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends every queued datagram without waiting and empties the batch (keeping its
    /// capacity). Never fails as a whole: what each datagram became is in the report.
    pub fn send(&mut self, socket: &UdpSocket) -> SendReport {
        if self.queued.is_empty() {
            return SendReport::default();
        }
        let report = self.send_queued(socket);
        self.queued.clear();
        report
    }

    #[cfg(target_os = "linux")]
    fn send_queued(&mut self, socket: &UdpSocket) -> SendReport {
        use std::os::fd::AsRawFd;
        let fd = socket.as_raw_fd();
        let max = self.max_per_call;
        let hdrs = self.sys.prepare(&self.queued);
        let report = drive(hdrs.len(), max, |start, end| {
            socket.try_io(tokio::io::Interest::WRITABLE, || {
                linux::sendmmsg(fd, &mut hdrs[start..end])
            })
        });
        self.sys.clear();
        report
    }

    #[cfg(not(target_os = "linux"))]
    fn send_queued(&mut self, socket: &UdpSocket) -> SendReport {
        let queued = &self.queued;
        drive(queued.len(), 1, |start, _end| {
            let (to, datagram) = &queued[start];
            socket.try_send_to(datagram.as_ref(), *to).map(|_| 1)
        })
    }
}

/// The accounting of a batched send, apart from the system call so that partial sends,
/// errors and `WouldBlock` can be tested with a fake one.
///
/// `call(start, end)` sends datagrams `start..end` (at most `max` of them) and returns how
/// many of the first went out, or the error of the first (`start`) when none did.
fn drive(
    total: usize,
    max: usize,
    mut call: impl FnMut(usize, usize) -> io::Result<usize>,
) -> SendReport {
    let mut report = SendReport::default();
    let mut start = 0;
    let mut interrupted = 0;
    while start < total {
        let end = total.min(start + max.max(1));
        report.calls += 1;
        match call(start, end) {
            // Zero would be a kernel bug; counting the first as failed guarantees progress.
            Ok(0) => {
                report.failed += 1;
                start += 1;
            }
            Ok(n) => {
                let n = n.min(end - start);
                report.sent += n;
                start += n;
                interrupted = 0;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                report.would_block += total - start;
                break;
            }
            // A signal before anything was sent: try again, but not forever.
            Err(e) if e.kind() == io::ErrorKind::Interrupted && interrupted < 3 => {
                interrupted += 1;
            }
            Err(e) => {
                report.failed += 1;
                report.last_error = Some(e);
                start += 1;
            }
        }
    }
    report
}

#[cfg(target_os = "linux")]
mod linux {
    use socket2::SockAddr;
    use std::io;
    use std::net::SocketAddr;
    use std::os::fd::RawFd;

    /// The arrays `sendmmsg` reads, reused from batch to batch. Between batches they are
    /// empty: no pointer into a sent batch outlives [`Scratch::clear`].
    #[derive(Default)]
    pub(super) struct Scratch {
        addrs: Vec<SockAddr>,
        iovecs: Vec<libc::iovec>,
        hdrs: Vec<libc::mmsghdr>,
    }

    // SAFETY: the raw pointers in `iovecs` and `hdrs` point into the batch being sent and
    // only live between `prepare` and `clear`, within one `SendBatch::send` call that holds
    // `&mut` to both; at rest the vectors are empty and only their capacity remains.
    unsafe impl Send for Scratch {}

    impl Scratch {
        /// Fills the arrays for `queued` and returns the headers to pass to `sendmmsg`.
        /// They point into `self` and into `queued`'s payloads: both must stay untouched
        /// until [`Scratch::clear`].
        pub(super) fn prepare<B: AsRef<[u8]>>(
            &mut self,
            queued: &[(SocketAddr, B)],
        ) -> &mut [libc::mmsghdr] {
            self.clear();
            self.addrs
                .extend(queued.iter().map(|(to, _)| SockAddr::from(*to)));
            self.iovecs.extend(queued.iter().map(|(_, d)| {
                let d = d.as_ref();
                libc::iovec {
                    // sendmmsg only reads through it.
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                }
            }));
            // The two arrays above are complete: their elements no longer move.
            for (addr, iov) in self.addrs.iter().zip(self.iovecs.iter_mut()) {
                // SAFETY: msghdr is a plain C struct for which all-zeroes is valid (null
                // pointers, zero lengths); the fields sendmmsg reads are set below.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_name = addr.as_ptr() as *mut libc::c_void;
                msg.msg_namelen = addr.len();
                msg.msg_iov = iov as *mut libc::iovec;
                msg.msg_iovlen = 1;
                self.hdrs.push(libc::mmsghdr {
                    msg_hdr: msg,
                    msg_len: 0,
                });
            }
            &mut self.hdrs
        }

        pub(super) fn clear(&mut self) {
            self.hdrs.clear();
            self.iovecs.clear();
            self.addrs.clear();
        }
    }

    /// One `sendmmsg(2)` of `hdrs` (non-blocking): how many went out, or the error of the
    /// first.
    pub(super) fn sendmmsg(fd: RawFd, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
        let len = hdrs.len().min(super::MAX_PER_CALL) as libc::c_uint;
        // SAFETY: `hdrs` is a valid, exclusively borrowed array of `len` headers whose
        // name and iovec pointers `Scratch::prepare` set to live addresses and payloads;
        // the kernel writes only each header's `msg_len`.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), len, libc::MSG_DONTWAIT as _) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    /// A socket to send from, once tokio knows it is writable: until its reactor has seen
    /// the socket's first readiness event, `try_io` (like `try_send_to`) answers
    /// `WouldBlock` without a system call.
    async fn sender() -> UdpSocket {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        s.writable().await.unwrap();
        s
    }

    async fn receiver() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    async fn recv_all(s: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let (len, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
                .await
                .expect("datagram did not arrive")
                .unwrap();
            got.push(buf[..len].to_vec());
        }
        got
    }

    #[tokio::test]
    async fn one_batch_reaches_several_destinations() {
        let sender = sender().await;
        let mut rx = Vec::new();
        for _ in 0..3 {
            rx.push(receiver().await);
        }
        let mut batch = SendBatch::new();
        for i in 0..12u8 {
            let (_, to) = &rx[usize::from(i) % 3];
            batch.push(*to, vec![i; 100 + usize::from(i)]);
        }
        let report = batch.send(&sender);
        assert_eq!(report.sent, 12, "{report:?}");
        assert_eq!((report.would_block, report.failed), (0, 0));
        #[cfg(target_os = "linux")]
        assert_eq!(report.calls, 1);
        assert!(batch.is_empty());
        for (r, (socket, _)) in rx.iter().enumerate() {
            let got = recv_all(socket, 4).await;
            let expected: Vec<Vec<u8>> = (0..12u8)
                .filter(|i| usize::from(*i) % 3 == r)
                .map(|i| vec![i; 100 + usize::from(i)])
                .collect();
            assert_eq!(got, expected, "receiver {r}");
            let mut buf = [0u8; 16];
            assert!(
                socket.try_recv_from(&mut buf).is_err(),
                "receiver {r} got more"
            );
        }
    }

    #[tokio::test]
    async fn a_batch_larger_than_one_call_goes_out_in_several() {
        let sender = sender().await;
        let (a, to_a) = receiver().await;
        let (b, to_b) = receiver().await;
        let mut batch = SendBatch::with_max_per_call(3);
        for i in 0..10u8 {
            batch.push(if i % 2 == 0 { to_a } else { to_b }, [i, i, i]);
        }
        let report = batch.send(&sender);
        assert_eq!(report.sent, 10, "{report:?}");
        #[cfg(target_os = "linux")]
        assert_eq!(report.calls, 4);
        let got_a = recv_all(&a, 5).await;
        let got_b = recv_all(&b, 5).await;
        assert_eq!(
            got_a,
            (0..10u8).step_by(2).map(|i| vec![i; 3]).collect::<Vec<_>>()
        );
        assert_eq!(
            got_b,
            (1..10u8).step_by(2).map(|i| vec![i; 3]).collect::<Vec<_>>()
        );
        // The batch is reusable and stays correct after a send.
        batch.push(to_a, [42; 3]);
        assert_eq!(batch.send(&sender).sent, 1);
        assert_eq!(recv_all(&a, 1).await, vec![vec![42; 3]]);
    }

    #[tokio::test]
    async fn more_than_the_kernel_limit_in_one_batch() {
        let sender = sender().await;
        let (a, to_a) = receiver().await;
        let n = MAX_PER_CALL + 200;
        let mut batch = SendBatch::new();
        for i in 0..n {
            batch.push(to_a, (i as u32).to_be_bytes());
        }
        let report = batch.send(&sender);
        assert_eq!(report.sent + report.would_block + report.failed, n);
        assert_eq!(report.failed, 0, "{report:?}");
        #[cfg(target_os = "linux")]
        assert!(report.calls >= 2, "{report:?}");
        // The receiver's buffer may not hold them all; what arrives is in order.
        let mut buf = [0u8; 16];
        let mut next = 0u32;
        tokio::time::timeout(Duration::from_secs(5), a.readable())
            .await
            .expect("nothing arrived")
            .unwrap();
        while let Ok(len) = a.try_recv(&mut buf) {
            assert_eq!(len, 4);
            assert_eq!(u32::from_be_bytes(buf[..4].try_into().unwrap()), next);
            next += 1;
        }
        assert!(next > 0);
    }

    #[tokio::test]
    async fn a_refused_datagram_does_not_stop_the_rest() {
        let sender = sender().await;
        let (a, to_a) = receiver().await;
        // An IPv6 destination on an IPv4 socket: the kernel refuses that one datagram.
        let bad = SocketAddr::from((Ipv6Addr::LOCALHOST, 9));
        let mut batch = SendBatch::new();
        batch.push(to_a, vec![1u8]);
        batch.push(bad, vec![2u8]);
        batch.push(to_a, vec![3u8]);
        batch.push(bad, vec![4u8]);
        let report = batch.send(&sender);
        assert_eq!((report.sent, report.failed, report.would_block), (2, 2, 0));
        assert!(report.last_error.is_some());
        assert_eq!(recv_all(&a, 2).await, vec![vec![1u8], vec![3u8]]);
    }

    #[tokio::test]
    async fn an_empty_batch_makes_no_call() {
        let sender = sender().await;
        let mut batch = SendBatch::<Vec<u8>>::new();
        let report = batch.send(&sender);
        assert_eq!((report.sent, report.calls), (0, 0));
    }

    /// CPU time of this thread (user + system), which holds on a busy machine where wall
    /// time does not.
    #[cfg(target_os = "linux")]
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer to a timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Not a check: the CPU cost per datagram of `send_to` one by one against one batch per
    /// fan-out, in the engine's shape (1200-byte datagrams, 13 destinations per flush).
    /// Seen on the 2-core dev machine, release: ~1.3 µs against ~1.2 µs per datagram, most
    /// of it the kernel's UDP path, which batching does not shorten.
    /// `cargo test -p consilium-sfu --release udp_batch::tests::cost -- --ignored --nocapture`
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "current_thread")]
    #[ignore]
    async fn cost_per_datagram_sendto_vs_sendmmsg() {
        let sender = sender().await;
        let mut rx = Vec::new();
        for _ in 0..13 {
            rx.push(receiver().await);
        }
        let payload = vec![0x5au8; 1200];
        let rounds = 20_000;
        // Receiving is timed apart and left out: only the sending side differs.
        let drain = |rx: &[(UdpSocket, SocketAddr)]| {
            let t = thread_cpu();
            let mut buf = [0u8; 2048];
            for (s, _) in rx {
                while s.try_recv(&mut buf).is_ok() {}
            }
            thread_cpu() - t
        };
        for round in 0..3 {
            let t = thread_cpu();
            let mut receiving = Duration::ZERO;
            let mut sent = 0usize;
            for i in 0..rounds {
                for (_, to) in &rx {
                    if sender.try_send_to(&payload, *to).is_ok() {
                        sent += 1;
                    }
                }
                if i % 8 == 7 {
                    receiving += drain(&rx);
                }
            }
            let one_by_one = thread_cpu() - t - receiving;
            drain(&rx);
            let mut batch = SendBatch::new();
            let t = thread_cpu();
            let mut receiving = Duration::ZERO;
            let mut sent_b = 0usize;
            for i in 0..rounds {
                for (_, to) in &rx {
                    batch.push(*to, payload.as_slice());
                }
                sent_b += batch.send(&sender).sent;
                if i % 8 == 7 {
                    receiving += drain(&rx);
                }
            }
            let batched = thread_cpu() - t - receiving;
            drain(&rx);
            println!(
                "round {round}: send_to {:.0} ns/datagram ({sent} sent), sendmmsg {:.0} ns/datagram ({sent_b} sent)",
                one_by_one.as_nanos() as f64 / sent.max(1) as f64,
                batched.as_nanos() as f64 / sent_b.max(1) as f64,
            );
        }
    }

    fn would_block() -> io::Error {
        io::Error::from(io::ErrorKind::WouldBlock)
    }

    #[test]
    fn would_block_drops_what_remains() {
        // 10 datagrams, 4 per call: the first call sends 4, the second 1, then the buffer is full.
        let mut calls = Vec::new();
        let report = drive(10, 4, |start, end| {
            calls.push((start, end));
            match calls.len() {
                1 => Ok(4),
                2 => Ok(1),
                _ => Err(would_block()),
            }
        });
        assert_eq!(calls, vec![(0, 4), (4, 8), (5, 9)]);
        assert_eq!((report.sent, report.would_block, report.failed), (5, 5, 0));
        assert!(report.last_error.is_none());
    }

    #[test]
    fn an_error_skips_one_datagram() {
        let report = drive(5, 8, |start, _end| match start {
            0 => Ok(2),
            2 => Err(io::Error::from_raw_os_error(101)),
            _ => Ok(2),
        });
        assert_eq!((report.sent, report.failed, report.would_block), (4, 1, 0));
        assert_eq!(report.calls, 3);
    }

    #[test]
    fn progress_is_guaranteed_on_odd_results() {
        // Zero sent, more sent than asked, endless interruptions: the loop still ends.
        let r = drive(3, 2, |_, _| Ok(0));
        assert_eq!((r.sent, r.failed), (0, 3));
        let r = drive(3, 2, |_, _| Ok(100));
        assert_eq!(r.sent, 3);
        let r = drive(2, 2, |_, _| {
            Err(io::Error::from(io::ErrorKind::Interrupted))
        });
        assert_eq!(r.sent + r.failed, 2);
    }
}
