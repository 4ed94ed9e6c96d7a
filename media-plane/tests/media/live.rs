//! Live tier: a media node on loopback (glommio core, WHIP over HTTP) and a JWKS served by the test.

use media_plane::{MediaNode, NodeConfig};
use protocol::api::{Jwks, PROBLEM_JSON, SessionKind};
use protocol::token::{JoinClaims, Signer, TokenKind};
use protocol::{GroupId, NodeId, SessionId, UserId};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use str0m::Rtc;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind};
use uuid::Uuid;

const NODE: &str = "live-node";

struct Live {
    node: MediaNode,
    signer: Signer,
    http: reqwest::Client,
}

impl Live {
    async fn start() -> Self {
        let signer = Signer::from_seed(&rand::random());
        let jwks = Jwks {
            keys: vec![signer.jwk()],
        };
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jwks_url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = NodeConfig {
            http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            udp_bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            udp_base_port: 0,
            cores: 1,
            ..NodeConfig::local(NodeId::new(NODE).unwrap(), jwks_url)
        };
        let node = MediaNode::start(config, media_plane::Hooks::default())
            .await
            .unwrap();
        Live {
            node,
            signer,
            http: reqwest::Client::new(),
        }
    }

    fn whip_url(&self, session: SessionId) -> String {
        self.node.record().whip_url(session)
    }

    fn token(&self, session: SessionId, aud: &str, exp_in: i64) -> String {
        self.signer.sign(&claims(session, aud, exp_in))
    }

    /// A WHIP join of `session` with a fresh token.
    async fn join(&self, session: SessionId) -> reqwest::Response {
        let token = self.token(session, NODE, 60);
        self.post(
            &self.whip_url(session),
            Some(&token),
            "application/sdp",
            offer(),
        )
        .await
    }

    async fn post(
        &self,
        url: &str,
        token: Option<&str>,
        ctype: &str,
        body: String,
    ) -> reqwest::Response {
        let mut req = self.http.post(url).header("content-type", ctype).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }
}

/// Join claims for `session` on node `aud`, expiring `exp_in` seconds from now.
fn claims(session: SessionId, aud: &str, exp_in: i64) -> JoinClaims {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    JoinClaims {
        iss: "convoy".into(),
        sub: UserId::from_uuid(Uuid::now_v7()),
        aud: NodeId::new(aud).unwrap(),
        typ: TokenKind::Join,
        iat: now,
        exp: now.saturating_add_signed(exp_in),
        jti: Uuid::new_v4().to_string(),
        sid: session,
        grp: GroupId::from_uuid(Uuid::now_v7()),
        kind: SessionKind::Audio,
        publish: true,
        sub_media: true,
        music_ctl: false,
        mix: false,
        e2ee: false,
        admin: false,
    }
}

fn offer() -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, _) = api.apply().unwrap();
    offer.to_sdp_string()
}

async fn assert_problem(res: reqwest::Response, status: u16, what: &str) {
    assert_eq!(res.status().as_u16(), status, "{what}");
    assert_eq!(res.headers()["content-type"], PROBLEM_JSON, "{what}");
    let p: protocol::api::Problem = res.json().await.unwrap();
    assert_eq!(p.status, status, "{what}");
    assert!(
        p.type_.starts_with(protocol::api::PROBLEM_TYPE_PREFIX),
        "{what}"
    );
}

#[tokio::test]
async fn whip_join_answers_with_our_candidate_and_delete_leaves() {
    let live = Live::start().await;
    let session = SessionId::from_uuid(Uuid::now_v7());
    let url = live.whip_url(session);
    let token = live.token(session, NODE, 60);
    let res = live
        .post(&url, Some(&token), "application/sdp", offer())
        .await;
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(res.headers()["content-type"], "application/sdp");
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("/v1/whip/{session}/")),
        "{location}"
    );
    let answer = res.text().await.unwrap();
    SdpAnswer::from_sdp_string(&answer).expect("a valid SDP answer");
    let port = live.node.udp_ports()[0];
    assert!(
        answer.contains(&format!("127.0.0.1 {port} typ host")),
        "the answer carries the core's candidate: {answer}"
    );
    assert!(answer.contains("a=ice-lite"), "the node is ICE-lite");

    // The same token a second time is refused.
    let again = live
        .post(&url, Some(&token), "application/sdp", offer())
        .await;
    assert_problem(again, 401, "replayed join token").await;

    let base = format!("http://{}", live.node.http_addr());
    let del = live
        .http
        .delete(format!("{base}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status().as_u16(), 200);
    let del = live
        .http
        .delete(format!("{base}{location}"))
        .send()
        .await
        .unwrap();
    assert_problem(del, 404, "deleting twice").await;
    live.node.shutdown().await;
}

#[tokio::test]
async fn bad_whip_requests_get_clear_4xx_problems() {
    let live = Live::start().await;
    let session = SessionId::from_uuid(Uuid::now_v7());
    let url = live.whip_url(session);
    let sdp = "application/sdp";
    let cases: Vec<(&str, Option<String>, &str, String, u16)> = vec![
        ("no token", None, sdp, offer(), 401),
        ("garbage token", Some("a.b.c".into()), sdp, offer(), 401),
        (
            "token for another node",
            Some(live.token(session, "other", 60)),
            sdp,
            offer(),
            401,
        ),
        (
            "expired token",
            Some(live.token(session, NODE, -3600)),
            sdp,
            offer(),
            401,
        ),
        (
            "token for another session",
            Some(live.token(SessionId::from_uuid(Uuid::now_v7()), NODE, 60)),
            sdp,
            offer(),
            403,
        ),
        (
            "malformed SDP",
            Some(live.token(session, NODE, 60)),
            sdp,
            "v=0\r\nnope".into(),
            400,
        ),
        (
            "wrong content type",
            Some(live.token(session, NODE, 60)),
            "text/plain",
            offer(),
            415,
        ),
        (
            "oversized offer",
            Some(live.token(session, NODE, 60)),
            sdp,
            "a".repeat(media_plane::MAX_OFFER_BYTES + 1),
            413,
        ),
    ];
    for (what, token, ctype, body, status) in cases {
        let res = live.post(&url, token.as_deref(), ctype, body).await;
        assert_problem(res, status, what).await;
    }
    let bad_path = format!("http://{}/v1/whip/not-a-uuid", live.node.http_addr());
    let res = live.post(&bad_path, None, sdp, offer()).await;
    assert_problem(res, 404, "bad session path").await;

    // After all that, a good join still works.
    let res = live
        .post(&url, Some(&live.token(session, NODE, 60)), sdp, offer())
        .await;
    assert_eq!(res.status().as_u16(), 201);
    live.node.shutdown().await;
}

#[tokio::test]
async fn a_draining_node_keeps_its_calls_refuses_new_rooms_and_reports_when_empty() {
    let live = Live::start().await;
    let base = format!("http://{}", live.node.http_addr());
    let (s1, s2) = (
        SessionId::from_uuid(Uuid::now_v7()),
        SessionId::from_uuid(Uuid::now_v7()),
    );
    let first = live.join(s1).await;
    assert_eq!(first.status().as_u16(), 201);
    let l1 = first.headers()["location"].to_str().unwrap().to_string();
    let ready = live
        .http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    live.node.drain();
    assert!(live.node.is_draining());
    assert_eq!(
        live.node.record().state,
        protocol::node::NodeState::Draining
    );
    let ready = live
        .http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_problem(ready, 503, "readiness while draining").await;
    assert_problem(live.join(s2).await, 503, "a new room on a draining node").await;
    let second = live.join(s1).await;
    assert_eq!(
        second.status().as_u16(),
        201,
        "the call in progress still takes members"
    );
    let l2 = second.headers()["location"].to_str().unwrap().to_string();

    let metrics = live
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    assert!(text.contains("convoy_media_draining 1\n"), "{text}");
    assert!(
        text.contains("convoy_media_participants{core=\"0\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("convoy_media_rooms{core=\"0\"} 1\n"),
        "{text}"
    );

    for l in [l1, l2] {
        let res = live.http.delete(format!("{base}{l}")).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), live.node.empty())
        .await
        .expect("the node reports empty once its last participant left");
    assert_eq!(live.node.participant_count(), 0);
}

#[tokio::test]
async fn whip_refuses_a_join_that_disagrees_with_the_rooms_e2ee_with_a_409() {
    let live = Live::start().await;
    let session = SessionId::from_uuid(Uuid::now_v7());
    let url = live.whip_url(session);
    let sdp = "application/sdp";
    let e2ee = || {
        live.signer.sign(&JoinClaims {
            e2ee: true,
            ..claims(session, NODE, 60)
        })
    };
    let res = live.post(&url, Some(&e2ee()), sdp, offer()).await;
    assert_eq!(res.status().as_u16(), 201, "the first joiner sets the flag");

    let res = live.join(session).await;
    assert_eq!(res.status().as_u16(), 409);
    assert_eq!(res.headers()["content-type"], PROBLEM_JSON);
    let p: protocol::api::Problem = res.json().await.unwrap();
    assert_eq!(
        p.type_,
        format!("{}e2ee-mismatch", protocol::api::PROBLEM_TYPE_PREFIX)
    );
    assert!(
        p.detail.unwrap().contains("end-to-end encrypted"),
        "a clear reason"
    );

    let mixed = live.signer.sign(&JoinClaims {
        e2ee: true,
        mix: true,
        ..claims(session, NODE, 60)
    });
    let res = live.post(&url, Some(&mixed), sdp, offer()).await;
    assert_problem(res, 403, "an encrypted session is never mixed").await;

    let res = live.post(&url, Some(&e2ee()), sdp, offer()).await;
    assert_eq!(res.status().as_u16(), 201, "agreeing joins still pass");
    live.node.shutdown().await;
}

#[tokio::test]
async fn a_browser_page_on_another_origin_may_join_and_read_the_resource_url() {
    let live = Live::start().await;
    let session = SessionId::from_uuid(Uuid::now_v7());
    let url = live.whip_url(session);
    let origin = "http://app.example";
    // The preflight a browser sends before a cross-origin POST with a bearer token.
    let pre = live
        .http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        methods.contains("post") && methods.contains("delete"),
        "{methods}"
    );
    let allowed = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));

    // The join itself exposes Location to the page.
    let token = live.token(session, NODE, 60);
    let res = live
        .http
        .post(&url)
        .header("origin", origin)
        .header("content-type", "application/sdp")
        .bearer_auth(token)
        .body(offer())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("location"), "{exposed}");
    // Only the WHIP routes are opened to other origins.
    let metrics = live
        .http
        .get(format!("http://{}/metrics", live.node.http_addr()))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert!(
        !metrics
            .headers()
            .contains_key("access-control-allow-origin")
    );
    live.node.shutdown().await;
}

/// A moderation token (what the control plane relays with) for `session` on this node.
fn moderation(live: &Live, session: SessionId) -> String {
    use protocol::token::ModerationClaims;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    live.signer.sign(&ModerationClaims {
        iss: "convoy".into(),
        sub: UserId::from_uuid(Uuid::now_v7()),
        aud: NodeId::new(NODE).unwrap(),
        typ: TokenKind::Moderation,
        iat: now,
        exp: now + 60,
        jti: Uuid::new_v4().to_string(),
        sid: session,
    })
}

/// One second of a 48 kHz mono WAV tone.
fn wav() -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
    for i in 0..48_000 {
        let v = (std::f64::consts::TAU * 440.0 * f64::from(i) / 48_000.0).sin() * 8_000.0;
        w.write_sample(v as i16).unwrap();
    }
    w.finalize().unwrap();
    out.into_inner()
}

#[tokio::test]
async fn the_music_routes_refuse_bad_tokens_bodies_and_rooms_with_problems() {
    let live = Live::start().await;
    let session = SessionId::from_uuid(Uuid::now_v7());
    let base = format!(
        "http://{}/v1/admin/sessions/{session}/music",
        live.node.http_addr()
    );
    let tracks = format!(
        "{base}/tracks?track={}&name=a.wav&type=audio/wav",
        Uuid::nil()
    );
    let play = r#"{"action":"play"}"#.to_string();
    let json = "application/json";
    assert_problem(
        live.post(&base, None, json, play.clone()).await,
        401,
        "no token",
    )
    .await;
    let join = live.token(session, NODE, 60);
    assert_problem(
        live.post(&base, Some(&join), json, play.clone()).await,
        401,
        "a join token is not a moderation token",
    )
    .await;
    // Without a token a file is refused before it is read.
    let big = "x".repeat(4 << 20);
    assert_problem(
        live.post(&tracks, None, "audio/wav", big).await,
        401,
        "a file without a token",
    )
    .await;
    let token = moderation(&live, session);
    assert_problem(
        live.post(&base, Some(&token), json, play.clone()).await,
        404,
        "nobody in the session here",
    )
    .await;
    let token = moderation(&live, session);
    assert_problem(
        live.post(
            &base,
            Some(&token),
            json,
            r#"{"action":"seek","position_ms":99999999999}"#.into(),
        )
        .await,
        400,
        "a seek past any track",
    )
    .await;
    let token = moderation(&live, session);
    assert_problem(
        live.post(&base, Some(&token), json, r#"{"action":"dance"}"#.into())
            .await,
        422,
        "an unknown action",
    )
    .await;

    // A music session with one listener: a file that is not audio, then one that is.
    let mut claims = claims(session, NODE, 60);
    claims.kind = SessionKind::Music;
    let res = live
        .post(
            &live.whip_url(session),
            Some(&live.signer.sign(&claims)),
            "application/sdp",
            offer(),
        )
        .await;
    assert_eq!(res.status(), 201);
    let token = moderation(&live, session);
    let res = live
        .http
        .post(&tracks)
        .bearer_auth(token)
        .body(b"RIFF\0\0\0\0WAVEjunkjunk".to_vec())
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "not a playable file").await;
    let token = moderation(&live, session);
    let res = live
        .http
        .post(&tracks)
        .bearer_auth(token)
        .body(wav())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let state: protocol::music::MusicState = res.json().await.unwrap();
    assert_eq!(state.current.map(|t| t.duration_ms), Some(1_000));
    let token = moderation(&live, session);
    let res = live.post(&base, Some(&token), json, play).await;
    assert_eq!(res.status(), 200);
    let state: protocol::music::MusicState = res.json().await.unwrap();
    assert!(state.playing);
    let token = moderation(&live, session);
    let queue = format!(r#"{{"action":"queue","track":"{}"}}"#, Uuid::nil());
    assert_problem(
        live.post(&base, Some(&token), json, queue).await,
        400,
        "a queue action without its file",
    )
    .await;
    // The token was used once: again is refused.
    let token = moderation(&live, session);
    let ok = live
        .post(&base, Some(&token), json, r#"{"action":"pause"}"#.into())
        .await;
    assert_eq!(ok.status(), 200);
    assert_problem(
        live.post(&base, Some(&token), json, r#"{"action":"pause"}"#.into())
            .await,
        401,
        "a moderation token twice",
    )
    .await;
    live.node.shutdown().await;
}
