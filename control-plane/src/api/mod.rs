//! The HTTP API: routes, shared state, extractors and the problem+json error.
//!
//! Handlers validate input into domain types, call the store, the registry and the allocator,
//! and shape the answer; they hold no SQL and no allocation policy. Every failure, including a
//! body axum cannot parse or a path that does not exist, answers RFC 9457 problem+json.
//!
//! Group visibility rule: a caller who is not a member of a group gets 404 for everything under
//! it, exactly as if it did not exist; a member who lacks a right (an admin-only action) gets 403.

mod attachments;
mod auth;
mod calls;
pub(crate) mod error;
mod events;
pub(crate) mod extract;
mod groups;
mod health;
mod location;
mod messages;
mod music;
mod openapi;
mod participants;
mod places;
mod sessions;
mod totp;
mod users;

use crate::fanout::Fanout;
use crate::passwords::Passwords;
use crate::registry::NodeRegistry;
use crate::sealed::DataKey;
use crate::store::Store;
use crate::throttle::Throttle;
use crate::tokens::Tokens;
use crate::writer::MessageWriter;
pub(crate) use attachments::{Attachments, spawn_sweeper as spawn_attachment_sweeper};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post};
use error::AppError;
pub(crate) use location::spawn_history_sweeper;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use tower_http::trace::TraceLayer;

/// The largest request body read, in bytes.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
pub(crate) struct Shared {
    pub store: Store,
    /// Where attachment bytes go, and the upload limits.
    pub attachments: attachments::Attachments,
    pub registry: Arc<dyn NodeRegistry>,
    pub tokens: Tokens,
    pub passwords: Passwords,
    /// Attempt budgets against guessing.
    pub throttle: Throttle,
    /// Who is connected and who is typing.
    pub presence: crate::presence::Presence,
    /// Seals sensitive columns (TOTP secrets).
    pub data_key: DataKey,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `http://` Web Push endpoints are accepted.
    pub push_allow_http: bool,
    /// STUN/TURN for 1:1 calls.
    pub ice: crate::ice::IceConfig,
    /// How notifications are pushed.
    pub push: crate::notify::PushConfig,
    /// Groups with messages to turn into pushes.
    pub push_queue: Arc<crate::notify::PushQueue>,
    /// The VAPID public key (base64url) browsers subscribe with.
    pub vapid_public: String,
    /// The issuer shown in authenticator apps.
    pub totp_issuer: String,
    pub region_hint: Option<String>,
    /// Where clients stream their location (handed out with location tokens).
    pub location_url: Option<String>,
    /// Tells location engines when a group's places change.
    pub places_notice: crate::places_notice::PlacesNotice,
    /// Client for relaying moderation to media nodes.
    pub http: reqwest::Client,
    /// Group events to the `/v1/events` connections, here and on the other replicas.
    pub fanout: Fanout,
    /// Batches message sends into shared transactions.
    pub writer: MessageWriter,
    /// Which sign-in sessions are signed out (their access tokens refused).
    pub revocations: crate::revocations::Revocations,
    /// Set when the server shuts down: long-lived connections close.
    pub closing: Closing,
}

/// Tells long-lived connections (WebSockets) that the server is shutting down.
#[derive(Debug)]
pub(crate) struct Closing(tokio::sync::watch::Sender<bool>);

impl Default for Closing {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(false))
    }
}

impl Closing {
    pub(crate) fn close(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once [`Closing::close`] has been called.
    pub(crate) async fn cancelled(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .field("tokens", &self.tokens)
            .field("region_hint", &self.region_hint)
            .finish_non_exhaustive()
    }
}

/// Cheap-to-clone handle on [`Shared`], the router's state.
#[derive(Debug, Clone)]
pub(crate) struct AppState(pub Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Every route of the control plane.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(health::livez))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/readyz", get(health::readyz))
        .route("/.well-known/jwks.json", get(auth::jwks))
        .route("/v1/auth/register", post(auth::register))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/login/mfa", post(auth::login_mfa))
        .route("/v1/auth/password", post(auth::change_password))
        .route("/v1/auth/totp", get(totp::status).post(totp::enroll))
        .route("/v1/auth/totp/confirm", post(totp::confirm))
        .route("/v1/auth/totp/disable", post(totp::disable))
        .route(
            "/v1/auth/totp/recovery-codes",
            post(totp::renew_recovery_codes),
        )
        .route("/v1/auth/refresh", post(auth::refresh))
        .route("/v1/auth/logout", post(auth::logout))
        .route(
            "/v1/auth/sessions",
            get(auth::sessions).delete(auth::revoke_other_sessions),
        )
        .route("/v1/auth/sessions/{id}", delete(auth::revoke_session))
        .route("/v1/events", get(events::events))
        .route("/v1/calls", post(calls::create))
        .route("/v1/location/token", post(location::token))
        .route("/v1/location/places", get(places::for_engine))
        .route(
            "/v1/users/me/location-history",
            get(location::history).delete(location::delete_history),
        )
        .route("/v1/push/vapid-public-key", get(users::vapid_public_key))
        .route("/v1/users/me", get(users::me).patch(users::update_me))
        .route("/v1/users/me/settings", patch(users::update_settings))
        .route(
            "/v1/users/me/devices",
            post(users::register_device).get(users::devices),
        )
        .route("/v1/users/me/devices/{id}", delete(users::delete_device))
        .route("/v1/users/{id}", get(users::profile))
        .route("/v1/groups", post(groups::create).get(groups::list))
        .route(
            "/v1/groups/{id}",
            get(groups::get)
                .patch(groups::update)
                .delete(groups::delete),
        )
        .route("/v1/groups/{id}/join", post(groups::join))
        .route("/v1/groups/{id}/members", get(groups::members))
        .route("/v1/groups/{id}/presence", get(groups::presence))
        .route(
            "/v1/groups/{id}/members/{user}",
            patch(groups::set_role).delete(groups::remove_member),
        )
        .route(
            "/v1/groups/{id}/messages",
            post(messages::send).get(messages::list),
        )
        .route(
            "/v1/groups/{id}/messages/{message}",
            patch(messages::edit).delete(messages::delete),
        )
        .route("/v1/groups/{id}/markers", post(messages::markers))
        .route("/v1/groups/{id}/attachments", post(attachments::upload))
        .route(
            "/v1/attachments/{id}",
            get(attachments::download).delete(attachments::delete),
        )
        .route("/v1/groups/{id}/invites", post(groups::invite))
        .route(
            "/v1/groups/{id}/places",
            get(places::list).post(places::create),
        )
        .route(
            "/v1/groups/{id}/places/{place}",
            patch(places::update).delete(places::remove),
        )
        .route("/v1/groups/{id}/sessions", post(sessions::allocate))
        .route("/v1/invites/{code}/accept", post(groups::accept))
        .route("/v1/sessions/{id}/participants", get(participants::list))
        .route(
            "/v1/sessions/{id}/music",
            get(music::get).post(music::control),
        )
        .route(
            "/v1/sessions/{id}/participants/{pid}",
            delete(participants::remove),
        )
        .route(
            "/v1/sessions/{id}/participants/{pid}/mute",
            post(participants::mute),
        )
        .route(
            "/v1/sessions/{id}/participants/{pid}/speak",
            post(participants::speak),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route")
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
