//! Participants and moderation through the control plane's REST API: the media node's session
//! events keep the participants table current, and admin actions are relayed to the node.

use convoy::dev::{DevConfig, DevStack};
use protocol::api::{MuteStatus, ParticipantView};
use protocol::{ParticipantId, SessionId};
use std::time::{Duration, Instant};
use str0m::Rtc;
use str0m::media::{Direction, MediaKind};
use tests::api::User;

fn offer() -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    api.apply().unwrap().0.to_sdp_string()
}

/// Joins over WHIP (signaling only: the peer never connects) and returns the participant id.
async fn whip_join(whip_url: &str, token: &str) -> ParticipantId {
    let res = reqwest::Client::new()
        .post(whip_url)
        .header("content-type", "application/sdp")
        .bearer_auth(token)
        .body(offer())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    location.rsplit('/').next().unwrap().parse().unwrap()
}

async fn participants(user: &User, session: SessionId) -> (u16, Vec<ParticipantView>) {
    let res = reqwest::Client::new()
        .get(format!("{}/v1/sessions/{session}/participants", user.base))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (
        status,
        if status == 200 {
            res.json().await.unwrap()
        } else {
            Vec::new()
        },
    )
}

/// Lists participants until `cond` holds (events are applied asynchronously); 10 s at most.
async fn until(
    user: &User,
    session: SessionId,
    what: &str,
    cond: impl Fn(&[ParticipantView]) -> bool,
) {
    let wait = async {
        loop {
            let (_, list) = participants(user, session).await;
            if cond(&list) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

async fn act(
    user: &User,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> u16 {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", user.base))
        .bearer_auth(&user.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    if status >= 400 {
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_follow_the_node_and_admins_moderate_through_rest() {
    let dir = std::env::temp_dir().join(format!("convoy-mod-{}", uuid::Uuid::now_v7()));
    let mut config = DevConfig::ephemeral(dir.join("data"));
    config.cores = 1;
    let stack = DevStack::start(config).await.unwrap();
    let base = stack.control_plane_url.clone();
    let alice = User::register(&base, "alice").await.unwrap();
    let bob = User::register(&base, "bob").await.unwrap();
    let carol = User::register(&base, "carol").await.unwrap();
    let group = alice.create_group("Family").await.unwrap();
    bob.accept(&alice.invite(&group).await.unwrap())
        .await
        .unwrap();
    let (_, a) = alice.allocate(&group).await.unwrap();
    let (_, b) = bob.allocate(&group).await.unwrap();
    let session = a.session.id;
    let pa = whip_join(&a.candidates[0].whip_url, &a.join_token).await;
    let pb = whip_join(&b.candidates[0].whip_url, &b.join_token).await;

    until(&bob, session, "both participants listed", |l| l.len() == 2).await;
    let (status, _) = participants(&carol, session).await;
    assert_eq!(status, 404, "a non-member does not see the session");

    use reqwest::Method;
    let p =
        |who: ParticipantId, what: &str| format!("/v1/sessions/{session}/participants/{who}{what}");
    let yes = serde_json::json!({"allowed": false});
    assert_eq!(
        act(&bob, Method::POST, &p(pa, "/speak"), Some(yes.clone())).await,
        403,
        "members do not moderate"
    );
    assert_eq!(
        act(
            &bob,
            Method::POST,
            &p(pa, "/mute"),
            Some(serde_json::json!({"microphone": true}))
        )
        .await,
        403
    );
    assert_eq!(
        act(
            &bob,
            Method::POST,
            &p(pb, "/mute"),
            Some(serde_json::json!({"microphone": true}))
        )
        .await,
        204,
        "muting oneself"
    );
    assert_eq!(
        act(
            &alice,
            Method::POST,
            &p(pb, "/mute"),
            Some(serde_json::json!({"speaker": true}))
        )
        .await,
        204
    );
    assert_eq!(
        act(&alice, Method::POST, &p(pb, "/speak"), Some(yes)).await,
        204
    );
    until(&alice, session, "bob muted both ways", |l| {
        l.iter().any(|v| {
            v.id == pb
                && v.mute_status
                    == MuteStatus {
                        microphone: true,
                        speaker: true,
                    }
        })
    })
    .await;
    let unknown = ParticipantId::from_uuid(uuid::Uuid::now_v7());
    assert_eq!(
        act(
            &alice,
            Method::POST,
            &p(unknown, "/mute"),
            Some(serde_json::json!({"microphone": true}))
        )
        .await,
        404
    );
    assert_eq!(
        act(
            &alice,
            Method::POST,
            &p(pb, "/mute"),
            Some(serde_json::json!({"loud": true}))
        )
        .await,
        422
    );

    assert_eq!(
        act(&alice, Method::DELETE, &p(pb, ""), None).await,
        204,
        "the admin removes bob"
    );
    until(&alice, session, "bob gone", |l| {
        l.len() == 1 && l[0].id == pa
    })
    .await;
    assert_eq!(
        act(&alice, Method::DELETE, &p(pb, ""), None).await,
        404,
        "bob is no longer there"
    );
    assert_eq!(
        act(&alice, Method::DELETE, &p(pa, ""), None).await,
        204,
        "leaving oneself"
    );
    until(&alice, session, "nobody left", |l| l.is_empty()).await;
    stack.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
