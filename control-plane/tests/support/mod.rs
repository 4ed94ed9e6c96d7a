//! The test harness: a fresh control plane per scenario on a fresh database, driven through its
//! router with `oneshot` (no socket).
//!
//! Every scenario runs on SQLite (a file in a new temporary directory) and, when
//! `CONVOY_TEST_POSTGRES_URL` names a PostgreSQL server, on a new database created through that
//! admin URL and dropped afterwards (also when the scenario fails).

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use control_plane::registry::NodeTable;
use control_plane::{Config, ControlPlane, NodeRegistry};
use protocol::NodeId;
use protocol::api::{AuthResponse, PROBLEM_JSON, Problem};
use protocol::node::{NodeRecord, NodeState};
use protocol::token::Signer;
use serde_json::{Value, json};
use sqlx::Connection as _;
use std::future::Future;
use std::io::Write as _;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};
use tower::ServiceExt as _;
use uuid::Uuid;

pub const ISSUER: &str = "convoy-test";
pub const PASSWORD: &str = "correct horse battery";

/// One control plane under test.
pub struct App<R> {
    router: Router,
    pub signer: Signer,
    /// Where in-process media nodes report session events.
    pub events: control_plane::EventIngest,
    pub registry: Arc<R>,
    pub database_url: String,
    pub control_plane: Arc<ControlPlane>,
}

impl<R> Clone for App<R> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            signer: self.signer.clone(),
            events: self.events.clone(),
            registry: self.registry.clone(),
            database_url: self.database_url.clone(),
            control_plane: self.control_plane.clone(),
        }
    }
}

/// An HTTP answer with its body parsed as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub raw: Bytes,
    pub json: Value,
}

impl Reply {
    /// Asserts the status and that the body is problem+json agreeing with it; returns the body.
    pub fn problem(&self, status: StatusCode) -> Problem {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(PROBLEM_JSON),
            "not problem+json: {self:?}"
        );
        let problem: Problem = serde_json::from_slice(&self.raw).expect("a problem body");
        assert_eq!(problem.status, status.as_u16());
        assert!(
            problem
                .type_
                .starts_with(control_plane::PROBLEM_TYPE_PREFIX),
            "{problem:?}"
        );
        problem
    }

    /// The body as `T`, after checking the status.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, status: StatusCode) -> T {
        assert_eq!(self.status, status, "{self:?}");
        serde_json::from_value(self.json.clone()).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

impl<R: NodeRegistry> App<R> {
    /// Sends one request through the router.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let raw = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let json = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            raw,
            json,
        }
    }

    /// `method uri` with an optional bearer token and an optional JSON body.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    /// `POST uri` with a JSON body and no token, from the client address `from` (as the
    /// listener would record it).
    pub async fn post_from(&self, from: std::net::SocketAddr, uri: &str, body: Value) -> Reply {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(from));
        self.send(request).await
    }

    /// `POST uri` with a bearer token and a JSON body.
    pub async fn post(&self, uri: &str, bearer: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, Some(bearer), Some(body)).await
    }

    /// Registers `name` (`{name}@example.org`, [`PASSWORD`]).
    pub async fn register(&self, name: &str) -> AuthResponse {
        let body = json!({
            "username": name,
            "email": format!("{name}@example.org"),
            "password": PASSWORD,
        });
        self.call(Method::POST, "/v1/auth/register", None, Some(body))
            .await
            .parse(StatusCode::CREATED)
    }

    /// A new group of `admin`; returns its id.
    pub async fn group(&self, admin: &AuthResponse) -> String {
        let reply = self
            .post("/v1/groups", &admin.access_token, json!({"name": "Convoy"}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.json["id"].as_str().unwrap().to_owned()
    }

    /// A new invite code to `group`, made by `admin`.
    pub async fn invite(&self, group: &str, admin: &AuthResponse) -> String {
        let reply = self
            .call(
                Method::POST,
                &format!("/v1/groups/{group}/invites"),
                Some(&admin.access_token),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.json["code"].as_str().unwrap().to_owned()
    }

    /// `POST /v1/invites/{code}/accept` as `user`.
    pub async fn accept(&self, code: &str, user: &AuthResponse) -> Reply {
        let uri = format!("/v1/invites/{code}/accept");
        self.call(Method::POST, &uri, Some(&user.access_token), None)
            .await
    }

    /// Makes `user` a member of `group` through an invite from `admin`.
    pub async fn join(&self, group: &str, admin: &AuthResponse, user: &AuthResponse) {
        let code = self.invite(group, admin).await;
        let reply = self.accept(&code, user).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    }

    /// Asks for the group's audio session as `user`.
    pub async fn allocate(&self, group: &str, user: &AuthResponse) -> Reply {
        let uri = format!("/v1/groups/{group}/sessions");
        self.post(&uri, &user.access_token, json!({"kind": "audio"}))
            .await
    }

    /// Serves the router on a loopback port (for WebSocket clients); answers the address.
    pub async fn serve(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = self
            .router
            .clone()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// `GET uri` with a bearer token.
    pub async fn get(&self, uri: &str, bearer: &str) -> Reply {
        self.call(Method::GET, uri, Some(bearer), None).await
    }

    /// `PATCH uri` with a bearer token and a JSON body.
    pub async fn patch(&self, uri: &str, bearer: &str, body: Value) -> Reply {
        self.call(Method::PATCH, uri, Some(bearer), Some(body))
            .await
    }

    /// `DELETE uri` with a bearer token.
    pub async fn delete(&self, uri: &str, bearer: &str) -> Reply {
        self.call(Method::DELETE, uri, Some(bearer), None).await
    }

    /// Posts a message to `group` as `user`.
    pub async fn say(
        &self,
        group: &str,
        user: &AuthResponse,
        client_msg_id: &str,
        body: &str,
    ) -> Reply {
        let uri = format!("/v1/groups/{group}/messages");
        self.post(
            &uri,
            &user.access_token,
            json!({"client_msg_id": client_msg_id, "body": body}),
        )
        .await
    }

    /// A pool on the scenario's database, to inspect or age rows directly.
    pub async fn db(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::AnyPool::connect(&self.database_url).await.unwrap()
    }
}

/// A media node record for tests.
pub fn node(id: &str, region: &str, stress: f32, state: NodeState) -> NodeRecord {
    NodeRecord {
        id: NodeId::new(id).unwrap(),
        region: region.into(),
        http_url: format!("http://{id}.test:8090"),
        udp_ports: vec![40000, 40001],
        version: "test".into(),
        cores: 2,
        stress,
        state,
    }
}

/// A registry on simulated time: the library's TTL table with a clock the test advances.
#[derive(Debug)]
pub struct SimulatedRegistry {
    inner: Mutex<(NodeTable, Instant)>,
}

impl Default for SimulatedRegistry {
    fn default() -> Self {
        Self {
            inner: Mutex::new((NodeTable::default(), Instant::now())),
        }
    }
}

impl SimulatedRegistry {
    /// Moves the simulated clock forward.
    pub fn advance(&self, by: Duration) {
        self.inner.lock().unwrap().1 += by;
    }
}

impl NodeRegistry for SimulatedRegistry {
    fn heartbeat(&self, record: NodeRecord) {
        let (table, now) = &mut *self.inner.lock().unwrap();
        table.heartbeat(record, *now);
    }
    fn alive(&self) -> Vec<NodeRecord> {
        let (table, now) = &*self.inner.lock().unwrap();
        table.alive(*now)
    }
    fn get(&self, id: &NodeId) -> Option<NodeRecord> {
        let (table, now) = &*self.inner.lock().unwrap();
        table.get(id, *now)
    }
}

/// Runs `scenario` against SQLite, then against PostgreSQL if configured, each with a fresh
/// control plane whose registry `make_registry` builds.
pub async fn with_each_backend<R, F, Fut>(make_registry: impl Fn() -> R, scenario: F)
where
    R: NodeRegistry,
    F: Fn(App<R>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = std::env::temp_dir().join(format!("convoy-cp-test-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("convoy.db").display());
    let outcome = run(&url, make_registry(), &scenario).await;
    let _ = std::fs::remove_dir_all(&dir);
    rethrow("SQLite", outcome);

    let Some(admin_url) = postgres_admin_url() else {
        return;
    };
    let name = format!("convoy_test_{}", Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = with_database(&admin_url, &name);
    let outcome = run(&url, make_registry(), &scenario).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    rethrow("PostgreSQL", outcome);
}

async fn run<R, F, Fut>(url: &str, registry: R, scenario: &F) -> Result<(), tokio::task::JoinError>
where
    R: NodeRegistry,
    F: Fn(App<R>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let registry = Arc::new(registry);
    let config = config(url);
    let dyn_registry: Arc<dyn NodeRegistry> = registry.clone();
    let cp = ControlPlane::new(&config, dyn_registry).await.unwrap();
    let app = App {
        router: cp.router(),
        signer: cp.signer(),
        events: cp.session_events(),
        registry,
        database_url: url.to_owned(),
        control_plane: Arc::new(cp),
    };
    // A panic in the scenario comes back as an error, so the database is dropped either way.
    tokio::spawn(scenario(app)).await
}

/// Another control plane with `config` (usually on a scenario's database), served on a
/// loopback port until the test ends.
pub async fn serve_replica(config: &Config) -> std::net::SocketAddr {
    let cp = ControlPlane::new(config, Arc::new(control_plane::InProcessRegistry::new()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(control_plane::serve(listener, cp, std::future::pending()));
    addr
}

/// The configuration of every control plane under test on `database_url` (one data key, so
/// several control planes on one database open each other's keys).
pub fn config(database_url: &str) -> Config {
    Config {
        issuer: ISSUER.into(),
        data_key: control_plane::DataKeySource::Base64(
            "dGVzdC1kYXRhLWtleS0wMTIzNDU2Nzg5YWJjZGVmMDE".into(),
        ),
        ice: control_plane::IceConfig {
            stun_urls: vec!["stun:stun.test.invalid:3478".into()],
            turn_urls: vec!["turn:turn.test.invalid:3478?transport=udp".into()],
            turn_secret: Some(TURN_SECRET.into()),
            turn_ttl_secs: 3600,
        },
        ..Config::new("127.0.0.1:0".parse().unwrap(), database_url)
    }
}

/// The TURN secret of every control plane under test.
pub const TURN_SECRET: &str = "turn-test-secret";

fn rethrow(backend: &str, outcome: Result<(), tokio::task::JoinError>) {
    if let Err(e) = outcome {
        let _ = writeln!(std::io::stderr(), "scenario failed on {backend}");
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("scenario task failed on {backend}: {e}"),
        }
    }
}

/// The value of `var` naming an external part (a server URL, a Python), or `None` with a loud
/// SKIPPED line about `what`; under `CONVOY_REQUIRE_EXTERNAL=1` a missing one fails instead.
pub fn external(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(
                std::env::var("CONVOY_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
                "CONVOY_REQUIRE_EXTERNAL=1 but {var} is not set"
            );
            let _ = writeln!(std::io::stderr(), "SKIPPED: {what} (set {var})");
            None
        }
    }
}

/// The PostgreSQL admin URL, or `None` after saying loudly (once) that PostgreSQL is skipped;
/// with `CONVOY_REQUIRE_EXTERNAL=1` a missing URL fails the test instead.
fn postgres_admin_url() -> Option<String> {
    static SKIP_NOTICE: Once = Once::new();
    match std::env::var("CONVOY_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CONVOY_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
                "CONVOY_REQUIRE_EXTERNAL=1 but CONVOY_TEST_POSTGRES_URL is not set"
            );
            SKIP_NOTICE.call_once(|| {
                // Straight to stderr: the test harness captures eprintln!.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: PostgreSQL tests (set CONVOY_TEST_POSTGRES_URL)"
                );
            });
            None
        }
    }
}

/// `url` with its database name replaced by `name` (query string kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    format!("{root}/{name}{query}")
}

#[test]
fn database_names_are_swapped_in_urls() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}
