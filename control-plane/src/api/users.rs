//! The caller's account: `GET/PATCH /v1/users/me` (profile; a new email needs the password),
//! `PATCH /v1/users/me/settings` (notification, privacy and audio settings, partial),
//! `POST/GET /v1/users/me/devices` and `DELETE /v1/users/me/devices/{id}` (devices to notify),
//! and `GET /v1/users/{id}`: another user's profile, visible to people who share a group with
//! them (404 to anyone else, as if the account did not exist).

use super::AppState;
use super::auth::confirm_password;
use super::error::AppError;
use super::extract::{Caller, Json, Path};
use crate::clock::{Now, rfc3339};
use crate::domain::{self, Email, PushSubscription, Username};
use crate::store::{AccountChanges, AccountRow, DeviceRow, Inserted, NewDevice};
use axum::extract::State;
use axum::http::StatusCode;
use protocol::account::{
    AccountView, DeviceList, DeviceView, Platform, ProfileView, RegisterDeviceRequest,
    Subscription, UpdateAccountRequest, UpdateSettingsRequest, UserSettings, VapidPublicKey,
};
use protocol::ids::UserId;
use uuid::Uuid;

const NO_USER: &str = "no such user";

#[utoipa::path(get, path = "/v1/users/me", tag = "users", summary = "Your account", responses((status = 200, description = "Account", body = AccountView)))]
pub(super) async fn me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<AccountView>, AppError> {
    Ok(Json(view(&account(&state, caller.user).await?)))
}

#[utoipa::path(patch, path = "/v1/users/me", tag = "users", summary = "Change your profile", request_body = UpdateAccountRequest, responses((status = 200, description = "Account", body = AccountView)))]
pub(super) async fn update_me(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<UpdateAccountRequest>,
) -> Result<Json<AccountView>, AppError> {
    let changes = AccountChanges {
        username: req
            .username
            .as_deref()
            .map(|u| Username::parse(u).map(|u| u.as_str().to_owned()))
            .transpose()?,
        picture_url: req
            .picture_url
            .as_deref()
            .map(domain::picture_url)
            .transpose()?,
        email: req
            .email
            .as_deref()
            .map(|e| Email::parse(e).map(|e| e.as_str().to_owned()))
            .transpose()?,
    };
    if changes.email.is_some() {
        let Some(password) = req.password else {
            return Err(AppError::InvalidInput(
                "changing the email needs the current password in `password`".into(),
            ));
        };
        confirm_password(&state, caller.user, password, Now::read()).await?;
    }
    if state.store.update_account(caller.user, &changes).await? == Inserted::Duplicate {
        return Err(AppError::Conflict(
            "another account already has this username or email",
        ));
    }
    Ok(Json(view(&account(&state, caller.user).await?)))
}

#[utoipa::path(patch, path = "/v1/users/me/settings", tag = "users", summary = "Change your settings", request_body = UpdateSettingsRequest, responses((status = 200, description = "Settings", body = UserSettings)))]
pub(super) async fn update_settings(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<UpdateSettingsRequest>,
) -> Result<Json<UserSettings>, AppError> {
    if req
        .privacy
        .and_then(|p| p.location_history_days)
        .is_some_and(|d| d > protocol::location::MAX_HISTORY_DAYS)
    {
        return Err(AppError::InvalidInput(
            "privacy.location_history_days must be 0 to 365".into(),
        ));
    }
    if let Some(audio) = req.audio {
        if audio.voice_volume.is_some_and(|v| v > 200) {
            return Err(AppError::InvalidInput(
                "audio.voice_volume must be 0 to 200 (percent)".into(),
            ));
        }
        if audio.music_volume.is_some_and(|v| v > 100) {
            return Err(AppError::InvalidInput(
                "audio.music_volume must be 0 to 100 (percent)".into(),
            ));
        }
    }
    state.store.update_settings(caller.user, &req).await?;
    Ok(Json(account(&state, caller.user).await?.settings))
}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", summary = "Someone who shares a group with you", params(("id" = protocol::ids::UserId, Path, description = "The user")), responses((status = 200, description = "Profile", body = ProfileView)))]
pub(super) async fn profile(
    State(state): State<AppState>,
    caller: Caller,
    Path(user): Path<UserId>,
) -> Result<Json<ProfileView>, AppError> {
    if !state.store.may_see_profile(caller.user, user).await? {
        return Err(AppError::NotFound(NO_USER));
    }
    let Some(row) = state.store.account(user).await? else {
        return Err(AppError::NotFound(NO_USER));
    };
    Ok(Json(ProfileView {
        id: row.id,
        username: row.username,
        picture_url: row.picture_url,
    }))
}

#[utoipa::path(post, path = "/v1/users/me/devices", tag = "users", summary = "Register a device to notify", request_body = RegisterDeviceRequest, responses((status = 200, description = "Device", body = DeviceView)))]
pub(super) async fn register_device(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<RegisterDeviceRequest>,
) -> Result<Json<DeviceView>, AppError> {
    let device = match (req.platform, req.token, req.subscription) {
        (Platform::Web, None, Some(sub)) => {
            let sub = PushSubscription::parse(
                &sub.endpoint,
                &sub.keys.p256dh,
                &sub.keys.auth,
                state.push_allow_http,
            )?;
            NewDevice {
                platform: Platform::Web,
                token: sub.endpoint,
                p256dh: Some(sub.p256dh),
                auth: Some(sub.auth),
            }
        }
        (Platform::Web, _, _) => {
            return Err(AppError::InvalidInput(
                "a web device needs `subscription` (PushSubscription.toJSON()) and no `token`"
                    .into(),
            ));
        }
        (platform, Some(token), None) => NewDevice {
            platform,
            token: domain::device_token(&token)?,
            p256dh: None,
            auth: None,
        },
        (_, _, _) => {
            return Err(AppError::InvalidInput(
                "an ios or android device needs `token` and no `subscription`".into(),
            ));
        }
    };
    let row = state
        .store
        .upsert_device(caller.user, &device, Now::read().ms)
        .await?;
    Ok(Json(device_view(&row)))
}

#[utoipa::path(get, path = "/v1/users/me/devices", tag = "users", summary = "Your devices", responses((status = 200, description = "Devices", body = DeviceList)))]
pub(super) async fn devices(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<DeviceList>, AppError> {
    let devices = state.store.devices_of(caller.user).await?;
    Ok(Json(DeviceList {
        devices: devices.iter().map(device_view).collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/users/me/devices/{id}", tag = "users", summary = "Forget a device", params(("id" = uuid::Uuid, Path, description = "The device")), responses((status = 204, description = "Forgotten")))]
pub(super) async fn delete_device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, AppError> {
    if state.store.delete_device(caller.user, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::NotFound("no such device"))
    }
}

/// `GET /v1/push/vapid-public-key`: the `applicationServerKey` for
/// `PushManager.subscribe()` (public; the same on every replica).
#[utoipa::path(get, path = "/v1/push/vapid-public-key", tag = "users", summary = "The key browsers subscribe to Web Push with", security(()), responses((status = 200, description = "Key", body = VapidPublicKey)))]
pub(super) async fn vapid_public_key(State(state): State<AppState>) -> Json<VapidPublicKey> {
    Json(VapidPublicKey {
        public_key: state.vapid_public.clone(),
    })
}

async fn account(state: &AppState, user: UserId) -> Result<AccountRow, AppError> {
    state
        .store
        .account(user)
        .await?
        .ok_or(AppError::InvalidToken(
            "the account no longer exists".into(),
        ))
}

fn view(row: &AccountRow) -> AccountView {
    AccountView {
        id: row.id,
        username: row.username.clone(),
        email: row.email.clone(),
        picture_url: row.picture_url.clone(),
        created_at: rfc3339(row.created_at_ms),
        last_login_at: row.last_login_at_ms.map(rfc3339),
        settings: row.settings,
        subscription: Subscription {
            tier: row.tier,
            status: row.status,
            renews_at: row.renews_at_ms.map(rfc3339),
        },
    }
}

fn device_view(row: &DeviceRow) -> DeviceView {
    let tail = row.token.len().saturating_sub(8);
    DeviceView {
        id: row.id.to_string(),
        platform: row.platform,
        hint: row.token.get(tail..).unwrap_or_default().to_owned(),
        created_at: rfc3339(row.created_at_ms),
        last_seen_at: rfc3339(row.last_seen_at_ms),
    }
}
