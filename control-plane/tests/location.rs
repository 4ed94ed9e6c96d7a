//! Location on the control plane's side, on SQLite and PostgreSQL: location tokens (who may share
//! with which group, for how long), the alerts of location engines logged once in the group's
//! log and delivered on `/v1/events`, and users' own location history (consent, retention).

mod support;

use axum::http::StatusCode;
use control_plane::InProcessRegistry;
use futures_util::{SinkExt as _, StreamExt as _};
use protocol::api::{AuthResponse, Jwks};
use protocol::ids::{GroupId, UserId};
use protocol::location::{
    AlertKind, HistoryFix, LocationAlert, LocationClaims, LocationHistory, LocationToken,
    Precision, WireFix,
};
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

fn fix(t: i64, east: f64) -> WireFix {
    WireFix {
        t,
        lat: 38.7223,
        lon: -9.1393 + east * 1e-5,
        acc: 8.0,
        alt: Some(40.0),
        speed: None,
        heading: None,
        battery: Some(80),
    }
}

async fn history(app: &TestApp, who: &AuthResponse, query: &str) -> LocationHistory {
    app.get(
        &format!("/v1/users/me/location-history{query}"),
        &who.access_token,
    )
    .await
    .parse(StatusCode::OK)
}

/// Waits until `who`'s history holds `n` points (the ingest is a task of its own; what was
/// submitted before the fixes awaited was stored or refused before them).
async fn history_of(app: &TestApp, who: &AuthResponse, n: usize) -> LocationHistory {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let h = history(app, who, "").await;
            if h.points.len() >= n {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the history in time")
}

async fn set_days(app: &TestApp, who: &AuthResponse, days: u32) -> support::Reply {
    app.patch(
        "/v1/users/me/settings",
        &who.access_token,
        json!({"privacy": {"location_history_days": days}}),
    )
    .await
}

#[tokio::test]
async fn location_history_is_kept_only_with_consent_and_for_the_chosen_days() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        const DAY: i64 = 24 * 3600 * 1000;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let g = app.group(&ann).await;
        let now = now_s() as i64 * 1000;
        let token = |who: &AuthResponse| {
            let app = &app;
            let who = who.clone();
            let g = g.clone();
            async move {
                let reply = ask(app, &who, json!({"groups": [{"group": g}]})).await;
                claims(app, &reply.parse::<LocationToken>(StatusCode::OK).token)
            }
        };
        // Off by default: the token does not ask the engine for the fixes.
        assert!(history(&app, &ann, "").await.points.is_empty());
        assert!(!token(&ann).await.hist);
        set_days(&app, &ann, 366)
            .await
            .problem(StatusCode::BAD_REQUEST);
        let reply = set_days(&app, &ann, 30).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.json["privacy"]["location_history_days"], 30);
        assert!(token(&ann).await.hist);

        let ingest = app.control_plane.location_history();
        let of = |user: UserId, fixes: Vec<WireFix>| -> Vec<HistoryFix> {
            fixes
                .into_iter()
                .map(|fix| HistoryFix { user, fix })
                .collect()
        };
        // Bob keeps no history: nothing of his is stored, whatever the engine sends.
        ingest.submit(of(bob.user.id, vec![fix(now, 0.0)]));
        ingest.submit(of(
            ann.user.id,
            vec![
                fix(now - 40 * DAY, 1.0), // before the 30 days: not stored
                fix(now - 2 * DAY, 2.0),
                fix(now - DAY, 3.0),
                fix(now - DAY, 3.0), // redelivered: once
                fix(now, 4.0),
                fix(now + 600_000, 5.0), // ten minutes ahead: a clock gone wrong
            ],
        ));
        let h = history_of(&app, &ann, 3).await;
        let times: Vec<i64> = h
            .points
            .iter()
            .map(|p| {
                (time::OffsetDateTime::parse(&p.at, &time::format_description::well_known::Rfc3339)
                    .unwrap()
                    .unix_timestamp_nanos()
                    / 1_000_000) as i64
            })
            .collect();
        assert_eq!(times, [now - 2 * DAY, now - DAY, now]);
        assert!((h.points[2].lon - fix(now, 4.0).lon).abs() < 1e-12);
        assert_eq!((h.points[2].acc, h.points[2].alt), (8.0, Some(40.0)));
        assert!(h.next.is_none());
        assert!(history(&app, &bob, "").await.points.is_empty());

        // Pages and ranges.
        let page = history(&app, &ann, "?limit=2").await;
        assert_eq!(page.points, h.points[..2]);
        let next = page.next.expect("a next page");
        let rest = history(&app, &ann, &format!("?from={}", urlencode(&next))).await;
        assert_eq!((rest.points.as_slice(), rest.next), (&h.points[2..], None));
        let to = urlencode(&h.points[1].at);
        assert_eq!(
            history(&app, &ann, &format!("?to={to}")).await.points,
            h.points[..1]
        );
        for bad in ["?from=yesterday", "?limit=0", "?limit=5001", "?colour=red"] {
            app.get(
                &format!("/v1/users/me/location-history{bad}"),
                &ann.access_token,
            )
            .await
            .problem(StatusCode::BAD_REQUEST);
        }

        // A shorter retention hides the older points at once and the sweep deletes them.
        set_days(&app, &ann, 1).await;
        assert_eq!(history(&app, &ann, "").await.points, h.points[2..]);
        assert_eq!(
            app.control_plane
                .purge_location_history_at(now + 1)
                .await
                .unwrap(),
            2
        );
        set_days(&app, &ann, 30).await;
        assert_eq!(
            history(&app, &ann, "").await.points,
            h.points[2..],
            "deleted, not hidden"
        );

        // Deleting, and withdrawing consent, remove what was kept.
        let reply = app
            .delete("/v1/users/me/location-history", &ann.access_token)
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        assert!(history(&app, &ann, "").await.points.is_empty());
        ingest.submit(of(ann.user.id, vec![fix(now + 1, 6.0)]));
        assert_eq!(history_of(&app, &ann, 1).await.points.len(), 1);
        let reply = set_days(&app, &ann, 0).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(history(&app, &ann, "").await.points.is_empty());
        assert!(!token(&ann).await.hist);
    })
    .await;
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

#[tokio::test]
async fn places_are_kept_per_group_with_rights_checked_revisions_counted_and_members_told() {
    use protocol::location::{GroupPlaces, PlaceView, PlacesChanged};
    use std::sync::{Arc, Mutex};
    with_each_backend(InProcessRegistry::new, |app| async move {
        // An engine of this process hears of every change.
        let notices: Arc<Mutex<Vec<PlacesChanged>>> = Arc::default();
        let heard = notices.clone();
        app.control_plane
            .on_places_changed(Arc::new(move |n| heard.lock().unwrap().push(n)));
        let addr = app.serve().await;
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let cat = app.register("cat").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        let gid: GroupId = g.parse().unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/events"))
            .await
            .unwrap();
        ws.send(Message::Text(
            json!({"type": "hello", "access_token": ann.access_token})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let places = format!("/v1/groups/{g}/places");
        let circle = json!({"type": "circle", "lat": 38.72, "lon": -9.14, "radius_m": 150});

        // Bob (a member) adds home; the group is told, and so are the engines.
        let home: PlaceView = app
            .post(
                &places,
                &bob.access_token,
                json!({"name": " Home ", "shape": circle}),
            )
            .await
            .parse(StatusCode::CREATED);
        assert_eq!((home.name.as_str(), home.dwell_s), ("Home", 60));
        let saved = tokio::time::timeout(PATIENCE, async {
            loop {
                let Some(Ok(Message::Text(text))) = ws.next().await else {
                    panic!("/v1/events ended")
                };
                if let ServerFrame::Event(e) = serde_json::from_str(&text).unwrap()
                    && let EventData::PlaceSaved { place } = e.data
                {
                    return (e.actor, place);
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(saved, (bob.user.id, home.clone()));
        assert_eq!(
            *notices.lock().unwrap(),
            [PlacesChanged { group: gid, rev: 1 }]
        );
        // A location token carries the revision.
        let token: LocationToken = ask(&app, &bob, json!({"groups": [{"group": g}]}))
            .await
            .parse(StatusCode::OK);
        assert_eq!(claims(&app, &token.token).groups[0].places, 1);

        // Shapes and names the engine would not take are refused.
        for (body, what) in [
            (json!({"name": "x", "shape": {"type": "circle", "lat": 38.7, "lon": -9.1, "radius_m": 5}}), "radius"),
            (json!({"name": "x", "shape": {"type": "circle", "lat": 98.7, "lon": -9.1, "radius_m": 50}}), "latitude"),
            (json!({"name": "x", "shape": {"type": "polygon", "points": [[0,0],[0.01,0.01],[0,0.01],[0.01,0]]}}), "edges"),
            (json!({"name": "x", "shape": {"type": "polygon", "points": [[0,0],[0,1]]}}), "vertices"),
            (json!({"name": "", "shape": circle}), "name"),
            (json!({"name": "x", "shape": circle, "dwell_s": 90_000}), "dwell"),
        ] {
            let p = app.post(&places, &bob.access_token, body).await;
            let problem = p.problem(StatusCode::BAD_REQUEST);
            assert!(problem.detail.unwrap().contains(what), "{what}");
        }
        app.post(&places, &bob.access_token, json!({"name": "x"}))
            .await
            .problem(StatusCode::UNPROCESSABLE_ENTITY);
        // Not a member: 404.
        app.get(&places, &cat.access_token)
            .await
            .problem(StatusCode::NOT_FOUND);

        // Ann adds school (a polygon); only its creator or an admin changes or removes a place.
        let school: PlaceView = app
            .post(
                &places,
                &ann.access_token,
                json!({"name": "School", "dwell_s": 0, "shape": {"type": "polygon",
                    "points": [[38.70, -9.15], [38.70, -9.14], [38.71, -9.14], [38.71, -9.15]]}}),
            )
            .await
            .parse(StatusCode::CREATED);
        let school_uri = format!("{places}/{}", school.id);
        app.patch(&school_uri, &bob.access_token, json!({"name": "Mine"}))
            .await
            .problem(StatusCode::FORBIDDEN);
        app.delete(&school_uri, &bob.access_token)
            .await
            .problem(StatusCode::FORBIDDEN);
        let home_uri = format!("{places}/{}", home.id);
        let renamed: PlaceView = app
            .patch(&home_uri, &ann.access_token, json!({"name": "Our home", "dwell_s": 30}))
            .await
            .parse(StatusCode::OK);
        assert_eq!((renamed.name.as_str(), renamed.dwell_s), ("Our home", 30));
        assert_eq!(renamed.shape, home.shape, "what was not named stays");
        let listed: Vec<PlaceView> = app
            .get(&places, &bob.access_token)
            .await
            .parse(StatusCode::OK);
        assert_eq!(listed, [renamed.clone(), school.clone()]);

        // The engine's fetch: a location token naming the group, of a member.
        let fetch = |token: &str, group: &str| {
            let request = axum::http::Request::builder()
                .uri(format!("/v1/location/places?group={group}"))
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let app = &app;
            async move { app.send(request).await }
        };
        let fetched: GroupPlaces = fetch(&token.token, &g).await.parse(StatusCode::OK);
        assert_eq!((fetched.rev, fetched.places), (3, vec![renamed, school.clone()]));
        let other = app.group(&ann).await;
        fetch(&token.token, &other)
            .await
            .problem(StatusCode::FORBIDDEN);
        fetch(&bob.access_token, &g)
            .await
            .problem(StatusCode::UNAUTHORIZED);
        // Bob leaves: his token, still valid, no longer fetches the group's places.
        let left = app
            .delete(&format!("/v1/groups/{g}/members/{}", bob.user.id), &bob.access_token)
            .await;
        assert!(left.status.is_success(), "{left:?}");
        fetch(&token.token, &g)
            .await
            .problem(StatusCode::FORBIDDEN);

        app.delete(&home_uri, &ann.access_token).await;
        let (rev, left): (Vec<u64>, Vec<_>) = notices
            .lock()
            .unwrap()
            .iter()
            .map(|n| (n.rev, n.group))
            .unzip();
        assert_eq!(rev, [1, 2, 3, 4], "one notice per change, in order");
        assert!(left.iter().all(|g| *g == gid));
        let listed: Vec<PlaceView> = app
            .get(&places, &ann.access_token)
            .await
            .parse(StatusCode::OK);
        assert_eq!(listed, [school]);
    })
    .await;
}
