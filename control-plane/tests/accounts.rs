//! The caller's account through the HTTP API, on SQLite and PostgreSQL: profile, settings,
//! plan, public profiles and devices to notify.

mod support;

use axum::http::StatusCode;
use base64::Engine as _;
use control_plane::InProcessRegistry;
use futures_util::future::join_all;
use protocol::account::{
    AccountView, DeviceList, DeviceView, MessageNotifications, Platform, ProfileView,
    SubscriptionStatus, SubscriptionTier, UserSettings,
};
use serde_json::{Value, json};
use support::{App, PASSWORD, with_each_backend};

type TestApp = App<InProcessRegistry>;

async fn me(app: &TestApp, token: &str) -> AccountView {
    app.get("/v1/users/me", token).await.parse(StatusCode::OK)
}

fn web_subscription(endpoint: &str) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut point = [9u8; 65];
    point[0] = 4;
    json!({"platform": "web", "subscription": {"endpoint": endpoint, "expirationTime": null,
        "keys": {"p256dh": b64(&point), "auth": b64(&[3; 16])}}})
}

#[tokio::test]
async fn the_profile_changes_and_a_new_email_needs_the_password() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let _bob = app.register("bob").await;
        let t = &ann.access_token;

        let account = me(&app, t).await;
        assert_eq!(account.id, ann.user.id);
        assert_eq!(account.username, "ann");
        assert_eq!(account.email, "ann@example.org");
        assert_eq!(account.picture_url, None);
        assert!(account.last_login_at.is_some(), "registering signs in");
        assert_eq!(account.subscription.tier, SubscriptionTier::Free);
        assert_eq!(account.subscription.status, SubscriptionStatus::Active);
        assert_eq!(account.subscription.renews_at, None);
        let s = account.settings;
        assert_eq!(s.notifications.messages, MessageNotifications::All);
        assert!(s.notifications.calls && s.privacy.show_presence && s.audio.echo_cancellation);
        assert_eq!((s.audio.voice_volume, s.audio.music_volume), (100, 80));

        let changed: AccountView = app
            .patch(
                "/v1/users/me",
                t,
                json!({"username": "Ann_R", "picture_url": "https://img.example.org/a.png"}),
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(changed.username, "Ann_R");
        assert_eq!(
            changed.picture_url.as_deref(),
            Some("https://img.example.org/a.png")
        );
        // Names are unique whatever their case; nothing changes on a refusal.
        let taken = app
            .patch(
                "/v1/users/me",
                t,
                json!({"username": "BOB", "picture_url": ""}),
            )
            .await;
        taken.problem(StatusCode::CONFLICT);
        assert_eq!(me(&app, t).await.username, "Ann_R");
        assert!(me(&app, t).await.picture_url.is_some());
        for bad in [
            json!({"username": "a b"}),
            json!({"picture_url": "http://img.example.org/a.png"}),
            json!({"email": "not-an-address", "password": PASSWORD}),
        ] {
            app.patch("/v1/users/me", t, bad)
                .await
                .problem(StatusCode::BAD_REQUEST);
        }
        app.patch("/v1/users/me", t, json!({"nickname": "x"}))
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY);
        let removed: AccountView = app
            .patch("/v1/users/me", t, json!({"picture_url": ""}))
            .await
            .parse(StatusCode::OK);
        assert_eq!(removed.picture_url, None);

        // A new email: the password is required and checked.
        app.patch("/v1/users/me", t, json!({"email": "ann@new.example"}))
            .await
            .problem(StatusCode::BAD_REQUEST);
        app.patch(
            "/v1/users/me",
            t,
            json!({"email": "ann@new.example", "password": "not the password"}),
        )
        .await
        .problem(StatusCode::FORBIDDEN);
        app.patch(
            "/v1/users/me",
            t,
            json!({"email": "BOB@example.org", "password": PASSWORD}),
        )
        .await
        .problem(StatusCode::CONFLICT);
        let moved: AccountView = app
            .patch(
                "/v1/users/me",
                t,
                json!({"email": "Ann@New.example", "password": PASSWORD}),
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(moved.email, "ann@new.example");
        let login = app
            .call(
                axum::http::Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"email": "ann@new.example", "password": PASSWORD})),
            )
            .await;
        assert_eq!(login.status, StatusCode::OK, "{:?}", login.json);
        let old = app
            .call(
                axum::http::Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({"email": "ann@example.org", "password": PASSWORD})),
            )
            .await;
        old.problem(StatusCode::UNAUTHORIZED);
    })
    .await;
}

#[tokio::test]
async fn settings_change_partially_and_concurrent_changes_all_stay() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let t = &ann.access_token;
        let uri = "/v1/users/me/settings";

        let after: UserSettings = app
            .patch(uri, t, json!({"notifications": {"messages": "mentions"}}))
            .await
            .parse(StatusCode::OK);
        assert_eq!(after.notifications.messages, MessageNotifications::Mentions);
        assert!(after.notifications.calls, "untouched settings stay");

        // Ten requests at once, each changing a different setting: none is lost.
        let changes = [
            json!({"notifications": {"calls": false}}),
            json!({"notifications": {"proximity": false}}),
            json!({"privacy": {"show_presence": false}}),
            json!({"privacy": {"share_location": false}}),
            json!({"audio": {"noise_suppression": false}}),
            json!({"audio": {"echo_cancellation": false}}),
            json!({"audio": {"auto_gain": false}}),
            json!({"audio": {"voice_volume": 150}}),
            json!({"audio": {"music_volume": 0}}),
            json!({"notifications": {"messages": "none"}}),
        ];
        let replies = join_all(changes.into_iter().map(|c| app.patch(uri, t, c))).await;
        for r in replies {
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
        }
        let s = me(&app, t).await.settings;
        assert_eq!(s.notifications.messages, MessageNotifications::None);
        assert!(!s.notifications.calls && !s.notifications.proximity);
        assert!(!s.privacy.show_presence && !s.privacy.share_location);
        assert!(!s.audio.noise_suppression && !s.audio.echo_cancellation && !s.audio.auto_gain);
        assert_eq!((s.audio.voice_volume, s.audio.music_volume), (150, 0));

        for (bad, status) in [
            (
                json!({"audio": {"voice_volume": 201}}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"audio": {"music_volume": 101}}),
                StatusCode::BAD_REQUEST,
            ),
            (
                json!({"audio": {"music_volume": 300}}),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                json!({"notifications": {"messages": "some"}}),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                json!({"privacy": {"ghost": true}}),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
        ] {
            app.patch(uri, t, bad).await.problem(status);
        }
        assert_eq!(
            me(&app, t).await.settings,
            s,
            "refused changes change nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn a_profile_is_visible_only_to_people_who_share_a_group() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        app.patch(
            "/v1/users/me",
            &bob.access_token,
            json!({"picture_url": "https://img.example.org/b.png"}),
        )
        .await
        .parse::<AccountView>(StatusCode::OK);
        let bob_uri = format!("/v1/users/{}", bob.user.id);
        let stranger = app.get(&bob_uri, &ann.access_token).await;
        stranger.problem(StatusCode::NOT_FOUND);
        let unknown = format!("/v1/users/{}", uuid::Uuid::now_v7());
        let missing = app.get(&unknown, &ann.access_token).await;
        missing.problem(StatusCode::NOT_FOUND);
        assert_eq!(
            stranger.problem(StatusCode::NOT_FOUND).detail,
            missing.problem(StatusCode::NOT_FOUND).detail,
            "a stranger and a missing account look the same"
        );
        app.get("/v1/users/not-an-id", &ann.access_token)
            .await
            .problem(StatusCode::BAD_REQUEST);

        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        let seen: ProfileView = app
            .get(&bob_uri, &ann.access_token)
            .await
            .parse(StatusCode::OK);
        assert_eq!(seen.username, "bob");
        assert_eq!(
            seen.picture_url.as_deref(),
            Some("https://img.example.org/b.png")
        );
        let raw = app.get(&bob_uri, &ann.access_token).await;
        assert!(
            raw.json.get("email").is_none(),
            "a profile carries no email"
        );
        let own: ProfileView = app
            .get(&format!("/v1/users/{}", ann.user.id), &ann.access_token)
            .await
            .parse(StatusCode::OK);
        assert_eq!(own.username, "ann");
    })
    .await;
}

#[tokio::test]
async fn devices_register_idempotently_move_between_accounts_and_are_capped() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let uri = "/v1/users/me/devices";
        let list = |token: String| {
            let app = app.clone();
            async move {
                app.get(uri, &token)
                    .await
                    .parse::<DeviceList>(StatusCode::OK)
                    .devices
            }
        };

        let phone: DeviceView = app
            .post(
                uri,
                &ann.access_token,
                json!({"platform": "ios", "token": "apns-0123456789abcdef"}),
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(phone.platform, Platform::Ios);
        assert_eq!(phone.hint, "89abcdef");
        let again: DeviceView = app
            .post(
                uri,
                &ann.access_token,
                json!({"platform": "ios", "token": "apns-0123456789abcdef"}),
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(again.id, phone.id, "registering again refreshes the device");
        let browser: DeviceView = app
            .post(
                uri,
                &ann.access_token,
                web_subscription("https://push.example.org/s/1"),
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(browser.platform, Platform::Web);
        let ids: Vec<String> = list(ann.access_token.clone())
            .await
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(
            ids,
            vec![browser.id.clone(), phone.id.clone()],
            "most recently seen first"
        );

        for bad in [
            json!({"platform": "web", "token": "x"}),
            json!({"platform": "ios"}),
            json!({"platform": "android", "token": "has space"}),
            web_subscription("http://push.example.org/s/1"),
            json!({"platform": "web", "subscription": {"endpoint": "https://push.example.org/s",
                "keys": {"p256dh": "AAAA", "auth": "AAAA"}}}),
        ] {
            app.post(uri, &ann.access_token, bad)
                .await
                .problem(StatusCode::BAD_REQUEST);
        }
        app.post(
            uri,
            &ann.access_token,
            json!({"platform": "fax", "token": "x"}),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);

        // The phone changes hands: its token now notifies bob, not ann.
        let moved: DeviceView = app
            .post(
                uri,
                &bob.access_token,
                json!({"platform": "ios", "token": "apns-0123456789abcdef"}),
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(list(bob.access_token.clone()).await, vec![moved.clone()]);
        let left: Vec<String> = list(ann.access_token.clone())
            .await
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(left, vec![browser.id.clone()]);

        // Only the owner can forget a device.
        app.delete(&format!("{uri}/{}", moved.id), &ann.access_token)
            .await
            .problem(StatusCode::NOT_FOUND);
        let gone = app
            .delete(&format!("{uri}/{}", moved.id), &bob.access_token)
            .await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT);
        app.delete(&format!("{uri}/{}", moved.id), &bob.access_token)
            .await
            .problem(StatusCode::NOT_FOUND);
        assert!(list(bob.access_token.clone()).await.is_empty());

        // At most 20 devices: the least recently seen go first.
        let mut registered = Vec::new();
        for i in 0..22 {
            let d: DeviceView = app
                .post(
                    uri,
                    &bob.access_token,
                    json!({"platform": "android", "token": format!("fcm-{i:04}")}),
                )
                .await
                .parse(StatusCode::OK);
            registered.push(d.id);
        }
        let kept: Vec<String> = list(bob.access_token.clone())
            .await
            .into_iter()
            .map(|d| d.id)
            .collect();
        let mut newest: Vec<String> = registered[2..].to_vec();
        newest.reverse();
        assert_eq!(kept, newest);
    })
    .await;
}
