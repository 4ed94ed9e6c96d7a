//! Notifications through Web Push to a local push endpoint written with others' code
//! (`tests/clients/push_endpoint.py`: VAPID checked with `cryptography`, bodies decrypted with
//! `http_ece`), on SQLite and PostgreSQL: offline members get the message, connected ones do
//! not, failures are retried, and a subscription the service calls gone is forgotten.
//!
//! Needs `CONVOY_TEST_PYTHON`: a Python with `http-ece` and `cryptography`
//! (`tests/clients/requirements.txt`).

mod support;

use axum::http::StatusCode;
use control_plane::InProcessRegistry;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::account::{DeviceList, VapidPublicKey};
use protocol::api::{AuthResponse, MessageView};
use protocol::realtime::{PresenceStatus, ServerFrame};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use support::{App, with_each_backend};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio_tungstenite::tungstenite::Message;

type TestApp = App<InProcessRegistry>;

/// Bounds every wait, so a push that never comes fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

fn python() -> Option<String> {
    support::external("CONVOY_TEST_PYTHON", "Web Push")
}

/// The push endpoint process and what it printed.
struct Endpoint {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    port: u16,
    p256dh: String,
    auth: String,
    /// Requests read but not yet asked for.
    pending: Vec<Value>,
}

impl Endpoint {
    async fn start(python: &str) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/clients/push_endpoint.py"
        );
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the push endpoint starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&next_line(&mut lines).await).unwrap();
        Self {
            _child: child,
            lines,
            port: u16::try_from(first["port"].as_u64().unwrap()).unwrap(),
            p256dh: first["p256dh"].as_str().unwrap().to_owned(),
            auth: first["auth"].as_str().unwrap().to_owned(),
            pending: Vec::new(),
        }
    }

    fn subscription(&self, path: &str) -> Value {
        json!({"platform": "web", "subscription": {
            "endpoint": format!("http://127.0.0.1:{}{path}", self.port),
            "keys": {"p256dh": self.p256dh, "auth": self.auth}}})
    }

    /// The next request the endpoint got on `path`.
    async fn next_on(&mut self, path: &str) -> Value {
        if let Some(i) = self.pending.iter().position(|r| r["path"] == path) {
            return self.pending.remove(i);
        }
        loop {
            let request: Value = serde_json::from_str(&next_line(&mut self.lines).await).unwrap();
            if request["path"] == path {
                return request;
            }
            self.pending.push(request);
        }
    }
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("the push endpoint answers in time")
        .unwrap()
        .expect("the push endpoint is running")
}

/// A control plane on the scenario's database that takes http:// push endpoints and retries
/// after 50 ms.
async fn notifying_replica(app: &TestApp) -> SocketAddr {
    support::serve_replica(&control_plane::Config {
        push_allow_http: true,
        push: control_plane::PushConfig {
            retry_base: Duration::from_millis(50),
            ..control_plane::PushConfig::default()
        },
        ..support::config(&app.database_url)
    })
    .await
}

async fn post(addr: SocketAddr, path: &str, user: &AuthResponse, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .bearer_auth(&user.access_token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn say(addr: SocketAddr, g: &str, user: &AuthResponse, id: &str, body: &str) -> MessageView {
    let reply = post(
        addr,
        &format!("/v1/groups/{g}/messages"),
        user,
        json!({"client_msg_id": id, "body": body}),
    )
    .await;
    assert_eq!(reply.status(), StatusCode::CREATED);
    reply.json().await.unwrap()
}

/// Checks one push request: accepted VAPID with our key, the message decrypted.
fn check_push(request: &Value, vapid: &str, message: &MessageView, from: &str) {
    assert_eq!(request["error"], Value::Null, "{request}");
    assert_eq!(request["vapid_ok"], true, "{request}");
    assert_eq!(request["k"], vapid);
    let payload = &request["payload"];
    assert_eq!(payload["type"], "message");
    assert_eq!(payload["seq"], message.id);
    assert_eq!(payload["body"], message.body.as_deref().unwrap());
    assert_eq!(payload["from_name"], from);
}

#[tokio::test]
async fn offline_members_get_web_pushes_with_retries_and_gone_subscriptions_are_forgotten() {
    let Some(python) = python() else { return };
    with_each_backend(InProcessRegistry::new, move |app| {
        let python = python.clone();
        async move {
            let mut endpoint = Endpoint::start(&python).await;
            let cp = notifying_replica(&app).await;
            let ann = app.register("ann").await;
            let bob = app.register("bob").await;
            let cat = app.register("cat").await;
            let dan = app.register("dan").await;
            let g = app.group(&ann).await;
            for member in [&bob, &cat, &dan] {
                app.join(&g, &ann, member).await;
            }
            let vapid: VapidPublicKey =
                reqwest::get(format!("http://{cp}/v1/push/vapid-public-key"))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            assert_eq!(
                app.get("/v1/push/vapid-public-key", "").await.json["public_key"],
                vapid.public_key,
                "every replica signs with the same key"
            );
            for (user, path) in [
                (&bob, "/ok/bob"),
                (&cat, "/gone/cat"),
                (&dan, "/flaky2/dan"),
            ] {
                let reply = post(
                    cp,
                    "/v1/users/me/devices",
                    user,
                    endpoint.subscription(path),
                )
                .await;
                assert_eq!(reply.status(), StatusCode::OK);
            }

            // Everyone but ann is offline: bob gets the push at once, dan after two 503s, cat's
            // service says the subscription is gone.
            let m1 = say(cp, &g, &ann, "m1", "Lunch at the pass? 🏔").await;
            check_push(
                &endpoint.next_on("/ok/bob").await,
                &vapid.public_key,
                &m1,
                "ann",
            );
            let gone = endpoint.next_on("/gone/cat").await;
            assert_eq!(gone["status"], 410);
            for _ in 0..2 {
                assert_eq!(endpoint.next_on("/flaky2/dan").await["status"], 503);
            }
            let third = endpoint.next_on("/flaky2/dan").await;
            assert_eq!(third["status"], 201);
            check_push(&third, &vapid.public_key, &m1, "ann");

            // Bob connects: a message while he is online is not pushed to him. The next push he
            // gets is the message sent after he went away.
            let mut bob_ws = connect(cp, &bob).await;
            let mut ann_ws = connect(cp, &ann).await;
            let m2 = say(cp, &g, &ann, "m2", "on the socket").await;
            assert_eq!(
                endpoint.next_on("/flaky2/dan").await["payload"]["seq"],
                m2.id,
                "dan is still offline"
            );
            bob_ws.close(None).await.unwrap();
            wait_offline(&mut ann_ws, &bob).await;
            let m3 = say(cp, &g, &ann, "m3", "after bob left").await;
            check_push(
                &endpoint.next_on("/ok/bob").await,
                &vapid.public_key,
                &m3,
                "ann",
            );

            // Cat's device was forgotten when its service said 410 (before m3 was sent).
            let devices: DeviceList = app
                .get("/v1/users/me/devices", &cat.access_token)
                .await
                .parse(StatusCode::OK);
            assert!(devices.devices.is_empty());
            assert!(
                endpoint.pending.iter().all(|r| r["path"] != "/gone/cat"),
                "nothing more went to cat: {:?}",
                endpoint.pending
            );
        }
    })
    .await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `/v1/events` connection, after `ready`.
async fn connect(addr: SocketAddr, user: &AuthResponse) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/events"))
        .await
        .unwrap();
    let hello = json!({"type": "hello", "access_token": user.access_token});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    loop {
        if let ServerFrame::Ready { .. } = frame(&mut ws).await {
            return ws;
        }
    }
}

async fn frame(ws: &mut Ws) -> ServerFrame {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Waits until `ws` hears that `user` went offline.
async fn wait_offline(ws: &mut Ws, user: &AuthResponse) {
    loop {
        if let ServerFrame::Presence { user: who, status } = frame(ws).await
            && who == user.user.id
            && status == PresenceStatus::Offline
        {
            return;
        }
    }
}
