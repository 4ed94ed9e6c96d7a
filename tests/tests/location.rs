//! The location engine through the whole stack (dev mode: one process, SQLite): location tokens
//! from the control plane's REST API, the engine's WebSocket stream and HTTP batch ingest driven
//! by tungstenite and reqwest, alerts back on the members' streams and, through the control
//! plane, on `/v1/events` for a member who is not sharing.

use convoy::dev::{DevConfig, DevStack};
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::api::GroupView;
use protocol::location::{
    AlertKind, BINARY_MEDIA_TYPE, BatchResult, CLOSE_BAD_FRAME, CLOSE_TOO_MANY, CLOSE_UNAUTHORIZED,
    LocationAlert, LocationHistory, LocationToken, MemberPosition, PlaceView, Precision,
    ServerFrame, WireFix, encode_fixes,
};
use protocol::realtime::{self, EventData};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tests::api::User;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A guard against a hang, not a wait: every read below returns as soon as its frame arrives.
const PATIENCE: Duration = Duration::from_secs(20);

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "convoy-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn fix(t: i64, lat: f64, lon: f64) -> WireFix {
    WireFix {
        t,
        lat,
        lon,
        acc: 5.0,
        alt: Some(12.0),
        speed: Some(1.4),
        heading: Some(90.0),
        battery: Some(80),
    }
}

async fn location_token(user: &User, body: serde_json::Value) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/v1/location/token", user.base))
        .bearer_auth(&user.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn token_for(user: &User, group: &GroupView, precision: &str) -> LocationToken {
    let (status, body) = location_token(
        user,
        serde_json::json!({"groups": [{"group": group.id, "precision": precision}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

async fn open(url: &str, token: &str, in_query: bool) -> Ws {
    let mut req = if in_query {
        format!("{url}?token={token}")
            .into_client_request()
            .unwrap()
    } else {
        url.into_client_request().unwrap()
    };
    if !in_query {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// Reads frames until one satisfies `want`; panics on close or after [`PATIENCE`].
async fn until<T>(ws: &mut Ws, mut want: impl FnMut(ServerFrame) -> Option<T>) -> T {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: ServerFrame = serde_json::from_str(&text).unwrap();
                    if let Some(t) = want(frame) {
                        return t;
                    }
                }
                Some(Ok(Message::Close(c))) => panic!("closed: {c:?}"),
                Some(Ok(_)) => {}
                other => panic!("stream ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the frame never came")
}

/// Reads until the close frame and answers its code.
async fn close_code(ws: &mut Ws) -> u16 {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(c)))) => return u16::from(c.code),
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("never closed")
}

async fn send(ws: &mut Ws, value: serde_json::Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

async fn send_fix(ws: &mut Ws, f: WireFix) {
    let mut v = serde_json::to_value(f).unwrap();
    v["type"] = "fix".into();
    send(ws, v).await;
}

/// Opens `/v1/events` on the control plane for `user` and waits for `ready`.
async fn events(stack: &DevStack, user: &User) -> Ws {
    let url = format!(
        "{}/v1/events",
        stack.control_plane_url.replace("http", "ws")
    );
    let mut ws = open(&url, &user.token, false).await;
    send(&mut ws, serde_json::json!({"type": "hello"})).await;
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("no ready on /v1/events")
        };
        if matches!(
            serde_json::from_str(&t).unwrap(),
            realtime::ServerFrame::Ready { .. }
        ) {
            return ws;
        }
    }
}

/// The next location alert logged in a group, as `/v1/events` delivers it: its id and kind.
async fn next_logged_alert(events: &mut Ws) -> (String, AlertKind) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let Some(Ok(Message::Text(t))) = events.next().await else {
                panic!("/v1/events ended")
            };
            if let Ok(realtime::ServerFrame::Event(e)) = serde_json::from_str(&t)
                && let EventData::Location { alert_id, alert } = e.data
            {
                return (alert_id, alert);
            }
        }
    })
    .await
    .expect("a location alert on /v1/events")
}

async fn three_in_a_group(stack: &DevStack) -> (User, User, User, GroupView) {
    let ann = User::register(&stack.control_plane_url, "ann")
        .await
        .unwrap();
    let bob = User::register(&stack.control_plane_url, "bob")
        .await
        .unwrap();
    let cat = User::register(&stack.control_plane_url, "cat")
        .await
        .unwrap();
    let group = ann.create_group("road trip").await.unwrap();
    for u in [&bob, &cat] {
        u.accept(&ann.invite(&group).await.unwrap()).await.unwrap();
    }
    (ann, bob, cat, group)
}

#[tokio::test]
async fn members_who_come_near_are_told_on_their_streams_and_the_group_log() {
    let stack = DevStack::start(DevConfig::ephemeral(temp_dir("loc-near")))
        .await
        .unwrap();
    let (ann, bob, cat, group) = three_in_a_group(&stack).await;
    // Cat does not share: she follows the group on the control plane's event stream.
    let mut cat_events = events(&stack, &cat).await;

    let ann_token = token_for(&ann, &group, "exact").await;
    let bob_token = token_for(&bob, &group, "exact").await;
    let url = ann_token
        .stream_url
        .clone()
        .expect("the dev stack names its engine");
    assert_eq!(ann_token.groups[0].near_m, 200);
    let mut ann_ws = open(&url, &ann_token.token, false).await;
    let mut bob_ws = open(&url, &bob_token.token, true).await;
    for (ws, who) in [(&mut ann_ws, ann.id), (&mut bob_ws, bob.id)] {
        let sharing = until(ws, |f| match f {
            ServerFrame::Ready { user, sharing, .. } if user == who => Some(sharing),
            _ => None,
        })
        .await;
        assert_eq!(sharing.len(), 1);
        assert_eq!(sharing[0].group, group.id);
        assert_eq!(sharing[0].precision, Precision::Exact);
    }

    // 2 km apart: the pair is seeded apart, silently.
    let t0 = now_ms();
    send_fix(&mut ann_ws, fix(t0, 48.8584, 2.2945)).await;
    send_fix(&mut bob_ws, fix(t0, 48.8584, 2.3215)).await;
    let seen: Vec<MemberPosition> = until(&mut ann_ws, |f| match f {
        ServerFrame::Positions { members, .. } if members.len() == 2 => Some(members),
        _ => None,
    })
    .await;
    let bob_seen = seen.iter().find(|m| m.user == bob.id).unwrap();
    assert_eq!((bob_seen.lat, bob_seen.lon), (48.8584, 2.3215));
    assert_eq!(
        (bob_seen.battery, bob_seen.precision),
        (Some(80), Precision::Exact)
    );

    // Ann walks up to Bob: 40 m away, two fixes (the dwell), then one alert each.
    send_fix(&mut ann_ws, fix(t0 + 1_000, 48.8584, 2.3210)).await;
    send_fix(&mut ann_ws, fix(t0 + 2_000, 48.8584, 2.3210)).await;
    let near = |f| match f {
        ServerFrame::Alert(a) => Some(a),
        _ => None,
    };
    let for_ann = until(&mut ann_ws, near).await;
    let for_bob = until(&mut bob_ws, near).await;
    assert_eq!(for_ann, for_bob);
    let (a, b) = if ann.id < bob.id {
        (ann.id, bob.id)
    } else {
        (bob.id, ann.id)
    };
    assert_eq!(for_ann.kind, AlertKind::Near { a, b });
    assert_eq!(for_ann.group, group.id);

    // The control plane logged it in the group: Cat sees it on /v1/events.
    let logged = next_logged_alert(&mut cat_events).await;
    assert_eq!(logged.0, format!("{:032x}", for_ann.id));
    assert_eq!(logged.1, AlertKind::Near { a, b });

    // Over HTTP, in the binary frame: Bob leaves; the third fix (older) is refused by index.
    let mut body = Vec::new();
    encode_fixes(
        &[
            fix(t0 + 3_000, 48.8584, 2.3500),
            fix(t0 + 4_000, 48.8584, 2.3500),
            fix(t0 + 1_000, 48.8584, 2.3500),
        ],
        &mut body,
    )
    .unwrap();
    let res = reqwest::Client::new()
        .post(format!("{}/v1/fixes", stack.location_url))
        .bearer_auth(&bob_token.token)
        .header("content-type", BINARY_MEDIA_TYPE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let result: BatchResult = res.json().await.unwrap();
    assert_eq!(result.accepted, 2);
    assert_eq!(result.rejected.len(), 1);
    assert_eq!(result.rejected[0].index, 2);
    // Ann sees where Bob went (the apart alert waits out the pair's minute of cooldown, which
    // the hub's tests cover with simulated time).
    until(&mut ann_ws, |f| match f {
        ServerFrame::Positions { members, .. } => members
            .into_iter()
            .find(|m| m.user == bob.id && m.lon == 2.35 && m.t == t0 + 4_000),
        _ => None,
    })
    .await;
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn approximate_members_are_seen_on_their_cell_only() {
    let stack = DevStack::start(DevConfig::ephemeral(temp_dir("loc-approx")))
        .await
        .unwrap();
    let (ann, bob, _cat, group) = three_in_a_group(&stack).await;
    // Bob keeps a location history: his own, exact, whatever the group sees.
    keep_history(&bob).await;
    let ann_token = token_for(&ann, &group, "exact").await;
    let bob_token = token_for(&bob, &group, "approx").await;
    let url = ann_token.stream_url.clone().unwrap();
    let mut ann_ws = open(&url, &ann_token.token, false).await;
    let mut bob_ws = open(&url, &bob_token.token, false).await;
    let sharing = until(&mut bob_ws, |f| match f {
        ServerFrame::Ready { sharing, .. } => Some(sharing),
        _ => None,
    })
    .await;
    assert_eq!(sharing[0].precision, Precision::Approx);
    send_fix(&mut bob_ws, fix(now_ms(), 51.501_234, -0.141_987)).await;
    let bob_seen = until(&mut ann_ws, |f| match f {
        ServerFrame::Positions { members, .. } => members.into_iter().find(|m| m.user == bob.id),
        _ => None,
    })
    .await;
    assert_eq!(bob_seen.precision, Precision::Approx);
    assert!(bob_seen.acc >= 700.0, "a cell, not the fix: {bob_seen:?}");
    assert!((bob_seen.lat, bob_seen.lon) != (51.501_234, -0.141_987));
    assert_eq!(
        (
            bob_seen.alt,
            bob_seen.speed,
            bob_seen.heading,
            bob_seen.battery
        ),
        (None, None, None, None)
    );
    // The engine handed the fix on; the control plane stored it.
    let history = stored_history(&bob).await;
    assert_eq!(
        (history.points[0].lat, history.points[0].lon),
        (51.501_234, -0.141_987)
    );
    stack.shutdown().await.unwrap();
}

/// Turns on `user`'s location history (kept 7 days).
async fn keep_history(user: &User) {
    let res = reqwest::Client::new()
        .patch(format!("{}/v1/users/me/settings", user.base))
        .bearer_auth(&user.token)
        .json(&serde_json::json!({"privacy": {"location_history_days": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// `user`'s location history as it stands (the first page).
async fn history_of(user: &User) -> LocationHistory {
    user.get("/v1/users/me/location-history").await.unwrap()
}

/// `user`'s location history once it holds something: the control plane's ingest is a task of
/// its own (and across processes a Redis stream away), hence the wait for the condition.
async fn stored_history(user: &User) -> LocationHistory {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let h = history_of(user).await;
            if !h.points.is_empty() {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a fix in the user's history")
}

#[tokio::test]
async fn bad_tokens_frames_and_floods_get_clear_answers() {
    let stack = DevStack::start(DevConfig::ephemeral(temp_dir("loc-bad")))
        .await
        .unwrap();
    let (ann, bob, cat, group) = three_in_a_group(&stack).await;
    let http = reqwest::Client::new();
    let fixes_url = format!("{}/v1/fixes", stack.location_url);

    // Tokens: none, garbage, and an access token (another kind) are 401 problems.
    for token in [None, Some("not.a.jwt"), Some(ann.token.as_str())] {
        let mut req = http
            .post(&fixes_url)
            .json(&serde_json::json!({"fixes": []}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{token:?}");
        assert_eq!(
            res.headers()["content-type"],
            protocol::api::PROBLEM_JSON,
            "{token:?}"
        );
    }
    // The control plane refuses groups the caller is not in, twice-named groups, past ends.
    let stranger = User::register(&stack.control_plane_url, "dan")
        .await
        .unwrap();
    let (status, _) = location_token(
        &stranger,
        serde_json::json!({"groups": [{"group": group.id}]}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = location_token(
        &ann,
        serde_json::json!({"groups": [{"group": group.id}, {"group": group.id}]}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = location_token(
        &ann,
        serde_json::json!({"groups": [{"group": group.id, "until": "2001-01-01T00:00:00Z"}]}),
    )
    .await;
    assert_eq!(status, 400);

    let ann_token = token_for(&ann, &group, "exact").await;
    let url = ann_token.stream_url.clone().unwrap();
    // A body that is not a batch, and a broken binary frame: 400 problems.
    let res = http
        .post(&fixes_url)
        .bearer_auth(&ann_token.token)
        .body("{\"fixes\": 3}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = http
        .post(&fixes_url)
        .bearer_auth(&ann_token.token)
        .header("content-type", BINARY_MEDIA_TYPE)
        .body(vec![0xC1, 1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // A token verified once is remembered by its whole text (a batch with it skips the
    // signature check): the same token with its payload or its signature altered is a 401
    // still, the token itself a 200.
    let parts: Vec<&str> = ann_token.token.split('.').collect();
    let flip = |s: &str| {
        let mut c: Vec<char> = s.chars().collect();
        let k = c.len() / 2;
        c[k] = if c[k] == 'A' { 'B' } else { 'A' };
        c.into_iter().collect::<String>()
    };
    let altered = [
        format!("{}.{}.{}", parts[0], flip(parts[1]), parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], flip(parts[2])),
    ];
    for (k, token) in [&ann_token.token, &altered[0], &altered[1], &ann_token.token]
        .into_iter()
        .enumerate()
    {
        let res = http
            .post(&fixes_url)
            .bearer_auth(token)
            .json(&serde_json::json!({"fixes": []}))
            .send()
            .await
            .unwrap();
        let want = if k == 0 || k == 3 { 200 } else { 401 };
        assert_eq!(res.status(), want, "token {k}");
    }
    // A fix out of range is refused by index with its reason; the stream stays open.
    let mut ws = open(&url, &ann_token.token, false).await;
    send_fix(&mut ws, fix(now_ms(), 91.0, 0.0)).await;
    let rejected = until(&mut ws, |f| match f {
        ServerFrame::Rejected { rejected } => Some(rejected),
        _ => None,
    })
    .await;
    assert_eq!(rejected[0].index, 0);
    assert!(rejected[0].reason.contains("latitude"), "{rejected:?}");
    send(&mut ws, serde_json::json!({"type": "ping"})).await;
    until(&mut ws, |f| matches!(f, ServerFrame::Pong {}).then_some(())).await;

    // Frames that do not decode close the stream with 4002.
    send(&mut ws, serde_json::json!({"type": "teleport"})).await;
    assert_eq!(close_code(&mut ws).await, CLOSE_BAD_FRAME);
    let mut ws = open(&url, &ann_token.token, false).await;
    ws.send(Message::Binary(vec![0xC1, 0].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, CLOSE_BAD_FRAME);

    // Another user's token on this stream: 4001.
    let bob_token = token_for(&bob, &group, "exact").await;
    let mut ws = open(&url, &ann_token.token, false).await;
    send(
        &mut ws,
        serde_json::json!({"type": "token", "token": bob_token.token}),
    )
    .await;
    assert_eq!(close_code(&mut ws).await, CLOSE_UNAUTHORIZED);

    // A flood: two full frames at once exceed the burst; 4029.
    let cat_token = token_for(&cat, &group, "exact").await;
    let mut ws = open(&url, &cat_token.token, false).await;
    let t0 = now_ms() - 50_000;
    for frame in 0..2 {
        let batch: Vec<WireFix> = (0..200)
            .map(|i| fix(t0 + frame * 1_000 + i, 10.0, 10.0))
            .collect();
        let mut bytes = Vec::new();
        encode_fixes(&batch, &mut bytes).unwrap();
        ws.send(Message::Binary(bytes.into())).await.unwrap();
    }
    assert_eq!(close_code(&mut ws).await, CLOSE_TOO_MANY);
    stack.shutdown().await.unwrap();
}

/// Across processes: the engine puts its alerts on a Redis stream, and a control plane (here
/// not the dev stack's) consumes them into the group log. Needs `CONVOY_TEST_REDIS_URL`.
#[tokio::test]
async fn alerts_travel_to_the_control_plane_through_redis() {
    use location_engine::server::{
        LocationServer, ServerConfig, redis_alert_sink, redis_history_sink, redis_places_listener,
    };
    let Some(url) = tests::external("CONVOY_TEST_REDIS_URL", "location alerts on Redis") else {
        return;
    };
    let prefix = format!("convoy-test-{}:", uuid::Uuid::new_v4().simple());
    let dir = temp_dir("loc-redis");
    let registry = std::sync::Arc::new(control_plane::InProcessRegistry::new());
    // With Redis, the control plane also publishes its notices of changed places there.
    let cp = control_plane::ControlPlane::new(
        &control_plane::Config {
            redis_url: Some(url.clone()),
            ..control_plane::Config::new(
                "127.0.0.1:0".parse().unwrap(),
                format!("sqlite://{}?mode=rwc", dir.join("cp.db").display()),
            )
        },
        registry,
    )
    .await
    .unwrap();
    cp.consume_redis_events(&url, &prefix).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(control_plane::serve(listener, cp, std::future::pending()));
    let engine = LocationServer::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        jwks_url: format!("{base}/.well-known/jwks.json"),
        alerts: Some(redis_alert_sink(&url, &prefix, 1_000).await.unwrap()),
        history: Some(redis_history_sink(&url, &prefix, 1_000).await.unwrap()),
        control_plane_url: Some(base.clone()),
    })
    .await
    .unwrap();
    let stream_url = format!("ws://{}/v1/stream", engine.addr());
    redis_places_listener(&url, protocol::node::REDIS_PREFIX, engine.places_hook())
        .await
        .unwrap();

    let ann = User::register(&base, "ann").await.unwrap();
    let bob = User::register(&base, "bob").await.unwrap();
    let cat = User::register(&base, "cat").await.unwrap();
    let group = ann.create_group("redis").await.unwrap();
    for u in [&bob, &cat] {
        u.accept(&ann.invite(&group).await.unwrap()).await.unwrap();
    }
    // Bob keeps a history: his token says so, and the engine puts his fixes on the history
    // stream, which the control plane consumes.
    keep_history(&bob).await;
    let url_events = format!("{}/v1/events", base.replace("http", "ws"));
    let mut cat_events = open(&url_events, &cat.token, false).await;
    send(&mut cat_events, serde_json::json!({"type": "hello"})).await;

    let mut ann_ws = open(
        &stream_url,
        &token_for(&ann, &group, "exact").await.token,
        false,
    )
    .await;
    let mut bob_ws = open(
        &stream_url,
        &token_for(&bob, &group, "exact").await.token,
        false,
    )
    .await;
    let t0 = now_ms();
    send_fix(&mut ann_ws, fix(t0, -33.8568, 151.2153)).await;
    send_fix(&mut bob_ws, fix(t0, -33.8568, 151.2353)).await;
    send_fix(&mut ann_ws, fix(t0 + 1_000, -33.8568, 151.2350)).await;
    send_fix(&mut ann_ws, fix(t0 + 2_000, -33.8568, 151.2350)).await;
    let alert = until(&mut ann_ws, |f| match f {
        ServerFrame::Alert(a) => Some(a),
        _ => None,
    })
    .await;
    let (logged, _) = next_logged_alert(&mut cat_events).await;
    assert_eq!(logged, format!("{:032x}", alert.id));

    // Ann adds a place by Bob: the notice goes through Redis pub/sub to the engine, which
    // fetches the group's places from the control plane; Bob walks in and is told.
    let near_bob = (-33.8568, 151.2300);
    let place = add_place(&base, &ann, &group, near_bob).await;
    let arrived = walk_until_arrived(
        &mut bob_ws,
        t0 + 10_000,
        (-33.8568, 151.2353),
        near_bob,
        bob.id,
        place.id,
    )
    .await;
    assert_eq!(arrived.group, group.id);

    // Bob's first fix reached his history through the Redis stream (oldest first); Ann, who
    // keeps none, has none.
    let history = stored_history(&bob).await;
    let first = &history.points[0];
    assert_eq!((first.lat, first.lon), (-33.8568, 151.2353), "{history:?}");
    let ann_history = history_of(&ann).await;
    assert!(ann_history.points.is_empty(), "{ann_history:?}");
    engine.shutdown().await;
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(protocol::location::redis_alert_stream_key(&prefix))
        .arg(protocol::location::redis_history_stream_key(&prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Walks `user` between `away` and `home` (a round: one fix at each, a second apart from
/// `t0` on), each round read back by a ping (its pong follows everything the fixes before it
/// caused), until the engine alerts that `user` arrived at `place`. The engine fetches a new
/// place beside the stream, so the first rounds may come before it has it.
async fn walk_until_arrived(
    ws: &mut Ws,
    t0: i64,
    away: (f64, f64),
    home: (f64, f64),
    user: protocol::UserId,
    place: protocol::PlaceId,
) -> LocationAlert {
    for round in 0..40 {
        let t = t0 + 1_000 * (2 * round + 1);
        send_fix(ws, fix(t, away.0, away.1)).await;
        send_fix(ws, fix(t + 1_000, home.0, home.1)).await;
        send(ws, serde_json::json!({"type": "ping"})).await;
        let alerts = until(ws, {
            let mut got = Vec::new();
            move |f| match f {
                ServerFrame::Alert(a) => {
                    got.push(a);
                    None
                }
                ServerFrame::Pong {} => Some(std::mem::take(&mut got)),
                _ => None,
            }
        })
        .await;
        let arrived = alerts.into_iter().find(|a| {
            matches!(a.kind, AlertKind::Arrived { user: u, place: p } if u == user && p == place)
        });
        if let Some(a) = arrived {
            return a;
        }
    }
    panic!("{user} never arrived at {place}");
}

/// Adds a circle of 150 m as `user` over REST.
async fn add_place(base: &str, user: &User, group: &GroupView, at: (f64, f64)) -> PlaceView {
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/groups/{}/places", group.id))
        .bearer_auth(&user.token)
        .json(&serde_json::json!({"name": "Home", "dwell_s": 0, "shape":
            {"type": "circle", "lat": at.0, "lon": at.1, "radius_m": 150}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

#[tokio::test]
async fn a_place_added_over_rest_reaches_the_engine_and_arrivals_are_alerted() {
    let stack = DevStack::start(DevConfig::ephemeral(temp_dir("loc-place")))
        .await
        .unwrap();
    let (ann, bob, cat, group) = three_in_a_group(&stack).await;
    let mut cat_events = events(&stack, &cat).await;
    let bob_token = token_for(&bob, &group, "exact").await;
    let url = bob_token.stream_url.clone().unwrap();
    let mut ws = open(&url, &bob_token.token, false).await;
    until(&mut ws, |f| {
        matches!(f, ServerFrame::Ready { .. }).then_some(())
    })
    .await;
    // Bob's first reading, 2 km from home.
    let (home_lat, home_lon) = (38.7223, -9.1393);
    let t0 = now_ms();
    send_fix(&mut ws, fix(t0, home_lat, home_lon + 0.024)).await;

    // Ann adds home over REST; the engine hears of it in this process and fetches it.
    let home = add_place(&stack.control_plane_url, &ann, &group, (home_lat, home_lon)).await;
    let away = (home_lat, home_lon + 0.024);
    let at_home = (home_lat, home_lon + 0.0005);
    let arrived = walk_until_arrived(&mut ws, t0, away, at_home, bob.id, home.id).await;
    assert_eq!(arrived.group, group.id);

    // The group's log has it: Cat (not sharing) sees the arrival on /v1/events.
    // (A `left` may come first: the place can land while Bob is at home, seeding him inside.)
    let logged = loop {
        let logged = next_logged_alert(&mut cat_events).await;
        if matches!(logged.1, AlertKind::Arrived { .. }) {
            break logged;
        }
    };
    assert_eq!(logged, (format!("{:032x}", arrived.id), arrived.kind));

    // Ann removes it (the hub's test follows a removal through the engine).
    let res = reqwest::Client::new()
        .delete(format!(
            "{}/v1/groups/{}/places/{}",
            stack.control_plane_url, group.id, home.id
        ))
        .bearer_auth(&ann.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    stack.shutdown().await.unwrap();
}
