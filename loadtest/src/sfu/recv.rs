//! A listener's read with the kernel's receive timestamp (`SO_TIMESTAMPNS`): the moment the
//! datagram reached the listener's socket, not the moment this one-thread generator got round
//! to reading it. On loopback the kernel stamps a datagram as the node's send hands it over, so
//! send stamp → receive stamp is the latency the node added, without the generator's own
//! read backlog (which the read time still shows, reported beside it).

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use nix::sys::time::TimeSpec;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{SystemTime, UNIX_EPOCH};

/// Asks the kernel to stamp every datagram `socket` receives.
pub fn enable_timestamps(socket: &UdpSocket) -> io::Result<()> {
    setsockopt(&socket.as_fd(), sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Nanoseconds since the Unix epoch on the realtime clock: the clock of kernel receive stamps.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One datagram read.
#[derive(Debug, Clone, Copy)]
pub struct Datagram {
    pub len: usize,
    pub source: SocketAddr,
    /// The kernel's receive stamp (ns since the Unix epoch), when it gave one.
    pub arrived_ns: Option<u64>,
}

/// Room for the receive stamp's control message, for [`recv_stamped`] to reuse.
pub fn stamp_buffer() -> Vec<u8> {
    nix::cmsg_space!(TimeSpec)
}

/// Reads one datagram from `socket` into `buf`; `cmsg` is a [`stamp_buffer`], reused from read
/// to read (this is the generator's hot path).
pub fn recv_stamped(
    socket: &impl AsRawFd,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
) -> io::Result<Datagram> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg =
        recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::empty())
            .map_err(io::Error::from)?;
    let mut arrived_ns = None;
    for c in msg.cmsgs() {
        if let ControlMessageOwned::ScmTimestampns(ts) = c {
            let ns = i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec());
            arrived_ns = u64::try_from(ns).ok();
        }
    }
    let source = msg
        .address
        .as_ref()
        .and_then(to_std)
        .ok_or_else(|| io::Error::other("datagram without an IP source address"))?;
    Ok(Datagram {
        len: msg.bytes,
        source,
        arrived_ns,
    })
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_a_datagram_between_send_and_read() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_timestamps(&rx).expect("SO_TIMESTAMPNS");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let before = wall_ns();
        tx.send_to(b"hello", rx.local_addr().expect("addr"))
            .expect("send");
        let mut buf = [0u8; 64];
        // Blocking read: returns once the datagram is there.
        let d = recv_stamped(&rx, &mut buf, &mut stamp_buffer()).expect("read");
        let after = wall_ns();
        assert_eq!(&buf[..d.len], b"hello");
        assert_eq!(d.source, tx.local_addr().expect("addr"));
        let at = d.arrived_ns.expect("the kernel stamped it");
        assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
    }

    #[test]
    fn no_stamp_unless_asked() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        tx.send_to(b"x", rx.local_addr().expect("addr"))
            .expect("send");
        let mut buf = [0u8; 8];
        let d = recv_stamped(&rx, &mut buf, &mut stamp_buffer()).expect("read");
        assert_eq!(d.len, 1);
        assert_eq!(d.arrived_ns, None);
    }
}
