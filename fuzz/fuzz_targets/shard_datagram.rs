//! Arbitrary datagrams into a `Shard` with one connected participant: no panic, ever.
//!
//! Input: byte 0 picks the source of the second copy (even: the participant's own address, which
//! the shard has learned, so the bytes reach its `Rtc` as DTLS/SRTP/STUN; odd: a stranger's port),
//! byte 1 is how many milliseconds of simulated time pass afterwards; the rest is the datagram,
//! fed first from a fixed stranger address, then from the picked source. The rig is built once and
//! rebuilt when an input broke the participant's connection, so a crash may depend on the inputs
//! before it: rerun with the artifact alone first, then with the corpus.
#![no_main]

use convoy_fuzz::Rig;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let [pick, millis, datagram @ ..] = data else {
        return;
    };
    RIG.with_borrow_mut(|slot| {
        let rig = match slot {
            Some(rig) if rig.healthy() => rig,
            _ => slot.insert(Rig::connected()),
        };
        let stranger: SocketAddr = "198.51.100.7:3478".parse().unwrap();
        rig.feed(stranger, datagram);
        let source = if pick % 2 == 0 {
            rig.client_addr()
        } else {
            SocketAddr::new(rig.client_addr().ip(), 6000 + u16::from(*pick))
        };
        rig.feed(source, datagram);
        rig.advance(Duration::from_millis(u64::from(*millis)));
    });
});
