//! The caller's own account: `GET/PATCH /v1/users/me`, `PATCH /v1/users/me/settings`,
//! `/v1/users/me/devices`, and another user's public profile `GET /v1/users/{id}`.

use crate::ids::UserId;
use serde::{Deserialize, Serialize};

/// A closed set of names stored and sent as lowercase strings.
macro_rules! names {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// The name as stored and sent.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// Parses a stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

names! {
    /// Which messages notify a member who is not connected.
    MessageNotifications {
        All = "all",
        /// Only messages that name the user (`@username`).
        Mentions = "mentions",
        None = "none",
    }
}

names! {
    /// The plan an account is on (set by billing, never by the user).
    SubscriptionTier {
        Free = "free",
        Plus = "plus",
        Family = "family",
    }
}

names! {
    /// Where the account's plan stands.
    SubscriptionStatus {
        Active = "active",
        Trialing = "trialing",
        PastDue = "past_due",
        Canceled = "canceled",
    }
}

names! {
    /// What kind of push service reaches a device.
    Platform {
        /// A browser, through Web Push (RFC 8030).
        Web = "web",
        Ios = "ios",
        Android = "android",
    }
}

/// When to notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NotificationSettings {
    pub messages: MessageNotifications,
    /// Incoming 1:1 calls and group voice sessions starting.
    pub calls: bool,
    /// Proximity alerts (a member coming near or going away).
    pub proximity: bool,
}

/// What others may learn about the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PrivacySettings {
    /// Others see whether the user is online; when off the user always appears offline.
    pub show_presence: bool,
    /// The user's position may be shared in groups that allow location sharing.
    pub share_location: bool,
    /// Days the user's own shared positions are kept for them (`GET
    /// /v1/users/me/location-history`); 0, the default: none is stored. Turning it to 0 deletes
    /// what was kept.
    #[serde(default)]
    pub location_history_days: u16,
}

/// Audio processing and levels the user's clients apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AudioSettings {
    pub noise_suppression: bool,
    pub echo_cancellation: bool,
    pub auto_gain: bool,
    /// Playback level of voices, percent (0 to 200).
    pub voice_volume: u8,
    /// Playback level of shared music, percent (0 to 100).
    pub music_volume: u8,
}

/// Every setting of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserSettings {
    pub notifications: NotificationSettings,
    pub privacy: PrivacySettings,
    pub audio: AudioSettings,
}

/// The account's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Subscription {
    pub tier: SubscriptionTier,
    pub status: SubscriptionStatus,
    /// When the current period ends (RFC 3339); absent on the free tier.
    pub renews_at: Option<String>,
}

/// `GET /v1/users/me`: the caller's own account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountView {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub picture_url: Option<String>,
    pub created_at: String,
    pub last_login_at: Option<String>,
    pub settings: UserSettings,
    pub subscription: Subscription,
}

/// `PATCH /v1/users/me`: what to change; what is absent stays. Changing the email needs the
/// current password.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateAccountRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// An `https://` URL; the empty string removes the picture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The current password, required with `email`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// Notification settings to change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateNotificationSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<MessageNotifications>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proximity: Option<bool>,
}

/// Privacy settings to change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdatePrivacySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_presence: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_location: Option<bool>,
    /// 0 (keep no history, delete what was kept) to 365.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_history_days: Option<u16>,
}

/// Audio settings to change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateAudioSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_suppression: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_cancellation: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_gain: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice_volume: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub music_volume: Option<u8>,
}

/// `PATCH /v1/users/me/settings`: the settings to change; the answer is all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateSettingsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notifications: Option<UpdateNotificationSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<UpdatePrivacySettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<UpdateAudioSettings>,
}

/// `GET /v1/users/{id}`: another user as people who share a group with them see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProfileView {
    pub id: UserId,
    pub username: String,
    pub picture_url: Option<String>,
}

/// The keys of a Web Push subscription (RFC 8291), base64url.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebPushKeys {
    /// The user agent's P-256 public key, uncompressed (65 bytes).
    pub p256dh: String,
    /// The authentication secret (16 bytes).
    pub auth: String,
}

/// A browser's `PushSubscription.toJSON()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebPushSubscription {
    pub endpoint: String,
    /// Ignored: the push service reports an expired subscription with 404 or 410.
    #[serde(
        default,
        rename = "expirationTime",
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration_time: Option<f64>,
    pub keys: WebPushKeys,
}

/// `POST /v1/users/me/devices`: a device to notify. `web` needs `subscription`; `ios` and
/// `android` need `token`. Registering a device again refreshes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterDeviceRequest {
    pub platform: Platform,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<WebPushSubscription>,
}

/// `GET /v1/push/vapid-public-key`: the key browsers pass to `PushManager.subscribe()` as
/// `applicationServerKey` (an uncompressed P-256 point, base64url).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VapidPublicKey {
    pub public_key: String,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceView {
    pub id: String,
    pub platform: Platform,
    /// The last characters of the token or endpoint, to tell devices apart.
    pub hint: String,
    pub created_at: String,
    pub last_seen_at: String,
}

/// `GET /v1/users/me/devices`: most recently seen first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_their_stored_form() {
        for status in [
            SubscriptionStatus::Active,
            SubscriptionStatus::Trialing,
            SubscriptionStatus::PastDue,
            SubscriptionStatus::Canceled,
        ] {
            assert_eq!(SubscriptionStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(Platform::parse("WEB"), None);
    }

    #[test]
    fn a_browser_subscription_parses_and_unknown_fields_are_refused() {
        let json = r#"{"platform":"web","subscription":{"endpoint":"https://push.example/x",
            "expirationTime":null,"keys":{"p256dh":"BA","auth":"AA"}}}"#;
        let req: RegisterDeviceRequest = serde_json::from_str(json).unwrap();
        assert_eq!(req.platform, Platform::Web);
        assert_eq!(req.subscription.unwrap().keys.auth, "AA");
        let bad = r#"{"platform":"ios","token":"t","colour":"red"}"#;
        assert!(serde_json::from_str::<RegisterDeviceRequest>(bad).is_err());
    }
}
