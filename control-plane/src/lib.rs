//! Convoy's control plane: accounts, sign-in, groups, invites and media-session allocation over
//! a REST API (axum), with SQL as the truth (sqlx; SQLite embedded or PostgreSQL).
//!
//! The launcher builds a [`ControlPlane`] from a [`Config`] and a [`NodeRegistry`], then hands it
//! to [`serve`]; tests call [`ControlPlane::router`] directly with `tower::ServiceExt::oneshot`.
//!
//! Code map:
//! - [`registry`]: which media nodes are alive ([`NodeRegistry`]; [`InProcessRegistry`] in dev).
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
mod clock;
mod domain;
mod keys;
mod passwords;
pub mod registry;
mod store;
mod tokens;

pub use api::error::PROBLEM_TYPE_PREFIX;
pub use registry::{InProcessRegistry, NodeRegistry};

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// How to run the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where [`serve`]'s caller should bind (the library itself binds nothing).
    pub listen: SocketAddr,
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    pub database_url: String,
    /// A file holding the 32-byte Ed25519 seed, created (mode 0600) if missing; `None` for a
    /// key that lives as long as the process.
    pub signing_key_file: Option<PathBuf>,
    /// The `iss` of every token signed, checked on every access token.
    pub issuer: String,
    /// The region whose media nodes new sessions prefer.
    pub region_hint: Option<String>,
}

/// A ready control plane: database migrated, signing key loaded, password hasher warmed.
pub struct ControlPlane {
    state: api::AppState,
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
        let seed = match config.signing_key_file.clone() {
            Some(path) => tokio::task::spawn_blocking(move || keys::load_or_create_seed(&path))
                .await
                .context("loading the signing key")??,
            None => keys::ephemeral_seed(),
        };
        let signer = protocol::token::Signer::from_seed(&seed);
        tracing::info!(kid = signer.kid(), "signing key ready");
        let passwords = passwords::Passwords::new()
            .await
            .context("preparing the password hasher")?;
        let shared = api::Shared {
            store,
            registry,
            tokens: tokens::Tokens::new(signer, config.issuer.clone()),
            passwords,
            region_hint: config.region_hint.clone(),
        };
        Ok(Self {
            state: api::AppState(Arc::new(shared)),
        })
    }

    /// Every route, ready for `axum::serve` or `oneshot`.
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// The key every token is signed with (tests mint tokens with it).
    pub fn signer(&self) -> &protocol::token::Signer {
        self.state.tokens.signer()
    }
}

/// Serves `cp` on `listener` until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cp: ControlPlane,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the listen address")?;
    tracing::info!(%addr, "control plane listening");
    axum::serve(listener, cp.router())
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")
}
