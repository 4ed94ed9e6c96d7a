//! The control plane's HTTP API end to end, through the router (no socket), on SQLite and, when
//! `CONVOY_TEST_POSTGRES_URL` is set, on PostgreSQL.

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use control_plane::InProcessRegistry;
use control_plane::NodeRegistry;
use protocol::api::{AcceptInviteResponse, GroupView, InviteView, Jwks, Role, SessionAllocation};
use protocol::node::{NODE_TTL_SECS, NodeState};
use protocol::token::{AUD_API, AccessClaims, JoinClaims, TokenKind, VerifyingKeys};
use serde_json::json;
use sha2::Digest as _;
use sqlx::Row as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{App, PASSWORD, SimulatedRegistry, node, with_each_backend};
use uuid::Uuid;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn verifying_keys<R: NodeRegistry>(app: &App<R>) -> VerifyingKeys {
    let reply = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    VerifyingKeys::from_jwks(&reply.parse::<Jwks>(StatusCode::OK))
}

// ---------------------------------------------------------------- accounts

#[tokio::test]
async fn register_then_login_and_bad_credentials_look_the_same() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let body = json!({"username": "Ann", "email": "Ann@Example.ORG", "password": PASSWORD});
        let reply = app
            .call(Method::POST, "/v1/auth/register", None, Some(body))
            .await;
        let registered: protocol::api::AuthResponse = reply.parse(StatusCode::CREATED);
        assert_eq!(registered.user.username, "Ann");
        assert_eq!(registered.user.email, "ann@example.org");
        assert_eq!(registered.expires_in, 600);

        // The refresh token is stored only as its SHA-256.
        let db = app.db().await;
        let hash = sha2::Sha256::digest(registered.refresh_token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let rows = sqlx::query("SELECT token_hash, user_id FROM refresh_tokens")
            .fetch_all(&db)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<String, _>("token_hash"), hash);
        assert_eq!(
            rows[0].get::<String, _>("user_id"),
            registered.user.id.to_string()
        );
        db.close().await;

        let login = |email: &str, password: &str| {
            let body = json!({"email": email, "password": password});
            let app = app.clone();
            async move {
                app.call(Method::POST, "/v1/auth/login", None, Some(body))
                    .await
            }
        };
        let ok: protocol::api::AuthResponse = login("ANN@example.org", PASSWORD)
            .await
            .parse(StatusCode::OK);
        assert_eq!(ok.user, registered.user);
        assert_ne!(ok.refresh_token, registered.refresh_token);

        let wrong_password = login("ann@example.org", "wrong password").await;
        let unknown_email = login("bob@example.org", PASSWORD).await;
        let p1 = wrong_password.problem(StatusCode::UNAUTHORIZED);
        let p2 = unknown_email.problem(StatusCode::UNAUTHORIZED);
        assert_eq!(p1, p2, "no account enumeration by message");
        assert_eq!(wrong_password.raw, unknown_email.raw);
        assert!(
            wrong_password
                .headers
                .contains_key(header::WWW_AUTHENTICATE)
        );
    })
    .await;
}

#[tokio::test]
async fn duplicate_accounts_conflict_and_bad_fields_are_refused() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        app.register("ann").await;
        let register = |username: &str, email: &str, password: String| {
            let body = json!({"username": username, "email": email, "password": password});
            let app = app.clone();
            async move {
                app.call(Method::POST, "/v1/auth/register", None, Some(body))
                    .await
            }
        };
        let pw = || PASSWORD.to_owned();
        register("ann2", "ANN@example.org", pw())
            .await
            .problem(StatusCode::CONFLICT);
        register("ANN", "other@example.org", pw())
            .await
            .problem(StatusCode::CONFLICT);

        for (username, email, password) in [
            ("bob", "bob@example.org", "1234567".to_owned()),
            ("bob", "bob@example.org", "x".repeat(129)),
            ("b", "bob@example.org", pw()),
            ("bob bob", "bob@example.org", pw()),
            ("bob", "not-an-email", pw()),
            ("bob", "a@b@c", pw()),
        ] {
            let problem = register(username, email, password)
                .await
                .problem(StatusCode::BAD_REQUEST);
            assert!(problem.detail.is_some());
        }
        // Limits are in characters: 128 two-byte characters are a valid password.
        // Common passwords and the account's own name are refused.
        for password in [
            "Password123",
            "qwertyuiop",
            "11111111",
            "bob_rides",
            "bob.r@example.org",
        ] {
            let problem = register("bob_rides", "bob.r@example.org", password.to_owned())
                .await
                .problem(StatusCode::BAD_REQUEST);
            assert!(problem.detail.is_some(), "{password}");
        }
        register("bob", "bob@example.org", "éü".repeat(64))
            .await
            .parse::<serde_json::Value>(StatusCode::CREATED);
    })
    .await;
}

#[tokio::test]
async fn the_jwks_verifies_access_tokens() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let reply = app
            .call(Method::GET, "/.well-known/jwks.json", None, None)
            .await;
        let jwks: Jwks = reply.parse(StatusCode::OK);
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.keys[0].kid, app.signer.kid());
        assert_eq!(
            (jwks.keys[0].kty.as_str(), jwks.keys[0].crv.as_str()),
            ("OKP", "Ed25519")
        );

        let keys = VerifyingKeys::from_jwks(&jwks);
        let claims: AccessClaims = keys
            .verify(&ann.access_token, AUD_API, unix_now(), 0)
            .unwrap();
        assert_eq!(claims.sub, ann.user.id);
        assert_eq!(claims.typ, TokenKind::Access);
        assert_eq!(claims.iss, support::ISSUER);
        assert_eq!(claims.exp - claims.iat, 600);
    })
    .await;
}

#[tokio::test]
async fn health_endpoints_answer() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        for path in ["/livez", "/readyz"] {
            let reply = app.call(Method::GET, path, None, None).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}");
        }
    })
    .await;
}

// ---------------------------------------------------------------- groups and invites

#[tokio::test]
async fn invites_are_for_admins_and_accepting_is_idempotent() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let eve = app.register("eve").await;

        let reply = app
            .post(
                "/v1/groups",
                &ann.access_token,
                json!({"name": "  Road trip  "}),
            )
            .await;
        let group: GroupView = reply.parse(StatusCode::CREATED);
        assert_eq!(group.name, "Road trip");
        assert_eq!(group.role, Role::Admin);
        assert_eq!(group.created_by, ann.user.id);
        let gid = group.id.to_string();

        let invites = format!("/v1/groups/{gid}/invites");
        let reply = app
            .call(Method::POST, &invites, Some(&ann.access_token), None)
            .await;
        let invite: InviteView = reply.parse(StatusCode::CREATED);
        assert!(invite.code.len() >= 22, "at least 128 bits");
        let expires = time::OffsetDateTime::parse(
            &invite.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let in_days = (expires - time::OffsetDateTime::now_utc()).whole_hours();
        assert!((167..=168).contains(&in_days), "{in_days} hours");

        // A non-member cannot see the group at all.
        app.call(Method::POST, &invites, Some(&bob.access_token), None)
            .await
            .problem(StatusCode::NOT_FOUND);

        let accepted: AcceptInviteResponse =
            app.accept(&invite.code, &bob).await.parse(StatusCode::OK);
        assert_eq!(accepted.group.id, group.id);
        assert_eq!(accepted.group.role, Role::Member);

        // A member who is not an admin may not invite.
        app.call(Method::POST, &invites, Some(&bob.access_token), None)
            .await
            .problem(StatusCode::FORBIDDEN);

        // Accepting again changes nothing, for a member and for the admin.
        let again: AcceptInviteResponse =
            app.accept(&invite.code, &bob).await.parse(StatusCode::OK);
        assert_eq!(again.group, accepted.group);
        let admin: AcceptInviteResponse =
            app.accept(&invite.code, &ann).await.parse(StatusCode::OK);
        assert_eq!(admin.group.role, Role::Admin);

        // The code can be shared: a third user joins with it too.
        let third: AcceptInviteResponse =
            app.accept(&invite.code, &eve).await.parse(StatusCode::OK);
        assert_eq!(third.group.role, Role::Member);

        for code in [
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            "not%20a%20code",
            &"A".repeat(200),
        ] {
            app.accept(code, &eve).await.problem(StatusCode::NOT_FOUND);
        }
        for name in ["", "   ", &"x".repeat(101)] {
            app.post("/v1/groups", &ann.access_token, json!({"name": name}))
                .await
                .problem(StatusCode::BAD_REQUEST);
        }
    })
    .await;
}

#[tokio::test]
async fn an_expired_invite_is_gone() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let gid = app.group(&ann).await;
        let code = app.invite(&gid, &ann).await;

        let db = app.db().await;
        let aged = sqlx::query("UPDATE invites SET expires_at = $1 WHERE code = $2")
            .bind(1_000_i64)
            .bind(code.as_str())
            .execute(&db)
            .await
            .unwrap();
        assert_eq!(aged.rows_affected(), 1);
        db.close().await;

        app.accept(&code, &bob).await.problem(StatusCode::GONE);
        // Still not a member.
        app.allocate(&gid, &bob)
            .await
            .problem(StatusCode::NOT_FOUND);
    })
    .await;
}

// ---------------------------------------------------------------- session allocation

#[tokio::test]
async fn sessions_are_created_once_and_joined_on_the_same_node() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let eve = app.register("eve").await;
        let gid = app.group(&ann).await;
        app.join(&gid, &ann, &bob).await;

        app.allocate(&gid, &ann)
            .await
            .problem(StatusCode::SERVICE_UNAVAILABLE);

        app.registry
            .heartbeat(node("eu-1", "eu", 0.2, NodeState::Serving));
        app.registry
            .heartbeat(node("eu-2", "eu", 0.6, NodeState::Serving));

        let first: SessionAllocation = app.allocate(&gid, &ann).await.parse(StatusCode::CREATED);
        let session = first.session.clone();
        assert_eq!(session.group_id.to_string(), gid);
        assert_eq!(
            session.node_id.as_str(),
            "eu-1",
            "the less stressed of the two"
        );
        let order: Vec<&str> = first
            .candidates
            .iter()
            .map(|c| c.node_id.as_str())
            .collect();
        assert_eq!(order, ["eu-1", "eu-2"]);
        assert_eq!(
            first.candidates[0].whip_url,
            format!("http://eu-1.test:8090/v1/whip/{}", session.id)
        );
        assert_eq!(first.candidates[0].region, "eu");

        let keys = verifying_keys(&app).await;
        let claims: JoinClaims = keys
            .verify(&first.join_token, session.node_id.as_str(), unix_now(), 0)
            .unwrap();
        assert_eq!(claims.aud, session.node_id);
        assert_eq!(claims.typ, TokenKind::Join);
        assert_eq!(
            (claims.sub, claims.sid, claims.grp),
            (ann.user.id, session.id, session.group_id)
        );
        assert_eq!(claims.kind, protocol::api::SessionKind::Audio);
        assert!(claims.publish && claims.sub_media && claims.music_ctl && !claims.mix);
        assert!(claims.admin, "the group admin moderates the room");
        assert!(
            !claims.e2ee && !session.e2ee,
            "not end-to-end encrypted unless asked"
        );
        assert_eq!(claims.exp - claims.iat, 120);
        assert!(
            keys.verify::<JoinClaims>(&first.join_token, "eu-2", unix_now(), 0)
                .is_err()
        );

        let second: SessionAllocation = app.allocate(&gid, &bob).await.parse(StatusCode::OK);
        assert_eq!(second.session, session);
        let order: Vec<&str> = second
            .candidates
            .iter()
            .map(|c| c.node_id.as_str())
            .collect();
        assert_eq!(order, ["eu-1"]);
        let claims: JoinClaims = keys
            .verify(&second.join_token, "eu-1", unix_now(), 0)
            .unwrap();
        assert_eq!(claims.sub, bob.user.id);
        assert!(
            claims.music_ctl,
            "members control the music while the group shares music (the default)"
        );
        assert!(!claims.admin, "members do not moderate");
        assert_ne!(
            claims.jti,
            keys.verify::<JoinClaims>(&first.join_token, "eu-1", unix_now(), 0)
                .unwrap()
                .jti
        );

        app.allocate(&gid, &eve)
            .await
            .problem(StatusCode::NOT_FOUND);
    })
    .await;
}

#[tokio::test]
async fn draining_nodes_never_get_new_sessions() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        app.registry
            .heartbeat(node("idle", "eu", 0.0, NodeState::Draining));
        app.registry
            .heartbeat(node("leaving", "eu", 0.0, NodeState::ShuttingDown));
        let gid = app.group(&ann).await;
        app.allocate(&gid, &ann)
            .await
            .problem(StatusCode::SERVICE_UNAVAILABLE);

        app.registry
            .heartbeat(node("busy", "eu", 0.9, NodeState::Serving));
        for _ in 0..5 {
            let gid = app.group(&ann).await;
            let a: SessionAllocation = app.allocate(&gid, &ann).await.parse(StatusCode::CREATED);
            assert_eq!(a.session.node_id.as_str(), "busy");
            let order: Vec<&str> = a.candidates.iter().map(|c| c.node_id.as_str()).collect();
            assert_eq!(order, ["busy"]);
        }
    })
    .await;
}

#[tokio::test]
async fn a_session_whose_node_died_moves_to_a_live_node() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let gid = app.group(&ann).await;
        app.registry
            .heartbeat(node("a", "eu", 0.1, NodeState::Serving));
        let old: SessionAllocation = app.allocate(&gid, &ann).await.parse(StatusCode::CREATED);
        assert_eq!(old.session.node_id.as_str(), "a");

        // A draining node keeps the sessions it has.
        app.registry
            .heartbeat(node("a", "eu", 0.1, NodeState::Draining));
        app.registry
            .heartbeat(node("b", "eu", 0.5, NodeState::Serving));
        let kept: SessionAllocation = app.allocate(&gid, &ann).await.parse(StatusCode::OK);
        assert_eq!(kept.session, old.session);

        // Node a stops heartbeating; b goes on.
        app.registry.advance(Duration::from_secs(NODE_TTL_SECS - 1));
        app.registry
            .heartbeat(node("b", "eu", 0.5, NodeState::Serving));
        app.registry.advance(Duration::from_secs(2));

        let new: SessionAllocation = app.allocate(&gid, &ann).await.parse(StatusCode::CREATED);
        assert_ne!(new.session.id, old.session.id);
        assert_eq!(new.session.node_id.as_str(), "b");

        let db = app.db().await;
        let rows = sqlx::query("SELECT id, state, ended_at FROM sessions WHERE group_id = $1")
            .bind(gid.as_str())
            .fetch_all(&db)
            .await
            .unwrap();
        db.close().await;
        assert_eq!(rows.len(), 2);
        for row in rows {
            let id: String = row.get("id");
            let state: String = row.get("state");
            let ended_at: Option<i64> = row.get("ended_at");
            if id == old.session.id.to_string() {
                assert_eq!(state, "ended");
                assert!(ended_at.is_some());
            } else {
                assert_eq!(id, new.session.id.to_string());
                assert_eq!((state.as_str(), ended_at), ("active", None));
            }
        }
    })
    .await;
}

#[tokio::test]
async fn an_e2ee_session_says_so_its_tokens_never_grant_mix_and_it_is_never_joined_as_plain() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let gid = app.group(&ann).await;
        app.join(&gid, &ann, &bob).await;
        app.registry
            .heartbeat(node("eu-1", "eu", 0.2, NodeState::Serving));
        let uri = format!("/v1/groups/{gid}/sessions");
        let e2ee = json!({"kind": "audio", "e2ee": true});

        let reply = app.post(&uri, &ann.access_token, e2ee.clone()).await;
        assert_eq!(reply.json["session"]["e2ee"], json!(true), "{reply:?}");
        let first: SessionAllocation = reply.parse(StatusCode::CREATED);
        assert!(first.session.e2ee);
        let keys = verifying_keys(&app).await;
        let claims: JoinClaims = keys
            .verify(&first.join_token, "eu-1", unix_now(), 0)
            .unwrap();
        assert!(claims.e2ee, "the node learns it from the token");
        assert!(!claims.mix && claims.consistent(), "never mixed");
        assert!(claims.admin && claims.music_ctl);

        let second: SessionAllocation = app
            .post(&uri, &bob.access_token, e2ee.clone())
            .await
            .parse(StatusCode::OK);
        assert_eq!(second.session, first.session);
        let claims: JoinClaims = keys
            .verify(&second.join_token, "eu-1", unix_now(), 0)
            .unwrap();
        assert!(claims.e2ee && !claims.mix);

        // Asking for the plain session while the encrypted one is active is refused.
        let problem = app.allocate(&gid, &bob).await.problem(StatusCode::CONFLICT);
        assert!(
            problem.detail.unwrap().contains("end-to-end encrypted"),
            "a clear reason"
        );
        // Another kind is another session, plain unless asked.
        let music: SessionAllocation = app
            .post(&uri, &ann.access_token, json!({"kind": "music"}))
            .await
            .parse(StatusCode::CREATED);
        assert!(!music.session.e2ee);
        let claims: JoinClaims = keys
            .verify(&music.join_token, "eu-1", unix_now(), 0)
            .unwrap();
        assert!(!claims.e2ee);

        let db = app.db().await;
        let rows = sqlx::query("SELECT id, e2ee FROM sessions WHERE group_id = $1")
            .bind(gid.as_str())
            .fetch_all(&db)
            .await
            .unwrap();
        db.close().await;
        let mut stored: Vec<(String, i64)> =
            rows.iter().map(|r| (r.get("id"), r.get("e2ee"))).collect();
        stored.sort();
        let mut expect = vec![
            (first.session.id.to_string(), 1),
            (music.session.id.to_string(), 0),
        ];
        expect.sort();
        assert_eq!(stored, expect);
    })
    .await;
}

#[tokio::test]
async fn a_plain_session_is_never_joined_as_e2ee() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let gid = app.group(&ann).await;
        app.registry
            .heartbeat(node("eu-1", "eu", 0.2, NodeState::Serving));
        let plain: SessionAllocation = app.allocate(&gid, &ann).await.parse(StatusCode::CREATED);
        assert!(!plain.session.e2ee);
        let uri = format!("/v1/groups/{gid}/sessions");
        app.post(
            &uri,
            &ann.access_token,
            json!({"kind": "audio", "e2ee": true}),
        )
        .await
        .problem(StatusCode::CONFLICT);
        app.post(
            &uri,
            &ann.access_token,
            json!({"kind": "audio", "e2ee": "yes"}),
        )
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_allocations_end_in_one_session() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        for id in ["n1", "n2", "n3"] {
            app.registry
                .heartbeat(node(id, "eu", 0.3, NodeState::Serving));
        }
        let db = app.db().await;
        for _ in 0..5 {
            let gid = app.group(&ann).await;
            app.join(&gid, &ann, &bob).await;
            let (a, b) = tokio::join!(
                tokio::spawn({
                    let (app, gid, ann) = (app.clone(), gid.clone(), ann.clone());
                    async move { app.allocate(&gid, &ann).await }
                }),
                tokio::spawn({
                    let (app, gid, bob) = (app.clone(), gid.clone(), bob.clone());
                    async move { app.allocate(&gid, &bob).await }
                }),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let mut statuses = [a.status, b.status];
            statuses.sort();
            assert_eq!(
                statuses,
                [StatusCode::OK, StatusCode::CREATED],
                "{a:?} {b:?}"
            );
            let a: SessionAllocation = a.parse(a.status);
            let b: SessionAllocation = b.parse(b.status);
            assert_eq!(a.session, b.session);

            let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM sessions WHERE group_id = $1")
                .bind(gid.as_str())
                .fetch_one(&db)
                .await
                .unwrap()
                .get("n");
            assert_eq!(count, 1);
        }
        db.close().await;
    })
    .await;
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn malformed_bodies_are_problems() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let raw = |content_type: Option<&str>, body: Vec<u8>| {
            let mut request = Request::builder()
                .method(Method::POST)
                .uri("/v1/groups")
                .header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", ann.access_token),
                );
            if let Some(ct) = content_type {
                request = request.header(header::CONTENT_TYPE, ct);
            }
            request.body(Body::from(body)).unwrap()
        };
        let json = Some("application/json");
        let cases = [
            (raw(json, b"{\"name\":".to_vec()), StatusCode::BAD_REQUEST),
            (raw(json, b"\xff\xfe".to_vec()), StatusCode::BAD_REQUEST),
            (
                raw(Some("text/plain"), b"{\"name\":\"x\"}".to_vec()),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                raw(None, b"{\"name\":\"x\"}".to_vec()),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                raw(json, b"{\"name\":\"x\",\"admin\":true}".to_vec()),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                raw(json, b"{\"name\":7}".to_vec()),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (raw(json, b"[]".to_vec()), StatusCode::UNPROCESSABLE_ENTITY),
            (
                raw(
                    json,
                    format!("{{\"name\":\"{}\"}}", "x".repeat(70_000)).into_bytes(),
                ),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (request, status) in cases {
            app.send(request).await.problem(status);
        }

        let gid = app.group(&ann).await;
        let sessions = format!("/v1/groups/{gid}/sessions");
        app.post(&sessions, &ann.access_token, json!({"kind": "video"}))
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY);
        app.post("/v1/auth/login", "", json!({"email": "a@b.c"}))
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY);
    })
    .await;
}

#[tokio::test]
async fn bad_paths_and_methods_are_problems() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let token = Some(ann.access_token.as_str());
        let bad_uuid = app
            .call(Method::POST, "/v1/groups/not-a-uuid/invites", token, None)
            .await;
        bad_uuid.problem(StatusCode::BAD_REQUEST);
        let unknown_group = format!("/v1/groups/{}/invites", uuid::Uuid::now_v7());
        app.call(Method::POST, &unknown_group, token, None)
            .await
            .problem(StatusCode::NOT_FOUND);
        app.call(Method::GET, "/v1/nothing-here", None, None)
            .await
            .problem(StatusCode::NOT_FOUND);
        let wrong_method = app.call(Method::GET, "/v1/auth/register", None, None).await;
        wrong_method.problem(StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong_method.headers[header::ALLOW], "POST");
    })
    .await;
}

#[tokio::test]
async fn only_valid_access_tokens_authenticate() {
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        app.registry
            .heartbeat(node("n1", "eu", 0.1, NodeState::Serving));
        let gid = app.group(&ann).await;
        let alloc: SessionAllocation = app.allocate(&gid, &ann).await.parse(StatusCode::CREATED);

        let now = unix_now();
        let expired = app.signer.sign(&AccessClaims {
            iss: support::ISSUER.into(),
            sub: ann.user.id,
            aud: AUD_API.into(),
            typ: TokenKind::Access,
            iat: now - 2_000,
            exp: now - 1_000,
            jti: "old".into(),
            sid: None,
        });
        let foreign = protocol::token::Signer::from_seed(&[3; 32]).sign(&AccessClaims {
            iss: support::ISSUER.into(),
            sub: ann.user.id,
            aud: AUD_API.into(),
            typ: TokenKind::Access,
            iat: now,
            exp: now + 600,
            jti: "forged".into(),
            sid: None,
        });
        let body = Some(json!({"name": "x"}));
        let missing = app
            .call(Method::POST, "/v1/groups", None, body.clone())
            .await;
        missing.problem(StatusCode::UNAUTHORIZED);
        assert!(
            missing.headers[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );

        for token in [
            "garbage",
            "a.b.c",
            &expired,
            &foreign,
            &alloc.join_token,
            &ann.refresh_token,
        ] {
            let reply = app
                .call(Method::POST, "/v1/groups", Some(token), body.clone())
                .await;
            reply.problem(StatusCode::UNAUTHORIZED);
            let challenge = reply.headers[header::WWW_AUTHENTICATE].to_str().unwrap();
            assert!(challenge.contains("invalid_token"), "{challenge}");
        }

        let basic = Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/groups/{gid}/invites"))
            .header(header::AUTHORIZATION, "Basic YW5uOnB3")
            .body(Body::empty())
            .unwrap();
        app.send(basic).await.problem(StatusCode::UNAUTHORIZED);
    })
    .await;
}

#[tokio::test]
async fn session_events_keep_the_participants_current_and_only_from_the_hosting_node() {
    use protocol::api::{ParticipantView, SessionAllocation};
    use protocol::events::{ParticipantChange, SessionEvent};
    use protocol::{NodeId, ParticipantId};
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let eve = app.register("eve").await;
        let gid = app.group(&ann).await;
        app.join(&gid, &ann, &bob).await;
        app.registry
            .heartbeat(node("eu-1", "eu", 0.1, NodeState::Serving));
        let alloc: SessionAllocation = app.allocate(&gid, &ann).await.parse(StatusCode::CREATED);
        let session = alloc.session.id;
        let (p1, p2, p3) = (
            ParticipantId::from_uuid(Uuid::now_v7()),
            ParticipantId::from_uuid(Uuid::now_v7()),
            ParticipantId::from_uuid(Uuid::now_v7()),
        );
        let event = |node: &str, participant, user, change| SessionEvent {
            node: NodeId::new(node).unwrap(),
            session,
            participant,
            user,
            at_ms: 1_700_000_000_000,
            change,
        };
        app.events
            .submit(event("eu-1", p1, ann.user.id, ParticipantChange::Joined));
        app.events
            .submit(event("eu-1", p2, bob.user.id, ParticipantChange::Joined));
        // Another node cannot write into this node's session.
        app.events
            .submit(event("eu-9", p3, bob.user.id, ParticipantChange::Joined));
        // Repeated events change nothing.
        app.events
            .submit(event("eu-1", p1, ann.user.id, ParticipantChange::Joined));
        app.events.submit(event(
            "eu-1",
            p2,
            bob.user.id,
            ParticipantChange::Muted {
                microphone: true,
                speaker: false,
            },
        ));
        // An older change applied after a newer one (two control planes of one consumer group)
        // does not undo it.
        app.events.submit(SessionEvent {
            at_ms: 1_699_999_999_999,
            ..event(
                "eu-1",
                p2,
                bob.user.id,
                ParticipantChange::Muted {
                    microphone: false,
                    speaker: true,
                },
            )
        });
        let left = ParticipantChange::Left {
            reason: "requested".into(),
        };
        // A `left` that overtakes its `joined` (two control planes of one consumer group) still
        // leaves the participant gone.
        let p4 = ParticipantId::from_uuid(Uuid::now_v7());
        app.events
            .submit(event("eu-1", p4, bob.user.id, left.clone()));
        app.events
            .submit(event("eu-1", p4, bob.user.id, ParticipantChange::Joined));
        app.events.submit(event("eu-1", p1, ann.user.id, left));

        let uri = format!("/v1/sessions/{session}/participants");
        // Events apply in order on a task of their own: wait for the last one's effect.
        let list = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let list: Vec<ParticipantView> = app
                    .call(Method::GET, &uri, Some(&bob.access_token), None)
                    .await
                    .parse(StatusCode::OK);
                if list.iter().all(|p| p.id != p1) && !list.is_empty() {
                    return list;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the events are applied");
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].id, p2);
        assert_eq!(list[0].user_id, bob.user.id);
        assert!(list[0].mute_status.microphone && !list[0].mute_status.speaker);
        app.call(Method::GET, &uri, Some(&eve.access_token), None)
            .await
            .problem(StatusCode::NOT_FOUND);
        let unknown = format!("/v1/sessions/{}/participants", Uuid::now_v7());
        app.call(Method::GET, &unknown, Some(&ann.access_token), None)
            .await
            .problem(StatusCode::NOT_FOUND);
        // Moderating someone who left, or who never was there, is a 404 before any relay.
        app.post(
            &format!("{uri}/{p1}/mute"),
            &ann.access_token,
            json!({"microphone": true}),
        )
        .await
        .problem(StatusCode::NOT_FOUND);
        app.post(
            &format!("{uri}/{p3}/mute"),
            &ann.access_token,
            json!({"microphone": true}),
        )
        .await
        .problem(StatusCode::NOT_FOUND);
        // A member may not moderate another.
        app.post(
            &format!("{uri}/{p2}/speak"),
            &eve.access_token,
            json!({"allowed": false}),
        )
        .await
        .problem(StatusCode::NOT_FOUND);
    })
    .await;
}

async fn refresh<R: NodeRegistry>(app: &App<R>, token: &str) -> support::Reply {
    app.call(
        Method::POST,
        "/v1/auth/refresh",
        None,
        Some(json!({ "refresh_token": token })),
    )
    .await
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_spent_one_coming_back_signs_its_session_out() {
    use protocol::api::{AuthResponse, AuthSessionView};
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let r1: AuthResponse = refresh(&app, &ann.refresh_token)
            .await
            .parse(StatusCode::OK);
        assert_ne!(r1.refresh_token, ann.refresh_token);
        assert_eq!(r1.user, ann.user);
        let list: Vec<AuthSessionView> = app
            .call(
                Method::GET,
                "/v1/auth/sessions",
                Some(&r1.access_token),
                None,
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(list.len(), 1, "a refresh keeps the session: {list:?}");
        assert!(list[0].current);

        // The spent token again at once: a retry whose answer was lost. It gets a new child and
        // the child it got before stops working; the session lives on.
        let r2: AuthResponse = refresh(&app, &ann.refresh_token)
            .await
            .parse(StatusCode::OK);
        refresh(&app, &r1.refresh_token)
            .await
            .problem(StatusCode::UNAUTHORIZED);
        let r3: AuthResponse = refresh(&app, &r2.refresh_token).await.parse(StatusCode::OK);

        // The first token once more, now that its child was used: stolen. The whole session is
        // signed out, the newest token included.
        let reused = refresh(&app, &ann.refresh_token)
            .await
            .problem(StatusCode::UNAUTHORIZED);
        assert!(
            reused
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("already used"),
            "{reused:?}"
        );
        refresh(&app, &r3.refresh_token)
            .await
            .problem(StatusCode::UNAUTHORIZED);
        // Its newest access token is refused too, before it expires.
        app.call(
            Method::GET,
            "/v1/auth/sessions",
            Some(&r3.access_token),
            None,
        )
        .await
        .problem(StatusCode::UNAUTHORIZED);

        // Garbage and empty tokens are a 401, a missing field a 4xx problem.
        refresh(&app, "not-a-token")
            .await
            .problem(StatusCode::UNAUTHORIZED);
        refresh(&app, "").await.problem(StatusCode::UNAUTHORIZED);
        let missing = app
            .call(Method::POST, "/v1/auth/refresh", None, Some(json!({})))
            .await;
        assert!(missing.status.is_client_error(), "{missing:?}");
    })
    .await;
}

#[tokio::test]
async fn devices_are_listed_and_signed_out_one_by_one_all_others_or_by_logout() {
    use protocol::api::{AuthResponse, AuthSessionView, RevokedSessions};
    with_each_backend(SimulatedRegistry::default, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let login = |ua: &'static str| {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/v1/auth/login")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::USER_AGENT, ua)
                .body(Body::from(
                    json!({"email": "ann@example.org", "password": PASSWORD}).to_string(),
                ))
                .unwrap();
            let app = &app;
            async move { app.send(req).await.parse::<AuthResponse>(StatusCode::OK) }
        };
        let phone = login("Convoy/1.0 (Android 15)").await;
        let laptop = login("Mozilla/5.0 (X11; Linux x86_64)").await;
        let list = |token: String| {
            let app = &app;
            async move {
                app.call(Method::GET, "/v1/auth/sessions", Some(&token), None)
                    .await
                    .parse::<Vec<AuthSessionView>>(StatusCode::OK)
            }
        };
        let seen = list(ann.access_token.clone()).await;
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen.iter().filter(|s| s.current).count(), 1);
        let mut agents: Vec<_> = seen.iter().filter_map(|s| s.user_agent.clone()).collect();
        agents.sort();
        assert_eq!(
            agents,
            ["Convoy/1.0 (Android 15)", "Mozilla/5.0 (X11; Linux x86_64)"]
        );
        let phone_id = list(phone.access_token.clone())
            .await
            .into_iter()
            .find(|s| s.current)
            .unwrap()
            .id;

        // Bob cannot see or sign out Ann's devices.
        assert!(list(bob.access_token.clone()).await.len() == 1);
        app.call(
            Method::DELETE,
            &format!("/v1/auth/sessions/{phone_id}"),
            Some(&bob.access_token),
            None,
        )
        .await
        .problem(StatusCode::NOT_FOUND);

        // Ann signs the phone out: its refresh token stops working, the others go on.
        let uri = format!("/v1/auth/sessions/{phone_id}");
        let gone = app
            .call(Method::DELETE, &uri, Some(&ann.access_token), None)
            .await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT, "{gone:?}");
        app.call(Method::DELETE, &uri, Some(&ann.access_token), None)
            .await
            .problem(StatusCode::NOT_FOUND);
        refresh(&app, &phone.refresh_token)
            .await
            .problem(StatusCode::UNAUTHORIZED);
        assert_eq!(list(ann.access_token.clone()).await.len(), 2);

        // "Sign out everywhere else": the laptop goes, this device stays.
        let out: RevokedSessions = app
            .call(
                Method::DELETE,
                "/v1/auth/sessions",
                Some(&ann.access_token),
                None,
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(out.revoked, 1);
        refresh(&app, &laptop.refresh_token)
            .await
            .problem(StatusCode::UNAUTHORIZED);
        let mine: AuthResponse = refresh(&app, &ann.refresh_token)
            .await
            .parse(StatusCode::OK);

        // Logout ends this one too; Bob's session is untouched.
        let bye = app
            .call(
                Method::POST,
                "/v1/auth/logout",
                Some(&mine.access_token),
                None,
            )
            .await;
        assert_eq!(bye.status, StatusCode::NO_CONTENT, "{bye:?}");
        refresh(&app, &mine.refresh_token)
            .await
            .problem(StatusCode::UNAUTHORIZED);
        // Its access token stops at once, not when it expires.
        app.call(
            Method::GET,
            "/v1/auth/sessions",
            Some(&mine.access_token),
            None,
        )
        .await
        .problem(StatusCode::UNAUTHORIZED);
        let _: AuthResponse = refresh(&app, &bob.refresh_token)
            .await
            .parse(StatusCode::OK);
        app.call(Method::POST, "/v1/auth/logout", None, None)
            .await
            .problem(StatusCode::UNAUTHORIZED);
    })
    .await;
}
