//! The two per-packet costs around the shard: SRTP protection and handing datagrams to the kernel.
//!
//! - `srtp/protect_aead_aes_256_gcm`: sealing one 120-byte Opus payload with its 12-byte RTP header
//!   as associated data, through str0m's crypto provider (aws-lc-rs), the SRTP profile browsers and
//!   str0m negotiate first. The rest of SRTP protection (IV from SSRC and index) is a few XORs.
//! - `udp/fanout/{sendto,sendmmsg}/50`: one packet's fan-out of 50 datagrams (132 B) to loopback,
//!   one system call per datagram as before, or one `sendmmsg` through `media_plane::udp::SendBatch`
//!   as a core does now. The receiving socket is drained between iterations, outside the timing.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use media_plane::shard::Datagram;
use media_plane::udp::{RecvBatch, SendBatch};
use std::hint::black_box;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const OPUS_FRAME: usize = 120;
const RTP_HEADER: usize = 12;
const GCM_TAG: usize = 16;
const FANOUT: usize = 50;

fn srtp(c: &mut Criterion) {
    let provider = str0m::crypto::from_feature_flags();
    let mut cipher = provider
        .srtp_provider
        .aead_aes_256_gcm()
        .create_cipher([7u8; 32], true);
    let header = [0x80u8, 111, 0, 1, 0, 0, 0x03, 0xc0, 0x12, 0x34, 0x56, 0x78];
    let payload = [0x5au8; OPUS_FRAME];
    let mut out = [0u8; OPUS_FRAME + GCM_TAG];
    let mut index = 0u64;
    let mut g = c.benchmark_group("srtp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("protect_aead_aes_256_gcm", |b| {
        b.iter(|| {
            index += 1;
            let mut iv = [0u8; 12];
            iv[4..12].copy_from_slice(&index.to_be_bytes());
            cipher
                .encrypt(&iv, black_box(&header), black_box(&payload), &mut out)
                .expect("sealing into a buffer of the right size");
            black_box(&out);
        })
    });
    g.finish();
}

fn udp(c: &mut Criterion) {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind receiver");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let to = rx.local_addr().expect("receiver address");
    let datagrams: Vec<Datagram> = (0..FANOUT)
        .map(|_| Datagram {
            destination: to,
            contents: vec![0u8; RTP_HEADER + OPUS_FRAME],
        })
        .collect();
    let mut drain = RecvBatch::new(2048);
    let mut empty = move || while drain.recv(rx.as_raw_fd()).unwrap_or(0) > 0 {};

    let mut g = c.benchmark_group("udp/fanout");
    g.throughput(Throughput::Elements(FANOUT as u64));
    g.bench_function(BenchmarkId::new("sendto", FANOUT), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for d in &datagrams {
                    let _ = tx.send_to(&d.contents, d.destination);
                }
                took += start.elapsed();
                empty();
            }
            took
        })
    });
    let mut batch = SendBatch::default();
    g.bench_function(BenchmarkId::new("sendmmsg", FANOUT), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let sent = batch.send(tx.as_raw_fd(), &datagrams);
                took += start.elapsed();
                assert_eq!(sent.datagrams, FANOUT, "{sent:?}");
                empty();
            }
            took
        })
    });
    g.finish();
}

criterion_group!(benches, srtp, udp);
criterion_main!(benches);
