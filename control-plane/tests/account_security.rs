//! Password changes, attempt budgets and the second factor, end to end through the router on
//! SQLite and PostgreSQL. TOTP codes are computed here independently of the crate (RFC 6238).

mod support;

use axum::http::{Method, StatusCode, header};
use hmac::{Hmac, Mac as _};
use protocol::api::{AuthResponse, PasswordChanged, RecoveryCodes, TotpEnrollment, TotpStatus};
use serde_json::{Value, json};
use sqlx::Row as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use support::{App, PASSWORD, SimulatedRegistry, with_each_backend};

type Reg = SimulatedRegistry;

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, last], 40_000))
}

async fn login(app: &App<Reg>, from: SocketAddr, body: Value) -> support::Reply {
    app.post_from(from, "/v1/auth/login", body).await
}

fn credentials(name: &str, password: &str) -> Value {
    json!({"email": format!("{name}@example.org"), "password": password})
}

// ---------------------------------------------------------------- password change

#[tokio::test]
async fn a_password_change_signs_the_other_devices_out_and_only_the_new_password_works() {
    with_each_backend(Reg::default, |app| async move {
        let ann = app.register("ann").await;
        let phone: AuthResponse = login(&app, addr(1), credentials("ann", PASSWORD))
            .await
            .parse(StatusCode::OK);
        let change = |current: &str, new: &str, others: Option<bool>| {
            let mut body = json!({"current_password": current, "new_password": new});
            if let Some(others) = others {
                body["sign_out_other_sessions"] = json!(others);
            }
            let app = app.clone();
            let token = ann.access_token.clone();
            async move { app.post("/v1/auth/password", &token, body).await }
        };

        let wrong = change("not my password", "a brand new secret", None).await;
        wrong.problem(StatusCode::FORBIDDEN);
        let weak = change(PASSWORD, "password123", None).await;
        weak.problem(StatusCode::BAD_REQUEST);
        let own_name = change(PASSWORD, "ann@example.org", None).await;
        own_name.problem(StatusCode::BAD_REQUEST);

        let changed: PasswordChanged = change(PASSWORD, "a brand new secret", None)
            .await
            .parse(StatusCode::OK);
        assert_eq!(changed.revoked_sessions, 1, "the phone, not this device");
        let refresh = |token: String| {
            let app = app.clone();
            async move {
                app.call(
                    Method::POST,
                    "/v1/auth/refresh",
                    None,
                    Some(json!({ "refresh_token": token })),
                )
                .await
            }
        };
        refresh(phone.refresh_token.clone())
            .await
            .problem(StatusCode::UNAUTHORIZED);
        let still: AuthResponse = refresh(ann.refresh_token.clone())
            .await
            .parse(StatusCode::OK);
        assert_eq!(still.user.id, ann.user.id);

        login(&app, addr(1), credentials("ann", PASSWORD))
            .await
            .problem(StatusCode::UNAUTHORIZED);
        login(&app, addr(1), credentials("ann", "a brand new secret"))
            .await
            .parse::<AuthResponse>(StatusCode::OK);

        // Keeping the other devices signed in, when asked.
        let kept: PasswordChanged = change("a brand new secret", "another new secret", Some(false))
            .await
            .parse(StatusCode::OK);
        assert_eq!(kept.revoked_sessions, 0);

        let db = app.db().await;
        let row = sqlx::query("SELECT password_changed_at FROM users WHERE username = 'ann'")
            .fetch_one(&db)
            .await
            .unwrap();
        assert!(row.get::<Option<i64>, _>(0).is_some());
    })
    .await;
}

// ---------------------------------------------------------------- attempt budgets

#[tokio::test]
async fn guessing_one_account_is_slowed_alike_for_unknown_emails_but_never_a_known_device() {
    with_each_backend(Reg::default, |app| async move {
        let ann = app.register("ann").await;
        let device = ann
            .trusted_device
            .clone()
            .expect("register marks the device");
        // Six wrong guesses from six addresses (the address budget stays out of it): the first
        // five are free, the sixth sets a delay; the seventh must wait, even with the right
        // password, for the account and for an email nobody has alike.
        for email in ["ann", "nobody"] {
            for i in 0..6 {
                login(&app, addr(10 + i), credentials(email, "wrong guess"))
                    .await
                    .problem(StatusCode::UNAUTHORIZED);
            }
            let refused = login(&app, addr(20), credentials(email, PASSWORD)).await;
            let problem = refused.problem(StatusCode::TOO_MANY_REQUESTS);
            assert!(problem.type_.ends_with("too-many-attempts"), "{problem:?}");
            assert_eq!(refused.headers[header::RETRY_AFTER], "1", "{refused:?}");
        }

        // Ann's own device, which signed in before, is not slowed down by the guessing.
        let mut body = credentials("ann", PASSWORD);
        body["trusted_device"] = json!(device);
        let signed_in: AuthResponse = login(&app, addr(30), body.clone())
            .await
            .parse(StatusCode::OK);
        assert!(signed_in.trusted_device.is_some());
        // A device token of another account, or garbage, earns nothing.
        let bob = app.register("bob").await;
        body["trusted_device"] = json!(bob.trusted_device.unwrap());
        login(&app, addr(31), body.clone())
            .await
            .problem(StatusCode::TOO_MANY_REQUESTS);
        body["trusted_device"] = json!("garbage");
        login(&app, addr(32), body)
            .await
            .problem(StatusCode::TOO_MANY_REQUESTS);
    })
    .await;
}

#[tokio::test]
async fn one_address_guessing_many_accounts_is_slowed_but_its_correct_sign_ins_cost_nothing() {
    with_each_backend(Reg::default, |app| async move {
        app.register("ann").await;
        let guesser = addr(1);
        // Correct sign-ins from the address are refunded: they never use up its budget.
        for _ in 0..40 {
            login(&app, guesser, credentials("ann", PASSWORD))
                .await
                .parse::<AuthResponse>(StatusCode::OK);
        }
        // Thirty free failures over thirty accounts, a thirty-first that sets the delay.
        for i in 0..31 {
            login(
                &app,
                guesser,
                credentials(&format!("user{i}"), "wrong guess"),
            )
            .await
            .problem(StatusCode::UNAUTHORIZED);
        }
        let refused = login(&app, guesser, credentials("ann", PASSWORD)).await;
        refused.problem(StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers[header::RETRY_AFTER], "1");
        // Another address is not affected.
        login(&app, addr(2), credentials("ann", PASSWORD))
            .await
            .parse::<AuthResponse>(StatusCode::OK);
    })
    .await;
}

// ---------------------------------------------------------------- TOTP

/// RFC 6238 (HMAC-SHA-1, 6 digits, 30 s) over a base32 secret.
fn totp(secret_b32: &str, step: u64) -> String {
    let mut bits = 0u64;
    let mut count = 0;
    let mut secret = Vec::new();
    for c in secret_b32.bytes() {
        let v = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
            .iter()
            .position(|x| *x == c)
            .unwrap() as u64;
        bits = (bits << 5) | v;
        count += 5;
        if count >= 8 {
            count -= 8;
            secret.push((bits >> count) as u8);
        }
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&secret).unwrap();
    mac.update(&step.to_be_bytes());
    let d = mac.finalize().into_bytes();
    let o = (d[19] & 0xf) as usize;
    let v = u32::from_be_bytes([d[o] & 0x7f, d[o + 1], d[o + 2], d[o + 3]]) % 1_000_000;
    format!("{v:06}")
}

fn step_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
}

#[tokio::test]
async fn totp_is_enrolled_with_the_password_then_every_sign_in_needs_a_code_used_once() {
    with_each_backend(Reg::default, |app| async move {
        let ann = app.register("ann").await;
        let token = ann.access_token.clone();
        let get_status = || {
            let (app, token) = (app.clone(), token.clone());
            async move {
                app.call(Method::GET, "/v1/auth/totp", Some(&token), None)
                    .await
                    .parse::<TotpStatus>(StatusCode::OK)
            }
        };
        assert!(!get_status().await.enabled);

        app.post("/v1/auth/totp", &token, json!({"password": "wrong"}))
            .await
            .problem(StatusCode::FORBIDDEN);
        let enrolment: TotpEnrollment = app
            .post("/v1/auth/totp", &token, json!({"password": PASSWORD}))
            .await
            .parse(StatusCode::CREATED);
        assert!(
            enrolment.otpauth_uri.starts_with("otpauth://totp/")
                && enrolment
                    .otpauth_uri
                    .contains(&format!("secret={}", enrolment.secret)),
            "{enrolment:?}"
        );
        assert_eq!(enrolment.secret.len(), 32, "160 bits in base32");
        // Stored sealed, never as the secret itself.
        let db = app.db().await;
        let sealed: String = sqlx::query("SELECT secret_sealed FROM totp_factors")
            .fetch_one(&db)
            .await
            .unwrap()
            .get(0);
        assert!(sealed.starts_with("v1."), "{sealed}");
        assert!(!sealed.contains(&enrolment.secret));

        // Not on until confirmed: sign-in still takes the password alone.
        login(&app, addr(1), credentials("ann", PASSWORD))
            .await
            .parse::<AuthResponse>(StatusCode::OK);
        let step = step_now();
        let confirm = |code: String| {
            let (app, token) = (app.clone(), token.clone());
            async move {
                app.post("/v1/auth/totp/confirm", &token, json!({ "code": code }))
                    .await
            }
        };
        let wrong_code = if totp(&enrolment.secret, step) == "000000" {
            "000001"
        } else {
            "000000"
        };
        confirm(wrong_code.into())
            .await
            .problem(StatusCode::UNAUTHORIZED);
        let first: RecoveryCodes = confirm(totp(&enrolment.secret, step))
            .await
            .parse(StatusCode::OK);
        assert_eq!(first.recovery_codes.len(), 10);
        confirm(totp(&enrolment.secret, step + 1))
            .await
            .problem(StatusCode::CONFLICT);
        let status = get_status().await;
        assert!(status.enabled);
        assert_eq!(status.recovery_codes_left, 10);

        // The password alone now answers mfa-required with a token for the second step.
        let mfa_token = || {
            let app = app.clone();
            async move {
                let reply = login(&app, addr(1), credentials("ann", PASSWORD)).await;
                let problem = reply.problem(StatusCode::UNAUTHORIZED);
                assert!(problem.type_.ends_with("mfa-required"), "{problem:?}");
                problem.mfa_token.expect("an mfa_token")
            }
        };
        let second = |mfa: String, code: String| {
            let app = app.clone();
            async move {
                app.call(
                    Method::POST,
                    "/v1/auth/login/mfa",
                    None,
                    Some(json!({"mfa_token": mfa, "code": code})),
                )
                .await
            }
        };
        // A wrong password still says nothing about the second factor.
        let wrong = login(&app, addr(1), credentials("ann", "wrong guess")).await;
        assert!(wrong.problem(StatusCode::UNAUTHORIZED).mfa_token.is_none());

        // The confirming code was spent: it does not sign in.
        let mfa = mfa_token().await;
        let spent = second(mfa.clone(), totp(&enrolment.secret, step)).await;
        assert!(
            spent
                .problem(StatusCode::UNAUTHORIZED)
                .type_
                .ends_with("invalid-code")
        );
        // An access token is not an mfa_token.
        second(ann.access_token.clone(), totp(&enrolment.secret, step + 1))
            .await
            .problem(StatusCode::UNAUTHORIZED);

        // The next step's code renews the recovery codes (TOTP only, not a recovery code).
        let renew = |code: String| {
            let (app, token) = (app.clone(), token.clone());
            async move {
                app.post(
                    "/v1/auth/totp/recovery-codes",
                    &token,
                    json!({ "code": code }),
                )
                .await
            }
        };
        renew(first.recovery_codes[0].clone())
            .await
            .problem(StatusCode::UNAUTHORIZED);
        let renewed: RecoveryCodes = renew(totp(&enrolment.secret, step + 1))
            .await
            .parse(StatusCode::OK);
        // ... and that code is spent too.
        second(mfa.clone(), totp(&enrolment.secret, step + 1))
            .await
            .problem(StatusCode::UNAUTHORIZED);

        // Old recovery codes are gone; a new one signs in once, typed any way.
        second(mfa.clone(), first.recovery_codes[1].clone())
            .await
            .problem(StatusCode::UNAUTHORIZED);
        let typed = renewed.recovery_codes[0].to_uppercase().replace('-', " ");
        let signed_in: AuthResponse = second(mfa.clone(), typed).await.parse(StatusCode::OK);
        assert_eq!(signed_in.user.id, ann.user.id);
        assert!(signed_in.trusted_device.is_some());
        second(mfa_token().await, renewed.recovery_codes[0].clone())
            .await
            .problem(StatusCode::UNAUTHORIZED);
        assert_eq!(get_status().await.recovery_codes_left, 9);

        // Turned off with a recovery code: the password alone signs in again.
        let off = app
            .post(
                "/v1/auth/totp/disable",
                &token,
                json!({"code": renewed.recovery_codes[1]}),
            )
            .await;
        assert_eq!(off.status, StatusCode::NO_CONTENT, "{off:?}");
        assert!(!get_status().await.enabled);
        login(&app, addr(1), credentials("ann", PASSWORD))
            .await
            .parse::<AuthResponse>(StatusCode::OK);
    })
    .await;
}

/// Registers ann, turns TOTP on with the current step's code, and starts a sign-in: the
/// enrolment, the step spent and the `mfa_token`.
async fn ann_with_totp(app: &App<Reg>) -> (TotpEnrollment, u64, String) {
    let ann = app.register("ann").await;
    let token = ann.access_token.clone();
    let enrolment: TotpEnrollment = app
        .post("/v1/auth/totp", &token, json!({"password": PASSWORD}))
        .await
        .parse(StatusCode::CREATED);
    let step = step_now();
    app.post(
        "/v1/auth/totp/confirm",
        &token,
        json!({"code": totp(&enrolment.secret, step)}),
    )
    .await
    .parse::<RecoveryCodes>(StatusCode::OK);
    let reply = login(app, addr(1), credentials("ann", PASSWORD)).await;
    let mfa = reply.problem(StatusCode::UNAUTHORIZED).mfa_token.unwrap();
    (enrolment, step, mfa)
}

#[tokio::test]
async fn guessing_codes_is_slowed_per_account() {
    with_each_backend(Reg::default, |app| async move {
        let (enrolment, step, mfa) = ann_with_totp(&app).await;
        let valid: Vec<String> = (step - 1..=step + 1)
            .map(|s| totp(&enrolment.secret, s))
            .collect();
        let guesses = (0..)
            .map(|n| format!("{n:06}"))
            .filter(|g| !valid.contains(g))
            .take(6);
        for guess in guesses {
            app.call(
                Method::POST,
                "/v1/auth/login/mfa",
                None,
                Some(json!({"mfa_token": mfa, "code": guess})),
            )
            .await
            .problem(StatusCode::UNAUTHORIZED);
        }
        // The next attempt waits, even with the right code.
        let refused = app
            .call(
                Method::POST,
                "/v1/auth/login/mfa",
                None,
                Some(json!({"mfa_token": mfa, "code": totp(&enrolment.secret, step + 1)})),
            )
            .await;
        refused.problem(StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers[header::RETRY_AFTER], "1");
    })
    .await;
}

#[tokio::test]
async fn the_same_code_sent_twice_at_once_signs_in_once() {
    with_each_backend(Reg::default, |app| async move {
        let (enrolment, step, mfa) = ann_with_totp(&app).await;
        let body = json!({"mfa_token": mfa, "code": totp(&enrolment.secret, step + 1)});
        let send = || {
            let (app, body) = (app.clone(), body.clone());
            tokio::spawn(async move {
                app.call(Method::POST, "/v1/auth/login/mfa", None, Some(body))
                    .await
            })
        };
        let (a, b) = (send(), send());
        let mut statuses = [a.await.unwrap().status, b.await.unwrap().status];
        statuses.sort();
        assert_eq!(statuses, [StatusCode::OK, StatusCode::UNAUTHORIZED]);
    })
    .await;
}

// ---------------------------------------------------------------- signing keys

async fn published_kids(cp: &control_plane::ControlPlane) -> Vec<String> {
    use tower::ServiceExt as _;
    let request = axum::http::Request::get("/.well-known/jwks.json")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = cp.router().oneshot(request).await.unwrap();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let jwks: protocol::api::Jwks = serde_json::from_slice(&body).unwrap();
    jwks.keys.into_iter().map(|k| k.kid).collect()
}

#[tokio::test]
async fn signing_keys_rotate_in_step_across_replicas_published_before_use_kept_until_expiry() {
    use protocol::token::{AUD_API, AccessClaims, VerifyingKeys, peek_kid};
    const MINUTE: i64 = 60_000;
    const DAY: i64 = 24 * 60 * MINUTE;
    with_each_backend(Reg::default, |app| async move {
        let t0 = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let first = &app.control_plane;
        let replica = control_plane::ControlPlane::new(
            &support::config(&app.database_url),
            std::sync::Arc::new(control_plane::InProcessRegistry::new()),
        )
        .await
        .unwrap();
        let k1 = first.signer().kid().to_owned();
        assert_eq!(replica.signer().kid(), k1, "replicas share the key");
        assert_eq!(published_kids(first).await, vec![k1.clone()]);
        let before = app.register("ann").await;

        // Ten minutes before the 30 days are up, both replicas plan the next generation; one
        // key is stored, published by both, and signs nothing yet.
        let due = t0 + 30 * DAY - 10 * MINUTE;
        first.refresh_signing_keys_at(due).await.unwrap();
        replica.refresh_signing_keys_at(due).await.unwrap();
        let both = published_kids(first).await;
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(published_kids(&replica).await, both);
        let k2 = both.iter().find(|k| **k != k1).unwrap().clone();
        assert_eq!(first.signer().kid(), k1);
        assert_eq!(replica.signer().kid(), k1);

        // At the end of the period it signs; the old key stays published for its tokens.
        let switch = t0 + 30 * DAY;
        first.refresh_signing_keys_at(switch).await.unwrap();
        replica.refresh_signing_keys_at(switch).await.unwrap();
        assert_eq!(first.signer().kid(), k2);
        assert_eq!(replica.signer().kid(), k2);
        let after = app.register("bob").await;
        assert_eq!(peek_kid(&after.access_token).unwrap(), Some(k2.clone()));
        assert_eq!(peek_kid(&before.access_token).unwrap(), Some(k1.clone()));
        let reply = app
            .call(Method::GET, "/.well-known/jwks.json", None, None)
            .await;
        let keys = VerifyingKeys::from_jwks(&reply.parse(StatusCode::OK));
        let now = (t0 / 1000) as u64;
        for token in [&before.access_token, &after.access_token] {
            keys.verify::<AccessClaims>(token, AUD_API, now, 30)
                .unwrap();
        }

        // An hour after the switch the old key is gone; nothing more is planned for 30 days.
        let retired = switch + 60 * MINUTE;
        first.refresh_signing_keys_at(retired).await.unwrap();
        assert_eq!(published_kids(first).await, vec![k2]);
        let db = app.db().await;
        let rows = sqlx::query("SELECT seed_sealed FROM signing_keys")
            .fetch_all(&db)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert!(row.get::<String, _>(0).starts_with("v1."));
        }
    })
    .await;
}

#[tokio::test]
async fn one_address_cannot_create_accounts_without_end() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let (a, b): (std::net::SocketAddr, std::net::SocketAddr) =
            ("203.0.113.7:5000".parse().unwrap(), "198.51.100.9:5000".parse().unwrap());
        // Attempts count whatever becomes of them (these fail the password rule cheaply).
        let attempt = |n: usize| {
            json!({"username": format!("probe{n}"), "email": format!("p{n}@example.org"), "password": "short"})
        };
        // 100 free, and the first beyond them, which starts the delay.
        for n in 0..101 {
            app.post_from(a, "/v1/auth/register", attempt(n))
                .await
                .problem(StatusCode::BAD_REQUEST);
        }
        let refused = app.post_from(a, "/v1/auth/register", attempt(101)).await;
        refused.problem(StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.headers.contains_key("retry-after"));
        app.post_from(b, "/v1/auth/register", attempt(102))
            .await
            .problem(StatusCode::BAD_REQUEST);
    })
    .await;
}

#[tokio::test]
async fn a_signed_out_session_s_access_tokens_stop_working_before_they_expire() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let phone: AuthResponse = login(&app, addr(1), credentials("ann", PASSWORD))
            .await
            .parse(StatusCode::OK);
        let me = "/v1/users/me";
        assert_eq!(
            app.get(me, &phone.access_token).await.status,
            StatusCode::OK
        );

        // The first device signs the phone out: its token is refused here at once, and by a
        // replica on the same database that never saw it.
        let sessions: Vec<protocol::api::AuthSessionView> = app
            .get("/v1/auth/sessions", &ann.access_token)
            .await
            .parse(StatusCode::OK);
        let phone_session = sessions.iter().find(|s| !s.current).unwrap().id;
        let revoked = app
            .delete(
                &format!("/v1/auth/sessions/{phone_session}"),
                &ann.access_token,
            )
            .await;
        assert_eq!(revoked.status, StatusCode::NO_CONTENT);
        app.get(me, &phone.access_token)
            .await
            .problem(StatusCode::UNAUTHORIZED);
        let replica = support::serve_replica(&support::config(&app.database_url)).await;
        let status = |token: String| async move {
            reqwest::Client::new()
                .get(format!("http://{replica}{me}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        };
        assert_eq!(
            status(phone.access_token.clone()).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(ann.access_token.clone()).await, StatusCode::OK);

        // Logging out ends the caller's own token too.
        let out = app
            .call(
                Method::POST,
                "/v1/auth/logout",
                Some(&ann.access_token),
                None,
            )
            .await;
        assert_eq!(out.status, StatusCode::NO_CONTENT);
        app.get(me, &ann.access_token)
            .await
            .problem(StatusCode::UNAUTHORIZED);
    })
    .await;
}
