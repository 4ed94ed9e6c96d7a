//! The per-packet hot paths of a media node, and one join-token check.
//!
//! - `stun/local_ufrag`: demultiplexing a real str0m binding request by its ICE ufrag.
//! - `forwarder/down_slot_rewrite`: rewriting one packet's sequence number and timestamp.
//! - `token/verify_join`: verifying a valid join token (Ed25519 + JSON).
//! - `shard/forward/N`: one 120-byte Opus frame as SRTP into a `Shard`, decrypted, rewritten and
//!   re-encrypted for N subscribers; throughput counts packets out. Only the shard's work is timed
//!   (`SimRoom::forward`); the clients' encryption and upkeep are not.

use benches::SimRoom;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use media_plane::forwarder::{DownSlot, SourceKey};
use protocol::api::{Jwks, SessionKind};
use protocol::token::{JoinClaims, Signer, TokenKind, VerifyingKeys};
use protocol::{GroupId, NodeId, SessionId, UserId};
use std::hint::black_box;
use std::time::{Duration, Instant};
use str0m::media::{Mid, Pt};
use uuid::Uuid;

/// Bytes of one Opus frame at a typical voice bitrate.
const OPUS_FRAME: usize = 120;

fn stun(c: &mut Criterion) {
    let request = SimRoom::binding_request();
    let mut g = c.benchmark_group("stun");
    g.throughput(Throughput::Elements(1));
    g.bench_function("local_ufrag", |b| {
        b.iter(|| media_plane::stun::local_ufrag(black_box(&request)))
    });
    g.finish();
}

fn forwarder(c: &mut Criterion) {
    let source = SourceKey {
        participant: 1,
        ssrc: 0x1234_5678,
    };
    let mut slot = DownSlot::new(Mid::from("0"), Pt::from(111), 99, 5_000);
    let (mut seq, mut ts) = (70_000u64, 1_000_000u32);
    slot.assign(source, seq, ts);
    let mut g = c.benchmark_group("forwarder");
    g.throughput(Throughput::Elements(1));
    g.bench_function("down_slot_rewrite", |b| {
        b.iter(|| {
            seq += 1;
            ts = ts.wrapping_add(960);
            slot.rewrite(black_box(source), black_box(seq), black_box(ts))
        })
    });
    g.finish();
}

fn token(c: &mut Criterion) {
    let signer = Signer::from_seed(&[7; 32]);
    let keys = VerifyingKeys::from_jwks(&Jwks {
        keys: vec![signer.jwk()],
    });
    let token = signer.sign(&JoinClaims {
        iss: "convoy".into(),
        sub: UserId::from_uuid(Uuid::from_u128(1)),
        aud: NodeId::new("node-a").expect("a node id"),
        typ: TokenKind::Join,
        iat: 1_000,
        exp: 2_000,
        jti: "0196a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
        sid: SessionId::from_uuid(Uuid::from_u128(2)),
        grp: GroupId::from_uuid(Uuid::from_u128(3)),
        kind: SessionKind::Audio,
        publish: true,
        sub_media: true,
        music_ctl: false,
        mix: false,
        e2ee: false,
        admin: false,
    });
    assert!(
        keys.verify::<JoinClaims>(&token, "node-a", 1_500, 60)
            .is_ok()
    );
    let mut g = c.benchmark_group("token");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_join", |b| {
        b.iter(|| keys.verify::<JoinClaims>(black_box(&token), "node-a", 1_500, 60))
    });
    g.finish();
}

fn shard(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard/forward");
    for n in [1usize, 10, 50] {
        let mut room = SimRoom::new(n);
        assert_eq!(
            room.warm_up(OPUS_FRAME),
            n as u64,
            "every subscriber is forwarded to"
        );
        // str0m clients negotiate no NACK for audio: this measures the fast path.
        let stats = room.stats();
        assert_eq!(stats.rtp_forwarded_fast, stats.rtp_forwarded, "{stats:?}");
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut out = 0;
                for _ in 0..iters {
                    let datagram = room.publish(OPUS_FRAME);
                    let start = Instant::now();
                    out += room.forward(black_box(&datagram));
                    timed += start.elapsed();
                }
                assert_eq!(
                    out,
                    iters * n as u64,
                    "every packet reached every subscriber"
                );
                timed
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = stun, forwarder, token, shard
}
criterion_main!(hot_path);
