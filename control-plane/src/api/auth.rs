//! Accounts and sign-in: `POST /v1/auth/register`, `POST /v1/auth/login`, and the public keys
//! at `GET /.well-known/jwks.json`.
//!
//! Login answers the same 401 after the same argon2 work whether the email is unknown or the
//! password wrong (no enumeration by message, status or timing).

use super::AppState;
use super::error::AppError;
use super::extract::Json;
use crate::clock::Now;
use crate::domain::{Email, Password, Username};
use crate::store::{Inserted, NewRefreshToken, NewUser};
use crate::tokens::{ACCESS_TTL_SECS, REFRESH_TTL_SECS, RefreshToken};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::api::{AuthResponse, LoginRequest, RegisterRequest, UserView};
use protocol::ids::UserId;
use uuid::Uuid;

pub(super) async fn register(
    State(state): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<AuthResponse>), AppError> {
    let username = Username::parse(&req.username)?;
    let email = Email::parse(&req.email)?;
    let password = Password::parse(&req.password)?;
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
    let answer = sign_in(&state, user, now).await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

pub(super) async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> Result<Json<AuthResponse>, AppError> {
    let account = state
        .store
        .user_by_email(&Email::normalize(&req.email))
        .await?;
    let stored = account.as_ref().map(|a| a.password_hash.clone());
    let matches = state.passwords.verify(req.password, stored).await?;
    let Some(account) = account.filter(|_| matches) else {
        return Err(AppError::BadCredentials);
    };

    let now = Now::read();
    state.store.touch_login(account.id, now.ms).await?;
    let user = UserView {
        id: account.id,
        username: account.username,
        email: account.email,
    };
    Ok(Json(sign_in(&state, user, now).await?))
}

pub(super) async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.tokens.jwks().clone()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// A new access token and a new refresh token (a new family) for `user`.
async fn sign_in(state: &AppState, user: UserView, now: Now) -> Result<AuthResponse, AppError> {
    let refresh = RefreshToken::generate();
    state
        .store
        .insert_refresh_token(&NewRefreshToken {
            user: user.id,
            family: Uuid::now_v7(),
            token_hash: &refresh.hash,
            now_ms: now.ms,
            expires_at_ms: now.plus_secs_ms(REFRESH_TTL_SECS),
        })
        .await?;
    Ok(AuthResponse {
        access_token: state.tokens.access(user.id, now.secs()),
        refresh_token: refresh.secret,
        expires_in: ACCESS_TTL_SECS,
        user,
    })
}
