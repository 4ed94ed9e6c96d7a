//! The `/v1/events` WebSocket over a real socket, with a WebSocket client written by others
//! (tokio-tungstenite): live events, resuming from a cursor, membership changes, close codes,
//! gaps filled from SQL between replicas, presence and typing, and fan-out through real Redis,
//! including Redis going away and coming back.

mod support;

use axum::http::StatusCode;
use control_plane::InProcessRegistry;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::api::{AuthResponse, CallView, GroupPresence, MessageView};
use protocol::ids::GroupId;
use protocol::realtime::{
    CallSignal, EventData, GroupEvent, HangupReason, IceServer, PresenceStatus, ServerFrame,
    TYPING_TTL_MS,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use support::{App, with_each_backend};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type TestApp = App<InProcessRegistry>;

/// Bounds a wait that should end at once, so a bug fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(20);

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    async fn open(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/events"))
            .await
            .unwrap();
        Self { ws }
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// Connects, says hello with `cursor`, and answers the frames before `ready` and its
    /// cursor.
    async fn connect(
        addr: SocketAddr,
        user: &AuthResponse,
        cursor: &BTreeMap<GroupId, u64>,
    ) -> (Self, Vec<ServerFrame>, BTreeMap<GroupId, u64>) {
        let mut client = Self::open(addr).await;
        client
            .send(json!({"type": "hello", "access_token": user.access_token, "cursor": cursor}))
            .await;
        let mut replay = Vec::new();
        loop {
            match client.next().await {
                ServerFrame::Ready { cursor } => return (client, replay, cursor),
                frame => replay.push(frame),
            }
        }
    }

    /// The next frame, skipping presence and typing notices (which arrive whenever other
    /// members come and go).
    async fn next(&mut self) -> ServerFrame {
        loop {
            match self.raw().await {
                ServerFrame::Presence { .. } | ServerFrame::Typing { .. } => {}
                frame => return frame,
            }
        }
    }

    /// The next frame, whatever it is.
    async fn raw(&mut self) -> ServerFrame {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the stream is open")
                .expect("a frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The next durable event, skipping marker frames.
    async fn event(&mut self) -> GroupEvent {
        loop {
            match self.next().await {
                ServerFrame::Event(event) => return event,
                ServerFrame::Markers { .. } => {}
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }

    /// The close code the server ends with.
    async fn close_code(&mut self) -> CloseCode {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("a frame in time");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => return frame.code,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }
}

fn message_body(event: &GroupEvent) -> Option<&str> {
    match &event.data {
        EventData::Message { message } => message.body.as_deref(),
        _ => None,
    }
}

async fn say(app: &TestApp, g: &str, user: &AuthResponse, id: &str, body: &str) -> MessageView {
    app.say(g, user, id, body).await.parse(StatusCode::CREATED)
}

#[tokio::test]
async fn a_client_gets_events_live_and_resumes_from_its_cursor_without_loss_or_repeats() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let addr = app.serve().await;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        let gid: GroupId = g.parse().unwrap();

        // No cursor: the group replays from when ann joined (she created it).
        let (mut ws, replay, cursor) = Client::connect(addr, &ann, &BTreeMap::new()).await;
        let kinds: Vec<_> = replay
            .iter()
            .map(|f| match f {
                ServerFrame::Event(e) => (e.seq, e.data.kind()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, [(1, "member_joined"), (2, "member_joined")]);
        assert_eq!(cursor[&gid], 2);

        let m1 = say(&app, &g, &bob, "b1", "on the A7").await;
        let live = ws.event().await;
        assert_eq!((live.seq, message_body(&live)), (m1.id, Some("on the A7")));
        drop(ws);

        // While ann is away: messages, an edit, a delete.
        let m2 = say(&app, &g, &bob, "b2", "exit 24").await;
        let m3 = say(&app, &g, &bob, "b3", "fuel stop").await;
        app.patch(
            &format!("/v1/groups/{g}/messages/{}", m2.id),
            &bob.access_token,
            json!({"body": "exit 25"}),
        )
        .await
        .parse::<MessageView>(StatusCode::OK);
        let reply = app
            .delete(&format!("/v1/groups/{g}/messages/{}", m3.id), &bob.access_token)
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);

        let resume = BTreeMap::from([(gid, live.seq)]);
        let (mut ws, replay, cursor) = Client::connect(addr, &ann, &resume).await;
        let events: Vec<GroupEvent> = replay
            .into_iter()
            .map(|f| match f {
                ServerFrame::Event(e) => e,
                other => panic!("{other:?}"),
            })
            .collect();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (m1.id + 1..=m1.id + 4).collect::<Vec<_>>());
        // A message replays as it is now: m2 edited, m3 a tombstone.
        assert_eq!(message_body(&events[0]), Some("exit 25"));
        assert_eq!(message_body(&events[1]), None);
        assert!(matches!(
            &events[2].data,
            EventData::MessageEdited { message_id, body: Some(b), .. } if *message_id == m2.id && b == "exit 25"
        ));
        assert!(matches!(
            &events[3].data,
            EventData::MessageDeleted { message_id } if *message_id == m3.id
        ));
        assert_eq!(cursor[&gid], m1.id + 4);

        // Live again; markers reach the other members' connections.
        let m4 = say(&app, &g, &bob, "b4", "arrived").await;
        assert_eq!(ws.event().await.seq, m4.id);
        let (mut bob_ws, _, _) = Client::connect(addr, &bob, &cursor).await;
        ws.send(json!({"type": "markers", "group": gid, "read": m4.id}))
            .await;
        match bob_ws.next().await {
            ServerFrame::Markers {
                user, read_upto, ..
            } => assert_eq!((user, read_upto), (ann.user.id, m4.id)),
            other => panic!("{other:?}"),
        }
        ws.send(json!({"type": "ping"})).await;
        loop {
            match ws.next().await {
                ServerFrame::Pong => break,
                ServerFrame::Markers { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn joining_removal_and_deletion_reach_an_open_connection() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let addr = app.serve().await;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let g = app.group(&ann).await;
        let gid: GroupId = g.parse().unwrap();
        say(&app, &g, &ann, "a0", "before bob").await;

        // Bob is in no group yet; joining starts his stream at his own join.
        let (mut ws, replay, cursor) = Client::connect(addr, &bob, &BTreeMap::new()).await;
        assert!(replay.is_empty() && cursor.is_empty());
        app.join(&g, &ann, &bob).await;
        let joined = ws.event().await;
        assert!(matches!(joined.data, EventData::MemberJoined { user, .. } if user == bob.user.id));
        let m = say(&app, &g, &ann, "a1", "welcome").await;
        assert_eq!(ws.event().await.seq, m.id);

        // Renamed, then bob removed: he gets the removal, then nothing more of the group.
        app.patch(&format!("/v1/groups/{g}"), &ann.access_token, json!({"name": "Trip"}))
            .await
            .parse::<protocol::api::GroupView>(StatusCode::OK);
        assert!(matches!(ws.event().await.data, EventData::GroupUpdated { details } if details.name == "Trip"));
        let reply = app
            .delete(&format!("/v1/groups/{g}/members/{}", bob.user.id), &ann.access_token)
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        let left = ws.event().await;
        assert!(matches!(left.data, EventData::MemberLeft { user, removed_by: Some(by) } if user == bob.user.id && by == ann.user.id));
        assert_eq!(ws.next().await, ServerFrame::Removed { group: gid });
        say(&app, &g, &ann, "a2", "bob cannot see this").await;

        // Reconnecting with the old cursor: the group is announced as gone, nothing replays.
        ws.send(json!({"type": "ping"})).await;
        assert_eq!(ws.next().await, ServerFrame::Pong, "nothing of the group came first");
        let (_ws, replay, cursor) =
            Client::connect(addr, &bob, &BTreeMap::from([(gid, left.seq)])).await;
        assert_eq!(replay, [ServerFrame::Removed { group: gid }]);
        assert!(cursor.is_empty());

        // Deletion reaches the members.
        let (mut ann_ws, _, _) = Client::connect(addr, &ann, &BTreeMap::new()).await;
        let reply = app.delete(&format!("/v1/groups/{g}"), &ann.access_token).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        assert!(matches!(ann_ws.event().await.data, EventData::GroupDeleted));
        assert_eq!(ann_ws.next().await, ServerFrame::Removed { group: gid });
    })
    .await;
}

#[tokio::test]
async fn voice_sessions_and_who_joins_them_reach_the_group_stream() {
    use control_plane::NodeRegistry as _;
    use protocol::api::SessionAllocation;
    use protocol::events::{ParticipantChange, SessionEvent};
    use protocol::node::NodeState;
    use protocol::{NodeId, ParticipantId};
    with_each_backend(InProcessRegistry::new, |app| async move {
        let addr = app.serve().await;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        let (mut ws, _, start) = Client::connect(addr, &bob, &BTreeMap::new()).await;
        app.registry
            .heartbeat(support::node("eu-1", "eu", 0.1, NodeState::Serving));

        let alloc: SessionAllocation = app.allocate(&g, &ann).await.parse(StatusCode::CREATED);
        let session = alloc.session.id;
        let started = ws.event().await;
        assert!(
            matches!(&started.data, EventData::SessionStarted { session: s } if s.id == session && s.node_id.as_str() == "eu-1"),
            "{started:?}"
        );
        assert_eq!(started.actor, ann.user.id);
        // Joining the open session starts nothing new.
        app.allocate(&g, &bob).await.parse::<SessionAllocation>(StatusCode::OK);

        // The node reports ann joining (twice: a redelivery), muting, and leaving.
        let participant = ParticipantId::from_uuid(uuid::Uuid::now_v7());
        let report = |change| SessionEvent {
            node: NodeId::new("eu-1").unwrap(),
            session,
            participant,
            user: ann.user.id,
            at_ms: 1_700_000_000_000,
            change,
        };
        app.events.submit(report(ParticipantChange::Joined));
        app.events.submit(report(ParticipantChange::Joined));
        app.events.submit(report(ParticipantChange::Muted {
            microphone: true,
            speaker: false,
        }));
        app.events.submit(report(ParticipantChange::Left {
            reason: "hung up".into(),
        }));
        let joined = ws.event().await;
        assert!(matches!(joined.data, EventData::ParticipantJoined { session: s, participant: p, user } if s == session && p == participant && user == ann.user.id));
        let left = ws.event().await;
        assert!(matches!(left.data, EventData::ParticipantLeft { session: s, participant: p, user } if s == session && p == participant && user == ann.user.id));
        assert_eq!(
            (joined.seq, left.seq),
            (started.seq + 1, started.seq + 2),
            "one event per change: the repeated join and the mute add none"
        );

        // They are in the log: a client that reconnects from before them reads them back.
        let (_ws, replay, _) = Client::connect(addr, &bob, &start).await;
        let kinds: Vec<&str> = replay
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Event(e) => Some(e.data.kind()),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, ["session_started", "participant_joined", "participant_left"]);
    })
    .await;
}

#[tokio::test]
async fn bad_tokens_and_frames_get_close_codes_and_never_a_hang() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let addr = app.serve().await;
        let ann = app.register("ann").await;

        let mut ws = Client::open(addr).await;
        ws.send(json!({"type": "hello"})).await;
        assert_eq!(ws.close_code().await, CloseCode::from(4001));

        let mut ws = Client::open(addr).await;
        ws.send(json!({"type": "hello", "access_token": "not.a.token"}))
            .await;
        assert_eq!(ws.close_code().await, CloseCode::from(4001));

        let mut ws = Client::open(addr).await;
        ws.ws
            .send(Message::Text("{\"type\":\"hel".into()))
            .await
            .unwrap();
        assert_eq!(ws.close_code().await, CloseCode::from(4002));

        let (mut ws, _, _) = Client::connect(addr, &ann, &BTreeMap::new()).await;
        ws.ws
            .send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        assert_eq!(ws.close_code().await, CloseCode::from(4002));

        let (mut ws, _, _) = Client::connect(addr, &ann, &BTreeMap::new()).await;
        ws.send(json!({"type": "hello", "access_token": ann.access_token}))
            .await;
        assert_eq!(ws.close_code().await, CloseCode::from(4002), "hello once");

        // Markers for a group the caller is not in.
        let (mut ws, _, _) = Client::connect(addr, &ann, &BTreeMap::new()).await;
        ws.send(json!({"type": "markers", "group": uuid::Uuid::now_v7(), "read": 1}))
            .await;
        assert_eq!(ws.close_code().await, CloseCode::from(4002));

        // A bad bearer header is refused before the upgrade, as problem+json.
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}/v1/events"),
            )
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            }
            other => panic!("expected a 401, got {other:?}"),
        }
        // A good one needs no token in the hello.
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}/v1/events"),
            )
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", ann.access_token).parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut ws = Client { ws };
        ws.send(json!({"type": "hello"})).await;
        assert!(matches!(ws.next().await, ServerFrame::Ready { .. }));

        // A signed-out session's access token opens no socket, in the hello or the header.
        let bye = app
            .call(
                axum::http::Method::POST,
                "/v1/auth/logout",
                Some(&ann.access_token),
                None,
            )
            .await;
        assert_eq!(bye.status, StatusCode::NO_CONTENT, "{bye:?}");
        let mut ws = Client::open(addr).await;
        ws.send(json!({"type": "hello", "access_token": ann.access_token}))
            .await;
        assert_eq!(ws.close_code().await, CloseCode::from(4001));
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}/v1/events"),
            )
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", ann.access_token).parse().unwrap(),
        );
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            }
            other => panic!("expected a 401, got {other:?}"),
        }
    })
    .await;
}

/// Signs `user` in again: another device, another sign-in session.
async fn another_device(app: &TestApp, user: &AuthResponse) -> AuthResponse {
    let body = json!({"email": user.user.email, "password": support::PASSWORD});
    app.call(axum::http::Method::POST, "/v1/auth/login", None, Some(body))
        .await
        .parse(StatusCode::OK)
}

#[tokio::test]
async fn signing_a_session_out_closes_its_open_connections_and_no_others() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let addr = app.serve().await;
        let laptop = app.register("ann").await;
        let bob = app.register("bob").await;
        let g = app.group(&laptop).await;
        app.join(&g, &laptop, &bob).await;
        let phone = another_device(&app, &laptop).await;
        let tablet = another_device(&app, &laptop).await;
        let none = BTreeMap::new();
        let (mut on_laptop, _, _) = Client::connect(addr, &laptop, &none).await;
        let (mut on_phone, _, _) = Client::connect(addr, &phone, &none).await;
        let (mut on_tablet, _, _) = Client::connect(addr, &tablet, &none).await;
        let (mut on_bob, _, _) = Client::connect(addr, &bob, &none).await;

        // The phone signs itself out: its connection ends now, not at the token's expiry.
        let bye = app
            .call(
                axum::http::Method::POST,
                "/v1/auth/logout",
                Some(&phone.access_token),
                None,
            )
            .await;
        assert_eq!(bye.status, StatusCode::NO_CONTENT, "{bye:?}");
        assert_eq!(on_phone.close_code().await, CloseCode::from(4001));
        // The laptop ends every other session: the tablet's connection ends, its own stays.
        let ended: Value = app
            .delete("/v1/auth/sessions", &laptop.access_token)
            .await
            .parse(StatusCode::OK);
        assert_eq!(ended["revoked"], 1, "{ended}");
        assert_eq!(on_tablet.close_code().await, CloseCode::from(4001));
        let m = say(&app, &g, &bob, "b1", "still there?").await;
        let event = on_laptop.event().await;
        assert_eq!(
            (event.seq, message_body(&event)),
            (m.id, Some("still there?"))
        );
        assert_eq!(
            on_bob.event().await.seq,
            m.id,
            "another user's connection stays"
        );
    })
    .await;
}

async fn presence(app: &TestApp, g: &str, user: &AuthResponse) -> GroupPresence {
    app.get(&format!("/v1/groups/{g}/presence"), &user.access_token)
        .await
        .parse(StatusCode::OK)
}

#[tokio::test]
async fn presence_and_typing_reach_the_members_and_hidden_users_stay_offline() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let addr = app.serve().await;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let cat = app.register("cat").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        let gid: GroupId = g.parse().unwrap();
        let status = |p: &GroupPresence, u: &AuthResponse| {
            p.members
                .iter()
                .find(|m| m.user_id == u.user.id)
                .map(|m| m.status)
        };

        let before = presence(&app, &g, &bob).await;
        assert_eq!(status(&before, &ann), Some(PresenceStatus::Offline));
        assert_eq!(status(&before, &cat), None, "only members are listed");
        assert_eq!(before.typing, Some(vec![]));
        let (mut on_b, _, _) = Client::connect(addr, &bob, &BTreeMap::new()).await;
        let (mut on_a, _, _) = Client::connect(addr, &ann, &BTreeMap::new()).await;
        assert_eq!(
            on_b.raw().await,
            ServerFrame::Presence {
                user: ann.user.id,
                status: PresenceStatus::Online
            }
        );
        let now = presence(&app, &g, &bob).await;
        assert_eq!(status(&now, &ann), Some(PresenceStatus::Online));
        assert_eq!(status(&now, &bob), Some(PresenceStatus::Online));
        // cat shares no group with them: her coming online reaches nobody. The next frame bob
        // gets is the message sent after she connected.
        let (_on_c, _, _) = Client::connect(addr, &cat, &BTreeMap::new()).await;
        let m = say(&app, &g, &ann, "m1", "hi").await;
        assert!(matches!(on_b.raw().await, ServerFrame::Event(e) if e.seq == m.id));

        // Typing: bob sees it start and stop; the REST view agrees meanwhile.
        on_a.send(json!({"type": "typing", "group": gid, "typing": true}))
            .await;
        assert_eq!(
            on_b.raw().await,
            ServerFrame::Typing {
                group: gid,
                user: ann.user.id,
                typing: true,
                expires_in_ms: TYPING_TTL_MS
            }
        );
        assert_eq!(
            presence(&app, &g, &bob).await.typing,
            Some(vec![ann.user.id])
        );
        on_a.send(json!({"type": "typing", "group": gid, "typing": false}))
            .await;
        assert!(matches!(
            on_b.raw().await,
            ServerFrame::Typing { typing: false, .. }
        ));
        assert_eq!(presence(&app, &g, &bob).await.typing, Some(vec![]));
        // Ann's own connection got none of her own notices: its next frame is this pong.
        on_a.send(json!({"type": "ping"})).await;
        loop {
            match on_a.raw().await {
                ServerFrame::Pong => break,
                ServerFrame::Event(_) | ServerFrame::Presence { .. } => {}
                other => panic!("ann got {other:?}"),
            }
        }

        // Ann hides her presence and leaves: the close is announced (she was shown when she
        // connected); when she comes back hidden, nothing is, and she stays offline.
        app.patch(
            "/v1/users/me/settings",
            &ann.access_token,
            json!({"privacy": {"show_presence": false}}),
        )
        .await
        .parse::<protocol::account::UserSettings>(StatusCode::OK);
        on_a.ws.close(None).await.unwrap();
        assert_eq!(
            on_b.raw().await,
            ServerFrame::Presence {
                user: ann.user.id,
                status: PresenceStatus::Offline
            }
        );
        let (_on_a, _, _) = Client::connect(addr, &ann, &BTreeMap::new()).await;
        let m = say(&app, &g, &ann, "m2", "back, hidden").await;
        assert!(matches!(on_b.raw().await, ServerFrame::Event(e) if e.seq == m.id));
        assert_eq!(
            status(&presence(&app, &g, &bob).await, &ann),
            Some(PresenceStatus::Offline)
        );

        // Typing in a group that is not the caller's closes the connection.
        let (mut on_c, _, _) = Client::connect(addr, &cat, &BTreeMap::new()).await;
        on_c.send(json!({"type": "typing", "group": gid, "typing": true}))
            .await;
        assert_eq!(on_c.close_code().await, CloseCode::from(4002));
        app.get(&format!("/v1/groups/{g}/presence"), &cat.access_token)
            .await
            .problem(StatusCode::NOT_FOUND);
    })
    .await;
}

/// Checks a TURN REST credential: `<expiry>:<user>` and base64(HMAC-SHA1(secret, username)).
fn check_turn(server: &IceServer, user: &AuthResponse) {
    use base64::Engine as _;
    use hmac::Mac as _;
    let username = server.username.as_deref().expect("a TURN username");
    let (expiry, who) = username.split_once(':').unwrap();
    assert_eq!(who, user.user.id.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > now && expiry <= now + 3600, "{expiry} vs {now}");
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(support::TURN_SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(server.credential.as_deref(), Some(expected.as_str()));
}

#[tokio::test]
async fn call_signals_go_between_two_members_with_turn_credentials_for_each() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let addr = app.serve().await;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let cat = app.register("cat").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;

        let call: CallView = app
            .post("/v1/calls", &ann.access_token, json!({"to": bob.user.id}))
            .await
            .parse(StatusCode::CREATED);
        assert_eq!(call.to, bob.user.id);
        assert_eq!(call.ice_servers.len(), 2, "STUN and TURN");
        assert_eq!(call.ice_servers[0].urls, vec!["stun:stun.test.invalid:3478"]);
        check_turn(&call.ice_servers[1], &ann);
        app.post("/v1/calls", &ann.access_token, json!({"to": cat.user.id}))
            .await
            .problem(StatusCode::NOT_FOUND);
        app.post("/v1/calls", &ann.access_token, json!({"to": ann.user.id}))
            .await
            .problem(StatusCode::BAD_REQUEST);

        let (mut on_a, _, _) = Client::connect(addr, &ann, &BTreeMap::new()).await;
        let id = call.call_id;
        let offer = json!({"type": "call", "to": bob.user.id, "call": id,
            "signal": {"kind": "offer", "sdp": "v=0 offer"}});
        // Bob is not connected: the server hangs up for him.
        on_a.send(offer.clone()).await;
        assert_eq!(
            on_a.next().await,
            ServerFrame::Call {
                from: bob.user.id,
                call: id,
                signal: CallSignal::Hangup {
                    reason: HangupReason::Offline
                },
                ice_servers: None,
            }
        );

        // Bob on two devices: both ring, with bob's own TURN credentials.
        let (mut phone, _, _) = Client::connect(addr, &bob, &BTreeMap::new()).await;
        let (mut laptop, _, _) = Client::connect(addr, &bob, &BTreeMap::new()).await;
        on_a.send(offer).await;
        for device in [&mut phone, &mut laptop] {
            let ServerFrame::Call {
                from,
                call,
                signal,
                ice_servers,
            } = device.next().await
            else {
                panic!("expected the offer")
            };
            assert_eq!((from, call), (ann.user.id, id));
            assert_eq!(
                signal,
                CallSignal::Offer {
                    sdp: "v=0 offer".into()
                }
            );
            check_turn(&ice_servers.unwrap()[1], &bob);
        }
        phone
            .send(json!({"type": "call", "to": ann.user.id, "call": id,
                "signal": {"kind": "answer", "sdp": "v=0 answer"}}))
            .await;
        assert_eq!(
            on_a.next().await,
            ServerFrame::Call {
                from: bob.user.id,
                call: id,
                signal: CallSignal::Answer {
                    sdp: "v=0 answer".into()
                },
                ice_servers: None,
            }
        );
        // The laptop stops ringing; the phone that answered hears nothing of it.
        assert_eq!(
            laptop.next().await,
            ServerFrame::Call {
                from: ann.user.id,
                call: id,
                signal: CallSignal::Hangup {
                    reason: HangupReason::AnsweredElsewhere
                },
                ice_servers: None,
            }
        );
        phone.send(json!({"type": "ping"})).await;
        assert_eq!(phone.next().await, ServerFrame::Pong, "nothing came before the pong");
        on_a.send(json!({"type": "call", "to": bob.user.id, "call": id,
            "signal": {"kind": "candidate", "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 50000 typ host",
                "sdpMid": "0", "sdpMLineIndex": 0}}))
            .await;
        let ServerFrame::Call { signal, .. } = phone.next().await else {
            panic!("expected the candidate")
        };
        assert!(matches!(signal, CallSignal::Candidate { sdp_m_line_index: Some(0), .. }));
        on_a.send(json!({"type": "call", "to": bob.user.id, "call": id,
            "signal": {"kind": "hangup", "reason": "ended"}}))
            .await;
        let ServerFrame::Call { signal, .. } = phone.next().await else {
            panic!("expected the hangup")
        };
        assert_eq!(signal, CallSignal::Hangup { reason: HangupReason::Ended });

        // Signals to someone outside the caller's groups close the connection.
        on_a.send(json!({"type": "call", "to": cat.user.id, "call": id,
            "signal": {"kind": "offer", "sdp": "v=0"}}))
            .await;
        assert_eq!(on_a.close_code().await, CloseCode::from(4002));
    })
    .await;
}

/// Another control plane on the scenario's database, served on a loopback port.
async fn replica(app: &TestApp, redis_url: Option<&str>) -> SocketAddr {
    support::serve_replica(&control_plane::Config {
        redis_url: redis_url.map(str::to_owned),
        ..support::config(&app.database_url)
    })
    .await
}

#[tokio::test]
async fn without_a_bus_a_replica_fills_the_gap_from_sql_at_the_next_event() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        // Two replicas that share only the database.
        let here = app.serve().await;
        let there = replica(&app, None).await;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        let (mut ws, _, _) = Client::connect(here, &ann, &BTreeMap::new()).await;

        let http = reqwest::Client::new();
        let posted: MessageView = http
            .post(format!("http://{there}/v1/groups/{g}/messages"))
            .bearer_auth(&bob.access_token)
            .json(&json!({"client_msg_id": "b1", "body": "sent on the other replica"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let next = say(&app, &g, &bob, "b2", "sent here").await;
        assert_eq!(next.id, posted.id + 1);
        let first = ws.event().await;
        assert_eq!(
            (first.seq, message_body(&first)),
            (posted.id, Some("sent on the other replica"))
        );
        assert_eq!(ws.event().await.seq, next.id);
    })
    .await;
}

/// `CONVOY_TEST_REDIS_URL`, or `None` (failing under `CONVOY_REQUIRE_EXTERNAL=1`).
fn redis_url() -> Option<String> {
    support::external("CONVOY_TEST_REDIS_URL", "Redis fan-out")
}

#[tokio::test]
async fn replicas_fan_out_through_redis() {
    let Some(url) = redis_url() else { return };
    with_each_backend(InProcessRegistry::new, move |app| {
        let url = url.clone();
        async move {
            let a = replica(&app, Some(&url)).await;
            let b = replica(&app, Some(&url)).await;
            let ann = app.register("ann").await;
            let bob = app.register("bob").await;
            let g = app.group(&ann).await;
            app.join(&g, &ann, &bob).await;
            let (mut ws, _, _) = Client::connect(a, &ann, &BTreeMap::new()).await;
            // Whatever bob sends on b reaches ann on a live, in order.
            for i in 0..20 {
                let reply = reqwest::Client::new()
                    .post(format!("http://{b}/v1/groups/{g}/messages"))
                    .bearer_auth(&bob.access_token)
                    .json(&json!({"client_msg_id": format!("b{i}"), "body": format!("#{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(reply.status(), StatusCode::CREATED);
                let event = ws.event().await;
                assert_eq!(message_body(&event), Some(format!("#{i}").as_str()));
            }
            // Signing out on b closes ann's connection on a.
            let bye = reqwest::Client::new()
                .post(format!("http://{b}/v1/auth/logout"))
                .bearer_auth(&ann.access_token)
                .send()
                .await
                .unwrap();
            assert_eq!(bye.status(), StatusCode::NO_CONTENT);
            assert_eq!(ws.close_code().await, CloseCode::from(4001));
        }
    })
    .await;
}

/// A Redis server of this test's own on a free loopback port, so stopping it touches no
/// other test.
struct OwnRedis {
    port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt install redis-server)");
        Self { port, child }
    }

    async fn ready(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        for _ in 0..200 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn with_redis_gone_a_replica_fans_out_locally_and_the_others_catch_up_when_it_returns() {
    if redis_url().is_none() {
        return;
    }
    with_each_backend(InProcessRegistry::new, |app| async move {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut redis = OwnRedis::start(port);
        redis.ready().await;
        let a = replica(&app, Some(&redis.url())).await;
        let b = replica(&app, Some(&redis.url())).await;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        let (mut on_a, _, _) = Client::connect(a, &ann, &BTreeMap::new()).await;
        let (mut on_b, _, _) = Client::connect(b, &bob, &BTreeMap::new()).await;
        let phone = another_device(&app, &ann).await;
        let (mut phone_on_a, _, _) = Client::connect(a, &phone, &BTreeMap::new()).await;
        let post = |i: u32| {
            let token = bob.access_token.clone();
            let g = g.clone();
            async move {
                let reply = reqwest::Client::new()
                    .post(format!("http://{b}/v1/groups/{g}/messages"))
                    .bearer_auth(token)
                    .json(&json!({"client_msg_id": format!("b{i}"), "body": format!("#{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    reply.status(),
                    StatusCode::CREATED,
                    "sends work without Redis"
                );
                reply.json::<MessageView>().await.unwrap()
            }
        };
        let m0 = post(0).await;
        assert_eq!(on_a.event().await.seq, m0.id);
        assert_eq!(on_b.event().await.seq, m0.id);
        // Presence is shared through Redis: b sees ann, who is connected to a.
        let http = reqwest::Client::new();
        let presence_on_b = || {
            let (http, token, g) = (http.clone(), bob.access_token.clone(), g.clone());
            async move {
                http.get(format!("http://{b}/v1/groups/{g}/presence"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap()
                    .json::<GroupPresence>()
                    .await
                    .unwrap()
            }
        };
        let seen = presence_on_b().await;
        assert!(
            seen.members
                .iter()
                .all(|m| m.status == PresenceStatus::Online),
            "{seen:?}"
        );

        redis.stop();
        // Without Redis, presence is unknown rather than a guess.
        let blind = presence_on_b().await;
        assert!(
            blind
                .members
                .iter()
                .all(|m| m.status == PresenceStatus::Unknown),
            "{blind:?}"
        );
        assert_eq!(blind.typing, None);
        // Redis is gone: b still answers and its own connections still get events live.
        let m1 = post(1).await;
        let m2 = post(2).await;
        assert_eq!(on_b.event().await.seq, m1.id);
        assert_eq!(on_b.event().await.seq, m2.id);
        // b says it is degraded (the subscription ended), not down.
        let mut degraded = false;
        for _ in 0..400 {
            let ready = reqwest::get(format!("http://{b}/readyz")).await.unwrap();
            assert_eq!(ready.status(), StatusCode::OK);
            let ready: Value = ready.json().await.unwrap();
            if ready["redis"] == "degraded" {
                assert_eq!(ready["status"], "degraded");
                degraded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(degraded, "readyz never reported Redis degraded");
        // The phone signs out on b meanwhile: a cannot hear of it on the bus.
        let bye = reqwest::Client::new()
            .post(format!("http://{b}/v1/auth/logout"))
            .bearer_auth(&phone.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(bye.status(), StatusCode::NO_CONTENT);

        // Redis returns (empty, as Redis keeps nothing here): a resubscribes, resyncs from
        // SQL and ann gets both messages, in order, with nothing published again.
        let _redis = OwnRedis::start(port);
        let first = on_a.event().await;
        let second = on_a.event().await;
        assert_eq!((first.seq, second.seq), (m1.id, m2.id));
        assert_eq!(message_body(&second), Some("#2"));
        // The resync looked at the phone's session too: its connection on a is closed.
        assert_eq!(phone_on_a.close_code().await, CloseCode::from(4001));
        // And live fan-out works again.
        let m3 = post(3).await;
        assert_eq!(on_a.event().await.seq, m3.id);
    })
    .await;
}

#[tokio::test]
async fn music_reports_are_logged_once_latest_first_and_only_those_allowed_control_it() {
    use control_plane::NodeRegistry as _;
    use protocol::api::{AttachmentView, SessionAllocation};
    use protocol::events::{ParticipantChange, SessionEvent};
    use protocol::music::{MusicState, MusicTrack};
    use protocol::node::NodeState;
    use protocol::{NodeId, ParticipantId};
    with_each_backend(InProcessRegistry::new, |app| async move {
        let addr = app.serve().await;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let carol = app.register("carol").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        app.registry
            .heartbeat(support::node("eu-1", "eu", 0.1, NodeState::Serving));
        let sessions = format!("/v1/groups/{g}/sessions");
        let alloc: SessionAllocation = app
            .post(&sessions, &bob.access_token, json!({"kind": "music"}))
            .await
            .parse(StatusCode::CREATED);
        let session = alloc.session.id;
        // The group shares music (the default): a member's join token lets them control it.
        let claims = |token: &str| -> Value {
            use base64::Engine as _;
            let payload = token.split('.').nth(1).unwrap();
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        assert_eq!(claims(&alloc.join_token)["music_ctl"], true);
        let (mut ws, _, _) = Client::connect(addr, &ann, &BTreeMap::new()).await;

        // The node reports bob playing a track, the same report again, a pause, and late an
        // older report (another control plane took it first, say).
        let track = MusicTrack {
            id: protocol::ids::AttachmentId::from_uuid(uuid::Uuid::from_u128(5)),
            name: "song.mp3".into(),
            duration_ms: 180_000,
        };
        let state = |playing, position_ms, at_ms| MusicState {
            playing,
            current: Some(track.clone()),
            position_ms,
            queue: vec![],
            at_ms: Some(at_ms),
        };
        let report = |at_ms, music: MusicState| SessionEvent {
            node: NodeId::new("eu-1").unwrap(),
            session,
            participant: ParticipantId::from_uuid(uuid::Uuid::now_v7()),
            user: bob.user.id,
            at_ms,
            change: ParticipantChange::Music { state: music },
        };
        let (t1, t2, t3) = (1_800_000_000_000, 1_800_000_002_000, 1_800_000_003_000);
        app.events.submit(report(t1, state(true, 0, t1)));
        app.events.submit(report(t1, state(true, 0, t1)));
        app.events.submit(report(t3, state(false, 3_000, t3)));
        app.events.submit(report(t2, state(true, 2_000, t2)));
        let mut logged = Vec::new();
        while logged.len() < 2 {
            let e = ws.event().await;
            if let EventData::Music { session: s, music } = e.data {
                assert_eq!(s, session);
                assert_eq!(e.actor, bob.user.id);
                logged.push(music);
            }
        }
        assert_eq!(logged, [state(true, 0, t1), state(false, 3_000, t3)]);
        // The music as it is now: the latest report, not the last to arrive.
        let uri = format!("/v1/sessions/{session}/music");
        let now: MusicState = app.get(&uri, &bob.access_token).await.parse(StatusCode::OK);
        assert_eq!(now, state(false, 3_000, t3));
        // A message after them shows nothing else was logged in between.
        app.say(&g, &ann, "m1", "after the music").await;
        assert!(matches!(ws.event().await.data, EventData::Message { .. }));

        // Who may do what.
        let control = |user: &AuthResponse, body: Value| {
            let (uri, token) = (uri.clone(), user.access_token.clone());
            let app = &app;
            async move { app.post(&uri, &token, body).await }
        };
        app.get(&uri, &carol.access_token)
            .await
            .problem(StatusCode::NOT_FOUND);
        control(&carol, json!({"action": "play"}))
            .await
            .problem(StatusCode::NOT_FOUND);
        control(
            &bob,
            json!({"action": "seek", "position_ms": 99_999_999_999u64}),
        )
        .await
        .problem(StatusCode::BAD_REQUEST);
        control(&bob, json!({"action": "louder"}))
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY);
        // Allowed, but the node (eu-1.test) cannot be reached.
        control(&bob, json!({"action": "pause"}))
            .await
            .problem(StatusCode::BAD_GATEWAY);
        // Queueing: only audio files of the group.
        let png = {
            let request = axum::http::Request::builder()
                .method(axum::http::Method::POST)
                .uri(format!("/v1/groups/{g}/attachments?name=a.png"))
                .header("authorization", format!("Bearer {}", bob.access_token))
                .header("content-type", "image/png")
                .body(axum::body::Body::from(b"\x89PNG\r\n\x1a\n0000".to_vec()))
                .unwrap();
            app.send(request)
                .await
                .parse::<AttachmentView>(StatusCode::CREATED)
        };
        let refused = control(&bob, json!({"action": "queue", "track": png.id}))
            .await
            .problem(StatusCode::BAD_REQUEST);
        assert!(refused.detail.unwrap().contains("not an audio file"));
        // Another member's upload that no message took is not theirs to queue.
        control(&ann, json!({"action": "queue", "track": png.id}))
            .await
            .problem(StatusCode::NOT_FOUND);
        control(
            &bob,
            json!({"action": "queue", "track": uuid::Uuid::new_v4()}),
        )
        .await
        .problem(StatusCode::NOT_FOUND);
        // A voice session has no music.
        let voice: SessionAllocation = app.allocate(&g, &ann).await.parse(StatusCode::CREATED);
        let voice_uri = format!("/v1/sessions/{}/music", voice.session.id);
        app.post(&voice_uri, &ann.access_token, json!({"action": "play"}))
            .await
            .problem(StatusCode::CONFLICT);
        // The admin stops sharing music: members may no longer control it, nor get the right.
        app.patch(
            &format!("/v1/groups/{g}"),
            &ann.access_token,
            json!({"settings": {"music_sharing": false}}),
        )
        .await;
        control(&bob, json!({"action": "play"}))
            .await
            .problem(StatusCode::FORBIDDEN);
        control(&ann, json!({"action": "play"}))
            .await
            .problem(StatusCode::BAD_GATEWAY);
        let again: SessionAllocation = app
            .post(&sessions, &bob.access_token, json!({"kind": "music"}))
            .await
            .parse(StatusCode::OK);
        assert_eq!(claims(&again.join_token)["music_ctl"], false);
    })
    .await;
}
