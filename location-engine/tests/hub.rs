//! The hub (engine + audience) through its public API, sans-IO: grants from tokens, streams and
//! what they are sent, the fix budget, expiry. Time is an argument; nothing sleeps.

use location_engine::engine::Config;
use location_engine::hub::{FixesError, Hub, Outbox};
use protocol::ids::{GroupId, UserId};
use protocol::location::{
    AlertKind, FIX_BURST, Grant, LocationClaims, MAX_FIXES_PER_SEC, Precision, ServerFrame, WireFix,
};
use protocol::token::{AUD_LOCATION, TokenKind};
use uuid::Uuid;

/// Unix seconds at the start of every test.
const S0: u64 = 1_800_000_000;
const T0: i64 = S0 as i64 * 1000;

fn user(n: u128) -> UserId {
    UserId(Uuid::from_u128(n))
}

fn group(n: u128) -> GroupId {
    GroupId(Uuid::from_u128(0x6000 + n))
}

fn grant(g: u128, precision: Precision) -> Grant {
    Grant {
        grp: group(g),
        precision,
        until: None,
        near_m: 200,
        places: 0,
    }
}

fn claims(u: u128, iat: u64, groups: Vec<Grant>) -> LocationClaims {
    LocationClaims {
        iss: "convoy".into(),
        sub: user(u),
        aud: AUD_LOCATION.into(),
        typ: TokenKind::Location,
        iat,
        exp: iat + 900,
        jti: format!("{u}-{iat}"),
        groups,
        hist: false,
    }
}

fn hub() -> Hub {
    Hub::new(Config {
        incarnation: 3,
        seed: 9,
    })
}

/// A fix `east` metres east of a point in Lisbon.
fn fix(t: i64, east: f64) -> WireFix {
    WireFix {
        t,
        lat: 38.7223,
        lon: -9.1393 + east / (111_412.0 * 38.7223f64.to_radians().cos()),
        acc: 5.0,
        alt: None,
        speed: None,
        heading: None,
        battery: Some(50),
    }
}

/// The frames `out` holds for `conn`, decoded.
fn frames_for(out: &Outbox, conn: u64) -> Vec<ServerFrame> {
    out.frames
        .iter()
        .filter(|(to, _)| to.contains(&conn))
        .map(|(_, text)| serde_json::from_str(text).unwrap())
        .collect()
}

fn flush(h: &mut Hub, now_ms: i64) -> Outbox {
    let mut out = Outbox::default();
    h.flush(now_ms, &mut out);
    out
}

fn seen_in(frames: &[ServerFrame], g: u128) -> Vec<UserId> {
    frames
        .iter()
        .rev()
        .find_map(|f| match f {
            ServerFrame::Positions { group: gr, members } if *gr == group(g) => {
                Some(members.iter().map(|m| m.user).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// The frames about group 1.
fn of_group_1(frames: &[ServerFrame]) -> Vec<&ServerFrame> {
    frames
        .iter()
        .filter(|f| match f {
            ServerFrame::Positions { group: g, .. } => *g == group(1),
            ServerFrame::Alert(a) => a.group == group(1),
            _ => false,
        })
        .collect()
}

#[test]
fn streams_see_their_groups_move_and_hear_alerts_once() {
    let mut h = hub();
    let now = T0;
    h.authorize(&claims(1, S0, vec![grant(1, Precision::Exact)]), now);
    h.authorize(&claims(2, S0, vec![grant(1, Precision::Exact)]), now);
    // Someone in another group hears nothing of group 1.
    h.authorize(&claims(3, S0, vec![grant(2, Precision::Exact)]), now);
    let mut out = Outbox::default();
    h.open(10, user(1), &mut out);
    h.open(20, user(2), &mut out);
    h.open(30, user(3), &mut out);
    // Each stream starts with its groups' positions (nobody has a fix yet).
    assert!(
        matches!(&frames_for(&out, 10)[..], [ServerFrame::Positions { members, .. }] if members.is_empty())
    );

    h.fixes(user(1), &[fix(now, 0.0)], now).unwrap();
    h.fixes(user(2), &[fix(now, 1_000.0)], now).unwrap();
    let out = flush(&mut h, now);
    assert_eq!(seen_in(&frames_for(&out, 10), 1), [user(1), user(2)]);
    assert_eq!(seen_in(&frames_for(&out, 20), 1), [user(1), user(2)]);
    assert!(of_group_1(&frames_for(&out, 30)).is_empty());
    assert!(out.alerts.is_empty(), "the first state is seeded silently");

    // User 2 comes within 50 m, two fixes in one batch: both count toward the dwell.
    h.fixes(
        user(2),
        &[fix(now + 1_000, 50.0), fix(now + 2_000, 50.0)],
        now + 2_000,
    )
    .unwrap();
    let out = flush(&mut h, now + 2_000);
    assert_eq!(out.alerts.len(), 1);
    let near = out.alerts[0];
    let (a, b) = (user(1).min(user(2)), user(1).max(user(2)));
    assert_eq!(near.kind, AlertKind::Near { a, b });
    for conn in [10, 20] {
        let alerts: Vec<_> = frames_for(&out, conn)
            .into_iter()
            .filter(|f| matches!(f, ServerFrame::Alert(_)))
            .collect();
        assert_eq!(alerts, [ServerFrame::Alert(near)], "conn {conn}");
    }
    assert!(of_group_1(&frames_for(&out, 30)).is_empty());

    // Apart again only after the pair's minute of cooldown.
    h.fixes(
        user(2),
        &[fix(now + 3_000, 2_000.0), fix(now + 4_000, 2_000.0)],
        now + 4_000,
    )
    .unwrap();
    assert!(flush(&mut h, now + 4_000).alerts.is_empty());
    let later = now + 70_000;
    h.fixes(
        user(2),
        &[fix(later, 2_000.0), fix(later + 1_000, 2_000.0)],
        later + 1_000,
    )
    .unwrap();
    let out = flush(&mut h, later + 1_000);
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(out.alerts[0].kind, AlertKind::Apart { a, b });
    assert_ne!(out.alerts[0].id, near.id);

    // A closed stream is sent nothing more.
    h.close(20);
    h.fixes(user(1), &[fix(later + 2_000, 10.0)], later + 2_000)
        .unwrap();
    let out = flush(&mut h, later + 2_000);
    assert!(!frames_for(&out, 10).is_empty());
    assert!(frames_for(&out, 20).is_empty());
}

#[test]
fn the_newest_token_decides_the_groups_and_its_expiry_ends_sharing() {
    let mut h = hub();
    let both = vec![grant(1, Precision::Exact), grant(2, Precision::Approx)];
    let (sharing, refused) = h.authorize(&claims(1, S0, both.clone()), T0);
    assert!(refused.is_empty());
    assert_eq!(sharing.len(), 2);
    assert_eq!(sharing[1].precision, Precision::Approx);
    assert_eq!(sharing[0].until_ms, T0 + 900_000, "the token's expiry");
    h.authorize(&claims(2, S0, vec![grant(1, Precision::Exact)]), T0);
    let mut out = Outbox::default();
    h.open(10, user(1), &mut out);
    h.open(20, user(2), &mut out);
    h.fixes(user(1), &[fix(T0, 0.0)], T0).unwrap();
    let out = flush(&mut h, T0);
    assert_eq!(seen_in(&frames_for(&out, 20), 1), [user(1)]);
    assert_eq!(seen_in(&frames_for(&out, 10), 2), [user(1)]);

    // A newer token without group 1: user 1 leaves it at once, and stops watching it.
    let (sharing, _) = h.authorize(
        &claims(1, S0 + 60, vec![grant(2, Precision::Approx)]),
        T0 + 60_000,
    );
    assert_eq!(sharing.len(), 1);
    assert!(h.engine().view(group(1)).is_empty());
    // An older token (a batch posted late) changes nothing.
    let (sharing, _) = h.authorize(&claims(1, S0, both), T0 + 61_000);
    assert_eq!(sharing.len(), 1);
    assert!(h.engine().view(group(1)).is_empty());
    h.fixes(user(2), &[fix(T0 + 62_000, 5.0)], T0 + 62_000)
        .unwrap();
    let out = flush(&mut h, T0 + 62_000);
    assert!(
        !frames_for(&out, 10)
            .iter()
            .any(|f| matches!(f, ServerFrame::Positions { group: g, .. } if *g == group(1))),
        "user 1 no longer watches group 1"
    );

    // Not renewed: sharing ends at the token's expiry.
    let exp_ms = (S0 + 60 + 900) as i64 * 1000;
    h.tick(exp_ms - 1);
    assert_eq!(h.engine().view(group(2)).len(), 1);
    h.tick(exp_ms);
    assert!(h.engine().view(group(2)).is_empty());
}

#[test]
fn fixes_are_budgeted_per_user_and_need_a_grant() {
    let mut h = hub();
    assert_eq!(
        h.fixes(user(1), &[fix(T0, 0.0)], T0),
        Err(FixesError::NoGrant)
    );
    h.authorize(&claims(1, S0, vec![grant(1, Precision::Exact)]), T0);
    let burst: Vec<WireFix> = (0..FIX_BURST as i64)
        .map(|i| fix(T0 - 100_000 + i, 0.0))
        .collect();
    assert_eq!(h.fixes(user(1), &burst, T0).map(|(n, _)| n), Ok(FIX_BURST));
    assert_eq!(
        h.fixes(user(1), &[fix(T0, 0.0)], T0),
        Err(FixesError::TooMany)
    );
    // One second refills the sustained rate, no more.
    let t1 = T0 + 1_000;
    let refill: Vec<WireFix> = (0..MAX_FIXES_PER_SEC as i64)
        .map(|i| fix(T0 + i, 0.0))
        .collect();
    assert!(h.fixes(user(1), &refill, t1).is_ok());
    assert_eq!(
        h.fixes(user(1), &[fix(t1, 0.0)], t1),
        Err(FixesError::TooMany)
    );
    // Refused fixes are named by index with the reason.
    let t2 = T0 + 2_000;
    let (kept, rejected) = h
        .fixes(
            user(1),
            &[
                fix(t2, 0.0),
                fix(t2, 0.0),
                WireFix {
                    lat: 95.0,
                    ..fix(t2 + 1, 0.0)
                },
            ],
            t2,
        )
        .unwrap();
    assert_eq!(kept, 1);
    assert_eq!(rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 2]);
    assert!(rejected[1].reason.contains("latitude"), "{rejected:?}");
}

#[test]
fn a_group_s_positions_go_out_at_most_once_a_second_and_none_are_lost() {
    let mut h = hub();
    h.authorize(&claims(1, S0, vec![grant(1, Precision::Exact)]), T0);
    let mut out = Outbox::default();
    h.open(10, user(1), &mut out);
    let positions = |out: &Outbox| -> Vec<i64> {
        frames_for(out, 10)
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::Positions { members, .. } => members.first().map(|m| m.t),
                _ => None,
            })
            .collect()
    };
    h.fixes(user(1), &[fix(T0, 0.0)], T0).unwrap();
    assert_eq!(positions(&flush(&mut h, T0)), [T0]);
    // Two more moves within the second: held back, then sent once, as they are at the end.
    h.fixes(user(1), &[fix(T0 + 300, 5.0)], T0 + 300).unwrap();
    assert!(positions(&flush(&mut h, T0 + 300)).is_empty());
    h.fixes(user(1), &[fix(T0 + 600, 10.0)], T0 + 600).unwrap();
    assert!(positions(&flush(&mut h, T0 + 600)).is_empty());
    assert!(positions(&flush(&mut h, T0 + 999)).is_empty());
    assert_eq!(positions(&flush(&mut h, T0 + 1_000)), [T0 + 600]);
    // Nothing moved since: nothing more.
    assert!(positions(&flush(&mut h, T0 + 5_000)).is_empty());
    // A move after a quiet while goes out at once.
    h.tick(T0 + 5_000);
    h.fixes(user(1), &[fix(T0 + 5_100, 20.0)], T0 + 5_100)
        .unwrap();
    assert_eq!(positions(&flush(&mut h, T0 + 5_100)), [T0 + 5_100]);
}

#[test]
fn groups_held_back_at_different_times_each_go_out_when_their_second_is_up() {
    let mut h = hub();
    h.authorize(&claims(1, S0, vec![grant(1, Precision::Exact)]), T0);
    let mut out = Outbox::default();
    h.open(10, user(1), &mut out);
    let moved = |out: &Outbox, conn: u64| -> usize {
        frames_for(out, conn)
            .into_iter()
            .filter(|f| matches!(f, ServerFrame::Positions { members, .. } if !members.is_empty()))
            .count()
    };
    h.fixes(user(1), &[fix(T0, 0.0)], T0).unwrap();
    assert_eq!(moved(&flush(&mut h, T0), 10), 1);
    // The second group starts half a second later.
    h.authorize(&claims(2, S0, vec![grant(2, Precision::Exact)]), T0 + 500);
    h.open(20, user(2), &mut out);
    h.fixes(user(2), &[fix(T0 + 500, 0.0)], T0 + 500).unwrap();
    assert_eq!(moved(&flush(&mut h, T0 + 500), 20), 1);
    // Both move again: group 1 is due at T0 + 1000, group 2 at T0 + 1500.
    h.fixes(user(1), &[fix(T0 + 600, 5.0)], T0 + 600).unwrap();
    h.fixes(user(2), &[fix(T0 + 600, 5.0)], T0 + 600).unwrap();
    let out = flush(&mut h, T0 + 600);
    assert_eq!((moved(&out, 10), moved(&out, 20)), (0, 0));
    let out = flush(&mut h, T0 + 1_000);
    assert_eq!((moved(&out, 10), moved(&out, 20)), (1, 0));
    let out = flush(&mut h, T0 + 1_499);
    assert_eq!((moved(&out, 10), moved(&out, 20)), (0, 0));
    let out = flush(&mut h, T0 + 1_500);
    assert_eq!((moved(&out, 10), moved(&out, 20)), (0, 1));
}

#[test]
fn the_fixes_of_users_who_keep_a_history_go_to_the_control_plane_and_only_theirs() {
    let mut h = hub();
    let mut keeping = claims(1, S0, vec![grant(1, Precision::Approx)]);
    keeping.hist = true;
    h.authorize(&keeping, T0);
    h.authorize(&claims(2, S0, vec![grant(1, Precision::Exact)]), T0);
    let (_, rejected) = h
        .fixes(
            user(1),
            &[fix(T0, 0.0), fix(T0 - 5, 1.0), fix(T0 + 10, 2.0)],
            T0,
        )
        .unwrap();
    assert_eq!(rejected.len(), 1, "the older fix is refused");
    h.fixes(user(2), &[fix(T0, 3.0)], T0).unwrap();
    let out = flush(&mut h, T0);
    // Their own history is exact whatever the group sees.
    assert_eq!(
        out.history
            .iter()
            .map(|f| (f.user, f.fix))
            .collect::<Vec<_>>(),
        [(user(1), fix(T0, 0.0)), (user(1), fix(T0 + 10, 2.0))]
    );
    assert!(flush(&mut h, T0 + 1).history.is_empty(), "handed over once");
    // A newer token without the flag stops it.
    h.authorize(
        &claims(1, S0 + 1, vec![grant(1, Precision::Approx)]),
        T0 + 20,
    );
    h.fixes(user(1), &[fix(T0 + 30, 4.0)], T0 + 30).unwrap();
    assert!(flush(&mut h, T0 + 30).history.is_empty());
}

/// The places of group 1 at `rev`: a circle of 100 m around the point `east` metres east of the
/// Lisbon point, dwell 0, if `east` is given.
fn places_at(rev: u64, east: Option<f64>) -> protocol::location::GroupPlaces {
    use protocol::location::{PlaceShape, PlaceView};
    let places = east
        .map(|e| {
            let w = fix(0, e);
            PlaceView {
                id: protocol::ids::PlaceId(Uuid::from_u128(0x7000)),
                group: group(1),
                name: "home".into(),
                shape: PlaceShape::Circle {
                    lat: w.lat,
                    lon: w.lon,
                    radius_m: 100.0,
                },
                dwell_s: 0,
                created_by: user(1),
                created_at: "2027-01-15T08:00:00Z".into(),
            }
        })
        .into_iter()
        .collect();
    protocol::location::GroupPlaces {
        group: group(1),
        rev,
        places,
    }
}

fn place_alerts(out: &Outbox) -> Vec<AlertKind> {
    out.alerts
        .iter()
        .map(|a| a.kind)
        .filter(|k| matches!(k, AlertKind::Arrived { .. } | AlertKind::Left { .. }))
        .collect()
}

#[test]
fn places_are_fetched_when_a_newer_revision_is_named_and_their_changes_applied() {
    use protocol::location::PlacesChanged;
    let mut h = hub();
    let now = T0;
    let with_places = |rev| Grant {
        places: rev,
        ..grant(1, Precision::Exact)
    };
    // A token naming revision 3: one fetch is asked for, with that user's token.
    h.authorize(&claims(1, S0, vec![with_places(3)]), now);
    h.authorize(&claims(2, S0, vec![with_places(3)]), now);
    let out = flush(&mut h, now);
    assert_eq!(
        out.fetch_places,
        [(group(1), user(1))],
        "one fetch at a time"
    );
    // Revision 3: home is 1 km east. User 1 is away, user 2 at home (seeded silently).
    assert_eq!(
        h.apply_places(&places_at(3, Some(1_000.0)), user(1), now),
        0
    );
    h.fixes(user(1), &[fix(now, 0.0)], now).unwrap();
    h.fixes(user(2), &[fix(now, 1_000.0)], now).unwrap();
    assert!(place_alerts(&flush(&mut h, now)).is_empty());
    // User 1 comes home, user 2 goes out: arrived and left.
    let t = now + 60_000;
    h.fixes(
        user(1),
        &[fix(t, 990.0), fix(t + 1_000, 1_000.0)],
        t + 1_000,
    )
    .unwrap();
    h.fixes(
        user(2),
        &[fix(t, 3_000.0), fix(t + 1_000, 3_000.0)],
        t + 1_000,
    )
    .unwrap();
    let alerts = place_alerts(&flush(&mut h, t + 1_000));
    assert!(
        alerts
            .iter()
            .any(|k| matches!(k, AlertKind::Arrived { user: u, .. } if *u == user(1))),
        "{alerts:?}"
    );
    assert!(
        alerts
            .iter()
            .any(|k| matches!(k, AlertKind::Left { user: u, .. } if *u == user(2))),
        "{alerts:?}"
    );
    // The same revision again fetches nothing; an older one applied late changes nothing.
    h.authorize(&claims(1, S0 + 1, vec![with_places(3)]), t + 1_000);
    assert!(flush(&mut h, t + 1_000).fetch_places.is_empty());
    h.apply_places(&places_at(2, None), user(1), t + 1_000);
    let t = t + 120_000;
    h.fixes(
        user(2),
        &[fix(t, 1_000.0), fix(t + 1_000, 1_000.0)],
        t + 1_000,
    )
    .unwrap();
    assert_eq!(
        place_alerts(&flush(&mut h, t + 1_000)).len(),
        1,
        "home is still there: user 2 arrives"
    );

    // A notice of revision 4 (home removed): fetched and applied; nobody arrives any more.
    h.places_changed(PlacesChanged {
        group: group(1),
        rev: 4,
    });
    // A notice for a group nobody here shares with is ignored.
    h.places_changed(PlacesChanged {
        group: group(9),
        rev: 1,
    });
    let out = flush(&mut h, t + 1_000);
    assert_eq!(out.fetch_places.len(), 1);
    assert_eq!(out.fetch_places[0].0, group(1));
    h.apply_places(&places_at(4, None), out.fetch_places[0].1, t + 1_000);
    let t = t + 120_000;
    h.fixes(
        user(2),
        &[fix(t, 3_000.0), fix(t + 1_000, 3_000.0)],
        t + 1_000,
    )
    .unwrap();
    h.fixes(
        user(1),
        &[fix(t, 3_000.0), fix(t + 1_000, 3_000.0)],
        t + 1_000,
    )
    .unwrap();
    assert!(place_alerts(&flush(&mut h, t + 1_000)).is_empty());

    // A failed fetch is asked for again at the next notice.
    h.places_changed(PlacesChanged {
        group: group(1),
        rev: 5,
    });
    assert_eq!(flush(&mut h, t + 1_000).fetch_places.len(), 1);
    h.places_fetch_failed(group(1));
    h.places_changed(PlacesChanged {
        group: group(1),
        rev: 5,
    });
    assert_eq!(flush(&mut h, t + 1_000).fetch_places.len(), 1);
    // Changed again while a fetch of 5 was under way: applying 5 asks for 6 at once.
    h.places_changed(PlacesChanged {
        group: group(1),
        rev: 6,
    });
    assert!(
        flush(&mut h, t + 1_000).fetch_places.is_empty(),
        "one at a time"
    );
    h.apply_places(&places_at(5, None), user(1), t + 1_000);
    assert_eq!(flush(&mut h, t + 1_000).fetch_places, [(group(1), user(1))]);
}

#[test]
fn the_places_of_a_group_nobody_shares_with_are_forgotten_and_fetched_again_when_it_returns() {
    let mut h = hub();
    let with_places = Grant {
        places: 2,
        ..grant(1, Precision::Exact)
    };
    h.authorize(&claims(1, S0, vec![with_places]), T0);
    let out = flush(&mut h, T0);
    assert_eq!(out.fetch_places, [(group(1), user(1))]);
    h.apply_places(&places_at(2, Some(1_000.0)), user(1), T0);
    // The same revision again: nothing to fetch.
    h.authorize(&claims(1, S0 + 1, vec![with_places]), T0);
    assert!(flush(&mut h, T0).fetch_places.is_empty());
    // The token runs out (15 minutes): sharing ends, the group's places are dropped.
    let later = T0 + 16 * 60_000;
    h.tick(later);
    h.authorize(&claims(1, S0 + 16 * 60, vec![with_places]), later);
    assert_eq!(
        flush(&mut h, later).fetch_places,
        [(group(1), user(1))],
        "fetched again"
    );
}
