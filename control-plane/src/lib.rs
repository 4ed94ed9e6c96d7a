//! Convoy's control plane: accounts, sign-in, groups, invites and media-session allocation over
//! a REST API (axum), with SQL as the truth (sqlx; SQLite embedded or PostgreSQL).
//!
//! The launcher builds a [`ControlPlane`] from a [`Config`] and a [`NodeRegistry`], then hands it
//! to [`serve`]; tests call [`ControlPlane::router`] directly with `tower::ServiceExt::oneshot`.
//!
//! Code map:
//! - [`registry`]: which media nodes are alive ([`NodeRegistry`]; [`InProcessRegistry`] in dev,
//!   [`RedisRegistry`] across processes).
//! - [`allocator`]: where a new session goes, a pure function of the live nodes and an RNG.
//! - `store`: every SQL statement, one code path for SQLite and PostgreSQL, migrations embedded.
//! - `api`: routes, extractors and the problem+json error type.
//! - `domain`: validated input (usernames, emails, passwords, group names).
//! - `passwords`, `tokens`, `keys`: argon2id hashing, token minting and checking, the signing key.
//!
//! What it must not do: hand a signing secret to anyone (media nodes verify with the JWKS only),
//! echo an internal error to a caller, run argon2 on the async threads, or panic on any input
//! (a panic is a bug). Only `api` handlers read the clock; the registry's TTL logic and the
//! allocator take time and randomness as arguments.

pub mod allocator;
mod api;
pub mod attachments;
mod blobs;
mod blobs_s3;
mod clock;
mod domain;
mod fanout;
#[doc(hidden)]
pub mod fuzzing;
mod ice;
mod keyring;
mod keys;
mod notify;
mod passwords;
mod places_notice;
mod presence;
pub mod registry;
pub mod registry_redis;
mod revocations;
mod sealed;
pub mod session_events;
mod signing;
mod store;
mod throttle;
mod tokens;
mod totp;
mod webpush;
mod writer;

pub use api::error::PROBLEM_TYPE_PREFIX;
pub use attachments::{AttachmentConfig, AttachmentStore};
use axum::serve::ListenerExt as _;
pub use blobs_s3::S3Config;
pub use ice::{DEFAULT_TURN_TTL_SECS, IceConfig};
pub use notify::PushConfig;
pub use places_notice::PlacesHook;
pub use registry::{InProcessRegistry, NodeRegistry};
pub use registry_redis::RedisRegistry;
pub use session_events::{AlertIngest, EventIngest, HistoryIngest};

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// How to run the control plane. `Debug` hides a password in the database URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Where [`serve`]'s caller should bind (the library itself binds nothing).
    pub listen: SocketAddr,
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    pub database_url: String,
    /// A file holding a 32-byte Ed25519 seed (created, mode 0600, if missing): the first
    /// signing key when the database holds none. Signing keys live in the database, sealed with
    /// the data key, and rotate every `signing_key_period`.
    pub signing_key_file: Option<PathBuf>,
    /// Time between signing-key rotations (the new key is published 10 minutes before it signs,
    /// the old one kept for an hour after).
    pub signing_key_period: std::time::Duration,
    /// The `iss` of every token signed, checked on every access token.
    pub issuer: String,
    /// The region whose media nodes new sessions prefer.
    pub region_hint: Option<String>,
    /// The location engine's stream URL (`ws://…/v1/stream`) handed out with location tokens.
    pub location_url: Option<String>,
    /// Redis for ephemeral shared state (attempt budgets); `None` keeps it in this process.
    pub redis_url: Option<String>,
    /// The AES-256-GCM key that seals sensitive columns (TOTP secrets).
    pub data_key: DataKeySource,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Accept `http://` Web Push endpoints (a push service on a private network, or tests);
    /// otherwise only `https://`.
    pub push_allow_http: bool,
    /// STUN and TURN for 1:1 calls.
    pub ice: IceConfig,
    /// How notifications are pushed.
    pub push: PushConfig,
    /// Where attachments are kept and how large they may be.
    pub attachments: AttachmentConfig,
}

impl Config {
    /// The embedded defaults: a key that lives as long as the process, no Redis, no proxies.
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            listen,
            database_url: database_url.into(),
            signing_key_file: None,
            signing_key_period: std::time::Duration::from_millis(keyring::DEFAULT_PERIOD_MS as u64),
            issuer: "convoy".into(),
            region_hint: None,
            location_url: None,
            redis_url: None,
            data_key: DataKeySource::Ephemeral,
            trusted_proxies: Vec::new(),
            push_allow_http: false,
            ice: IceConfig::default(),
            push: PushConfig::default(),
            attachments: AttachmentConfig::default(),
        }
    }
}

/// Where the data key comes from. `Debug` never shows a key.
#[derive(Clone, PartialEq, Eq)]
pub enum DataKeySource {
    /// Random for this process: sealed values do not survive a restart (tests, throwaway runs).
    Ephemeral,
    /// A file of 32 bytes, created (mode 0600) with a random key when missing.
    File(PathBuf),
    /// 32 bytes in standard or URL-safe base64, e.g. from the environment.
    Base64(String),
}

impl std::fmt::Debug for DataKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataKeySource::Ephemeral => f.write_str("Ephemeral"),
            DataKeySource::File(path) => f.debug_tuple("File").field(path).finish(),
            DataKeySource::Base64(_) => f.write_str("Base64(***)"),
        }
    }
}

impl DataKeySource {
    async fn load(&self) -> anyhow::Result<sealed::DataKey> {
        let key = match self {
            DataKeySource::Ephemeral => keys::ephemeral_seed(),
            DataKeySource::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || keys::load_or_create_seed(&path))
                    .await
                    .context("loading the data key")??
            }
            DataKeySource::Base64(text) => decode_key(text)?,
        };
        Ok(sealed::DataKey::from_bytes(&key))
    }
}

/// A 32-byte key in standard or URL-safe base64, padded or not.
fn decode_key(text: &str) -> anyhow::Result<[u8; 32]> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let text = text.trim().trim_end_matches('=');
    let bytes = STANDARD_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text))
        .map_err(|_| anyhow::anyhow!("the data key is not base64"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| anyhow::anyhow!("the data key must be 32 bytes, it is {}", bytes.len()))
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &redact_password(&self.database_url))
            .field("signing_key_file", &self.signing_key_file)
            .field("signing_key_period", &self.signing_key_period)
            .field("issuer", &self.issuer)
            .field("region_hint", &self.region_hint)
            .field("redis_url", &self.redis_url.as_deref().map(redact_password))
            .field("data_key", &self.data_key)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("push_allow_http", &self.push_allow_http)
            .field("ice", &self.ice)
            .field("push", &self.push)
            .finish()
    }
}

/// `scheme://user:secret@host/...` with the secret replaced by `***`.
fn redact_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let Some(at) = url[start..authority_end].rfind('@').map(|i| start + i) else {
        return url.to_owned();
    };
    match url[start..at].find(':').map(|i| start + i) {
        Some(colon) => format!("{}:***{}", &url[..colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// A ready control plane: database migrated, signing key loaded, password hasher warmed.
pub struct ControlPlane {
    state: api::AppState,
    events: EventIngest,
    alerts: AlertIngest,
    history: HistoryIngest,
    keys: signing::KeySource,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("state", &self.state)
            .finish()
    }
}

impl ControlPlane {
    /// Connects to the database and migrates it, loads or creates the signing key.
    pub async fn new(config: &Config, registry: Arc<dyn NodeRegistry>) -> anyhow::Result<Self> {
        let store = store::Store::open(&config.database_url)
            .await
            .context("opening the database")?;
        let import = match config.signing_key_file.clone() {
            Some(path) => Some(
                tokio::task::spawn_blocking(move || keys::load_or_create_seed(&path))
                    .await
                    .context("loading the signing key")??,
            ),
            None => None,
        };
        let passwords = passwords::Passwords::new()
            .await
            .context("preparing the password hasher")?;
        let data_key = config.data_key.load().await?;
        tracing::info!(kid = data_key.kid(), "data key ready");
        let key_source = signing::KeySource {
            store: store.clone(),
            data_key: data_key.clone(),
            period_ms: i64::try_from(config.signing_key_period.as_millis()).unwrap_or(i64::MAX),
            import,
        };
        let ring = key_source
            .ring(clock::Now::read().ms)
            .await
            .context("loading the signing keys")?;
        tracing::info!(kid = ring.signer.kid(), "signing key ready");
        let (throttle, presence, places_notice) = match &config.redis_url {
            Some(url) => {
                let client = redis::Client::open(url.as_str()).context("the Redis URL")?;
                let conn = redis::aio::ConnectionManager::new(client)
                    .await
                    .context("connecting to Redis")?;
                let prefix = protocol::node::REDIS_PREFIX;
                (
                    throttle::Throttle::redis(conn.clone(), prefix),
                    presence::Presence::redis(conn.clone(), prefix),
                    places_notice::PlacesNotice::with_redis(conn, prefix),
                )
            }
            None => (
                throttle::Throttle::in_process(),
                presence::Presence::in_process(),
                places_notice::PlacesNotice::default(),
            ),
        };
        let fanout = match &config.redis_url {
            Some(url) => fanout::Fanout::redis(url).context("the Redis URL")?,
            None => fanout::Fanout::local(),
        };
        let vapid = load_vapid(&store, &data_key).await?;
        let push_queue = Arc::new(notify::PushQueue::default());
        let store_for_writer = store.clone();
        let shared = api::Shared {
            attachments: api::Attachments::open(&config.attachments)?,
            store,
            registry,
            tokens: tokens::Tokens::with_ring(ring, config.issuer.clone()),
            passwords,
            throttle,
            presence,
            data_key,
            trusted_proxies: config.trusted_proxies.clone(),
            push_allow_http: config.push_allow_http,
            ice: config.ice.clone(),
            push: config.push.clone(),
            push_queue: Arc::clone(&push_queue),
            vapid_public: vapid.public_b64().to_owned(),
            totp_issuer: config.issuer.clone(),
            region_hint: config.region_hint.clone(),
            location_url: config.location_url.clone(),
            places_notice,
            http: reqwest::Client::new(),
            writer: writer::MessageWriter::spawn(store_for_writer, fanout.clone()),
            fanout,
            closing: api::Closing::default(),
            revocations: revocations::Revocations::default(),
        };
        let sink = session_events::Sink {
            store: shared.store.clone(),
            fanout: shared.fanout.clone(),
            push: Arc::clone(&shared.push_queue),
        };
        let events = session_events::spawn_ingest(sink.clone());
        let alerts = session_events::spawn_alert_ingest(sink.clone());
        let history = session_events::spawn_history_ingest(sink);
        let state = api::AppState(Arc::new(shared));
        spawn_key_refresh(Arc::downgrade(&state.0), key_source.clone());
        notify::spawn(Arc::downgrade(&state.0), push_queue, vapid);
        api::spawn_attachment_sweeper(Arc::downgrade(&state.0));
        api::spawn_history_sweeper(Arc::downgrade(&state.0));
        Ok(Self {
            state,
            events,
            alerts,
            history,
            keys: key_source,
        })
    }

    /// Tells a location engine of this process whenever a group's places change.
    pub fn on_places_changed(&self, hook: PlacesHook) {
        self.state.places_notice.subscribe(hook);
    }

    /// Where media nodes of this process report their session events.
    pub fn session_events(&self) -> EventIngest {
        self.events.clone()
    }

    /// Where location engines of this process hand their alerts.
    pub fn location_alerts(&self) -> AlertIngest {
        self.alerts.clone()
    }

    /// Where location engines of this process hand the fixes of users who keep a history.
    pub fn location_history(&self) -> HistoryIngest {
        self.history.clone()
    }

    /// What the hourly sweep does, at a given time: deletes stored fixes older than their
    /// owner's retention. Answers how many. Tests call it with a simulated clock.
    pub async fn purge_location_history_at(&self, now_ms: i64) -> anyhow::Result<u64> {
        Ok(self.state.store.purge_location_history(now_ms).await?)
    }

    /// Starts consuming the session events media nodes and the alerts location engines append
    /// to Redis (keys under `prefix`).
    /// Entries another control plane read and never acknowledged are taken over after
    /// [`session_events::RECLAIM_IDLE`].
    pub async fn consume_redis_events(&self, url: &str, prefix: &str) -> anyhow::Result<()> {
        self.consume_redis_events_reclaiming(url, prefix, session_events::RECLAIM_IDLE)
            .await
    }

    /// As [`Self::consume_redis_events`], taking over entries left pending for `reclaim_idle`.
    pub async fn consume_redis_events_reclaiming(
        &self,
        url: &str,
        prefix: &str,
        reclaim_idle: std::time::Duration,
    ) -> anyhow::Result<()> {
        let sink = session_events::Sink {
            store: self.state.store.clone(),
            fanout: self.state.fanout.clone(),
            push: Arc::clone(&self.state.push_queue),
        };
        for feed in [
            session_events::Feed::Sessions,
            session_events::Feed::Alerts,
            session_events::Feed::History,
        ] {
            session_events::consume_redis(
                feed,
                sink.clone(),
                url.to_string(),
                prefix.to_string(),
                reclaim_idle,
            )
            .await?;
        }
        Ok(())
    }

    /// Every route, ready for `axum::serve` or `oneshot`.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// The key tokens are signed with now (tests mint tokens with it).
    pub fn signer(&self) -> protocol::token::Signer {
        self.state.tokens.signer()
    }

    /// What the background refresh does every minute, at a given time: stores the next signing
    /// key if one is due, then signs with and publishes the keys of `now_ms` (Unix ms). Tests
    /// call it with a simulated clock.
    pub async fn refresh_signing_keys_at(&self, now_ms: i64) -> anyhow::Result<()> {
        let ring = self.keys.ring(now_ms).await?;
        self.state.tokens.install(ring);
        Ok(())
    }
}

/// Re-reads the signing keys every [`signing::REFRESH_INTERVAL`] while the control plane lives.
/// The VAPID key every replica signs pushes with: created and sealed by the first to start.
/// A stored key that this data key cannot open (the data key was replaced) is replaced too:
/// browsers then need to subscribe again, as after any VAPID key change.
async fn load_vapid(
    store: &store::Store,
    data_key: &sealed::DataKey,
) -> anyhow::Result<webpush::VapidKey> {
    const CONTEXT: &str = "server_secrets.vapid";
    let candidate = webpush::VapidKey::generate(&mut rand::rngs::OsRng);
    let sealed = data_key.seal(&candidate, CONTEXT);
    let now = clock::Now::read().ms;
    let mut stored = store
        .server_secret("vapid", &sealed, now)
        .await
        .context("storing the VAPID key")?;
    let bytes = match data_key.open(&stored, CONTEXT) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(error = %e, "the stored VAPID key does not open; replacing it");
            stored = store
                .replace_server_secret("vapid", &stored, &sealed, now)
                .await
                .context("replacing the VAPID key")?;
            data_key
                .open(&stored, CONTEXT)
                .map_err(|e| anyhow::anyhow!("opening the VAPID key: {e}"))?
        }
    };
    let bytes = <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| anyhow::anyhow!("the stored VAPID key is not 32 bytes"))?;
    webpush::VapidKey::from_bytes(&bytes).context("the stored VAPID key is not a P-256 key")
}

fn spawn_key_refresh(state: std::sync::Weak<api::Shared>, keys: signing::KeySource) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(signing::REFRESH_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            match keys.ring(clock::Now::read().ms).await {
                Ok(ring) => state.tokens.install(ring),
                Err(e) => tracing::warn!(error = %e, "signing keys not refreshed"),
            }
        }
    });
}

/// Serves `cp` on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cp: ControlPlane,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, "control plane listening");
    let app = cp
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let state = Arc::clone(&cp.state.0);
    // Without TCP_NODELAY a small WebSocket frame written while an earlier one is unacknowledged
    // waits for the peer's delayed ACK (up to 40 ms on Linux): measured, it set the delivery
    // p90-p99 of the message loadtest at 35-50 ms even at half the rate.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // WebSockets would hold the graceful shutdown open: tell them to close.
            state.closing.close();
        })
        .await
        .context("serving HTTP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serve_answers_on_its_listener_and_stops_on_shutdown() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = std::env::temp_dir().join(format!("convoy-serve-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config {
            signing_key_file: Some(dir.join("keys/signing.key")),
            data_key: DataKeySource::File(dir.join("keys/data.key")),
            issuer: "convoy-test".into(),
            ..Config::new(
                "127.0.0.1:0".parse().unwrap(),
                format!("sqlite://{}?mode=rwc", dir.join("db").display()),
            )
        };
        let cp = ControlPlane::new(&config, Arc::new(InProcessRegistry::new()))
            .await
            .unwrap();
        let kid = cp.signer().kid().to_owned();
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, cp, async {
            let _ = stopped.await;
        }));

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();

        // The stored key outlives the process: a second start signs with the same key.
        let again = ControlPlane::new(&config, Arc::new(InProcessRegistry::new()))
            .await
            .unwrap();
        assert_eq!(again.signer().kid(), kid);
        // A fresh database starts from the key file.
        let fresh = Config {
            database_url: format!("sqlite://{}?mode=rwc", dir.join("db2").display()),
            ..config.clone()
        };
        let imported = ControlPlane::new(&fresh, Arc::new(InProcessRegistry::new()))
            .await
            .unwrap();
        assert_eq!(imported.signer().kid(), kid);
        // With another data key the stored key does not open: a new generation takes over.
        let other = Config {
            data_key: DataKeySource::Ephemeral,
            ..config.clone()
        };
        let rekeyed = ControlPlane::new(&other, Arc::new(InProcessRegistry::new()))
            .await
            .unwrap();
        assert_ne!(rekeyed.signer().kid(), kid);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn data_keys_are_32_bytes_of_either_base64() {
        let key = [0xfbu8; 32];
        use base64::Engine as _;
        let std = base64::engine::general_purpose::STANDARD.encode(key);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
        assert!(std.contains('+') || std.contains('/'));
        assert_eq!(decode_key(&std).unwrap(), key);
        assert_eq!(decode_key(&format!(" {url}\n")).unwrap(), key);
        assert!(decode_key("c2hvcnQ").is_err());
        assert!(decode_key("not base64 at all!").is_err());
    }

    #[test]
    fn config_debug_hides_the_database_password() {
        let config = Config {
            redis_url: Some("redis://:r3dis@cache:6379".into()),
            data_key: DataKeySource::Base64("c2VjcmV0LWtleS1ieXRlcw".into()),
            ..Config::new(
                "127.0.0.1:8080".parse().unwrap(),
                "postgres://convoy:s3cret@db:5432/convoy?sslmode=require",
            )
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("r3dis"), "{shown}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("postgres://convoy:***@db:5432/convoy?sslmode=require"));
        assert_eq!(
            redact_password("sqlite://a/b.db?mode=rwc"),
            "sqlite://a/b.db?mode=rwc"
        );
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_password("postgres://u:p:q@h"), "postgres://u:***@h");
        assert_eq!(redact_password("nonsense"), "nonsense");
    }
}
