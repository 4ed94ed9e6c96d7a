//! Batched, non-blocking UDP for a core's socket: `sendmmsg` and `recvmmsg` with `MSG_DONTWAIT`
//! on the descriptor glommio owns. The runtime sends a whole outbox in one call, without an
//! await between datagrams, and after each awaited read takes whatever else is already queued
//! in one call; it falls back to glommio's awaited I/O only when the kernel says "would block".

use crate::shard::Datagram;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams per system call.
pub const BATCH: usize = 64;

/// Reusable headers for `sendmmsg`.
pub struct SendBatch {
    headers: MultiHeaders<SockaddrStorage>,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").finish_non_exhaustive()
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            headers: MultiHeaders::preallocate(BATCH, None),
            addrs: Vec::with_capacity(BATCH),
        }
    }
}

/// What one `send` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took, from the front.
    pub datagrams: usize,
    pub bytes: usize,
    /// The socket is full: the rest must wait for it.
    pub would_block: bool,
    /// The first datagram not sent failed for another reason (it should be dropped).
    pub failed: bool,
}

impl SendBatch {
    /// Sends from the front of `datagrams` (at most [`BATCH`]) without blocking.
    pub fn send(&mut self, fd: RawFd, datagrams: &[Datagram]) -> Sent {
        let batch = &datagrams[..datagrams.len().min(BATCH)];
        self.addrs.clear();
        self.addrs.extend(
            batch
                .iter()
                .map(|d| Some(SockaddrStorage::from(d.destination))),
        );
        let slices: Vec<[IoSlice<'_>; 1]> =
            batch.iter().map(|d| [IoSlice::new(&d.contents)]).collect();
        let result = sendmmsg(
            fd,
            &mut self.headers,
            &slices,
            &self.addrs,
            [],
            MsgFlags::MSG_DONTWAIT,
        );
        match result {
            Ok(results) => {
                let (mut datagrams, mut bytes) = (0, 0);
                for r in results {
                    datagrams += 1;
                    bytes += r.bytes;
                }
                Sent {
                    datagrams,
                    bytes,
                    would_block: false,
                    failed: false,
                }
            }
            Err(Errno::EAGAIN) => Sent {
                datagrams: 0,
                bytes: 0,
                would_block: true,
                failed: false,
            },
            Err(Errno::EINTR) => Sent {
                datagrams: 0,
                bytes: 0,
                would_block: false,
                failed: false,
            },
            Err(_) => Sent {
                datagrams: 0,
                bytes: 0,
                would_block: false,
                failed: true,
            },
        }
    }
}

/// Reusable buffers and headers for `recvmmsg`.
pub struct RecvBatch {
    headers: MultiHeaders<SockaddrStorage>,
    buffers: Vec<Vec<u8>>,
    /// (length, source) of each datagram of the last call.
    received: Vec<(usize, Option<SocketAddr>)>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Room for [`BATCH`] datagrams of up to `max_datagram` bytes.
    pub fn new(max_datagram: usize) -> Self {
        Self {
            headers: MultiHeaders::preallocate(BATCH, None),
            buffers: vec![vec![0u8; max_datagram]; BATCH],
            received: Vec::with_capacity(BATCH),
        }
    }

    /// Reads what is queued, without blocking; `Ok(0)` when nothing is.
    pub fn recv(&mut self, fd: RawFd) -> nix::Result<usize> {
        self.received.clear();
        let slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .iter_mut()
            .map(|b| [IoSliceMut::new(b.as_mut_slice())])
            .collect();
        let results = match recvmmsg(fd, &mut self.headers, &slices, MsgFlags::MSG_DONTWAIT, None) {
            Ok(r) => r,
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e),
        };
        for r in results {
            let source = r.address.and_then(|a: SockaddrStorage| to_std(&a));
            self.received.push((r.bytes, source));
        }
        Ok(self.received.len())
    }

    /// The datagrams of the last [`recv`](Self::recv): (source, bytes). A datagram whose source
    /// is not an IP address (impossible on a UDP/IP socket) is skipped.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.received
            .iter()
            .zip(&self.buffers)
            .filter_map(|(&(n, source), buf)| Some((source?, &buf[..n.min(buf.len())])))
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    Some(SocketAddr::V6((*a.as_sockaddr_in6()?).into()))
}

/// Whether `a` is an address family `SockaddrStorage` carries (for tests).
#[cfg(test)]
fn family(a: &SockaddrStorage) -> Option<nix::sys::socket::AddressFamily> {
    use nix::sys::socket::SockaddrLike;
    a.family()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_goes_out_in_one_call_and_comes_back_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let datagrams: Vec<Datagram> = (0..100u8)
            .map(|i| Datagram {
                destination: to,
                contents: vec![i; 100 + usize::from(i)],
            })
            .collect();
        let mut send = SendBatch::default();
        let mut off = 0;
        while off < datagrams.len() {
            let s = send.send(tx.as_raw_fd(), &datagrams[off..]);
            assert!(!s.failed && !s.would_block, "{s:?}");
            assert!(s.datagrams > 0 && s.datagrams <= BATCH);
            off += s.datagrams;
        }
        assert_eq!(off, 100);

        let mut recv = RecvBatch::new(2048);
        let mut got = Vec::new();
        while got.len() < 100 {
            let n = recv.recv(rx.as_raw_fd()).unwrap();
            assert!(n > 0, "all 100 datagrams were sent before reading");
            for (source, bytes) in recv.datagrams() {
                assert_eq!(source, tx.local_addr().unwrap());
                got.push(bytes.to_vec());
            }
        }
        for (i, bytes) in got.iter().enumerate() {
            assert_eq!(bytes.len(), 100 + i);
            assert!(bytes.iter().all(|&b| usize::from(b) == i));
        }
        // Nothing more queued: a non-blocking read says so instead of waiting.
        assert_eq!(recv.recv(rx.as_raw_fd()).unwrap(), 0);
    }

    #[test]
    fn ipv6_sources_convert() {
        let a = SockaddrStorage::from("[::1]:4000".parse::<SocketAddr>().unwrap());
        assert_eq!(family(&a), Some(nix::sys::socket::AddressFamily::Inet6));
        assert_eq!(to_std(&a), Some("[::1]:4000".parse().unwrap()));
    }
}
