//! Writes the seed corpora under `fuzz/corpus/<target>/seed-*` from real str0m traffic and a real
//! signer. Run from `fuzz/`: `cargo run --example gen_corpus`.

use convoy_fuzz::{Rig, client_offer};
use protocol::api::SessionKind;
use protocol::token::{JoinClaims, Signer, TokenKind};
use protocol::{GroupId, NodeId, SessionId, UserId};
use std::path::Path;
use std::time::{Duration, Instant};
use uuid::Uuid;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn main() {
    // Real client traffic: the first binding request, then the whole handshake.
    let mut rig = Rig::joined();
    rig.advance(Duration::from_millis(5));
    let first = rig
        .sent_log
        .first()
        .expect("the client sends a binding request");
    assert!(media_plane::stun::local_ufrag(first).is_some());
    write("stun_ufrag", "binding-request", first);
    let mut rig = Rig::connected();
    rig.advance(Duration::from_millis(100));
    for (i, d) in rig.sent_log.iter().enumerate().take(12) {
        let mut input = vec![0, 20];
        input.extend_from_slice(d);
        write("shard_datagram", &format!("client-{i:02}"), &input);
    }

    // A well-formed join token under the trusted kid whose signature is off by one bit (a valid
    // one would make the target fail: it asserts nothing is accepted), and one by another key.
    let claims = JoinClaims {
        iss: "convoy".into(),
        sub: UserId::from_uuid(Uuid::from_u128(1)),
        aud: NodeId::new("node-a").unwrap(),
        typ: TokenKind::Join,
        iat: 1_000,
        exp: 2_000,
        jti: "j1".into(),
        sid: SessionId::from_uuid(Uuid::from_u128(2)),
        grp: GroupId::from_uuid(Uuid::from_u128(3)),
        kind: SessionKind::Audio,
        publish: true,
        sub_media: true,
        music_ctl: false,
        mix: false,
        e2ee: false,
        admin: false,
    };
    let now = 1_500u64.to_le_bytes();
    let mut token = Signer::from_seed(&[7; 32]).sign(&claims).into_bytes();
    let last = token.len() - 2;
    token[last] = if token[last] == b'A' { b'B' } else { b'A' };
    write("join_token", "bad-signature", &[&now[..], &token].concat());
    let other = Signer::from_seed(&[8; 32]).sign(&claims);
    write(
        "join_token",
        "other-key",
        &[&now[..], other.as_bytes()].concat(),
    );

    let (_, offer, _) = client_offer(Instant::now());
    write("whip_offer", "str0m-offer", offer.as_bytes());
    println!("seed corpora written");
}
