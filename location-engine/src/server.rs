//! The server shell around the [`Hub`]: HTTP and WebSocket on tokio/axum, one task owning the
//! hub, the clock, the JWKS, and the bus.
//!
//! - `GET /v1/stream` (WebSocket): location token in `Authorization: Bearer` or `?token=`,
//!   checked before the upgrade (a bad one is a 401 problem+json); then frames of
//!   [`protocol::location`] both ways. Fixes arrive as JSON text or binary frames; a frame that
//!   does not decode closes with [`CLOSE_BAD_FRAME`], fixes beyond the rate with
//!   [`CLOSE_TOO_MANY`], an unread stream with [`CLOSE_TOO_SLOW`], and the token's expiry
//!   without a renewing `token` frame with [`CLOSE_UNAUTHORIZED`].
//! - `POST /v1/fixes`: a batch (JSON or binary) with the token as bearer; answers a
//!   [`BatchResult`], or problem+json.
//! - `GET /livez`, `GET /readyz`.
//!
//! The hub task takes commands from a channel, drains what is queued before it flushes (a moved
//! group's positions at most once a second, alerts at once), ticks the engine every second, and
//! hands alerts to the [`AlertSink`] (the control plane in-process, or a Redis stream).
//!
//! Groups' places come from the control plane (`GET {control plane}/v1/location/places?group=`,
//! with the location token of a member sharing with the group) when a token or a notice names a
//! newer revision than the hub holds; notices arrive through [`LocationServer::places_hook`] (in
//! one process) or [`redis_places_listener`].

use crate::engine::Config;
use crate::hub::{ConnId, FixesError, Hub, Outbox};
use crate::verified::Verified;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use protocol::api::{Jwks, PROBLEM_JSON, Problem};
use protocol::location::{
    BINARY_MEDIA_TYPE, BatchResult, CLOSE_BAD_FRAME, CLOSE_TOO_MANY, CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED, ClientFrame, FixBatch, GroupPlaces, HistoryBatch, HistoryFix,
    LocationAlert, LocationClaims, MAX_BATCH, MAX_FRAME, PlacesChanged, Refusal, Rejected,
    ServerFrame, Sharing, WireFix, decode_fixes,
};
use protocol::token::{self, AUD_LOCATION, TokenError, VerifyingKeys};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Clock skew tolerated on a token's `exp` and `iat`, seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Least time between two JWKS fetches caused by an unknown key id.
const REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// Frames waiting for one stream before it counts as not reading.
const STREAM_QUEUE: usize = 256;
/// Commands the hub takes before it flushes.
const DRAIN: usize = 1024;
/// Commands whose users' state the hub reads ahead at once (`Hub::warm`).
const WARM_BATCH: usize = 32;
/// Commands queued for the hub before the connections sending them wait (and stop reading
/// their sockets, so the clients' TCP windows fill): the hub's backlog stays bounded.
const HUB_QUEUE: usize = 8192;
/// How long one frame may take to go out.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Verified tokens kept a generation ([`Verified`]: at most twice this many, ~0.3 KB each).
const VERIFIED_TOKENS: usize = 100_000;

/// Where alerts go for the control plane.
pub type AlertSink = Arc<dyn Fn(Vec<LocationAlert>) + Send + Sync>;
/// Where the fixes of users who keep a history go for the control plane.
pub type HistorySink = Arc<dyn Fn(Vec<HistoryFix>) + Send + Sync>;
/// Where the control plane's notices of changed places go (see [`LocationServer::places_hook`]).
pub type PlacesHook = Arc<dyn Fn(PlacesChanged) + Send + Sync>;
/// How long a fetch of a group's places may take.
const PLACES_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a location engine.
#[derive(Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The control plane's JWKS, for location tokens.
    pub jwks_url: String,
    /// Alerts for the control plane, if any.
    pub alerts: Option<AlertSink>,
    /// History fixes for the control plane; without it none are kept.
    pub history: Option<HistorySink>,
    /// The control plane's base URL, where groups' places are fetched; without it the engine
    /// knows no places.
    pub control_plane_url: Option<String>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("jwks_url", &self.jwks_url)
            .field("alerts", &self.alerts.is_some())
            .field("history", &self.history.is_some())
            .field("control_plane_url", &self.control_plane_url)
            .finish()
    }
}

/// A running location engine.
#[derive(Debug)]
pub struct LocationServer {
    addr: SocketAddr,
    hub_tx: mpsc::Sender<Cmd>,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    hub: JoinHandle<()>,
}

impl LocationServer {
    /// Binds `config.listen`, starts the hub, and serves until [`LocationServer::shutdown`].
    pub async fn start(config: ServerConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        Self::serve(listener, config)
    }

    /// As [`LocationServer::start`] on a listener bound already (`config.listen` is ignored).
    pub fn serve(listener: tokio::net::TcpListener, config: ServerConfig) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let (cmd_tx, cmd_rx) = mpsc::channel(HUB_QUEUE);
        let now = unix_ms();
        let hub = Hub::new(Config {
            // Alert ids stay unique across restarts: each incarnation starts at its start time.
            incarnation: now as u64,
            seed: now as u64 ^ 0x9E37_79B9_7F4A_7C15,
        });
        let places = config.control_plane_url.map(|url| PlacesSource {
            url: format!("{}/v1/location/places", url.trim_end_matches('/')),
            http: reqwest::Client::builder()
                .timeout(PLACES_TIMEOUT)
                .build()
                .unwrap_or_default(),
            replies: cmd_tx.clone(),
        });
        let hub = tokio::spawn(run_hub(
            hub,
            cmd_rx,
            stop_rx.clone(),
            config.alerts,
            config.history,
            places,
        ));
        let state = AppState {
            keys: Arc::new(Keys::new(config.jwks_url)),
            hub: cmd_tx.clone(),
            next_conn: Arc::new(AtomicU64::new(1)),
            stop: stop_rx.clone(),
        };
        let app = Router::new()
            .route("/v1/stream", get(stream))
            .route("/v1/fixes", post(post_fixes))
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(|| async { "ok" }))
            .layer(DefaultBodyLimit::max(MAX_FRAME))
            .with_state(state);
        let mut stop_http = stop_rx;
        // Small frames go out at once: without TCP_NODELAY an alert written while an earlier
        // frame is unacknowledged waits for the client's delayed ACK (up to 40 ms on Linux).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped(&mut stop_http).await })
                .await
        });
        Ok(Self {
            addr,
            hub_tx: cmd_tx,
            stop,
            http,
            hub,
        })
    }

    /// Where the control plane of this process tells the engine that a group's places changed.
    pub fn places_hook(&self) -> PlacesHook {
        let hub = self.hub_tx.clone();
        Arc::new(move |notice| {
            // A notice lost to a full queue is made up by the next token's revision.
            let _ = hub.try_send(Cmd::PlacesChanged(notice));
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every stream (1001) and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.http.await;
        let _ = self.hub.await;
    }
}

/// Resolves once `stop` holds `true`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Clone)]
struct AppState {
    keys: Arc<Keys>,
    hub: mpsc::Sender<Cmd>,
    next_conn: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
}

type Reply<T> = oneshot::Sender<T>;

enum Cmd {
    Authorize {
        claims: Box<LocationClaims>,
        /// The token itself: the hub task keeps each user's newest to fetch places with.
        token: Arc<str>,
        reply: Reply<(Vec<Sharing>, Vec<Refusal>)>,
    },
    /// The control plane changed a group's places.
    PlacesChanged(PlacesChanged),
    /// A fetch of a group's places ended (`None`: it failed).
    Places {
        group: protocol::GroupId,
        via: protocol::UserId,
        places: Option<GroupPlaces>,
    },
    Open {
        conn: ConnId,
        user: protocol::UserId,
        tx: mpsc::Sender<Arc<str>>,
        kill: oneshot::Sender<(u16, String)>,
    },
    Close {
        conn: ConnId,
    },
    Fixes {
        user: protocol::UserId,
        fixes: Vec<WireFix>,
        reply: Reply<Result<(u32, Vec<Rejected>), FixesError>>,
    },
    /// Fixes from a stream: nothing is answered unless some are refused (a `rejected` frame on
    /// the stream) or the stream must close (over the rate, no grant).
    StreamFixes {
        conn: ConnId,
        user: protocol::UserId,
        fixes: Vec<WireFix>,
    },
    /// A stream's `ping`: its `pong` is queued after every frame the commands before it caused.
    Ping {
        conn: ConnId,
    },
    Pause {
        user: protocol::UserId,
        pause: bool,
    },
}

impl Cmd {
    /// The user whose fixes this command carries, if it carries fixes.
    fn fixes_of(&self) -> Option<protocol::UserId> {
        match self {
            Cmd::Fixes { user, .. } | Cmd::StreamFixes { user, .. } => Some(*user),
            _ => None,
        }
    }
}

struct Stream {
    tx: mpsc::Sender<Arc<str>>,
    /// Taken when the stream is told to close; its later commands are ignored.
    kill: Option<oneshot::Sender<(u16, String)>>,
}

impl Stream {
    /// Queues `frame`; a stream whose queue is full is not reading and is closed.
    fn push(&mut self, frame: Arc<str>) {
        if self.kill.is_some() && self.tx.try_send(frame).is_err() {
            self.close(CLOSE_TOO_SLOW, "the stream was not read".into());
        }
    }

    fn close(&mut self, code: u16, reason: String) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send((code, reason));
        }
    }
}

/// Where and how groups' places are fetched.
struct PlacesSource {
    url: String,
    http: reqwest::Client,
    /// The outcome goes back to the hub task as a command.
    replies: mpsc::Sender<Cmd>,
}

impl PlacesSource {
    fn fetch(&self, group: protocol::GroupId, via: protocol::UserId, token: Arc<str>) {
        let (request, replies) = (
            self.http
                .get(&self.url)
                .query(&[("group", group.to_string())])
                .bearer_auth(&*token),
            self.replies.clone(),
        );
        tokio::spawn(async move {
            let places = async { request.send().await?.error_for_status()?.json().await }
                .await
                .map_err(|e| tracing::warn!(error = %e, %group, "fetching a group's places"))
                .ok()
                .filter(|p: &GroupPlaces| p.group == group);
            let _ = replies.send(Cmd::Places { group, via, places }).await;
        });
    }
}

/// The hub task's own state besides the hub.
#[derive(Default)]
struct Shell {
    streams: HashMap<ConnId, Stream>,
    /// Each user's newest location token and its `iat` and `exp` (Unix seconds).
    tokens: HashMap<protocol::UserId, (Arc<str>, u64, u64)>,
}

async fn run_hub(
    mut hub: Hub,
    mut rx: mpsc::Receiver<Cmd>,
    mut stop: watch::Receiver<bool>,
    sink: Option<AlertSink>,
    history: Option<HistorySink>,
    places: Option<PlacesSource>,
) {
    let mut shell = Shell::default();
    let mut out = Outbox::default();
    // Every 250 ms the held-back positions go out; every fourth time the engine ticks.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    let mut batch = std::collections::VecDeque::with_capacity(DRAIN);
    let (mut warm, mut scratch) = (Vec::with_capacity(WARM_BATCH), Vec::new());
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                let now = unix_ms();
                batch.push_back(cmd);
                while batch.len() < DRAIN {
                    let Ok(cmd) = rx.try_recv() else { break };
                    batch.push_back(cmd);
                }
                // A few dozen at a time: the users' state is read ahead, then their fixes taken.
                while !batch.is_empty() {
                    let n = batch.len().min(WARM_BATCH);
                    warm.clear();
                    warm.extend(batch.iter().take(n).filter_map(Cmd::fixes_of));
                    hub.warm(&warm, &mut scratch);
                    for cmd in batch.drain(..n) {
                        handle(&mut hub, &mut shell, &mut out, cmd, now);
                    }
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(4) {
                    let now = unix_ms();
                    hub.tick(now);
                    // Expired tokens fetch nothing: forget them (and the users who left).
                    let now_s = (now / 1000) as u64;
                    shell.tokens.retain(|_, (_, _, exp)| *exp > now_s);
                }
            }
            () = stopped(&mut stop) => break,
        }
        hub.flush(unix_ms(), &mut out);
        for (conns, frame) in out.frames.drain(..) {
            for conn in conns {
                if let Some(s) = shell.streams.get_mut(&conn) {
                    s.push(frame.clone());
                }
            }
        }
        let now_s = (unix_ms() / 1000) as u64;
        for (group, via) in out.fetch_places.drain(..) {
            let token = shell
                .tokens
                .get(&via)
                .filter(|(_, _, exp)| *exp > now_s)
                .map(|(t, _, _)| t.clone());
            match (&places, token) {
                (Some(source), Some(token)) => source.fetch(group, via, token),
                _ => hub.places_fetch_failed(group),
            }
        }
        if !out.alerts.is_empty() {
            let alerts = std::mem::take(&mut out.alerts);
            if let Some(sink) = &sink {
                sink(alerts);
            }
        }
        if !out.history.is_empty() {
            let fixes = std::mem::take(&mut out.history);
            if let Some(history) = &history {
                history(fixes);
            }
        }
    }
}

fn handle(hub: &mut Hub, shell: &mut Shell, out: &mut Outbox, cmd: Cmd, now: i64) {
    let streams = &mut shell.streams;
    match cmd {
        Cmd::Authorize {
            claims,
            token,
            reply,
        } => {
            let newest = shell
                .tokens
                .get(&claims.sub)
                .is_none_or(|(_, iat, _)| claims.iat >= *iat);
            if newest {
                shell
                    .tokens
                    .insert(claims.sub, (token, claims.iat, claims.exp));
            }
            let _ = reply.send(hub.authorize(&claims, now));
        }
        Cmd::PlacesChanged(notice) => hub.places_changed(notice),
        Cmd::Places { group, via, places } => match places {
            Some(places) => {
                let refused = hub.apply_places(&places, via, now);
                if refused > 0 {
                    tracing::warn!(%group, refused, "places the engine could not take");
                }
            }
            None => hub.places_fetch_failed(group),
        },
        Cmd::Open {
            conn,
            user,
            tx,
            kill,
        } => {
            streams.insert(
                conn,
                Stream {
                    tx,
                    kill: Some(kill),
                },
            );
            hub.open(conn, user, out);
        }
        Cmd::Close { conn } => {
            streams.remove(&conn);
            hub.close(conn);
        }
        Cmd::Fixes { user, fixes, reply } => {
            let _ = reply.send(hub.fixes(user, &fixes, now));
        }
        Cmd::StreamFixes { conn, user, fixes } => {
            let Some(s) = streams.get_mut(&conn).filter(|s| s.kill.is_some()) else {
                return;
            };
            match hub.fixes(user, &fixes, now) {
                Ok((_, rejected)) if rejected.is_empty() => {}
                Ok((_, rejected)) => s.push(ServerFrame::Rejected { rejected }.encode().into()),
                Err(e @ FixesError::TooMany) => s.close(CLOSE_TOO_MANY, e.to_string()),
                Err(e @ FixesError::NoGrant) => s.close(CLOSE_UNAUTHORIZED, e.to_string()),
            }
        }
        Cmd::Ping { conn } => {
            if let Some(s) = streams.get_mut(&conn) {
                s.push(ServerFrame::Pong {}.encode().into());
            }
        }
        Cmd::Pause { user, pause: true } => hub.pause(user),
        Cmd::Pause { user, pause: false } => hub.resume(user),
    }
}

/// Location-token keys from the control plane's JWKS, refetched when a token names an unknown
/// key id (at most once per [`REFETCH_INTERVAL`]).
struct Keys {
    url: String,
    http: reqwest::Client,
    keys: RwLock<VerifyingKeys>,
    fetched: Mutex<Option<Instant>>,
    /// Tokens verified lately (a batch with a known token skips the signature check).
    verified: Mutex<Verified>,
}

#[derive(Debug, thiserror::Error)]
enum AuthError {
    #[error("a location token is needed (Authorization: Bearer, or ?token=)")]
    Missing,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the signing keys could not be fetched")]
    KeysUnavailable,
}

impl Keys {
    fn new(url: String) -> Self {
        Self {
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(VerifyingKeys::default()),
            fetched: Mutex::new(None),
            verified: Mutex::new(Verified::new(VERIFIED_TOKENS)),
        }
    }

    async fn verify(&self, token: &str) -> Result<LocationClaims, AuthError> {
        let now = (unix_ms() / 1000) as u64;
        let digest = Verified::digest(token);
        {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((claims, kid)) = verified.get(&digest, now, LEEWAY_SECS) {
                // Only while its key is still published.
                if self
                    .keys
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(kid)
                {
                    return Ok(claims);
                }
                verified.remove(&digest);
            }
        }
        let kid = token::peek_kid(token)?;
        if let Some(kid) = &kid {
            let known = self
                .keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(kid);
            if !known {
                let due = {
                    let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
                    let due = fetched.is_none_or(|t| t.elapsed() >= REFETCH_INTERVAL);
                    if due {
                        *fetched = Some(Instant::now());
                    }
                    due
                };
                if due {
                    let jwks: Jwks = async {
                        self.http
                            .get(&self.url)
                            .send()
                            .await?
                            .error_for_status()?
                            .json()
                            .await
                    }
                    .await
                    .map_err(|_| AuthError::KeysUnavailable)?;
                    *self.keys.write().unwrap_or_else(|e| e.into_inner()) =
                        VerifyingKeys::from_jwks(&jwks);
                }
            }
        }
        let claims: LocationClaims = self.keys.read().unwrap_or_else(|e| e.into_inner()).verify(
            token,
            AUD_LOCATION,
            now,
            LEEWAY_SECS,
        )?;
        if let Some(kid) = kid {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(digest, claims.clone(), kid);
        }
        Ok(claims)
    }
}

fn problem(status: StatusCode, kind: &str, title: &str, detail: Option<String>) -> Response {
    let body = Problem::new(status.as_u16(), kind, title, detail);
    let mut res = (status, serde_json::to_string(&body).unwrap_or_default()).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}

fn auth_problem(e: &AuthError) -> Response {
    match e {
        AuthError::KeysUnavailable => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "keys-unavailable",
            "The signing keys could not be fetched",
            None,
        ),
        _ => {
            let mut res = problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "A valid location token is needed",
                Some(e.to_string()),
            );
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            res
        }
    }
}

fn bearer<'a>(headers: &'a HeaderMap, query: &'a HashMap<String, String>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| query.get("token").map(String::as_str))
}

async fn ask<T>(hub: &mpsc::Sender<Cmd>, cmd: impl FnOnce(Reply<T>) -> Cmd) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    hub.send(cmd(tx)).await.ok()?;
    rx.await.ok()
}

/// The verified claims of the request's location token, or the problem to answer.
async fn authorized(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(LocationClaims, Arc<str>), Response> {
    let token = bearer(headers, query).ok_or_else(|| auth_problem(&AuthError::Missing))?;
    let claims = state
        .keys
        .verify(token)
        .await
        .map_err(|e| auth_problem(&e))?;
    Ok((claims, Arc::from(token)))
}

async fn post_fixes(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (claims, token) = match authorized(&state, &headers, &query).await {
        Ok(c) => c,
        Err(problem) => return problem,
    };
    let binary = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(BINARY_MEDIA_TYPE));
    let fixes = if binary {
        let mut fixes = Vec::new();
        if let Err(e) = decode_fixes(&body, &mut fixes) {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-frame",
                "The binary fix frame does not decode",
                Some(e.to_string()),
            );
        }
        fixes
    } else {
        match serde_json::from_slice::<FixBatch>(&body) {
            Ok(b) if b.fixes.len() <= MAX_BATCH => b.fixes,
            Ok(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "too-many-fixes",
                    "Too many fixes in one batch",
                    Some(format!("at most {MAX_BATCH}")),
                );
            }
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    "The body is not a fix batch",
                    Some(e.to_string()),
                );
            }
        }
    };
    let user = claims.sub;
    let Some(_) = ask(&state.hub, |reply| Cmd::Authorize {
        claims: Box::new(claims),
        token,
        reply,
    })
    .await
    else {
        return shutting_down();
    };
    match ask(&state.hub, |reply| Cmd::Fixes { user, fixes, reply }).await {
        None => shutting_down(),
        Some(Ok((accepted, rejected))) => {
            axum::Json(BatchResult { accepted, rejected }).into_response()
        }
        Some(Err(FixesError::TooMany)) => {
            let mut res = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many fixes",
                Some(FixesError::TooMany.to_string()),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            res
        }
        Some(Err(e @ FixesError::NoGrant)) => problem(
            StatusCode::FORBIDDEN,
            "not-sharing",
            "The token shares with no group",
            Some(e.to_string()),
        ),
    }
}

fn shutting_down() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting-down",
        "The location engine is shutting down",
        None,
    )
}

async fn stream(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (claims, token) = match authorized(&state, &headers, &query).await {
        Ok(c) => c,
        Err(problem) => return problem,
    };
    upgrade
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(4096)
        .on_upgrade(move |socket| async move {
            let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
            let mut s = Conn {
                socket,
                state,
                conn,
            };
            let end = s.run(claims, token).await;
            let _ = s.state.hub.send(Cmd::Close { conn }).await;
            if let Err((code, reason)) = end {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from(reason),
                };
                let _ =
                    tokio::time::timeout(SEND_TIMEOUT, s.socket.send(Message::Close(Some(frame))))
                        .await;
            }
        })
}

struct Conn {
    socket: WebSocket,
    state: AppState,
    conn: ConnId,
}

/// Why a stream ends: a close code and reason, or `Ok` when the client went away.
type End = Result<(), (u16, String)>;

fn bad(reason: impl std::fmt::Display) -> (u16, String) {
    let mut text = reason.to_string();
    // A close reason is at most 123 bytes.
    while text.len() > 120 {
        text.pop();
    }
    (CLOSE_BAD_FRAME, text)
}

impl Conn {
    async fn send(&mut self, text: Utf8Bytes) -> End {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err((1006, String::new())),
            Err(_) => Err((CLOSE_TOO_SLOW, "the stream was not read".into())),
        }
    }

    async fn authorize(
        &mut self,
        claims: LocationClaims,
        token: Arc<str>,
    ) -> Result<i64, (u16, String)> {
        let exp = claims.exp;
        let user = claims.sub;
        let (sharing, refused) = ask(&self.state.hub, |reply| Cmd::Authorize {
            claims: Box::new(claims),
            token,
            reply,
        })
        .await
        .ok_or((1001, "the server is shutting down".to_string()))?;
        let ready = ServerFrame::Ready {
            user,
            sharing,
            refused,
        };
        self.send(ready.encode().into()).await?;
        Ok(i64::try_from(exp.saturating_add(LEEWAY_SECS)).unwrap_or(i64::MAX) * 1000)
    }

    async fn run(&mut self, claims: LocationClaims, token: Arc<str>) -> End {
        let user = claims.sub;
        let mut expires_ms = self.authorize(claims, token).await?;
        let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
        let (kill_tx, mut kill) = oneshot::channel();
        let _ = self
            .state
            .hub
            .send(Cmd::Open {
                conn: self.conn,
                user,
                tx,
                kill: kill_tx,
            })
            .await;
        let mut stop = self.state.stop.clone();
        let mut fixes = Vec::new();
        let deadline = |expires_ms: i64| {
            tokio::time::Instant::now()
                + Duration::from_millis((expires_ms - unix_ms()).max(0) as u64)
        };
        // One timer for the token's expiry, moved only when a `token` frame extends it.
        let expiry = tokio::time::sleep_until(deadline(expires_ms));
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                frame = rx.recv() => {
                    let Some(frame) = frame else { return Err((1001, "the server is shutting down".into())) };
                    self.send(Utf8Bytes::from(&*frame)).await?;
                }
                end = &mut kill => {
                    return Err(end.unwrap_or((1001, "the server is shutting down".into())));
                }
                () = &mut expiry => {
                    return Err((CLOSE_UNAUTHORIZED, "the location token expired".into()));
                }
                () = stopped(&mut stop) => {
                    return Err((1001, "the server is shutting down".into()));
                }
                msg = self.socket.recv() => {
                    let msg = match msg {
                        None => return Ok(()),
                        Some(Err(_)) => return Err((1009, "a frame was too large or broken".into())),
                        Some(Ok(m)) => m,
                    };
                    fixes.clear();
                    match msg {
                        Message::Binary(bytes) => {
                            decode_fixes(&bytes, &mut fixes).map_err(bad)?;
                        }
                        Message::Text(text) => match ClientFrame::decode(&text).map_err(bad)? {
                            ClientFrame::Fix(f) => fixes.push(f),
                            ClientFrame::Fixes { fixes: f } => {
                                if f.len() > MAX_BATCH {
                                    return Err(bad(format!("at most {MAX_BATCH} fixes a frame")));
                                }
                                fixes = f;
                            }
                            ClientFrame::Token { token } => {
                                let claims = match self.state.keys.verify(&token).await {
                                    Ok(c) => c,
                                    Err(e) => return Err((CLOSE_UNAUTHORIZED, e.to_string())),
                                };
                                if claims.sub != user {
                                    return Err((CLOSE_UNAUTHORIZED, "the token is for another user".into()));
                                }
                                let renewed = self.authorize(claims, Arc::from(token)).await?;
                                if renewed > expires_ms {
                                    expires_ms = renewed;
                                    expiry.as_mut().reset(deadline(expires_ms));
                                }
                            }
                            ClientFrame::Pause {} => {
                                let _ = self.state.hub.send(Cmd::Pause { user, pause: true }).await;
                            }
                            ClientFrame::Resume {} => {
                                let _ = self.state.hub.send(Cmd::Pause { user, pause: false }).await;
                            }
                            ClientFrame::Ping {} => {
                                let _ = self.state.hub.send(Cmd::Ping { conn: self.conn }).await;
                            }
                        },
                        Message::Close(_) => return Ok(()),
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                    if !fixes.is_empty() {
                        // Not waited for: refusals and closes come back through the queue.
                        let fixes = std::mem::take(&mut fixes);
                        if self.state.hub.send(Cmd::StreamFixes { conn: self.conn, user, fixes }).await.is_err() {
                            return Err((1001, "the server is shutting down".into()));
                        }
                    }
                }
            }
        }
    }
}

/// Alerts onto the Redis stream [`protocol::location::redis_alert_stream_key`] (capped near
/// `max_len` entries, one alert an entry), for control planes in other processes. Alerts queue
/// in memory while Redis is unreachable and go out when it is back.
pub async fn redis_alert_sink(
    url: &str,
    prefix: &str,
    max_len: usize,
) -> anyhow::Result<AlertSink> {
    let key = protocol::location::redis_alert_stream_key(prefix);
    let entries = redis_stream(url, key, max_len).await?;
    Ok(Arc::new(move |alerts: Vec<LocationAlert>| {
        for alert in alerts {
            let _ = entries.send(serde_json::to_string(&alert).unwrap_or_default());
        }
    }))
}

/// History fixes onto the Redis stream [`protocol::location::redis_history_stream_key`] (one
/// [`HistoryBatch`] an entry, capped near `max_len` entries), as [`redis_alert_sink`].
pub async fn redis_history_sink(
    url: &str,
    prefix: &str,
    max_len: usize,
) -> anyhow::Result<HistorySink> {
    let key = protocol::location::redis_history_stream_key(prefix);
    let entries = redis_stream(url, key, max_len).await?;
    Ok(Arc::new(move |fixes: Vec<HistoryFix>| {
        let batch = HistoryBatch { fixes };
        let _ = entries.send(serde_json::to_string(&batch).unwrap_or_default());
    }))
}

/// A task appending the JSON entries sent to it to the stream `key`, in order, retrying each
/// until Redis takes it.
async fn redis_stream(
    url: &str,
    key: String,
    max_len: usize,
) -> anyhow::Result<mpsc::UnboundedSender<String>> {
    let client = redis::Client::open(url)?;
    let mut conn = redis::aio::ConnectionManager::new(client).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(json) = rx.recv().await {
            loop {
                let added: redis::RedisResult<String> = redis::cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_len)
                    .arg("*")
                    .arg(protocol::events::REDIS_EVENT_FIELD)
                    .arg(&json)
                    .query_async(&mut conn)
                    .await;
                match added {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, %key, "appending to a Redis stream; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
    Ok(tx)
}

/// Subscribes to the control planes' notices of changed places on Redis
/// ([`protocol::location::redis_places_channel`]) and hands each to `hook`; resubscribes after
/// Redis goes away. Notices published meanwhile are lost: the next token's revision makes up
/// for them.
pub async fn redis_places_listener(
    url: &str,
    prefix: &str,
    hook: PlacesHook,
) -> anyhow::Result<JoinHandle<()>> {
    use futures_util::StreamExt as _;
    let client = redis::Client::open(url)?;
    let channel = protocol::location::redis_places_channel(prefix);
    // The first subscription answers now, so a wrong URL fails the start.
    let mut first = Some(client.get_async_pubsub().await?);
    Ok(tokio::spawn(async move {
        loop {
            let pubsub = match first.take() {
                Some(p) => Ok(p),
                None => client.get_async_pubsub().await,
            };
            match pubsub {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        let mut messages = pubsub.on_message();
                        while let Some(msg) = messages.next().await {
                            let notice = msg
                                .get_payload::<String>()
                                .ok()
                                .and_then(|p| serde_json::from_str::<PlacesChanged>(&p).ok());
                            match notice {
                                Some(n) => hook(n),
                                None => {
                                    tracing::warn!(%channel, "a places notice that does not decode")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, %channel, "subscribing to places notices"),
                },
                Err(e) => tracing::warn!(error = %e, "connecting to Redis for places notices"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }))
}
