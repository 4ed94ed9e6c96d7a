//! Location on the control plane's side, on SQLite and PostgreSQL: location tokens (who may share
//! with which group, for how long) and the alerts of location engines logged once in the group's
//! log and delivered on `/v1/events`.

mod support;

use axum::http::StatusCode;
use control_plane::InProcessRegistry;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::api::{AuthResponse, Jwks};
use protocol::ids::{GroupId, UserId};
use protocol::location::{AlertKind, LocationAlert, LocationClaims, LocationToken, Precision};
use protocol::realtime::{EventData, GroupEvent, ServerFrame};
use protocol::token::{AUD_LOCATION, VerifyingKeys};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{App, with_each_backend};
use tokio_tungstenite::tungstenite::Message;

type TestApp = App<InProcessRegistry>;

const PATIENCE: Duration = Duration::from_secs(20);

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(app: &TestApp, token: &str) -> LocationClaims {
    VerifyingKeys::from_jwks(&Jwks {
        keys: vec![app.signer.jwk()],
    })
    .verify(token, AUD_LOCATION, now_s(), 30)
    .unwrap()
}

async fn ask(app: &TestApp, who: &AuthResponse, body: serde_json::Value) -> support::Reply {
    app.post("/v1/location/token", &who.access_token, body)
        .await
}

#[tokio::test]
async fn location_tokens_follow_membership_settings_and_the_chosen_end() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let dan = app.register("dan").await;
        let g = app.group(&ann).await;
        let other = app.group(&ann).await;

        let until = time::OffsetDateTime::from_unix_timestamp((now_s() + 300) as i64)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let reply = ask(
            &app,
            &ann,
            json!({"groups": [{"group": g, "precision": "approx", "until": until}, {"group": other}]}),
        )
        .await;
        let token: LocationToken = reply.parse(StatusCode::OK);
        let c = claims(&app, &token.token);
        assert_eq!(c.sub, ann.user.id);
        assert_eq!(c.groups.len(), 2);
        assert_eq!(c.groups[0].grp.to_string(), g);
        assert_eq!(c.groups[0].precision, Precision::Approx);
        assert!(c.groups[0].until.unwrap().abs_diff(now_s() + 300) <= 2);
        assert_eq!((c.groups[1].precision, c.groups[1].until), (Precision::Exact, None));
        assert_eq!(c.groups[1].near_m, 200);
        assert!(c.exp <= c.iat + 900, "at most 15 minutes");
        assert_eq!(token.groups[0].until.as_deref(), Some(until.as_str()));

        // Only until the chosen end when every grant ends sooner than 15 minutes.
        let reply = ask(&app, &ann, json!({"groups": [{"group": g, "until": until}]})).await;
        let token: LocationToken = reply.parse(StatusCode::OK);
        assert!(claims(&app, &token.token).exp.abs_diff(now_s() + 300) <= 2);

        // Not a member: as if the group did not exist.
        let reply = ask(&app, &dan, json!({"groups": [{"group": g}]})).await;
        assert_eq!(reply.problem(StatusCode::NOT_FOUND).status, 404);
        // Bad requests.
        for body in [
            json!({"groups": []}),
            json!({"groups": [{"group": g}, {"group": g}]}),
            json!({"groups": [{"group": g, "until": "yesterday"}]}),
            json!({"groups": [{"group": g, "until": "2001-01-01T00:00:00Z"}]}),
            json!({"groups": [{"group": g, "precision": "street"}]}),
        ] {
            let reply = ask(&app, &ann, body.clone()).await;
            assert!(reply.status.is_client_error(), "{body} → {reply:?}");
            assert_ne!(reply.status, StatusCode::NOT_FOUND, "{body}");
        }
        // The group's admins choose its proximity radius; the next token carries it.
        let reply = app
            .patch(
                &format!("/v1/groups/{other}"),
                &ann.access_token,
                json!({"settings": {"proximity_radius_m": 750}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let view: protocol::api::GroupView = reply.parse(StatusCode::OK);
        assert_eq!(view.settings.proximity_radius_m, 750);
        let reply = ask(&app, &ann, json!({"groups": [{"group": other}]})).await;
        let token: LocationToken = reply.parse(StatusCode::OK);
        assert_eq!(claims(&app, &token.token).groups[0].near_m, 750);
        assert_eq!(token.groups[0].near_m, 750);
        // Out of range: 400, and the radius stays.
        for bad in [1, 24, 10_001] {
            let reply = app
                .patch(
                    &format!("/v1/groups/{other}"),
                    &ann.access_token,
                    json!({"settings": {"proximity_radius_m": bad}}),
                )
                .await;
            reply.problem(StatusCode::BAD_REQUEST);
        }
        // 0 turns proximity alerts off.
        let reply = app
            .patch(
                &format!("/v1/groups/{other}"),
                &ann.access_token,
                json!({"settings": {"proximity_radius_m": 0}}),
            )
            .await;
        let view: protocol::api::GroupView = reply.parse(StatusCode::OK);
        assert_eq!(view.settings.proximity_radius_m, 0);

        // The group turns location sharing off: 403.
        let reply = app
            .patch(
                &format!("/v1/groups/{g}"),
                &ann.access_token,
                json!({"settings": {"location_sharing": false}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let reply = ask(&app, &ann, json!({"groups": [{"group": g}]})).await;
        reply.problem(StatusCode::FORBIDDEN);
        // The user turns it off for themselves: 403 everywhere.
        let reply = app
            .patch(
                "/v1/users/me/settings",
                &ann.access_token,
                json!({"privacy": {"share_location": false}}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let reply = ask(&app, &ann, json!({"groups": [{"group": other}]})).await;
        reply.problem(StatusCode::FORBIDDEN);
    })
    .await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_location(ws: &mut Ws) -> GroupEvent {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let Some(Ok(Message::Text(text))) = ws.next().await else {
                panic!("/v1/events ended")
            };
            if let ServerFrame::Event(e) = serde_json::from_str(&text).unwrap()
                && matches!(e.data, EventData::Location { .. })
            {
                return e;
            }
        }
    })
    .await
    .expect("a location event in time")
}

#[tokio::test]
async fn alerts_are_logged_once_for_members_only() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let cat = app.register("cat").await;
        let dan = app.register("dan").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        app.join(&g, &ann, &cat).await;
        let group: GroupId = g.parse().unwrap();
        let addr = app.serve().await;
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/events"))
            .await
            .unwrap();
        ws.send(Message::Text(
            json!({"type": "hello", "access_token": cat.access_token})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();

        let pair = |a: UserId, b: UserId| (a.min(b), a.max(b));
        let (a, b) = pair(ann.user.id, bob.user.id);
        let near = LocationAlert {
            id: (5u128 << 64) | 1,
            group,
            at_ms: 1_800_000_000_000,
            kind: AlertKind::Near { a, b },
        };
        let (x, y) = pair(ann.user.id, dan.user.id);
        let stranger = LocationAlert {
            id: (5u128 << 64) | 2,
            kind: AlertKind::Near { a: x, b: y },
            ..near
        };
        let lost = LocationAlert {
            id: (5u128 << 64) | 3,
            kind: AlertKind::Lost {
                user: bob.user.id,
                last_fix_ms: 1_799_999_000_000,
            },
            ..near
        };
        let ingest = app.control_plane.location_alerts();
        // Redelivered, and one naming someone outside the group: logged once, and not at all.
        ingest.submit(vec![near, near, stranger, lost]);
        let first = next_location(&mut ws).await;
        let second = next_location(&mut ws).await;
        assert_eq!(
            first.data,
            EventData::Location {
                alert_id: format!("{:032x}", near.id),
                alert: near.kind
            }
        );
        assert_eq!(
            second.data,
            EventData::Location {
                alert_id: format!("{:032x}", lost.id),
                alert: lost.kind
            }
        );
        assert_eq!(second.seq, first.seq + 1, "nothing logged between them");
        // Again later (a consumer taking over a stream entry): still once.
        ingest.submit(vec![near]);
        let marker = LocationAlert {
            id: (5u128 << 64) | 4,
            kind: AlertKind::Apart { a, b },
            ..near
        };
        ingest.submit(vec![marker]);
        let third = next_location(&mut ws).await;
        assert_eq!(third.seq, second.seq + 1);
        assert!(matches!(
            third.data,
            EventData::Location {
                alert: AlertKind::Apart { .. },
                ..
            }
        ));
    })
    .await;
}
