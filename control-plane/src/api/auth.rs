//! Accounts and sign-in: `POST /v1/auth/register`, `POST /v1/auth/login`, the public keys at
//! `GET /.well-known/jwks.json`, and the sign-in sessions: `POST /v1/auth/refresh` (rotation),
//! `POST /v1/auth/logout`, `GET /v1/auth/sessions` (devices), `DELETE /v1/auth/sessions/{id}` and
//! `DELETE /v1/auth/sessions` (every other device).
//!
//! Also `POST /v1/auth/login/mfa` (the second factor) and `POST /v1/auth/password`.
//!
//! Login answers the same 401 after the same argon2 work whether the email is unknown or the
//! password wrong (no enumeration by message, status or timing), and budgets attempts (see
//! `throttle`): per client address, and per account unless the device proves with its
//! trusted-device token that it signed in to the account before, so someone guessing from
//! elsewhere never slows a known device down and nobody is ever locked out. A refresh token is spent by its
//! use; presenting it again after [`REFRESH_REUSE_GRACE_SECS`] signs its session out (see
//! `store::auth_sessions`). Access tokens are not revocable: they outlive a sign-out by at most
//! their [`ACCESS_TTL_SECS`].

use super::AppState;
use super::error::AppError;
use super::extract::{Caller, ClientAddr, Json, Path};
use super::openapi::AnyJson;
use crate::clock::{Now, rfc3339};
use crate::domain::{Email, Password, Username};
use crate::store::{Inserted, NewAuthSession, NewUser, Refreshed, UserRow};
use crate::throttle;
use crate::tokens::{ACCESS_TTL_SECS, REFRESH_REUSE_GRACE_SECS, REFRESH_TTL_SECS, RefreshToken};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::api::{
    AuthResponse, AuthSessionView, ChangePasswordRequest, LoginRequest, MfaLoginRequest,
    PasswordChanged, RefreshRequest, RegisterRequest, RevokedSessions, UserView,
};
use protocol::ids::UserId;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// Longest `User-Agent` kept for the device list.
const MAX_USER_AGENT: usize = 256;

#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", summary = "Create an account", request_body = RegisterRequest, security(()), responses((status = 201, description = "Signed in", body = AuthResponse)))]
pub(super) async fn register(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<AuthResponse>), AppError> {
    // Every attempt counts, before any check or password work.
    let address = format!("register:{}", client.0);
    admit(&state, &address, throttle::REGISTRATIONS, Now::read()).await?;
    let username = Username::parse(&req.username)?;
    let email = Email::parse(&req.email)?;
    let password = Password::parse(&req.password)?;
    password.check_context(username.as_str(), email.as_str())?;
    let password_hash = state.passwords.hash(password).await?;

    let now = Now::read();
    let user = UserView {
        id: UserId::from_uuid(Uuid::now_v7()),
        username: username.as_str().to_owned(),
        email: email.as_str().to_owned(),
    };
    let inserted = state
        .store
        .insert_user(&NewUser {
            id: user.id,
            username: &user.username,
            email: &user.email,
            password_hash: &password_hash,
            now_ms: now.ms,
        })
        .await?;
    if inserted == Inserted::Duplicate {
        return Err(AppError::Conflict(
            "an account with this username or email already exists",
        ));
    }
    let mut answer = sign_in(&state, user, user_agent(&headers), now).await?;
    answer.trusted_device = Some(state.tokens.trusted_device(answer.user.id, now.secs()));
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `POST /v1/auth/login`. Budgets: the client address, then the account (or, for a device
/// that signed in to it before, that device). A refusal (429) comes before any password work,
/// and an unknown email is budgeted exactly like a known one.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", summary = "Sign in with email and password", request_body = LoginRequest, security(()), responses((status = 200, description = "Signed in", body = AuthResponse)))]
pub(super) async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    Json(req): Json<LoginRequest>,
) -> Result<Json<AuthResponse>, AppError> {
    let now = Now::read();
    let address = format!("address:{}", client.0);
    admit(&state, &address, throttle::ADDRESS, now).await?;
    let email = Email::normalize(&req.email);
    let account = state.store.user_by_email(&email).await?;
    let device = match (&req.trusted_device, &account) {
        (Some(token), Some(account)) => {
            state
                .tokens
                .trusted_device_of(token, account.id, now.secs())
        }
        _ => None,
    };
    let (budget, policy) = match device {
        Some(device) => (format!("device:{device}"), throttle::TRUSTED_DEVICE),
        None => (
            format!("account:{}", short_digest(&email)),
            throttle::ACCOUNT,
        ),
    };
    admit(&state, &budget, policy, now).await?;

    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let matches = state.passwords.verify(req.password, stored).await?;
    let Some(account) = account.filter(|_| matches) else {
        return Err(AppError::BadCredentials);
    };
    state.throttle.forget(&budget, now.ms).await;
    state.throttle.refund(&address, now.ms).await;

    if state
        .store
        .totp_factor(account.id)
        .await?
        .is_some_and(|f| f.enabled)
    {
        return Err(AppError::MfaRequired(
            state.tokens.mfa_challenge(account.id, now.secs()),
        ));
    }
    Ok(Json(signed_in(&state, account, &headers, now).await?))
}

/// `POST /v1/auth/login/mfa`: the second step, with the login's `mfa_token` and a TOTP or
/// recovery code (budgeted per account, see [`super::totp::spend_code`]).
#[utoipa::path(post, path = "/v1/auth/login/mfa", tag = "auth", summary = "Finish a sign-in with the second factor", request_body = MfaLoginRequest, security(()), responses((status = 200, description = "Signed in", body = AuthResponse)))]
pub(super) async fn login_mfa(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<MfaLoginRequest>,
) -> Result<Json<AuthResponse>, AppError> {
    let now = Now::read();
    let user = state
        .tokens
        .verify_mfa_challenge(&req.mfa_token, now.secs())
        .map_err(|e| AppError::InvalidToken(format!("mfa_token: {e}")))?;
    super::totp::spend_code(&state, user, &req.code, true, now).await?;
    let account = account(&state, user).await?;
    Ok(Json(signed_in(&state, account, &headers, now).await?))
}

/// The account a token speaks for, or 401 when it was deleted since.
async fn account(state: &AppState, user: UserId) -> Result<UserRow, AppError> {
    state
        .store
        .user_by_id(user)
        .await?
        .ok_or(AppError::InvalidToken(
            "the account no longer exists".into(),
        ))
}

/// The end of a login: records it and answers a new session and a trusted-device token.
async fn signed_in(
    state: &AppState,
    account: UserRow,
    headers: &HeaderMap,
    now: Now,
) -> Result<AuthResponse, AppError> {
    state.store.touch_login(account.id, now.ms).await?;
    let user = UserView {
        id: account.id,
        username: account.username,
        email: account.email,
    };
    let mut answer = sign_in(state, user, user_agent(headers), now).await?;
    answer.trusted_device = Some(state.tokens.trusted_device(answer.user.id, now.secs()));
    Ok(answer)
}

/// `POST /v1/auth/password`: a new password over the current one; every other sign-in
/// session is signed out unless the caller asks otherwise. Budgeted like codes, per account.
#[utoipa::path(post, path = "/v1/auth/password", tag = "auth", summary = "Change the password (and sign other sessions out)", request_body = ChangePasswordRequest, responses((status = 200, description = "Changed", body = PasswordChanged)))]
pub(super) async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<ChangePasswordRequest>,
) -> Result<Json<PasswordChanged>, AppError> {
    let now = Now::read();
    let account = confirm_password(&state, caller.user, req.current_password, now).await?;
    let new = Password::parse(&req.new_password)?;
    new.check_context(&account.username, &account.email)?;
    let hash = state.passwords.hash(new).await?;
    let changed = state
        .store
        .change_password(account.id, &account.password_hash, &hash, now.ms)
        .await?;
    if !changed {
        return Err(AppError::Conflict(
            "the password was changed by another request meanwhile; try again",
        ));
    }
    let revoked_sessions = if req.sign_out_other_sessions {
        state
            .store
            .revoke_other_auth_sessions(caller.user, caller.session, now.ms, "password-changed")
            .await
            .inspect(|_| signed_out(&state, caller.user, None, caller.session, now.ms))?
    } else {
        0
    };
    tracing::info!(user = %account.id, revoked_sessions, "password changed");
    Ok(Json(PasswordChanged { revoked_sessions }))
}

/// The caller's account, after checking its password again (a sensitive change). A wrong
/// password is 403: the caller's token is fine, the confirmation is not.
pub(super) async fn confirm_password(
    state: &AppState,
    user: UserId,
    password: String,
    now: Now,
) -> Result<UserRow, AppError> {
    let budget = format!("password:{user}");
    admit(state, &budget, throttle::CODES, now).await?;
    let account = account(state, user).await?;
    let matches = state
        .passwords
        .verify(password, Some(account.password_hash.clone()))
        .await?;
    if !matches {
        return Err(AppError::Forbidden("the current password is wrong"));
    }
    state.throttle.forget(&budget, now.ms).await;
    Ok(account)
}

/// Admits an attempt on `budget` or answers 429 with the wait.
pub(super) async fn admit(
    state: &AppState,
    budget: &str,
    policy: throttle::Policy,
    now: Now,
) -> Result<(), AppError> {
    state
        .throttle
        .admit(budget, policy, now.ms)
        .await
        .map_err(AppError::TooManyAttempts)
}

/// A budget key for an email that keeps the address itself out of Redis.
fn short_digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", summary = "The public keys tokens are signed with", security(()), responses((status = 200, description = "JWKS (RFC 7517)", body = AnyJson)))]
pub(super) async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.tokens.jwks()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// A new sign-in session for `user`: an access token and the session's first refresh token.
async fn sign_in(
    state: &AppState,
    user: UserView,
    user_agent: Option<&str>,
    now: Now,
) -> Result<AuthResponse, AppError> {
    let refresh = RefreshToken::generate();
    let session = Uuid::now_v7();
    state
        .store
        .create_auth_session(&NewAuthSession {
            id: session,
            user: user.id,
            token_hash: &refresh.hash,
            user_agent,
            now_ms: now.ms,
            expires_at_ms: now.plus_secs_ms(REFRESH_TTL_SECS),
        })
        .await?;
    Ok(AuthResponse {
        access_token: state.tokens.access(user.id, Some(session), now.secs()),
        refresh_token: refresh.secret,
        expires_in: ACCESS_TTL_SECS,
        user,
        trusted_device: None,
    })
}

/// The request's `User-Agent`, if it is printable and not absurdly long (cut at a char boundary).
fn user_agent(headers: &HeaderMap) -> Option<&str> {
    let ua = headers.get(header::USER_AGENT)?.to_str().ok()?.trim();
    if ua.is_empty() {
        return None;
    }
    let mut end = ua.len().min(MAX_USER_AGENT);
    while !ua.is_char_boundary(end) {
        end -= 1;
    }
    Some(&ua[..end])
}

/// `POST /v1/auth/refresh`: spends the refresh token and answers a new pair for its session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", summary = "Rotate a refresh token", request_body = RefreshRequest, security(()), responses((status = 200, description = "New tokens", body = AuthResponse)))]
pub(super) async fn refresh(
    State(state): State<AppState>,
    Json(req): Json<RefreshRequest>,
) -> Result<Json<AuthResponse>, AppError> {
    let now = Now::read();
    let next = RefreshToken::generate();
    let outcome = state
        .store
        .refresh(
            &RefreshToken::hash_of(&req.refresh_token),
            &next.hash,
            now.ms,
            now.plus_secs_ms(REFRESH_TTL_SECS),
            REFRESH_REUSE_GRACE_SECS as i64 * 1000,
        )
        .await?;
    let (user, session) = match outcome {
        Refreshed::Rotated { user, session } => (user, session),
        Refreshed::Invalid => {
            return Err(AppError::InvalidToken(
                "the refresh token is unknown, expired, already replaced or signed out".into(),
            ));
        }
        Refreshed::Reused { user, session } => {
            tracing::warn!(%session, "a spent refresh token came back: session signed out");
            // Its access tokens and open connections stop here at once.
            signed_out(&state, user, Some(session), None, Now::read().ms);
            return Err(AppError::InvalidToken(
                "the refresh token was already used: its session is signed out; sign in again"
                    .into(),
            ));
        }
    };
    let account = account(&state, user).await?;
    Ok(Json(AuthResponse {
        access_token: state.tokens.access(user, Some(session), now.secs()),
        refresh_token: next.secret,
        expires_in: ACCESS_TTL_SECS,
        trusted_device: None,
        user: UserView {
            id: account.id,
            username: account.username,
            email: account.email,
        },
    }))
}

/// `POST /v1/auth/logout`: signs out the session of the access token (its refresh token stops
/// working at once; the access token itself expires on its own).
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", summary = "End this sign-in session", responses((status = 204, description = "Signed out")))]
pub(super) async fn logout(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<StatusCode, AppError> {
    let Some(session) = caller.session else {
        return Err(AppError::InvalidInput(
            "this access token belongs to no sign-in session".into(),
        ));
    };
    let now = Now::read();
    state
        .store
        .revoke_auth_session(caller.user, session, now.ms, "logout")
        .await?;
    signed_out(&state, caller.user, Some(session), None, now.ms);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/auth/sessions`: the caller's signed-in devices.
#[utoipa::path(get, path = "/v1/auth/sessions", tag = "auth", summary = "Your sign-in sessions", responses((status = 200, description = "Sessions", body = Vec<AuthSessionView>)))]
pub(super) async fn sessions(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<AuthSessionView>>, AppError> {
    let rows = state
        .store
        .auth_sessions(caller.user, Now::read().ms)
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuthSessionView {
                current: caller.session == Some(r.id),
                id: r.id,
                created_at: rfc3339(r.created_at_ms),
                last_used_at: rfc3339(r.last_used_at_ms),
                user_agent: r.user_agent,
            })
            .collect(),
    ))
}

/// `DELETE /v1/auth/sessions/{id}`: signs one of the caller's devices out.
#[utoipa::path(delete, path = "/v1/auth/sessions/{id}", tag = "auth", summary = "End one sign-in session", params(("id" = uuid::Uuid, Path, description = "The session")), responses((status = 204, description = "Ended")))]
pub(super) async fn revoke_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, AppError> {
    let now = Now::read();
    let revoked = state
        .store
        .revoke_auth_session(caller.user, id, now.ms, "revoked")
        .await?;
    if revoked {
        signed_out(&state, caller.user, Some(id), None, now.ms);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound("no such signed-in session"))
    }
}

/// `DELETE /v1/auth/sessions`: signs out every device but the caller's.
#[utoipa::path(delete, path = "/v1/auth/sessions", tag = "auth", summary = "End every other sign-in session", responses((status = 200, description = "Ended", body = RevokedSessions)))]
pub(super) async fn revoke_other_sessions(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RevokedSessions>, AppError> {
    let now = Now::read();
    let revoked = state
        .store
        .revoke_other_auth_sessions(caller.user, caller.session, now.ms, "revoked")
        .await?;
    signed_out(&state, caller.user, None, caller.session, now.ms);
    Ok(Json(RevokedSessions { revoked }))
}

/// After SQL revoked sign-in sessions of `user` (`session` alone, or every one but `keep`):
/// their access tokens are refused here at once (other replicas look again within
/// `revocations::RECHECK_MS`), and their open `/v1/events` connections close, on every replica.
fn signed_out(
    state: &AppState,
    user: UserId,
    session: Option<Uuid>,
    keep: Option<Uuid>,
    now_ms: i64,
) {
    match session {
        Some(session) => state.revocations.revoked(session, user, now_ms),
        None => state.revocations.revoked_all_but(user, keep),
    }
    state.fanout.publish(crate::fanout::Item::SignedOut {
        user,
        session,
        keep,
    });
}
