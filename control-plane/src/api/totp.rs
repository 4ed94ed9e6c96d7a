//! The second factor: `GET /v1/auth/totp` (status), `POST /v1/auth/totp` (enrol, with the
//! password), `POST /v1/auth/totp/confirm` (first code: turns it on and answers the recovery
//! codes), `POST /v1/auth/totp/disable` and `POST /v1/auth/totp/recovery-codes` (with a code).
//!
//! Secrets are sealed with the data key (see `sealed`), bound to their row. Every code is
//! budgeted per account (`throttle::CODES`) and spent once: a TOTP step by a conditional
//! UPDATE of `last_step`, a recovery code by marking it used.

use super::AppState;
use super::auth::{admit, confirm_password};
use super::error::AppError;
use super::extract::{Caller, Json};
use crate::clock::Now;
use crate::throttle;
use crate::totp;
use axum::extract::State;
use axum::http::StatusCode;
use protocol::api::{PasswordConfirmation, RecoveryCodes, TotpCode, TotpEnrollment, TotpStatus};
use protocol::ids::UserId;

/// What a sealed secret is bound to: its column and its user.
fn secret_context(user: UserId) -> String {
    format!("totp_factors.secret_sealed:{user}")
}

/// `GET /v1/auth/totp`.
#[utoipa::path(get, path = "/v1/auth/totp", tag = "auth", summary = "Whether TOTP is on", responses((status = 200, description = "Status", body = TotpStatus)))]
pub(super) async fn status(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TotpStatus>, AppError> {
    let enabled = state
        .store
        .totp_factor(caller.user)
        .await?
        .is_some_and(|f| f.enabled);
    let recovery_codes_left = if enabled {
        state.store.recovery_codes_left(caller.user).await?
    } else {
        0
    };
    Ok(Json(TotpStatus {
        enabled,
        recovery_codes_left,
    }))
}

/// `POST /v1/auth/totp`: a new secret, not active until confirmed with a code from it.
#[utoipa::path(post, path = "/v1/auth/totp", tag = "auth", summary = "Start TOTP enrolment", request_body = PasswordConfirmation, responses((status = 201, description = "Secret and otpauth URI", body = TotpEnrollment)))]
pub(super) async fn enroll(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<PasswordConfirmation>,
) -> Result<(StatusCode, Json<TotpEnrollment>), AppError> {
    let now = Now::read();
    let account = confirm_password(&state, caller.user, req.password, now).await?;
    let secret = totp::new_secret();
    let sealed = state.data_key.seal(&secret, &secret_context(account.id));
    if !state
        .store
        .put_pending_totp(account.id, &sealed, now.ms)
        .await?
    {
        return Err(AppError::Conflict(
            "TOTP is already on for this account; disable it first",
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(TotpEnrollment {
            secret: totp::base32(&secret),
            otpauth_uri: totp::otpauth_uri(&state.totp_issuer, &account.email, &secret),
        }),
    ))
}

/// `POST /v1/auth/totp/confirm`: the first code from the new secret turns TOTP on; answers a
/// fresh set of recovery codes, shown this once.
#[utoipa::path(post, path = "/v1/auth/totp/confirm", tag = "auth", summary = "Confirm TOTP with a first code", request_body = TotpCode, responses((status = 200, description = "Recovery codes", body = RecoveryCodes)))]
pub(super) async fn confirm(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<TotpCode>,
) -> Result<Json<RecoveryCodes>, AppError> {
    let now = Now::read();
    let user = caller.user;
    let budget = format!("codes:{user}");
    admit(&state, &budget, throttle::CODES, now).await?;
    let Some(factor) = state.store.totp_factor(user).await?.filter(|f| !f.enabled) else {
        return Err(AppError::Conflict(
            "no TOTP enrolment is waiting for confirmation",
        ));
    };
    let secret = open_secret(&state, user, &factor.secret_sealed)?;
    let step = totp::parse_code(&req.code)
        .and_then(|code| totp::matching_step(&secret, code, now.secs(), factor.last_step));
    let Some(step) = step else {
        return Err(AppError::BadCode);
    };
    if !state
        .store
        .spend_totp_step(user, step, true, now.ms)
        .await?
    {
        return Err(AppError::BadCode);
    }
    state.throttle.forget(&budget, now.ms).await;
    tracing::info!(%user, "TOTP turned on");
    Ok(Json(new_recovery_codes(&state, user, now).await?))
}

/// `POST /v1/auth/totp/disable`: with a TOTP or recovery code.
#[utoipa::path(post, path = "/v1/auth/totp/disable", tag = "auth", summary = "Turn TOTP off", request_body = TotpCode, responses((status = 204, description = "Off")))]
pub(super) async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<TotpCode>,
) -> Result<StatusCode, AppError> {
    let now = Now::read();
    spend_code(&state, caller.user, &req.code, true, now).await?;
    state.store.remove_totp(caller.user).await?;
    tracing::info!(user = %caller.user, "TOTP turned off");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/auth/totp/recovery-codes`: with a TOTP code, a new set replacing the old one.
#[utoipa::path(post, path = "/v1/auth/totp/recovery-codes", tag = "auth", summary = "New recovery codes", request_body = TotpCode, responses((status = 200, description = "Recovery codes", body = RecoveryCodes)))]
pub(super) async fn renew_recovery_codes(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<TotpCode>,
) -> Result<Json<RecoveryCodes>, AppError> {
    let now = Now::read();
    spend_code(&state, caller.user, &req.code, false, now).await?;
    Ok(Json(new_recovery_codes(&state, caller.user, now).await?))
}

/// Checks and spends a code of `user`'s active factor: a TOTP code of a step not used before,
/// or (with `recovery`) an unused recovery code. Budgeted per account.
pub(super) async fn spend_code(
    state: &AppState,
    user: UserId,
    code: &str,
    recovery: bool,
    now: Now,
) -> Result<(), AppError> {
    let budget = format!("codes:{user}");
    admit(state, &budget, throttle::CODES, now).await?;
    let Some(factor) = state.store.totp_factor(user).await?.filter(|f| f.enabled) else {
        return Err(AppError::Conflict("TOTP is not on for this account"));
    };
    let spent = if let Some(code) = totp::parse_code(code) {
        let secret = open_secret(state, user, &factor.secret_sealed)?;
        match totp::matching_step(&secret, code, now.secs(), factor.last_step) {
            Some(step) => {
                state
                    .store
                    .spend_totp_step(user, step, false, now.ms)
                    .await?
            }
            None => false,
        }
    } else {
        match totp::recovery_code_hash(code).filter(|_| recovery) {
            Some(hash) => state.store.spend_recovery_code(user, &hash, now.ms).await?,
            None => false,
        }
    };
    if !spent {
        return Err(AppError::BadCode);
    }
    state.throttle.forget(&budget, now.ms).await;
    Ok(())
}

fn open_secret(state: &AppState, user: UserId, sealed: &str) -> Result<Vec<u8>, AppError> {
    state
        .data_key
        .open(sealed, &secret_context(user))
        .map_err(AppError::internal)
}

async fn new_recovery_codes(
    state: &AppState,
    user: UserId,
    now: Now,
) -> Result<RecoveryCodes, AppError> {
    let codes = totp::new_recovery_codes();
    let hashes: Vec<String> = codes
        .iter()
        .filter_map(|c| totp::recovery_code_hash(c))
        .collect();
    state
        .store
        .replace_recovery_codes(user, &hashes, now.ms)
        .await?;
    Ok(RecoveryCodes {
        recovery_codes: codes,
    })
}
